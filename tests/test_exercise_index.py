"""The exercises page lists every exercise of every chapter (see tests/exercise_index.py)."""
from __future__ import annotations

import json
import re

import nbformat

import exercise_index
from site_helpers import REPO, toc_sources


def test_exercises_page_is_up_to_date():
    page = (REPO / exercise_index.PAGE).read_text()
    assert page == exercise_index.render(exercise_index.collect()), (
        "book/exercises.md is out of date: run `python tests/exercise_index.py`")


def test_exercises_page_links_every_exercise_label():
    """Independent of the generator: every :label: under an {exercise} in a chapter is linked."""
    page = (REPO / exercise_index.PAGE).read_text()
    labels = []
    for source in toc_sources(REPO):
        if source.endswith(".ipynb"):
            for cell in json.loads((REPO / source).read_text())["cells"]:
                text = "".join(cell["source"])
                if cell["cell_type"] == "markdown" and "{exercise}" in text:
                    labels += re.findall(r"\{exercise\}[^\n]*\n(?:[^\n]*\n)*?\s*:label:\s*(\S+)", text)
    missing = [label for label in labels if f"`{label}`" not in page and f"<{label}>`" not in page]
    assert not missing, f"book/exercises.md misses exercises {missing}"
    assert "exercises" in " ".join(toc_sources(REPO)), "book/exercises.md is not in _toc.yml"


def _chapter(tmp_path, name, labels):
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\nText.")]
    for label in labels:
        cells.append(nbformat.v4.new_markdown_cell(
            f"```{{exercise}}\n:label: {label}\nCompute $x^2$ for a tensor. Then more.\n```"))
        cells.append(nbformat.v4.new_code_cell("def f(x):\n    raise NotImplementedError"))
    nb.cells = cells
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_missing_exercise_is_reported(tmp_path):
    path = _chapter(tmp_path, "01_demo", ["ex-1-a", "ex-1-b"])
    found = exercise_index.exercises_in_notebook(path, "book/01_demo.ipynb")
    assert [e.label for e in found] == ["ex-1-a", "ex-1-b"]
    assert found[0].summary == "Compute $x^2$ for a tensor."
    chapters = [("book/01_demo.ipynb", "1. Demo", found)]
    full = exercise_index.render(chapters)
    assert exercise_index.missing_from_page(full, chapters) == []
    # Drop one exercise from the page: the check names it.
    partial = exercise_index.render([("book/01_demo.ipynb", "1. Demo", found[:1])])
    assert exercise_index.missing_from_page(partial, chapters) == ["ex-1-b"]


def test_an_exercise_without_label_is_an_error(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("```{exercise}\nNo label here.\n```")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    try:
        exercise_index.exercises_in_notebook(path, "book/x.ipynb")
    except ValueError as exc:
        assert "label" in str(exc)
    else:
        raise AssertionError("an exercise without :label: was accepted")
