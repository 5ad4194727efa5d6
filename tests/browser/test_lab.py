"""JupyterLab as a workshop participant uses it, in a real Chromium: Run All in 00_setup, the attention explorer
following its slider in 01, a student copy that runs to the end with its checkers answering wrong and right, and a
tidied notebook that opening, closing and saving leave byte for byte as it was."""
from __future__ import annotations

import json
import re
import time
import urllib.request

import nbformat
import pytest
from conftest import own_errors, screenshot
from playwright.sync_api import TimeoutError as PlaywrightTimeout

# The kernel is ready when the status bar says "... | Idle"; the toolbar's indicator says idle too early.
KERNEL_IDLE = r"""() => Array.from(document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem'))
    .some(e => /\| Idle$/.test(e.textContent.trim()))"""
PROMPTS = """() => Array.from(document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent.trim())"""
# Lab shows a traceback as a stderr output; it is told from a warning by its text.
ERRORS_PER_CELL = r"""() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell'))
    .map(cell => Array.from(cell.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).map(e => e.textContent)
        .filter(t => /Traceback \(most recent call last\)|^\s*-{20,}\s*\n?\s*\w+(Error|Exception)\b|Cell In\[\d+\]/m
            .test(t)))"""
RUN_TIMEOUT_S = 900


def open_notebook(page, lab, path: str) -> None:
    page.goto(f"{lab['base']}/lab/tree/{path}?reset&token={lab['token']}")  # ?reset: only this notebook open
    page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")
    page.wait_for_function(KERNEL_IDLE, timeout=180_000)


def run_all(page, settle_s: int = 10) -> None:
    """Run > Run All Cells, and wait until every cell has run, or nothing has run for `settle_s` seconds (Run All
    stopped). Lab sends the cells one after the other, so the kernel is briefly idle between two of them."""
    page.click('.lm-MenuBar-itemLabel:text-is("Run")')
    page.click('.lm-Menu-item[data-command="runmenu:run-all"]')
    page.wait_for_function(f"() => ({PROMPTS})().some(p => p.includes('*'))", timeout=60_000)
    deadline, quiet, last = time.monotonic() + RUN_TIMEOUT_S, 0, None
    while time.monotonic() < deadline:
        prompts, idle = page.evaluate(PROMPTS), page.evaluate(KERNEL_IDLE)
        if idle and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return
        quiet = quiet + 1 if idle and prompts == last and not any("*" in p for p in prompts) else 0
        if quiet >= settle_s:
            return
        last = prompts
        page.wait_for_timeout(1000)
    raise TimeoutError(f"Run All did not finish within {RUN_TIMEOUT_S} s")


def code_cell(page, containing: str):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").filter(
        has=page.locator(".jp-InputArea", has_text=containing)).first


def set_source(page, cell, source: str) -> None:
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(source)  # no auto-indent or auto-closed brackets, as typing would add


def run_cell(page, cell) -> str:
    """Run one cell in place and return its output text once the kernel is idle again."""
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"() => ({KERNEL_IDLE})()", timeout=120_000)
    page.wait_for_timeout(300)
    cell.locator(".jp-OutputArea").scroll_into_view_if_needed()  # for the screenshot
    return cell.locator(".jp-OutputArea").text_content()


def assert_every_cell_ran(page, allowed_errors: set[int] = frozenset()) -> None:
    prompts = page.evaluate(PROMPTS)
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"cells not run: {prompts}"
    errors = {i: e for i, e in enumerate(page.evaluate(ERRORS_PER_CELL)) if e}
    unexpected = {i: e[0][-300:] for i, e in errors.items() if i not in allowed_errors}
    assert not unexpected, f"error outputs in code cells {unexpected}"
    assert not own_errors(page), page.console_errors


def save(page) -> None:
    """Ctrl+S, and wait for the server's answer: reading the file before it could see it half written."""
    with page.expect_response(lambda r: r.request.method == "PUT" and "/api/contents/" in r.url) as response:
        page.keyboard.press("Control+s")
    assert response.value.ok
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')")


def test_setup_runs_every_cell_in_the_smoke_profile(page, lab):
    started = time.monotonic()
    open_notebook(page, lab, "00_setup.ipynb")
    screenshot(page, "00_setup_opened")
    set_source(page, page.locator(".jp-NotebookPanel .jp-CodeCell").first, 'profile = "smoke"\noverrides = {}')
    page.keyboard.press("Escape")
    run_all(page)
    screenshot(page, "00_setup_after_run_all")
    assert "smoke" in code_cell(page, "course.start(profile, overrides)").locator(".jp-OutputArea").text_content()
    assert_every_cell_ran(page)
    print(f"00_setup: opened and ran in {time.monotonic() - started:.0f} s")


