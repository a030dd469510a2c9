"""The one learner interface every algorithm in the book implements (Chapters 3-6).

    init(seed)                     -> state        (phi: what meta-learning learns)
    adapt(state, support_x, y)     -> task_state   (theta_i: after seeing D_train of one task)
    predict(task_state, x)         -> output       (logits, or a regression output)
    meta_loss(state, episode)      -> scalar       (the outer objective on a meta-batch)

``adapt`` and ``predict`` work on one task (no batch axis); ``meta_loss`` and
``evaluate_batch`` take an :class:`~mlbook.tasks.Episode` and map over its tasks with
``vmap`` or a loop. One trainer, one evaluator and one table then serve every learner.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..bilevel import choose_strategy, map_tasks, run_tasks
from ..tasks import Episode
from ..utils import check_choice

__all__ = ["Learner", "LOSSES", "task_loss", "task_accuracy", "check_labelled_support"]

LOSSES = ("mse", "cross_entropy")


def task_loss(kind: str, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-task loss: mean squared error or cross-entropy (Chapter 1)."""
    if kind == "mse":
        return F.mse_loss(output, y)
    return F.cross_entropy(output, y)


def check_labelled_support(support_x: torch.Tensor, support_y: torch.Tensor) -> None:
    """Raise a clear error for an empty support set or one label too many or too few (Chapter 5)."""
    if support_x.shape[0] == 0:
        raise ValueError("the support set has no examples: a learner needs at least one")
    if support_y.dim() != 1 or support_y.shape[0] != support_x.shape[0]:
        raise ValueError(f"support_y must hold one label per support example ({support_x.shape[0]}); "
                         f"got shape {tuple(support_y.shape)}")


def task_accuracy(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions of one task's logits (Chapter 5)."""
    return (output.argmax(-1) == y).float().mean()


class Learner:
    """Base class: subclasses define ``init``, ``adapt`` and ``predict`` (Chapter 4's taxonomy).

    ``loss`` is 'mse' (regression) or 'cross_entropy' (classification). ``strategy`` and
    ``chunk_size`` choose how tasks of a meta-batch are mapped (see :func:`mlbook.bilevel.map_tasks`).
    """

    name = "learner"
    family = "unknown"

    def __init__(self, loss: str = "cross_entropy", strategy: str = "auto",
                 chunk_size: int | None = None):
        self.loss = check_choice("loss", loss, LOSSES)
        self.strategy = strategy
        self.chunk_size = chunk_size

    # -- the interface -------------------------------------------------------------------
    def init(self, seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def adapt(self, state, support_x: torch.Tensor, support_y: torch.Tensor):
        raise NotImplementedError

    def predict(self, task_state, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared by every learner ---------------------------------------------------------
    def query_loss(self, state, support_x, support_y, query_x, query_y) -> torch.Tensor:
        """L_outer for one task: adapt on the support set, score the query set."""
        return task_loss(self.loss, self.predict(self.adapt(state, support_x, support_y), query_x), query_y)

    def meta_loss(self, state, episode: Episode) -> torch.Tensor:
        """Mean query loss over the tasks of ``episode``: the meta-objective (Chapter 1)."""
        losses = map_tasks(lambda *t: self.query_loss(state, *t), episode.support_x, episode.support_y,
                           episode.query_x, episode.query_y, strategy=self.strategy,
                           chunk_size=self.chunk_size)
        return losses.mean()

    def meta_backward(self, state, episode: Episode, scale: float = 1.0):
        """Backpropagate ``scale`` x the meta-loss into ``state``; return (loss, accuracy or None).

        The trainer's step (Chapter 5). When tasks run one by one (the 'loop' and 'threads'
        strategies, chosen for convolutions on CPU) and the learner's meta-loss is the plain
        mean of per-task query losses, each task is backpropagated as soon as it is computed, so
        only one task's graph per thread is alive at a time: memory is that of a task, not of
        the whole meta-batch. The per-task gradients are added up in task order, so with
        'threads' the result does not depend on which thread finished first.
        """
        strategy = self.strategy if self.strategy != "auto" else choose_strategy(episode.support_x)
        per_task = (strategy in ("loop", "threads") and type(self).meta_loss is Learner.meta_loss
                    and not hasattr(self, "meta_loss_and_accuracy"))
        if not per_task:
            if hasattr(self, "meta_loss_and_accuracy"):
                loss, accuracy = self.meta_loss_and_accuracy(state, episode)
            else:
                loss, accuracy = self.meta_loss(state, episode), None
            (loss * scale).backward()
            return loss.detach(), accuracy
        tasks = episode.batch_size
        params = self.parameters(state)

        def one_task(i):
            loss = self.query_loss(state, episode.support_x[i], episode.support_y[i],
                                   episode.query_x[i], episode.query_y[i]) / tasks
            return loss.detach(), torch.autograd.grad(loss * scale, params, allow_unused=True)

        results = run_tasks(one_task, tasks, strategy)
        total = torch.zeros((), device=episode.query_x.device)
        for loss, _ in results:
            total = total + loss
        for j, p in enumerate(params):
            for _, grads in results:
                if grads[j] is not None:
                    p.grad = grads[j].clone() if p.grad is None else p.grad + grads[j]
        return total, None

    def evaluate_batch(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task query loss (and accuracy for classification), without outer gradients."""

        def metrics(sx, sy, qx, qy):
            output = self.predict(self.adapt(state, sx, sy), qx)
            result = {"loss": task_loss(self.loss, output, qy)}
            if self.loss == "cross_entropy":
                result["accuracy"] = task_accuracy(output, qy)
            return result

        with torch.enable_grad():  # inner loops need gradients even when evaluating
            out = map_tasks(metrics, episode.support_x, episode.support_y, episode.query_x,
                            episode.query_y, strategy=self.strategy, chunk_size=self.chunk_size)
        return {k: v.detach() for k, v in out.items()}

    def parameters(self, state) -> list[torch.Tensor]:
        """The tensors the outer optimiser updates: every leaf of ``state`` that requires grad."""
        leaves = torch.utils._pytree.tree_leaves(state)
        return [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
