"""Every meta-gradient of the MAML family against an independent float64 computation (Chapter 3).

References are written here from the definitions, with an explicit Python loop over tasks and
``torch.autograd.grad`` (never torch.func), so a bug in the library cannot hide in both.
"""
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mlbook.bilevel
import mlbook.taskmap
from mlbook.learners import ANIL, FOMAML, IMAML, MAML, Reptile
from mlbook.models import MLP, Conv4, init_params
from mlbook.tasks import Episode, ImageClassFamily, SinusoidFamily

DT = torch.float64



def _sinusoid_episode(batch=3, shots=5, queries=6, seed=0):
    ep = SinusoidFamily(shots=shots, queries=queries).sample(batch, torch.Generator().manual_seed(seed))
    return Episode(*(t.to(DT) for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)))


def _mse(model, params, x, y):
    return F.mse_loss(functional_call(model, params, (x,)), y)


def _unrolled_adapt(model, params, x, y, lrs, keys=None, create_graph=True, loss=_mse):
    """The inner loop written out: theta <- theta - lr_t * grad L_inner(theta)."""
    keys = list(params) if keys is None else keys
    for lr in lrs:
        g = torch.autograd.grad(loss(model, params, x, y), [params[k] for k in keys], create_graph=create_graph)
        params = {**params, **{k: params[k] - lr * gk for k, gk in zip(keys, g)}}
    return params


def _reference_maml_grad(model, phi, episode, lrs, keys=None, first_order=False, loss=_mse):
    total = 0.0
    for i in range(episode.batch_size):
        theta = _unrolled_adapt(model, phi, episode.support_x[i], episode.support_y[i], lrs, keys,
                                create_graph=not first_order, loss=loss)
        if first_order:
            # FOMAML's definition: the query gradient at theta_i, applied to phi unchanged.
            theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
            g = torch.autograd.grad(loss(model, theta, episode.query_x[i], episode.query_y[i]), list(theta.values()))
            total = total + torch.cat([x.flatten() for x in g])
        else:
            total = total + loss(model, theta, episode.query_x[i], episode.query_y[i])
    if first_order:
        return total / episode.batch_size
    g = torch.autograd.grad(total / episode.batch_size, list(phi.values()))
    return torch.cat([x.flatten() for x in g])


def _library_grad(learner, state, episode):
    """The meta-gradient by autograd through ``meta_loss``; the trainer's ``meta_backward``
    (by hand on the closed form) must give the same gradient and loss."""
    grads, losses = [], []
    for route in ("meta_loss", "meta_backward"):
        for p in learner.parameters(state):
            p.grad = None
        if route == "meta_loss":
            loss = learner.meta_loss(state, episode)
            loss.backward()
        else:
            loss, _ = learner.meta_backward(state, episode)
        losses.append(loss.detach())
        grads.append(torch.cat([state["params"][k].grad.flatten() for k in state["params"]]))
    assert _rel(grads[1], grads[0]) < 1e-12 and torch.allclose(losses[1], losses[0], rtol=1e-12, atol=0)
    return grads[0]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("strategy", ["vmap", "loop", "closed-form"])
@pytest.mark.parametrize("lrs", [(0.05,), (0.05, 0.02, 0.03)])
def test_maml_matches_unrolled_reference(strategy, lrs):
    model = MLP(hidden=(8, 8))
    learner = MAML(model, inner_lr=list(lrs), steps=len(lrs), loss="mse", strategy=strategy)
    state = learner.init(0, dtype=DT)
    episode = _sinusoid_episode()
    got = _library_grad(learner, state, episode)
    want = _reference_maml_grad(model, state["params"], episode, lrs)
    assert _rel(got, want) < 1e-10


