"""Answers to Chapter 6's exercises as students write them (see grader_answers_ch1.py)."""
import math

import torch

from mlbook.checks.ch6 import reference_conditional_evidence, reference_log_evidence, reference_posterior_update


# -- posterior update --------------------------------------------------------------------------
def _post(m, s, phi, y, noise, prior_term=True, scale_mean=True):
    s_inv = torch.linalg.inv(s)
    cov = torch.linalg.inv(s_inv + phi.T @ phi / noise)
    bracket = (s_inv @ m if prior_term else 0) + phi.T @ y / noise
    return (cov @ bracket if scale_mean else bracket), cov


def posterior_zero_mean(prior_mean, prior_cov, features, y, noise_var):
    return _post(torch.zeros_like(prior_mean), prior_cov, features, y, noise_var)


def posterior_noise_std(prior_mean, prior_cov, features, y, noise_var):
    return _post(prior_mean, prior_cov, features, y, math.sqrt(noise_var))


def posterior_noise_squared(prior_mean, prior_cov, features, y, noise_var):
    return _post(prior_mean, prior_cov, features, y, noise_var ** 2)


def posterior_precision(prior_mean, prior_cov, features, y, noise_var):
    mean, cov = _post(prior_mean, prior_cov, features, y, noise_var)
    return mean, torch.linalg.inv(cov)


def posterior_s_times_m(prior_mean, prior_cov, features, y, noise_var):
    _, cov = _post(prior_mean, prior_cov, features, y, noise_var)
    return cov @ (prior_cov @ prior_mean + features.T @ y / noise_var), cov


def posterior_no_cov_in_mean(prior_mean, prior_cov, features, y, noise_var):
    return _post(prior_mean, prior_cov, features, y, noise_var, scale_mean=False)


def posterior_y_not_scaled(prior_mean, prior_cov, features, y, noise_var):
    _, cov = _post(prior_mean, prior_cov, features, y, noise_var)
    return cov @ (torch.linalg.solve(prior_cov, prior_mean) + features.T @ y), cov


def posterior_swapped(prior_mean, prior_cov, features, y, noise_var):
    mean, cov = _post(prior_mean, prior_cov, features, y, noise_var)
    return cov, mean


def posterior_inplace(prior_mean, prior_cov, features, y, noise_var):
    prior_cov.copy_(torch.linalg.inv(prior_cov))          # "precision, once, in place"
    cov = torch.linalg.inv(prior_cov + features.T @ features / noise_var)
    return cov @ (prior_cov @ prior_mean + features.T @ y / noise_var), cov


def posterior_cholesky(prior_mean, prior_cov, features, y, noise_var):
    precision = torch.cholesky_inverse(torch.linalg.cholesky(prior_cov)) + features.T @ features / noise_var
    chol = torch.linalg.cholesky(precision)
    cov = torch.cholesky_inverse(chol)
    rhs = torch.cholesky_solve(prior_mean[:, None], torch.linalg.cholesky(prior_cov))[:, 0] + features.T @ y / noise_var
    return torch.cholesky_solve(rhs[:, None], chol)[:, 0], cov


def posterior_kalman(prior_mean, prior_cov, features, y, noise_var):
    # the same posterior through the K x K "gain" form
    gram = features @ prior_cov @ features.T + noise_var * torch.eye(len(y), dtype=y.dtype)
    gain = prior_cov @ features.T @ torch.linalg.inv(gram)
    return prior_mean + gain @ (y - features @ prior_mean), prior_cov - gain @ features @ prior_cov


# -- log evidence --------------------------------------------------------------------------------
def _density(r, cov):
    return -0.5 * (r @ torch.linalg.solve(cov, r) + torch.logdet(cov) + len(r) * math.log(2 * math.pi))


def _cov(prior_cov, features, noise):
    return features @ prior_cov @ features.T + noise * torch.eye(features.shape[0], dtype=features.dtype)


def evidence_no_constant(prior_mean, prior_cov, features, y, noise_var):
    return reference_log_evidence(prior_mean, prior_cov, features, y, noise_var) + \
        0.5 * len(y) * math.log(2 * math.pi)


def evidence_zero_mean(prior_mean, prior_cov, features, y, noise_var):
    return _density(y, _cov(prior_cov, features, noise_var))


def evidence_likelihood_only(prior_mean, prior_cov, features, y, noise_var):
    r = y - features @ prior_mean
    return -0.5 * (r @ r / noise_var + len(y) * math.log(2 * math.pi * noise_var))


