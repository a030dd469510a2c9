"""Train and measure several learners on the same tasks, and put them in one table (Chapter 4).

    table = compare({"MAML": maml, "CNP": cnp}, SinusoidFamily(), steps=500)
    print(table)             # a Markdown table; in a notebook it renders as one

Every learner is meta-trained by the one trainer (:func:`mlbook.train.meta_train`) on the
same family with the same seed, then measured on the same test episodes:

* the query metric after adaptation (accuracy for classifiers, MSE for regression) with a
  95% confidence interval;
* the time to adapt to one new task and predict its queries (median over tasks);
* the memory a meta-gradient needs: the bytes of the tensors the autograd graph of one
  meta-batch keeps for the backward pass (on every device), and the peak of allocated GPU
  memory during one meta-step on CUDA;
* the number of meta-learned numbers (the entries of ``learner.parameters(state)``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .metrics import format_score
from .tasks import Episode
from .train import evaluate, meta_train
from .utils import check_positive_int, make_generator

__all__ = ["compare", "Comparison", "ComparisonRow", "graph_memory", "adaptation_time", "count_parameters"]


def count_parameters(learner, state) -> int:
    """The number of meta-learned numbers in ``state`` (Chapter 4)."""
    return sum(t.numel() for t in learner.parameters(state))


def graph_memory(loss: torch.Tensor) -> int:
    """Bytes of the tensors the autograd graph of ``loss`` keeps for its backward pass (Chapter 4).

    Walks the graph from ``loss.grad_fn`` and adds up the storage of every saved tensor
    once. This is the memory a meta-gradient costs beyond the parameters, and it is
    measurable on a CPU as on a GPU; it grows with the inner steps of second-order MAML.
    """
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise ValueError("loss must be a tensor that requires grad (the output of meta_loss)")
    storages, total = set(), 0
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # a saved tensor already freed by an earlier backward
                continue
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = (storage.device, storage.data_ptr())
                    if key not in storages:
                        storages.add(key)
                        total += storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return total


def adaptation_time(learner, state, episode: Episode, repeats: int | None = None) -> float:
    """Median seconds to adapt to one task and predict its queries (Chapter 4).

    Runs ``adapt`` then ``predict`` task by task (after one warm-up task), which is what a
    deployed meta-learner does when a new task arrives. Gradient-based learners pay for
    their inner loop here; model-based and black-box learners for one forward pass.
    """
    tasks = episode.batch_size if repeats is None else min(check_positive_int("repeats", repeats),
                                                             episode.batch_size)
    sync = torch.cuda.synchronize if episode.support_x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.enable_grad():
        for i in range(-1, tasks):
            j = max(i, 0)
            sync()
            start = time.perf_counter()
            out = learner.predict(learner.adapt(state, episode.support_x[j], episode.support_y[j]),
                                  episode.query_x[j])
            out.sum().item()
            sync()
            if i >= 0:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class ComparisonRow:
    """One learner's measured figures in a :class:`Comparison` (Chapter 4)."""

    name: str
    kind: str
    metric: str
    mean: float
    ci95: float
    adapt_ms: float
    graph_mb: float
    peak_mb: float | None
    parameters: int
    train_seconds: float
    state: Any = field(repr=False, default=None)
    losses: list = field(repr=False, default_factory=list)

    def score(self) -> str:
        return format_score(self.metric, self.mean, self.ci95, digits=1)


