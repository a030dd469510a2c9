"""Hierarchical Bayesian linear regression, meta-learned by empirical Bayes (Chapter 6).

The meta-learned state is a Gaussian prior over the weights of a linear model on fixed
features; adapting to a task is the exact posterior (the algebra is in :mod:`mlbook.bayes`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..bayes import (FourierFeatures, Gaussian, log_marginal_likelihood, num_features, posterior,
                     predictive)
from ..metrics import gaussian_nll
from ..tasks import Episode
from ..utils import check_choice, check_positive
from .base import Learner, LearnerConfig

__all__ = ["BayesianLinearRegression"]


class BayesianLinearRegression(Learner):
    """Hierarchical Bayesian linear regression behind the learner interface (Chapter 6).

    The meta-learned state phi is the prior: its mean ``m``, a Cholesky factor of its
    covariance (``raw_tril``, with a softplus-positive diagonal) and the log noise variance.
    ``adapt`` is the exact posterior given the support set; ``predict`` its mean and
    ``predict_distribution`` the posterior predictive (mean, variance).

    ``objective='evidence'`` (empirical Bayes, type-II maximum likelihood) makes ``meta_loss``
    the negative log marginal likelihood of each task's support and query points together,
    per point; ``objective='predictive'`` uses -log p(D^test | D^train) instead (the
    conditional objective a neural process trains with). ``learn_prior=False`` keeps the
    initial N(0, prior_scale^2 I) prior fixed (only the noise may be learned).
    """

    name = "BayesLR"
    kind = "Bayesian"
    tasks = frozenset({"regression"})
    probabilistic = True

    def __init__(self, features: Callable, prior_scale: float = 1.0, noise: float = 0.1,
                 learn_prior: bool = True, learn_noise: bool = True, objective: str = "evidence"):
        super().__init__(loss="mse")
        self.features = features
        self.dim = num_features(features)
        self.prior_scale = check_positive("prior_scale", prior_scale)
        self.noise = check_positive("noise", noise)
        self.learn_prior = bool(learn_prior)
        self.learn_noise = bool(learn_noise)
        self.objective = check_choice("objective", objective, ("evidence", "predictive"))

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "BayesianLinearRegression":
        """Empirical Bayes on 40 random Fourier features of the 1-D input (Chapter 6)."""
        return cls(FourierFeatures(40))

    def init(self, seed: int = 0, *, dtype=None, device=None) -> dict:
        """phi: the prior N(0, prior_scale^2 I) and the noise variance noise^2 (``seed`` is unused: no randomness)."""
        d = self.dim
        kw = dict(dtype=dtype, device=device)
        diag = torch.full((d,), self.prior_scale, **kw)
        raw = torch.diag(diag + torch.log(-torch.expm1(-diag)))  # inverse softplus on the diagonal
        return {"mean": torch.zeros(d, **kw).requires_grad_(self.learn_prior),
                "raw_tril": raw.requires_grad_(self.learn_prior),
                "log_noise_var": torch.tensor(2 * math.log(self.noise), **kw).requires_grad_(self.learn_noise)}

    # -- the prior and noise the state describes
    def prior(self, state) -> Gaussian:
        """The Gaussian prior N(m, L L^T) over weights that ``state`` holds."""
        raw = state["raw_tril"]
        tril = torch.tril(raw, -1) + torch.diag_embed(nn.functional.softplus(raw.diagonal(dim1=-2, dim2=-1)))
        return Gaussian(state["mean"], root=tril)

    def noise_var(self, state) -> torch.Tensor:
        """sigma^2, the observation noise variance."""
        return state["log_noise_var"].exp()

    # -- the interface
    def adapt(self, state, support_x, support_y):
        """theta_i: the exact posterior over the task's weights, as a dict of tensors."""
        post = posterior(self.prior(state), self.features(support_x), support_y, self.noise_var(state))
        return {"mean": post.mean, "root": post.root, "noise_var": self.noise_var(state)}

    def predict(self, task_state, x):
        """The posterior predictive mean at ``x [M, 1]`` -> ``[M, 1]``."""
        return self.predict_distribution(task_state, x)[0]

    def predict_distribution(self, task_state, x):
        """Posterior predictive (mean, variance) at ``x [M, 1]``, each ``[M, 1]``."""
        # The same algebra as :func:`predictive`, without its value checks, so that it also
        # runs under vmap (task_state was validated when adapt built it).
        features = self.features(x)
        mean = features @ task_state["mean"]
        var = (features @ task_state["root"]).pow(2).sum(-1) + task_state["noise_var"]
        return mean.unsqueeze(-1), var.unsqueeze(-1)

    def prior_state(self, state) -> dict:
        """The task state before any data (K = 0): the prior itself."""
        prior = self.prior(state)
        return {"mean": prior.mean, "root": prior.root, "noise_var": self.noise_var(state)}

    def log_evidence(self, state, x, y) -> torch.Tensor:
        """log p(y | phi) per task for a batch ``x [B, K, 1]``, ``y [B, K, 1]`` -> ``[B]``."""
        return log_marginal_likelihood(self.prior(state), self.features(x), y, self.noise_var(state))

    def episode_metrics(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task query MSE and Gaussian NLL of the posterior predictive; the 'objective' is the
        negative log evidence (or predictive likelihood) per point."""
        prior, noise_var = self.prior(state), self.noise_var(state)
        x = torch.cat([episode.support_x, episode.query_x], 1)
        y = torch.cat([episode.support_y, episode.query_y], 1)
        log_joint = log_marginal_likelihood(prior, self.features(x), y, noise_var)
        if self.objective == "evidence":
            objective = -log_joint / x.shape[1]
        else:
            log_support = log_marginal_likelihood(prior, self.features(episode.support_x), episode.support_y,
                                                  noise_var)
            objective = -(log_joint - log_support) / episode.query_x.shape[1]
        post = posterior(prior, self.features(episode.support_x), episode.support_y, noise_var)
        mean, var = predictive(post, self.features(episode.query_x), noise_var)
        y = episode.query_y.squeeze(-1)
        return {"loss": (mean - y).pow(2).mean(-1), "objective": objective,
                "nll": gaussian_nll(mean, var, y, reduction="none").mean(-1)}

    def __repr__(self) -> str:
        kind = "learned" if self.learn_prior else "fixed"
        return f"BayesianLinearRegression(D={self.dim}, {kind} prior, objective={self.objective!r})"
