"""Tests for mlbook.bayes: exact posteriors against independent computations (Chapter 6)."""
import math

import pytest
import torch

from mlbook.bayes import (
    BayesianLinearRegression, FeatureLinear, FourierFeatures, Gaussian, LinearGaussianFamily,
    PolynomialFeatures, calibration, gaussian_nll, gradient_descent_linear, interval_coverage,
    log_marginal_likelihood, maml_implied_prior, map_estimate, posterior, predictive,
    predictive_calibration, stable_cholesky,
)
from mlbook.tasks import SinusoidFamily
from mlbook.train import meta_train

F64 = torch.float64



def _problem(seed, d=3, k=5, batch=()):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, generator=g, dtype=F64)
    a = torch.randn(d, d, generator=g, dtype=F64)
    s = a @ a.T + 0.2 * torch.eye(d, dtype=F64)
    phi = torch.randn(*batch, k, d, generator=g, dtype=F64)
    y = torch.randn(*batch, k, generator=g, dtype=F64)
    return m, s, phi, y


@pytest.mark.parametrize("seed,d,k", [(0, 3, 5), (1, 4, 2), (2, 2, 9), (3, 6, 1)])
def test_marginal_likelihood_matches_dense_joint_gaussian(seed, d, k):
    m, s, phi, y = _problem(seed, d, k)
    noise = 0.3
    dense = torch.distributions.MultivariateNormal(phi @ m, phi @ s @ phi.T + noise * torch.eye(k, dtype=F64))
    got = log_marginal_likelihood(Gaussian(m, cov=s), phi, y, noise)
    assert torch.allclose(got, dense.log_prob(y), atol=1e-10, rtol=1e-10)


def test_marginal_likelihood_batched_over_tasks_and_noise():
    m, s, phi, y = _problem(4, 3, 6, batch=(5,))
    noise = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=F64)
    got = log_marginal_likelihood(Gaussian(m, cov=s), phi, y.unsqueeze(-1), noise)
    for i in range(5):
        cov = phi[i] @ s @ phi[i].T + noise[i] * torch.eye(6, dtype=F64)
        want = torch.distributions.MultivariateNormal(phi[i] @ m, cov).log_prob(y[i])
        assert torch.allclose(got[i], want, atol=1e-10)


def test_marginal_likelihood_matches_quadrature_in_one_dimension():
    # p(y) = integral of N(w; m, s) prod_k N(y_k; phi_k w, noise) dw, by the trapezoid rule.
    m, s, phi, y = _problem(5, 1, 4)
    noise = 0.5
    w = torch.linspace(-40, 40, 400_001, dtype=F64)
    log_prior = torch.distributions.Normal(m[0], s[0, 0].sqrt()).log_prob(w)
    log_lik = torch.distributions.Normal(phi[:, 0, None] * w, math.sqrt(noise)).log_prob(y[:, None]).sum(0)
    integral = torch.trapezoid((log_prior + log_lik).exp(), w)
    got = log_marginal_likelihood(Gaussian(m, cov=s), phi, y, noise)
    assert torch.allclose(got, integral.log(), atol=1e-8)


@pytest.mark.parametrize("seed,d,k", [(0, 3, 5), (1, 5, 2), (2, 2, 12)])
def test_posterior_matches_precision_form(seed, d, k):
    m, s, phi, y = _problem(seed, d, k)
    noise = 0.2
    precision = torch.linalg.inv(s) + phi.T @ phi / noise
    cov = torch.linalg.inv(precision)
    mean = cov @ (torch.linalg.solve(s, m) + phi.T @ y / noise)
    post = posterior(Gaussian(m, cov=s), phi, y, noise)
    assert torch.allclose(post.mean, mean, atol=1e-10)
    assert torch.allclose(post.cov, cov, atol=1e-10)


