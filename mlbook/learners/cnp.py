"""Conditional Neural Process (Garnelo et al., 2018): a model-based meta-learner (Chapter 4).

Adaptation is one forward pass, no gradient step:

    r_i = h_phi(x_i, y_i)                for every (x_i, y_i) in D_i^train   (encoder)
    r   = (1 / K) sum_i r_i                                                  (aggregation)
    (mu(x), sigma(x)^2) = g_phi(x, r)    for a query x                       (decoder)

Regression is trained by the Gaussian negative log-likelihood of the query targets, so the
decoder's variance is a real predictive uncertainty (Chapter 6 calibrates it). For N-way
classification, the aggregation is per class, r_c = mean of h_phi(x_i) over the examples of
class c, and the decoder scores each class from (x, r_c), so relabelling the classes
relabels the outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import gaussian_nll, query_metrics
from ..models import MLP, Conv4
from ..taskmap import call
from ..tasks import Episode
from ..utils import check_positive, check_positive_int
from .context import ContextLearner, check_episode_shape, check_inputs, check_support, probe_feature_size

__all__ = ["CNP"]


def _sub(params: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class CNP(ContextLearner):
    """A Conditional Neural Process behind the learner interface (Chapter 4).

    Regression (``ways=None``): inputs ``[M, x_dim]``, targets ``[M, y_dim]``; ``predict``
    returns the predictive mean and :meth:`predict_distribution` the mean and variance.
    Classification (``ways=N``): inputs ``[M, x_dim]`` vectors, or ``[M, 1, S, S]`` images when
    ``image_size=S`` (a :class:`~mlbook.models.Conv4` feature extractor with ``channels``
    channels reads them); ``predict`` returns ``[M, N]`` logits.

    ``features`` replaces that Conv4 by any module mapping ``[M, 1, S, S]`` to ``[M, F]``
    (Chapter 4 swaps in a fully connected one). ``hidden`` is the width of every MLP, ``representation`` the size of r, ``min_std`` the
    smallest predictive standard deviation (it keeps the likelihood finite).
    """

    name = "CNP"
    kind = "model-based"

    def __init__(self, x_dim: int = 1, y_dim: int = 1, ways: int | None = None,
                 image_size: int | None = None, hidden: int = 64, representation: int = 64,
                 channels: int = 32, min_std: float = 0.05, features: nn.Module | None = None):
        super().__init__(x_dim, y_dim, ways, image_size)
        hidden = check_positive_int("hidden", hidden)
        representation = check_positive_int("representation", representation)
        self.min_std = check_positive("min_std", min_std)
        if self.min_std >= 1:
            raise ValueError(f"min_std must be in (0, 1), got {min_std!r}")
        if self.ways is None:
            self.feature_shape = (self.x_dim,)
            net = {
                "encoder": MLP(self.x_dim + self.y_dim, representation, hidden=(hidden, hidden)),
                "decoder": MLP(self.x_dim + representation, 2 * self.y_dim, hidden=(hidden, hidden)),
            }
        else:
            if self.image_size is not None:
                self.feature_shape = (1, self.image_size, self.image_size)
                if features is None:
                    features = Conv4(0, channels=check_positive_int("channels", channels),
                                     image_size=self.image_size)
                feature_size = probe_feature_size(features, self.feature_shape)
            else:
                features = MLP(self.x_dim, hidden, hidden=(hidden,))
                feature_size = hidden
                self.feature_shape = (self.x_dim,)
            net = {
                "features": features,
                "encoder": MLP(feature_size, representation, hidden=(hidden,)),
                "decoder": MLP(feature_size + representation, 1, hidden=(hidden,)),
            }
        self.model = nn.ModuleDict(net)
        self.probabilistic = self.ways is None

    # -- the interface (init is the base class's: phi = every weight of the model) ---------
    def adapt(self, state, support_x, support_y) -> dict:
        """Adapt(phi, D_train) = the aggregated representation r: one forward pass (Chapter 4)."""
        check_support(support_x, support_y, self.feature_shape, self.ways, self.y_dim)
        r = self.represent(state["params"], support_x[None], support_y[None])[0]
        return {"params": state["params"], "representation": r}

    def predict(self, task_state, x):
        """The predictive mean (regression) or the class logits (classification) for ``x``."""
        check_inputs(x, self.feature_shape, "x")
        out = self.decode(task_state["params"], task_state["representation"][None], x[None])
        return out[0][0] if self.ways is None else out[0]

    def predict_distribution(self, task_state, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian predictive distribution at ``x``: ``(mean, variance)``, each ``[M, y_dim]``.

        Regression only. ``variance`` is sigma(x)^2 of the decoder, always at least
        ``min_std**2``; it shrinks where the context pins the function down and grows away
        from it. This is the uncertainty Chapter 6 calibrates.
        """
        if self.ways is not None:
            raise ValueError("predict_distribution is for regression CNPs (ways=None); "
                             "a classifier's predictive distribution is softmax(predict(...))")
        check_inputs(x, self.feature_shape, "x")
        mean, variance = self.decode(task_state["params"], task_state["representation"][None], x[None])
        return mean[0], variance[0]

    # -- batched computations (one call for the whole meta-batch) ------------------------
    def embed(self, params, x: torch.Tensor) -> torch.Tensor:
        """Per-example features ``[B, M, F]`` of inputs ``[B, M, ...]`` (classification)."""
        if self.image_size is None:
            return call(self.model["features"], _sub(params, "features."), x)
        b, m = x.shape[:2]
        z = call(self.model["features"], _sub(params, "features."), x.reshape(b * m, *x.shape[2:]))
        return z.reshape(b, m, -1)

    def represent(self, params, support_x, support_y) -> torch.Tensor:
        """The aggregation step: r ``[B, R]`` (regression) or per-class r_c ``[B, N, R]``."""
        if self.ways is None:
            r_i = call(self.model["encoder"], _sub(params, "encoder."), torch.cat([support_x, support_y], -1))
            return r_i.mean(1)
        r_i = call(self.model["encoder"], _sub(params, "encoder."), self.embed(params, support_x))
        onehot = F.one_hot(support_y, self.ways).to(r_i.dtype)                # [B, M, N]
        counts = onehot.sum(1).clamp(min=1)                                     # [B, N]
        return torch.einsum("bmn,bmr->bnr", onehot, r_i) / counts[..., None]

    def decode(self, params, r: torch.Tensor, x: torch.Tensor):
        """The decoder: (mean, variance) ``[B, M, y_dim]`` each, or logits ``[B, M, N]``."""
        decoder, p = self.model["decoder"], _sub(params, "decoder.")
        if self.ways is None:
            r = r[:, None].expand(-1, x.shape[1], -1)
            out = call(decoder, p, torch.cat([x, r], -1))
            mean, raw = out.split(self.y_dim, -1)
            std = self.min_std + (1 - self.min_std) * F.softplus(raw)
            return mean, std ** 2
        z = self.embed(params, x)                                               # [B, M, F]
        pairs = torch.cat([z[:, :, None].expand(-1, -1, self.ways, -1),
                           r[:, None].expand(-1, z.shape[1], -1, -1)], -1)        # [B, M, N, F+R]
        return call(decoder, p, pairs)[..., 0]

    def _query_outputs(self, state, episode: Episode):
        check_episode_shape(episode, self.feature_shape)
        r = self.represent(state["params"], episode.support_x, episode.support_y)
        return self.decode(state["params"], r, episode.query_x)

    def episode_metrics(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task cross-entropy and accuracy, or (regression) the MSE of the predictive mean
        and the Gaussian NLL of the query targets, which is what training minimises."""
        out = self._query_outputs(state, episode)
        if self.ways is not None:
            return query_metrics(out, episode.query_y, classification=True)
        mean, variance = out
        nll = gaussian_nll(mean, variance, episode.query_y, reduction="none").flatten(1).mean(1)
        return {**query_metrics(mean, episode.query_y, classification=False), "nll": nll, "objective": nll}

    def __repr__(self) -> str:
        kind = "regression" if self.ways is None else f"{self.ways}-way classification"
        return f"CNP({kind})"
