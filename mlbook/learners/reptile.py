"""Reptile (Nichol et al., 2018): move phi towards each task's adapted parameters (Chapter 3).

    theta_i = Adapt(phi, D_i^train)          (plain SGD steps, no graph kept)
    phi    <- phi + beta * mean_i (theta_i - phi)

The update is not the gradient of any loss that autograd could differentiate, so the meta-loss
here is a surrogate: its *value* is the honest query loss after adaptation, its *gradient*
with respect to phi is the Reptile direction ``mean_i (phi - theta_i)`` (see
:func:`mlbook.bilevel.with_gradient`). The one trainer's outer optimiser then takes the Reptile
step; with plain SGD and learning rate beta it is exactly the update above.
"""
from __future__ import annotations

import torch

from ..bilevel import check_params, inner_loop, map_tasks, with_gradient
from ..tasks import Episode
from .base import task_loss
from .maml import MAML

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile behind the one learner interface (Chapter 3).

    Takes :class:`MAML`'s arguments; the inner loop is always first order (Reptile never
    differentiates through it) and the inner learning rates are not learned.
    """

    name = "Reptile"

    def __init__(self, model, **kwargs):
        if kwargs.get("learn_inner_lr"):
            raise ValueError("learn_inner_lr must be False for Reptile: its update gives no gradient for the rates")
        kwargs["first_order"] = True
        super().__init__(model, **kwargs)

    def reptile_direction(self, state, support_x, support_y):
        """phi - theta_i for one task: the direction the outer step moves against (Chapter 3)."""
        phi = {k: v.detach() for k, v in state["params"].items()}
        theta = inner_loop(self._inner_loss, phi, support_x, support_y, self.steps,
                           state["inner_lr"].detach(), first_order=True, adapt_keys=self.adapt_keys)
        return {k: phi[k] - theta[k] for k in phi}, theta

    def meta_loss(self, state, episode: Episode) -> torch.Tensor:
        """Surrogate: value = mean query loss after adaptation; gradient = mean_i (phi - theta_i)."""
        check_params(self.model, state["params"])

        def one_task(sx, sy, qx, qy):
            direction, theta = self.reptile_direction(state, sx, sy)
            return task_loss(self.loss, self.predict(theta, qx), qy), direction

        losses, directions = map_tasks(one_task, episode.support_x, episode.support_y, episode.query_x,
                                       episode.query_y, strategy=self.strategy, chunk_size=self.chunk_size)
        mean_direction = {k: d.mean(0) for k, d in directions.items()}
        return with_gradient(losses.mean(), state["params"], mean_direction)

    def __repr__(self) -> str:
        return f"Reptile(inner_lr={self.inner_lr}, steps={self.steps})"
