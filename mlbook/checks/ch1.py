"""Graders for Chapter 1, "Learning to learn"."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..models import MLP, init_params
from ..tasks import SinusoidFamily
from .core import (Case, as_scalar, assert_close, assert_gradients, assert_same_names, chapter_graders, entry_mistakes,
                   grade, named)
from .predictions import Prediction, chapter_predictions

__all__ = ["check_sgd_step", "check_adapt", "check_meta_objective"]


def _random_params(seed, names=("w", "b"), requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (3, 2), "b": (3,), "c": (2, 2), "scale": ()}
    return {n: torch.randn(shapes.get(n, (4,)), generator=g).requires_grad_(requires_grad) for n in names}


def _dict_out(out, params):
    assert_same_names(out, params, "a dict of tensors with the same names as params",
                      " (take the names from params, do not write them out)")


# -- Exercise 1: one functional SGD step --------------------------------------------------
def reference_sgd_step(params, grads, lr):
    """The reference: ``params - lr * grads`` for every name, as a new dict (Chapter 1)."""
    return {name: params[name] - lr * grads[name] for name in params}


def check_sgd_step(fn):
    """Grade ``fn(params, grads, lr) -> new_params``: theta - lr * g, functionally (Chapter 1)."""
    return grade("Exercise 1.1: one functional SGD step", fn, [
        Case("lr = 0.1 on two tensors", _sgd_case(0, 0.1), "new = old - lr * grad, for every name"),
        Case("lr = 0.5", _sgd_case(1, 0.5), "use the lr argument, not a constant", hidden=True),
        Case("the step is differentiable", _sgd_case(2, 0.01, check_grad=True),
             "the inner loop differentiates through this step: no torch.no_grad(), .detach() or .data"),
        Case("other names, inputs left unchanged", _sgd_case(3, 0.2, ("w", "c", "scale")),
             "loop over params' own names and build a new dict instead of `-=`", hidden=True),
    ])


def _sgd_case(seed, lr, names=("w", "b"), check_grad=False):
    def test(fn):
        params = _random_params(seed, names, check_grad)
        grads = _random_params(seed + 100, names, check_grad)
        expected = reference_sgd_step(params, grads, lr)       # before the student's call
        out = fn(params, grads, lr)
        _dict_out(out, params)
        for name in params:
            p, g = params[name].detach(), grads[name].detach()
            if isinstance(out[name], torch.Tensor) and out[name].shape == p.shape and g.abs().min() > 1e-3:
                step = ((p - out[name].detach().to(p.dtype)) / g)
                if torch.allclose(step, step.mean().expand_as(step), atol=1e-4) and \
                        abs(step.mean().item() - lr) > 1e-4 and abs(step.mean().item() + lr) > 1e-4:
                    raise AssertionError(f"new {name!r} is a step of size {step.mean().item():.4g} along the "
                                         f"gradient, not lr = {lr:g}: use the lr argument")
            assert_close(out[name], expected[name], f"new {name!r}", mistakes={
                "params + lr * grads: the step has the wrong sign (uphill)": p + lr * g,
                "-lr * grads alone: return the new parameters, not the step": -lr * g,
                "params - grads: lr is not used": p - g})
        if check_grad:
            fn_params, fn_grads, _ = fn.args
            assert_gradients(out, expected, {**named("params", fn_params), **named("grads", fn_grads)},
                             {**named("params", params), **named("grads", grads)}, "the new params")
    return test


# -- Exercise 2: Adapt(phi, D_train) with a few gradient steps ----------------------------
def reference_adapt(model, params, x, y, lr, steps):
    """The reference: ``steps`` differentiable MSE gradient steps from ``params`` (Chapter 1)."""
    for _ in range(steps):
        loss = F.mse_loss(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def check_adapt(fn):
    """Grade ``fn(model, params, x, y, lr, steps) -> adapted params`` (Chapter 1)."""
    return grade("Exercise 1.2: Adapt(phi, D_train)", fn, [
        Case("one step", _adapt_case(0, 0.01, 1), "loss = MSE of functional_call(model, params, (x,)) against y"),
        Case("three steps", _adapt_case(1, 0.01, 3), "repeat the step `steps` times from the new params"),
        Case("another learning rate, differentiable through every step", _adapt_case(2, 0.05, 2),
             "use lr, and keep the graph of every step (create_graph=True, no .detach())", hidden=True),
    ])


def _variant_adapt(model, params, x, y, lr, steps, second_order=True, reduction="mean"):
    """The reference with one common mistake switched on."""
    for _ in range(steps):
        loss = F.mse_loss(functional_call(model, params, (x,)), y, reduction=reduction)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


def _adapt_problem(seed):
    model = MLP(hidden=(8, 8))
    params = {k: v.requires_grad_() for k, v in init_params(model, seed).items()}
    episode = SinusoidFamily(shots=5, queries=5).sample(1, torch.Generator().manual_seed(seed))
    x, y = episode.support_x[0].requires_grad_(), episode.support_y[0].requires_grad_()
    return model, params, x, y


def _adapt_mistakes(model, params, x, y, lr, steps):
    mistakes = {f"{k} step(s) instead of steps = {steps} (an off-by-one in the loop?)":
                (lambda k=k: _variant_adapt(model, params, x, y, lr, k))
                for k in sorted({1, steps - 1, steps + 1} - {steps}) if k >= 0}
    mistakes["gradient ascent: the step has the wrong sign"] = \
        lambda: _variant_adapt(model, params, x, y, -lr, steps)
    mistakes["the loss summed over points instead of the mean squared error"] = \
        lambda: _variant_adapt(model, params, x, y, lr, steps, reduction="sum")
    return mistakes


def _adapt_case(seed, lr, steps):
    def test(fn):
        model, params, x, y = _adapt_problem(seed)
        expected = reference_adapt(model, params, x, y, lr, steps)
        out = fn(model, params, x, y, lr, steps)
        _dict_out(out, params)
        mistakes = entry_mistakes(_adapt_mistakes(model, params, x, y, lr, steps))
        for name in params:
            assert_close(out[name], expected[name], f"adapted {name!r}", atol=1e-5, mistakes=mistakes(name))
        _, fn_params, fn_x, fn_y, _, _ = fn.args
        assert_gradients(out, expected, {**named("params", fn_params), "x": fn_x, "y": fn_y},
                         {**named("params", params), "x": x, "y": y}, "the adapted params",
                         atol=1e-4, rtol=1e-3, mistakes={
                             "the first-order gradient: the second-order term is missing "
                             "(torch.autograd.grad without create_graph=True?)":
                             lambda: _variant_adapt(model, params, x, y, lr, steps, second_order=False)})
    return test


# -- Exercise 3: the meta-objective --------------------------------------------------------
def reference_meta_objective(model, params, episode, lr, steps):
    """The reference: the mean over tasks of the query loss after Adapt (Chapter 1)."""
    losses = []
    for i in range(episode.batch_size):
        adapted = reference_adapt(model, params, episode.support_x[i], episode.support_y[i], lr, steps)
        losses.append(F.mse_loss(functional_call(model, adapted, (episode.query_x[i],)), episode.query_y[i]))
    return torch.stack(losses).mean()


def check_meta_objective(fn):
    """Grade ``fn(model, params, episode, lr, steps) -> scalar``: mean post-adaptation query loss (Chapter 1)."""
    return grade("Exercise 1.3: the meta-objective", fn, [
        Case("four tasks, one step", _meta_case(0, 4, 1),
             "adapt on each task's support set, then score its query set; average over tasks"),
        Case("the meta-gradient flows through Adapt", _meta_case(1, 3, 1),
             "keep the graph of the inner step (create_graph=True)"),
        Case("eight tasks, two steps", _meta_case(2, 8, 2),
             "use `steps` inner steps for every one of the episode's tasks", hidden=True),
    ])


def _variant_meta(model, params, episode, lr, steps, fit="support", score="query", tasks=None,
                  reduce="mean", second_order=True):
    losses = []
    for i in range(episode.batch_size if tasks is None else tasks):
        fx, fy = (episode.support_x[i], episode.support_y[i]) if fit == "support" else \
            (episode.query_x[i], episode.query_y[i])
        sx, sy = (episode.query_x[i], episode.query_y[i]) if score == "query" else \
            (episode.support_x[i], episode.support_y[i])
        adapted = _variant_adapt(model, params, fx, fy, lr, steps, second_order=second_order)
        losses.append(F.mse_loss(functional_call(model, adapted, (sx,)), sy))
    stacked = torch.stack(losses)
    return stacked.mean() if reduce == "mean" else stacked.sum()


def _meta_case(seed, batch, steps):
    def test(fn):
        model = MLP(hidden=(8, 8))
        params = {k: v.requires_grad_() for k, v in init_params(model, seed).items()}
        episode = SinusoidFamily(shots=5, queries=7).sample(batch, torch.Generator().manual_seed(seed))
        expected = reference_meta_objective(model, params, episode, 0.02, steps)
        out = fn(model, params, episode, 0.02, steps)
        out = as_scalar(out)
        v = dict(model=model, params=params, episode=episode, lr=0.02)
        assert_close(out, expected, "meta-objective", atol=1e-5, mistakes={
            "the loss on the support set: score the query set after adapting on the support set":
                lambda: _variant_meta(**v, steps=steps, score="support"),
            "adapting on the query set instead of the support set":
                lambda: _variant_meta(**v, steps=steps, fit="query"),
            "the query loss without adapting first (zero inner steps)":
                lambda: _variant_meta(**v, steps=0),
            f"{steps + 1} inner steps instead of steps = {steps} (an off-by-one?)":
                lambda: _variant_meta(**v, steps=steps + 1),
            "the sum over tasks instead of the mean": lambda: _variant_meta(**v, steps=steps, reduce="sum"),
            "the first task only: loop over all episode.batch_size tasks":
                lambda: _variant_meta(**v, steps=steps, tasks=1)})
        fn_params = fn.args[1]
        assert_gradients(out, expected, named("params", fn_params), named("params", params),
                         "the meta-objective", atol=1e-5, rtol=1e-3, mistakes={
                             "the first-order meta-gradient: the second-order term is missing "
                             "(create_graph=True in the inner step?)":
                             lambda: _variant_meta(**v, steps=steps, second_order=False)})
    return test


GRADERS = chapter_graders(globals())


# -- Prediction questions ---------------------------------------------------------------------
PREDICT_ONE_STEP = Prediction(
    key="one-step",
    question="After ONE gradient step on the new task's ten support points (each start with its own best "
             "step size), which starting point has the lowest query error?",
    choices=("the random initialisation", "the network pre-trained on all tasks jointly",
             "the MAML initialisation"),
    answer="c",
    hint="which start was trained for the error after exactly one step?",
    explanation="MAML's meta-objective is the query error after one inner step, so its start is the one from "
                "which a single step goes furthest (Finn et al. 2017 show the same on sinusoids).")

PREDICT_TEN_STEPS = Prediction(
    key="ten-steps",
    question="Give every start ten gradient steps on the new task's support points instead of one (the "
             "baselines each with their own best step size, MAML with the step it was trained for). Does the "
             "pre-trained network catch up with MAML?",
    choices=("yes: with ten steps pre-training ends below MAML",
             "partly: MAML stays ahead, but with more than half the pre-trained network's error",
             "no: MAML stays ahead, with less than half the pre-trained network's error"),
    answer="c",
    hint="MAML was meta-trained for one step only; does its start lose its advantage when steps are added?",
    explanation="More steps help every start, but MAML's start is placed where gradient steps on a task go "
                "furthest; the MAML paper finds the same on sinusoids: it keeps improving past the one step it "
                "was trained for, and the pre-trained network does not catch up.")

PREDICTIONS = chapter_predictions(globals())
