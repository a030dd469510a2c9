"""The exercise grader shared by every chapter (see the introduction's "Practise").

A grader runs visible and hidden cases against a student's function and prints one line per
case with a tick or a cross and a hint. It never raises into the notebook: a crash, a wrong
type or a function that never returns (time limit) is reported as a failed case.

Containment. The cases run in a child process forked from the notebook's kernel (or from
pytest), and the parent waits for their results with a deadline, then kills the child with
SIGKILL. Why a forked process, not a signal or a thread:

* a time-limit signal becomes an exception inside the student's code, and a bare ``except:``
  in a ``while True`` loop swallows it; SIGKILL is not an exception, nothing can catch it;
* a thread cannot be stopped at all, it would spin on in the kernel for ever;
* a forked child inherits the functions defined in the notebook as they are (``spawn`` would
  have to pickle them, and functions defined in ``__main__`` do not pickle), and whatever the
  student's code does to the process (grad mode, default dtype, random states, thread count,
  even a monkeypatched torch function) dies with the child.

Inside the child every call of the student's function goes through :class:`Student`, which
passes copies of the inputs (the grader computes its expected answer on the originals, so an
answer that writes into its inputs cannot move the target), reports a changed input as such,
restores torch's global state after the call, and refuses tensor subclasses that override
``__torch_function__`` (they could make ``allclose`` say yes to anything).

Forking a multi-threaded process (Jupyter's kernel has a few threads) can leave a child stuck
on a lock another thread held; the child only runs torch and the student's code, writes its
printed output to memory rather than to the kernel's sockets, and a stuck child is killed at
the limit like an endless loop. Elsewhere than on Linux (Windows has no ``fork``; on macOS a
forked child of a process that used Apple's frameworks may crash), or with the environment
variable ``MLBOOK_GRADER_IN_PROCESS=1``, the cases run in the kernel's own process under a
time-limit signal, with the same copies and state guards; there a loop that swallows every
exception can still hang the kernel.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import linecache
import math
import os
import pickle
import random
import select
import signal
import struct
import sys
import sysconfig
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Case", "CaseResult", "Report", "Student", "grade", "chapter_graders", "assert_close",
           "assert_shape", "assert_gradients", "assert_same_names", "named", "as_scalar", "entry_mistakes",
           "binomial_frequency_ok", "ks_uniform_statistic", "ks_threshold", "uniform_end_slack"]

# The whole grader (all its cases together) returns within this many seconds, plus about one
# second to start and stop the child process.
DEFAULT_TIME_LIMIT = 20.0
_OUTPUT_LIMIT = 2000


class _TimeLimit(BaseException):
    """Raised inside a case that ran past its time limit (in-process fallback only)."""


class _StudentError(Exception):
    """The student's function raised ``error``: a student error, not a grader error."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@dataclass
class Case:
    """One check: ``test(student_fn)`` raises ``AssertionError`` with a message when it fails
    (the introduction's "Practise" describes the graders)."""

    name: str
    test: Callable[[Callable], None]
    hint: str = ""
    hidden: bool = False


@dataclass
class CaseResult:
    """The outcome of one case, as the report prints it (introduction, "Practise")."""

    name: str
    passed: bool
    message: str = ""
    hint: str = ""
    hidden: bool = False
    seconds: float = 0.0
    kind: str = ""          # "", "student error", "grader error", "time limit", "not run"


@dataclass
class Report:
    """What a grader returns: per-case results; ``passed`` is True when every case passed
    (introduction, "Practise")."""

    title: str
    results: list[CaseResult] = field(default_factory=list)
    printed: bool = False
    output: str = ""

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
            sys.stdout.write(self.text() + "\n")