def test_posterior_matches_gaussian_conditioning_of_the_joint():
    # Condition the joint Gaussian of (w, y) on y: an independent route to the posterior.
    m, s, phi, y = _problem(7, 3, 4)
    noise = 0.4
    cov_wy = s @ phi.T
    cov_yy = phi @ s @ phi.T + noise * torch.eye(4, dtype=F64)
    gain = torch.linalg.solve(cov_yy, cov_wy.T).T
    post = posterior(Gaussian(m, cov=s), phi, y, noise)
    assert torch.allclose(post.mean, m + gain @ (y - phi @ m), atol=1e-10)
    assert torch.allclose(post.cov, s - gain @ cov_wy.T, atol=1e-10)


def test_posterior_matches_monte_carlo_importance_weights():
    # Weight prior samples by their likelihood: the weighted mean approximates the posterior mean.
    m, s, phi, y = _problem(8, 2, 3)
    noise = 1.0
    prior = Gaussian(m, cov=s)
    w = prior.sample(200_000, torch.Generator().manual_seed(0))
    log_lik = torch.distributions.Normal(w @ phi.T, 1.0).log_prob(y).sum(-1)
    weights = torch.softmax(log_lik, 0)
    post = posterior(prior, phi, y, noise)
    mc_mean = weights @ w
    assert torch.allclose(mc_mean, post.mean, atol=0.03)
    # the evidence is the prior expectation of the likelihood
    mc_log_evidence = torch.logsumexp(log_lik, 0) - math.log(len(w))
    assert abs(mc_log_evidence - log_marginal_likelihood(prior, phi, y, noise)) < 0.02


def test_predictive_matches_sampled_weights_and_prior_is_k_zero():
    m, s, phi, y = _problem(9, 3, 4)
    noise = 0.25
    post = posterior(Gaussian(m, cov=s), phi, y, noise)
    x_new = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    mean, var = predictive(post, x_new, noise)
    assert torch.allclose(mean, x_new @ post.mean)
    assert torch.allclose(var, torch.diagonal(x_new @ post.cov @ x_new.T) + noise)
    w = post.sample(100_000, torch.Generator().manual_seed(2))
    f = w @ x_new.T
    assert torch.allclose(f.var(0) + noise, var, rtol=0.03)
    # more data never increases the predictive variance
    prior_mean, prior_var = predictive(Gaussian(m, cov=s), x_new, noise)
    assert (var <= prior_var + 1e-12).all()
    assert torch.allclose(prior_mean, x_new @ m)


def test_sequential_updates_equal_one_batch_update():
    m, s, phi, y = _problem(10, 3, 6)
    prior = Gaussian(m, cov=s)
    once = posterior(prior, phi, y, 0.3)
    twice = posterior(posterior(prior, phi[:2], y[:2], 0.3), phi[2:], y[2:], 0.3)
    assert torch.allclose(once.mean, twice.mean, atol=1e-10)
    assert torch.allclose(once.cov, twice.cov, atol=1e-10)


