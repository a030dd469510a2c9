"""The Bayesian view of meta-learning: learned priors with exact posteriors (Chapter 6).

Hierarchical Bayesian linear regression on fixed features phi(x) (random Fourier features,
polynomials, or any map you pass in):

    w_i ~ N(m, S)                       the prior over task weights (what meta-learning learns)
    y   = phi(x)^T w_i + eps,  eps ~ N(0, sigma^2)

For one task with support features Phi [K, D] and targets y [K], everything is closed form:
the posterior over w_i, the posterior predictive at new inputs, and the marginal likelihood
(the evidence) log p(y | m, S, sigma^2). *Empirical Bayes* learns m, S (through a Cholesky
factor) and sigma^2 by maximising the evidence over many training tasks: the prior is then
the meta-learned knowledge, and adapting to a task is exact Bayesian inference.

All solves go through Cholesky factors. A covariance the caller passes in is factorised by
:func:`stable_cholesky`, which adds the smallest diagonal jitter that works and reports it;
a covariance that is not positive definite even then is an error. Inside the posterior the
matrix factorised is ``I + Psi^T Psi / sigma^2`` (whitened features), whose eigenvalues are
all at least 1, so no jitter is ever needed there.

Also here: the Gaussian prior implied by k steps of gradient descent from a meta-learned
initialisation (Grant et al., 2018), and calibration metrics (Gaussian negative
log-likelihood, coverage of central predictive intervals) for any learner that predicts a
mean and a variance.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .metrics import LOG_2PI
from .utils import check_positive, check_positive_int

# The learner, the task families and the calibration metrics of Chapter 6 live with their kind
# (learners, tasks, metrics); their names are importable from here too, as the chapter does.
_ELSEWHERE = {
    "BayesianLinearRegression": "mlbook.learners.bayes_linear",
    "LinearGaussianFamily": "mlbook.tasks", "VariableShotsFamily": "mlbook.tasks",
    "gaussian_nll": "mlbook.metrics", "interval_coverage": "mlbook.metrics",
    "calibration": "mlbook.metrics", "predictive_calibration": "mlbook.metrics",
    "CalibrationResult": "mlbook.metrics",
}

__all__ = [
    "Gaussian", "stable_cholesky", "posterior", "predictive", "log_marginal_likelihood",
    "FourierFeatures", "PolynomialFeatures", "FeatureLinear", "num_features", "ImpliedPrior",
    "maml_implied_prior", "gradient_descent_linear", "map_estimate", *_ELSEWHERE,
]


def __getattr__(name):
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- Cholesky with a reported jitter ----------------------------------------------------------
def stable_cholesky(matrix: torch.Tensor, name: str = "covariance",
                    max_relative_jitter: float = 1e-5) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of a symmetric positive definite ``matrix`` and the jitter used (Chapter 6).

    Tries the plain factorisation first; on failure adds ``jitter * I`` with jitter growing
    tenfold from about 10 machine epsilons (relative to the mean diagonal) up to
    ``max_relative_jitter``. Returns ``(L, jitter)`` where ``jitter`` is the absolute value
    added (0.0 when none was needed). Raises ``ValueError`` naming ``name`` when the matrix is
    not square, not symmetric, not finite, or not positive definite even with the largest jitter.
    """
    if not isinstance(matrix, torch.Tensor) or matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise ValueError(f"{name} must be a square matrix [..., D, D], got {shape}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} has non-finite entries")
    scale = matrix.diagonal(dim1=-2, dim2=-1).abs().mean().clamp_min(torch.finfo(matrix.dtype).tiny)
    asym = (matrix - matrix.transpose(-1, -2)).abs().max()
    if asym > 1e3 * torch.finfo(matrix.dtype).eps * scale:
        raise ValueError(f"{name} must be symmetric (largest asymmetry {asym.item():.3g})")
    factor, info = torch.linalg.cholesky_ex(matrix)
    if not info.any():
        return factor, 0.0
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    jitter = 10 * torch.finfo(matrix.dtype).eps * scale.item()
    while jitter <= max_relative_jitter * scale.item() * (1 + 1e-9):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if not info.any():
            return factor, jitter
        jitter *= 10
    smallest = torch.linalg.eigvalsh(matrix).min().item()
    raise ValueError(f"{name} is not positive definite (smallest eigenvalue {smallest:.3g}); "
                     f"a diagonal jitter up to {max_relative_jitter:g} x its mean diagonal did not help")


