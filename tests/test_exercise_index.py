"""The exercises page lists every exercise of every chapter (see tests/exercise_index.py)."""
from __future__ import annotations

import importlib
import json
import re

import nbformat
import pytest

from mlbook.checks.predictions import Prediction

import exercise_index
from site_helpers import REPO, toc_sources


def test_exercises_page_is_up_to_date():
    page = (REPO / exercise_index.PAGE).read_text()
    assert page == exercise_index.render(exercise_index.collect()), (
        "book/exercises.md is out of date: run `python tests/exercise_index.py`")


def test_exercises_page_links_every_exercise_label():
    """Independent of the generator: every :label: under an {exercise} and every (pred-...)= target
    in a chapter is linked, with its kind."""
    page = (REPO / exercise_index.PAGE).read_text()
    labels = []
    for source in toc_sources(REPO):
        if source.endswith(".ipynb"):
            for cell in json.loads((REPO / source).read_text())["cells"]:
                text = "".join(cell["source"])
                if cell["cell_type"] == "markdown" and "{exercise}" in text:
                    labels += re.findall(r"\{exercise\}[^\n]*\n(?:[^\n]*\n)*?\s*:label:\s*(\S+)", text)
                if cell["cell_type"] == "markdown":
                    labels += re.findall(r"^\((pred-[\w-]+)\)=", text, re.M)
    missing = [label for label in labels if f"`{label}`" not in page and f"<{label}>`" not in page]
    assert not missing, f"book/exercises.md misses exercises {missing}"
    unkinded = [label for label in labels
                if not re.search(rf"{re.escape(label)}>?` \*\((code|derivation|prediction)\)\*", page)]
    assert not unkinded, f"book/exercises.md gives no kind for {unkinded}"
    assert "exercises" in " ".join(toc_sources(REPO)), "book/exercises.md is not in _toc.yml"


def _chapter_sources():
    return {int(m.group(1)): source for source in toc_sources(REPO)
            if (m := re.match(r"book/0*(\d+)_", source)) and source.endswith(".ipynb")}


@pytest.mark.parametrize("number", sorted(_chapter_sources()))
def test_every_prediction_question_is_posed_in_its_chapter(number):
    """Each PREDICT_X of mlbook.checks.chN is asked in chapter N by a cell calling PREDICT_X.check,
    right after a markdown cell with a (pred-...)= target, so the exercises page lists it."""
    try:
        module = importlib.import_module(f"mlbook.checks.ch{number}")
    except ModuleNotFoundError:
        pytest.skip(f"chapter {number} has no checks module")
    names = [name for name, value in vars(module).items() if isinstance(value, Prediction)]
    cells = json.loads((REPO / _chapter_sources()[number]).read_text())["cells"]
    posed = set()
    for i, cell in enumerate(cells[1:], 1):
        before = cells[i - 1]
        if cell["cell_type"] == "code" and before["cell_type"] == "markdown" and \
                re.search(r"^\(pred-[\w-]+\)=", "".join(before["source"]), re.M):
            posed |= set(re.findall(r"\b(PREDICT_\w+)\.check\(", "".join(cell["source"])))
    assert not set(names) - posed, f"questions not posed after a (pred-...)= target: {sorted(set(names) - posed)}"
    found = [e for e in exercise_index.exercises_in_notebook(REPO / _chapter_sources()[number],
                                                             _chapter_sources()[number])
             if e.kind == "prediction"]
    assert len(found) == len(names), (found, names)


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


def test_kinds_derivation_and_prediction_are_read(tmp_path, monkeypatch):
    """A ``:class: derivation`` exercise is a derivation; a (pred-...)= target followed by a cell
    calling PREDICT_X.check is a prediction whose summary is the question's text."""
    import types

    fake = types.ModuleType("mlbook.checks.ch9")
    fake.PREDICT_DEMO = Prediction("demo", "Which is larger? Think first.", "b", choices=("1", "2"))
    monkeypatch.setitem(__import__("sys").modules, "mlbook.checks.ch9", fake)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 9. Demo"),
        nbformat.v4.new_markdown_cell("(pred-9-demo)=\n**Predict.** Which?"),
        nbformat.v4.new_code_cell("my_prediction = None\nPREDICT_DEMO.check(my_prediction);"),
        nbformat.v4.new_markdown_cell("```{exercise}\n:label: ex-9-derive\n:class: derivation\n"
                                      "Derive the gradient. Then code it.\n```"),
        nbformat.v4.new_markdown_cell("```{exercise}\n:label: ex-9-code\nWrite f.\n```"),
    ]
    path = tmp_path / "09_demo.ipynb"
    nbformat.write(nb, path)
    found = exercise_index.exercises_in_notebook(path, "book/09_demo.ipynb")
    assert [(e.label, e.kind) for e in found] == [("pred-9-demo", "prediction"), ("ex-9-derive", "derivation"),
                                                  ("ex-9-code", "code")]
    assert found[0].summary == "Which is larger? Think first."
    assert found[1].summary == "Derive the gradient."
    page = exercise_index.render([("book/09_demo.ipynb", "9. Demo", found)])
    assert "{ref}`pred-9-demo <pred-9-demo>` *(prediction)*: Which is larger?" in page
    assert "{ref}`ex-9-derive` *(derivation)*" in page
    assert exercise_index.missing_from_page(page, [("book/09_demo.ipynb", "9. Demo", found)]) == []


def test_a_prediction_without_its_question_is_an_error(tmp_path, monkeypatch):
    import types

    monkeypatch.setitem(__import__("sys").modules, "mlbook.checks.ch9", types.ModuleType("mlbook.checks.ch9"))
    for follow in ("print('no check here')", "PREDICT_MISSING.check(None)"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell("(pred-9-x)=\nPredict."), nbformat.v4.new_code_cell(follow)]
        path = tmp_path / "09_demo.ipynb"
        nbformat.write(nb, path)
        with pytest.raises(ValueError, match="pred-9-x"):
            exercise_index.exercises_in_notebook(path, "book/09_demo.ipynb")