def test_jitter_is_used_and_reported_only_when_needed():
    d = 4
    v = torch.randn(d, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    singular = v @ v.T  # rank 2: positive semi-definite
    factor, jitter = stable_cholesky(singular)
    assert jitter > 0
    assert torch.allclose(factor @ factor.T, singular + jitter * torch.eye(d, dtype=F64), atol=1e-12)
    prior = Gaussian(torch.zeros(d, dtype=F64), cov=singular)
    assert prior.jitter == jitter
    _, none = stable_cholesky(torch.eye(d, dtype=F64))
    assert none == 0.0


def test_bad_inputs_raise_clear_errors():
    m, s, phi, y = _problem(11, 3, 4)
    prior = Gaussian(m, cov=s)
    indefinite = torch.diag(torch.tensor([1.0, -0.5, 2.0], dtype=F64))
    with pytest.raises(ValueError, match="not positive definite"):
        Gaussian(m, cov=indefinite)
    with pytest.raises(ValueError, match="symmetric"):
        stable_cholesky(torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="must be \\[..., 3, 3\\]"):
        Gaussian(m, cov=torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="dimensions must match"):
        posterior(prior, torch.randn(4, 2, dtype=F64), y, 0.1)
    with pytest.raises(ValueError, match="y must be"):
        posterior(prior, phi, y[:3], 0.1)
    with pytest.raises(ValueError, match="empty"):
        posterior(prior, phi[:0], y[:0], 0.1)
    with pytest.raises(ValueError, match="empty"):
        log_marginal_likelihood(prior, phi[:0], y[:0], 0.1)
    with pytest.raises(ValueError, match="noise_var"):
        posterior(prior, phi, y, 0.0)
    with pytest.raises(ValueError, match="noise_var"):
        log_marginal_likelihood(prior, phi, y, torch.tensor(-1.0, dtype=F64))


def test_empirical_bayes_recovers_a_known_prior():
    true_mean, true_cov, noise = [1.0, -0.5], [[1.0, 0.6], [0.6, 0.5]], 0.3
    family = LinearGaussianFamily(PolynomialFeatures(1), true_mean, true_cov, noise=noise, shots=10, queries=10)
    learner = BayesianLinearRegression(PolynomialFeatures(1), prior_scale=1.0, noise=1.0)
    result = meta_train(learner, family, steps=250, meta_batch_size=64, outer_lr=0.05, seed=0)
    prior = learner.prior(result.state)
    with torch.no_grad():
        assert torch.allclose(prior.mean, torch.tensor(true_mean), atol=0.15), prior.mean
        assert torch.allclose(prior.cov, torch.tensor(true_cov), atol=0.2), prior.cov
        assert abs(learner.noise_var(result.state).sqrt().item() - noise) < 0.03
    # the evidence rose during training
    assert sum(result.losses[-20:]) / 20 < result.losses[0] - 0.3


def test_learned_prior_beats_fixed_prior_on_sinusoids_and_is_calibrated():
    features = FourierFeatures(30, 1.0, seed=0)
    family = SinusoidFamily(shots=10, queries=10, noise=0.1)
    learned = BayesianLinearRegression(features, prior_scale=2.0, noise=0.1)
    result = meta_train(learned, family, steps=120, meta_batch_size=32, outer_lr=0.02, seed=0)
    fixed = BayesianLinearRegression(features, prior_scale=2.0, noise=0.1, learn_prior=False, learn_noise=False)
    test = SinusoidFamily(shots=3, queries=20, noise=0.1)
    a = predictive_calibration(learned, result.state, test, episodes=100)
    b = predictive_calibration(fixed, fixed.init(0), test, episodes=100)
    assert a.mse < 0.5 * b.mse, (a.mse, b.mse)
    assert a.nll < b.nll
    assert abs(a.coverage[0.9] - 0.9) < 0.06, a.coverage


def test_learner_interface_shapes_and_k_zero_prior_state():
    learner = BayesianLinearRegression(FourierFeatures(8, seed=1))
    state = learner.init(0)
    x = torch.linspace(-1, 1, 5).unsqueeze(-1)
    task = learner.adapt(state, x, torch.sin(x))
    mean, var = learner.predict_distribution(task, torch.zeros(7, 1))
    assert mean.shape == (7, 1) and var.shape == (7, 1) and (var > 0).all()
    assert learner.predict(task, torch.zeros(7, 1)).shape == (7, 1)
    m0, v0 = learner.predict_distribution(learner.prior_state(state), torch.zeros(7, 1))
    assert torch.allclose(m0, torch.zeros(7, 1)) and (v0 > var).all()
    with pytest.raises(ValueError, match="objective"):
        BayesianLinearRegression(PolynomialFeatures(1), objective="elbo")


def test_predictive_objective_equals_conditional_likelihood():
    learner = BayesianLinearRegression(PolynomialFeatures(2), objective="predictive")
    state = learner.init(0, dtype=F64)
    family = LinearGaussianFamily(PolynomialFeatures(2), [0.0, 1.0, 0.0], torch.eye(3).tolist(), shots=3, queries=4)
    episode = family.sample(1, torch.Generator().manual_seed(0))
    episode = type(episode)(*(t.double() for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y)))
    task = learner.adapt(state, episode.support_x[0], episode.support_y[0])
    mean, var = predictive(Gaussian(task["mean"], root=task["root"]), learner.features(episode.query_x[0]), 0.0)
    cov = learner.features(episode.query_x[0]) @ Gaussian(task["mean"], root=task["root"]).cov @ \
        learner.features(episode.query_x[0]).T + task["noise_var"] * torch.eye(4, dtype=F64)
    want = -torch.distributions.MultivariateNormal(mean, cov).log_prob(episode.query_y[0, :, 0]) / 4
    assert torch.allclose(learner.meta_loss(state, episode), want, atol=1e-10)


