"""Matching Networks (Vinyals et al., 2016): attention over the support set (Chapter 5).

    a(x, x_j) = softmax_j( c * cos(f(x), g(x_j)) )                 (attention over D_i^train)
    p(y|x)    = sum_j a(x, x_j) * onehot(y_j)                       (a weighted nearest neighbour)
    L_outer   = - mean_{(x, y) in D_i^test}  log p(y|x)

Without full-context embeddings f = g = the backbone. With them (``fce=True``), g reads the
whole support set with a bidirectional LSTM and f attends to it for a few LSTM steps, so each
embedding depends on the task: a support set is embedded *in context*.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Conv4
from ..taskmap import call
from ..tasks import Episode
from ..utils import check_positive, check_positive_int
from .base import Learner, LearnerConfig, check_labelled_support
from .protonet import embedding_for

__all__ = ["MatchingNet", "MatchingModel", "attention_predict"]


def attention_predict(query: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, ways: int,
                      scale: float = 10.0) -> torch.Tensor:
    """Class probabilities ``[..., M, N]`` from cosine attention over the support set (Chapter 5)."""
    similarity = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(-1, -2)   # [..., M, S]
    attention = torch.softmax(scale * similarity, dim=-1)
    return attention @ F.one_hot(support_y, ways).to(attention.dtype)                          # [..., M, N]


class MatchingModel(nn.Module):
    """Backbone plus the optional full-context-embedding LSTMs of Matching Networks (Chapter 5).

    ``forward(x)`` embeds images ``[B, M, C, H, W]`` -> ``[B, M, D]`` (f' = g' = the backbone).
    ``context_support(z)`` is g: ``z + forward LSTM + backward LSTM`` over the support set.
    ``context_query(zq, zs)`` is f: an LSTM that attends to the support ``steps`` times.
    """

    def __init__(self, backbone: nn.Module, embedding_size: int, fce: bool = False, steps: int = 2):
        super().__init__()
        self.backbone = backbone
        self.fce = bool(fce)
        self.steps = check_positive_int("steps", steps)
        self.embedding_size = embedding_size
        if self.fce:
            self.support_forward = nn.LSTMCell(embedding_size, embedding_size)
            self.support_backward = nn.LSTMCell(embedding_size, embedding_size)
            self.query_cell = nn.LSTMCell(2 * embedding_size, embedding_size)

    def forward(self, x: torch.Tensor, mode: str = "embed", support: torch.Tensor | None = None):
        if mode == "embed":
            z = self.backbone(x.reshape(-1, *x.shape[-3:]))
            return z.reshape(*x.shape[:-3], z.shape[-1])
        if mode == "support":
            return self.context_support(x)
        return self.context_query(x, support)

    def context_support(self, z: torch.Tensor) -> torch.Tensor:
        """g(x_j, S): a bidirectional LSTM over the support embeddings ``[B, S, D]``, plus a skip."""
        batch, size, dim = z.shape
        zeros = z.new_zeros(batch, dim)
        forward, backward = [], [None] * size
        state = (zeros, zeros)
        for j in range(size):
            state = self.support_forward(z[:, j], state)
            forward.append(state[0])
        state = (zeros, zeros)
        for j in reversed(range(size)):
            state = self.support_backward(z[:, j], state)
            backward[j] = state[0]
        return z + torch.stack(forward, 1) + torch.stack(backward, 1)

    def context_query(self, zq: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        """f(x, S): ``steps`` LSTM steps that each read an attention-weighted support summary."""
        batch, queries, dim = zq.shape
        flat = zq.reshape(batch * queries, dim)
        support = zs[:, None].expand(batch, queries, *zs.shape[1:]).reshape(batch * queries, *zs.shape[1:])
        h, c = torch.zeros_like(flat), torch.zeros_like(flat)
        read = torch.zeros_like(flat)
        for _ in range(self.steps):
            h, c = self.query_cell(torch.cat([flat, read], -1), (h + flat, c))
            h = h + flat
            weights = torch.softmax((support @ h[:, :, None]).squeeze(-1), dim=-1)    # [BQ, S]
            read = (weights[:, :, None] * support).sum(1)
        return h.reshape(batch, queries, dim)


class MatchingNet(Learner):
    """Matching Networks behind the one learner interface (Chapter 5).

    ``model`` maps images to embeddings (default ``Conv4(out_features=0)``); ``fce`` turns on
    full-context embeddings with ``fce_steps`` attention steps; ``scale`` sharpens the cosine
    attention. Logits are log-probabilities, so cross-entropy on them is the paper's loss.
    """

    name = "MatchingNet"
    kind = "metric"
    tasks = frozenset({"classification"})
    options = ("fce",)
    any_ways = True

    def __init__(self, model: nn.Module | None = None, fce: bool = False, fce_steps: int = 2,
                 scale: float = 10.0, strategy: str = "auto", chunk_size: int | None = None):
        super().__init__(loss="cross_entropy", strategy=strategy, chunk_size=chunk_size)
        backbone = Conv4(out_features=0) if model is None else model
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        size = getattr(backbone, "embedding_size", None)
        if fce and size is None:
            raise ValueError("fce needs a model with an `embedding_size` attribute (e.g. Conv4(out_features=0))")
        self.model = MatchingModel(backbone, size or 0, fce=fce, steps=fce_steps)
        self.fce = bool(fce)
        self.scale = check_positive("scale", scale)

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "MatchingNet":
        """A Conv4 embedding, with full-context embeddings when ``config.fce`` (Chapter 5)."""
        return cls(embedding_for(config), fce=config.fce)

    def _call(self, params, *args, **kwargs):
        return call(self.model, params, *args, **kwargs)

    def _probabilities(self, params, sx, sy, qx, ways: int) -> torch.Tensor:
        """Batched over tasks: ``sx [B, S, ...]``, ``qx [B, M, ...]`` -> ``[B, M, N]``."""
        z = self._call(params, torch.cat([sx, qx], dim=1))
        support, query = z[:, :sx.shape[1]], z[:, sx.shape[1]:]
        if self.fce:
            support = self._call(params, support, mode="support")
            query = self._call(params, query, mode="query", support=support)
        return attention_predict(query, support, sy, ways, self.scale)

    def adapt(self, state, support_x, support_y):
        """theta_i = the support set itself (embedded later, with the queries, for FCE)."""
        check_labelled_support(support_x, support_y)
        return {"params": state["params"], "support_x": support_x, "support_y": support_y,
                "ways": int(support_y.max().item()) + 1}

    def predict(self, task_state, x):
        """Log-probabilities of each class for queries ``x``."""
        p = self._probabilities(task_state["params"], task_state["support_x"][None], task_state["support_y"][None],
                                x[None], task_state["ways"])[0]
        return torch.log(p.clamp_min(1e-8))

    def episode_logits(self, state, episode: Episode) -> torch.Tensor:
        """Query log-probabilities ``[B, N*Q, N]`` for every task, with one backbone call."""
        ways = int(episode.support_y.max().item()) + 1
        p = self._probabilities(state["params"], episode.support_x, episode.support_y, episode.query_x, ways)
        return torch.log(p.clamp_min(1e-8))

    def episode_metrics(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task query negative log-likelihood and accuracy, from one backbone call."""
        logits = self.episode_logits(state, episode)
        loss = F.nll_loss(logits.flatten(0, 1), episode.query_y.flatten(), reduction="none")
        return {"loss": loss.view(episode.query_y.shape).mean(1),
                "accuracy": (logits.argmax(-1) == episode.query_y).float().mean(1)}

    def __repr__(self) -> str:
        return f"MatchingNet(fce={self.fce}, scale={self.scale})"
