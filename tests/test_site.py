"""The static site of the executed lessons: one page per lesson with every figure embedded, the course map with
measured runtimes and recorded results, links between lessons that resolve, and nothing loaded from elsewhere.
tests/browser/test_site.py opens the pages in Chromium."""
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
from nbformat.v4 import new_markdown_cell, new_notebook

from helpers.course import colab, website

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


class Page(HTMLParser):
    def __init__(self, path: Path):
        super().__init__()
        self.links, self.sources, self.ids = [], [], set()
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag in ("img", "script") and attributes.get("src"):
            self.sources.append(attributes["src"])
        if tag == "link" and attributes.get("href"):
            self.sources.append(attributes["href"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    summary = folder / "summary.json"
    summary.write_text(json.dumps(
        [{"notebook": "00_setup", "seconds": 65.2, "records": {"profile": "cpu", "test_accuracy": 0.97}, "error": ""},
         {"notebook": "01_vit_theory", "seconds": 9.0, "records": {"profile": "smoke"}, "error": ""}]))
    pages = website.build_site(folder / "html", summary=summary)
    return folder / "html", pages


FIGURE_TYPES = {"image/png", "image/jpeg"}  # lesson 07 saves its figures of photos as JPEG


def test_one_page_per_lesson_and_the_course_map(built):
    out, pages = built
    assert [p.name for p in pages] == ["index.html"] + [f"{p.stem}.html" for p in NOTEBOOKS]
    index = Page(out / "index.html")
    assert index.links == [f"{p.stem}.html" for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_figure_is_embedded(built, path):
    out, _ = built
    figures = sum(bool(FIGURE_TYPES & set(o.get("data", {}))) for c in nbformat.read(path, as_version=4).cells
                  for o in c.get("outputs", []))
    embedded = [s for s in Page(out / f"{path.stem}.html").sources
                if s.startswith(tuple(f"data:{kind};base64," for kind in FIGURE_TYPES))]
    assert len(embedded) == figures > 0


def test_links_between_lessons_resolve_and_nothing_loads_from_elsewhere(built):
    out, pages = built
    for page in pages:
        parsed = Page(page)
        assert not [s for s in parsed.sources if urlparse(s).scheme in ("http", "https")], page.name
        for link in parsed.links:
            target = urlparse(link)
            if target.scheme or not target.path:
                continue
            assert (out / target.path).is_file(), f"{page.name}: {link} leads nowhere"
            assert not target.fragment or target.fragment in Page(out / target.path).ids, f"{page.name}: {link}"
    middle = Page(out / f"{NOTEBOOKS[1].stem}.html").links
    assert {f"{NOTEBOOKS[0].stem}.html", "index.html", f"{NOTEBOOKS[2].stem}.html"} <= set(middle)


def test_runtimes_come_from_a_cpu_run_and_results_from_the_records(built):
    out, _ = built
    text = (out / "index.html").read_text(encoding="utf-8")
    rows = dict(re.findall(r'<a href="(\d\d_\w+)\.html">.*?</a></td><td>(.*?)</td>', text))
    assert rows["00_setup"] == "1 min 05 s"
    assert rows["01_vit_theory"] == "not measured"  # that summary row was a smoke run
    assert "test_accuracy = 0.97" in text  # what 00_setup recorded in that run
    assert "not recorded" in text  # 01_vit_theory's only row was a smoke run


def test_lesson_links_and_the_colab_badge_become_site_links():
    notebook = new_notebook(cells=[new_markdown_cell(
        f"# 01 · A lesson\n{colab.badge('01_a.ipynb')}\nSee [the setup](00_setup.ipynb#Parameters) and "
        "[the docs](https://example.org/page.ipynb).")])
    page = website.for_the_site(notebook, "NAV")
    text = page.cells[1].source
    assert "[the setup](00_setup.html#Parameters)" in text and "(https://example.org/page.ipynb)" in text
    assert "[Open in Colab](https://colab.research.google.com/github/" in text and "colab-badge.svg" not in text
    assert page.cells[0].source == page.cells[-1].source == "NAV"
