"""Graders for Chapter 4, "Inductive biases"."""
from __future__ import annotations

import math

import torch

from .core import Case, as_scalar, assert_close, assert_gradients, chapter_graders, grade, named
from .predictions import Prediction, chapter_predictions

__all__ = ["check_metasgd_step", "check_class_aggregation", "check_gaussian_nll"]


def _tensors(seed, shapes):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}


# -- Exercise 1: the Meta-SGD update ------------------------------------------------------
def reference_metasgd_step(params, grads, rates):
    """The reference: ``params - rates * grads``, entry by entry (Chapter 4)."""
    return {name: params[name] - rates[name] * grads[name] for name in params}


def check_metasgd_step(fn):
    """Grade ``fn(params, grads, rates) -> new params``: theta = phi - alpha ⊙ g (Chapter 4)."""
    return grade("Exercise 4.1: the Meta-SGD update", fn, [
        Case("a weight matrix and a bias", _metasgd_case(0, {"w": (3, 2), "b": (3,)}),
             "multiply each gradient entry by its own rate: rates[name] * grads[name]"),
        Case("three tensors, some rates negative", _metasgd_case(5, {"a": (4, 4), "b": (4,), "c": (2, 4)}),
             "a negative rate steps uphill on purpose: do not take its absolute value", hidden=True),
        Case("the rates are learned: gradients reach them", _metasgd_case(7, {"w": (2, 3), "b": (2,)}, True),
             "Meta-SGD trains the rates by the meta-gradient: no .detach(), .data or torch.no_grad()"),
    ])


def _metasgd_case(seed, shapes, check_grad=False):
    def test(fn):
        params, grads = _tensors(seed, shapes), _tensors(seed + 1, shapes)
        # Some rates negative: Meta-SGD learns a direction as well as a size.
        rates = {k: 0.1 * v for k, v in _tensors(seed + 2, shapes).items()}
        for d in (params, grads, rates):
            for v in d.values():
                v.requires_grad_(check_grad)
        expected = reference_metasgd_step(params, grads, rates)
        out = fn(params, grads, rates)
        if not isinstance(out, dict) or set(out) != set(params):
            raise AssertionError("return a dict with the same names as params"
                                 + (f", got {type(out).__name__}" if not isinstance(out, dict) else
                                    f", got the names {sorted(map(str, out))}"))
        for name in params:
            p, g, a = params[name].detach(), grads[name].detach(), rates[name].detach()
            assert_close(out[name], expected[name], f"new {name!r}", mistakes={
                "params + rates * grads: the step has the wrong sign": p + a * g,
                "one scalar rate (rates.mean()) for every entry: multiply entry by entry": p - a.mean() * g,
                "|rates|: a negative rate steps uphill on purpose, keep its sign": p - a.abs() * g,
                "params - grads: the rates are not used": p - g,
                "-rates * grads alone: return the new parameters, not the step": -a * g,
                "params - rates: the gradient is not used": p - a})
        if check_grad:
            fp, fg, fr = fn.args
            assert_gradients(out, expected, {**named("rates", fr), **named("params", fp), **named("grads", fg)},
                             {**named("rates", rates), **named("params", params), **named("grads", grads)},
                             "the new params")
    return test


# -- Exercise 2: the CNP's per-class aggregation ------------------------------------------
def reference_class_aggregation(r, labels, ways):
    """The reference: per-class mean of ``r``, zeros for an empty class (Chapter 4)."""
    onehot = torch.nn.functional.one_hot(labels, ways).to(r.dtype)        # [M, N]
    return onehot.T @ r / onehot.sum(0).clamp(min=1)[:, None]


def check_class_aggregation(fn):
    """Grade ``fn(r [M, D], labels [M], ways) -> [ways, D]``: per-class mean of r (Chapter 4)."""
    return grade("Exercise 4.2: a CNP's aggregation step", fn, [
        Case("5-way 1-shot", _aggregation_case(0, 1, 5, 4), "row c is the mean of r over the examples labelled c"),
        Case("3-way 4-shot, shuffled labels", _aggregation_case(1, 4, 3, 6),
             "a mean, not a sum: divide by the number of examples of each class"),
        Case("a class with no examples gives zeros", _aggregation_case(2, 2, 4, 3, drop_last=True),
             "guard the division: clamp the counts to at least 1", hidden=True),
    ])


def _aggregation_case(seed, shots, ways, dim, drop_last=False):
    def test(fn):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(ways).repeat_interleave(shots)
        labels = labels[torch.randperm(labels.numel(), generator=g)]
        if drop_last:  # one class has no example: its representation must be all zeros
            labels = labels[labels != ways - 1]
        r = torch.randn(labels.numel(), dim, generator=g).requires_grad_()
        expected = reference_class_aggregation(r, labels, ways)
        out = fn(r, labels, ways)
        onehot = torch.nn.functional.one_hot(labels, ways).to(r.dtype)
        counts = onehot.sum(0)
        rd = r.detach()
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (dim, ways) and dim != ways:
            raise AssertionError(f"class representations have shape {(dim, ways)}, expected {(ways, dim)}: "
                                 "one row per class (transpose?)")
        assert_close(out, expected, "class representations", mistakes={
            "the per-class sum: a mean divides by the number of examples of each class": onehot.T @ rd,
            "the mean over all examples, whatever their label": rd.mean(0, keepdim=True).expand(ways, -1),
            "the sum divided by count + 1 (an off-by-one in the counts?)": onehot.T @ rd / (counts + 1)[:, None],
            "classes taken as blocks of consecutive rows: the labels are shuffled, group by label":
                (lambda: rd.reshape(ways, -1, dim).mean(1) if rd.shape[0] % ways == 0 else None)})
        assert_gradients(out, expected, {"r": fn.args[0]}, {"r": r}, "the class representations")
    return test


