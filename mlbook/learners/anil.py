"""ANIL, "almost no inner loop" (Raghu et al., 2020): MAML that adapts only the head (Chapter 3).

    theta_i = (phi_body, phi_head - alpha * grad_head L_inner(phi; D_i^train))

The body is shared by every task and learned only in the outer loop; the inner loop touches
the last linear layer, which makes adaptation cheap and asks whether MAML learns features
(reuse) rather than a good place to start fine-tuning (rapid learning).
"""
from __future__ import annotations

from torch import nn

from .maml import MAML

__all__ = ["ANIL"]


class ANIL(MAML):
    """MAML with an inner loop on the head only (Chapter 3).

    ``head_prefix`` names the adapted parameters (``head.`` for :class:`~mlbook.models.MLP`
    and :class:`~mlbook.models.Conv4`). Every other argument is :class:`MAML`'s.
    """

    name = "ANIL"

    def __init__(self, model: nn.Module, head_prefix: str = "head.", **kwargs):
        if "adapt_keys" in kwargs:
            raise ValueError("adapt_keys is set by ANIL from head_prefix; use MAML(adapt_keys=...) instead")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        keys = [name for name, _ in model.named_parameters() if name.startswith(str(head_prefix))]
        if not keys:
            names = [name for name, _ in model.named_parameters()]
            raise ValueError(f"head_prefix {head_prefix!r} matches no parameter of the model; "
                             f"its parameters are {names}")
        self.head_prefix = head_prefix
        super().__init__(model, adapt_keys=keys, **kwargs)
