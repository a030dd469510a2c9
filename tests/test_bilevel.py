"""The bi-level building blocks of Chapter 3: errors at the boundary, CG, HVPs, surrogates, training."""
import math
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mlbook
from mlbook import bilevel, learners, taskmap
from mlbook.bilevel import (call, choose_strategy, conjugate_gradient, constant_gradient, differentiable_gradient, hvp, inner_loop, map_tasks,
                            proximal_inner_loop, run_tasks, task_loss_fn, with_gradient)
from mlbook.learners import ANIL, FOMAML, IMAML, MAML, Reptile
from mlbook.models import MLP, Conv4, init_params
from mlbook.tasks import Episode, SinusoidFamily

DT = torch.float64



def _loss_fn():
    return task_loss_fn(MLP(hidden=(4,)), F.mse_loss)


def _xy(n=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_inner_loop_rejects_bad_steps(steps):
    x, y = _xy()
    with pytest.raises(ValueError, match="steps"):
        inner_loop(_loss_fn(), init_params(MLP(hidden=(4,)), 0), x, y, steps, 0.1)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), "fast", [0.1, -0.1], [0.1]])
def test_inner_loop_rejects_bad_learning_rates(lr):
    x, y = _xy()
    with pytest.raises(ValueError, match="lr"):
        inner_loop(_loss_fn(), init_params(MLP(hidden=(4,)), 0), x, y, 2, lr)


@pytest.mark.parametrize("cls", [MAML, FOMAML, ANIL, Reptile, IMAML])
@pytest.mark.parametrize("kwargs,argument", [
    (dict(steps=0), "steps"), (dict(inner_lr=0.0), "inner_lr"), (dict(inner_lr=-1.0), "inner_lr"),
    (dict(steps=2, inner_lr=[0.1, 0.2, 0.3]), "inner_lr"), (dict(steps=2, inner_lr=[0.1, -0.2]), "inner_lr"),
])
def test_learners_name_the_bad_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(MLP(), loss="mse", **kwargs)


def test_imaml_rejects_bad_lam_and_cg_steps():
    with pytest.raises(ValueError, match="lam"):
        IMAML(MLP(), lam=0.0)
    with pytest.raises(ValueError, match="cg_steps"):
        IMAML(MLP(), cg_steps=0)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        IMAML(MLP(), learn_inner_lr=True)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        Reptile(MLP(), learn_inner_lr=True)


def test_anil_rejects_a_prefix_that_matches_nothing():
    with pytest.raises(ValueError, match="head_prefix"):
        ANIL(MLP(), head_prefix="classifier.")


def test_empty_support_set_is_rejected_by_every_learner():
    empty_x, empty_y = torch.zeros(0, 1), torch.zeros(0, 1)
    for cls in (MAML, FOMAML, ANIL, Reptile, IMAML):
        learner = cls(MLP(), loss="mse")
        with pytest.raises(ValueError, match="support"):
            learner.adapt(learner.init(0), empty_x, empty_y)


def test_params_that_do_not_fit_the_model_are_rejected():
    for cls in (MAML, ANIL, Reptile, IMAML):
        learner = cls(MLP(), loss="mse")
        state = learner.init(0)
        x, y = _xy()
        missing = dict(state, params={k: v for k, v in state["params"].items() if k != "head.bias"})
        with pytest.raises(ValueError, match="params"):
            learner.adapt(missing, x, y)
        wrong = dict(state, params=init_params(MLP(hidden=(8, 8)), 0))
        with pytest.raises(ValueError, match="params"):
            learner.adapt(wrong, x, y)
        episode = SinusoidFamily().sample(2, torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="params"):
            learner.meta_loss(wrong, episode)


def test_map_tasks_rejects_bad_strategy_and_chunk_size():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="strategy"):
        map_tasks(lambda t: t.sum(), x, strategy="parallel")
    with pytest.raises(ValueError, match="chunk_size"):
        map_tasks(lambda t: t.sum(), x, strategy="vmap", chunk_size=0)


def test_auto_strategy_is_vmap_for_small_models_and_tasks_side_by_side_for_convolutions_on_cpu(monkeypatch):
    assert choose_strategy(torch.zeros(4, 10, 1)) == "vmap"
    monkeypatch.setattr(taskmap, "_worker_count", lambda: 1)
    assert choose_strategy(torch.zeros(4, 5, 1, 28, 28)) == "loop"
    monkeypatch.setattr(taskmap, "_worker_count", lambda: 2)
    assert choose_strategy(torch.zeros(4, 5, 1, 28, 28)) == "threads"