@pytest.mark.parametrize("strategy", ["vmap", "loop", "closed-form"])
def test_fomaml_matches_first_order_definition_and_differs_from_maml(strategy):
    model = MLP(hidden=(8, 8))
    lrs = (0.05, 0.05)
    learner = FOMAML(model, inner_lr=0.05, steps=2, loss="mse", strategy=strategy)
    state = learner.init(0, dtype=DT)
    episode = _sinusoid_episode()
    got = _library_grad(learner, state, episode)
    assert _rel(got, _reference_maml_grad(model, state["params"], episode, lrs, first_order=True)) < 1e-10
    second = _reference_maml_grad(model, state["params"], episode, lrs)
    assert _rel(got, second) > 1e-3, "first order should drop the second-order terms"


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_reptile_direction_matches_definition(strategy):
    model = MLP(hidden=(8, 8))
    learner = Reptile(model, inner_lr=0.05, steps=3, loss="mse", strategy=strategy)
    state = learner.init(0, dtype=DT)
    episode = _sinusoid_episode()
    got = _library_grad(learner, state, episode)
    phi = state["params"]
    want = 0
    for i in range(episode.batch_size):
        theta = _unrolled_adapt(model, phi, episode.support_x[i], episode.support_y[i], (0.05,) * 3,
                                create_graph=False)
        want = want + torch.cat([(phi[k] - theta[k]).detach().flatten() for k in phi])
    want = want / episode.batch_size
    assert _rel(got, want) < 1e-10
    maml = _reference_maml_grad(model, phi, episode, (0.05,) * 3)
    fomaml = _reference_maml_grad(model, phi, episode, (0.05,) * 3, first_order=True)
    assert _rel(got, maml) > 0.1 and _rel(got, fomaml) > 0.1


def test_reptile_with_one_step_is_joint_training_direction():
    # Reptile with one step: phi - theta = lr * grad L_inner(phi), the "joint training" gradient.
    model = MLP(hidden=(8,))
    learner = Reptile(model, inner_lr=0.1, steps=1, loss="mse", strategy="vmap")
    state = learner.init(1, dtype=DT)
    episode = _sinusoid_episode(seed=1)
    got = _library_grad(learner, state, episode)
    phi = state["params"]
    want = sum(torch.cat([g.flatten() for g in torch.autograd.grad(
        _mse(model, phi, episode.support_x[i], episode.support_y[i]), list(phi.values()))])
        for i in range(episode.batch_size)) * 0.1 / episode.batch_size
    assert _rel(got, want) < 1e-10


@pytest.mark.parametrize("strategy", ["vmap", "loop", "closed-form"])
def test_anil_matches_head_only_reference(strategy):
    model = MLP(hidden=(8, 8))
    learner = ANIL(model, inner_lr=0.05, steps=2, loss="mse", strategy=strategy)
    state = learner.init(0, dtype=DT)
    episode = _sinusoid_episode()
    keys = ["head.weight", "head.bias"]
    got = _library_grad(learner, state, episode)
    assert _rel(got, _reference_maml_grad(model, state["params"], episode, (0.05, 0.05), keys=keys)) < 1e-10
    assert _rel(got, _reference_maml_grad(model, state["params"], episode, (0.05, 0.05))) > 1e-3