def test_the_attention_explorer_follows_its_slider(page, lab):
    open_notebook(page, lab, "01_vit_theory.ipynb")
    run_all(page)
    assert_every_cell_ran(page)
    explorer = page.locator(".widget-interact").filter(has=page.locator(".widget-label", has_text="layer")).first
    explorer.scroll_into_view_if_needed()
    image = explorer.locator(".widget-output img").first
    image.wait_for(state="visible")
    before = image.get_attribute("src")
    screenshot(page, "01_explorer_before")
    slider = explorer.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text="image")).first
    readout = slider.locator(".widget-readout").text_content()
    slider.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("([el, before]) => { const img = el.querySelector('.widget-output img');"
                           " return img && img.src !== before; }", arg=[explorer.element_handle(), before])
    assert slider.locator(".widget-readout").text_content() != readout
    screenshot(page, "01_explorer_after")


def test_a_student_copy_runs_to_the_end_and_its_checker_answers(page, lab):
    copy = nbformat.read(lab["root"] / "student" / "01_vit_theory.ipynb", as_version=4)
    code = [c for c in copy.cells if c.cell_type == "code"]
    may_raise = {i for i, c in enumerate(code) if "raises-exception" in c.metadata.get("tags", [])}
    open_notebook(page, lab, "student/01_vit_theory.ipynb")
    run_all(page)
    screenshot(page, "student_01_after_run_all")
    assert_every_cell_ran(page, allowed_errors=may_raise)
    exercise = code_cell(page, "check_token_arithmetic")
    assert "Not answered yet" in exercise.locator(".jp-OutputArea").text_content()
    header = "image_size, patch_size, hidden_size = 336, 14, 1024\n"
    check = "lesson.check_token_arithmetic(tokens, flops, image_size=image_size, patch_size=patch_size, " \
            "hidden_size=hidden_size);"
    set_source(page, exercise, header + "tokens = (image_size // patch_size) ** 2\nflops = 1\n" + check)
    wrong = run_cell(page, exercise)
    screenshot(page, "student_01_checker_wrong")
    set_source(page, exercise, header + "tokens = (image_size // patch_size) ** 2 + 1\n"
               "flops = 8 * tokens * hidden_size**2 + 4 * tokens**2 * hidden_size\n" + check)
    right = run_cell(page, exercise)
    screenshot(page, "student_01_checker_right")
    assert wrong.startswith("Not yet: ") and wrong.count("\n") <= 1 and "Traceback" not in wrong
    assert right.startswith("Correct") and "Traceback" not in right
    left = run_cell(page, code_cell(page, "exercises_left("))
    assert left.startswith("1 of 3 exercises right. Left: Exercise 2"), left


def test_opening_closing_and_saving_a_tidied_notebook_changes_no_byte(page, lab):
    from helpers.course import tidy

    path = lab["root"] / "tidied_00_setup.ipynb"
    notebook = tidy.tidy(nbformat.read(lab["root"] / "00_setup.ipynb", as_version=4), "00_setup.ipynb",
                         tidy.kernel_metadata())
    nbformat.write(notebook, path)
    committed = path.read_bytes()
    open_notebook(page, lab, path.name)
    page.wait_for_timeout(2000)
    assert page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count() == 0, "opening marked it modified"
    page.click('.lm-MenuBar-itemLabel:text-is("File")')
    page.click('.lm-Menu-item[data-command="application:close"]')
    with pytest.raises(PlaywrightTimeout):
        page.locator(".jp-Dialog").wait_for(timeout=3000)  # no "save your changes?" question
    assert path.read_bytes() == committed
    open_notebook(page, lab, path.name)
    save(page)  # what autosave, or a student's Ctrl+S, writes
    assert path.read_bytes() == committed


def test_kernels_start_without_the_unencrypted_tcp_warning(lab):
    """`make lab`'s flags give kernels CurveZMQ-encrypted sockets: no warning per kernel in the server's output."""
    api = f"{lab['base']}/api/kernels"
    start = urllib.request.Request(f"{api}?token={lab['token']}", data=b'{"name": "python3"}', method="POST",
                                   headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(start) as answer:
        kernel = json.load(answer)["id"]
    for _ in range(120):
        with urllib.request.urlopen(f"{api}/{kernel}?token={lab['token']}") as answer:
            if json.load(answer)["execution_state"] == "idle":
                break
        time.sleep(0.5)
    urllib.request.urlopen(urllib.request.Request(f"{api}/{kernel}?token={lab['token']}", method="DELETE"))
    assert "without encryption" not in lab["log"].read_text(errors="replace")
