"""Graders for Chapter 3, "Bi-level optimisation"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..bilevel import task_loss_fn
from ..models import MLP, init_params
from ..tasks import SinusoidFamily
from .core import (Case, assert_close, assert_gradients, assert_same_names, chapter_graders, entry_mistakes, grade,
                   named)
from .predictions import Prediction, chapter_predictions

__all__ = ["check_unrolled_adapt", "check_first_order_grad", "check_reptile_update",
           "check_maml_linear_grad", "check_implicit_grad"]

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


# -- Exercise 4 (derivation): MAML's meta-gradient for linear regression, in closed form ------
def _linear_grad(w, x, y):
    """The gradient of ||x w - y||^2 / n at w."""
    return 2 * x.T @ (x @ w - y) / len(y)


def reference_maml_linear_grad(w, xs, ys, xq, yq, alpha):
    """The reference: (I - alpha H_s) grad L_q(theta), theta = w - alpha grad L_s(w) (Chapter 3)."""
    theta = w - alpha * _linear_grad(w, xs, ys)
    hessian = 2 * xs.T @ xs / len(ys)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * hessian) @ _linear_grad(theta, xq, yq)


def check_maml_linear_grad(fn):
    """Grade ``fn(w, xs, ys, xq, yq, alpha) -> dL_q(theta)/dw`` derived by hand (Chapter 3)."""
    return grade("Exercise 3.4: MAML's meta-gradient in closed form", fn, [
        Case("one weight", _linear_case(0, d=1, ns=4, nq=5, alpha=0.1),
             "dL_q(theta)/dw = (dtheta/dw)^T grad L_q(theta) with dtheta/dw = I - alpha H_s"),
        Case("three weights", _linear_case(1, d=3, ns=5, nq=7, alpha=0.1),
             "H_s = 2 X_s^T X_s / n_s, the Hessian of the support loss; the query gradient is taken at theta"),
        Case("derived by hand (run without autograd)", _linear_case(2, d=3, ns=6, nq=4, alpha=0.05,
                                                                    no_grad=True),
             "the formula needs only matrix products: 2 X^T (X w - y) / n is the gradient, no autograd needed"),
        Case("fewer support points than weights, a large step", _linear_case(3, d=4, ns=2, nq=6, alpha=0.4),
             "theta = w - alpha * 2 X_s^T (X_s w - y_s) / n_s, then (I - alpha H_s) times the query gradient",
             hidden=True),
        Case("five weights", _linear_case(4, d=5, ns=8, nq=3, alpha=0.2),
             "(I - alpha H_s) @ grad L_q(theta), with the means over n_s and n_q points", hidden=True),
    ])


def _linear_case(seed, d, ns, nq, alpha, no_grad=False):
    def test(fn):
        g = torch.Generator().manual_seed(100 + seed)
        w = torch.randn(d, generator=g, dtype=DT)
        xs, xq = torch.randn(ns, d, generator=g, dtype=DT), torch.randn(nq, d, generator=g, dtype=DT)
        ys, yq = torch.randn(ns, generator=g, dtype=DT), torch.randn(nq, generator=g, dtype=DT)

        def meta_loss(w_):
            theta = w_ - alpha * _linear_grad(w_, xs, ys)
            return (xq @ theta - yq).pow(2).mean()
        want = torch.func.grad(meta_loss)(w)      # autograd through the inner step: the truth
        if no_grad:
            with torch.no_grad():
                out = fn(w, xs, ys, xq, yq, alpha)
        else:
            out = fn(w, xs, ys, xq, yq, alpha)
        eye = torch.eye(d, dtype=DT)
        h_s, h_q = 2 * xs.T @ xs / ns, 2 * xq.T @ xq / nq
        theta = w - alpha * _linear_grad(w, xs, ys)
        gq = _linear_grad(theta, xq, yq)
        half_theta = w - alpha * _linear_grad(w, xs, ys) / 2
        summed = w - alpha * 2 * xs.T @ (xs @ w - ys)
        assert_close(out, want, "meta-gradient", atol=1e-9, rtol=1e-7, mistakes={
            "first-order MAML: the factor (I - alpha H_s) from d theta / d w is missing": gq,
            "(I + alpha H_s): the Hessian term has the wrong sign (theta = w - alpha grad, so "
            "d theta / d w = I - alpha H_s)": (eye + alpha * h_s) @ gq,
            "H_s without its factor 2: the Hessian of ||X w - y||^2 / n is 2 X^T X / n":
                (eye - alpha * h_s / 2) @ gq,
            "the factor 2 of the squared loss's gradient is missing (the gradient of ||X w - y||^2 / n is "
            "2 X^T (X w - y) / n)": (eye - alpha * h_s / 2) @ (xq.T @ (xq @ half_theta - yq) / nq),
            "the query set's Hessian H_q where the support set's H_s belongs": (eye - alpha * h_q) @ gq,
            "the query gradient at w: take it at the adapted theta": (eye - alpha * h_s) @ _linear_grad(w, xq, yq),
            "the support loss's gradient at theta: the outer loss is the query loss":
                (eye - alpha * h_s) @ _linear_grad(theta, xs, ys),
            "an uphill inner step, theta = w + alpha grad": (eye + alpha * h_s) @ _linear_grad(
                w + alpha * _linear_grad(w, xs, ys), xq, yq),
            "sums where means belong: divide the support loss by n_s":
                (eye - alpha * 2 * xs.T @ xs) @ _linear_grad(summed, xq, yq)})
    return test


# -- Exercise 5 (derivation): iMAML's implicit gradient -----------------------------------
def reference_implicit_grad(hessian, outer_grad, lam):
    """The reference: solve (I + H / lam) v = g (Chapter 3)."""
    eye = torch.eye(len(outer_grad), dtype=outer_grad.dtype)
    return torch.linalg.solve(eye + hessian / lam, outer_grad)


def check_implicit_grad(fn):
    """Grade ``fn(hessian, outer_grad, lam) -> (I + H/lam)^{-1} g`` against the exact derivative of a
    quadratic inner problem (Chapter 3)."""
    return grade("Exercise 3.5: iMAML's implicit gradient", fn, [
        Case("a convex inner loss, lam = 1", _implicit_case(0, d=3, lam=1.0),
             "differentiate the stationarity condition grad L_in(theta*) + lam (theta* - phi) = 0 with respect "
             "to phi: (H + lam I) d theta*/d phi = lam I"),
        Case("a strong proximal term, lam = 20", _implicit_case(1, d=4, lam=20.0),
             "the meta-gradient is (d theta*/d phi)^T g = (I + H/lam)^{-1} g: solve a linear system"),
        Case("a non-convex inner loss (H has a negative eigenvalue)", _implicit_case(2, d=4, lam=3.0, shift=-1.0),
             "the formula holds wherever I + H/lam is invertible, also with negative eigenvalues of H",
             hidden=True),
        Case("a weak proximal term, lam = 0.1", _implicit_case(3, d=5, lam=0.1),
             "divide H by lam: with a small lam the inner solution follows phi only weakly", hidden=True),
    ])


def _implicit_case(seed, d, lam, shift=0.5):
    def test(fn):
        g = torch.Generator().manual_seed(200 + seed)
        a = torch.randn(d, d, generator=g, dtype=DT)
        hessian = a @ a.T / d + shift * torch.eye(d, dtype=DT)
        if shift < 0:   # a saddle for the inner loss, a strict minimum of the proximal problem
            assert torch.linalg.eigvalsh(hessian)[0] + lam > 0.1
        b, phi = torch.randn(d, generator=g, dtype=DT), torch.randn(d, generator=g, dtype=DT)
        xq, yq = torch.randn(6, d, generator=g, dtype=DT), torch.randn(6, generator=g, dtype=DT)
        eye = torch.eye(d, dtype=DT)

        def theta_star(phi_):
            # argmin 1/2 theta^T H theta - b^T theta + lam/2 ||theta - phi||^2, in closed form
            return torch.linalg.solve(hessian + lam * eye, b + lam * phi_)

        def outer(theta):
            return (xq @ theta - yq).pow(2).mean()
        want = torch.func.grad(lambda p: outer(theta_star(p)))(phi)
        outer_grad = torch.func.grad(outer)(theta_star(phi))
        out = fn(hessian, outer_grad, lam)
        assert_close(out, want, "meta-gradient", atol=1e-9, rtol=1e-7, mistakes={
            "(I + lam H)^{-1} g: lam divides H, it does not multiply it":
                torch.linalg.solve(eye + lam * hessian, outer_grad),
            "(I - H/lam) g: one gradient step of size 1/lam (MAML's factor, or the first term of a "
            "series); the implicit gradient solves with I + H/lam": (eye - hessian / lam) @ outer_grad,
            "g itself: the first-order approximation drops d theta*/d phi": outer_grad,
            "(I + H/lam) g: multiply by the inverse of I + H/lam, not by the matrix":
                (eye + hessian / lam) @ outer_grad,
            "(H + lam I)^{-1} g: the factor lam is missing (d theta*/d phi = lam (H + lam I)^{-1})":
                torch.linalg.solve(hessian + lam * eye, outer_grad),
            "(I + H)^{-1} g: lam is not used": torch.linalg.solve(eye + hessian, outer_grad),
            "(I - H/lam)^{-1} g: the sign of H/lam is wrong": torch.linalg.solve(eye - hessian / lam, outer_grad),
            "H^{-1} g: the identity from the proximal term is missing": torch.linalg.solve(hessian, outer_grad)})
    return test


GRADERS = chapter_graders(globals())


# -- Prediction questions ---------------------------------------------------------------------
PREDICT_REPTILE_ONE_STEP = Prediction(
    key="reptile-one-step",
    question="Reptile moves phi towards the adapted theta_i. Summed over a meta-batch, compare its direction "
             "(phi - theta_i) / alpha with the gradient of joint training (one network fitted to all the "
             "support sets pooled), first with one inner step, then with five.",
    choices=("equal to rounding error with one step; clearly different with five",
             "equal to rounding error with one step and with five",
             "already different with one step: Reptile's update is a meta-learning update",
             "opposite in sign: Reptile steps towards theta, joint training steps downhill"),
    answer="a",
    hint="write theta_i after one step: theta_i = phi - alpha * grad L_i(phi). What is phi - theta_i?",
    explanation="One step gives phi - theta_i = alpha grad L_i(phi), joint training's gradient exactly; with "
                "more steps the later gradients are taken at moved points, which adds the alpha k(k-1)/2 H g "
                "term (Nichol et al., section 5).")

PREDICT_IMAML_LARGE_LAMBDA = Prediction(
    key="imaml-large-lambda",
    question="iMAML solves the proximal inner problem of strength lam exactly; MAML takes one inner step of "
             "size 1/lam. As lam grows from lam0 to 4 lam0 and 16 lam0 (lam0 chosen from the curvature), what "
             "happens to the cosine similarity of their meta-gradients?",
    choices=("it approaches 1: above 0.999 at 16 lam0",
             "it approaches 0: the two methods answer different inner problems",
             "it stays near 0.5 whatever lam is",
             "it turns negative: the implicit gradient points the other way"),
    answer="a",
    hint="for a large lam the proximal minimiser is about one small gradient step from phi; compare "
         "(I + H/lam)^{-1} with I - H/lam",
    explanation="theta* = phi - grad L(phi)/lam + O(1/lam^2) and (I + H/lam)^{-1} = I - H/lam + O(1/lam^2): "
                "to first order in 1/lam, iMAML's meta-gradient is one-step MAML's with alpha = 1/lam.")

PREDICTIONS = chapter_predictions(globals())
