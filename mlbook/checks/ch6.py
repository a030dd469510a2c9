"""Graders for Chapter 6, "The Bayesian view"."""
from __future__ import annotations

import math

import torch

from .core import Case, as_scalar, assert_close, chapter_graders, grade
from .predictions import Prediction, chapter_predictions

__all__ = ["check_posterior_update", "check_log_evidence", "check_predictive_variance",
           "check_conditional_evidence"]

F64 = torch.float64


def _problem(seed, d=3, k=5, m=4, zero_mean=False):
    g = torch.Generator().manual_seed(seed)
    prior_mean = torch.zeros(d, dtype=F64) if zero_mean else torch.randn(d, generator=g, dtype=F64)
    a = torch.randn(d, d, generator=g, dtype=F64)
    prior_cov = a @ a.T + 0.3 * torch.eye(d, dtype=F64)
    features = torch.randn(k, d, generator=g, dtype=F64)
    y = torch.randn(k, generator=g, dtype=F64)
    new_features = torch.randn(m, d, generator=g, dtype=F64)
    return prior_mean, prior_cov, features, y, new_features


# -- Exercise 1: the Gaussian posterior update --------------------------------------------
def reference_posterior_update(prior_mean, prior_cov, features, y, noise_var):
    """The reference: the Gaussian posterior over the weights (Chapter 6)."""
    precision = torch.linalg.inv(prior_cov) + features.T @ features / noise_var
    cov = torch.linalg.inv(precision)
    mean = cov @ (torch.linalg.solve(prior_cov, prior_mean) + features.T @ y / noise_var)
    return mean, cov


def check_posterior_update(fn):
    """Grade ``fn(prior_mean, prior_cov, features, y, noise_var) -> (mean, cov)`` (Chapter 6)."""
    return grade("Exercise 6.1: the Gaussian posterior update", fn, [
        Case("zero prior mean, 3 weights, 5 points", _posterior_case(0, 3, 5, 0.5, zero_mean=True),
             "precision = inv(S) + Phi^T Phi / noise_var; cov = inv(precision)"),
        Case("a prior mean pulls the posterior", _posterior_case(1, 3, 5, 0.5),
             "the mean is cov @ (inv(S) @ m + Phi^T y / noise_var): keep the prior term"),
        Case("noise_var is a variance", _posterior_case(2, 2, 4, 0.09),
             "divide by noise_var itself (sigma^2), not by its square root", hidden=True),
        Case("fewer points than weights", _posterior_case(3, 5, 2, 0.2),
             "the prior keeps the precision invertible when K < D: do not drop inv(S)", hidden=True),
    ])


def _posterior_case(seed, d, k, noise_var, zero_mean=False):
    def test(fn):
        m, s, phi, y, _ = _problem(seed, d, k, zero_mean=zero_mean)
        mean, cov = reference_posterior_update(m, s, phi, y, noise_var)
        out = fn(m, s, phi, y, noise_var)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AssertionError("return a pair (posterior_mean, posterior_cov)")
        if all(isinstance(t, torch.Tensor) for t in out) and tuple(out[0].shape) == (d, d) and \
                tuple(out[1].shape) == (d,):
            raise AssertionError("the pair is in the wrong order: return (mean, cov)")
        s_inv = torch.linalg.inv(s)
        precision = s_inv + phi.T @ phi / noise_var

        def posterior(m_=m, noise=noise_var, prior_precision=s_inv):
            c = torch.linalg.inv(prior_precision + phi.T @ phi / noise)
            return c @ (prior_precision @ m_ + phi.T @ y / noise), c
        assert_close(out[1], cov, "posterior covariance", atol=1e-6, mistakes={
            "the posterior precision: the covariance is its inverse": precision,
            "sqrt(noise_var) in place of noise_var: noise_var is already sigma^2":
                posterior(noise=math.sqrt(noise_var))[1],
            "noise_var squared: noise_var is already sigma^2": posterior(noise=noise_var ** 2)[1],
            "no prior precision inv(S) in the precision": torch.linalg.inv(phi.T @ phi / noise_var)
            if k >= d else None})
        assert_close(out[0], mean, "posterior mean", atol=1e-6, mistakes={
            "the mean of a zero prior mean: keep the prior term inv(S) @ m": posterior(torch.zeros_like(m))[0],
            "S @ m where inv(S) @ m belongs": cov @ (s @ m + phi.T @ y / noise_var),
            "the bracket inv(S) m + Phi^T y / noise_var without multiplying by the posterior covariance":
                s_inv @ m + phi.T @ y / noise_var,
            "Phi^T y without dividing by noise_var": cov @ (s_inv @ m + phi.T @ y),
            "sqrt(noise_var) in place of noise_var: noise_var is already sigma^2":
                posterior(noise=math.sqrt(noise_var))[0]})
    return test