def evidence_noise_std(prior_mean, prior_cov, features, y, noise_var):
    return _density(y - features @ prior_mean, _cov(prior_cov, features, math.sqrt(noise_var)))


def evidence_sign(prior_mean, prior_cov, features, y, noise_var):
    return -reference_log_evidence(prior_mean, prior_cov, features, y, noise_var)


def evidence_diagonal(prior_mean, prior_cov, features, y, noise_var):
    variances = _cov(prior_cov, features, noise_var).diagonal()
    r = y - features @ prior_mean
    return (-0.5 * (r ** 2 / variances + torch.log(2 * math.pi * variances))).sum()


def evidence_mean_over_points(prior_mean, prior_cov, features, y, noise_var):
    return reference_log_evidence(prior_mean, prior_cov, features, y, noise_var) / len(y)


def evidence_item(prior_mean, prior_cov, features, y, noise_var):
    return reference_log_evidence(prior_mean, prior_cov, features, y, noise_var).item()


def evidence_inplace(prior_mean, prior_cov, features, y, noise_var):
    y.sub_(features @ prior_mean)
    return _density(y, _cov(prior_cov, features, noise_var))


def evidence_distribution(prior_mean, prior_cov, features, y, noise_var):
    cov = _cov(prior_cov, features, noise_var)
    return torch.distributions.MultivariateNormal(features @ prior_mean, cov).log_prob(y)


def evidence_slogdet(prior_mean, prior_cov, features, y, noise_var):
    cov = _cov(prior_cov, features, noise_var)
    r = y - features @ prior_mean
    sign, logdet = torch.linalg.slogdet(cov)
    return -0.5 * (r @ torch.linalg.solve(cov, r)) - 0.5 * logdet - 0.5 * len(y) * math.log(2 * math.pi)


# -- predictive variance ---------------------------------------------------------------------------
def _quad(post_cov, features):
    return ((features @ post_cov) * features).sum(-1)


def variance_no_noise(post_cov, features, noise_var):
    return _quad(post_cov, features)


def variance_diagonal(post_cov, features, noise_var):
    return features ** 2 @ post_cov.diagonal() + noise_var


def variance_noise_std(post_cov, features, noise_var):
    return _quad(post_cov, features) + math.sqrt(noise_var)


def variance_noise_squared(post_cov, features, noise_var):
    return _quad(post_cov, features) + noise_var ** 2


def variance_full(post_cov, features, noise_var):
    return features @ post_cov @ features.T + noise_var


def variance_precision(post_cov, features, noise_var):
    return _quad(torch.linalg.inv(post_cov), features) + noise_var


def variance_std(post_cov, features, noise_var):
    return (_quad(post_cov, features) + noise_var).sqrt()


def variance_row_sums(post_cov, features, noise_var):
    return (features @ post_cov @ features.T).sum(-1) + noise_var


def variance_inplace(post_cov, features, noise_var):
    post_cov.add_(noise_var * torch.eye(post_cov.shape[0], dtype=post_cov.dtype))
    return _quad(post_cov, features)


def variance_einsum(post_cov, features, noise_var):
    return torch.einsum("md,de,me->m", features, post_cov, features) + noise_var


def variance_loop_diag(post_cov, features, noise_var):
    return torch.stack([f @ post_cov @ f for f in features]) + noise_var


# -- log p(D_test | D_train) --------------------------------------------------------------
def _mvn(mean, cov, y):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(y)


def _predictive(m, s, tphi, ty, qphi, noise):
    mean, cov = reference_posterior_update(m, s, tphi, ty, noise)
    return qphi @ mean, qphi @ cov @ qphi.T


def cond_prior_only(m, s, tphi, ty, qphi, qy, noise):
    return reference_log_evidence(m, s, qphi, qy, noise)


def cond_no_noise(m, s, tphi, ty, qphi, qy, noise):
    mean, spread = _predictive(m, s, tphi, ty, qphi, noise)
    return _mvn(mean, spread + 1e-12 * torch.eye(len(qy), dtype=qy.dtype), qy)


def cond_diagonal(m, s, tphi, ty, qphi, qy, noise):
    mean, spread = _predictive(m, s, tphi, ty, qphi, noise)
    var = spread.diagonal() + noise
    return torch.distributions.Normal(mean, var.sqrt()).log_prob(qy).sum()


def cond_joint(m, s, tphi, ty, qphi, qy, noise):
    return reference_log_evidence(m, s, torch.cat([tphi, qphi]), torch.cat([ty, qy]), noise)


