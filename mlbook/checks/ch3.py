"""Graders for Chapter 3, "Bi-level optimisation"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..bilevel import task_loss_fn
from ..models import MLP, init_params
from ..tasks import SinusoidFamily
from .core import Case, assert_close, assert_gradients, assert_same_names, chapter_graders, entry_mistakes, grade, named

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
    """The reference: one step per rate, keeping the graph (Chapter 3)."""
    for lr in lrs:
        grads = torch.autograd.grad(loss_fn(params, x, y), list(params.values()), create_graph=True)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def check_unrolled_adapt(fn):
    """Grade ``fn(loss_fn, params, x, y, lrs) -> theta``: one differentiable step per rate (Chapter 3)."""
    return grade("Exercise 3.1: a differentiable inner loop", fn, [
        Case("one step", _adapt_case(0, [0.1]), "theta = params - lr * grad of loss_fn(params, x, y)"),
        Case("three steps, three rates", _adapt_case(1, [0.1, 0.05, 0.02]), "step t uses lrs[t]"),
        Case("the meta-gradient reaches params and the rates", _adapt_case(2, [0.1, 0.1]),
             "torch.autograd.grad(..., create_graph=True) keeps the second-order graph; use lr as a tensor, "
             "not lr.item()"),
    ])


def _variant_unrolled(loss_fn, params, x, y, lrs, second_order=True):
    for lr in lrs:
        grads = torch.autograd.grad(loss_fn(params, x, y), list(params.values()), create_graph=second_order)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def _adapt_case(seed, lrs):
    def test(fn):
        loss_fn, params, (sx, sy, qx, qy) = _problem(seed)
        sx.requires_grad_()
        lr_tensor = torch.tensor(lrs, dtype=DT, requires_grad=True)
        want = reference_unrolled_adapt(loss_fn, params, sx, sy, lr_tensor)
        out = fn(loss_fn, params, sx, sy, lr_tensor)
        assert_same_names(out, params)
        n = len(lrs)
        mistakes = {
            "every step with lrs[0]: step t must use lrs[t]":
                lambda: reference_unrolled_adapt(loss_fn, params, sx, sy, lr_tensor[:1].expand(n)),
            "the rates in reverse order": lambda: reference_unrolled_adapt(loss_fn, params, sx, sy,
                                                                           lr_tensor.flip(0)),
            f"{n - 1} step(s) instead of len(lrs) = {n} (an off-by-one?)":
                lambda: reference_unrolled_adapt(loss_fn, params, sx, sy, lr_tensor[:-1]),
            "gradient ascent: the step has the wrong sign": lambda: reference_unrolled_adapt(loss_fn, params, sx, sy,
                                                                                             -lr_tensor),
        }
        mistakes = entry_mistakes(mistakes)
        for name in params:
            assert_close(out[name], want[name], f"adapted {name!r}", atol=1e-10, mistakes=mistakes(name))
        _, fn_params, fn_x, _, fn_lrs = fn.args
        assert_gradients(out, want, {**named("params", fn_params), "lrs": fn_lrs, "x": fn_x},
                         {**named("params", params), "lrs": lr_tensor, "x": sx}, "the adapted params",
                         atol=1e-9, rtol=1e-6, mistakes={
                             "the first-order gradient: the second-order term is missing "
                             "(torch.autograd.grad without create_graph=True?)":
                             lambda: _variant_unrolled(loss_fn, params, sx, sy, lr_tensor, second_order=False),
                             "every step with lrs[0]: step t must use lrs[t]":
                             lambda: reference_unrolled_adapt(loss_fn, params, sx, sy,
                                                              [lr_tensor[0]] * len(lrs))})
    return test


# -- Exercise 2: the first-order approximation -------------------------------------------
def reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps):
    """The reference: the query gradient at theta adapted without a graph (Chapter 3)."""
    theta = {k: v.detach() for k, v in params.items()}
    for _ in range(steps):
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        grads = torch.autograd.grad(loss_fn(theta, sx, sy), list(theta.values()))
        theta = {k: (v - lr * g).detach() for (k, v), g in zip(theta.items(), grads)}
    theta = {k: v.requires_grad_() for k, v in theta.items()}
    grads = torch.autograd.grad(loss_fn(theta, qx, qy), list(theta.values()))
    return dict(zip(theta, grads))


def check_first_order_grad(fn):
    """Grade ``fn(loss_fn, params, sx, sy, qx, qy, lr, steps) -> dict``: FOMAML's meta-gradient (Chapter 3)."""
    return grade("Exercise 3.2: the first-order approximation", fn, [
        Case("one step", _fo_case(0, 0.1, 1), "adapt on the support set, then take the query gradient at theta"),
        Case("three steps", _fo_case(1, 0.05, 3), "the gradient is taken at the adapted theta, not at params"),
        Case("another task", _fo_case(2, 0.2, 2),
             "`steps` plain steps theta - lr * grad on (sx, sy); then the gradient of the loss on (qx, qy)",
             hidden=True),
    ])


def _second_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps):
    theta = reference_unrolled_adapt(loss_fn, params, sx, sy, [lr] * steps)
    return dict(zip(params, torch.autograd.grad(loss_fn(theta, qx, qy), list(params.values()))))


