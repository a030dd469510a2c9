"""Meta-SGD (Li et al., 2017): meta-learn where to start *and* how to step (Chapter 4).

    theta_i = phi - alpha ⊙ grad_phi L_inner(phi; D_i^train)
    (phi, alpha) <- (phi, alpha) - beta * grad_(phi, alpha) sum_i L_outer(theta_i; D_i^test)

``alpha`` has one entry per parameter entry, so it learns both a step size and, through its
sign, a direction for every weight. The inner loop is MAML's (:func:`mlbook.bilevel.inner_loop`)
with a dict of per-parameter learning rates.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import init_params
from .maml import MAML

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """Meta-SGD: MAML whose inner learning rate is a meta-learned tensor per parameter (Chapter 4).

    ``inner_lr`` is the initial value of every entry of alpha. The state is
    ``{"params": phi, "inner_lr": {name: alpha_name}}`` with ``alpha_name`` shaped like
    ``phi[name]``; both are trained by the outer optimiser. ``steps`` inner steps reuse the
    same alpha (the paper uses one step).
    """

    name = "MetaSGD"
    options = ("inner_lr", "inner_steps", "first_order")

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, steps: int = 1,
                 first_order: bool = False, loss: str = "cross_entropy", adapt_keys=None,
                 strategy: str = "auto", chunk_size: int | None = None, compile: bool = False):
        super().__init__(model, inner_lr=inner_lr, steps=steps, first_order=first_order,
                         learn_inner_lr=True, loss=loss, adapt_keys=adapt_keys,
                         strategy=strategy, chunk_size=chunk_size, compile=compile)

    def init(self, seed: int, *, dtype=None, device=None) -> dict:
        """(phi, alpha): fresh parameters and one learnable step size per parameter entry."""
        params = init_params(self.model, seed, dtype=dtype, device=device)
        keys = list(params) if self.adapt_keys is None else self.adapt_keys
        lrs = {k: torch.full_like(params[k], self.inner_lr).detach().requires_grad_(True) for k in keys}
        return {"params": params, "inner_lr": lrs}

    def inner_rates(self, state):
        """(alpha as a dict of per-parameter tensors, the names it covers) (Chapter 4)."""
        lrs = state["inner_lr"]
        if not isinstance(lrs, dict):
            raise ValueError("state['inner_lr'] must be a dict of per-parameter tensors "
                             "(use MetaSGD.init to build the state)")
        return lrs, list(lrs)

    def __repr__(self) -> str:
        return f"MetaSGD(initial inner_lr={self.inner_lr}, steps={self.steps})"
