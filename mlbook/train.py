"""The one meta-training loop and evaluator shared by every learner (Chapter 5).

``meta_train`` samples meta-batches from a task family, computes the learner's meta-loss,
and takes an outer optimiser step. ``evaluate`` scores a learner on fresh test episodes and
reports a 95% confidence interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .tasks import TaskFamily
from .utils import check_positive, check_positive_int, make_generator, progress

__all__ = ["meta_train", "evaluate", "EvalResult", "TrainResult"]


@dataclass
class EvalResult:
    """Mean of a per-task metric over test episodes with its 95% confidence half-width."""

    metric: str
    mean: float
    ci95: float
    values: torch.Tensor = field(repr=False)

    def __str__(self) -> str:
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


@dataclass
class TrainResult:
    """The meta-learned state and the per-step meta-loss history."""

    state: dict
    losses: list[float]


def meta_train(learner, family: TaskFamily, steps: int, meta_batch_size: int = 16,
               outer_lr: float = 1e-3, seed: int = 0, state=None, desc: str | None = None) -> TrainResult:
    """Meta-train ``learner`` on ``family`` for ``steps`` outer steps with Adam (Chapter 5).

    Returns the learned state and the meta-loss of every step. Starts from ``state`` when
    given, else from ``learner.init(seed)``.
    """
    steps = check_positive_int("steps", steps)
    meta_batch_size = check_positive_int("meta_batch_size", meta_batch_size)
    outer_lr = check_positive("outer_lr", outer_lr)
    if state is None:
        state = learner.init(seed, device=family.device) if _accepts_device(learner) else learner.init(seed)
    optimiser = torch.optim.Adam(learner.parameters(state), lr=outer_lr)
    generator = make_generator(seed, family.device)
    losses = []
    bar = progress(range(steps), desc=desc or f"meta-training {learner.name}")
    for step in bar:
        loss = learner.meta_loss(state, family.sample(meta_batch_size, generator))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"meta-loss became {loss.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return TrainResult(state, losses)


def _accepts_device(learner) -> bool:
    import inspect

    return "device" in inspect.signature(learner.init).parameters


def evaluate(learner, state, family: TaskFamily, episodes: int = 600, batch_size: int = 50,
             seed: int = 1234, metric: str | None = None) -> EvalResult:
    """Mean query metric over ``episodes`` test tasks with a 95% confidence interval (Chapter 5).

    ``metric`` defaults to 'accuracy' for classifiers and 'loss' otherwise.
    """
    episodes = check_positive_int("episodes", episodes)
    batch_size = check_positive_int("batch_size", batch_size)
    generator = make_generator(seed, family.device)
    values = []
    remaining = episodes
    while remaining > 0:
        batch = family.sample(min(batch_size, remaining), generator)
        out = learner.evaluate_batch(state, batch)
        key = metric or ("accuracy" if "accuracy" in out else "loss")
        if key not in out:
            raise ValueError(f"metric must be one of {sorted(out)}, got {metric!r}")
        values.append(out[key].float().cpu())
        remaining -= batch.batch_size
    values = torch.cat(values)
    ci95 = 1.96 * values.std(unbiased=True).item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return EvalResult(key, values.mean().item(), ci95, values)