# -- MAML as approximate hierarchical Bayes ---------------------------------------------------
@pytest.mark.parametrize("k_shot,lr,steps", [(5, 0.2, 1), (5, 0.2, 5), (1, 0.3, 3), (8, 0.05, 40)])
def test_gradient_descent_equals_map_under_implied_prior(k_shot, lr, steps):
    features = PolynomialFeatures(1)
    g = torch.Generator().manual_seed(k_shot + steps)
    x = torch.rand(k_shot, 1, generator=g, dtype=F64) * 2 - 1
    y = torch.randn(k_shot, generator=g, dtype=F64)
    init = torch.tensor([0.7, -0.2], dtype=F64)
    implied = maml_implied_prior(features(x), init, lr, steps, noise_var=0.09)
    assert implied.valid
    gd = gradient_descent_linear(features(x), y, init, lr, steps)
    assert torch.allclose(gd, map_estimate(init, implied.precision, features(x), y, 0.09), atol=1e-10)
    # and it is the posterior mean of an ordinary Gaussian prior
    post = posterior(Gaussian(init, cov=implied.covariance), features(x), y, 0.09)
    assert torch.allclose(gd, post.mean, atol=1e-8)


def test_gradient_descent_matches_maml_inner_loop():
    from mlbook.learners import MAML

    features = PolynomialFeatures(1)
    learner = MAML(FeatureLinear(features), inner_lr=0.15, steps=3, loss="mse")
    state = learner.init(0, dtype=F64)
    x = torch.linspace(-1, 1, 6, dtype=F64).unsqueeze(-1)
    y = 2 * x - 0.3
    adapted = learner.adapt(state, x, y)["head.weight"][0]
    init = state["params"]["head.weight"][0]
    assert torch.allclose(adapted, gradient_descent_linear(features(x), y, init, 0.15, 3), atol=1e-12)


def test_implied_prior_breaks_for_overshooting_steps_and_depends_on_support():
    features = PolynomialFeatures(1)
    x = torch.linspace(-1, 1, 5, dtype=F64).unsqueeze(-1)
    init = torch.zeros(2, dtype=F64)
    curvature = torch.linalg.eigvalsh(2 * features(x).T @ features(x) / 5).max().item()
    odd = maml_implied_prior(features(x), init, 1.5 / curvature, 1, 0.1)
    assert not odd.valid and (odd.precision_eigenvalues < 0).any()
    with pytest.raises(ValueError, match="not positive definite"):
        odd.covariance
    # the same overshoot taken twice shrinks by a positive factor: a valid prior again
    assert maml_implied_prior(features(x), init, 1.5 / curvature, 2, 0.1).valid
    # tiny steps: isotropic prior with variance 2 k alpha sigma^2 / K (early stopping = L2)
    tiny = maml_implied_prior(features(x), init, 1e-4, 3, 0.1)
    assert torch.allclose(tiny.covariance, torch.eye(2, dtype=F64) * 2 * 3 * 1e-4 * 0.1 / 5, rtol=1e-3)
    # a different support set gives a different implied prior, unlike a learned one
    x2 = torch.linspace(-1, 1, 20, dtype=F64).unsqueeze(-1)
    other = maml_implied_prior(features(x2), init, 0.2, 3, 0.1)
    assert not torch.allclose(other.covariance, maml_implied_prior(features(x), init, 0.2, 3, 0.1).covariance, rtol=0.1)