@pytest.fixture
def two_workers(monkeypatch):
    """Two task threads even where torch runs on one thread (as in this suite)."""
    monkeypatch.setattr(taskmap, "_worker_count", lambda: 2)


def test_run_tasks_uses_worker_threads_and_keeps_task_order(two_workers):
    def one_task(i):
        time.sleep(0.02 * (i % 2 == 0))  # even tasks finish last
        return i, threading.current_thread().name, torch.get_num_threads()

    callers_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = run_tasks(one_task, 6, "threads")
        assert torch.get_num_threads() == 2, "the workers' setting must not leak to the caller"
    finally:
        torch.set_num_threads(callers_threads)
    assert [i for i, _, _ in results] == list(range(6))
    assert {name for _, name, _ in results} <= {t.name for t in threading.enumerate()}
    assert all(name.startswith("mlbook-task") for _, name, _ in results)
    assert len({name for _, name, _ in results}) == 2
    assert all(threads == 1 for _, _, threads in results), "a worker's kernels run on one thread"
    assert [i for i, _, _ in run_tasks(one_task, 3, "loop")] == [0, 1, 2]
    with pytest.raises(ValueError, match="strategy"):
        run_tasks(one_task, 3, "vmap")


def test_task_threads_follow_the_callers_grad_mode_and_transforms(two_workers):
    x = torch.ones(4, 3, requires_grad=True)
    with torch.no_grad():
        assert not any(run_tasks(lambda i: (x[i] * 2).requires_grad, 4, "threads"))
    assert all(run_tasks(lambda i: (x[i] * 2).requires_grad, 4, "threads"))
    # Under torch.func.grad the tasks stay on the caller's thread, so the transform sees them.
    g = torch.func.grad(lambda v: map_tasks(lambda row: (row ** 2).sum(), v, strategy="threads").sum())(
        torch.arange(6.0).reshape(3, 2))
    torch.testing.assert_close(g, 2 * torch.arange(6.0).reshape(3, 2))


def test_call_gives_each_thread_its_own_module(two_workers):
    model = Conv4(3, channels=4, image_size=16)
    x = torch.rand(8, 2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    params = [init_params(model, seed) for seed in range(8)]
    want = [call(model, params[i], x[i]) for i in range(8)]
    got = run_tasks(lambda i: call(model, params[i], x[i]), 8, "threads")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_errors_in_a_task_thread_reach_the_caller(two_workers):
    learner = MAML(MLP(hidden=(8,)), inner_lr=0.1, loss="mse", strategy="threads")
    state = learner.init(0)
    x = torch.zeros(2, 0, 1)
    with pytest.raises(ValueError, match="support set"):
        map_tasks(lambda sx: sum(v.sum() for v in learner.adapt(state, sx, sx).values()), x, strategy="threads")


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=DT)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=DT)
    b = {"u": torch.randn(4, generator=g, dtype=DT), "v": torch.randn(2, generator=g, dtype=DT)}

    def matvec(d):
        out = a @ torch.cat([d["u"], d["v"]])
        return {"u": out[:4], "v": out[4:]}

    x = conjugate_gradient(matvec, b, steps=6)
    want = torch.linalg.solve(a, torch.cat([b["u"], b["v"]]))
    assert torch.allclose(torch.cat([x["u"], x["v"]]), want, atol=1e-8)
    few = conjugate_gradient(matvec, b, steps=1)
    assert not torch.allclose(torch.cat([few["u"], few["v"]]), want, atol=1e-3)


def test_conjugate_gradient_stays_finite_once_converged():
    x = conjugate_gradient(lambda d: {"u": 2 * d["u"]}, {"u": torch.ones(3, dtype=DT)}, steps=5)
    assert torch.allclose(x["u"], torch.full((3,), 0.5, dtype=DT))


