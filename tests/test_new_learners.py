"""Tests specific to Meta-SGD, the Conditional Neural Process, the black-box learner and compare()."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlbook.compare import Comparison, compare, graph_memory
from mlbook.learners import MAML, BlackBox, CNP, MetaSGD
from mlbook.metrics import gaussian_nll
from mlbook.models import MLP
from mlbook.tasks import ImageClassFamily, SinusoidFamily
from mlbook.train import evaluate, meta_train

from test_learner_contract import IMAGES


def _sin_episode(batch=4, shots=5, queries=6, seed=0):
    return SinusoidFamily(shots=shots, queries=queries).sample(batch, torch.Generator().manual_seed(seed))


# -- Meta-SGD -------------------------------------------------------------------------------
def test_metasgd_adapt_is_phi_minus_alpha_times_gradient():
    model = MLP(hidden=(8, 8))
    learner = MetaSGD(model, inner_lr=0.05, loss="mse")
    state = learner.init(0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    state["inner_lr"] = {k: (0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_()
                         for k, v in state["inner_lr"].items()}
    ep = _sin_episode()
    x, y = ep.support_x[0].double(), ep.support_y[0].double()
    phi = state["params"]
    loss = F.mse_loss(functional_call(model, phi, (x,)), y)
    grads = torch.autograd.grad(loss, list(phi.values()))
    expected = {k: p - state["inner_lr"][k] * gk for (k, p), gk in zip(phi.items(), grads)}
    adapted = learner.adapt(state, x, y)
    for k in phi:
        torch.testing.assert_close(adapted[k], expected[k])


def test_metasgd_with_constant_rates_equals_maml():
    model = MLP(hidden=(16, 16))
    metasgd = MetaSGD(model, inner_lr=0.02, loss="mse", steps=2)
    maml = MAML(model, inner_lr=0.02, loss="mse", steps=2)
    ep = _sin_episode()
    a = metasgd.meta_loss(metasgd.init(3), ep)
    b = maml.meta_loss(maml.init(3), ep)
    torch.testing.assert_close(a, b)


def test_metasgd_rate_gradient_matches_finite_differences():
    model = MLP(hidden=(4,))
    learner = MetaSGD(model, inner_lr=0.05, loss="mse", strategy="loop")
    state = learner.init(0, dtype=torch.float64)
    ep = _sin_episode(batch=2)
    ep = type(ep)(*(t.double() for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)))
    rate = state["inner_lr"]["head.weight"]
    analytic = torch.autograd.grad(learner.meta_loss(state, ep), rate)[0]
    eps = 1e-6
    numeric = torch.zeros_like(rate)
    with torch.no_grad():
        for idx in range(rate.numel()):
            flat = rate.view(-1)
            old = flat[idx].item()
            flat[idx] = old + eps
            up = learner.meta_loss(state, ep)
            flat[idx] = old - eps
            down = learner.meta_loss(state, ep)
            flat[idx] = old
            numeric.view(-1)[idx] = (up - down) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_metasgd_learns_rates_and_beats_maml_at_equal_budget():
    family = SinusoidFamily(shots=10, queries=10)
    model = MLP(hidden=(32, 32))
    metasgd, maml = MetaSGD(model, inner_lr=0.01, loss="mse"), MAML(model, inner_lr=0.01, loss="mse")
    s1 = meta_train(metasgd, family, 150, 16, 3e-3, seed=0).state
    s2 = meta_train(maml, family, 150, 16, 3e-3, seed=0).state
    rates = torch.cat([r.detach().flatten() for r in s1["inner_lr"].values()])
    assert rates.std() > 1e-3, "the per-parameter rates did not move from their initial value"
    assert s1["inner_lr"]["head.weight"].shape == s1["params"]["head.weight"].shape
    mse_sgd = evaluate(metasgd, s1, family, episodes=200).mean
    mse_maml = evaluate(maml, s2, family, episodes=200).mean
    assert mse_sgd < mse_maml, (mse_sgd, mse_maml)


def test_metasgd_rejects_scalar_rates():
    learner = MetaSGD(MLP(), loss="mse")
    state = learner.init(0)
    state["inner_lr"] = torch.tensor([0.01])
    ep = _sin_episode()
    with pytest.raises(ValueError, match="inner_lr"):
        learner.adapt(state, ep.support_x[0], ep.support_y[0])
    with pytest.raises(ValueError, match="inner_lr"):
        MetaSGD(MLP(), inner_lr=-1.0)


# -- CNP ------------------------------------------------------------------------------------
def test_cnp_is_invariant_to_the_order_of_the_context():
    cnp = CNP(hidden=16, representation=8)
    state = cnp.init(0)
    ep = _sin_episode()
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    perm = torch.randperm(sx.shape[0], generator=torch.Generator().manual_seed(0))
    a = cnp.predict_distribution(cnp.adapt(state, sx, sy), qx)
    b = cnp.predict_distribution(cnp.adapt(state, sx[perm], sy[perm]), qx)
    torch.testing.assert_close(a, b)


def test_cnp_classifier_relabels_with_the_labels():
    cnp = CNP(x_dim=5, ways=3, hidden=16, representation=8)
    state = cnp.init(0)
    g = torch.Generator().manual_seed(0)
    sx, sy, qx = torch.randn(9, 5, generator=g), torch.arange(3).repeat(3), torch.randn(4, 5, generator=g)
    perm = torch.tensor([2, 0, 1])
    a = cnp.predict(cnp.adapt(state, sx, sy), qx)
    b = cnp.predict(cnp.adapt(state, sx, perm[sy]), qx)
    torch.testing.assert_close(b[:, perm], a)


def test_cnp_distribution_mean_variance_and_nll():
    cnp = CNP(hidden=16, representation=8, min_std=0.1)
    state = cnp.init(1)
    ep = _sin_episode(batch=3)
    nlls = []
    for i in range(3):
        task = cnp.adapt(state, ep.support_x[i], ep.support_y[i])
        mean, var = cnp.predict_distribution(task, ep.query_x[i])
        assert mean.shape == var.shape == ep.query_y[i].shape
        assert (var >= 0.1 ** 2 - 1e-7).all()
        torch.testing.assert_close(mean, cnp.predict(task, ep.query_x[i]))
        manual = 0.5 * (torch.log(2 * math.pi * var) + (ep.query_y[i] - mean) ** 2 / var).mean()
        torch.testing.assert_close(gaussian_nll(mean, var, ep.query_y[i]), manual)
        nlls.append(manual)
    torch.testing.assert_close(cnp.meta_loss(state, ep), torch.stack(nlls).mean())
    torch.testing.assert_close(cnp.evaluate_batch(state, ep)["nll"], torch.stack(nlls).detach())


def test_cnp_uncertainty_shrinks_with_more_context_after_training():
    family = SinusoidFamily(shots=10, queries=10)
    cnp = CNP(hidden=48, representation=48)
    state = meta_train(cnp, family, 800, 16, 3e-3, seed=0).state
    ep = family.sample(32, torch.Generator().manual_seed(5))
    def mean_var(k):
        return torch.stack([cnp.predict_distribution(cnp.adapt(state, ep.support_x[i, :k], ep.support_y[i, :k]),
                                                     ep.query_x[i])[1].mean() for i in range(32)]).mean()
    assert mean_var(10) < 0.9 * mean_var(1), (mean_var(10), mean_var(1))


def test_cnp_bad_input():
    with pytest.raises(ValueError, match="ways"):
        CNP(ways=1)
    with pytest.raises(ValueError, match="image_size"):
        CNP(image_size=28)
    with pytest.raises(ValueError, match="min_std"):
        CNP(min_std=1.5)
    cnp = CNP(x_dim=2, ways=3, hidden=8, representation=8)
    state = cnp.init(0)
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="support_y"):
        cnp.adapt(state, x, torch.tensor([0, 1, 2, 0, 1, 3]))
    with pytest.raises(ValueError, match="support_y"):
        cnp.adapt(state, x, torch.zeros(6))
    with pytest.raises(ValueError, match="support_x"):
        cnp.adapt(state, torch.randn(6, 3), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="regression"):
        cnp.predict_distribution(cnp.adapt(state, x, torch.zeros(6, dtype=torch.long)), x)


# -- BlackBox -------------------------------------------------------------------------------
def test_blackbox_ignores_context_order_and_other_queries():
    box = BlackBox(width=16, heads=2)
    state = box.init(0)
    ep = _sin_episode()
    sx, sy, qx = ep.support_x[0], ep.support_y[0], ep.query_x[0]
    perm = torch.randperm(sx.shape[0], generator=torch.Generator().manual_seed(0))
    full = box.predict(box.adapt(state, sx, sy), qx)
    torch.testing.assert_close(box.predict(box.adapt(state, sx[perm], sy[perm]), qx), full)
    torch.testing.assert_close(box.predict(box.adapt(state, sx, sy), qx[:2]), full[:2])


def test_blackbox_uses_the_context():
    box = BlackBox(width=16, heads=2)
    state = box.init(0)
    ep = _sin_episode()
    a = box.predict(box.adapt(state, ep.support_x[0], ep.support_y[0]), ep.query_x[0])
    b = box.predict(box.adapt(state, ep.support_x[0], ep.support_y[0] + 1.0), ep.query_x[0])
    assert not torch.allclose(a, b)


def test_blackbox_learns_in_context_regression():
    family = SinusoidFamily(shots=10, queries=10)
    box = BlackBox(width=32, heads=4)
    state = box.init(0)
    before = evaluate(box, state, family, episodes=200).mean
    state = meta_train(box, family, 200, 16, 3e-3, seed=0, state=state).state
    after = evaluate(box, state, family, episodes=200).mean
    assert after < 0.5 * before, (before, after)


def test_blackbox_bad_input():
    with pytest.raises(ValueError, match="heads"):
        BlackBox(width=30, heads=4)
    with pytest.raises(ValueError, match="layers"):
        BlackBox(layers=0)
    box = BlackBox(ways=3, x_dim=4, width=16, heads=2)
    state = box.init(0)
    with pytest.raises(ValueError, match="support_y"):
        box.adapt(state, torch.randn(3, 4), torch.tensor([0, 1, 5]))
    task = box.adapt(state, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="x must have shape"):
        box.predict(task, torch.randn(2, 5))


# -- compare --------------------------------------------------------------------------------
def test_compare_builds_one_table():
    family = SinusoidFamily(shots=5, queries=5)
    learners = {"MAML": MAML(MLP(hidden=(16, 16)), inner_lr=0.01, loss="mse"),
                "CNP": CNP(hidden=16, representation=16)}
    table = compare(learners, family, steps={"MAML": 5, "CNP": 10}, meta_batch_size=4,
                    episodes=20, timing_tasks=3)
    assert isinstance(table, Comparison) and [r.name for r in table.rows] == ["MAML", "CNP"]
    for row in table.rows:
        assert row.metric == "loss" and row.mean > 0 and row.ci95 > 0
        assert row.adapt_ms > 0 and row.graph_mb > 0 and row.parameters > 0
        assert row.peak_mb is None  # CPU
    assert table["CNP"].kind == "model-based" and len(table["CNP"].losses) == 10
    text = table.to_markdown()
    assert text.count("\n") == 3 and "query MSE" in text and "MAML" in text
    # A given state is measured, not retrained; same evaluation episodes give the same score.
    again = compare({"CNP": learners["CNP"]}, family, steps=1, episodes=20, timing_tasks=3,
                    states={"CNP": table["CNP"].state})
    assert again["CNP"].losses == [] and again["CNP"].mean == pytest.approx(table["CNP"].mean)


def test_compare_classification_reports_accuracy():
    family = ImageClassFamily(IMAGES[:16], ways=3, shots=1, queries=2)
    table = compare([CNP(ways=3, image_size=16, channels=4, hidden=8, representation=8)], family,
                    steps=2, meta_batch_size=2, episodes=10, timing_tasks=2)
    row = table["CNP"]
    assert row.metric == "accuracy" and 0 <= row.mean <= 1
    assert "accuracy" in str(table)


def test_graph_memory_grows_with_inner_steps():
    ep = _sin_episode(batch=4)
    sizes = []
    for steps in (1, 4):
        learner = MAML(MLP(hidden=(16, 16)), inner_lr=0.01, loss="mse", steps=steps, strategy="loop")
        sizes.append(graph_memory(learner.meta_loss(learner.init(0), ep)))
    assert sizes[1] > 2.5 * sizes[0], sizes
    with pytest.raises(ValueError, match="loss"):
        graph_memory(torch.tensor(1.0))


def test_compare_bad_input():
    family = SinusoidFamily()
    learner = CNP(hidden=8, representation=8)
    with pytest.raises(ValueError, match="learners"):
        compare([], family, steps=1)
    with pytest.raises(ValueError, match="distinct"):
        compare([learner, CNP()], family, steps=1)
    with pytest.raises(ValueError, match="steps"):
        compare({"a": learner, "b": CNP()}, family, steps={"a": 1})
    with pytest.raises(ValueError, match="interface"):
        compare({"x": object()}, family, steps=1)
    with pytest.raises(ValueError, match="states"):
        compare({"a": learner}, family, steps=1, states={"b": {}})
