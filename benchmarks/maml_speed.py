"""MAML meta-training speed: mlbook against learn2learn and higher, side by side (Chapter 3).

Workloads (the standard MAML settings):

* ``conv4``: Omniglot-style 5-way 1-shot, 15 queries per class, 28x28 inputs, Conv4 (4 x
  [conv3x3 64, normalisation without running statistics, ReLU, max-pool 2] + linear head),
  meta-batch 32. mlbook runs its own ``Conv4``; the peers run the same layers and weights built
  from torch's modules (``nn.BatchNorm2d`` for ``--norm batch``), called in order, as their
  users write it;
* ``sinusoid``: the 1-40-40-1 MLP on sinusoid regression, K = 10 support and 10 query
  points, meta-batch 25.

Each is run with 1 and 5 inner steps, second and first order, with an Adam outer step. All
implementations start from the same weights and see the same batches. The script first checks
that they agree on the meta-loss and meta-gradient of one batch, then times them
*alternately* in one process (shared machines drift by 2x between runs, so only ratios taken
side by side mean anything) and prints tasks per second, peak memory and the ratio of mlbook
to the fastest peer. mlbook's execution strategy is the one ``MAML.execution_strategy`` resolves
'auto' to, printed with the reason; ``--strategies`` also times the others. Where that is the
closed form, ``mlbook[closed-form+compile]`` (``MAML(compile=True)``) is timed beside it, its
one-off compile time printed, and its ratio printed too (``--no-compile`` leaves it out).

On CUDA, ``mlbook[...+graph]`` is the same step recorded once as a CUDA graph and replayed
(``mlbook.graphs.GraphedMetaStep``), and ``mlbook[vmap:K]`` (and ``+graph``) the most tasks per
chunk whose measured memory is at most 8x the leanest peer's (``--no-graph`` leaves the recorded
ones out). Every run prints the work per task (convolutions and matrix products of the per-task
maths, counted by ``torch.utils.flop_counter``) and the FLOP/s each implementation achieves; on
CUDA also as a share of the device's float32 and TF32 matrix-product peaks, measured first.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` around each implementation (for a
recorded graph, at least what recording it took or its memory pool keeps); on
CPU, the growth of the peak resident set of a fresh subprocess that runs two meta-steps of
one implementation (``--no-memory`` skips this).

Allocator: on CPU the script re-executes itself with jemalloc preloaded when Debian's
``libjemalloc2`` is installed (``apt-get install libjemalloc2``), configured never to hand
memory back; glibc's malloc otherwise costs vmap-style code millions of page faults per step.
Every implementation runs in the same process, so all are measured under the same allocator,
which the output names. ``--allocator glibc`` keeps the default one.

The peers (never project dependencies) live in their own virtual environment::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install "torch==2.14.1" "torchvision==0.29.1" "numpy<2" \
        cython wheel setuptools tqdm higher gym scipy requests
    # learn2learn 0.2.0 ships Cython sources that do not build on Python 3.11: regenerate them.
    /work/peers-venv/bin/pip download learn2learn==0.2.0 --no-deps --no-binary :all: -d /tmp/l2l
    cd /tmp/l2l && tar xzf learn2learn-0.2.0.tar.gz && cd learn2learn-0.2.0
    for f in learn2learn/data/*.pyx; do /work/peers-venv/bin/cython -3 "$f"; done
    /work/peers-venv/bin/pip install --no-build-isolation --no-deps .

(learn2learn imports torchvision and gym at import time; torchvision imports only beside the
matching torch, hence the pins.) Then run from the repository root::

    PYTHONPATH=. /work/peers-venv/bin/python benchmarks/maml_speed.py

Without the peers (``python benchmarks/maml_speed.py``) the script says which are missing and
compares the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlbook  # noqa: E402
from mlbook.taskmap import STRATEGY_REASONS  # noqa: E402
from mlbook.learners import MAML  # noqa: E402
from mlbook.models import MLP, BatchStatNorm, Conv4, init_params  # noqa: E402
from mlbook.graphs import GraphedMetaStep  # noqa: E402
from mlbook.train import make_optimiser  # noqa: E402

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"

COMPILED = "+compile"  # the suffix of a strategy run with MAML(compile=True)
GRAPHED = "+graph"  # the suffix of a strategy whose meta-step is replayed as a CUDA graph
PEER_MEMORY_FACTOR = 8  # the memory-bounded variant's budget: this many times the peers' peak

WORKLOADS = {
    "conv4": dict(batch=32, inner_lr=0.4, loss="cross_entropy"),
    "sinusoid": dict(batch=25, inner_lr=0.01, loss="mse"),
}


def allocator_name() -> str:
    return "jemalloc (retain, no decay)" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"


def processor_name() -> str:
    """The CPU's model name (timings differ several-fold between the machines this runs on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    return dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=processor_name(),
                cpus=os.cpu_count(), allocator=allocator_name(), load_average=round(os.getloadavg()[0], 2),
                conv4_cpu_pooling=mlbook.maxpool.native_pool_status())