def _fo_case(seed, lr, steps):
    def test(fn):
        loss_fn, params, (sx, sy, qx, qy) = _problem(seed)
        want = reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps)
        out = fn(loss_fn, params, sx, sy, qx, qy, lr, steps)
        assert_same_names(out, params, "a dict with the same names as params (one gradient per name)")
        args = (loss_fn, params, sx, sy, qx, qy)
        mistakes = {
            "the query gradient at params, before adapting (zero inner steps)":
                lambda: reference_first_order_grad(*args, lr, 0),
            "the support loss's gradient at theta: take the query loss's gradient":
                lambda: reference_first_order_grad(loss_fn, params, sx, sy, sx, sy, lr, steps),
            "adapting on the query set instead of the support set":
                lambda: reference_first_order_grad(loss_fn, params, qx, qy, qx, qy, lr, steps),
            f"{steps - 1} inner step(s) instead of steps = {steps} (an off-by-one?)":
                lambda: reference_first_order_grad(*args, lr, steps - 1),
            f"{steps + 1} inner steps instead of steps = {steps} (an off-by-one?)":
                lambda: reference_first_order_grad(*args, lr, steps + 1),
            "inner steps uphill: the step has the wrong sign": lambda: reference_first_order_grad(*args, -lr, steps),
            "MAML's full second-order gradient: the exercise asks for the first-order approximation "
            "(no graph through the inner steps)": lambda: _second_order_grad(*args, lr, steps),
        }
        mistakes = entry_mistakes(mistakes)
        for name in params:
            if isinstance(out[name], torch.Tensor) and out[name].shape == want[name].shape and \
                    not torch.allclose(out[name].detach().double(), want[name], atol=1e-9):
                adapted = reference_unrolled_adapt(loss_fn, params, sx, sy, [lr] * steps)
                if torch.allclose(out[name].detach().double(), adapted[name].detach(), atol=1e-9):
                    raise AssertionError(f"the result for {name!r} is the adapted parameter theta, not a gradient: "
                                         "return the query loss's gradient at theta")
            assert_close(out[name], want[name], f"gradient for {name!r}", atol=1e-9, mistakes=mistakes(name))
    return test


# -- Exercise 3: the Reptile update ------------------------------------------------------
def reference_reptile_update(phi, thetas, epsilon):
    """The reference: ``phi + epsilon * mean_i (theta_i - phi)`` (Chapter 3)."""
    return {k: phi[k] + epsilon * torch.stack([t[k] - phi[k] for t in thetas]).mean(0) for k in phi}


def check_reptile_update(fn):
    """Grade ``fn(phi, thetas, epsilon) -> new phi``: phi + epsilon * mean_i (theta_i - phi) (Chapter 3)."""
    return grade("Exercise 3.3: the Reptile update", fn, [
        Case("one task", _reptile_case(0, tasks=1, epsilon=0.5), "move phi a fraction epsilon towards theta"),
        Case("four tasks", _reptile_case(1, tasks=4, epsilon=0.1), "average the directions theta_i - phi over tasks"),
        Case("epsilon = 1 with two tasks", _reptile_case(2, tasks=2, epsilon=1.0),
             "with epsilon = 1, phi moves all the way to the mean of the thetas", hidden=True),
        Case("three tasks, a small step", _reptile_case(3, tasks=3, epsilon=0.25),
             "new phi = phi + epsilon * mean over tasks of (theta_i - phi); leave phi and thetas unchanged",
             hidden=True),
    ])


def _reptile_case(seed, tasks, epsilon):
    def test(fn):
        g = torch.Generator().manual_seed(seed)
        phi = {"w": torch.randn(3, 2, generator=g, dtype=DT), "b": torch.randn(3, generator=g, dtype=DT)}
        thetas = [{k: v + torch.randn(v.shape, generator=g, dtype=DT) for k, v in phi.items()} for _ in range(tasks)]
        want = reference_reptile_update(phi, thetas, epsilon)
        out = fn(phi, thetas, epsilon)
        assert_same_names(out, phi, "a dict with the same names as phi")
        mean = {k: torch.stack([t[k] for t in thetas]).mean(0) for k in phi}
        for k in phi:
            assert_close(out[k], want[k], f"new {k!r}", atol=1e-12, mistakes={
                "phi - epsilon * mean(theta_i - phi): the step has the wrong sign":
                    phi[k] - epsilon * (mean[k] - phi[k]),
                "a step towards the last task only: average theta_i - phi over all tasks":
                    phi[k] + epsilon * (thetas[-1][k] - phi[k]),
                "a step towards the first task only: average theta_i - phi over all tasks":
                    phi[k] + epsilon * (thetas[0][k] - phi[k]),
                "the sum over tasks instead of the mean": phi[k] + epsilon * tasks * (mean[k] - phi[k]),
                "the mean of the thetas: epsilon is not used": mean[k],
                "epsilon * mean(theta_i) + phi: subtract phi inside the mean": phi[k] + epsilon * mean[k],
                "epsilon * mean(theta_i - phi) alone: add it to phi": epsilon * (mean[k] - phi[k])})
    return test


GRADERS = chapter_graders(globals())
