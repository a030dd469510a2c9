"""A black-box meta-learner: a small transformer that learns in context (Chapter 4).

The support set is read as a sequence of (x, y) tokens and each query as an (x, ?) token:

    token_i = W [features(x_i), y_i, 1]        for (x_i, y_i) in D_i^train
    token_q = W [features(x_q), 0,   0]        for a query x_q
    y_q_hat = head(Transformer(tokens)[q])

Nothing about gradient descent, distances or aggregation is built in: the network itself
must learn how to use the context, end to end, from the episodes it is trained on. Every
token attends only to the support tokens (and itself), so a query's prediction depends on
the support set and that query alone, and the order of the support set does not matter
(there are no position encodings).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import query_metrics
from ..models import MLP, Conv4
from ..taskmap import call
from ..tasks import Episode
from ..utils import check_positive_int
from .context import ContextLearner, check_episode_shape, check_inputs, check_support, probe_feature_size

__all__ = ["BlackBox"]


class _Block(nn.Module):
    """Pre-norm transformer block: masked self-attention, then a two-layer MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(w, -1)
        q, k, v = (z.reshape(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.norm2(x))


class _Net(nn.Module):
    def __init__(self, features: nn.Module, feature_size: int, label_size: int, width: int,
                 heads: int, layers: int, out_size: int):
        super().__init__()
        self.features = features
        self.embed = nn.Linear(feature_size + label_size + 1, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_size)

    def forward(self, support_x, support_y, query_x):
        m, q = support_x.shape[1], query_x.shape[1]
        x = torch.cat([support_x, query_x], 1)
        b, t = x.shape[:2]
        z = self.features(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        support = torch.cat([z[:, :m], support_y, z.new_ones(b, m, 1)], -1)
        query = torch.cat([z[:, m:], z.new_zeros(b, q, support_y.shape[-1] + 1)], -1)
        tokens = torch.cat([support, query], 1)
        h = self.embed(tokens)
        # Attend to the support tokens and to oneself: queries never see each other.
        mask = torch.zeros(t, t, dtype=torch.bool, device=x.device)
        mask[:, :m] = True
        mask |= torch.eye(t, dtype=torch.bool, device=x.device)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm(h[:, m:]))


class BlackBox(ContextLearner):
    """A transformer that reads the support set as (x, y) tokens and predicts the queries (Chapter 4).

    Regression (``ways=None``): inputs ``[M, x_dim]``, targets ``[M, y_dim]``, ``predict``
    returns ``[M, y_dim]``, trained by MSE. Classification (``ways=N``): labels enter as
    one-hot vectors, ``predict`` returns ``[M, N]`` logits; images ``[M, 1, S, S]`` are read by
    a :class:`~mlbook.models.Conv4` with ``channels`` channels when ``image_size=S``.
    ``features`` replaces that Conv4 by any module mapping images to ``[M, F]`` vectors.
    ``width``, ``heads`` and ``layers`` size the transformer.

    ``adapt`` only stores the support set: the black box adapts inside its forward pass,
    when ``predict`` reads the context together with the queries.
    """

    name = "BlackBox"
    kind = "black-box"

    def __init__(self, x_dim: int = 1, y_dim: int = 1, ways: int | None = None,
                 image_size: int | None = None, width: int = 64, heads: int = 4, layers: int = 2,
                 channels: int = 32, features: nn.Module | None = None):
        super().__init__(x_dim, y_dim, ways, image_size)
        width = check_positive_int("width", width)
        heads = check_positive_int("heads", heads)
        layers = check_positive_int("layers", layers)
        if width % heads:
            raise ValueError(f"width must be a multiple of heads; got width={width}, heads={heads}")
        if self.image_size is not None:
            self.feature_shape = (1, self.image_size, self.image_size)
            if features is None:
                features = Conv4(0, channels=check_positive_int("channels", channels), image_size=self.image_size)
            feature_size = probe_feature_size(features, self.feature_shape)
        elif self.ways is not None:
            features = MLP(self.x_dim, width, hidden=(width,))
            feature_size = width
            self.feature_shape = (self.x_dim,)
        else:
            features = nn.Identity()
            feature_size = self.x_dim
            self.feature_shape = (self.x_dim,)
        label_size = self.y_dim if self.ways is None else self.ways
        out_size = self.y_dim if self.ways is None else self.ways
        self.model = _Net(features, feature_size, label_size, width, heads, layers, out_size)

    # -- the interface (init is the base class's: phi = every weight of the model) ---------
    def adapt(self, state, support_x, support_y) -> dict:
        """The task state is the context itself: phi and the support set (Chapter 4)."""
        check_support(support_x, support_y, self.feature_shape, self.ways, self.y_dim)
        return {"params": state["params"], "support_x": support_x, "support_y": support_y}

    def predict(self, task_state, x):
        """Read the context and ``x`` in one forward pass: values ``[M, y_dim]`` or logits ``[M, N]``."""
        check_inputs(x, self.feature_shape, "x")
        return self.forward(task_state["params"], task_state["support_x"][None],
                            task_state["support_y"][None], x[None])[0]

    # -- batched computations ------------------------------------------------------------
    def forward(self, params, support_x, support_y, query_x) -> torch.Tensor:
        """Query outputs for a batch of tasks: ``[B, M, ...]`` inputs -> ``[B, Q, out]``."""
        labels = support_y if self.ways is None else F.one_hot(support_y, self.ways).to(params["embed.weight"].dtype)
        return call(self.model, params, support_x, labels, query_x)

    def _query_outputs(self, state, episode: Episode) -> torch.Tensor:
        check_episode_shape(episode, self.feature_shape)
        return self.forward(state["params"], episode.support_x, episode.support_y, episode.query_x)

    def episode_metrics(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task query 'loss' (MSE or cross-entropy) and 'accuracy', in one batched forward pass."""
        return query_metrics(self._query_outputs(state, episode), episode.query_y, self.ways is not None)

    def __repr__(self) -> str:
        kind = "regression" if self.ways is None else f"{self.ways}-way classification"
        return f"BlackBox({kind})"
