"""Every grader in mlbook.checks, both ways: the reference passes; the blank stub fails (the
plausible wrong answers are in tests/grader_answers_ch*.py, run by test_grader_catalogue.py).
Also: a grader survives a crash and an endless loop."""
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


def _stub(*args):
    """An exercise cell as the notebook hands it out, before the student writes anything."""
    raise NotImplementedError


def test_every_chapter_module_has_graders():
    modules = {p.id.split(".")[0] for p in ENTRIES}
    assert "ch1" in modules
    assert len(ENTRIES) >= 3 * len(modules)


@pytest.mark.parametrize("entry", ENTRIES)
def test_reference_passes(entry, capsys):
    grader, reference = entry
    report = grader(reference)
    assert report.passed, capsys.readouterr().out


@pytest.mark.parametrize("entry", ENTRIES)
def test_stub_fails(entry, capsys):
    grader, _ = entry
    report = grader(_stub)
    assert not report.passed
    assert "not implemented yet" in capsys.readouterr().out


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


# -- containment: what a student's code does stays in the student's code --------------------
def _square_case(fn):
    assert fn(2) == 4, "2 squared should be 4"


def test_a_loop_that_swallows_the_alarm_is_stopped(capsys):
    def swallows(x):
        while True:
            try:
                time.sleep(0.01)
            except:  # noqa: E722 -- a bare except catches any exception a time limit raises
                pass

    def spins(x):
        while True:
            try:
                pass
            except BaseException:
                continue

    for answer in (swallows, spins):
        start = time.perf_counter()
        report = grade("demo", answer, [Case("squares", _square_case, "x * x"), Case("again", _square_case, "x * x")],
                       time_limit=1.0)
        assert time.perf_counter() - start < 1.0 + 1.0
        out = capsys.readouterr().out
        assert not report.passed and "no answer within 1 s" in out and "not run" in out


def test_grad_mode_left_off_is_reported_and_restored(capsys):
    import torch
    from mlbook.checks.ch1 import check_adapt, check_sgd_step, reference_adapt, reference_sgd_step

    def leaves_grad_off(params, grads, lr):
        torch.set_grad_enabled(False)
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(123)
        torch.set_num_threads(1)
        return reference_sgd_step(params, grads, lr)

    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    report = check_sgd_step(leaves_grad_off)
    assert not report.passed and "left gradient tracking switched off" in capsys.readouterr().out
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng)
    # ... and the next grader still passes its own reference.
    assert check_adapt(reference_adapt).passed


def test_in_process_fallback_restores_state_and_limits_time(monkeypatch, capsys):
    import torch
    monkeypatch.setenv("MLBOOK_GRADER_IN_PROCESS", "1")

    def grad_off(x):
        torch.set_grad_enabled(False)
        return x * x

    report = grade("demo", grad_off, [Case("squares", _square_case, "x * x")])
    assert torch.is_grad_enabled()
    assert not report.passed and "left gradient tracking switched off" in capsys.readouterr().out

    def endless(x):
        while True:
            pass
    start = time.perf_counter()
    assert not grade("demo", endless, [Case("squares", _square_case, "x * x")], time_limit=0.5).passed
    assert time.perf_counter() - start < 2


def test_tensor_subclass_that_overrides_torch_function_is_refused(capsys):
    import torch

    class AlwaysClose(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.allclose, torch.equal):
                return True
            return super().__torch_function__(func, types, args, kwargs or {})

    def cheat(x):
        return torch.zeros(3).as_subclass(AlwaysClose)

    def case(fn):
        from mlbook.checks.core import assert_close
        assert_close(fn(1), torch.ones(3), "result")

    assert not grade("demo", cheat, [Case("ones", case, "return ones")]).passed
    assert "overrides __torch_function__" in capsys.readouterr().out


def test_student_error_names_the_line_and_grader_error_says_so(capsys):
    def crash(x):
        y = x + 1
        return y / 0 if False else [][y]

    grade("demo", crash, [Case("squares", _square_case, "x * x")])
    out = capsys.readouterr().out
    assert "your function raised IndexError" in out and "of crash: `return y / 0 if False else [][y]`" in out

    def broken_case(fn):
        fn(2)
        {}["missing"]                   # the grader's own bug, after a good call

    grade("demo", lambda x: x * x, [Case("squares", broken_case, "x * x")])
    out = capsys.readouterr().out
    assert "the grader itself failed (KeyError" in out and "not a verdict on your code" in out
    assert "your function raised" not in out


def test_changed_input_is_reported_as_such(capsys):
    import torch
    from mlbook.checks.core import assert_close

    def case(fn):
        x = torch.ones(3)
        expected = x * 2
        assert_close(fn(x), expected, "doubled")

    def doubles_in_place(x):
        return x.mul_(2)

    assert not grade("demo", doubles_in_place, [Case("doubles", case, "return x * 2")]).passed
    assert "changed its input `x` in place" in capsys.readouterr().out


def test_every_case_has_a_hint(capsys):
    for entry in ENTRIES:
        grader, _ = entry.values[0]
        report = grader(_stub)
        assert all(r.hint for r in report.results), report.text()


def test_statistical_tests_rarely_fail_a_correct_sampler():
    import math

    import torch
    from mlbook.checks.core import binomial_frequency_ok, ks_threshold, ks_uniform_statistic, uniform_end_slack

    g = torch.Generator().manual_seed(0)
    # At alpha = 0.01 a correct sampler may fail about 1 time in 100: check the rate is right.
    fails = sum(not binomial_frequency_ok(int((torch.rand(200, generator=g) < 0.3).sum()), 200, 0.3, 0.01)
                for _ in range(500))
    assert fails <= 15
    fails = sum(ks_uniform_statistic(torch.rand(300, generator=g), 0, 1) > ks_threshold(300, 0.01)
                for _ in range(500))
    assert fails <= 15
    assert not binomial_frequency_ok(0, 400, 2 / 9, 1e-9)
    assert ks_uniform_statistic(torch.linspace(0, 1, 10), 0, 1) > ks_threshold(10_000, 1e-8)
    assert math.isclose(uniform_end_slack(1, 1.0, 0.5), 0.5)


_JUNK = {
    "None": lambda *args: None,
    "a string": lambda *args: "answer",
    "a NaN tensor": lambda *args: __import__("torch").tensor(float("nan")),
    "four Nones": lambda *args: (None, None, None, None),
    "an empty dict": lambda *args: {},
    "its first input": lambda *args: args[0],
}


@pytest.mark.parametrize("entry", ENTRIES)
def test_junk_answers_are_the_students_fault_not_the_graders(entry, capsys):
    grader = entry[0]
    for name, junk in _JUNK.items():
        report = grader(junk)
        out = capsys.readouterr().out
        assert not report.passed, name
        assert all(r.kind != "grader error" for r in report.results), (name, out)


def test_in_process_fallback_reports_an_endless_loop_as_such(monkeypatch, capsys):
    monkeypatch.setenv("MLBOOK_GRADER_IN_PROCESS", "1")

    def endless(x):
        while True:
            pass
    grade("demo", endless, [Case("squares", _square_case, "x * x")], time_limit=0.3)
    assert "no answer within 0.3 s" in capsys.readouterr().out


def test_what_the_student_prints_is_shown_even_at_the_time_limit(capsys):
    def chatty(x):
        print("looking for the answer")
        while True:
            pass

    grade("demo", chatty, [Case("squares", _square_case, "x * x")], time_limit=0.5)
    out = capsys.readouterr().out
    assert "Your function printed:\nlooking for the answer" in out and "no answer within 0.5 s" in out
