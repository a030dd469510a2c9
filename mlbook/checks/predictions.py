"""Predict-before-you-run questions (introduction, "Practise").

A prediction question asks what an experiment will show *before* the reader runs it: a multiple
choice or a number within a tolerance. The reader writes an answer, the question grades it at
once (no function to run, so no child process), and the cell after it runs the experiment and
asserts that what it measured agrees with the answer the question holds.

In a notebook::

    from mlbook.checks.ch3 import PREDICT_FIRST_ORDER_GAP as question
    question                       # shows the question and its choices
    question.check("b")            # ✔ or ✘ with a hint; the explanation once right

Every chapter module lists its questions in ``PREDICTIONS``; the tests grade each question with
its answer (must pass) and with every other choice or a number outside the tolerance (must fail).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .core import CaseResult, Report

__all__ = ["Prediction", "chapter_predictions"]

_LETTERS = "abcdefgh"


@dataclass(frozen=True)
class Prediction:
    """One question: ``choices`` (texts, labelled a, b, c ...) with ``answer`` a letter, or no
    choices and a numeric ``answer`` accepted within ``tolerance`` (absolute). ``hint`` is shown
    after a wrong answer, ``explanation`` after a right one (introduction, "Practise")."""

    key: str
    question: str
    answer: str | float
    choices: tuple[str, ...] = field(default_factory=tuple)
    tolerance: float = 0.0
    hint: str = ""
    explanation: str = ""

    def __post_init__(self):
        if self.choices:
            if len(self.choices) > len(_LETTERS):
                raise ValueError(f"choices must be at most {len(_LETTERS)}, got {len(self.choices)}")
            if self.answer not in self.letters:
                raise ValueError(f"answer must be one of {', '.join(self.letters)}, got {self.answer!r}")
        elif not isinstance(self.answer, (int, float)) or not self.tolerance > 0:
            raise ValueError("a question without choices needs a numeric answer and a positive tolerance")

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(_LETTERS[: len(self.choices)])

    def text(self) -> str:
        lines = [self.question]
        lines += [f"  ({letter}) {choice}" for letter, choice in zip(self.letters, self.choices)]
        if not self.choices:
            lines.append("  (answer with a number)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _verdict(self, answer) -> tuple[bool, str]:
        if self.choices:
            given = answer.strip().lower().strip("()") if isinstance(answer, str) else answer
            if given not in self.letters:
                return False, f"answer with one of the letters {', '.join(self.letters)}, got {answer!r}"
            return given == self.answer, "not what the experiment below will show"
        if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
            return False, f"answer with a finite number, got {answer!r}"
        near = abs(answer - float(self.answer)) <= self.tolerance
        return near, f"{answer} is not within {self.tolerance:g} of what the experiment below will show"

    def check(self, answer, quiet: bool = False) -> Report:
        """Grade ``answer`` at once; print the report (unless ``quiet``) and return it."""
        passed, message = self._verdict(answer)
        report = Report(f"Prediction: {self.key}")
        report.results.append(CaseResult("your prediction", passed, "" if passed else message,
                                         "" if passed else self.hint))
        if not quiet:
            print(report.text())
            if passed and self.explanation:
                print(self.explanation)
            report.printed = True
        return report

    def wrong_answers(self) -> list:
        """Answers the question must refuse, for the tests: every other choice, or numbers just
        outside the tolerance on both sides."""
        if self.choices:
            return [letter for letter in self.letters if letter != self.answer]
        return [float(self.answer) - 1.5 * self.tolerance, float(self.answer) + 1.5 * self.tolerance]


def chapter_predictions(namespace: dict) -> dict[str, Prediction]:
    """``{key: question}`` for every :class:`Prediction` a chapter module defines, for the tests
    and the exercise index (introduction, "Practise")."""
    found = [value for value in namespace.values() if isinstance(value, Prediction)]
    keys = [q.key for q in found]
    if len(set(keys)) != len(keys):
        raise ValueError(f"prediction keys must be unique within a chapter, got {keys}")
    return {q.key: q for q in found}