@pytest.mark.parametrize("strategy", ["vmap", "closed-form"])
def test_learnable_per_step_lrs_get_the_right_gradient(strategy):
    model = MLP(hidden=(6,))
    learner = MAML(model, inner_lr=[0.05, 0.03], steps=2, loss="mse", learn_inner_lr=True, strategy=strategy)
    state = learner.init(0, dtype=DT)
    episode = _sinusoid_episode()
    learner.meta_loss(state, episode).backward()
    by_autograd = state["inner_lr"].grad.clone()
    state["inner_lr"].grad = None
    learner.meta_backward(state, episode)    # the trainer's route: by hand on the closed form
    assert torch.allclose(state["inner_lr"].grad, by_autograd, rtol=1e-12, atol=0)
    lr = state["inner_lr"].detach().clone().requires_grad_()
    phi = {k: v.detach().clone().requires_grad_() for k, v in state["params"].items()}
    total = 0
    for i in range(episode.batch_size):
        theta = _unrolled_adapt(model, phi, episode.support_x[i], episode.support_y[i], [lr[0], lr[1]])
        total = total + _mse(model, theta, episode.query_x[i], episode.query_y[i])
    (want,) = torch.autograd.grad(total / episode.batch_size, [lr])
    assert torch.allclose(state["inner_lr"].grad, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("strategy", ["vmap", "closed-form"])
@pytest.mark.parametrize("cls", [MAML, ANIL])
def test_meta_gradient_matches_finite_differences(cls, strategy):
    model = MLP(hidden=(4,))
    learner = cls(model, inner_lr=0.1, steps=2, loss="mse", strategy=strategy)
    state = learner.init(3, dtype=DT)
    episode = _sinusoid_episode(batch=2, shots=4, queries=4, seed=3)
    names = list(state["params"])
    shapes = [state["params"][k].shape for k in names]

    def f(flat):
        parts = flat.split([s.numel() for s in shapes])
        params = {k: p.view(s) for k, p, s in zip(names, parts, shapes)}
        return learner.meta_loss({"params": params, "inner_lr": state["inner_lr"]}, episode)

    flat = torch.cat([state["params"][k].detach().flatten() for k in names]).requires_grad_()
    assert torch.autograd.gradcheck(f, (flat,), eps=1e-6, atol=1e-6, rtol=1e-5)


def _quadratic_problem(seed=0, features=3, shots=6, queries=5, batch=2):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(batch, shots, features, generator=g, dtype=DT)
    qx = torch.randn(batch, queries, features, generator=g, dtype=DT)
    w = torch.randn(batch, features, 1, generator=g, dtype=DT)
    return Episode(sx, sx @ w + 0.1, qx, qx @ w - 0.2)


def test_imaml_matches_closed_form_on_a_quadratic_inner_problem():
    # A linear model with squared error: L_inner is quadratic, so the proximal minimiser and its
    # Jacobian have closed forms, theta* = (H + lam I)^-1 (lam phi + c), and autograd through
    # torch.linalg.solve gives the exact meta-gradient.
    features, lam = 3, 2.0
    model = MLP(in_features=features, hidden=())
    learner = IMAML(model, lam=lam, inner_lr=0.05, steps=400, cg_steps=features + 1, loss="mse", strategy="loop")
    state = learner.init(0, dtype=DT)
    episode = _quadratic_problem(features=features)
    got = _library_grad(learner, state, episode)
    phi = torch.cat([state["params"]["head.weight"].detach().flatten(),
                     state["params"]["head.bias"].detach()]).requires_grad_()
    total = 0
    for i in range(episode.batch_size):
        xs = torch.cat([episode.support_x[i], torch.ones(episode.support_x.shape[1], 1, dtype=DT)], 1)
        xq = torch.cat([episode.query_x[i], torch.ones(episode.query_x.shape[1], 1, dtype=DT)], 1)
        n = xs.shape[0]
        hessian = 2 * xs.T @ xs / n                       # of mean((xs t - y)^2)
        linear = 2 * xs.T @ episode.support_y[i] / n
        theta = torch.linalg.solve(hessian + lam * torch.eye(features + 1, dtype=DT), lam * phi[:, None] + linear)
        total = total + ((xq @ theta - episode.query_y[i]) ** 2).mean()
    (want,) = torch.autograd.grad(total / episode.batch_size, [phi])
    assert _rel(got, want) < 1e-8
    maml = MAML(model, inner_lr=0.05, steps=5, loss="mse")
    maml_grad = _library_grad(maml, {"params": {k: v.detach().clone().requires_grad_() for k, v in
                                                state["params"].items()}, "inner_lr": maml.init(0, dtype=DT)["inner_lr"]}, episode)
    assert _rel(maml_grad, want) > 1e-3, "iMAML's proximal problem has another meta-gradient than MAML's"


def test_imaml_vmap_matches_loop():
    model = MLP(hidden=(8,))
    episode = _sinusoid_episode()
    grads = []
    for strategy in ("vmap", "loop"):
        learner = IMAML(model, lam=0.5, inner_lr=0.02, steps=4, cg_steps=3, loss="mse", strategy=strategy)
        grads.append(_library_grad(learner, learner.init(0, dtype=DT), episode))
    assert _rel(grads[0], grads[1]) < 1e-10


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_conv4_vmap_loop_and_threads_match_unrolled_reference_for_each_norm(norm, monkeypatch):
    monkeypatch.setattr(mlbook.taskmap, "_worker_count", lambda: 2)
    model = Conv4(3, channels=8, norm=norm, image_size=16)
    images = torch.rand(6, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ep = ImageClassFamily(images, ways=3, shots=1, queries=2).sample(2, torch.Generator().manual_seed(1))
    ep = Episode(ep.support_x.to(DT), ep.support_y, ep.query_x.to(DT), ep.query_y)
    grads = {}
    for strategy in ("vmap", "loop", "threads"):
        learner = MAML(model, inner_lr=0.3, steps=2, strategy=strategy)
        state = learner.init(0, dtype=DT)
        grads[strategy] = _library_grad(learner, state, ep)

    def ce(model, params, x, y):
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    want = _reference_maml_grad(model, state["params"], ep, (0.3, 0.3), loss=ce)
    assert _rel(grads["vmap"], want) < 1e-9
    assert _rel(grads["loop"], want) < 1e-9
    assert _rel(grads["threads"], want) < 1e-9


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("size", [8, 7])
def test_max_pool_by_gather_has_max_pools_values_and_derivatives(size, layout):
    # Values on a coarse grid tie often (as blank strokes of a glyph do), and an odd size leaves
    # a row and a column out: both are where a different rule would pick another winner.
    from mlbook.models import max_pool_by_gather

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (3, 4, size, size), generator=gen).to(DT)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    pool = torch.nn.MaxPool2d(2)
    _assert_same_pool_derivatives(pool, lambda t: max_pool_by_gather(pool, t), x, gen)
    assert torch.equal(max_pool_by_gather(pool, x.float()), pool(x.float()))


def _assert_same_pool_derivatives(reference, pool, x, gen):
    """``pool`` has the values, input-gradients and double backward of ``reference``, bit for bit."""
    out_grad = torch.randn(*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2, generator=gen, dtype=x.dtype)
    direction = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    weights = torch.randn(out_grad.shape, generator=gen, dtype=x.dtype)
    results = []
    for f in (reference, pool):
        xr = x.clone().requires_grad_(True)
        g = out_grad.clone().requires_grad_(True)
        d = direction.clone().requires_grad_(True)
        y = f(xr)
        (gx,) = torch.autograd.grad(y, xr, g, create_graph=True)
        # Max-pool's double backward: the derivative of its input-gradient along `direction`,
        # with respect to the output gradient (a gather of `direction` at the winners) ...
        (ggy,) = torch.autograd.grad((gx * d).sum(), g, create_graph=True)
        # ... and one order more: that gather's derivative scatters back to the winners.
        (gggd,) = torch.autograd.grad((ggy * weights).sum(), d)
        results.append((y, gx, ggy, gggd))
    for want, got in zip(*results):
        assert torch.equal(want.isnan(), got.isnan())
        assert torch.equal(want.nan_to_num(), got.nan_to_num())


@pytest.fixture
def one_kernel_thread():
    # As in a task thread of the 'threads' strategy: the fused group norm is used only there.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compiled_pool():
    from mlbook import maxpool

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler on this machine to build the max-pool kernel")
    # With a compiler, a kernel that fails to build or disagrees with PyTorch is a failure.
    assert maxpool.native_pool_available(), maxpool.native_pool_status()
    return maxpool


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("height,width", [(8, 8), (9, 17), (16, 16), (28, 28), (15, 30)])
def test_compiled_max_pool_has_max_pools_values_and_derivatives(height, width, layout, relu):
    # Pooling only moves numbers, so in float32 every derivative must be bit-identical. The
    # widths reach each way the kernel walks a row: one group of 4 windows, groups of 8, and a
    # last group that overlaps the one before it; odd sizes leave a row or a column out. With
    # `relu`, the ReLU after the pool is done in the same pass; values in -1..1 reach its kink.
    maxpool = _compiled_pool()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-1, 2, (3, 4, height, width), generator=gen).float()
    x[0, 1, 2, 3] = x[2, 3, height - 1, 0] = float("nan")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    reference = torch.nn.Sequential(torch.nn.MaxPool2d(2), *([torch.nn.ReLU()] if relu else []))
    _assert_same_pool_derivatives(reference, lambda t: maxpool.max_pool_2x2(t, relu=relu), x, gen)


