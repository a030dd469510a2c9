"""Conv4's 2x2 max-pool, and the normalisation before it, on a CPU from a small compiled kernel (Chapter 3).

PyTorch's max-pool reads an NCHW tensor with scalar code, and the portable way around it
(:func:`mlbook.models.max_pool_by_gather`) copies the tensor to find the winners.
``mlbook/csrc/max_pool_2x2.cpp`` compares eight windows at a time in vector registers and keeps
each winner's place in its window as one byte, from which the backward pass (the gradient at the
winners, zeros elsewhere) and the backward of the backward (the values at the winners) follow.
Measured on one core: pooling 75 x 64 x 28 x 28 float32 0.84 ms against 7.2 ms, and a
second-order MAML task on Conv4 (Omniglot, 5-way 1-shot, 15 queries), with the ReLU after each
pool done in the same pass and the group norm before it as below, 75-77 ms against 93-96 ms.
The winners are the ones PyTorch's kernel picks, ties and NaNs included, so the pool's values
and derivatives of every order are the same numbers (tests/test_gradients.py).

The normalisation before the pool joins the same pass (:func:`batch_norm_max_pool_2x2`,
:func:`group_norm_max_pool_2x2`): the kernel computes the mean and variance (per channel over the
batch for batch norm, per example and group of channels for group norm), pools the normalised
values as it computes them (the normalised map is never written out), and its backward pass
forms the normalisation's input gradient straight from the pooled gradient and the winners.
Forward and backward of 75 x 64 x 28 x 28 floats on one core: batch norm 6.1-6.3 ms against
15.5-16.6 ms for PyTorch's batch norm then the compiled pool, group norm 5.9-6.2 against 7.6-8.1.
Group norm is fused only on one kernel thread (as in the task threads of the 'threads'
strategy) and not in MAML's second-order inner step (:func:`backward_differentiated`). The
statistics are summed in another order than PyTorch's, so with a normalisation values and
derivatives agree to rounding, not bit for bit.

The kernel is compiled on first use with the machine's C++ compiler (``CXX``, else ``c++``;
under half a second) for this CPU's vector instructions, and cached in the ``kernels`` folder of
mlbook's data folder (``$MLBOOK_DATA``, else ``~/.cache/mlbook``), one file per source, compiler
and CPU. Where there is no compiler, the
compile fails, or the compiled kernel disagrees with PyTorch's on a check run at load (then
with a warning), Conv4 pools with :func:`mlbook.models.max_pool_by_gather` instead;
:func:`native_pool_status` says which path runs and why. ``MLBOOK_NATIVE_POOL=0`` chooses the
portable path from the start.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

__all__ = ["max_pool_2x2", "batch_norm_max_pool_2x2", "group_norm_max_pool_2x2", "backward_differentiated",
           "native_pool_available", "native_pool_status", "MIN_WIDTH"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "max_pool_2x2.cpp"
# Narrower rows have too few windows for a group of four: there PyTorch's path is faster
# (75 x 64 x 7 x 7: 0.61 ms against 0.28 ms).
MIN_WIDTH = 8
# The code of a window whose pooled value ReLU set to zero: no gradient flows through it.
DEAD = 4
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: str | None = None  # None: not tried yet; otherwise what happened, for the user


def _cpu_signature() -> str:
    # The kernel is built for this CPU's vector instructions: a cached copy may serve only a
    # CPU with the same ones.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(wanted))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    from .data.omniglot import default_data_dir  # mlbook's one cache folder

    return default_data_dir() / "kernels"


def _compile(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                         _cpu_signature().encode(), platform.machine().encode()]))
        name = f"max_pool_2x2-{key.hexdigest()[:20]}.so"
        # Where the cache folder cannot be written, a private folder of this process: never a
        # shared temporary folder, where another user could have left a library to be loaded.
        for folder in (_cache_dir(), None):
            try:
                folder = Path(tempfile.mkdtemp(prefix="mlbook-kernels-")) if folder is None else folder
                target = folder / name
                if target.exists():
                    return target
                folder.mkdir(parents=True, exist_ok=True)
                # Built beside its final name and renamed into place, so another process
                # never loads a half-written library.
                fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
            except OSError:
                continue
            try:
                built = subprocess.run([compiler, "-std=c++17", *flags, "-shared", "-fPIC", str(_SOURCE),
                                        "-o", partial], capture_output=True, text=True, timeout=300)
                if built.returncode == 0:
                    os.replace(partial, target)
                    return target
                last_line = (built.stderr.strip().splitlines() or ["failed"])[-1]
                errors.append(f"{' '.join(flags)}: {last_line}")
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
            break
    raise RuntimeError("; ".join(errors) or "no writable cache folder")


def _bind(library: ctypes.CDLL) -> None:
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for kind in ("pool", "unpool", "select"):
        function = getattr(library, f"{kind}_float32")
        relu_flag = [ctypes.c_int] if kind == "pool" else []
        function.argtypes = [pointer, pointer, pointer, size, size, size] + relu_flag
        function.restype = None
    library.norm_stats_float32.argtypes = [pointer] + [size] * 4 + [ctypes.c_double, pointer, pointer]
    library.norm_pool_float32.argtypes = [pointer] * 5 + [size] * 5 + [ctypes.c_int] + [pointer] * 2
    library.norm_pool_backward_float32.argtypes = [pointer] * 7 + [size] * 5 + [pointer] * 3
    for name in ("norm_stats_float32", "norm_pool_float32", "norm_pool_backward_float32"):
        getattr(library, name).restype = None


def _agrees_with_torch() -> bool:
    # Ties (a coarse grid of values), NaNs, odd sizes and every width the kernel treats its own
    # way (groups of 8 and 4 windows, single ones): where it could pick another winner.
    gen = torch.Generator().manual_seed(0)
    for size in (5, 7, 14, 19, 28, 37):
        for width in (size, size + 1, 2 * size + 1):
            x = torch.randint(0, 3, (2, 3, size, width), generator=gen).float()
            x[0, 0, 1, 1] = x[1, 2, size - 1, width - 2] = float("nan")
            pooled, indices = F.max_pool2d(x, 2, return_indices=True)
            rows, cols = indices // x.shape[-1], indices % x.shape[-1]
            place = (rows % 2) * 2 + cols % 2
            grad = torch.randn(pooled.shape, generator=gen)
            values = x.nan_to_num()
            at_winners = values.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
            for relu in (False, True):
                want, want_code, passed = pooled, place, grad
                if relu:
                    # ReLU's backward passes the gradient where its output is above zero, or NaN.
                    want, want_code = F.relu(pooled), torch.where(pooled <= 0, DEAD, place)
                    passed = torch.ops.aten.threshold_backward(grad, want, 0)
                want_grad = torch.ops.aten.max_pool2d_with_indices_backward(passed, x, [2, 2], [2, 2], [0, 0],
                                                                            [1, 1], False, indices)
                got, code = _run_pool(x, relu)
                if not (torch.equal(want.isnan(), got.isnan()) and torch.equal(want.nan_to_num(), got.nan_to_num())
                        and torch.equal(want_code, code.long())
                        and torch.equal(_run_unpool(grad, code, x.shape), want_grad)
                        and torch.equal(_run_select(values, code), torch.where(code == DEAD, 0.0, at_winners))):
                    return False
    return _norm_pool_agrees(gen)


def _norm_pool_agrees(gen: torch.Generator) -> bool:
    # Batch and group norm's statistics are summed in another order than PyTorch's, so values and
    # gradients agree to rounding, not bit for bit.
    for shape in ((3, 4, 8, 8), (2, 6, 9, 17), (4, 8, 28, 28)):
        x = (torch.randn(shape, generator=gen) * 3 + 1).requires_grad_(True)
        weight = (torch.rand(shape[1], generator=gen) + 0.5).requires_grad_(True)
        bias = torch.randn(shape[1], generator=gen).requires_grad_(True)
        grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen)
        for groups, relu in ((0, False), (0, True), (2, True), (shape[1], False)):
            with torch.enable_grad():  # the check runs under no_grad
                normalised = (F.group_norm(x, groups, weight, bias) if groups else
                              F.batch_norm(x, None, None, weight, bias, training=True))
                want = F.max_pool2d(normalised, 2)
                want = F.relu(want) if relu else want
                got = _NormPool.apply(x, weight, bias, groups, 1e-5, relu)[0]
                pairs = zip(torch.autograd.grad(want, (x, weight, bias), grad),
                            torch.autograd.grad(got, (x, weight, bias), grad))
            if not (torch.allclose(want, got, rtol=1e-4, atol=1e-5)
                    and all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in pairs)):
                return False
    return True


def _load() -> ctypes.CDLL | None:
    global _library, _status
    if _status is not None:  # settled: every later pool asks without taking the lock
        return _library
    with _lock:
        if _status is not None:
            return _library
        if os.environ.get("MLBOOK_NATIVE_POOL", "1") == "0":
            _status = "switched off by MLBOOK_NATIVE_POOL=0"
            return None
        named = os.environ.get("CXX")
        compiler = shutil.which(named) if named else shutil.which("c++") or shutil.which("g++")
        try:
            if compiler is None:
                raise RuntimeError(f"no C++ compiler {named!r} found" if named else
                                   "no C++ compiler found (c++ or g++; or name one in CXX)")
            library = ctypes.CDLL(str(_compile(compiler)))
            _bind(library)
            _library = library
            # The first pool may come inside a transform (torch.func.grad in an inner loop) or a
            # dispatch mode: the check must see plain tensors.
            with torch._C._DisableFuncTorch(), _disable_current_modes(), torch.no_grad():
                agrees = _agrees_with_torch()
            if not agrees:
                _library = None
                _status = "not used: the compiled kernel picked other winners than PyTorch's max-pool"
                # A wrong kernel is a bug to report; a missing compiler is only a slower path.
                warnings.warn(f"mlbook: {_status}; Conv4 pools the portable way", RuntimeWarning, stacklevel=3)
                return None
            _status = f"compiled kernel (built with {Path(compiler).name})"
        except Exception as error:  # noqa: BLE001 - any failure means: pool the portable way
            _library = None
            _status = f"not available ({type(error).__name__}: {error})"
        return _library


def native_pool_available() -> bool:
    """Whether Conv4 on this CPU pools with the compiled kernel (Chapter 3); compiles it if needed."""
    return _load() is not None


def native_pool_status() -> str:
    """How Conv4 pools on this CPU, and why: compiled kernel, or not and the reason (Chapter 3)."""
    _load()
    return _status


def _planes(x: torch.Tensor) -> int:
    return x.numel() // (x.shape[-1] * x.shape[-2]) if x.numel() else 0


def _run_pool(x: torch.Tensor, relu: bool = False):
    x = x.contiguous()
    h, w = x.shape[-2:]
    out = x.new_empty(*x.shape[:-2], h // 2, w // 2)
    code = torch.empty(out.shape, dtype=torch.uint8)
    if out.numel():
        _library.pool_float32(x.data_ptr(), out.data_ptr(), code.data_ptr(), _planes(x), h, w, int(relu))
    return out, code


def _run_unpool(grad: torch.Tensor, code: torch.Tensor, size) -> torch.Tensor:
    grad = grad.contiguous()
    out = grad.new_empty(size)
    if out.numel():
        _library.unpool_float32(grad.data_ptr(), code.data_ptr(), out.data_ptr(), _planes(out), size[-2], size[-1])
    return out


def _run_select(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty(code.shape)
    if out.numel():
        _library.select_float32(x.data_ptr(), code.data_ptr(), out.data_ptr(), _planes(x), *x.shape[-2:])
    return out


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(x, relu):
        return _run_pool(x, relu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.size = inputs[0].shape

    @staticmethod
    def backward(ctx, grad, _):
        (code,) = ctx.saved_tensors
        if not torch.is_grad_enabled():  # no graph of this backward wanted: skip its bookkeeping
            return _run_unpool(grad, code, ctx.size), None
        return _Unpool.apply(grad, code, ctx.size), None


class _Unpool(torch.autograd.Function):
    # The gradient at the winners, zeros elsewhere; linear in ``grad``, so its derivative
    # is the values at the winners (_Select), whose derivative is this again.
    @staticmethod
    def forward(grad, code, size):
        return _run_unpool(grad, code, size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return _run_select(grad, code), None, None
        return _Select.apply(grad, code), None, None


class _Select(torch.autograd.Function):
    @staticmethod
    def forward(x, code):
        return _run_select(x, code)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.size = inputs[0].shape

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return _run_unpool(grad, code, ctx.size), None
        return _Unpool.apply(grad, code, ctx.size), None


def _norm_stats(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    count = x.shape[0] * groups if groups else x.shape[1]
    mean, invstd = x.new_empty(count), x.new_empty(count)
    _library.norm_stats_float32(x.data_ptr(), x.shape[0], x.shape[1], groups, x.shape[2] * x.shape[3], eps,
                                mean.data_ptr(), invstd.data_ptr())
    return mean, invstd


def _differentiable_group_norm_backward(grad_y, x, weight, groups, eps):
    # PyTorch's group-norm backward kernel has no derivative of its own; the backward of its
    # group_norm, run with a graph (as torch.func.vjp runs it), has one.
    _, pullback = torch.func.vjp(lambda x, weight: F.group_norm(x, groups, weight, None, eps), x, weight)
    return *pullback(grad_y), grad_y.sum((0, 2, 3))


class _NormPool(torch.autograd.Function):
    # Batch norm (groups=0) or group norm, then the pool (and ReLU): the normalised map is pooled
    # as it is computed, never written out; the backward needs only x, the statistics and the
    # winners. A backward that will itself be differentiated (MAML's second order) goes through
    # PyTorch's own batch- or group-norm backward, whose derivative PyTorch provides.
    @staticmethod
    def forward(x, weight, bias, groups, eps, relu):
        x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
        batch, channels, h, w = x.shape
        mean, invstd = _norm_stats(x, groups, eps)
        out = x.new_empty(batch, channels, h // 2, w // 2)
        code = torch.empty(out.shape, dtype=torch.uint8)
        _library.norm_pool_float32(x.data_ptr(), mean.data_ptr(), invstd.data_ptr(), weight.data_ptr(),
                                   bias.data_ptr(), batch, channels, groups, h, w, int(relu), out.data_ptr(),
                                   code.data_ptr())
        return out, code, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, groups, eps, _ = inputs
        _, code, mean, invstd = output
        ctx.mark_non_differentiable(code, mean, invstd)
        ctx.save_for_backward(x, weight, code, mean, invstd)
        ctx.groups, ctx.eps = groups, eps

    @staticmethod
    def backward(ctx, grad, *_):
        x, weight, code, mean, invstd = ctx.saved_tensors
        batch, channels, h, w = x.shape
        groups = ctx.groups
        if torch.is_grad_enabled():
            grad_y = _Unpool.apply(grad, code, x.shape)
            if groups:
                grads = _differentiable_group_norm_backward(grad_y, x, weight, groups, ctx.eps)
            else:
                grads = torch.ops.aten.native_batch_norm_backward(grad_y, x, weight, None, None, mean, invstd,
                                                                  True, ctx.eps, [True, True, True])
            return *grads, None, None, None
        x, grad, weight = x.contiguous(), grad.contiguous(), weight.contiguous()
        grad_x, grad_weight, grad_bias = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
        selected = _run_select(x, code)
        _library.norm_pool_backward_float32(grad.data_ptr(), code.data_ptr(), selected.data_ptr(), x.data_ptr(),
                                            mean.data_ptr(), invstd.data_ptr(), weight.data_ptr(), batch, channels,
                                            groups, h, w, grad_x.data_ptr(), grad_weight.data_ptr(),
                                            grad_bias.data_ptr())
        return grad_x, grad_weight, grad_bias, None, None, None


_twice_differentiated = threading.local()


@contextlib.contextmanager
def backward_differentiated():
    """Marks forward passes whose backward will itself be differentiated (Chapter 3).

    MAML's second-order inner step (:func:`mlbook.bilevel.differentiable_gradient`) runs its
    forward pass inside this. There group norm is not fused with the pool: the backward of the
    fused op would have to re-run PyTorch's group norm to be differentiable, which costs more
    than fusing saves.
    """
    before = getattr(_twice_differentiated, "on", False)
    _twice_differentiated.on = True
    try:
        yield
    finally:
        _twice_differentiated.on = before


def _norm_pool(x, weight, bias, groups, eps, relu):
    # The kernel runs on one thread. PyTorch's group norm is fast enough that, given more
    # kernel threads (a whole batch in one call, not a task thread), it wins (240 x 32 x 28 x 28
    # on two threads, forward and backward: 8.2 ms against 10.7 fused); its batch norm is not
    # (15 ms against 10).
    if groups and (torch.get_num_threads() > 1 or getattr(_twice_differentiated, "on", False)):
        return None
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.shape[-1] < MIN_WIDTH
            or x.shape[-2] < 2 or weight is None or bias is None
            or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (weight, bias))
            or (groups and x.shape[1] % groups) or (not groups and x.shape[0] * x.shape[2] * x.shape[3] < 2)
            or _load() is None):
        return None
    return _NormPool.apply(x, weight, bias, int(groups), float(eps), bool(relu))[0]


def batch_norm_max_pool_2x2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                            relu: bool = False) -> torch.Tensor | None:
    """``F.max_pool2d(F.batch_norm(x, ..., training=True), 2)`` (then ReLU) in one kernel, or None (Chapter 3).

    Batch normalisation with the batch's own statistics (Conv4's ``norm="batch"``) followed by
    the 2x2 pool: the normalised map is pooled as it is computed, and the backward pass forms
    batch norm's input gradient from the pooled gradient directly. Values and derivatives agree
    with PyTorch's to rounding (its statistics are summed in another order); a backward that is
    itself differentiated uses PyTorch's batch-norm backward. It applies where
    :func:`max_pool_2x2` does, to a 4-d input with float32 weight and bias.
    """
    return _norm_pool(x, weight, bias, 0, eps, relu)


def group_norm_max_pool_2x2(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                            eps: float, relu: bool = False) -> torch.Tensor | None:
    """``F.max_pool2d(F.group_norm(x, groups, weight, bias, eps), 2)`` (then ReLU) in one kernel, or None (Chapter 3).

    Conv4's default ``norm="group"``, fused with the pool as :func:`batch_norm_max_pool_2x2` is;
    each example's groups of channels have their own statistics. It applies where
    :func:`max_pool_2x2` does, with ``groups`` dividing the channels.
    """
    return _norm_pool(x, weight, bias, groups, eps, relu)


def max_pool_2x2(x: torch.Tensor, relu: bool = False) -> torch.Tensor | None:
    """``F.max_pool2d(x, 2)`` from the compiled kernel, or None where it does not apply (Chapter 3).

    With ``relu``, ``F.relu(F.max_pool2d(x, 2))`` in the same pass, as Conv4 pools then applies
    ReLU: the ReLU's own pass over the pooled values, and its backward, are not needed.

    It applies to float32 CPU tensors at least ``MIN_WIDTH`` columns wide and two rows high,
    when the kernel is available (:func:`native_pool_status` says why not). The values,
    gradients and second derivatives are PyTorch's; the output is NCHW-contiguous.
    """
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() not in (3, 4)
            or x.shape[-1] < MIN_WIDTH or x.shape[-2] < 2 or _load() is None):
        return None
    values, _ = _Pool.apply(x, bool(relu))
    return values
