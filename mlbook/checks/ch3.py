"""Graders for Chapter 3, "Bi-level optimisation"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..bilevel import task_loss_fn
from ..models import MLP, init_params
from ..tasks import SinusoidFamily
from .core import Case, assert_close, grade

__all__ = ["check_unrolled_adapt", "check_first_order_grad", "check_reptile_update"]

DT = torch.float64


def _problem(seed, hidden=(8,)):
    model = MLP(hidden=hidden).to(DT)
    loss_fn = task_loss_fn(model, F.mse_loss)
    params = {k: v.to(DT).detach().requires_grad_() for k, v in init_params(model, seed).items()}
    ep = SinusoidFamily(shots=5, queries=6).sample(1, torch.Generator().manual_seed(seed))
    ep = [t[0].to(DT) for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)]
    return loss_fn, params, ep


# -- Exercise 1: a differentiable inner loop with one learning rate per step ----------------
def reference_unrolled_adapt(loss_fn, params, x, y, lrs):
    for lr in lrs:
        grads = torch.autograd.grad(loss_fn(params, x, y), list(params.values()), create_graph=True)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def _adapt_case(seed, lrs, check_meta_grad=False):
    def test(fn):
        loss_fn, params, (sx, sy, qx, qy) = _problem(seed)
        lr_tensor = torch.tensor(lrs, dtype=DT, requires_grad=True)
        out = fn(loss_fn, params, sx, sy, lr_tensor)
        if not isinstance(out, dict) or set(out) != set(params):
            raise AssertionError("return a dict with the same names as params")
        want = reference_unrolled_adapt(loss_fn, params, sx, sy, lr_tensor)
        for name in params:
            assert_close(out[name], want[name], f"adapted {name!r}", atol=1e-10)
        if check_meta_grad:
            got_loss, want_loss = loss_fn(out, qx, qy), loss_fn(want, qx, qy)
            if not got_loss.requires_grad:
                raise AssertionError("the adapted parameters carry no graph back to params")
            inputs = [*params.values(), lr_tensor]
            got = torch.autograd.grad(got_loss, inputs, allow_unused=True)
            ref = torch.autograd.grad(want_loss, inputs)
            for g, r, what in zip(got, ref, [*params, "lrs"]):
                if g is None:
                    raise AssertionError(f"no meta-gradient reaches {what}: keep the graph (create_graph=True)")
                assert_close(g, r, f"meta-gradient of {what}", atol=1e-9)
    return test


def check_unrolled_adapt(fn):
    """Grade ``fn(loss_fn, params, x, y, lrs) -> theta``: one differentiable step per rate (Chapter 3)."""
    return grade("Exercise 3.1: a differentiable inner loop", fn, [
        Case("one step", _adapt_case(0, [0.1]), "theta = params - lr * grad of loss_fn(params, x, y)"),
        Case("three steps, three rates", _adapt_case(1, [0.1, 0.05, 0.02]), "step t uses lrs[t]"),
        Case("the meta-gradient reaches params and the rates", _adapt_case(2, [0.1, 0.1], True),
             "torch.autograd.grad(..., create_graph=True) keeps the second-order graph"),
    ])


# -- Exercise 2: the first-order approximation -------------------------------------------
def reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps):
    theta = {k: v.detach() for k, v in params.items()}
    for _ in range(steps):
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        grads = torch.autograd.grad(loss_fn(theta, sx, sy), list(theta.values()))
        theta = {k: (v - lr * g).detach() for (k, v), g in zip(theta.items(), grads)}
    theta = {k: v.requires_grad_() for k, v in theta.items()}
    grads = torch.autograd.grad(loss_fn(theta, qx, qy), list(theta.values()))
    return dict(zip(theta, grads))


def _fo_case(seed, lr, steps):
    def test(fn):
        loss_fn, params, (sx, sy, qx, qy) = _problem(seed)
        out = fn(loss_fn, params, sx, sy, qx, qy, lr, steps)
        if not isinstance(out, dict) or set(out) != set(params):
            raise AssertionError("return a dict of gradients with the same names as params")
        want = reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps)
        for name in params:
            assert_close(out[name], want[name], f"gradient for {name!r}", atol=1e-9)
    return test


def check_first_order_grad(fn):
    """Grade ``fn(loss_fn, params, sx, sy, qx, qy, lr, steps) -> dict``: FOMAML's meta-gradient (Chapter 3)."""
    return grade("Exercise 3.2: the first-order approximation", fn, [
        Case("one step", _fo_case(0, 0.1, 1), "adapt on the support set, then take the query gradient at theta"),
        Case("three steps", _fo_case(1, 0.05, 3), "the gradient is taken at the adapted theta, not at params"),
        Case("another task", _fo_case(2, 0.2, 2), "", hidden=True),
    ])


