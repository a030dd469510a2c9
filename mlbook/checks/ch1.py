"""Graders for Chapter 1, "Learning to learn"."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..models import MLP, init_params
from ..tasks import SinusoidFamily
from .core import Case, assert_close, grade

__all__ = ["check_sgd_step", "check_adapt", "check_meta_objective"]


def _random_params(seed):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 2, generator=g), "b": torch.randn(3, generator=g)}


# -- Exercise 1: one functional SGD step --------------------------------------------------
def reference_sgd_step(params, grads, lr):
    return {name: params[name] - lr * grads[name] for name in params}


def _sgd_case(seed, lr):
    def test(fn):
        params, grads = _random_params(seed), _random_params(seed + 100)
        before = {k: v.clone() for k, v in params.items()}
        out = fn(params, grads, lr)
        if not isinstance(out, dict):
            raise AssertionError(f"return a dict of tensors, got {type(out).__name__}")
        if set(out) != set(params):
            raise AssertionError(f"the returned dict has keys {sorted(out)}, expected {sorted(params)}")
        expected = reference_sgd_step(before, grads, lr)
        for name in params:
            assert_close(out[name], expected[name], f"new {name!r}")
        for name in params:
            if not torch.equal(params[name], before[name]):
                raise AssertionError("your function changed its input params in place; return new tensors")
    return test


def check_sgd_step(fn):
    """Grade ``fn(params, grads, lr) -> new_params``: theta - lr * g, functionally (Chapter 1)."""
    return grade("Exercise 1.1: one functional SGD step", fn, [
        Case("lr = 0.1 on two tensors", _sgd_case(0, 0.1), "new = old - lr * grad, for every name"),
        Case("lr = 0.5", _sgd_case(1, 0.5), "use the lr argument, not a constant", hidden=True),
        Case("inputs left unchanged", _sgd_case(2, 0.01), "build a new dict instead of `-=`", hidden=True),
    ])


# -- Exercise 2: Adapt(phi, D_train) with a few gradient steps ----------------------------
def reference_adapt(model, params, x, y, lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def _adapt_case(seed, lr, steps):
    def test(fn):
        model = MLP(hidden=(8, 8))
        params = init_params(model, seed)
        episode = SinusoidFamily(shots=5, queries=5).sample(1, torch.Generator().manual_seed(seed))
        x, y = episode.support_x[0], episode.support_y[0]
        out = fn(model, params, x, y, lr, steps)
        if not isinstance(out, dict) or set(out) != set(params):
            raise AssertionError("return a dict with the same names as params")
        expected = reference_adapt(model, params, x, y, lr, steps)
        for name in params:
            assert_close(out[name], expected[name], f"adapted {name!r}", atol=1e-5)
    return test


def check_adapt(fn):
    """Grade ``fn(model, params, x, y, lr, steps) -> adapted params`` (Chapter 1)."""
    return grade("Exercise 1.2: Adapt(phi, D_train)", fn, [
        Case("one step", _adapt_case(0, 0.01, 1), "loss = MSE of functional_call(model, params, (x,)) against y"),
        Case("three steps", _adapt_case(1, 0.01, 3), "repeat the step `steps` times from the new params"),
        Case("another learning rate", _adapt_case(2, 0.05, 2), "use lr", hidden=True),
    ])


# -- Exercise 3: the meta-objective --------------------------------------------------------
def reference_meta_objective(model, params, episode, lr, steps):
    losses = []
    for i in range(episode.batch_size):
        adapted = reference_adapt(model, params, episode.support_x[i], episode.support_y[i], lr, steps)
        losses.append(F.mse_loss(functional_call(model, adapted, (episode.query_x[i],)), episode.query_y[i]))
    return torch.stack(losses).mean()


def _meta_case(seed, batch, steps, check_grad=False):
    def test(fn):
        model = MLP(hidden=(8, 8))
        params = init_params(model, seed)
        episode = SinusoidFamily(shots=5, queries=7).sample(batch, torch.Generator().manual_seed(seed))
        out = fn(model, params, episode, 0.02, steps)
        expected = reference_meta_objective(model, params, episode, 0.02, steps)
        assert_close(out, expected, "meta-objective", atol=1e-5)
        if check_grad:
            if not out.requires_grad:
                raise AssertionError("the result carries no gradient to params: do not detach")
            got = torch.autograd.grad(out, list(params.values()))
            want = torch.autograd.grad(expected, list(params.values()))
            for g, w in zip(got, want):
                assert_close(g, w, "meta-gradient", atol=1e-4)
    return test


def check_meta_objective(fn):
    """Grade ``fn(model, params, episode, lr, steps) -> scalar``: mean post-adaptation query loss (Chapter 1)."""
    return grade("Exercise 1.3: the meta-objective", fn, [
        Case("four tasks, one step", _meta_case(0, 4, 1),
             "adapt on each task's support set, then score its query set; average over tasks"),
        Case("the meta-gradient flows through Adapt", _meta_case(1, 3, 1, check_grad=True),
             "keep the graph of the inner step (create_graph=True)"),
        Case("eight tasks, two steps", _meta_case(2, 8, 2), "", hidden=True),
    ])


# -- stubs and plausible wrong answers, used by the tests ---------------------------------
def _stub(*args):
    raise NotImplementedError


def _wrong_sgd_plus(params, grads, lr):
    return {k: params[k] + lr * grads[k] for k in params}


def _wrong_sgd_inplace(params, grads, lr):
    for k in params:
        params[k] -= lr * grads[k]
    return params


def _wrong_adapt_one_step(model, params, x, y, lr, steps):
    return reference_adapt(model, params, x, y, lr, 1)


def _wrong_meta_support(model, params, episode, lr, steps):
    losses = []
    for i in range(episode.batch_size):
        adapted = reference_adapt(model, params, episode.support_x[i], episode.support_y[i], lr, steps)
        losses.append(F.mse_loss(functional_call(model, adapted, (episode.support_x[i],)), episode.support_y[i]))
    return torch.stack(losses).mean()


def _wrong_meta_detached(model, params, episode, lr, steps):
    detached = {k: v.detach().requires_grad_() for k, v in params.items()}
    return reference_meta_objective(model, detached, episode, lr, steps).detach()


GRADERS = {
    "check_sgd_step": (check_sgd_step, reference_sgd_step, _stub, [_wrong_sgd_plus, _wrong_sgd_inplace]),
    "check_adapt": (check_adapt, reference_adapt, _stub, [_wrong_adapt_one_step]),
    "check_meta_objective": (check_meta_objective, reference_meta_objective, _stub,
                             [_wrong_meta_support, _wrong_meta_detached]),
}
