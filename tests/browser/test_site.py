"""The static site in Chromium: every page loads with no console error and nothing from elsewhere, every figure
decodes, and the course map leads to a lesson and on to the next. A screenshot of the course map is kept in
build/browser/."""
from __future__ import annotations

import functools
import http.server
import threading

import nbformat
import pytest
from conftest import ROOT, screenshot

from helpers.course import website

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Every <img> that finished loading with real pixels, and every <img> on the page.
IMAGES = ("() => [Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length, "
          "document.images.length]")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The site, built from the committed notebooks and served on 127.0.0.1 as a web server would."""
    out = tmp_path_factory.mktemp("site") / "html"
    website.build_site(out, summary=ROOT / "build" / "summary.json")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", out
    server.shutdown()


@pytest.mark.parametrize("name", ["index"] + [p.stem for p in NOTEBOOKS])
def test_each_page_renders_its_figures_with_no_console_error(page, served, name):
    base, _ = served
    page.goto(f"{base}/{name}.html", wait_until="load")
    loaded, images = page.evaluate(IMAGES)
    if name != "index":
        figures = sum(bool({"image/png", "image/jpeg"} & set(o.get("data", {})))  # 07's photos are JPEG
                      for c in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
                      for o in c.get("outputs", []))
        assert loaded == images == figures > 0
    assert page.console_errors == [] and page.offsite == []


def test_the_course_map_leads_to_a_lesson_and_on_to_the_next(page, served):
    base, _ = served
    page.goto(f"{base}/index.html")
    screenshot(page, "site_index")
    page.click(f"a[href='{NOTEBOOKS[0].stem}.html']")
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/{NOTEBOOKS[0].stem}.html")
    page.locator(f"a[href='{NOTEBOOKS[1].stem}.html']").first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/{NOTEBOOKS[1].stem}.html") and page.title()
    assert page.console_errors == [] and page.offsite == []