# -- Exercise 3: the Gaussian negative log-likelihood ------------------------------------
def reference_gaussian_nll(mean, variance, y):
    """The reference: the mean Gaussian negative log-likelihood (Chapter 4)."""
    return (0.5 * torch.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance)).mean()


def check_gaussian_nll(fn):
    """Grade ``fn(mean, variance, y) -> scalar``: mean Gaussian NLL, the CNP's meta-loss (Chapter 4)."""
    return grade("Exercise 4.3: the neural process's loss", fn, [
        Case("ten points", _nll_case(0, (10, 1)),
             "-log N(y; mu, s2) = 0.5 log(2 pi s2) + (y - mu)^2 / (2 s2), averaged"),
        Case("gradient reaches the variance", _nll_case(1, (6, 2)),
             "use the variance argument as a variance (not a standard deviation), with tensor operations"),
        Case("a batch of tasks", _nll_case(2, (3, 8, 1)), "average over every entry, whatever the shape", hidden=True),
    ])


def _nll_case(seed, shape):
    def test(fn):
        g = torch.Generator().manual_seed(seed)
        mean, y = torch.randn(*shape, generator=g).requires_grad_(), torch.randn(*shape, generator=g).requires_grad_()
        variance = (0.05 + torch.rand(*shape, generator=g) * 2).requires_grad_()
        expected = reference_gaussian_nll(mean, variance, y)
        out = fn(mean, variance, y)
        out = as_scalar(out)
        m, v, t = mean.detach(), variance.detach(), y.detach()
        sq = (t - m) ** 2
        n = m.numel()
        assert_close(out, expected, "negative log-likelihood", mistakes={
            "the loss without its 0.5 log(2 pi variance) term": (sq / (2 * v)).mean(),
            "the variance read as a standard deviation: `variance` already holds sigma^2, do not square it":
                reference_gaussian_nll(m, v ** 2, t),
            "sigma = sqrt(variance) used in place of the variance (std vs variance)":
                reference_gaussian_nll(m, v.sqrt(), t),
            "log(variance) without the 2 pi inside the log": (0.5 * torch.log(v) + sq / (2 * v)).mean(),
            "the sum over entries instead of the mean": reference_gaussian_nll(m, v, t) * n,
            "the log-likelihood (the sign is flipped): return its negative": -reference_gaussian_nll(m, v, t),
            "log(2 pi variance) without the factor 1/2": (torch.log(2 * math.pi * v) + sq / (2 * v)).mean(),
            "(y - mean)^2 / variance without the factor 1/2": (0.5 * torch.log(2 * math.pi * v) + sq / v).mean()})
        fm, fv, fy = fn.args
        assert_gradients(out, expected, {"variance": fv, "mean": fm, "y": fy},
                         {"variance": variance, "mean": mean, "y": y}, "the loss", mistakes={
                             "the loss without its log term: it falls for ever as the variance grows":
                             lambda: ((y - mean) ** 2 / (2 * variance)).mean()})
    return test


GRADERS = chapter_graders(globals())


# -- Prediction questions ---------------------------------------------------------------------
PREDICT_METASGD_SIZE = Prediction(
    key="metasgd-size",
    question="Meta-SGD meta-learns MAML's initialisation and, besides it, one inner step size for every weight. "
             "On the same network, how many times as many meta-learned numbers as MAML does it have? "
             "Answer with a number.",
    answer=2.0,
    tolerance=0.25,
    hint="count: one initial value per weight for MAML; what does Meta-SGD add for each weight?",
    explanation="Each weight gets an initial value and a step size, so Meta-SGD has exactly twice MAML's "
                "meta-parameters (Li et al. 2017): a richer bias at the cost of twice the memory for phi.")

PREDICT_LINES = Prediction(
    key="lines",
    question="Learners meta-trained on sinusoids are tested on straight lines y = a x + b (ten support points). "
             "Which has the lowest query error on the lines?",
    choices=("MAML, meta-trained on sinusoids",
             "the CNP, meta-trained on sinusoids",
             "the same network as MAML from a random initialisation, with the same inner step",
             "least squares on (x, 1), never meta-trained"),
    answer="d",
    hint="a bias is good only for the tasks it fits: whose bias is 'the answer is a line'?",
    explanation="Least squares assumes exactly a line and fits ten points of one almost perfectly; the learned "
                "biases suit sinusoids, not lines. No Free Lunch: meta-learning moves the choice of bias to the "
                "task distribution, it does not remove it.")

PREDICTIONS = chapter_predictions(globals())
