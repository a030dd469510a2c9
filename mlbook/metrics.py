"""What the book measures: per-task losses and accuracies, intervals, calibration (Chapters 5-6).

Every number a chapter prints with a "±" comes from :func:`confidence_interval`; every Gaussian
likelihood from :func:`gaussian_nll`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .utils import check_choice, check_positive_int, make_generator

__all__ = ["confidence_interval", "format_score", "query_metrics", "gaussian_nll", "interval_coverage", "calibration",
           "CalibrationResult", "predictive_calibration", "LOG_2PI"]

LOG_2PI = math.log(2 * math.pi)
_Z95 = 1.96


def confidence_interval(values) -> tuple[float, float]:
    """Mean and 95% confidence half-width 1.96 * std / sqrt(n) of per-episode values (Chapter 5)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("values must hold at least one number")
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, float("nan")
    return mean, _Z95 * values.std(unbiased=True).item() / math.sqrt(values.numel())


def format_score(metric: str, mean: float, ci95: float, digits: int = 2) -> str:
    """'97.10% ± 0.40%' for an accuracy, '0.5210 ± 0.0120' for a loss (Chapter 5)."""
    if metric == "accuracy":
        return f"{100 * mean:.{digits}f}% ± {100 * ci95:.{digits}f}%"
    return f"{mean:.{digits + 2}f} ± {ci95:.{digits + 2}f}"


def query_metrics(output: torch.Tensor, query_y: torch.Tensor, classification: bool) -> dict:
    """Per-task query metrics of a meta-batch's outputs ``[B, M, ...]`` (Chapter 5).

    Regression: 'loss' is the mean squared error. Classification (logits ``[B, M, N]``):
    'loss' is the cross-entropy and 'accuracy' the fraction of correct predictions.
    """
    if not classification:
        return {"loss": ((output - query_y) ** 2).flatten(1).mean(1)}
    cross_entropy = F.cross_entropy(output.transpose(1, 2), query_y, reduction="none").mean(1)
    return {"loss": cross_entropy, "accuracy": (output.argmax(-1) == query_y).float().mean(1)}


def _check_mean_var(mean, var, y):
    for name, t in (("mean", mean), ("var", var), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if mean.shape != var.shape or mean.shape != y.shape:
        raise ValueError(f"mean {tuple(mean.shape)}, var {tuple(var.shape)} and y {tuple(y.shape)} "
                         "must have the same shape")
    if (var <= 0).any():
        raise ValueError("var must be positive everywhere (a predictive variance)")


def gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of ``y`` under N(mean, var), with the log(2 pi) constant (Chapter 6).

    ``reduction`` is 'mean', 'sum' or 'none'. Lower is better; it punishes both a wrong mean
    and a variance that is too small or too large.
    """
    _check_mean_var(mean, var, y)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    nll = 0.5 * (LOG_2PI + var.log() + (y - mean).pow(2) / var)
    return nll if reduction == "none" else nll.mean() if reduction == "mean" else nll.sum()


def interval_coverage(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, level: float) -> float:
    """Fraction of ``y`` inside the central ``level`` predictive interval of N(mean, var) (Chapter 6).

    A calibrated predictor covers about ``level`` of the targets: more is under-confident,
    less is over-confident.
    """
    _check_mean_var(mean, var, y)
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    z = math.sqrt(2.0) * torch.erfinv(torch.tensor(level, dtype=torch.float64)).item()
    return ((y - mean).abs() <= z * var.sqrt()).float().mean().item()


def calibration(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor,
                levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95)) -> dict[float, float]:
    """``{level: coverage}`` for several central intervals: the points of a calibration plot (Chapter 6)."""
    return {float(level): interval_coverage(mean, var, y, level) for level in levels}


@dataclass
class CalibrationResult:
    """Predictive NLL (mean and 95% CI over tasks) and interval coverage of a learner (Chapter 6)."""

    nll: float
    nll_ci95: float
    mse: float
    coverage: dict[float, float]
    per_task_nll: torch.Tensor = field(repr=False)


def _predictive_batch(learner, state, batch):
    def one_task(support_x, support_y, query_x):
        mean, var = learner.predict_distribution(learner.adapt(state, support_x, support_y), query_x)
        return mean.reshape(-1), var.reshape(-1)

    try:
        # One batched call over the tasks; a learner whose adapt branches on the data cannot be
        # vmapped and takes the loop instead.
        return torch.func.vmap(one_task)(batch.support_x, batch.support_y, batch.query_x)
    except RuntimeError:
        outs = [one_task(batch.support_x[i], batch.support_y[i], batch.query_x[i])
                for i in range(batch.batch_size)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def predictive_calibration(learner, state, family, episodes: int = 200, batch_size: int = 50,
                           seed: int = 4321, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95)) -> CalibrationResult:
    """Calibrate a probabilistic learner (``predict_distribution`` gives a mean and a variance) (Chapter 6).

    Adapts to the support set of ``episodes`` fresh tasks from ``family``, predicts the query
    set, and pools the query points for NLL and interval coverage.
    """
    if not getattr(learner, "probabilistic", False):
        raise ValueError(f"learner must be probabilistic (offer predict_distribution(task_state, x) -> "
                         f"(mean, variance)); {type(learner).__name__} is not")
    episodes = check_positive_int("episodes", episodes)
    batch_size = check_positive_int("batch_size", batch_size)
    generator = make_generator(seed, family.device)
    means, variances, targets = [], [], []
    remaining = episodes
    with torch.no_grad():
        while remaining > 0:
            batch = family.sample(min(batch_size, remaining), generator)
            mean, var = _predictive_batch(learner, state, batch)
            means.append(mean)
            variances.append(var)
            targets.append(batch.query_y.reshape(batch.batch_size, -1))
            remaining -= batch.batch_size
    mean, var, y = torch.cat(means), torch.cat(variances), torch.cat(targets)
    per_task = gaussian_nll(mean, var, y, reduction="none").mean(-1).float().cpu()
    nll, ci = confidence_interval(per_task)
    return CalibrationResult(nll, ci, (mean - y).pow(2).mean().item(), calibration(mean, var, y, levels), per_task)