# -- global state a student's call could leave changed ----------------------------------
class _GlobalState:
    """A snapshot of the process-wide torch (and Python) state that a function can change."""

    def __init__(self):
        self.grad = torch.is_grad_enabled()
        self.dtype = torch.get_default_dtype()
        self.threads = torch.get_num_threads()
        self.anomaly = torch.is_anomaly_enabled()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.torch_rng = torch.random.get_rng_state()
        self.py_rng = random.getstate()
        numpy = sys.modules.get("numpy")
        self.np_rng = numpy.random.get_state() if numpy is not None else None

    def restore(self) -> dict[str, bool]:
        """Put everything back; return which parts had changed."""
        changed = {
            "grad": torch.is_grad_enabled() != self.grad,
            "dtype": torch.get_default_dtype() != self.dtype,
            "torch_rng": not torch.equal(torch.random.get_rng_state(), self.torch_rng),
            "py_rng": random.getstate() != self.py_rng,
        }
        numpy = sys.modules.get("numpy")
        if numpy is not None and self.np_rng is not None:
            now = numpy.random.get_state()
            changed["np_rng"] = not (now[2] == self.np_rng[2] and numpy.array_equal(now[1], self.np_rng[1]))
            numpy.random.set_state(self.np_rng)
        torch.set_grad_enabled(self.grad)
        torch.set_default_dtype(self.dtype)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if torch.is_anomaly_enabled() != self.anomaly:
            torch.autograd.set_detect_anomaly(self.anomaly)
        if torch.are_deterministic_algorithms_enabled() != self.deterministic:
            # Only when changed: this call imports torch's compiler, seconds on a cold process.
            torch.use_deterministic_algorithms(self.deterministic)
        torch.random.set_rng_state(self.torch_rng)
        random.setstate(self.py_rng)
        return changed


# -- the student's function, called on copies -------------------------------------------
@dataclass
class _Copies:
    tensors: list = field(default_factory=list)      # (path, original, copy)
    containers: list = field(default_factory=list)   # (path, container copy, snapshot of its items)


def _copy(value: Any, path: str, record: _Copies, depth: int = 0) -> Any:
    if isinstance(value, torch.Tensor):
        # A leaf stays a leaf (a student may read .grad after backward()); a non-leaf keeps its graph.
        c = value.detach().clone().requires_grad_(value.requires_grad) if value.is_leaf else value.clone()
        record.tensors.append((path, value, c))
        return c
    if depth > 6:
        return value
    if isinstance(value, dict):
        c = {k: _copy(v, f"{path}[{k!r}]", record, depth + 1) for k, v in value.items()}
        record.containers.append((path, c, dict(c)))
        return c
    if isinstance(value, list):
        c = [_copy(v, f"{path}[{i}]", record, depth + 1) for i, v in enumerate(value)]
        record.containers.append((path, c, list(c)))
        return c
    if type(value) is tuple:
        return tuple(_copy(v, f"{path}[{i}]", record, depth + 1) for i, v in enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return dataclasses.replace(value, **{f.name: _copy(getattr(value, f.name), f"{path}.{f.name}", record,
                                                               depth + 1)
                                                 for f in dataclasses.fields(value) if f.init})
        except Exception:  # a dataclass that cannot be rebuilt field by field is passed as it is
            return value
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value)
    return value       # numbers, strings, generators, functions: immutable or shared on purpose


def _changed_inputs(record: _Copies) -> list[str]:
    changed = []
    for path, original, c in record.tensors:
        if c.shape != original.shape or c.dtype != original.dtype or \
                not torch.equal(c.detach(), original.detach()):
            changed.append(path)
    for path, c, snapshot in record.containers:
        if isinstance(c, dict):
            same = c.keys() == snapshot.keys() and all(c[k] is snapshot[k] for k in c)
        else:
            same = len(c) == len(snapshot) and all(a is b for a, b in zip(c, snapshot))
        if not same:
            changed.append(path)
    return changed


def _plain_tensor_function(kind: type) -> bool:
    tf = getattr(kind, "__torch_function__", None)
    return tf is None or getattr(tf, "__func__", tf) in (
        getattr(torch.Tensor.__torch_function__, "__func__", torch.Tensor.__torch_function__),
        torch._C._disabled_torch_function_impl)