# -- Exercise 2: the marginal likelihood ---------------------------------------------------
def reference_log_evidence(prior_mean, prior_cov, features, y, noise_var):
    """The reference: log N(y; Phi m, Phi S Phi^T + noise_var I) (Chapter 6)."""
    cov = features @ prior_cov @ features.T + noise_var * torch.eye(len(y), dtype=y.dtype)
    r = y - features @ prior_mean
    chol = torch.linalg.cholesky(cov)
    alpha = torch.cholesky_solve(r[:, None], chol)[:, 0]
    return -0.5 * (r @ alpha + 2 * chol.diagonal().log().sum() + len(y) * math.log(2 * math.pi))


def check_log_evidence(fn):
    """Grade ``fn(prior_mean, prior_cov, features, y, noise_var) -> log p(y)`` as a scalar tensor (Chapter 6)."""
    return grade("Exercise 6.2: the marginal likelihood", fn, [
        Case("zero prior mean", _evidence_case(0, 3, 5, 0.5, zero_mean=True),
             "y ~ N(Phi m, Phi S Phi^T + noise_var I); include the -K/2 log(2 pi) constant"),
        Case("with a prior mean", _evidence_case(1, 3, 5, 0.5), "the mean of y is Phi @ m"),
        Case("small noise, one point", _evidence_case(2, 2, 1, 0.01),
             "with one point, y ~ N(phi m, phi S phi^T + noise_var): a one-dimensional Gaussian", hidden=True),
        Case("many points", _evidence_case(3, 4, 12, 0.3),
             "the points are correlated through the shared weights: use the full K x K covariance", hidden=True),
    ])


def _gaussian_log_density(r, cov):
    return -0.5 * (r @ torch.linalg.solve(cov, r) + torch.logdet(cov) + len(r) * math.log(2 * math.pi))


def _evidence_case(seed, d, k, noise_var, zero_mean=False):
    def test(fn):
        m, s, phi, y, _ = _problem(seed, d, k, zero_mean=zero_mean)
        want = reference_log_evidence(m, s, phi, y, noise_var)
        out = fn(m, s, phi, y, noise_var)
        out = as_scalar(out)
        eye = torch.eye(k, dtype=F64)
        cov = phi @ s @ phi.T + noise_var * eye
        r = y - phi @ m
        const = 0.5 * k * math.log(2 * math.pi)
        assert_close(out, want, "log evidence", atol=1e-6, mistakes={
            "the log evidence without its -K/2 log(2 pi) constant": want + const,
            "a zero prior mean: the mean of y is Phi @ m": _gaussian_log_density(y, cov),
            "the likelihood at the prior mean alone: the covariance of y also has Phi S Phi^T":
                _gaussian_log_density(r, noise_var * eye),
            "sqrt(noise_var) in place of noise_var: noise_var is already sigma^2":
                _gaussian_log_density(r, phi @ s @ phi.T + math.sqrt(noise_var) * eye),
            "the negative log evidence: the sign is flipped": -want,
            "the points treated as independent: keep the off-diagonal terms of Phi S Phi^T + noise I":
                _gaussian_log_density(r, torch.diag(cov.diagonal())),
            "the mean over points: the log evidence of the task is the sum (a joint density)": want / k,
            "Phi S Phi^T without the noise variance": (lambda: _gaussian_log_density(r, phi @ s @ phi.T))
            if k <= d else None})
    return test


# -- Exercise 3: the posterior predictive variance -----------------------------------------
def reference_predictive_variance(post_cov, features, noise_var):
    """The reference: phi^T Sigma phi + noise_var at each row (Chapter 6)."""
    return ((features @ post_cov) * features).sum(-1) + noise_var


