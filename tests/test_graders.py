"""Every grader in mlbook.checks, both ways: the reference passes; the blank stub and each
plausible wrong answer fail. Also: a grader survives a crash and an endless loop."""
import importlib
import pkgutil
import time

import pytest

import mlbook.checks
from mlbook.checks.core import Case, grade


def _grader_entries():
    entries = []
    for info in pkgutil.iter_modules(mlbook.checks.__path__):
        if not info.name.startswith("ch"):
            continue
        module = importlib.import_module(f"mlbook.checks.{info.name}")
        for name, entry in module.GRADERS.items():
            entries.append(pytest.param(entry, id=f"{info.name}.{name}"))
    return entries


ENTRIES = _grader_entries()


def test_every_chapter_module_has_graders():
    modules = {p.id.split(".")[0] for p in ENTRIES}
    assert "ch1" in modules
    assert len(ENTRIES) >= 3 * len(modules)


@pytest.mark.parametrize("entry", ENTRIES)
def test_reference_passes(entry, capsys):
    grader, reference, _, _ = entry
    report = grader(reference)
    assert report.passed, capsys.readouterr().out


@pytest.mark.parametrize("entry", ENTRIES)
def test_stub_fails(entry, capsys):
    grader, _, stub, _ = entry
    report = grader(stub)
    assert not report.passed
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("entry", ENTRIES)
def test_wrong_answers_fail(entry):
    grader, _, _, wrong_answers = entry
    assert wrong_answers, "each grader needs at least one plausible wrong answer"
    for wrong in wrong_answers:
        assert not grader(wrong).passed, wrong.__name__


def test_grader_survives_crash_and_endless_loop(capsys):
    def crash(x):
        return 1 / 0

    def endless(x):
        while True:
            pass

    def ok(fn):
        assert fn(2) == 4, "2 squared should be 4"

    cases = [Case("squares", ok, "x * x"), Case("again", ok)]
    crashed = grade("demo", crash, cases)
    assert not crashed.passed and "ZeroDivisionError" in capsys.readouterr().out
    start = time.perf_counter()
    looped = grade("demo", endless, cases, time_limit=0.5)
    assert time.perf_counter() - start < 5
    out = capsys.readouterr().out
    assert not looped.passed and "no answer within 0.5 s" in out and "not run" in out
    assert grade("demo", lambda x: x * x, cases).passed
    assert not grade("demo", "not a function", cases).passed
