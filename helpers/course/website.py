"""`python -m helpers.course site`: the executed lessons as a static site in build/site, readable offline.

Plain nbconvert, the tool the kit already installs: one self-contained page per lesson from the committed
`cpu` outputs (figures embedded, nothing executed), through a template that loads nothing from a CDN; links
between lessons rewritten from `.ipynb` to `.html`; a bar on each page with the previous and next lesson and
its measured runtime and results; and `index.html`, the course map. Runtimes come from `build/summary.json`
(`make course`) when it holds a `cpu` run, and so do the results: the values each lesson recorded in that run.
"""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import nbformat

from helpers.course.notebook import BUILD, NOTEBOOKS, format_value
from helpers.course.runner import course_notebooks

TEMPLATES = Path(__file__).resolve().parent / "site_template"
LESSON_LINK = re.compile(r"(\]\(\s*<?)((?![a-z]+://)[^)\s#>]+)\.ipynb((?:#[^)\s>]*)?>?\s*\))")
COLAB_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")
HIDDEN_RECORDS = ("profile", "model", "dataset")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.5}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;"
         "vertical-align:top}")


def title_of(notebook: nbformat.NotebookNode) -> str:
    return re.sub(r"^#\s*", "", notebook.cells[0].source.splitlines()[0]).strip()


def measured_runs(summary: Path) -> dict[str, dict]:
    """Each notebook's row of a `course run` summary (seconds, records), when that run was in the cpu profile
    (the committed outputs' profile); empty when there is none."""
    try:
        results = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    return {r["notebook"]: r for r in results
            if isinstance(r, dict) and not r.get("error") and r.get("records", {}).get("profile") == "cpu"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def results_text(records: dict | None) -> str:
    if records is None:
        return "not recorded"
    shown = {k: v for k, v in records.items() if k not in HIDDEN_RECORDS and isinstance(v, (int, float, str, bool))}
    return ", ".join(f"{key} = {format_value(value)}" for key, value in shown.items()) or "-"


def for_the_site(notebook: nbformat.NotebookNode, bar: str) -> nbformat.NotebookNode:
    """The notebook as the site shows it: lesson links to pages, the Colab badge as a plain link (no image
    from the network), and the navigation bar above and below."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = COLAB_BADGE.sub(r"[Open in Colab](\1)", LESSON_LINK.sub(r"\1\2.html\3", cell.source))
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(bar, id="site-navigation-top"))
    notebook.cells.append(nbformat.v4.new_markdown_cell(bar, id="site-navigation-bottom"))
    return notebook


def navigation(stems: list[str], titles: dict[str, str], index: int, runtime: str, results: str) -> str:
    links = ["[course map](index.html)"]
    if index > 0:
        links.insert(0, f"[← {titles[stems[index - 1]]}]({stems[index - 1]}.html)")
    if index + 1 < len(stems):
        links.append(f"[{titles[stems[index + 1]]} →]({stems[index + 1]}.html)")
    return " · ".join(links) + f"\n\n*cpu profile: {runtime}; recorded results: {results}*"


def index_page(rows: list[tuple[str, str, str, str]]) -> str:
    measured = ("Runtimes are those of <code>make course</code> in the <code>cpu</code> profile on the machine "
                "that built this site." if any(runtime != "not measured" for _, _, runtime, _ in rows) else
                "Runtimes appear here after <code>make course</code> has run in the <code>cpu</code> profile.")
    body = "".join(f'<tr><td><a href="{stem}.html">{html.escape(title)}</a></td><td>{html.escape(runtime)}</td>'
                   f"<td>{html.escape(results)}</td></tr>" for stem, title, runtime, results in rows)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ViT fine-tuning course</title>"
            f"<style>{STYLE}</style></head><body><h1>ViT fine-tuning course</h1>"
            "<p>The lessons in order, as executed in the <code>cpu</code> profile: read them here, or open the "
            f"notebooks in JupyterLab to run them yourself. {measured}</p><table><tr><th>lesson</th>"
            f"<th>runtime (cpu)</th><th>recorded results</th></tr>{body}</table></body></html>\n")


def build_site(out: Path = BUILD / "site", notebooks: Path = NOTEBOOKS, summary: Path = BUILD / "summary.json"):
    """Write the course map and one page per lesson to `out` (replacing what was there); returns the pages."""
    from nbconvert import HTMLExporter

    paths = course_notebooks() if notebooks == NOTEBOOKS else sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    lessons = {path.stem: nbformat.read(path, as_version=4) for path in paths}
    stems, titles = list(lessons), {stem: title_of(nb) for stem, nb in lessons.items()}
    runs = measured_runs(summary)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)])
    pages, rows = [], []
    for index, (stem, notebook) in enumerate(lessons.items()):
        run = runs.get(stem, {})
        runtime, results = duration(run.get("seconds")), results_text(run.get("records"))
        page = for_the_site(notebook, navigation(stems, titles, index, runtime, results))
        body, _ = exporter.from_notebook_node(page, resources={"metadata": {"name": titles[stem]}})
        pages.append(out / f"{stem}.html")
        pages[-1].write_text(body, encoding="utf-8")
        rows.append((stem, titles[stem], runtime, results))
    (out / "index.html").write_text(index_page(rows), encoding="utf-8")
    return [out / "index.html", *pages]