def _conv4_meta_gradient(learner):
    """A function that returns ``learner``'s meta-gradient on one fixed 5-way episode batch."""
    images = torch.rand(12, 4, 28, 28, generator=torch.Generator().manual_seed(0))
    episode = ImageClassFamily(images, ways=5, shots=1, queries=3).sample(2, torch.Generator().manual_seed(0))
    state = learner.init(0)

    def meta_gradient():
        for p in state["params"].values():
            p.grad = None
        learner.meta_backward(state, episode)
        return torch.cat([p.grad.flatten() for p in state["params"].values()])

    return meta_gradient


def test_conv4_maml_uses_the_compiled_pool_and_gets_the_same_meta_gradient(monkeypatch):
    maxpool = _compiled_pool()
    import mlbook.models

    calls = []
    run_pool = maxpool._run_pool
    monkeypatch.setattr(maxpool, "_run_pool", lambda x, relu: calls.append((x.shape[-1], relu)) or run_pool(x, relu))
    # Without a normalisation layer the pool runs on its own (with one, see the fused test below).
    model = Conv4(5, norm="none")
    meta_gradient = _conv4_meta_gradient(MAML(model, inner_lr=0.4, steps=2, strategy="loop"))
    compiled = meta_gradient()
    # Widths 28 and 14 pool in the kernel, with the ReLU that follows; 7 (too narrow for a group
    # of windows) does not.
    assert set(calls) == {(28, True), (14, True)}
    monkeypatch.setattr(mlbook.models, "max_pool_2x2", lambda x, relu: None)
    calls.clear()
    portable = meta_gradient()
    assert not calls
    assert torch.equal(compiled, portable)