# -- a Gaussian belief over weights ----------------------------------------------------------
class Gaussian:
    """A Gaussian belief N(mean, cov) over task weights: a prior or a posterior (Chapter 6).

    ``mean`` is ``[..., D]``. Give either ``cov [..., D, D]`` (factorised with
    :func:`stable_cholesky`; the jitter it needed is kept in ``.jitter``) or ``root``, any
    matrix with ``root @ root^T = cov`` (a Cholesky factor, or the square root a posterior
    computes). Leading batch axes describe one belief per task.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor | None = None,
                 root: torch.Tensor | None = None, jitter: float = 0.0):
        if not isinstance(mean, torch.Tensor) or mean.dim() < 1:
            raise ValueError(f"mean must be a tensor [..., D], got {type(mean).__name__}")
        if (cov is None) == (root is None):
            raise ValueError("give exactly one of cov and root")
        dim = mean.shape[-1]
        if cov is not None:
            if cov.shape[-2:] != (dim, dim):
                raise ValueError(f"cov must be [..., {dim}, {dim}] to match mean [..., {dim}], "
                                 f"got {tuple(cov.shape)}")
            root, jitter = stable_cholesky(cov, "cov")
        elif root.dim() < 2 or root.shape[-2] != dim:
            raise ValueError(f"root must be [..., {dim}, R] to match mean [..., {dim}], got {tuple(root.shape)}")
        self.mean = mean
        self.root = root
        self.jitter = float(jitter)

    @property
    def dim(self) -> int:
        """D, the number of weights."""
        return self.mean.shape[-1]

    @property
    def cov(self) -> torch.Tensor:
        """The covariance ``root @ root^T`` (including the jitter, if one was needed)."""
        return self.root @ self.root.transpose(-1, -2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` weight vectors drawn from the belief: ``[n, ..., D]``."""
        n = check_positive_int("n", n)
        eps = torch.randn((n, *self.root.shape[:-2], self.root.shape[-1]), generator=generator,
                          dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + (self.root @ eps.unsqueeze(-1)).squeeze(-1)

    def __repr__(self) -> str:
        return f"Gaussian(dim={self.dim}, batch={tuple(self.mean.shape[:-1])}, jitter={self.jitter:g})"


# -- the closed-form posterior, predictive and evidence ----------------------------------------
def _check_noise(noise_var) -> torch.Tensor | float:
    if isinstance(noise_var, torch.Tensor):
        if not torch.isfinite(noise_var).all() or (noise_var <= 0).any():
            raise ValueError("noise_var must be positive (it is the variance sigma^2 of the observation noise)")
        return noise_var
    return check_positive("noise_var", noise_var)


def _check_data(prior: Gaussian, features: torch.Tensor, y: torch.Tensor | None, what: str = "support"):
    if not isinstance(prior, Gaussian):
        raise ValueError(f"prior must be a mlbook.bayes.Gaussian, got {type(prior).__name__}")
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        raise ValueError(f"features must be a tensor [..., K, D], got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    if features.shape[-1] != prior.dim:
        raise ValueError(f"features have {features.shape[-1]} columns but the prior is over "
                         f"{prior.dim} weights: the dimensions must match")
    if y is None:
        return None
    if y.dim() == features.dim() and y.shape[-1] == 1:
        y = y.squeeze(-1)
    if y.shape != features.shape[:-1]:
        raise ValueError(f"y must be [..., K] (or [..., K, 1]) matching features {tuple(features.shape)}, "
                         f"got {tuple(y.shape)}")
    if features.shape[-2] == 0:
        raise ValueError(f"the {what} set is empty (K = 0): with no data the posterior is the prior "
                         "itself, so use the prior directly")
    return y


def _whitened_solve(prior: Gaussian, features, y, noise_var):
    """Shared algebra: whitened features Psi = Phi R, A = I + Psi^T Psi / s2 = L_A L_A^T."""
    psi = features @ prior.root                                          # [..., K, R]
    rank = psi.shape[-1]
    eye = torch.eye(rank, dtype=psi.dtype, device=psi.device)
    s2 = noise_var.unsqueeze(-1).unsqueeze(-1) if isinstance(noise_var, torch.Tensor) and noise_var.dim() else noise_var
    a = eye + psi.transpose(-1, -2) @ psi / s2
    # Eigenvalues of A are >= 1, so this factorisation cannot fail for finite inputs.
    chol_a = torch.linalg.cholesky(a)
    residual = y - (features @ prior.mean.unsqueeze(-1)).squeeze(-1)     # y - Phi m
    rhs = (psi.transpose(-1, -2) @ residual.unsqueeze(-1)) / s2
    v = torch.cholesky_solve(rhs, chol_a).squeeze(-1)                   # whitened posterior mean
    return psi, chol_a, residual, v


def posterior(prior: Gaussian, features: torch.Tensor, y: torch.Tensor, noise_var) -> Gaussian:
    """The exact posterior p(w | D_train) for Bayesian linear regression (Chapter 6).

    ``features`` is Phi ``[..., K, D]`` for the K support inputs, ``y`` is ``[..., K]`` (or
    ``[..., K, 1]``), ``noise_var`` is sigma^2. With R the prior's root (S = R R^T) and
    Psi = Phi R, the posterior is

        mean = m + R A^{-1} Psi^T (y - Phi m) / sigma^2,   cov = R A^{-1} R^T,
        A    = I + Psi^T Psi / sigma^2,

    the familiar precision form S^{-1} + Phi^T Phi / sigma^2 written so that only a
    well-conditioned matrix is ever factorised.
    """
    y = _check_data(prior, features, y)
    noise_var = _check_noise(noise_var)
    _, chol_a, _, v = _whitened_solve(prior, features, y, noise_var)
    mean = prior.mean + (prior.root @ v.unsqueeze(-1)).squeeze(-1)
    # R L_A^{-T} is a square root of R A^{-1} R^T.
    root = torch.linalg.solve_triangular(chol_a, prior.root.transpose(-1, -2), upper=False).transpose(-1, -2)
    return Gaussian(mean, root=root, jitter=prior.jitter)


def predictive(belief: Gaussian, features: torch.Tensor, noise_var) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive mean and variance of y at inputs with features ``[..., M, D]`` (Chapter 6).

    For a belief N(mu, Sigma) over w: mean = Phi mu, variance = diag(Phi Sigma Phi^T) + sigma^2.
    With the prior as the belief this is the K = 0 prediction; with a posterior it is the
    posterior predictive. Pass ``noise_var=0`` for the variance of the mean function alone.
    """
    _check_data(belief, features, None)
    if not (isinstance(noise_var, (int, float)) and noise_var == 0):
        noise_var = _check_noise(noise_var)
    mean = (features @ belief.mean.unsqueeze(-1)).squeeze(-1)
    spread = features @ belief.root                                     # [..., M, R]
    var = spread.pow(2).sum(-1)
    if isinstance(noise_var, torch.Tensor) and noise_var.dim():
        noise_var = noise_var.unsqueeze(-1)
    return mean, var + noise_var


def log_marginal_likelihood(prior: Gaussian, features: torch.Tensor, y: torch.Tensor, noise_var) -> torch.Tensor:
    """The evidence log p(y | m, S, sigma^2) of one task (or ``[...]`` tasks) (Chapter 6).

    y ~ N(Phi m, Phi S Phi^T + sigma^2 I) in closed form, computed without forming that K x K
    matrix:

        log p(y) = -1/2 [ K log 2 pi + K log sigma^2 + log|A|
                          + ||y - Phi m - Psi v||^2 / sigma^2 + ||v||^2 ]

    where v is the whitened posterior mean (the data-fit term plus the prior penalty at the
    posterior mean, and log|A| the Occam factor).
    """
    y = _check_data(prior, features, y)
    noise_var = _check_noise(noise_var)
    psi, chol_a, residual, v = _whitened_solve(prior, features, y, noise_var)
    k = y.shape[-1]
    log_det_a = 2 * chol_a.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    misfit = residual - (psi @ v.unsqueeze(-1)).squeeze(-1)
    log_s2 = torch.log(torch.as_tensor(noise_var, dtype=y.dtype, device=y.device))
    return -0.5 * (k * LOG_2PI + k * log_s2 + log_det_a + misfit.pow(2).sum(-1) / noise_var
                   + v.pow(2).sum(-1))


# -- feature maps ------------------------------------------------------------------------------
class FourierFeatures(nn.Module):
    """Random Fourier features phi(x) = sqrt(2/D) cos(omega x + b) for 1-D inputs (Chapter 6).

    omega ~ N(0, 1/lengthscale^2) and b ~ U[0, 2 pi] are drawn once from ``seed`` and kept
    fixed (buffers, not parameters). Under a N(0, I) prior on the weights, the function
    phi(x)^T w is approximately a Gaussian process with an RBF kernel of that lengthscale.
    """

    def __init__(self, num_features: int = 40, lengthscale: float = 1.0, seed: int = 0):
        super().__init__()
        self.num_features = check_positive_int("num_features", num_features)
        self.lengthscale = check_positive("lengthscale", lengthscale)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("omega", torch.randn(num_features, generator=g) / self.lengthscale)
        self.register_buffer("offset", 2 * math.pi * torch.rand(num_features, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 1:
            raise ValueError(f"x must be [..., 1] (one input feature), got {tuple(x.shape)}")
        omega, offset = self.omega.to(x), self.offset.to(x)
        return math.sqrt(2.0 / self.num_features) * torch.cos(x * omega + offset)


class PolynomialFeatures(nn.Module):
    """phi(x) = (1, x, x^2, ..., x^degree) for 1-D inputs; degree 1 gives lines (Chapter 6)."""

    def __init__(self, degree: int = 1, scale: float = 1.0):
        super().__init__()
        self.degree = check_positive_int("degree", degree)
        self.scale = check_positive("scale", scale)
        self.num_features = self.degree + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 1:
            raise ValueError(f"x must be [..., 1] (one input feature), got {tuple(x.shape)}")
        return torch.cat([(x / self.scale) ** p for p in range(self.degree + 1)], dim=-1)


def num_features(features: Callable) -> int:
    """D, the number of features a feature map produces (its ``num_features``; Chapter 6)."""
    number = getattr(features, "num_features", None)
    if number is None:
        raise ValueError("features must have a num_features attribute (e.g. FourierFeatures, PolynomialFeatures)")
    return int(number)


class FeatureLinear(nn.Module):
    """x -> phi(x)^T w: a linear model on fixed features, for MAML on linear-Gaussian tasks (Chapter 6).

    Its only parameter is ``head.weight [1, D]``; the feature map is fixed.
    """

    def __init__(self, features: Callable):
        super().__init__()
        self.features = features
        self.head = nn.Linear(num_features(features), 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- MAML as approximate hierarchical Bayes (Grant et al., 2018) ----------------------------------
@dataclass
class ImpliedPrior:
    """The Gaussian prior N(mean, precision^{-1}) that k gradient steps imply (Chapter 6).

    ``precision_eigenvalues`` are the implied prior precisions along the eigenvectors of the
    support set's Gram matrix Phi^T Phi; ``valid`` is True when all are positive (a proper
    Gaussian prior exists). ``covariance`` raises when it is not.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    precision_eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    shrinkage: torch.Tensor = field(repr=False)
    valid: bool

    @property
    def covariance(self) -> torch.Tensor:
        """The implied prior covariance; only defined when ``valid``."""
        if not self.valid:
            raise ValueError("the implied precision is not positive definite (a step overshoots: "
                             "inner_lr * curvature >= 1), so no Gaussian prior corresponds to these steps")
        v = self.eigenvectors
        return v @ torch.diag(1.0 / self.precision_eigenvalues) @ v.T


def _check_linear_inputs(features, init, y=None):
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be one task's [K, D] matrix, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    if features.shape[0] == 0:
        raise ValueError("the support set is empty (K = 0): gradient descent has nothing to fit")
    if not isinstance(init, torch.Tensor) or init.shape != features.shape[1:]:
        raise ValueError(f"init must be a [D] = [{features.shape[1]}] tensor matching the features, "
                         f"got {tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__}")
    if y is not None:
        y = y.reshape(-1)
        if y.shape[0] != features.shape[0]:
            raise ValueError(f"y has {y.shape[0]} targets but features has {features.shape[0]} rows")
    return y


def gradient_descent_linear(features: torch.Tensor, y: torch.Tensor, init: torch.Tensor,
                            inner_lr: float, steps: int) -> torch.Tensor:
    """MAML's inner loop on a linear model: ``steps`` GD steps on mean((Phi w - y)^2) from ``init`` (Chapter 6).

    The same loss as ``MAML(FeatureLinear(...), loss='mse')``: gradient 2 Phi^T (Phi w - y) / K.
    """
    y = _check_linear_inputs(features, init, y)
    inner_lr = check_positive("inner_lr", inner_lr)
    steps = check_positive_int("steps", steps)
    k = features.shape[0]
    w = init
    for _ in range(steps):
        w = w - inner_lr * 2.0 / k * features.T @ (features @ w - y)
    return w


def maml_implied_prior(features: torch.Tensor, init: torch.Tensor, inner_lr: float, steps: int,
                       noise_var: float) -> ImpliedPrior:
    """The Gaussian prior under which k GD steps from ``init`` give the MAP estimate (Chapter 6).

    Following Grant et al. (2018) and Santos (1996): on the loss mean((Phi w - y)^2) with
    curvature H = 2 Phi^T Phi / K = V diag(lambda) V^T, k steps of size alpha shrink the
    least-squares solution towards ``init`` by r_j = (1 - alpha lambda_j)^k along each
    eigenvector. The MAP estimate under a prior N(init, P^{-1}) and noise variance sigma^2
    shrinks by p_j / (mu_j / sigma^2 + p_j), with mu_j the eigenvalues of Phi^T Phi. Equating
    the two gives the implied precision

        p_j = (mu_j / sigma^2) r_j / (1 - r_j)        ->  K / (2 k alpha sigma^2)  as mu_j -> 0.

    It is a proper prior only when every r_j lies in (0, 1): alpha lambda_j < 1, or an
    overshoot 1 < alpha lambda_j < 2 with an even number of steps. With an odd number of
    overshooting steps r_j turns negative and so does the "precision"; at alpha lambda_j = 1
    the prior is flat; at alpha lambda_j >= 2 gradient descent diverges. The implied prior
    also depends on the support inputs through V and mu: it is a different prior for every
    support set, unlike a learned prior N(m, S).
    """
    _check_linear_inputs(features, init)
    inner_lr = check_positive("inner_lr", inner_lr)
    steps = check_positive_int("steps", steps)
    noise_var = check_positive("noise_var", noise_var)
    k = features.shape[0]
    mu, vecs = torch.linalg.eigh(features.T @ features)
    mu = mu.clamp_min(0)
    lam = 2.0 * mu / k
    r = (1 - inner_lr * lam) ** steps
    # 1 - r = 1 - (1 - a)^k computed without cancellation for small a = alpha * lambda.
    one_minus_r = -torch.expm1(steps * torch.log1p(-inner_lr * lam)) if bool((inner_lr * lam < 1).all()) \
        else 1 - r
    small = mu <= 1e-12 * mu.max().clamp_min(1e-300)
    ratio = torch.where(small, torch.zeros_like(mu), mu / torch.where(small, torch.ones_like(one_minus_r), one_minus_r))
    precision_eigs = torch.where(small, torch.full_like(mu, k / (2 * steps * inner_lr)), ratio * r) / noise_var
    precision = vecs @ torch.diag(precision_eigs) @ vecs.T
    return ImpliedPrior(init, precision, precision_eigs, vecs, r, bool((precision_eigs > 0).all()))


def map_estimate(prior_mean: torch.Tensor, prior_precision: torch.Tensor, features: torch.Tensor,
                 y: torch.Tensor, noise_var: float) -> torch.Tensor:
    """argmax_w log N(y; Phi w, sigma^2 I) + log N(w; m, P^{-1}) = (Phi^T Phi / s2 + P)^{-1}(Phi^T y / s2 + P m) (Chapter 6).

    Takes the prior *precision* so that the (possibly indefinite) implied precision of
    :func:`maml_implied_prior` can be plugged in to check the algebra.
    """
    y = _check_linear_inputs(features, prior_mean, y)
    noise_var = check_positive("noise_var", noise_var)
    if prior_precision.shape != (prior_mean.shape[0],) * 2:
        raise ValueError(f"prior_precision must be [D, D] = {(prior_mean.shape[0],) * 2}, got {tuple(prior_precision.shape)}")
    lhs = features.T @ features / noise_var + prior_precision
    rhs = features.T @ y / noise_var + prior_precision @ prior_mean
    return torch.linalg.solve(lhs, rhs)
