"""Proto-MAML (Triantafillou et al., 2020): a metric learner's prototypes start MAML's inner loop (Chapter 4).

    c_n            = mean of f_phi(x) over the support examples of class n     (ProtoNet)
    W_n, b_n       = 2 c_n, -||c_n||^2                                         (the head they imply)
    theta_i        = (phi, W, b) - alpha * grad L_inner, repeated `steps` times  (MAML)

With W and b set this way, the logits ``f(x) . W_n + b_n = -||f(x) - c_n||^2 + ||f(x)||^2``
rank the classes exactly as ProtoNet does, so before any inner step Proto-MAML *is* ProtoNet;
the inner steps then fine-tune that head (or, with ``adapt_body``, the whole network) on the
support set. The families of Chapter 4's taxonomy are not exclusive: this one is both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..bilevel import check_lrs, inner_loop
from ..taskmap import call
from ..utils import check_positive_int
from .base import Learner, LearnerConfig, check_labelled_support
from .protonet import embedding_for, prototypes

__all__ = ["ProtoMAML"]

_HEAD = ("proto_head.weight", "proto_head.bias")


class ProtoMAML(Learner):
    """Proto-MAML behind the one learner interface (Chapter 4).

    ``model`` maps images to embeddings (as for :class:`~mlbook.learners.protonet.ProtoNet`);
    ``ways`` is the number of classes of an episode. ``inner_lr``, ``steps`` and ``first_order``
    are MAML's; ``adapt_body`` lets the inner loop change the embedding too, not only the head.
    """

    name = "ProtoMAML"
    kind = "hybrid"
    tasks = frozenset({"classification"})
    options = ("inner_lr", "inner_steps", "first_order")
    adapts_with_gradients = True

    def __init__(self, model: nn.Module, ways: int, inner_lr: float = 0.1, steps: int = 1,
                 first_order: bool = False, adapt_body: bool = False, strategy: str = "auto",
                 chunk_size: int | None = None):
        super().__init__(loss="cross_entropy", strategy=strategy, chunk_size=chunk_size)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.ways = check_positive_int("ways", ways)
        self.steps = check_positive_int("steps", steps)
        self.inner_lr = check_lrs("inner_lr", inner_lr, self.steps)
        self.first_order = bool(first_order)
        self.adapt_body = bool(adapt_body)

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "ProtoMAML":
        """A Conv4 embedding; one inner step of size 0.1 on the prototype head unless configured (Chapter 4)."""
        return cls(embedding_for(config), config.ways, inner_lr=config.inner_lr or 0.1, steps=config.inner_steps,
                   first_order=config.first_order)

    def logits(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """f_phi(x) W^T + b for task parameters holding the embedding and the head."""
        body = {k: v for k, v in params.items() if k not in _HEAD}
        return call(self.model, body, x) @ params[_HEAD[0]].T + params[_HEAD[1]]

    def inner_loss(self, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_inner: the cross-entropy of the support set under the current head."""
        return F.cross_entropy(self.logits(params, x), y)

    def adapt(self, state, support_x, support_y):
        """theta_i: the prototype head (and phi), after ``steps`` MAML steps on the support set."""
        check_labelled_support(support_x, support_y)
        phi = state["params"]
        centres = prototypes(call(self.model, phi, support_x), support_y, self.ways)
        params = {**phi, _HEAD[0]: 2 * centres, _HEAD[1]: -(centres ** 2).sum(-1)}
        keys = None if self.adapt_body else list(_HEAD)
        return inner_loop(self.inner_loss, params, support_x, support_y, self.steps, self.inner_lr,
                          first_order=self.first_order, adapt_keys=keys)

    def predict(self, task_state, x):
        """Logits ``[M, ways]`` of the adapted head."""
        return self.logits(task_state, x)

    def __repr__(self) -> str:
        order = "first" if self.first_order else "second"
        where = "all parameters" if self.adapt_body else "the head"
        return f"ProtoMAML(ways={self.ways}, inner_lr={self.inner_lr}, steps={self.steps}, {order} order, on {where})"
