"""How the tasks of a meta-batch are mapped over: vmap, a loop, or threads (Chapter 3).

The bi-level maths (:mod:`mlbook.bilevel`) is written for one task. A meta-batch runs it for
every task in one of three ways, chosen per device and model by ``strategy='auto'``:

* 'vmap': one batched call (``torch.func.vmap``); best on GPUs and for small models;
* 'loop': a Python loop over tasks; one task's graph alive at a time;
* 'threads': that loop spread over one worker thread per core, each with one kernel thread;
  best for convolutions on a multi-core CPU.

Models are called through :func:`call`, which gives each worker thread its own copy of the
module (``functional_call`` swaps parameters into a module, so threads must not share one).
"""
from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

import torch
from torch.func import functional_call

from .utils import check_choice, check_positive_int

__all__ = ["map_tasks", "run_tasks", "call", "choose_strategy", "auto_chunk_size", "STRATEGIES",
           "STRATEGY_REASONS"]

STRATEGIES = ("auto", "vmap", "loop", "threads")

# Why 'auto' picks each strategy, as measured by benchmarks/maml_speed.py (Chapter 3).
STRATEGY_REASONS = {
    "closed-form": "a plain MLP: its inner gradient is a few batched matrix products for all tasks at "
                   "once, and the meta-gradient is written out too, with no autograd graph "
                   "(mlbook.closedform)",
    "vmap": "a small dense model, or a GPU: one batched call fills the device",
    "threads": "convolutions on a multi-core CPU: whole tasks side by side, one core each",
    "loop": "convolutions on a single-core CPU (or inside a worker thread): one task at a time",
}


def choose_strategy(x: torch.Tensor) -> str:
    """The execution strategy 'auto' picks for a meta-batch whose first input is ``x`` (Chapter 3)."""
    # Measured (Chapter 3): on CPU, a batched convolution under vmap is slower and far larger in
    # memory than a loop over tasks, while small dense models gain ~10x from vmap. A convolution
    # on a few dozen images keeps one core busy on its own: with several cores, whole tasks run
    # side by side instead of splitting every small kernel between threads.
    if x.device.type == "cpu" and x.dim() >= 5:
        return "threads" if _worker_count() > 1 and not _in_worker() else "loop"
    return "vmap"


# -- tasks side by side on CPU threads -------------------------------------------------------
_worker = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _in_worker() -> bool:
    return getattr(_worker, "replicas", None) is not None


def _worker_count() -> int:
    return torch.get_num_threads()


def _start_worker() -> None:
    # One kernel thread per worker: the parallelism is across tasks, not inside each kernel.
    torch.set_num_threads(1)
    _worker.replicas = weakref.WeakKeyDictionary()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="mlbook-task",
                                                 initializer=_start_worker)
        return _pools[workers]


def call(module: torch.nn.Module, params: Mapping[str, torch.Tensor], *args, **kwargs):
    """``functional_call(module, params, args)`` that is safe in the task threads (Chapter 3).

    ``functional_call`` swaps the parameters into ``module`` for the duration of the call, so two
    threads must never share a module: in a task thread this uses that thread's own copy of it.
    """
    replicas = getattr(_worker, "replicas", None)
    if replicas is not None:
        replica = replicas.get(module)
        if replica is None:
            replica = replicas[module] = copy.deepcopy(module)
        # Whatever ``params`` leaves out comes from the module itself, as it is now.
        params = {**dict(module.named_parameters()), **dict(module.named_buffers()), **params}
        module = replica
    return functional_call(module, params, args, kwargs)


def run_tasks(fn: Callable[[int], object], tasks: int, strategy: str) -> list:
    """``[fn(0), ..., fn(tasks - 1)]``, one task after another ('loop') or side by side ('threads').

    With 'threads' each of ``torch.get_num_threads()`` worker threads runs whole tasks with one
    kernel thread; results come back in task order, so sums over them do not depend on timing
    (Chapter 3). Per-task code must draw no random numbers, and must call models through
    :func:`call`.
    """
    check_choice("strategy", strategy, ("loop", "threads"))
    workers = min(_worker_count(), tasks)
    # Under an outer torch.func transform the work must stay on this thread, where the
    # transform can see it.
    inside_transform = torch._C._functorch.peek_interpreter_stack() is not None
    if strategy == "loop" or workers < 2 or _in_worker() or inside_transform:
        return [fn(i) for i in range(tasks)]
    # Grad mode and autocast are per thread: take the caller's along.
    grad_enabled = torch.is_grad_enabled()
    autocasts = [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
                 if torch.is_autocast_enabled(device)]

    def in_worker(i):
        with contextlib.ExitStack() as modes:
            modes.enter_context(torch.set_grad_enabled(grad_enabled))
            for device, dtype in autocasts:
                modes.enter_context(torch.autocast(device, dtype=dtype))
            return fn(i)

    return list(_pool(workers).map(in_worker, range(tasks)))


def map_tasks(fn: Callable, *batched: torch.Tensor, strategy: str = "auto",
              chunk_size: int | None = None):
    """Apply a per-task function to every task of a meta-batch and stack the results (Chapter 3).

    ``strategy``: 'vmap' (one batched call; best on GPUs and for small models), 'loop' (a
    Python loop over tasks), 'threads' (that loop spread over one worker thread per core; best
    for convolutions on a multi-core CPU) or 'auto' (chosen by device, input rank and cores).
    ``chunk_size`` bounds how many tasks are processed at once under vmap.
    """
    check_choice("strategy", strategy, STRATEGIES)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    if strategy == "auto":
        strategy = choose_strategy(batched[0])
    if strategy in ("loop", "threads"):
        outputs = run_tasks(lambda i: fn(*(t[i] for t in batched)), batched[0].shape[0], strategy)
        return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outputs)
    vmapped = torch.func.vmap(fn, randomness="different")
    if chunk_size is None or chunk_size >= batched[0].shape[0]:
        return vmapped(*batched)
    parts = [vmapped(*chunk) for chunk in zip(*(t.split(chunk_size) for t in batched))]
    return torch.utils._pytree.tree_map(lambda *xs: torch.cat(xs), *parts)


def auto_chunk_size(run_chunk: Callable[[tuple], object], episode, fraction: float = 0.5) -> int | None:
    """Tasks per vmapped chunk that fit in ``fraction`` of a GPU's free memory (Chapter 3).

    ``run_chunk(part)`` runs the forward and backward pass of the tasks in ``part`` (support_x,
    support_y, query_x, query_y, each cut to those tasks). It runs once on the first task and once
    on the first two, and the growth of CUDA's peak-memory counter (reset here) gives the memory
    of a chunk as fixed + per-task x tasks. Free memory counts what the caching allocator holds
    unused. ``None`` means the whole meta-batch fits.
    """
    device = episode.support_x.device
    if device.type != "cuda":
        raise ValueError(f"auto_chunk_size measures CUDA memory; the episode is on {device}")
    tensors = (episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    tasks = episode.batch_size
    if tasks == 1:
        return None
    peaks = []
    for size in (1, 2):
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_chunk(tuple(t[:size] for t in tensors))
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_task = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_task, 0)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    chunk = int((fraction * free - fixed) // per_task)
    return None if chunk >= tasks else max(chunk, 1)