def cond_train_only(m, s, tphi, ty, qphi, qy, noise):
    return reference_log_evidence(m, s, tphi, ty, noise)


def cond_reversed(m, s, tphi, ty, qphi, qy, noise):
    return reference_conditional_evidence(m, s, qphi, qy, tphi, ty, noise)


def cond_prior_mean(m, s, tphi, ty, qphi, qy, noise):
    _, spread = _predictive(m, s, tphi, ty, qphi, noise)
    return _mvn(qphi @ m, spread + noise * torch.eye(len(qy), dtype=qy.dtype), qy)


def cond_prior_cov(m, s, tphi, ty, qphi, qy, noise):
    mean, _ = _predictive(m, s, tphi, ty, qphi, noise)
    return _mvn(mean, qphi @ s @ qphi.T + noise * torch.eye(len(qy), dtype=qy.dtype), qy)


def cond_noise_twice(m, s, tphi, ty, qphi, qy, noise):
    mean, spread = _predictive(m, s, tphi, ty, qphi, noise)
    return _mvn(mean, spread + 2 * noise * torch.eye(len(qy), dtype=qy.dtype), qy)


def cond_no_constant(m, s, tphi, ty, qphi, qy, noise):
    return reference_conditional_evidence(m, s, tphi, ty, qphi, qy, noise) + 0.5 * len(qy) * math.log(2 * math.pi)


def cond_difference(m, s, tphi, ty, qphi, qy, noise):
    def evidence(phi, y):
        return _mvn(phi @ m, phi @ s @ phi.T + noise * torch.eye(len(y), dtype=y.dtype), y)
    return evidence(torch.cat([tphi, qphi]), torch.cat([ty, qy])) - evidence(tphi, ty)


def cond_library(m, s, tphi, ty, qphi, qy, noise):
    from mlbook.bayes import Gaussian, log_marginal_likelihood, posterior
    belief = posterior(Gaussian(m, s), tphi, ty, noise)
    return log_marginal_likelihood(belief, qphi, qy, noise)


CATALOGUE = {
    "ch6.check_posterior_update": {
        "wrong": [(posterior_zero_mean, "keep the prior term"), (posterior_noise_std, "sqrt\\(noise_var\\)"),
                  (posterior_noise_squared, "noise_var squared"), (posterior_precision, "posterior precision"),
                  (posterior_s_times_m, "S @ m where inv\\(S\\) @ m"),
                  (posterior_no_cov_in_mean, "without multiplying by the posterior covariance"),
                  (posterior_y_not_scaled, "without dividing by noise_var"), (posterior_swapped, "wrong order"),
                  (posterior_inplace, "changed its input `prior_cov`")],
        "right": [posterior_cholesky, posterior_kalman],
    },
    "ch6.check_log_evidence": {
        "wrong": [(evidence_no_constant, "log\\(2 pi\\) constant"), (evidence_zero_mean, "zero prior mean"),
                  (evidence_likelihood_only, "prior mean alone"), (evidence_noise_std, "sqrt\\(noise_var\\)"),
                  (evidence_sign, "sign is flipped"), (evidence_diagonal, "independent"),
                  (evidence_mean_over_points, "mean over points"), (evidence_item, "should be a torch.Tensor"),
                  (evidence_inplace, "changed its input `y`")],
        "right": [evidence_distribution, evidence_slogdet],
    },
    "ch6.check_predictive_variance": {
        "wrong": [(variance_no_noise, "adds noise_var"), (variance_diagonal, "off-diagonal"),
                  (variance_noise_std, "sqrt\\(noise_var\\)"), (variance_noise_squared, "noise_var squared"),
                  (variance_full, "return its diagonal"), (variance_precision, "precision"),
                  (variance_std, "without a square root"), (variance_row_sums, "row sums"),
                  (variance_inplace, "changed its input `post_cov`")],
        "right": [variance_einsum, variance_loop_diag],
    },
    "ch6.check_conditional_evidence": {
        "wrong": [(cond_prior_only, "under the prior"), (cond_no_noise, "without noise_var"),
                  (cond_diagonal, "only the diagonal"), (cond_joint, "the joint"), (cond_train_only, "log p\\(D_train\\)"),
                  (cond_reversed, "wrong way round"), (cond_prior_mean, "prior mean"),
                  (cond_prior_cov, "prior covariance"), (cond_noise_twice, "counted twice"),
                  (cond_no_constant, "constant")],
        "right": [cond_difference, cond_library],
    },
}
