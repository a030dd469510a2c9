"""Predict-before-you-run questions: each chapter's questions accept their answer and refuse
every other one, and malformed answers are graded, not raised."""
import importlib

import pytest

from mlbook.checks.predictions import Prediction

CHAPTERS = [f"ch{n}" for n in range(1, 7)]


def _questions():
    found = []
    for chapter in CHAPTERS:
        module = importlib.import_module(f"mlbook.checks.{chapter}")
        for key, question in getattr(module, "PREDICTIONS", {}).items():
            found.append(pytest.param(question, id=f"{chapter}.{key}"))
    return found


QUESTIONS = _questions()


@pytest.mark.parametrize("question", QUESTIONS)
def test_right_answer_passes_and_wrong_ones_fail(question, capsys):
    assert question.check(question.answer).passed
    for wrong in question.wrong_answers():
        assert not question.check(wrong).passed, wrong
    out = capsys.readouterr().out
    assert "✘" in out and "✔" in out


def test_choice_question_grades_letters_and_refuses_nonsense(capsys):
    q = Prediction("demo", "Which is larger?", "b", choices=("1", "2"), hint="compare them")
    assert q.check("b").passed and q.check(" (B) ").passed
    assert not q.check("a").passed
    for nonsense in ("", "z", None, 2, ["b"]):
        report = q.check(nonsense)
        assert not report.passed
    assert "compare them" in capsys.readouterr().out
    assert "(a) 1" in repr(q)


def test_number_question_uses_its_tolerance():
    q = Prediction("demo", "How many?", 10.0, tolerance=2.0)
    assert q.check(11.5, quiet=True).passed and q.check(8, quiet=True).passed
    assert not q.check(12.5, quiet=True).passed
    for nonsense in ("ten", float("nan"), True, None):
        assert not q.check(nonsense, quiet=True).passed


@pytest.mark.parametrize("bad", [dict(answer="c", choices=("x", "y")), dict(answer=3.0),
                                 dict(answer="a", tolerance=1.0)])
def test_malformed_question_is_refused(bad):
    with pytest.raises(ValueError):
        Prediction("bad", "?", **bad)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_asks_at_least_two_predictions(chapter):
    module = importlib.import_module(f"mlbook.checks.{chapter}")
    assert len(getattr(module, "PREDICTIONS", {})) >= 2