def check_predictive_variance(fn):
    """Grade ``fn(post_cov, features, noise_var) -> variance [M]`` at M new inputs (Chapter 6)."""
    return grade("Exercise 6.3: the posterior predictive variance", fn, [
        Case("four new inputs", _variance_case(0, 3, 4, 0.1),
             "variance = phi(x)^T Sigma phi(x) + noise_var, one number per row of features"),
        Case("the noise is part of the prediction", _variance_case(1, 2, 6, 1.5),
             "a new observation carries its own noise: add noise_var"),
        Case("one input, many weights", _variance_case(2, 6, 1, 0.05),
             "one row of features gives a result of shape [1]", hidden=True),
    ])


def _variance_case(seed, d, m, noise_var):
    def test(fn):
        _, s, phi, y, new = _problem(seed, d, 4, m)
        _, cov = reference_posterior_update(torch.zeros(d, dtype=F64), s, phi, y, 0.3)
        want = reference_predictive_variance(cov, new, noise_var)
        out = fn(cov, new, noise_var)
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (m, m) and m > 1:
            raise AssertionError(f"the predictive variance has shape {(m, m)}: that is the full covariance of the "
                                 f"M predictions; return its diagonal, shape {(m,)}")
        quad = ((new @ cov) * new).sum(-1)
        assert_close(out, want, "predictive variance", atol=1e-6, mistakes={
            "the variance of the mean function only: a new observation adds noise_var": quad,
            "only the diagonal of Sigma: phi^T Sigma phi needs the off-diagonal terms too":
                new ** 2 @ cov.diagonal() + noise_var,
            "sqrt(noise_var) added: noise_var is already sigma^2": quad + math.sqrt(noise_var),
            "noise_var squared: noise_var is already sigma^2": quad + noise_var ** 2,
            "the posterior precision inv(Sigma) where the covariance belongs":
                ((new @ torch.linalg.inv(cov)) * new).sum(-1) + noise_var,
            "a standard deviation: return the variance, without a square root": (quad + noise_var).sqrt(),
            "row sums of Phi Sigma Phi^T: take its diagonal": (new @ cov @ new.T).sum(-1) + noise_var})
    return test


# -- Exercise 4 (derivation): the episodic objective inside empirical Bayes -----------------
def reference_conditional_evidence(prior_mean, prior_cov, train_features, train_y, test_features, test_y,
                                   noise_var):
    """The reference: log p(D_test | D_train), the posterior predictive's joint log density (Chapter 6)."""
    post_mean, post_cov = reference_posterior_update(prior_mean, prior_cov, train_features, train_y, noise_var)
    eye = torch.eye(len(test_y), dtype=test_y.dtype)
    cov = test_features @ post_cov @ test_features.T + noise_var * eye
    return _gaussian_log_density(test_y - test_features @ post_mean, cov)


def check_conditional_evidence(fn):
    """Grade ``fn(prior_mean, prior_cov, train_features, train_y, test_features, test_y, noise_var)
    -> log p(D_test | D_train)`` against log p(D_train u D_test) - log p(D_train) (Chapter 6)."""
    return grade("Exercise 6.4: the episodic objective inside the evidence", fn, [
        Case("three weights, five support and four query points", _conditional_case(0, 3, 5, 4, 0.5),
             "condition on D_train: the posterior N(mu, Sigma), then y_test ~ N(Psi_* mu, Psi_* Sigma Psi_*^T "
             "+ noise_var I)"),
        Case("the query points are correlated", _conditional_case(1, 2, 3, 6, 0.2),
             "the query targets share the uncertain weights: use the full M x M predictive covariance"),
        Case("one support point, small noise", _conditional_case(2, 4, 1, 3, 0.05),
             "with little data the posterior stays close to the prior: still condition on the one point",
             hidden=True),
        Case("many support points", _conditional_case(3, 3, 20, 5, 0.3),
             "log p(D_test | D_train) = log p(D_train and D_test) - log p(D_train)", hidden=True),
    ])


