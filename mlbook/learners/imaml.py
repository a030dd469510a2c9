"""Implicit MAML (Rajeswaran et al., 2019): meta-gradients without unrolling (Chapter 3).

    theta_i*(phi) = argmin_theta  L_inner(theta; D_i^train) + lam/2 ||theta - phi||^2
    d L_outer(theta_i*) / d phi = (I + H_i / lam)^{-1} grad_theta L_outer(theta_i*; D_i^test)

where H_i is the Hessian of L_inner at theta_i*. The inner problem is solved approximately
by ``steps`` gradient steps, the linear system by ``cg_steps`` of conjugate gradient with
Hessian-vector products; the memory of a meta-step does not depend on ``steps``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..bilevel import (check_params, implicit_meta_grad, map_tasks, proximal_inner_loop,
                       with_gradient)
from ..tasks import Episode
from ..utils import check_positive, check_positive_int
from .base import task_loss
from .maml import MAML

__all__ = ["IMAML"]


class IMAML(MAML):
    """iMAML behind the one learner interface (Chapter 3).

    ``lam`` is the strength of the proximal term that ties theta_i to phi, ``cg_steps`` the
    number of conjugate-gradient iterations. The other arguments are :class:`MAML`'s; the
    inner learning rates are not learned.
    """

    name = "IMAML"

    def __init__(self, model: nn.Module, lam: float = 1.0, cg_steps: int = 5, **kwargs):
        if kwargs.get("learn_inner_lr"):
            raise ValueError("learn_inner_lr must be False for IMAML: the implicit gradient ignores the path")
        if kwargs.get("adapt_keys") is not None:
            raise ValueError("adapt_keys is not supported by IMAML: the proximal problem covers every parameter")
        kwargs["first_order"] = True  # no graph through the inner loop is ever needed
        super().__init__(model, **kwargs)
        self.lam = check_positive("lam", lam)
        self.cg_steps = check_positive_int("cg_steps", cg_steps)

    def adapt(self, state, support_x, support_y):
        """theta_i: approximate minimiser of the proximal inner problem, started at phi."""
        check_params(self.model, state["params"])
        return proximal_inner_loop(self._inner_loss, state["params"], support_x, support_y,
                                   self.steps, state["inner_lr"].detach(), self.lam)

    def task_meta_grad(self, state, support_x, support_y, query_x, query_y):
        """(query loss, implicit meta-gradient) for one task (Chapter 3)."""
        theta = self.adapt(state, support_x, support_y)
        query = lambda p: task_loss(self.loss, self.predict(p, query_x), query_y)  # noqa: E731
        outer_grad, value = torch.func.grad_and_value(query)(theta)
        meta_grad = implicit_meta_grad(self._inner_loss, theta, support_x, support_y, outer_grad,
                                       self.lam, self.cg_steps)
        return value.detach(), meta_grad

    def meta_loss(self, state, episode: Episode) -> torch.Tensor:
        """Surrogate: value = mean query loss; gradient = mean implicit meta-gradient."""
        check_params(self.model, state["params"])
        losses, grads = map_tasks(lambda *t: self.task_meta_grad(state, *t), episode.support_x,
                                  episode.support_y, episode.query_x, episode.query_y,
                                  strategy=self.strategy, chunk_size=self.chunk_size)
        return with_gradient(losses.mean(), state["params"], {k: g.mean(0) for k, g in grads.items()})

    def __repr__(self) -> str:
        return f"IMAML(inner_lr={self.inner_lr}, steps={self.steps}, lam={self.lam}, cg_steps={self.cg_steps})"