@dataclass
class Comparison:
    """The table :func:`compare` returns; prints as Markdown and renders in notebooks (Chapter 4)."""

    rows: list[ComparisonRow]

    def __getitem__(self, name: str) -> ComparisonRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no learner named {name!r}; the table has {[r.name for r in self.rows]}")

    def to_markdown(self) -> str:
        """The table as Markdown: one row per learner."""
        metric = {r.metric for r in self.rows}
        label = ("accuracy (95% CI)" if metric == {"accuracy"} else
                 "query MSE (95% CI)" if metric == {"loss"} else "metric (95% CI)")
        gpu = any(r.peak_mb is not None for r in self.rows)
        head = ["learner", "kind", label, "adapt+predict ms/task", "graph MB/meta-batch"]
        head += ["peak GPU MB"] if gpu else []
        head += ["meta-parameters", "training s"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, r.kind, r.score(), f"{r.adapt_ms:.2f}", f"{r.graph_mb:.2f}"]
            cells += [("–" if r.peak_mb is None else f"{r.peak_mb:.1f}")] if gpu else []
            cells += [f"{r.parameters:,}", f"{r.train_seconds:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _per_learner(name: str, value, names: list[str], what: str):
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{what} is a dict but has no entry for {missing}; give one per learner")
        return value[name]
    return value


def _named_learners(learners) -> list[tuple[str, Any]]:
    """``[(name, learner)]`` from a dict or a list, checked: distinct names, the learner interface."""
    if isinstance(learners, Mapping):
        named = list(learners.items())
    elif isinstance(learners, Sequence) and not isinstance(learners, str):
        named = [(getattr(learner, "name", type(learner).__name__), learner) for learner in learners]
    else:
        raise ValueError(f"learners must be a dict of name -> learner or a list of learners, "
                         f"got {type(learners).__name__}")
    if not named:
        raise ValueError("learners is empty: give at least one learner to compare")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"learners must have distinct names, got {names}; pass a dict to name them")
    for name, learner in named:
        if not all(callable(getattr(learner, m, None)) for m in ("init", "adapt", "predict", "meta_loss")):
            raise ValueError(f"learners[{name!r}] does not implement the learner interface "
                             f"(init, adapt, predict, meta_loss)")
    return named


def compare(learners, family, steps, meta_batch_size: int = 16, outer_lr=1e-3,
            test_family=None, episodes: int = 200, seed: int = 0, eval_seed: int = 1234,
            timing_tasks: int = 20, states: Mapping[str, Any] | None = None) -> Comparison:
    """Meta-train every learner on ``family`` and measure it on ``test_family`` (Chapter 4).

    ``learners`` is a dict ``{name: learner}`` or a list of learners (named by their
    ``name``). ``steps`` and ``outer_lr`` are one value for all, or a dict with one per
    learner name. ``test_family`` defaults to ``family`` (fresh episodes, from ``eval_seed``).
    ``states`` maps names to already meta-trained states, which are measured without
    training. Returns a :class:`Comparison`, whose rows also hold each learned ``state``.
    """
    named = _named_learners(learners)
    names = [n for n, _ in named]
    meta_batch_size = check_positive_int("meta_batch_size", meta_batch_size)
    episodes = check_positive_int("episodes", episodes)
    timing_tasks = check_positive_int("timing_tasks", timing_tasks)
    states = dict(states or {})
    unknown = sorted(set(states) - set(names))
    if unknown:
        raise ValueError(f"states has entries {unknown} that name no learner; learners are {names}")
    test_family = family if test_family is None else test_family
    probe = family.sample(meta_batch_size, make_generator(eval_seed + 1, family.device))
    timing = test_family.sample(timing_tasks, make_generator(eval_seed + 2, test_family.device))
    cuda = torch.device(family.device).type == "cuda"
    rows = []
    for name, learner in named:
        start = time.perf_counter()
        losses = []
        if name in states:
            state = states[name]
        else:
            result = meta_train(learner, family, _per_learner(name, steps, names, "steps"),
                                meta_batch_size, _per_learner(name, outer_lr, names, "outer_lr"),
                                seed=seed, desc=f"meta-training {name}")
            state, losses = result.state, result.losses
        train_seconds = time.perf_counter() - start
        score = evaluate(learner, state, test_family, episodes=episodes, seed=eval_seed)
        if cuda:
            torch.cuda.reset_peak_memory_stats(family.device)
        loss = learner.meta_loss(state, probe)
        graph = graph_memory(loss)
        loss.backward()
        for p in learner.parameters(state):
            p.grad = None
        peak = torch.cuda.max_memory_allocated(family.device) / 2**20 if cuda else None
        rows.append(ComparisonRow(
            name=name, kind=learner.kind, metric=score.metric,
            mean=score.mean, ci95=score.ci95,
            adapt_ms=1000 * adaptation_time(learner, state, timing),
            graph_mb=graph / 2**20, peak_mb=peak, parameters=count_parameters(learner, state),
            train_seconds=train_seconds, state=state, losses=losses))
    return Comparison(rows)