def test_hvp_matches_the_explicit_hessian():
    model = MLP(hidden=(3,))
    loss_fn = task_loss_fn(model, F.mse_loss)
    params = {k: v.detach().to(DT) for k, v in init_params(model, 0).items()}
    x, y = (t.to(DT) for t in _xy())
    names = list(params)
    shapes = [params[k].shape for k in names]
    flat = torch.cat([params[k].flatten() for k in names])

    def f(vec):
        parts = vec.split([s.numel() for s in shapes])
        return loss_fn({k: p.view(s) for k, p, s in zip(names, parts, shapes)}, x, y)

    hessian = torch.autograd.functional.hessian(f, flat)
    v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    vd = {k: p.view(s) for k, p, s in zip(names, v.split([s.numel() for s in shapes]), shapes)}
    got = hvp(loss_fn, params, x, y, vd)
    assert torch.allclose(torch.cat([got[k].flatten() for k in names]), hessian @ v, atol=1e-10)


def test_proximal_inner_loop_approaches_the_proximal_minimiser():
    # L(theta) = 0.5 * ||theta - target||^2 has proximal minimiser (target + lam phi) / (1 + lam).
    target = torch.tensor([1.0, -2.0], dtype=DT)
    loss_fn = lambda p, x, y: 0.5 * ((p["w"] - target) ** 2).sum()  # noqa: E731
    phi = {"w": torch.zeros(2, dtype=DT)}
    theta = proximal_inner_loop(loss_fn, phi, torch.zeros(1), torch.zeros(1), 200, 0.3, lam=2.0)
    assert torch.allclose(theta["w"], target / 3.0, atol=1e-10)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_constant_gradient_is_torch_func_grad_without_a_graph(norm):
    # First-order inner steps take their gradient from plain autograd outside torch.func
    # transforms and from torch.func.grad inside them: both must be the same numbers, zeros for
    # a parameter the loss ignores, and nothing the outer level could differentiate.
    model = Conv4(3, channels=8, norm=norm)
    params = init_params(model, 0, dtype=DT)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 1, 28, 28, generator=g, dtype=DT), torch.randint(0, 3, (4, 3), generator=g)
    loss_fn = task_loss_fn(model, F.cross_entropy)

    def loss_ignoring_head_bias(p, xs, ys):
        return loss_fn({**p, "head.bias": p["head.bias"].detach() * 0}, xs, ys)

    expected = [torch.func.grad(loss_ignoring_head_bias)(params, x[i], y[i]) for i in range(4)]
    plain = [constant_gradient(lambda p: loss_ignoring_head_bias(p, x[i], y[i]), params) for i in range(4)]
    batched = torch.func.vmap(lambda xs, ys: constant_gradient(lambda p: loss_ignoring_head_bias(p, xs, ys),
                                                                params))(x, y)
    for i in range(4):
        for name in params:
            assert not plain[i][name].requires_grad
            torch.testing.assert_close(plain[i][name], expected[i][name], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(batched[name][i], expected[i][name], rtol=1e-10, atol=1e-12)
        assert plain[i]["head.bias"].abs().max() == 0 and plain[i]["features.0.weight"].abs().max() > 0


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_differentiable_gradient_is_torch_func_grad_to_second_order(norm):
    # MAML's inner gradient comes from autograd (create_graph) outside torch.func transforms and
    # from torch.func.grad inside them: the gradient and its own derivative with respect to the
    # meta-parameters must be the same numbers, with zeros for an ignored parameter, and a
    # parameter the outer level does not differentiate (requires_grad off) still gets its gradient.
    model = Conv4(3, channels=8, norm=norm)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 1, 28, 28, generator=g, dtype=DT), torch.randint(0, 3, (3,), generator=g)
    loss_fn = task_loss_fn(model, F.cross_entropy)
    direction = {k: torch.randn(v.shape, generator=g, dtype=DT) for k, v in init_params(model, 0, dtype=DT).items()}

    def loss_ignoring_head_bias(p):
        return loss_fn({**p, "head.bias": p["head.bias"].detach() * 0}, x, y)

    def outer(gradient_of, p):
        inner = gradient_of(loss_ignoring_head_bias, p)
        return inner, sum((inner[k] * direction[k]).sum() for k in inner)

    results = []
    for gradient_of in (lambda f, p: torch.func.grad(f)(p), differentiable_gradient):
        params = init_params(model, 0, dtype=DT)
        params = {k: v.requires_grad_(k != "features.0.bias") for k, v in params.items()}
        inner, projection = outer(gradient_of, params)
        learned = [k for k in params if params[k].requires_grad]
        second = torch.autograd.grad(projection, [params[k] for k in learned], materialize_grads=True)
        results.append((inner, dict(zip(learned, second))))
    (want_inner, want_second), (got_inner, got_second) = results
    for name in want_inner:
        torch.testing.assert_close(got_inner[name], want_inner[name], rtol=1e-10, atol=1e-12)
    for name in want_second:
        torch.testing.assert_close(got_second[name], want_second[name], rtol=1e-10, atol=1e-12)
    assert got_inner["head.bias"].abs().max() == 0 and got_inner["features.0.bias"].abs().max() > 0
    assert got_inner["features.0.weight"].requires_grad
    # Inside vmap it is torch.func.grad itself.
    params = init_params(model, 0, dtype=DT)
    batched = torch.func.vmap(lambda xs: differentiable_gradient(
        lambda p: loss_fn(p, xs, y), params))(x[None].expand(2, -1, -1, -1, -1))
    plain = torch.func.grad(lambda p: loss_fn(p, x, y))(params)
    for name in params:
        torch.testing.assert_close(batched[name][1], plain[name], rtol=1e-10, atol=1e-12)