# -- Exercise 3: the Reptile update ------------------------------------------------------
def reference_reptile_update(phi, thetas, epsilon):
    return {k: phi[k] + epsilon * torch.stack([t[k] - phi[k] for t in thetas]).mean(0) for k in phi}


def _reptile_case(seed, tasks, epsilon):
    def test(fn):
        g = torch.Generator().manual_seed(seed)
        phi = {"w": torch.randn(3, 2, generator=g, dtype=DT), "b": torch.randn(3, generator=g, dtype=DT)}
        thetas = [{k: v + torch.randn(v.shape, generator=g, dtype=DT) for k, v in phi.items()} for _ in range(tasks)]
        before = {k: v.clone() for k, v in phi.items()}
        out = fn(phi, thetas, epsilon)
        if not isinstance(out, dict) or set(out) != set(phi):
            raise AssertionError("return a dict with the same names as phi")
        want = reference_reptile_update(before, thetas, epsilon)
        for k in phi:
            assert_close(out[k], want[k], f"new {k!r}", atol=1e-12)
            if not torch.equal(phi[k], before[k]):
                raise AssertionError("phi was changed in place; return new tensors")
    return test


def check_reptile_update(fn):
    """Grade ``fn(phi, thetas, epsilon) -> new phi``: phi + epsilon * mean_i (theta_i - phi) (Chapter 3)."""
    return grade("Exercise 3.3: the Reptile update", fn, [
        Case("one task", _reptile_case(0, 1, 0.5), "move phi a fraction epsilon towards theta"),
        Case("four tasks", _reptile_case(1, 4, 0.1), "average the directions theta_i - phi over tasks"),
        Case("epsilon = 1 with two tasks", _reptile_case(2, 2, 1.0), "", hidden=True),
    ])


# -- stubs and plausible wrong answers, used by the tests ---------------------------------
def _stub(*args):
    raise NotImplementedError


def _wrong_adapt_no_graph(loss_fn, params, x, y, lrs):
    for lr in lrs:
        grads = torch.autograd.grad(loss_fn(params, x, y), list(params.values()), retain_graph=True)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def _wrong_adapt_first_rate(loss_fn, params, x, y, lrs):
    return reference_unrolled_adapt(loss_fn, params, x, y, [lrs[0]] * len(lrs))


def _wrong_fo_at_phi(loss_fn, params, sx, sy, qx, qy, lr, steps):
    grads = torch.autograd.grad(loss_fn(params, qx, qy), list(params.values()))
    return dict(zip(params, grads))


def _wrong_fo_support(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return reference_first_order_grad(loss_fn, params, sx, sy, sx, sy, lr, steps)


def _wrong_reptile_sign(phi, thetas, epsilon):
    return {k: phi[k] - epsilon * torch.stack([t[k] - phi[k] for t in thetas]).mean(0) for k in phi}


def _wrong_reptile_last(phi, thetas, epsilon):
    return {k: phi[k] + epsilon * (thetas[-1][k] - phi[k]) for k in phi}


GRADERS = {
    "check_unrolled_adapt": (check_unrolled_adapt, reference_unrolled_adapt, _stub,
                             [_wrong_adapt_no_graph, _wrong_adapt_first_rate]),
    "check_first_order_grad": (check_first_order_grad, reference_first_order_grad, _stub,
                               [_wrong_fo_at_phi, _wrong_fo_support]),
    "check_reptile_update": (check_reptile_update, reference_reptile_update, _stub,
                             [_wrong_reptile_sign, _wrong_reptile_last]),
}
