"""Every grader against a catalogue of answers written as students write them: each wrong answer
fails with a message that names its mistake; each right answer, written differently from the
reference, passes. Also: the graders contain what a student's code does to the process."""
import importlib
import re

import pytest

import mlbook.checks.core as core

CHAPTERS = ["ch1", "ch2", "ch3", "ch4", "ch5", "ch6"]


def _catalogue():
    merged = {}
    for chapter in CHAPTERS:
        try:
            module = importlib.import_module(f"grader_answers_{chapter}")
        except ModuleNotFoundError:
            continue
        merged.update(module.CATALOGUE)
    return merged


CATALOGUE = _catalogue()


def _grader(key):
    chapter, name = key.split(".")
    return importlib.import_module(f"mlbook.checks.{chapter}").GRADERS[name][0]


@pytest.fixture(autouse=True)
def _short_time_limit(monkeypatch):
    # The endless-loop answers would otherwise hold each test for the full default limit.
    monkeypatch.setattr(core, "DEFAULT_TIME_LIMIT", 8.0)


def test_every_grader_has_a_full_catalogue():
    for chapter in CHAPTERS:
        module = importlib.import_module(f"mlbook.checks.{chapter}")
        for name in module.GRADERS:
            entry = CATALOGUE.get(f"{chapter}.{name}")
            assert entry, f"no catalogue for {chapter}.{name}"
            assert len(entry["wrong"]) >= 8 and len(entry["right"]) >= 2, f"{chapter}.{name}"


WRONG = [pytest.param(key, fn, needle, id=f"{key}-{fn.__name__}")
         for key, entry in CATALOGUE.items() for fn, needle in entry["wrong"]]
RIGHT = [pytest.param(key, fn, id=f"{key}-{fn.__name__}") for key, entry in CATALOGUE.items()
         for fn in entry["right"]]


@pytest.mark.parametrize("key, answer, needle", WRONG)
def test_wrong_answer_fails_naming_its_mistake(key, answer, needle, capsys):
    report = _grader(key)(answer)
    out = capsys.readouterr().out
    assert not report.passed, out
    failed = [r for r in report.results if not r.passed]
    assert any(re.search(needle, r.message) for r in failed), out
    for r in failed:
        assert r.message and r.hint, out
        assert r.kind != "grader error", out
    # A report never says that two equal things differ.
    assert not re.search(r"expected (\S+) and (\S+), got \1 and \2", out), out


@pytest.mark.parametrize("key, answer", RIGHT)
def test_right_answer_written_differently_passes(key, answer, capsys):
    report = _grader(key)(answer)
    assert report.passed, capsys.readouterr().out
