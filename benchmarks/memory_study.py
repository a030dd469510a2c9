"""Memory and time of one meta-step against the number of inner steps (Chapter 3).

For MAML (second order), first-order MAML, Reptile and iMAML on Conv4 5-way 1-shot episodes
(15 queries per class), each configuration takes a few meta-steps; the script records the
growth of peak memory during those steps and the median time per meta-step. On CPU each
configuration runs in a fresh subprocess and the peak is that of its resident memory; on CUDA
all run in one process and the peak is ``torch.cuda.max_memory_allocated``.
Second-order MAML keeps every inner step's graph, so its memory grows with the steps;
first-order MAML and Reptile keep less; iMAML's memory stays flat because it never
differentiates through the inner loop.

    python benchmarks/memory_study.py                       # writes benchmarks/results/memory_study.json
    python benchmarks/memory_study.py --steps 1,2,3 --meta-batch 2 --out /tmp/m.json   # a quick one

Chapter 3 plots the saved JSON rather than re-running the study.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALGORITHMS = ("MAML", "FOMAML", "Reptile", "IMAML")


def _status(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def probe(spec: dict) -> dict:
    """One configuration in this (fresh) process: peak memory growth (MB) and seconds per meta-step."""
    import mlbook
    from mlbook import learners
    from mlbook.models import Conv4

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 20, 28, 28, generator=g) * 255).to(torch.uint8)
    family = mlbook.ImageClassFamily(images, ways=5, shots=1, queries=15, device=device)
    kwargs = dict(inner_lr=0.1, steps=spec["steps"], strategy="loop")
    if spec["algorithm"] == "IMAML":
        kwargs.update(lam=1.0, cg_steps=5)
    learner = getattr(learners, spec["algorithm"])(Conv4(5, channels=spec["channels"]), **kwargs)
    state = learner.init(0, device=device)
    optimiser = torch.optim.Adam(learner.parameters(state), lr=1e-3)
    episodes = [family.sample(spec["meta_batch"], mlbook.make_generator(i, device)) for i in range(spec["repeats"] + 1)]

    def step(ep):
        optimiser.zero_grad(set_to_none=True)
        learner.meta_loss(state, ep).backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
            f.write("5")
        base = _status("VmRSS")
    step(episodes[0])
    times = []
    for ep in episodes[1:]:
        t = time.perf_counter()
        step(ep)
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _status("VmHWM") - base
    return {"peak_mb": peak, "seconds": statistics.median(times)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_study.json"))
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return None
    rows = []
    steps = [int(s) for s in args.steps.split(",")]
    print(f"Conv4({args.channels} channels), 5-way 1-shot, 15 queries, meta-batch {args.meta_batch}, "
          f"device {args.device}, {args.threads} thread(s)")
    print(f"{'algorithm':<9}{'steps':>6}{'peak MB':>10}{'s/step':>9}")
    for algorithm in args.algorithms.split(","):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithms must be among {ALGORITHMS}, got {algorithm!r}")
        for k in steps:
            spec = dict(algorithm=algorithm, steps=k, meta_batch=args.meta_batch, channels=args.channels,
                        repeats=args.repeats, threads=args.threads, device=args.device)
            if args.device == "cuda":
                # CUDA counts allocated bytes per process and resets its peak on request: one
                # process serves every configuration and starts CUDA once.
                result = probe(spec)
                torch.cuda.empty_cache()
            else:
                out = subprocess.run([sys.executable, __file__, "--probe", json.dumps(spec)], capture_output=True,
                                     text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                if out.returncode != 0:
                    raise RuntimeError(f"probe {spec} failed:\n{out.stderr[-2000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({**spec, **result})
            print(f"{algorithm:<9}{k:>6}{result['peak_mb']:>10.1f}{result['seconds']:>9.3f}", flush=True)
    meta = dict(torch=torch.__version__, load_average=os.getloadavg()[0], cpus=os.cpu_count())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