def _refuse_overrides(value: Any, what: str = "your result", depth: int = 0) -> None:
    """Refuse objects whose ``__torch_function__`` could answer torch's comparisons for them."""
    if depth > 6:
        return
    if hasattr(type(value), "__torch_function__") and not _plain_tensor_function(type(value)):
        raise AssertionError(f"{what} is a {type(value).__name__}, an object that overrides "
                             "__torch_function__; return plain torch tensors")
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_overrides(v, f"{what}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_overrides(v, f"{what}[{i}]", depth + 1)


def _summary(value: Any, depth: int = 0) -> str:
    """A short description of a value (types, shapes, dtypes), for messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if depth > 2:
        return type(value).__name__
    if isinstance(value, dict):
        items = list(value.items())[:6]
        return "dict {" + ", ".join(f"{k!r}: {_summary(v, depth + 1)}" for k, v in items) + \
            (", ..." if len(value) > 6 else "") + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_summary(v, depth + 1) for v in list(value)[:6])
        return f"{type(value).__name__} of {len(value)} ({inner}{', ...' if len(value) > 6 else ''})"
    text = repr(value)
    return text if len(text) < 60 else type(value).__name__


class Student:
    """The student's function as a case sees it (the graders of the
    introduction's "Practise"): each call gets copies of its inputs, runs under a guard of torch's global
    state, and is checked for changed inputs, state left changed and overriding tensor types.

    After a call, ``args`` holds the copies the function received (for gradient checks) and
    ``used_global_rng`` names any global random generator it drew from."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.args: tuple = ()
        self.output: Any = None
        self.called = False
        self.used_global_rng: list[str] = []
        try:
            self._names = [p.name for p in inspect.signature(fn).parameters.values()
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            self._names = []

    def _name(self, i: int) -> str:
        return self._names[i] if i < len(self._names) else f"argument {i + 1}"

    def __call__(self, *args):
        record = _Copies()
        copies = tuple(_copy(a, self._name(i), record) for i, a in enumerate(args))
        self.args, self.output, self.called = copies, None, True
        state = _GlobalState()
        try:
            out = self.fn(*copies)
        except (KeyboardInterrupt, _TimeLimit):
            state.restore()
            raise
        except BaseException as error:  # anything the student's code raises is the student's
            state.restore()
            raise _StudentError(error) from None
        changed = state.restore()
        self.output = out
        self.used_global_rng = [name for key, name in (("torch_rng", "torch's global generator"),
                                                       ("py_rng", "Python's random module"),
                                                       ("np_rng", "numpy.random")) if changed.get(key)]
        if changed["grad"]:
            raise AssertionError("your function left gradient tracking switched off "
                                 "(torch.set_grad_enabled(False) or torch.no_grad().__enter__() without "
                                 "switching it back), which breaks every later cell; use `with "
                                 "torch.no_grad():` around a block, or nothing at all")
        if changed["dtype"]:
            raise AssertionError("your function changed torch's default dtype "
                                 "(torch.set_default_dtype) and left it changed; leave it alone")
        inputs = _changed_inputs(record)
        if inputs:
            names = ", ".join(f"`{p}`" for p in inputs[:4]) + (" ..." if len(inputs) > 4 else "")
            raise AssertionError(f"your function changed its input {names} in place; leave the inputs as "
                                 "they are and build new tensors and containers (`p - lr * g`, not "
                                 "`p -= lr * g` or `params[name] = ...`)")
        _refuse_overrides(out)
        return out


# -- where a student's error happened ---------------------------------------------------
_LIBRARY_DIRS = tuple(os.path.normcase(os.path.realpath(d)) + os.sep for d in {
    os.path.dirname(torch.__file__), sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
    sysconfig.get_paths()["platlib"]} if d)
_THIS_FILE = os.path.normcase(os.path.realpath(__file__))
_CHECKS_DIR = os.path.dirname(_THIS_FILE) + os.sep        # reference and wrong answers live here
# mlbook's own modules count as a library too: an error inside MLP.forward is the caller's line.
_LIBRARY_DIRS += (os.path.dirname(os.path.dirname(_THIS_FILE)) + os.sep,)


def _student_frame(error: BaseException):
    """The innermost traceback frame in the student's own code (not torch's, Python's or mlbook's)."""
    frames = traceback.extract_tb(error.__traceback__)
    # The traceback starts in the grader; the student's code starts after Student.__call__.
    calls = [i for i, f in enumerate(frames) if f.name == "__call__" and _path(f.filename) == _THIS_FILE]
    frames = frames[calls[-1] + 1:] if calls else frames
    own = [f for f in frames if not _path(f.filename).startswith(_LIBRARY_DIRS)
           or _path(f.filename).startswith(_CHECKS_DIR)]
    return own[-1] if own else (frames[0] if frames else None)


def _path(filename: str) -> str:
    return filename if filename.startswith("<") else os.path.normcase(os.path.realpath(filename))


_KNOWN_ERRORS = [
    ("leaf Variable that requires grad is being used in an in-place operation",
     "you are changing an input in place; build new tensors instead"),
    ("does not require grad and does not have a grad_fn",
     "the tensor was cut from the graph (torch.no_grad(), .detach() or .item() on the way)"),
    ("Trying to backward through the graph a second time",
     "keep the graph with create_graph=True (or retain_graph=True) when you differentiate twice"),
    ("appears to not have been used in the graph",
     "the loss does not depend on those tensors: compute it with functional_call(model, params, (x,)), "
     "not model(x)"),
    ("expected scalar type", "mixed dtypes: convert with .to(x.dtype)"),
    ("must match the size of tensor", "the shapes do not line up: print the shapes of the operands"),
]


def _describe(error: BaseException) -> str:
    if isinstance(error, NotImplementedError):
        return "not implemented yet (replace `raise NotImplementedError` with your code)"
    frame = _student_frame(error)
    where = ""
    if frame is not None:
        line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
        where = f" (line {frame.lineno} of {frame.name}" + (f": `{line}`" if line else "") + ")"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    message = f"your function raised {type(error).__name__}" + (f": {text[:300]}" if text else "") + where
    if isinstance(error, KeyError):
        message += "; that key is not in the dict (take names from the inputs instead of writing them out)"
    for needle, advice in _KNOWN_ERRORS:
        if needle in str(error):
            message += f"; {advice}"
            break
    return message


def _grader_error(error: BaseException, student: Student) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at line {frames[-1].lineno} of {os.path.basename(frames[-1].filename)}" if frames else ""
    got = _summary(student.output) if student.called else "(your function had not been called yet)"
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return (f"the grader itself failed ({type(error).__name__}: {text}{where}) while checking your "
            f"output, {got}. This is a bug in the grader, not a verdict on your code: please report it "
            "with this message so that the grader can say clearly what is wrong; meanwhile compare your "
            "output's type, shape, dtype and range with the exercise's text")


def _run_case(case: Case, student_fn: Callable) -> CaseResult:
    student = Student(student_fn)
    start = time.perf_counter()
    try:
        case.test(student)
        result = CaseResult(case.name, True, hidden=case.hidden)
    except _StudentError as wrapped:
        kind = "not implemented" if isinstance(wrapped.error, NotImplementedError) else "student error"
        result = CaseResult(case.name, False, _describe(wrapped.error), case.hint, case.hidden, kind=kind)
    except AssertionError as error:
        result = CaseResult(case.name, False, str(error) or "wrong answer", case.hint, case.hidden)
    except _TimeLimit:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # the grader's own code failed: say so, do not blame the student
        result = CaseResult(case.name, False, _grader_error(error, student), case.hint, case.hidden,
                            kind="grader error")
    result.seconds = time.perf_counter() - start
    return result


# -- running the cases in a child process ------------------------------------------------
def _write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack("<I", len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


class _PipeOut(io.TextIOBase):
    """The child's stdout and stderr: what the student prints goes to the parent at once, so that
    it is shown even when the case is killed at the time limit (up to _OUTPUT_LIMIT characters)."""

    def __init__(self, fd: int):
        self.fd, self.sent = fd, 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.sent < _OUTPUT_LIMIT and text:
            part = str(text)[:_OUTPUT_LIMIT - self.sent]
            self.sent += len(part)
            _write_frame(self.fd, pickle.dumps(("out", part)))
        return len(text)


def _child(write_fd: int, student_fn: Callable, cases: list[Case]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent handles an interrupt
    # Threads forked from the parent's pool are gone; one thread is also kinder to a shared CPU.
    torch.set_num_threads(1)
    sys.stdout = sys.stderr = _PipeOut(write_fd)
    for case in cases:
        result = _run_case(case, student_fn)
        _write_frame(write_fd, pickle.dumps(("case", dataclasses.asdict(result))))


def _run_forked(student_fn: Callable, cases: list[Case], time_limit: float, report: Report) -> None:
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns about forking a multi-threaded process; see the module's docstring.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into the caller's code
        try:
            os.close(read_fd)
            _child(write_fd, student_fn, cases)
        except BaseException:  # noqa: BLE001 -- nothing may escape into a copy of the notebook
            pass
        finally:
            os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + time_limit
    data, done, killed = b"", [], False
    outputs = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            data += chunk
            while len(data) >= 4:
                size = struct.unpack("<I", data[:4])[0]
                if len(data) < 4 + size:
                    break
                kind, payload = pickle.loads(data[4:4 + size])
                data = data[4 + size:]
                if kind == "case":
                    done.append(CaseResult(**payload))
                else:
                    outputs.append(payload)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    report.results.extend(done)
    report.output = "".join(outputs)[:_OUTPUT_LIMIT]
    for i, case in enumerate(cases[len(done):]):
        if i == 0:
            message = (f"no answer within {time_limit:g} s (an endless loop?)" if killed else
                       "your function ended the Python process (os._exit, a crash in C code?)")
            kind = "time limit" if killed else "student error"
        else:
            message, kind = "not run: an earlier case did not finish", "not run"
        report.results.append(CaseResult(case.name, False, message, case.hint, case.hidden, kind=kind))


def _call_with_time_limit(fn: Callable[[], Any], seconds: float) -> Any:
    """In-process fallback: run ``fn``; raise _TimeLimit when it takes longer than ``seconds``."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise _TimeLimit()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as error:  # reported to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise _TimeLimit()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _run_in_process(student_fn: Callable, cases: list[Case], time_limit: float, report: Report) -> None:
    deadline = time.monotonic() + time_limit
    stopped = False
    for case in cases:
        if stopped:
            report.results.append(CaseResult(case.name, False, "not run: an earlier case did not finish",
                                             case.hint, case.hidden, kind="not run"))
            continue
        state = _GlobalState()
        try:
            result = _call_with_time_limit(lambda: _run_case(case, student_fn), deadline - time.monotonic())
        except _TimeLimit:
            stopped = True
            result = CaseResult(case.name, False, f"no answer within {time_limit:g} s (an endless loop?)",
                                case.hint, case.hidden, kind="time limit")
        finally:
            state.restore()
        report.results.append(result)


def _can_fork() -> bool:
    # Linux only: on macOS a forked child of a process that has used Apple's frameworks
    # (torch's Accelerate and MPS) may crash, which would read as the student's crash.
    return hasattr(os, "fork") and sys.platform.startswith("linux") and \
        os.environ.get("MLBOOK_GRADER_IN_PROCESS", "") in ("", "0")


def grade(title: str, student_fn: Callable, cases: list[Case], time_limit: float | None = None,
          quiet: bool = False) -> Report:
    """Run ``cases`` on ``student_fn``, print the report and return it; never raises.

    ``time_limit`` (seconds, default ``DEFAULT_TIME_LIMIT``) bounds all the cases together; the
    case running at the limit fails and the rest are not run (introduction, "Practise")."""
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    report = Report(title)
    if not callable(student_fn):
        report.results.append(CaseResult("is a function", False,
                                         f"expected a function, got {type(student_fn).__name__}",
                                         "define it with `def name(...):` and pass the name, without calling it"))
    elif _can_fork():
        _run_forked(student_fn, cases, time_limit, report)
    else:
        _run_in_process(student_fn, cases, time_limit, report)
    if not quiet:
        printed = "Your function printed:\n" + report.output.rstrip() + "\n" if report.output else ""
        # One write: print() writes the text and its newline apart, and a notebook's output stream
        # flushed between the two stores a second output holding only the newline.
        sys.stdout.write(printed + report.text() + "\n")
        report.printed = True
    return report


def chapter_graders(namespace: dict) -> dict[str, tuple[Callable, Callable]]:
    """``{"check_x": (check_x, reference_x)}`` for every grader in a chapter module's ``__all__``,
    for the tests (introduction, "Practise").

    Every ``check_x`` is graded against its reference ``reference_x``; a grader without one
    fails at import rather than going untested."""
    return {name: (namespace[name], namespace["reference_" + name.removeprefix("check_")])
            for name in namespace["__all__"]}


# -- helpers for the graders ---------------------------------------------------------------
def _as_tensor_or_fail(actual: Any, what: str) -> torch.Tensor:
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what} should be a torch.Tensor, got {type(actual).__name__}")
    if not _plain_tensor_function(type(actual)):
        raise AssertionError(f"{what} is a {type(actual).__name__} that overrides __torch_function__; "
                             "return plain torch tensors")
    return actual


def assert_shape(actual: Any, shape: tuple, what: str = "result") -> None:
    """Assert that ``actual`` is a tensor of ``shape`` (graders' helper; introduction, "Practise")."""
    _as_tensor_or_fail(actual, what)
    if tuple(actual.shape) != tuple(shape):
        extra = ""
        if actual.numel() == math.prod(shape):
            extra = " (the same number of entries: reshape, squeeze or keepdim?)"
        raise AssertionError(f"{what} has shape {tuple(actual.shape)}, expected {tuple(shape)}{extra}")


def assert_same_names(actual: Any, names, expected: str = "a dict with the same names as params",
                      advice: str = "") -> None:
    """Assert that ``actual`` is a dict whose keys are ``names`` (graders' helper; Chapters 1 and 3).

    ``expected`` says what to return; ``advice`` follows the message about wrong names."""
    if not isinstance(actual, dict):
        raise AssertionError(f"return {expected}, got {type(actual).__name__}")
    if set(actual) != set(names):
        raise AssertionError(f"the returned dict has the names {sorted(map(str, actual))}, expected "
                             f"{sorted(names)}{advice}")


def named(prefix: str, tensors: dict) -> dict:
    """``{"prefix['k']": v}``: a dict's tensors under the names a report shows (graders' helper;
    Chapters 1, 3 and 4)."""
    return {f"{prefix}[{k!r}]": v for k, v in tensors.items()}


def as_scalar(actual: Any) -> Any:
    """A one-element tensor as a 0-d one, anything else as it is (graders' helper; Chapters 1, 4-6):
    a loss of shape [1] or [1, 1] is as good as a scalar."""
    return actual.reshape(()) if isinstance(actual, torch.Tensor) and actual.numel() == 1 else actual


def entry_mistakes(mistakes: dict[str, Callable[[], dict]]) -> Callable[[Any], dict]:
    """For answers that are dicts (graders' helper; Chapters 1 and 3): ``mistakes`` maps a
    description to a function returning a whole wrong answer; the result maps a key to the
    ``mistakes`` argument of :func:`assert_close` for that entry.

    Each wrong answer is computed once, when first needed: an exact answer needs none, and a
    wrong one is compared entry by entry."""
    cache: dict[str, Any] = {}

    def answer(description: str) -> dict:
        if description not in cache:
            cache[description] = mistakes[description]()
        return cache[description]

    return lambda key: {d: (lambda d=d: answer(d)[key]) for d in mistakes}


def _verb(subject: str, verb: str) -> str:
    """'differs' after a singular subject, 'differ' after a plural one ("the prototypes")."""
    head = subject.split(" of ")[0].split()
    last = head[-1].strip("`'\"") if head else ""
    plural = last.endswith("s") and not last.endswith(("ss", "us"))
    return (verb[:-3] + "y" if verb.endswith("ies") else verb[:-1]) if plural else verb


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol))


def assert_close(actual: Any, expected: torch.Tensor, what: str = "result",
                 atol: float = 1e-5, rtol: float = 1e-4, mistakes: dict | None = None) -> None:
    """Assert that ``actual`` is a tensor with ``expected``'s shape and values (graders' helper;
    introduction, "Practise").

    ``mistakes`` maps a description of a common mistake to the value it gives (or a function
    returning it); a wrong answer that matches one is told which. A wrong sign, a constant
    factor and a constant offset are recognised without being listed."""
    _as_tensor_or_fail(actual, what)
    assert_shape(actual, tuple(expected.shape), what)
    if not (actual.is_floating_point() or actual.is_complex()) and expected.is_floating_point():
        raise AssertionError(f"{what} has dtype {str(actual.dtype).replace('torch.', '')}; expected "
                             f"floating-point values (integer arithmetic rounds them)")
    if actual.is_complex() and not expected.is_complex():
        raise AssertionError(f"{what} is complex; expected real values")
    want = expected.detach().double()
    got = actual.detach().to(torch.float64)
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        bad = (~torch.isfinite(got)).sum().item()
        raise AssertionError(f"{what} contains {bad} NaN or infinite value(s) (a division by zero, or the "
                             f"log of a non-positive number?)")
    if _close(got, want, atol, rtol):
        return
    for description, value in (mistakes or {}).items():
        value = value() if callable(value) else value
        if isinstance(value, torch.Tensor):
            value = value.detach().double()
            if value.shape == want.shape and not _close(value, want, atol, rtol) and _close(got, value, atol, rtol):
                raise AssertionError(f"{what} {_verb(what, 'differs')} from the expected values: it matches "
                                     f"{description}")
    base = f"{what} {_verb(what, 'differs')} from the expected values"
    if got.numel() == 1:
        g, w = got.item(), want.item()
        if abs(w) > atol and math.isclose(g, -w, rel_tol=rtol, abs_tol=atol):
            raise AssertionError(f"{what} is {g:.6g}, expected {w:.6g}: the sign is wrong")
        raise AssertionError(f"{what} is {g:.6g}, expected {w:.6g} (off by {g - w:+.3g})")
    if want.abs().max() > atol and _close(got, -want, atol, rtol):
        raise AssertionError(f"{base}: every entry has the wrong sign (a sign error, + instead of -?)")
    norm = (want * want).sum()
    if norm > 0:
        ratio = ((got * want).sum() / norm).item()
        if abs(ratio - 1) > 1e-3 and abs(ratio) > 1e-6 and _close(got, ratio * want, atol, rtol):
            raise AssertionError(f"{base}: every entry is {ratio:.4g} times the expected one (a constant "
                                 f"factor is off: a sum instead of a mean, or a missing factor?)")
    offset = (got - want).mean().item()
    if abs(offset) > atol and _close(got - offset, want, atol, rtol):
        raise AssertionError(f"{base}: every entry is off by the same {offset:+.4g} (a constant term "
                             f"missing or added?)")
    gap = (got - want).abs()
    index = tuple(int(i) for i in torch.unravel_index(gap.argmax(), gap.shape)) if gap.dim() else ()
    raise AssertionError(f"{base}: the largest difference is {gap.max().item():.3g}, at index "
                         f"{list(index)} (got {got[index].item():.6g}, expected {want[index].item():.6g})")


def _probe(out: Any) -> torch.Tensor | None:
    """A fixed random linear function of a result: its gradient sees every entry."""
    parts = out.items() if isinstance(out, dict) else [("", out)]
    total = None
    for name, t in sorted(parts, key=lambda kv: str(kv[0])):
        if not isinstance(t, torch.Tensor) or not t.requires_grad:
            continue
        g = torch.Generator().manual_seed(1000 + len(str(name)) * 31 + t.numel())
        weights = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype) + 0.5
        term = (t * weights).sum()
        total = term if total is None else total + term
    return total


def assert_gradients(actual: Any, expected: Any, student_inputs: dict[str, torch.Tensor],
                     reference_inputs: dict[str, torch.Tensor], what: str = "your result",
                     atol: float = 1e-5, rtol: float = 1e-4, mistakes: dict | None = None) -> None:
    """Assert that ``actual`` has ``expected``'s gradient with respect to every named input.

    ``student_inputs`` are the tensors the student's function received (``Student.args``),
    ``reference_inputs`` the matching ones of the expected answer. ``mistakes`` maps a
    description to a function returning the answer under that mistake, computed from the
    reference inputs; a gradient that matches its gradient is told which (Chapter 1 explains
    why the gradient matters as much as the value)."""
    names = list(student_inputs)
    wanted = ", ".join(f"`{n}`" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    s = _probe(actual)
    if s is None:
        raise AssertionError(f"{what} {_verb(what, 'carries')} no gradient: something was computed under "
                             f"torch.no_grad(), detached, or went through .item(), .data or numpy; the exercise "
                             f"needs a result differentiable with respect to {wanted}")
    reference = [reference_inputs[n] for n in names]
    try:
        got = torch.autograd.grad(s, [student_inputs[n] for n in names], allow_unused=True, retain_graph=True)
    except RuntimeError as error:
        raise AssertionError(f"differentiating {what} failed ({str(error).splitlines()[0][:200]}); "
                             "an in-place change of a tensor autograd still needed?") from None
    want = torch.autograd.grad(_probe(expected), reference, allow_unused=True, retain_graph=True)
    cache: dict[str, tuple] = {}

    def alternative(description: str, i: int):
        if description not in cache:
            probe = _probe(mistakes[description]())
            cache[description] = (torch.autograd.grad(probe, reference, allow_unused=True, retain_graph=True)
                                  if probe is not None else (None,) * len(reference))
        return cache[description][i]

    for i, (name, g, w) in enumerate(zip(names, got, want)):
        if w is None:
            continue
        if g is None:
            raise AssertionError(f"no gradient of {what} reaches `{name}`: somewhere it was cut from the graph "
                                 f"(.detach(), .data, torch.no_grad(), .item() or a new tensor)")
        assert_close(g, w, f"the gradient of {what} with respect to `{name}`", atol=atol, rtol=rtol,
                     mistakes={d: (lambda d=d, i=i: alternative(d, i)) for d in (mistakes or {})})


# -- statistics for graders of random samplers (Chapter 2) -------------------------------------
def _kl_bernoulli(q: float, p: float) -> float:
    q = min(max(q, 0.0), 1.0)
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def binomial_frequency_ok(count: int, n: int, p: float, alpha: float) -> bool:
    """Is ``count`` plausible for Binomial(n, p)? False with probability below ``alpha`` (Chapter 2).

    Chernoff's bound P(X >= k) <= exp(-n KL(k/n || p)) for k >= np (and its mirror below np)
    holds for every n, so rejecting when the bound of the observed side is below alpha / 2
    rejects a true Binomial(n, p) with probability at most alpha."""
    if p <= 0 or p >= 1:
        return count == round(n * p)
    return n * _kl_bernoulli(count / n, p) <= math.log(2 / alpha)


def ks_uniform_statistic(values: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance between the sample ``values`` and U[low, high] (Chapter 2)."""
    v = torch.sort(values.detach().double().flatten()).values
    n = v.numel()
    cdf = ((v - low) / (high - low)).clamp(0, 1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())


def ks_threshold(n: int, alpha: float) -> float:
    """The KS distance a correct sampler exceeds with probability at most ``alpha`` (Chapter 2).

    Massart's Dvoretzky-Kiefer-Wolfowitz inequality: P(D_n > eps) <= 2 exp(-2 n eps^2)."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def uniform_end_slack(n: int, width: float, alpha: float) -> float:
    """How far from an end of U[a, a + width] the nearest of ``n`` draws may stay (Chapter 2).

    P(min of n draws > a + s) = (1 - s / width)^n; this s makes it alpha."""
    return width * (1 - alpha ** (1 / n))