def maybe_reexec_with_jemalloc(args) -> None:
    if args.allocator != "jemalloc" or args.device != "cpu" or "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    if not os.path.exists(JEMALLOC):
        print(f"[allocator] {JEMALLOC} not found: using glibc malloc for every implementation")
        return
    env = dict(os.environ, LD_PRELOAD=JEMALLOC, MALLOC_CONF=JEMALLOC_CONF)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# -- data ----------------------------------------------------------------------------------
def make_family(workload: str, device):
    if workload == "sinusoid":
        return mlbook.SinusoidFamily(shots=10, queries=10, device=device), "sinusoids"
    try:
        from mlbook.data import load_image_classes

        data = load_image_classes("auto", image_size=28, download=False, verbose=False)
        images, source = data.images, data.source
    except Exception as error:  # the speed of a step does not depend on what the pixels show
        images = (torch.rand(100, 20, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        source = f"random pixels ({type(error).__name__})"
    return mlbook.ImageClassFamily(images, ways=5, shots=1, queries=15, device=device), source


def make_model(workload: str, norm: str):
    return Conv4(5, norm=norm) if workload == "conv4" else MLP()


class TorchConv4(torch.nn.Module):
    """The peers' Conv4: the layers and parameter names of mlbook's, from torch's own modules
    (native batch norm without running statistics in place of ``BatchStatNorm``), run in order."""

    def __init__(self, model: Conv4):
        super().__init__()
        self.features = torch.nn.Sequential(*[
            torch.nn.BatchNorm2d(layer.weight.shape[0], eps=layer.eps, track_running_stats=False)
            if isinstance(layer, BatchStatNorm) else copy.deepcopy(layer) for layer in model.features])
        self.head = copy.deepcopy(model.head)

    def forward(self, x):
        return self.head(self.features(x))


def peer_model(model):
    if isinstance(model, Conv4):
        return TorchConv4(model).to(next(model.parameters()).device)
    return model


def loss_of(workload):
    return F.cross_entropy if workload == "conv4" else F.mse_loss


# -- implementations: each returns step(episode, update) -> loss ---------------------------
def outer_adam(parameters):
    """The same outer optimiser for every implementation: Adam 1e-3, as the trainer builds it
    (fused where this torch has the kernel)."""
    return make_optimiser("adam", parameters, 1e-3)


class MlbookImpl:
    def __init__(self, model, phi, workload, steps, first_order, strategy, chunk_size=None, compiled=False,
                 graphed=False):
        cfg = WORKLOADS[workload]
        self.learner = MAML(model, inner_lr=cfg["inner_lr"], steps=steps, first_order=first_order,
                            loss=cfg["loss"], strategy=strategy, chunk_size=chunk_size, compile=compiled)
        self.state = self.learner.init(0, device=next(iter(phi.values())).device)
        self.state["params"] = {k: v.detach().clone().requires_grad_() for k, v in phi.items()}
        self.opt = outer_adam(self.learner.parameters(self.state))
        self.names = list(phi)
        self.first_step_seconds = None
        self.graphed = graphed
        # One recorded graph per TF32 setting: the agreement check runs in full float32, the
        # timing with the device's defaults, and a graph keeps the kernels it was recorded with.
        self.graphs, self.graph_memory_mb = {}, {}

    def _graph(self, ep):
        key = tf32_setting()
        if key not in self.graphs:
            # What a recorded step holds: the peak while it is recorded (eager warm-up steps and
            # the recording) or the memory kept afterwards (its private pool), whichever is more.
            with cuda_memory_growth(ep.support_x.device) as growth:
                self.graphs[key] = GraphedMetaStep(self.learner, self.state, ep)
            self.graph_memory_mb[key] = max(growth["peak_mb"], growth["kept_mb"])
        return self.graphs[key]

    def step(self, ep, update=True):
        started = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        if self.graphed:
            loss, _ = self._graph(ep).step(ep)
        else:
            loss, _ = self.learner.meta_backward(self.state, ep)  # what the trainer runs
        if self.first_step_seconds is None:  # with compile=True: the one-off compile time
            self.first_step_seconds = time.perf_counter() - started
        if update:
            self.opt.step()
        return loss

    def grads(self):
        return [self.state["params"][k].grad for k in self.names]


class PeerImpl:
    """The peers' documented usage: a Python loop over tasks, each adapted and backpropagated."""

    def __init__(self, model, phi, workload, steps, first_order):
        self.model = _module_with(peer_model(model), phi)
        self.opt = outer_adam(self.model.parameters())
        self.steps, self.loss, self.first_order = steps, loss_of(workload), first_order
        self.inner_lr = WORKLOADS[workload]["inner_lr"]

    def query_loss(self, ep, i):
        raise NotImplementedError

    def step(self, ep, update=True):
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(ep.batch_size):
            q = self.query_loss(ep, i) / ep.batch_size
            q.backward()
            total += q.detach()
        if update:
            self.opt.step()
        return total

    def grads(self):
        return [p.grad for p in self.model.parameters()]


class L2LImpl(PeerImpl):
    def __init__(self, *args):
        super().__init__(*args)
        import learn2learn as l2l

        self.maml = l2l.algorithms.MAML(self.model, lr=self.inner_lr, first_order=self.first_order)

    def query_loss(self, ep, i):
        learner = self.maml.clone()
        for _ in range(self.steps):
            learner.adapt(self.loss(learner(ep.support_x[i]), ep.support_y[i]))
        return self.loss(learner(ep.query_x[i]), ep.query_y[i])


class HigherImpl(PeerImpl):
    def __init__(self, *args):
        super().__init__(*args)
        import higher

        self.higher = higher
        self.inner_opt = torch.optim.SGD(self.model.parameters(), lr=self.inner_lr)
        # higher's first order detaches the inner gradients by callback; it still records the graph.
        self.callback = (lambda gs: [g.detach() for g in gs]) if self.first_order else None

    def query_loss(self, ep, i):
        with self.higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(self.steps):
                diffopt.step(self.loss(fmodel(ep.support_x[i]), ep.support_y[i]), grad_callback=self.callback)
            return self.loss(fmodel(ep.query_x[i]), ep.query_y[i])


def _module_with(model, phi):
    module = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(phi[name])
    return module


def available_peers():
    peers, missing = {}, {}
    for name, module, cls in (("learn2learn", "learn2learn", L2LImpl), ("higher", "higher", HigherImpl)):
        try:
            __import__(module)
            peers[name] = cls
        except Exception as error:
            missing[name] = f"{type(error).__name__}: {error}"
    return peers, missing


def build(name, model, phi, workload, steps, first_order, strategy):
    if name.startswith("mlbook"):
        chunk = None
        compiled, graphed = strategy.endswith(COMPILED), strategy.endswith(GRAPHED)
        strategy = strategy.removesuffix(COMPILED).removesuffix(GRAPHED)
        if ":" in strategy:
            strategy, chunk = strategy.split(":")
            chunk = int(chunk)
        return MlbookImpl(model, phi, workload, steps, first_order, strategy, chunk, compiled, graphed)
    peers, _ = available_peers()
    return peers[name](model, phi, workload, steps, first_order)


# -- timing --------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def full_float32():
    """No TF32 inside: on GPUs, TF32 convolutions round differently for each algorithm cuDNN picks
    (batched versus one task at a time), and five inner steps at a large learning rate turn that
    rounding into percent-level differences that say nothing about the maths."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_agreement(impls, ep):
    """|loss difference| and relative gradient difference of each implementation against the first,
    on one batch, in full float32 (the timings afterwards run with the device's defaults)."""
    rows = {}
    base_loss, base_grads = None, None
    with full_float32():
        for name, impl in list(impls.items()):
            try:
                loss = impl.step(ep, update=False)
            except Exception as error:  # a variant this device or torch cannot run is reported, not fatal
                if name.startswith("mlbook[") and name != next(iter(impls)):
                    print(f"{name} failed and is left out: {type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}")
                    del impls[name]
                    continue
                raise
            grads = torch.cat([g.flatten() for g in impl.grads()])
            if base_loss is None:
                base_loss, base_grads = loss, grads
            rows[name] = (abs(loss - base_loss).item(), ((grads - base_grads).norm() / base_grads.norm()).item())
    return rows


def cpu_peak_subprocess(args, name, workload, steps, first_order, strategy):
    """Peak-RSS growth of a fresh process running two meta-steps of one implementation."""
    cmd = [sys.executable, __file__, "--memory-probe", json.dumps(
        dict(name=name, workload=workload, steps=steps, first_order=first_order, strategy=strategy,
             norm=args.norm, threads=torch.get_num_threads()))]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def _status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_probe(spec):
    spec = json.loads(spec)
    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    family, _ = make_family(spec["workload"], device)
    model = make_model(spec["workload"], spec["norm"])
    phi = init_params(model, 0)
    impl = build(spec["name"], model, phi, spec["workload"], spec["steps"], spec["first_order"], spec["strategy"])
    ep = family.sample(WORKLOADS[spec["workload"]]["batch"], torch.Generator().manual_seed(0))
    if spec["strategy"] and spec["strategy"].endswith(COMPILED):
        impl.step(ep)  # compiling is a one-off cost: the memory of a step is what follows it
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    base = _status("VmRSS")
    for _ in range(2):
        impl.step(ep)
    print(_status("VmHWM") - base)


def run_config(args, device, workload, steps, first_order, peers):
    family, source = make_family(workload, device)
    model = make_model(workload, args.norm).to(device)
    phi = init_params(model, 0, device=device)
    gen = mlbook.make_generator(0, device)
    batch = WORKLOADS[workload]["batch"]
    check_ep = family.sample(batch, gen)
    cfg = WORKLOADS[workload]
    auto = MAML(model, inner_lr=cfg["inner_lr"], steps=steps, first_order=first_order,
                loss=cfg["loss"]).execution_strategy(check_ep.support_x)
    strategies = [auto]
    if auto == "closed-form" and not args.no_compile:
        strategies += [auto + COMPILED]
    if args.strategies and workload == "sinusoid":
        strategies += ["vmap"]
    if args.strategies and workload == "conv4" and steps == 1 and not first_order:
        # Full vmap over 32 Conv4 tasks needs ~4.5 GB on CPU: only chunks are tried there.
        strategies += [s for s in (("loop", "vmap:8") if device.type == "cpu" else ("loop", "vmap", "vmap:8")) if s != auto]
    if device.type == "cuda" and not args.no_graph:
        # The closed form turns its rates into Python numbers, which a graph cannot record: the
        # recorded variant of the MLP is its vmapped step.
        strategies += [("vmap" if auto == "closed-form" else auto) + GRAPHED]
    names = [f"mlbook[{s}]" for s in strategies] + list(peers)
    impls = {}
    for n in names:
        strat = n[7:-1] if n.startswith("mlbook") else None
        impls[n] = build(n, model, phi, workload, steps, first_order, strat)
    bounded = {}  # memory-bounded variants: strategy -> chunk
    budget = None
    if device.type == "cuda" and auto == "vmap" and peers:
        for suffix in ("",) + (() if args.no_graph else (GRAPHED,)):
            try:
                chunk, budget = memory_bounded_chunk(impls, model, phi, workload, steps, first_order, check_ep,
                                                     batch, suffix)
            except Exception as error:
                print(f"the memory-bounded chunk{' of the recorded step' if suffix else ''} could not be found: "
                      f"{type(error).__name__}: {error}")
                continue
            if chunk is not None:
                s = f"vmap:{chunk}{suffix}"
                bounded[s] = chunk
                impls[f"mlbook[{s}]"] = build(f"mlbook[{s}]", model, phi, workload, steps, first_order, s)
                names.insert(len(strategies), f"mlbook[{s}]")
                strategies.append(s)
    agree = check_agreement(impls, check_ep)
    names = [n for n in names if n in impls]
    episodes = [family.sample(batch, gen) for _ in range(args.batches)]
    times = {n: [] for n in names}
    for n in names:  # warm-up (kernels, allocator) outside the timing
        impls[n].step(episodes[0])
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            sync(device)
            t = time.perf_counter()
            for ep in episodes:
                impls[n].step(ep)
            sync(device)
            times[n].append(batch * len(episodes) / (time.perf_counter() - t))
    peak = {}
    for n in names:
        strat = n[7:-1] if n.startswith("mlbook") else None
        if args.no_memory:
            peak[n] = float("nan")
        elif device.type == "cuda":
            peak[n] = cuda_peak_mb(impls[n], episodes[0])
        else:
            peak[n] = cpu_peak_subprocess(args, n, workload, steps, first_order, strat)
    order_name = "first" if first_order else "second"
    print(f"\n== {workload} ({source}), {steps} inner step{'s' if steps > 1 else ''}, {order_name} order, "
          f"meta-batch {batch}, device {device}; mlbook strategy chosen by 'auto': {auto}")
    print(f"  why: {STRATEGY_REASONS[auto]}")
    print(f"{'implementation':<18}{'|dloss|':>10}{'grad rel.err':>14}{'tasks/s (median)':>18}"
          f"  {'runs':<34}{'peak MB':>8}")
    med = {n: statistics.median(times[n]) for n in names}
    for n in names:
        runs = "/".join(f"{t:.1f}" for t in times[n])
        print(f"{n:<18}{agree[n][0]:>10.2e}{agree[n][1]:>14.2e}{med[n]:>18.1f}  {runs:<34}{peak[n]:>8.0f}")
    for n in names:
        if n.endswith(COMPILED + "]"):
            print(f"  {n}: its first meta-step (compiling, or loading the compiled code from torch's "
                  f"cache) took {impls[n].first_step_seconds:.1f} s; peak MB counts the steps after it")
    result = dict(workload=workload, steps=steps, order=order_name, device=str(device), auto=auto,
                  source=source, tasks_per_s=med, runs=times, peak_mb=peak, agreement=agree,
                  allocator=allocator_name())
    work = flop_per_task(model, phi, workload, steps, first_order, check_ep)
    result["gflop_per_task"] = work / 1e9
    achieved = {n: med[n] * work / 1e12 for n in names}
    result["achieved_tflops"] = achieved
    peaks = args.peak_tflops
    print(f"work: {work / 1e9:.3g} GFLOP per task (the convolutions and matrix products of one task's "
          f"meta-gradient, counted by torch.utils.flop_counter on the per-task path)")
    for n in names:
        line = f"  {n}: {achieved[n]:.3g} TFLOP/s"
        if peaks:
            line += (f" = {100 * achieved[n] / peaks['float32']:.1f}% of this device's float32 peak "
                     f"({peaks['float32']:.1f} TFLOP/s), {100 * achieved[n] / peaks['tf32']:.1f}% of its TF32 "
                     f"peak ({peaks['tf32']:.1f})")
        print(line)
    peer_names = [n for n in names if not n.startswith("mlbook")]
    if peer_names:
        best = max(peer_names, key=lambda n: med[n])
        main_names = [f"mlbook[{auto}]"] + [n for n in names if n.startswith("mlbook") and n != f"mlbook[{auto}]"
                                             and (n.endswith(COMPILED + "]") or n.endswith(GRAPHED + "]")
                                                  or n[7:-1] in bounded)]
        result["ratios_vs_fastest_peer"] = {}
        for main in main_names:
            ratio = med[main] / med[best]
            # Per-round ratios: both numbers come from the same stretch of time on a shared machine.
            rounds = [a / b for a, b in zip(times[main], times[best])]
            print(f"ratio {main} / fastest peer ({best}): {ratio:.2f}x "
                  f"(per round: {', '.join(f'{x:.2f}' for x in rounds)})")
            for n in peer_names:
                print(f"  vs {n}: {med[main] / med[n]:.2f}x tasks/s, memory {peak[main] / peak[n]:.2f}x")
            result["ratios_vs_fastest_peer"][main] = ratio
            if main == f"mlbook[{auto}]":
                result["ratio_vs_fastest_peer"] = ratio
            elif main.endswith(COMPILED + "]"):
                result["ratio_vs_fastest_peer_compiled"] = ratio
        if bounded:
            leanest = min(peer_names, key=lambda n: peak[n])
            for s, chunk in bounded.items():
                n = f"mlbook[{s}]"
                if n in med:
                    print(f"memory-bounded: {n} (chunks of {chunk} tasks, the most whose measured memory is at "
                          f"most {PEER_MEMORY_FACTOR}x the leanest peer's, {budget:.0f} MB) holds "
                          f"{peak[n]:.0f} MB = {peak[n] / peak[leanest]:.1f}x {leanest}'s; it runs at "
                          f"{med[n] / med[f'mlbook[{auto}]']:.2f}x the speed of mlbook[{auto}]")
            result["memory_bounded_chunks"] = bounded
    return result


def tf32_setting() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@contextlib.contextmanager
def cuda_memory_growth(device):
    """Fills a dict with what the block allocated at its peak and what it still holds reserved
    afterwards (a recorded graph's pool), both in MB over what was there before it."""
    growth = {}
    sync(device)
    torch.cuda.empty_cache()
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield growth
    sync(device)
    growth["peak_mb"] = (torch.cuda.max_memory_allocated(device) - allocated) / 2**20
    torch.cuda.empty_cache()
    growth["kept_mb"] = (torch.cuda.memory_reserved(device) - reserved) / 2**20


def cuda_peak_mb(impl, ep):
    """Peak CUDA memory of one meta-step, over what was allocated before it; for a recorded graph,
    the more of that and what recording it took or keeps."""
    with cuda_memory_growth(ep.support_x.device) as growth:
        impl.step(ep, update=False)  # no outer step: every implementation must still start from phi
    peak = growth["peak_mb"]
    if isinstance(impl, MlbookImpl) and impl.graphed:
        peak = max(peak, impl.graph_memory_mb[tf32_setting()])
    return peak


def memory_bounded_chunk(impls, model, phi, workload, steps, first_order, ep, batch, suffix=""):
    """The most tasks per vmapped chunk whose measured peak memory is at most PEER_MEMORY_FACTOR
    times the leanest peer's, eager or (``suffix`` GRAPHED) recorded as a CUDA graph, whose
    memory pool counts too; (chunk, budget in MB), chunk None when even one task is more."""
    peer_peaks = [cuda_peak_mb(impl, ep) for name, impl in impls.items() if not name.startswith("mlbook")]
    budget = PEER_MEMORY_FACTOR * min(peer_peaks)
    for chunk in sorted({c for c in (batch // 2, batch // 4, batch // 8, 6, 5, 3, 2, 1) if 0 < c < batch},
                        reverse=True):
        impl = build("mlbook", model, phi, workload, steps, first_order, f"vmap:{chunk}{suffix}")
        impl.step(ep, update=False)  # the first step sets up kernels and the allocator
        if cuda_peak_mb(impl, ep) <= budget:
            return chunk, budget
    return None, budget


def flop_per_task(model, phi, workload, steps, first_order, ep):
    """Floating-point operations of one task's meta-gradient: convolutions and matrix products of
    the per-task path, the same maths the peers run (vmap's batched kernels are not counted, so
    that the figure is the work, not how a strategy happens to do it)."""
    from torch.utils.flop_counter import FlopCounterMode

    impl = build("mlbook", model, phi, workload, steps, first_order, "loop")
    with FlopCounterMode(display=False) as counter:
        impl.step(ep, update=False)
    return counter.get_total_flops() / ep.batch_size


def device_peak_tflops(device) -> dict:
    """This GPU's matrix-product throughput, measured: an 8192^3 product in float32 with TF32 off
    (the plain float32 units) and with TF32 on (the tensor cores), best of five."""
    a = torch.randn(8192, 8192, device=device)
    b = torch.randn(8192, 8192, device=device)
    saved = torch.backends.cuda.matmul.allow_tf32
    found = {}
    try:
        for name, tf32 in (("float32", False), ("tf32", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a @ b
            best = float("inf")
            for _ in range(5):
                torch.cuda.synchronize(device)
                started = time.perf_counter()
                a @ b
                torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - started)
            found[name] = 2 * 8192 ** 3 / best / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--workloads", default="conv4,sinusoid")
    parser.add_argument("--steps", default="1,5", help="inner steps to run, comma separated")
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--batches", type=int, default=2, help="meta-batches per implementation per round")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (on a loaded shared CPU, 1 avoids OpenMP threads waiting on each other)")
    parser.add_argument("--norm", default="group", choices=["group", "batch", "none"])
    parser.add_argument("--allocator", default="jemalloc", choices=["jemalloc", "glibc"])
    parser.add_argument("--strategies", action="store_true", help="also time mlbook's other strategies on conv4")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the closed form's torch.compile variant (MAML(compile=True))")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-graph", action="store_true",
                        help="on CUDA, skip the variants whose meta-step is replayed as a CUDA graph")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.memory_probe)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = str(mlbook.get_device(args.device))
    maybe_reexec_with_jemalloc(args)
    device = torch.device(args.device)
    peers, missing = ({}, {"learn2learn": "--no-peers", "higher": "--no-peers"}) if args.no_peers else available_peers()
    env = environment()
    print(f"torch {env['torch']}, {env['threads']} threads, device {device}, "
          f"allocator: {env['allocator']}, load average {env['load_average']:.1f} on {env['cpus']} CPUs "
          f"({env['cpu']})")
    if device.type == "cpu":
        print(f"Conv4's normalisation, max-pool and ReLU on this CPU: {env['conv4_cpu_pooling']}")
    for name, why in missing.items():
        print(f"peer {name} is missing ({why}); comparing the rest")
    args.peak_tflops = device_peak_tflops(device) if device.type == "cuda" else None
    if args.peak_tflops:
        env["peak_tflops"] = args.peak_tflops
        print(f"{torch.cuda.get_device_name(device)}: an 8192^3 matrix product runs at "
              f"{args.peak_tflops['float32']:.1f} TFLOP/s in float32 (TF32 off), {args.peak_tflops['tf32']:.1f} with TF32; "
              f"timings use the device's defaults (cuDNN convolutions in TF32: "
              f"{torch.backends.cudnn.allow_tf32}), agreement checks full float32")
    results = []
    for workload in args.workloads.split(","):
        for steps in map(int, args.steps.split(",")):
            for order in args.orders.split(","):
                mlbook.utils.check_choice("order", order, ("second", "first"))
                results.append(dict(run_config(args, device, workload, steps, order == "first", peers),
                                    environment=env))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