def test_with_gradient_keeps_the_value_and_sets_the_gradient():
    p = {"w": torch.tensor([1.0, 2.0], requires_grad=True)}
    out = with_gradient(torch.tensor(3.5), p, {"w": torch.tensor([0.25, -1.0])})
    assert out.item() == 3.5
    out.backward()
    assert torch.equal(p["w"].grad, torch.tensor([0.25, -1.0]))


def test_registry_exposes_every_bilevel_learner():
    for name in ("MAML", "FOMAML", "ANIL", "Reptile", "IMAML"):
        assert getattr(learners, name).__name__ == name


def test_same_seed_gives_the_same_losses():
    def run():
        learner = Reptile(MLP(hidden=(16,)), inner_lr=0.02, steps=3, loss="mse")
        return mlbook.meta_train(learner, SinusoidFamily(), steps=5, meta_batch_size=4, seed=3).losses

    assert run() == run()


def test_tasks_side_by_side_give_the_same_losses_on_every_run(two_workers):
    images = (torch.rand(12, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    family = mlbook.ImageClassFamily(images, ways=3, shots=1, queries=2)

    def run(strategy):
        learner = MAML(Conv4(3, channels=8, image_size=16), inner_lr=0.4, strategy=strategy)
        result = mlbook.meta_train(learner, family, steps=4, meta_batch_size=6, seed=3)
        return result.losses, mlbook.evaluate(learner, result.state, family, episodes=6, seed=1).mean

    first, second = run("threads"), run("threads")
    assert first == second  # task order, not thread timing, fixes every sum
    losses, accuracy = run("loop")
    assert losses == pytest.approx(first[0], rel=1e-5) and accuracy == pytest.approx(first[1], abs=1e-6)


@pytest.mark.parametrize("cls,kwargs", [
    (MAML, dict(inner_lr=0.01, steps=1)), (FOMAML, dict(inner_lr=0.01, steps=1)),
    (ANIL, dict(inner_lr=0.01, steps=1)), (Reptile, dict(inner_lr=0.01, steps=5)),
    # iMAML with its reference run's recipe (tanh, lam 10, steps of 1/(lam + 50)), five inner
    # steps instead of ten: a ReLU network makes H piecewise and indefinite, and there iMAML
    # barely learns (the record's note).
    (IMAML, dict(inner_lr=1 / 60, steps=5, lam=10.0, cg_steps=5, activation="tanh")),
    (MAML, dict(inner_lr=[0.01, 0.005], steps=2, learn_inner_lr=True)),
])
def test_each_learner_improves_on_sinusoids_through_the_one_trainer(cls, kwargs):
    family = SinusoidFamily(shots=10, queries=10)
    kwargs = dict(kwargs)
    model = MLP(hidden=(32, 32), activation=kwargs.pop("activation", "relu"))
    learner = cls(model, loss="mse", **kwargs)
    state = learner.init(0)
    before = mlbook.evaluate(learner, state, family, episodes=100, seed=7).mean
    result = mlbook.meta_train(learner, family, steps=150, meta_batch_size=10, outer_lr=3e-3, seed=0)
    after = mlbook.evaluate(learner, result.state, family, episodes=100, seed=7).mean
    assert after < 0.9 * before, (before, after)
    if kwargs.get("learn_inner_lr"):
        assert not torch.allclose(result.state["inner_lr"].detach(), torch.tensor([0.01, 0.005]))