def _conditional_case(seed, d, k, m, noise_var):
    def test(fn):
        g = torch.Generator().manual_seed(300 + seed)
        prior_mean = torch.randn(d, generator=g, dtype=F64)
        a = torch.randn(d, d, generator=g, dtype=F64)
        prior_cov = a @ a.T + 0.3 * torch.eye(d, dtype=F64)
        w = prior_mean + torch.linalg.cholesky(prior_cov) @ torch.randn(d, generator=g, dtype=F64)
        phi = torch.randn(k + m, d, generator=g, dtype=F64)
        y = phi @ w + math.sqrt(noise_var) * torch.randn(k + m, generator=g, dtype=F64)
        train_phi, test_phi, train_y, test_y = phi[:k], phi[k:], y[:k], y[k:]
        # The other side of the identity: the evidence of all the points minus that of D_train.
        want = reference_log_evidence(prior_mean, prior_cov, phi, y, noise_var) - \
            reference_log_evidence(prior_mean, prior_cov, train_phi, train_y, noise_var)
        out = as_scalar(fn(prior_mean, prior_cov, train_phi, train_y, test_phi, test_y, noise_var))
        post_mean, post_cov = reference_posterior_update(prior_mean, prior_cov, train_phi, train_y, noise_var)
        eye = torch.eye(m, dtype=F64)
        residual = test_y - test_phi @ post_mean
        spread = test_phi @ post_cov @ test_phi.T
        assert_close(out, want, "log p(D_test | D_train)", atol=1e-6, mistakes={
            "log p(D_test) under the prior: condition on D_train (the posterior, not the prior)":
                reference_log_evidence(prior_mean, prior_cov, test_phi, test_y, noise_var),
            "the predictive covariance without noise_var: a new observation carries its own noise":
                (lambda: _gaussian_log_density(residual, spread)) if m <= d else None,
            "only the diagonal of the predictive covariance: the query targets are correlated through "
            "the shared weights": _gaussian_log_density(residual, torch.diag(spread.diagonal() + noise_var)),
            "log p(D_train and D_test), the joint: subtract log p(D_train)":
                reference_log_evidence(prior_mean, prior_cov, phi, y, noise_var),
            "log p(D_train): the episodic term is the query set's density given the support set":
                reference_log_evidence(prior_mean, prior_cov, train_phi, train_y, noise_var),
            "log p(D_train | D_test): the conditioning goes the wrong way round":
                reference_conditional_evidence(prior_mean, prior_cov, test_phi, test_y, train_phi, train_y,
                                               noise_var),
            "the predictive mean at the prior mean: use the posterior mean Psi_* mu":
                _gaussian_log_density(test_y - test_phi @ prior_mean, spread + noise_var * eye),
            "the prior covariance in the predictive covariance: use the posterior's":
                _gaussian_log_density(residual, test_phi @ prior_cov @ test_phi.T + noise_var * eye),
            "noise_var counted twice in the predictive covariance":
                _gaussian_log_density(residual, spread + 2 * noise_var * eye),
            "without the -M/2 log(2 pi) constant": want + 0.5 * m * math.log(2 * math.pi)})
    return test


GRADERS = chapter_graders(globals())


# -- Prediction questions ---------------------------------------------------------------------
PREDICT_IMPLIED_PRIOR_WIDTH = Prediction(
    key="implied-prior-width",
    question="Read as Bayesian inference, one gradient step of size alpha from phi on the MEAN squared error of "
             "K support points is the posterior mode under a Gaussian prior centred at phi. Keep alpha fixed "
             "and let K grow from 2 to 20. What happens to the width (standard deviation) of that implied prior?",
    choices=("it stays the same: a prior does not depend on how much data comes",
             "it shrinks: the more support points, the narrower the implied prior",
             "it grows: more data lets the prior be vaguer"),
    answer="b",
    hint="with a mean loss, how far does one step of size alpha move w with 2 points, and with 20? How far "
         "does an exact posterior move from its prior as data accumulate?",
    explanation="A step on the mean loss moves w about as far whatever K, while a posterior moves further with "
                "more data; to describe the same move as a posterior mode the prior must tighten, about as "
                "2 k alpha sigma^2 / K for small steps (Grant et al. 2018).")

PREDICT_LINES_INFERENCE = Prediction(
    key="lines-inference",
    question="On the line tasks (K = 5 support points), three learners predict the query points: MAML with its "
             "meta-learned start (the better of 1 and 5 inner steps), exact Bayesian inference under a fixed "
             "N(0, I) prior that knows nothing about the tasks, and exact inference under the learned prior. "
             "Which has the HIGHEST query error?",
    choices=("MAML, although its start was meta-learned",
             "exact inference under the fixed N(0, I) prior",
             "exact inference under the learned prior"),
    answer="a",
    hint="what does MAML's inner loop compute, compared with an exact posterior mean under any reasonable prior?",
    explanation="MAML's few fixed-size steps are inference under a prior set by the optimiser; exact inference "
                "weighs the data by how much they say, and on these tasks that matters more than the prior.")

PREDICTIONS = chapter_predictions(globals())