def test_implied_prior_errors():
    with pytest.raises(ValueError, match="empty"):
        maml_implied_prior(torch.zeros(0, 2), torch.zeros(2), 0.1, 1, 0.1)
    with pytest.raises(ValueError, match="init"):
        maml_implied_prior(torch.zeros(3, 2), torch.zeros(3), 0.1, 1, 0.1)
    with pytest.raises(ValueError, match="inner_lr"):
        gradient_descent_linear(torch.ones(3, 2), torch.ones(3), torch.zeros(2), -0.1, 1)


# -- calibration ------------------------------------------------------------------------------
def test_calibration_metrics_on_known_distributions():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200_000, generator=g, dtype=F64)
    zeros, ones = torch.zeros_like(y), torch.ones_like(y)
    cover = calibration(zeros, ones, y)
    for level, got in cover.items():
        assert abs(got - level) < 0.005
    assert interval_coverage(zeros, 4 * ones, y, 0.9) > 0.99   # too wide: under-confident
    assert interval_coverage(zeros, 0.25 * ones, y, 0.9) < 0.65  # too narrow: over-confident
    nll = gaussian_nll(zeros, ones, y)
    assert abs(nll.item() - 0.5 * (math.log(2 * math.pi) + 1)) < 0.01
    assert torch.allclose(gaussian_nll(zeros[:5], ones[:5], y[:5], reduction="none"),
                          -torch.distributions.Normal(0.0, 1.0).log_prob(y[:5]))
    with pytest.raises(ValueError, match="level"):
        interval_coverage(zeros, ones, y, 1.5)
    with pytest.raises(ValueError, match="var must be positive"):
        gaussian_nll(zeros, zeros, y)
    with pytest.raises(ValueError, match="same shape"):
        gaussian_nll(zeros[:3], ones, y)


def test_predictive_calibration_needs_a_distribution():
    from mlbook.learners import MAML
    from mlbook.models import MLP

    with pytest.raises(ValueError, match="predict_distribution"):
        predictive_calibration(MAML(MLP(), loss="mse"), None, SinusoidFamily())


def test_linear_gaussian_family_is_seeded_and_validates():
    family = LinearGaussianFamily(PolynomialFeatures(1), [0.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
    a = family.sample(4, torch.Generator().manual_seed(3))
    b = family.sample(4, torch.Generator().manual_seed(3))
    assert torch.equal(a.support_y, b.support_y) and a.support_x.shape == (4, 10, 1)
    with pytest.raises(ValueError, match="prior_mean"):
        LinearGaussianFamily(PolynomialFeatures(2), [0.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])


def test_variable_shots_family_is_seeded_and_keeps_a_prefix():
    from mlbook.bayes import VariableShotsFamily

    family = VariableShotsFamily(SinusoidFamily(shots=10, queries=5), min_shots=2)
    sizes = set()
    for seed in range(30):
        a = family.sample(3, torch.Generator().manual_seed(seed))
        b = family.sample(3, torch.Generator().manual_seed(seed))
        assert torch.equal(a.support_x, b.support_x) and a.query_x.shape == (3, 5, 1)
        sizes.add(a.support_x.shape[1])
    assert min(sizes) >= 2 and max(sizes) <= 10 and len(sizes) > 4
    with pytest.raises(ValueError, match="min_shots"):
        VariableShotsFamily(SinusoidFamily(shots=3), min_shots=4)


def test_predictive_calibration_loop_fallback_matches_batched_path():
    class NotVmappable(BayesianLinearRegression):
        def adapt(self, state, support_x, support_y):
            if float(support_y.abs().max()) < 0:  # data-dependent Python: vmap cannot trace it
                raise AssertionError
            return super().adapt(state, support_x, support_y)

    features = FourierFeatures(10, seed=0)
    family = SinusoidFamily(shots=4, queries=6, noise=0.1)
    plain = BayesianLinearRegression(features)
    looped = NotVmappable(features)
    state = plain.init(0)
    a = predictive_calibration(plain, state, family, episodes=30, batch_size=7)
    b = predictive_calibration(looped, state, family, episodes=30, batch_size=7)
    assert torch.allclose(a.per_task_nll, b.per_task_nll, atol=1e-5)
    assert a.coverage == pytest.approx(b.coverage)
