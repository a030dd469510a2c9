"""A learned optimiser: the inner update rule itself is meta-learned (Chapter 4).

In the spirit of Andrychowicz et al. (2016) and Ravi & Larochelle (2017), a small network
``u_psi`` reads, for every coordinate of the parameters on its own, the gradient and a running
average of it, and proposes that coordinate's update:

    g_t = grad L_inner(theta_t; D_i^train),      m_t = beta m_{t-1} + (1 - beta) g_t
    theta_{t+1} = theta_t - alpha (g_t + u_psi(g_t, m_t))        (coordinate-wise, `steps` times)

The meta-learned state is the initialisation phi *and* the rule's weights psi, trained together
through the unrolled inner loop. The last layer of ``u_psi`` starts at zero, so before any
meta-training the rule is plain gradient descent (MAML's inner loop); the outer loop then
learns a better one. Unrolling costs what MAML's second-order unroll costs, plus the rule's
small forward pass per step; the rule has ``hidden * 4 + 1`` weights whatever the model's size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

from ..bilevel import check_params, task_loss_fn
from ..models import init_params
from ..taskmap import call
from ..utils import check_positive, check_positive_int
from .base import Learner, LearnerConfig, task_loss
from .maml import gradient_options, model_for

__all__ = ["LearnedOptimiser", "UpdateRule"]


class UpdateRule(nn.Module):
    """``u_psi``: a two-layer network applied to every coordinate's (gradient, momentum) pair (Chapter 4)."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.hidden = nn.Linear(2, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(features)))[..., 0]


class LearnedOptimiser(Learner):
    """A coordinate-wise learned inner optimiser behind the one learner interface (Chapter 4).

    ``model`` is the network adapted to each task; ``inner_lr`` is alpha, the plain gradient step
    the rule starts from; ``steps`` the unrolled inner steps; ``momentum`` is beta; ``hidden`` the
    width of the rule. With ``first_order`` the inner gradients are constants to the outer loop.
    """

    name = "LearnedOptimiser"
    kind = "learned optimiser"
    options = ("inner_lr", "inner_steps", "first_order")
    adapts_with_gradients = True

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, steps: int = 3, first_order: bool = False,
                 momentum: float = 0.9, hidden: int = 16, loss: str = "cross_entropy",
                 strategy: str = "auto", chunk_size: int | None = None):
        super().__init__(loss=loss, strategy=strategy, chunk_size=chunk_size)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.steps = check_positive_int("steps", steps)
        self.first_order = bool(first_order)
        self.momentum = float(momentum)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.rule = UpdateRule(check_positive_int("hidden", hidden))
        self.inner_loss = task_loss_fn(model, lambda out, y: task_loss(self.loss, out, y))

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "LearnedOptimiser":
        """The model and inner step of MAML's book defaults, with a fresh rule (Chapter 4)."""
        return cls(model_for(config), **gradient_options(cls, config))

    def init(self, seed: int, *, dtype=None, device=None) -> dict:
        """(phi, psi): fresh model parameters, and a rule that starts as plain gradient descent."""
        rule = init_params(self.rule, seed + 1, dtype=dtype, device=device)
        with torch.no_grad():
            rule["out.weight"].zero_()
            rule["out.bias"].zero_()
        return {"params": init_params(self.model, seed, dtype=dtype, device=device), "rule": rule}

    def adapt(self, state, support_x, support_y):
        """theta_i: ``steps`` updates proposed by the learned rule, differentiable in phi and psi."""
        check_params(self.model, state["params"])
        if support_x.shape[0] == 0:
            raise ValueError("the support set has no examples: Adapt needs at least one")
        theta = dict(state["params"])
        averages = {k: torch.zeros_like(v) for k, v in theta.items()}
        for _ in range(self.steps):
            grads = grad(self.inner_loss)(theta, support_x, support_y)
            if self.first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            for k, g in grads.items():
                averages[k] = self.momentum * averages[k] + (1 - self.momentum) * g
                proposal = call(self.rule, state["rule"], torch.stack([g, averages[k]], -1))
                theta[k] = theta[k] - self.inner_lr * (g + proposal)
        return theta

    def predict(self, task_state, x):
        """f_theta(x) with the adapted parameters."""
        return call(self.model, task_state, x)

    def __repr__(self) -> str:
        return f"LearnedOptimiser(inner_lr={self.inner_lr}, steps={self.steps}, hidden={self.rule.hidden.out_features})"