def _norm_pool_reference(x, weight, bias, groups, relu):
    normalised = (F.group_norm(x, groups, weight, bias) if groups else
                  F.batch_norm(x, None, None, weight, bias, training=True))
    pooled = F.max_pool2d(normalised, 2)
    return F.relu(pooled) if relu else pooled


def _fused_norm_pool(maxpool, groups):
    if groups:
        return lambda x, w, b, relu: maxpool.group_norm_max_pool_2x2(x, groups, w, b, 1e-5, relu=relu)
    return lambda x, w, b, relu: maxpool.batch_norm_max_pool_2x2(x, w, b, 1e-5, relu=relu)


@pytest.mark.parametrize("groups", [0, 2, 4], ids=["batch", "group2", "group4"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("height,width", [(8, 8), (9, 17), (28, 28), (15, 30)])
def test_compiled_norm_pool_matches_pytorch_to_rounding(height, width, relu, groups, one_kernel_thread):
    # Batch and group norm's statistics are summed in another order than PyTorch's, so the fused
    # kernel is checked against a float64 reference to float32 rounding: values, first-order
    # gradients (the kernel's own backward) and second-order ones (through PyTorch's backward),
    # by autograd and by torch.func.
    maxpool = _compiled_pool()
    fused = _fused_norm_pool(maxpool, groups)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, height, width, generator=gen) * 2 + 0.5
    x[:, 3] += 40  # a mean far from zero, where a variance taken as E[x^2] - E[x]^2 would cancel
    weight = torch.rand(4, generator=gen) + 0.5
    weight[1] = -weight[1]  # a negative scale turns the window's order around
    bias = torch.randn(4, generator=gen)
    out_grad = torch.randn(3, 4, height // 2, width // 2, generator=gen)
    direction = torch.randn(x.shape, generator=gen)

    def close(want, got):
        return (want - got).abs().max() <= 1e-4 * want.abs().max() + 1e-5

    def derivatives(pool, dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in (x, weight, bias)]
        y = pool(*leaves, relu)
        first = torch.autograd.grad(y, leaves, out_grad.to(dtype), create_graph=True)
        second = torch.autograd.grad((first[0] * direction.to(dtype)).sum() + first[1].pow(2).sum(),
                                     leaves[:2])
        return [t.detach().double() for t in (y, *first, *second)]

    reference = lambda x, w, b, relu: _norm_pool_reference(x, w, b, groups, relu)
    want, got = derivatives(reference, torch.float64), derivatives(fused, torch.float32)
    assert all(close(w, g) for w, g in zip(want, got))
    first_order = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    grads = torch.autograd.grad(fused(*first_order, relu), first_order, out_grad)
    assert all(close(w, g) for w, g in zip(want[1:4], grads))

    def loss(w, pool):
        return (pool(x, w, bias, relu) * out_grad).sum()

    second = lambda f: torch.func.grad(lambda w, p: torch.func.grad(f)(w, p).pow(2).sum())
    for order in (torch.func.grad, second):
        assert close(order(loss)(weight, reference), order(loss)(weight, fused))


@pytest.mark.parametrize("norm,first_order", [("batch", False), ("batch", True), ("group", False),
                                              ("group", True)])
def test_conv4_maml_fuses_norm_and_pool_and_matches_the_portable_path(monkeypatch, norm, first_order,
                                                                      one_kernel_thread):
    maxpool = _compiled_pool()
    import mlbook.models

    widths = []
    stats = maxpool._norm_stats
    monkeypatch.setattr(maxpool, "_norm_stats", lambda x, *args: widths.append(x.shape[-1]) or stats(x, *args))
    model = Conv4(5, norm=norm)
    learner = (FOMAML if first_order else MAML)(model, inner_lr=0.4, steps=2, strategy="loop")
    meta_gradient = _conv4_meta_gradient(learner)
    fused = meta_gradient()
    # The norm on the 28- and 14-wide maps runs fused with the pool; at 7 and 3 it is PyTorch's.
    assert set(widths) == {28, 14}
    monkeypatch.setattr(mlbook.models, "batch_norm_max_pool_2x2", lambda *args, **kwargs: None)
    monkeypatch.setattr(mlbook.models, "group_norm_max_pool_2x2", lambda *args, **kwargs: None)
    widths.clear()
    portable = meta_gradient()
    assert not widths
    assert (fused - portable).abs().max() <= 1e-4 * portable.abs().max()


def test_group_norm_is_fused_only_on_one_kernel_thread_and_a_once_differentiated_backward():
    # MAML's second-order inner step marks its forward pass: there group norm runs unfused (its
    # fused backward would re-run PyTorch's group norm); so it does where PyTorch may use more
    # than one kernel thread. Batch norm stays fused in both.
    maxpool = _compiled_pool()
    x, weight, bias = torch.randn(2, 4, 8, 8), torch.ones(4), torch.zeros(4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert maxpool.group_norm_max_pool_2x2(x, 2, weight, bias, 1e-5) is not None
        with maxpool.backward_differentiated():
            assert maxpool.group_norm_max_pool_2x2(x, 2, weight, bias, 1e-5) is None
            assert maxpool.batch_norm_max_pool_2x2(x, weight, bias, 1e-5) is not None
        assert maxpool.group_norm_max_pool_2x2(x, 2, weight, bias, 1e-5) is not None
        torch.set_num_threads(2)
        assert maxpool.group_norm_max_pool_2x2(x, 2, weight, bias, 1e-5) is None
        assert maxpool.batch_norm_max_pool_2x2(x, weight, bias, 1e-5) is not None
    finally:
        torch.set_num_threads(threads)


def test_conv4_pools_the_portable_way_without_a_compiler(monkeypatch, tmp_path):
    from mlbook import maxpool

    monkeypatch.setattr(maxpool, "_status", None)
    monkeypatch.setattr(maxpool, "_library", None)
    monkeypatch.setenv("MLBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing compiler is a slower path, not a warning
        assert not maxpool.native_pool_available()
        assert "no-such-compiler" in maxpool.native_pool_status()
        x = torch.randn(2, 1, 28, 28)
        model = Conv4(5)
        assert maxpool.max_pool_2x2(torch.randn(2, 3, 8, 8)) is None
        assert torch.equal(model(x), torch.nn.Sequential(*model.features, model.head)(x))
    assert not list(tmp_path.rglob("*.so"))


def test_compiled_pool_is_cached_and_can_be_switched_off(monkeypatch, tmp_path):
    from mlbook import maxpool

    _compiled_pool()
    built = []
    real_run = maxpool.subprocess.run
    monkeypatch.setattr(maxpool.subprocess, "run",
                        lambda command, **kw: built.append(command) or real_run(command, **kw))
    monkeypatch.setenv("MLBOOK_DATA", str(tmp_path))
    for attempt in ("compiles", "reuses"):
        monkeypatch.setattr(maxpool, "_status", None)
        monkeypatch.setattr(maxpool, "_library", None)
        built.clear()
        assert maxpool.native_pool_available(), maxpool.native_pool_status()
        compiles = [c for c in built if "-shared" in c]
        assert len(compiles) == (1 if attempt == "compiles" else 0)
        assert len(list((tmp_path / "kernels").glob("max_pool_2x2-*.so"))) == 1
    monkeypatch.setattr(maxpool, "_status", None)
    monkeypatch.setattr(maxpool, "_library", None)
    monkeypatch.setenv("MLBOOK_NATIVE_POOL", "0")
    assert not maxpool.native_pool_available()
    assert "MLBOOK_NATIVE_POOL=0" in maxpool.native_pool_status()


def test_compiled_pool_is_built_in_a_private_folder_when_the_cache_cannot_be_written(monkeypatch, tmp_path):
    from mlbook import maxpool

    _compiled_pool()
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    monkeypatch.setenv("MLBOOK_DATA", str(not_a_folder))
    monkeypatch.setattr(maxpool, "_status", None)
    monkeypatch.setattr(maxpool, "_library", None)
    made = []
    real_mkdtemp = maxpool.tempfile.mkdtemp
    monkeypatch.setattr(maxpool.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    assert maxpool.native_pool_available(), maxpool.native_pool_status()
    assert len(made) == 1 and list(Path(made[0]).glob("max_pool_2x2-*.so"))


def test_chunked_vmap_matches_full_vmap():
    model = MLP(hidden=(8,))
    episode = _sinusoid_episode(batch=5)
    full_learner = MAML(model, inner_lr=0.05, loss="mse", strategy="vmap")
    chunked_learner = MAML(model, inner_lr=0.05, loss="mse", strategy="vmap", chunk_size=2)
    full = _library_grad(full_learner, full_learner.init(0, dtype=DT), episode)
    chunked = _library_grad(chunked_learner, chunked_learner.init(0, dtype=DT), episode)
    assert _rel(chunked, full) < 1e-12


def test_chunked_meta_backward_on_images_matches_one_vmap_call():
    # Each chunk is backpropagated before the next is built: the summed gradients, the mean
    # loss and the mean accuracy must equal those of one call over the whole meta-batch.
    images = (torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    episode = ImageClassFamily(images, ways=3, shots=1, queries=2).sample(5, torch.Generator().manual_seed(1))
    episode = Episode(episode.support_x.double(), episode.support_y, episode.query_x.double(), episode.query_y)
    model = Conv4(3, channels=4, image_size=16)
    results = []
    for chunk in (None, 2, "auto"):  # 'auto' on a CPU: the whole meta-batch at once
        learner = MAML(model, inner_lr=0.4, strategy="vmap", chunk_size=chunk)
        state = learner.init(0, dtype=DT)
        loss, accuracy = learner.meta_backward(state, episode, scale=0.5)
        results.append((loss, accuracy, [p.grad for p in learner.parameters(state)]))
    (loss, accuracy, grads), *others = results
    for other_loss, other_accuracy, other_grads in others:
        assert torch.allclose(other_loss, loss, rtol=1e-12, atol=0)
        assert torch.equal(other_accuracy, accuracy)
        assert _rel(torch.cat([g.flatten() for g in other_grads]), torch.cat([g.flatten() for g in grads])) < 1e-12


@pytest.mark.parametrize("chunk_size", [0, -2, 1.5, "all", True])
def test_learner_refuses_a_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        MAML(MLP(hidden=(4,)), loss="mse", chunk_size=chunk_size)


# -- the closed-form MLP path (mlbook.closedform) -------------------------------------------
def _ce(model, params, x, y):
    return F.cross_entropy(functional_call(model, params, (x,)), y)


@pytest.mark.parametrize("first_order", [False, True])
def test_closed_form_tanh_and_cross_entropy_match_unrolled_reference(first_order):
    # tanh has a non-zero second derivative, so the second-order terms are really exercised;
    # cross-entropy checks the other loss's output gradient.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 8, 4, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (3, 8), generator=gen)
    qx = torch.randn(3, 9, 4, generator=gen, dtype=DT)
    qy = torch.randint(0, 3, (3, 9), generator=gen)
    episode = Episode(x, y, qx, qy)
    model = MLP(in_features=4, out_features=3, hidden=(7, 5), activation="tanh")
    learner = MAML(model, inner_lr=0.3, steps=3, first_order=first_order, strategy="closed-form")
    state = learner.init(2, dtype=DT)
    got = _library_grad(learner, state, episode)
    want = _reference_maml_grad(model, state["params"], episode, (0.3,) * 3, first_order=first_order, loss=_ce)
    assert _rel(got, want) < 1e-10
    accuracy = learner.evaluate_batch(state, episode)["accuracy"]
    assert accuracy.shape == (3,) and bool(((accuracy >= 0) & (accuracy <= 1)).all())


def test_closed_form_metasgd_matches_vmap_for_every_leaf():
    from mlbook.learners import MetaSGD

    episode = _sinusoid_episode(batch=4)
    grads = {}
    for strategy in ("vmap", "closed-form", "closed-form, meta_backward"):
        learner = MetaSGD(MLP(hidden=(8, 8)), inner_lr=0.03, steps=2, loss="mse", strategy=strategy.split(",")[0])
        state = learner.init(0, dtype=DT)
        if strategy.endswith("meta_backward"):
            learner.meta_backward(state, episode)    # the trainer's route: by hand
        else:
            learner.meta_loss(state, episode).backward()
        grads[strategy] = torch.cat([p.grad.flatten() for p in learner.parameters(state)])
    assert _rel(grads["closed-form"], grads["vmap"]) < 1e-10
    assert _rel(grads["closed-form, meta_backward"], grads["vmap"]) < 1e-10


def test_auto_picks_closed_form_only_where_it_is_the_same_maths():
    sinusoid_x = _sinusoid_episode().support_x
    assert MAML(MLP(), loss="mse").execution_strategy(sinusoid_x) == "closed-form"
    assert ANIL(MLP(), loss="mse").execution_strategy(sinusoid_x) == "closed-form"
    # Reptile and iMAML score a surrogate, not adapt-then-predict: they keep vmap.
    assert Reptile(MLP(), loss="mse").execution_strategy(sinusoid_x) == "vmap"
    assert IMAML(MLP(), loss="mse").execution_strategy(sinusoid_x) == "vmap"
    assert MAML(MLP(), loss="mse", strategy="vmap").execution_strategy(sinusoid_x) == "vmap"
    with pytest.raises(ValueError, match="closed-form.*plain MLP"):
        MAML(Conv4(5, channels=8), strategy="closed-form")
    with pytest.raises(ValueError, match="strategy"):
        MAML(MLP(), loss="mse", strategy="closed_form")


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler, and none is installed")
def test_compiled_meta_gradient_matches_unrolled_reference(monkeypatch):
    import mlbook.closedform

    # tanh and cross-entropy with two steps: every term of the hand-written maths runs compiled.
    monkeypatch.setattr(mlbook.closedform, "_COMPILE_FAILED", False)
    gen = torch.Generator().manual_seed(7)
    episode = Episode(torch.randn(3, 6, 4, generator=gen, dtype=DT), torch.randint(0, 3, (3, 6), generator=gen),
                      torch.randn(3, 7, 4, generator=gen, dtype=DT), torch.randint(0, 3, (3, 7), generator=gen))
    model = MLP(in_features=4, out_features=3, hidden=(7, 5), activation="tanh")
    learner = MAML(model, inner_lr=0.3, steps=2, compile=True)
    state = learner.init(2, dtype=DT)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the uncompiled code fails here
        loss, _ = learner.meta_backward(state, episode)
    assert not mlbook.closedform._COMPILE_FAILED
    got = torch.cat([state["params"][k].grad.flatten() for k in state["params"]])
    want = _reference_maml_grad(model, state["params"], episode, (0.3, 0.3), loss=_ce)
    assert _rel(got, want) < 1e-10
    assert torch.allclose(loss, learner.meta_loss(state, episode), rtol=1e-12, atol=0)


def test_compile_falls_back_to_the_uncompiled_maths_with_one_warning(monkeypatch):
    import mlbook.closedform

    def no_compiler():
        def fail(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fail

    monkeypatch.setattr(mlbook.closedform, "_COMPILE_FAILED", False)
    monkeypatch.setattr(mlbook.closedform, "_compiled_meta_gradient", no_compiler)
    episode = _sinusoid_episode()
    learner = MAML(MLP(hidden=(8, 8)), inner_lr=0.05, loss="mse", compile=True)
    state = learner.init(0, dtype=DT)
    with pytest.warns(RuntimeWarning, match="torch.compile could not build.*no C\\+\\+ compiler found"):
        learner.meta_backward(state, episode)
    fallback = torch.cat([p.grad.flatten() for p in learner.parameters(state)])
    assert mlbook.closedform._COMPILE_FAILED, "the failure is remembered: no retry every step"
    want = _reference_maml_grad(learner.model, state["params"], episode, (0.05,))
    assert _rel(fallback, want) < 1e-10


def test_a_bad_input_raises_its_own_error_and_leaves_compiling_on(monkeypatch):
    import mlbook.closedform

    monkeypatch.setattr(mlbook.closedform, "_COMPILE_FAILED", False)
    monkeypatch.setattr(mlbook.closedform, "_compiled_meta_gradient", lambda: mlbook.closedform._meta_gradient)
    learner = MAML(MLP(hidden=(8, 8)), inner_lr=0.05, loss="mse", compile=True)
    state = learner.init(0, dtype=DT)
    episode = _sinusoid_episode()
    layers, activation = learner._closed_form
    wrong_width = episode.support_x.expand(-1, -1, 2)  # the MLP takes one input feature
    with pytest.raises(RuntimeError):
        mlbook.closedform.batched_meta_gradient(layers, activation, state["params"], wrong_width,
                                                episode.support_y, episode.query_x, episode.query_y,
                                                1, 0.05, compiled=True)
    assert not mlbook.closedform._COMPILE_FAILED


def test_compile_is_refused_where_there_is_nothing_to_compile():
    with pytest.raises(ValueError, match="compile must be True or False"):
        MAML(MLP(), loss="mse", compile="yes")
    for learner, kwargs in ((MAML, {"strategy": "vmap"}), (Reptile, {})):
        with pytest.raises(ValueError, match="compile=True compiles the hand-written meta-gradient"):
            learner(MLP(), loss="mse", compile=True, **kwargs)
    with pytest.raises(ValueError, match="compile=True"):
        MAML(Conv4(5, channels=8), compile=True)
