"""The exercise grader shared by every chapter (see the book's "How the exercises work").

A grader runs visible and hidden cases against a student's function and prints one line per
case with a tick or a cross and a hint. It never raises into the notebook: a crash, a wrong
type or a function that never returns (time limit) is reported as a failed case.
"""
from __future__ import annotations

import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Case", "CaseResult", "Report", "grade", "assert_close", "assert_shape"]


class _TimeLimit(BaseException):
    """Raised inside a case that ran past its time limit (BaseException, so `except Exception` in
    student code cannot swallow it)."""


@dataclass
class Case:
    """One check: ``test(student_fn)`` raises ``AssertionError`` with a message when it fails."""

    name: str
    test: Callable[[Callable], None]
    hint: str = ""
    hidden: bool = False


@dataclass
class CaseResult:
    name: str
    passed: bool
    message: str = ""
    hint: str = ""
    hidden: bool = False
    seconds: float = 0.0


@dataclass
class Report:
    """What a grader returns: per-case results; ``passed`` is True when every case passed."""

    title: str
    results: list[CaseResult] = field(default_factory=list)
    printed: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def score(self) -> tuple[int, int]:
        return sum(r.passed for r in self.results), len(self.results)

    def text(self) -> str:
        lines = [f"{self.title}"]
        for r in self.results:
            label = f"{r.name}{' (hidden)' if r.hidden else ''}"
            if r.passed:
                lines.append(f"  ✔ {label}")
            else:
                lines.append(f"  ✘ {label}: {r.message}")
                if r.hint:
                    lines.append(f"      hint: {r.hint}")
        good, total = self.score
        lines.append(f"{good}/{total} checks passed." + ("  Well done!" if self.passed else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        good, total = self.score
        return f"<Report {self.title!r}: {good}/{total} passed>"

    def _ipython_display_(self) -> None:
        # The grader has already printed the report; showing it again as a cell's value
        # would only repeat it.
        if not self.printed:
            print(self.text())


def _run_with_time_limit(fn: Callable[[], Any], seconds: float) -> None:
    """Run ``fn``; raise _TimeLimit when it takes longer than ``seconds``."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise _TimeLimit()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    # Off the main thread no signal can interrupt the case: run it in a daemon thread and
    # stop waiting for it at the limit.
    outcome: dict[str, BaseException | None] = {"error": None}

    def target():
        try:
            fn()
        except BaseException as error:  # reported to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimeLimit()
    if outcome["error"] is not None:
        raise outcome["error"]


def _describe(error: BaseException) -> str:
    if isinstance(error, NotImplementedError):
        return "not implemented yet (replace `raise NotImplementedError` with your code)"
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (line {frames[-1].lineno} of {frames[-1].name})" if frames else ""
    return f"your function raised {type(error).__name__}: {error}{where}"


def grade(title: str, student_fn: Callable, cases: list[Case], time_limit: float = 10.0,
          quiet: bool = False) -> Report:
    """Run ``cases`` on ``student_fn``, print the report and return it; never raises."""
    report = Report(title)
    if not callable(student_fn):
        report.results.append(CaseResult("is a function", False,
                                          f"expected a function, got {type(student_fn).__name__}"))
    else:
        timed_out = False
        for case in cases:
            if timed_out:
                # One endless loop is enough: do not make the student wait for every case.
                report.results.append(CaseResult(case.name, False, "not run: an earlier case ran out of time",
                                                 case.hint, case.hidden))
                continue
            start = time.perf_counter()
            state = torch.random.get_rng_state()
            try:
                _run_with_time_limit(lambda: case.test(student_fn), time_limit)
                result = CaseResult(case.name, True, hidden=case.hidden)
            except _TimeLimit:
                timed_out = True
                result = CaseResult(case.name, False, f"no answer within {time_limit:g} s "
                                    "(an endless loop?)", case.hint, case.hidden)
            except AssertionError as error:
                result = CaseResult(case.name, False, str(error) or "wrong answer", case.hint, case.hidden)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # a student's crash is a failed case, not a crash
                result = CaseResult(case.name, False, _describe(error), case.hint, case.hidden)
            finally:
                torch.random.set_rng_state(state)
            result.seconds = time.perf_counter() - start
            report.results.append(result)
    if not quiet:
        print(report.text())
        report.printed = True
    return report


def assert_close(actual: Any, expected: torch.Tensor, what: str = "result",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Assert that ``actual`` is a tensor with ``expected``'s shape and values (graders' helper)."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what} should be a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if not torch.allclose(actual.detach().to(expected.dtype), expected.detach(), atol=atol, rtol=rtol):
        gap = (actual.detach().to(expected.dtype) - expected.detach()).abs().max().item()
        raise AssertionError(f"{what} differs from the expected values (largest difference {gap:.3g})")


def assert_shape(actual: Any, shape: tuple, what: str = "result") -> None:
    """Assert that ``actual`` is a tensor of ``shape`` (graders' helper)."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what} should be a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(shape):
        raise AssertionError(f"{what} has shape {tuple(actual.shape)}, expected {tuple(shape)}")
