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

from ..bilevel import check_params, implicit_meta_grad, proximal_inner_loop, with_gradient
from ..utils import check_positive, check_positive_int
from .base import LearnerConfig, task_loss
from .maml import MAML, gradient_options, model_for

__all__ = ["IMAML"]


class IMAML(MAML):
    """iMAML behind the one learner interface (Chapter 3).

    ``lam`` is the strength of the proximal term that ties theta_i to phi, ``cg_steps`` the
    number of conjugate-gradient iterations. The other arguments are :class:`MAML`'s; the
    inner learning rates are not learned.
    """

    name = "IMAML"
    options = ("inner_lr", "inner_steps", "lam", "cg_steps")

    def __init__(self, model: nn.Module, lam: float = 1.0, cg_steps: int = 5, **kwargs):
        if kwargs.get("learn_inner_lr"):
            raise ValueError("learn_inner_lr must be False for IMAML: the implicit gradient ignores the path")
        if kwargs.get("adapt_keys") is not None:
            raise ValueError("adapt_keys is not supported by IMAML: the proximal problem covers every parameter")
        kwargs["first_order"] = True  # no graph through the inner loop is ever needed
        super().__init__(model, **kwargs)
        self.lam = check_positive("lam", lam)
        self.cg_steps = check_positive_int("cg_steps", cg_steps)

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "IMAML":
        """The sinusoid MLP or Conv4 with the proximal strength and CG steps of the config (Chapter 3)."""
        return cls(model_for(config), lam=config.lam, cg_steps=config.cg_steps, **gradient_options(cls, config))

    def adapt(self, state, support_x, support_y):
        """theta_i: approximate minimiser of the proximal inner problem, started at phi."""
        check_params(self.model, state["params"])
        return proximal_inner_loop(self.inner_loss, state["params"], support_x, support_y,
                                   self.steps, state["inner_lr"].detach(), self.lam)

    def task_metrics(self, state, support_x, support_y, query_x, query_y):
        """One task's query loss, and the surrogate 'objective' carrying the implicit meta-gradient."""
        check_params(self.model, state["params"])
        theta = self.adapt(state, support_x, support_y)
        query_loss = lambda p: task_loss(self.loss, self.predict(p, query_x), query_y)  # noqa: E731
        outer_grad = torch.func.grad(query_loss)(theta)
        meta_grad = implicit_meta_grad(self.inner_loss, theta, support_x, support_y, outer_grad,
                                       self.lam, self.cg_steps)
        metrics = self.score(theta, query_x, query_y)
        metrics["objective"] = with_gradient(metrics["loss"], state["params"], meta_grad)
        return metrics

    def __repr__(self) -> str:
        return f"IMAML(inner_lr={self.inner_lr}, steps={self.steps}, lam={self.lam}, cg_steps={self.cg_steps})"

