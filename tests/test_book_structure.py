"""One coherent book: every chapter in _toc.yml follows the book's conventions.

These checks read the notebooks (no execution, no browser): the Colab install cell, the
device line, "What you will learn" and "Summary" sections, exercises with solutions, no
stored outputs, citations that exist in the bibliography and links to chapters that exist.
"""
from __future__ import annotations

import json
import re

import pytest

from site_helpers import REPO, toc_sources

NOTEBOOKS = [s for s in toc_sources() if s.endswith(".ipynb")]
# Numbered chapters teach and have exercises; other notebooks (the Results page) only show.
CHAPTERS = [s for s in NOTEBOOKS if re.match(r"book/\d+_", s)]
INSTALL_CELL = (
    "# Colab or a fresh Jupyter: install mlbook from the repository when it is missing.\n"
    "try:\n"
    "    import mlbook\n"
    "except ImportError:\n"
    '    %pip install -q "mlbook @ git+https://github.com/learning-to-learn/learning-to-learn"'
)
BIB_KEYS = set(re.findall(r"^@\w+\{([^,]+),", (REPO / "book" / "references.bib").read_text(), re.M))


def _cells(source):
    return json.loads((REPO / source).read_text())["cells"]


def _text(cell):
    return "".join(cell["source"])


def _markdown(source):
    return "\n".join(_text(c) for c in _cells(source) if c["cell_type"] == "markdown")


def test_the_book_has_chapters():
    assert CHAPTERS, "_toc.yml lists no chapter notebook"


@pytest.mark.parametrize("source", NOTEBOOKS)
def test_first_cell_installs_mlbook_only_when_missing(source):
    first = _cells(source)[0]
    assert first["cell_type"] == "code" and "remove-cell" in first["metadata"].get("tags", []), \
        "the first cell must be the Colab install cell, tagged remove-cell"
    assert _text(first).strip() == INSTALL_CELL, "the install cell differs from the book's convention"
    # Run it the way IPython would: with mlbook importable, it must do nothing else.
    from IPython.core.inputtransformer2 import TransformerManager

    code = TransformerManager().transform_cell(_text(first))
    calls = []
    namespace = {"get_ipython": lambda: type("Shell", (), {"run_line_magic": lambda *a: calls.append(a)})()}
    exec(compile(code, source, "exec"), namespace)
    assert "mlbook" in namespace and calls == [], "the install cell ran pip although mlbook is installed"


@pytest.mark.parametrize("source", CHAPTERS)
def test_chapter_prints_its_device(source):
    code = "\n".join(_text(c) for c in _cells(source)[1:4] if c["cell_type"] == "code")
    assert "get_device()" in code and "print(" in code, \
        "the setup cell (right after the title) must detect and print the device"


@pytest.mark.parametrize("source", CHAPTERS)
def test_chapter_sections(source):
    text = _markdown(source)
    assert re.search(r"^# \d+\. \S", text, re.M), "the chapter needs a '# N. Title' heading"
    assert re.search(r"^(#+ |\*\*)What you will learn", text, re.M | re.I), "missing 'What you will learn'"
    assert re.search(r"^#+ Summary", text, re.M), "missing a 'Summary' section"


@pytest.mark.parametrize("source", CHAPTERS)
def test_exercises_have_solutions(source):
    text = _markdown(source)
    labels = re.findall(r"\{exercise\}[^\n]*\n(?:[^\n]*\n)*?\s*:label:\s*(\S+)", text)
    solved = set(re.findall(r"\{solution\}\s+(\S+)", text))
    assert len(labels) >= 3, f"a chapter needs at least three exercises, found {labels}"
    assert not [label for label in labels if label not in solved], "an exercise has no solution"


@pytest.mark.parametrize("source", NOTEBOOKS)
def test_no_stored_outputs(source):
    notebook = json.loads((REPO / source).read_text())
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3"
    stored = [i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code" and c.get("outputs")]
    assert not stored, f"cells {stored} have stored outputs; clear them before committing"


@pytest.mark.parametrize("source", NOTEBOOKS)
def test_citations_and_chapter_links_resolve(source):
    text = _markdown(source)
    keys = {k.strip() for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", text) for k in group.split(",")}
    assert not keys - BIB_KEYS, f"citations missing from book/references.bib: {sorted(keys - BIB_KEYS)}"
    folder = (REPO / source).parent
    links = re.findall(r"\]\(([^)#\s]+\.(?:ipynb|md))(?:#[^)]*)?\)", text)
    missing = [link for link in links if "://" not in link and not (folder / link).is_file()]
    assert not missing, f"links to pages that do not exist: {missing}"


# The theme's content column, at its full width (a window of 1440 px or more), holds 89
# characters of its 14 px monospace code (measured in Chromium): wider lines scroll sideways.
MAX_CODE_LINE = 89


def over_wide_lines(notebook: dict, limit: int = MAX_CODE_LINE) -> list[str]:
    """``cell N line M (L chars)`` for every code line longer than ``limit``."""
    found = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        for number, line in enumerate(_text(cell).splitlines(), 1):
            if len(line) > limit:
                found.append(f"cell {index} line {number} ({len(line)} chars): {line.strip()[:60]}")
    return found


def test_over_wide_code_line_is_found():
    """The width check itself: a planted 90-character line is reported, 89 is not."""
    notebook = {"cells": [{"cell_type": "code", "source": ["x = 1\n", "y = '" + "a" * 83 + "'\n",
                                                           "z = '" + "b" * 84 + "'"]}]}
    found = over_wide_lines(notebook)
    assert len(found) == 1 and found[0].startswith("cell 0 line 3 (90 chars)"), found


@pytest.mark.parametrize("source", CHAPTERS)
def test_code_lines_fit_the_page(source):
    wide = over_wide_lines(json.loads((REPO / source).read_text()))
    assert not wide, f"{len(wide)} code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(wide)


# Colab has the notebook and the installed package, nothing else of the repository.
_REPOSITORY_PATH = re.compile(r"""["'](?:\.\./|\./)?(?:benchmarks|book|tests|mlbook|notes)/[^"']*["']"""
                              r"""|["']\.\./[^"']*["']""")


@pytest.mark.parametrize("source", CHAPTERS)
def test_code_reads_no_repository_file(source):
    """A quick static guard; tests/test_colab.py runs every chapter alone to be sure."""
    hits = [f"cell {i}: {m.group(0)}" for i, cell in enumerate(_cells(source))
            if cell["cell_type"] == "code" for m in _REPOSITORY_PATH.finditer(_text(cell))]
    assert not hits, "code cells name files of the repository:\n" + "\n".join(hits)
