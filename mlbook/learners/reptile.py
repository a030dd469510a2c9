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

from ..bilevel import check_params, inner_loop, with_gradient
from .maml import MAML

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile behind the one learner interface (Chapter 3).

    Takes :class:`MAML`'s arguments; the inner loop is always first order (Reptile never
    differentiates through it) and the inner learning rates are not learned.
    """

    name = "Reptile"
    options = ("inner_lr", "inner_steps")

    def __init__(self, model, **kwargs):
        if kwargs.get("learn_inner_lr"):
            raise ValueError("learn_inner_lr must be False for Reptile: its update gives no gradient for the rates")
        kwargs["first_order"] = True
        super().__init__(model, **kwargs)

    def reptile_direction(self, state, support_x, support_y):
        """phi - theta_i for one task: the direction the outer step moves against (Chapter 3)."""
        phi = {k: v.detach() for k, v in state["params"].items()}
        theta = inner_loop(self.inner_loss, phi, support_x, support_y, self.steps,
                           state["inner_lr"].detach(), first_order=True, adapt_keys=self.adapt_keys)
        return {k: phi[k] - theta[k] for k in phi}, theta

    def task_metrics(self, state, support_x, support_y, query_x, query_y):
        """One task's query loss, and the surrogate 'objective' whose gradient is phi - theta_i."""
        check_params(self.model, state["params"])
        direction, theta = self.reptile_direction(state, support_x, support_y)
        metrics = self.score(theta, query_x, query_y)
        metrics["objective"] = with_gradient(metrics["loss"], state["params"], direction)
        return metrics

    def __repr__(self) -> str:
        return f"Reptile(inner_lr={self.inner_lr}, steps={self.steps})"
