"""Graders for Chapter 5, "Episodic training"."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Case, as_scalar, assert_close, assert_gradients, chapter_graders, grade
from .predictions import Prediction, chapter_predictions

__all__ = ["check_class_prototypes", "check_prototypical_loss", "check_accuracy_ci"]


def _embeddings(seed, ways, shots, dim):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(ways).repeat_interleave(shots)
    order = torch.randperm(ways * shots, generator=g)            # classes interleaved, not in blocks
    return z[order], labels[order]


# -- Exercise 1: class prototypes ----------------------------------------------------------
def reference_class_prototypes(embeddings, labels, ways):
    """The reference: the mean embedding of each class (Chapter 5)."""
    return torch.stack([embeddings[labels == n].mean(0) for n in range(ways)])


def check_class_prototypes(fn):
    """Grade ``fn(embeddings [S, D], labels [S], ways) -> [ways, D]`` class means (Chapter 5)."""
    return grade("Exercise 5.1: class prototypes", fn, [
        Case("5-way 1-shot: a prototype is the one support embedding", _proto_case(0, 5, 1, 4),
             "row n of the result is the embedding whose label is n"),
        Case("3-way 4-shot, shuffled labels", _proto_case(1, 3, 4, 6),
             "average the embeddings of each class (labels are not in blocks), with tensor operations so that "
             "the encoder gets a gradient"),
        Case("20-way 5-shot", _proto_case(2, 20, 5, 8), "mean, not sum", hidden=True),
    ])


def _proto_case(seed, ways, shots, dim):
    def test(fn):
        z, y = _embeddings(seed, ways, shots, dim)
        z.requires_grad_()
        expected = reference_class_prototypes(z, y, ways)
        out = fn(z, y, ways)
        zd = z.detach()
        onehot = F.one_hot(y, ways).to(zd.dtype)
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (dim, ways) and dim != ways:
            raise AssertionError(f"prototypes have shape {(dim, ways)}, expected {(ways, dim)}: one row per "
                                 "class (transpose?)")
        assert_close(out, expected, "prototypes", atol=1e-8, mistakes={
            "the per-class sum: a prototype is the mean of its class's embeddings": onehot.T @ zd,
            "classes taken as blocks of consecutive rows: the labels are shuffled, group by label":
                zd.reshape(ways, -1, dim).mean(1),
            "the mean of all embeddings, whatever their label": zd.mean(0, keepdim=True).expand(ways, -1),
            "the first example of each class only: average all K of them":
                torch.stack([zd[y == n][0] for n in range(ways)]),
            "the sum divided by count + 1 (an off-by-one in the counts?)":
                onehot.T @ zd / (onehot.sum(0) + 1)[:, None]})
        assert_gradients(out, expected, {"embeddings": fn.args[0]}, {"embeddings": z}, "the prototypes",
                         atol=1e-8)
    return test


# -- Exercise 2: the prototypical loss -----------------------------------------------------
def reference_prototypical_loss(query, query_y, prototypes):
    """The reference: cross-entropy of minus squared distances (Chapter 5)."""
    distances = ((query[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)      # [M, N]
    return F.cross_entropy(-distances, query_y)


def check_prototypical_loss(fn):
    """Grade ``fn(query [M, D], query_y [M], prototypes [N, D]) -> scalar`` (Chapter 5)."""
    return grade("Exercise 5.2: the prototypical loss", fn, [
        Case("5 classes, 3 queries each", _loss_case(0, ways=5, queries=3, dim=4),
             "logits are minus the SQUARED Euclidean distances; then cross-entropy"),
        Case("gradients flow to the queries and the prototypes", _loss_case(1, ways=4, queries=2, dim=3),
             "compute with tensor ops on the inputs; do not detach the prototypes, the encoder learns through them"),
        Case("20 classes", _loss_case(2, ways=20, queries=1, dim=8), "average over queries", hidden=True),
    ])


def _loss_case(seed, ways, queries, dim):
    def test(fn):
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(ways, dim, generator=g, dtype=torch.float64)
        query_y = torch.arange(ways).repeat(queries)
        query = (protos[query_y] + 0.7 * torch.randn(len(query_y), dim, generator=g, dtype=torch.float64))
        query.requires_grad_()
        protos.requires_grad_()
        expected = reference_prototypical_loss(query, query_y, protos)
        out = fn(query, query_y, protos)
        out = as_scalar(out)
        q, p = query.detach(), protos.detach()
        d2 = ((q[:, None] - p[None]) ** 2).sum(-1)
        assert_close(out, expected, "loss", atol=1e-8, mistakes={
            "minus the Euclidean distance, not squared: square it": F.cross_entropy(-d2.sqrt(), query_y),
            "+distances as logits: the sign is wrong, nearer must mean larger": F.cross_entropy(d2, query_y),
            "the sum over queries instead of the mean": F.cross_entropy(-d2, query_y, reduction="sum"),
            "the squared distance averaged over dimensions: sum over them": F.cross_entropy(-d2 / dim, query_y),
            "half the squared distance: the book's logits are -||q - c||^2": F.cross_entropy(-d2 / 2, query_y),
            "nll_loss on raw logits: use cross_entropy, which applies log_softmax": F.nll_loss(-d2, query_y)})
        fq, _, fp = fn.args
        assert_gradients(out, expected, {"prototypes": fp, "query": fq}, {"prototypes": protos, "query": query},
                         "the loss", atol=1e-8)
    return test


# -- Exercise 3: accuracy with a 95% confidence interval -----------------------------------
def reference_accuracy_ci(accuracies):
    """The reference: mean accuracy and 1.96 * sample std / sqrt(E) (Chapter 5)."""
    accuracies = torch.as_tensor(accuracies, dtype=torch.float64)
    return accuracies.mean().item(), 1.96 * accuracies.std(unbiased=True).item() / math.sqrt(accuracies.numel())


def check_accuracy_ci(fn):
    """Grade ``fn(accuracies [E]) -> (mean, 95% half-width)`` (Chapter 5)."""
    return grade("Exercise 5.3: accuracy with a 95% confidence interval", fn, [
        Case("five episodes", _ci_case([0.8, 0.6, 1.0, 0.8, 0.4]),
             "half-width = 1.96 * sample std (divide by E - 1) / sqrt(E)"),
        Case("600 episodes", _ci_case(torch.linspace(0.5, 1.0, 600).tolist()), "divide by sqrt(E)"),
        Case("two episodes", _ci_case([0.25, 0.75]), "the sample std divides by E - 1", hidden=True),
        Case("float32 accuracies", _ci_case([0.9, 0.7, 0.75, 0.6, 0.85, 0.8], torch.float32),
             "accept any float tensor; compute in float64 if you like", hidden=True),
        Case("every episode the same", _ci_case([0.6] * 4), "no spread, no interval: the half-width is 0", hidden=True),
    ])


def _number(v, what):
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise AssertionError(f"{what} should be one number, got a tensor of shape {tuple(v.shape)}")
        return float(v.detach())
    if isinstance(v, (tuple, list)):
        raise AssertionError(f"{what} should be one number, got a {type(v).__name__}: return the half-width "
                             "(the interval is mean ± half-width), not the interval")
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise AssertionError(f"{what} should be a number, got {type(v).__name__}")
    return float(v)


def _ci_case(values, dtype=torch.float64):
    def test(fn):
        data = torch.tensor(values, dtype=dtype)
        want_mean, want_half = reference_accuracy_ci(data)
        out = fn(data)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise AssertionError(f"return a tuple (mean, half_width), got {type(out).__name__}")
        mean, half = _number(out[0], "the mean"), _number(out[1], "the half-width")
        tol = dict(rel_tol=1e-6 if dtype == torch.float64 else 1e-5, abs_tol=1e-9)
        a = data.double()
        e, s, s_pop = a.numel(), a.std(unbiased=True).item(), a.std(unbiased=False).item()
        if not math.isclose(mean, want_mean, **tol):
            named = {"the sum: divide by the number of episodes": a.sum().item(),
                     "the median: the interval is around the mean": a.median().item()}
            why = next((f": it matches {d}" for d, v in named.items() if math.isclose(mean, v, **tol)), "")
            raise AssertionError(f"the mean is {mean:.6f}, expected {want_mean:.6f}{why}")
        if not math.isclose(half, want_half, **tol):
            named = {
                "the population std (dividing by E): the sample std divides by E - 1": 1.96 * s_pop / math.sqrt(e),
                "1.96 s without dividing by sqrt(E): that is the spread of one episode, not of the mean": 1.96 * s,
                "the variance s^2 where the std s belongs": 1.96 * s * s / math.sqrt(e),
                "s / sqrt(E) without the 1.96 of a 95% interval": s / math.sqrt(e),
                "a 90% interval (1.645); a 95% interval uses 1.96": 1.645 * s / math.sqrt(e),
                "dividing by E instead of sqrt(E)": 1.96 * s / e,
                "the full width 2 * 1.96 s / sqrt(E): return half of it": 2 * 1.96 * s / math.sqrt(e),
                "dividing by sqrt(E - 1) instead of sqrt(E)": 1.96 * s / math.sqrt(e - 1)}
            why = next((f": it matches {d}" for d, v in named.items()
                        if not math.isclose(v, want_half, **tol) and math.isclose(half, v, **tol)), "")
            raise AssertionError(f"the half-width is {half:.6f}, expected {want_half:.6f}{why}")
    return test


GRADERS = chapter_graders(globals())


# -- Prediction questions ---------------------------------------------------------------------
PREDICT_TRAIN_WAYS = Prediction(
    key="train-ways",
    question=("Two ProtoNets are tested on 5-way 1-shot episodes: one trained on 5-way 1-shot episodes, "
              "one trained on 20-way 1-shot episodes (fewer episodes per step, the same number of images). "
              "The one trained on 20-way episodes will score"),
    choices=("clearly worse: its training episodes do not match the test",
             "about as well or better",
             "near chance: it has never seen a 5-way episode"),
    answer="b",
    hint="A prototype classifier works for any number of classes. Which episodes demand finer distinctions?",
    explanation=("Telling 20 characters apart demands a finer embedding than telling 5 apart, and a "
                 "ProtoNet's embedding does not depend on the number of ways; Snell et al. (2017) found "
                 "that training with more ways than the test helps."),
)

PREDICT_PRETRAINING = Prediction(
    key="pretraining",
    question=("A Conv4 is trained as an ordinary classifier of all the training characters (cross-entropy "
              "on mini-batches of images, never an episode), on as many images as one ProtoNet run. Its "
              "embedding then classifies the 5-way 1-shot test episodes by nearest prototype. Its accuracy "
              "will be"),
    choices=("near chance: it never practised comparing a query with a support set",
             "far above chance, but behind the episodically trained ProtoNet",
             "level with the episodically trained ProtoNet, or ahead of it"),
    answer="b",
    hint=("What must a classifier of many characters learn about strokes and shapes? And how often does "
          "it see each character in 24,000 images?"),
    explanation=("To tell many training characters apart, a classifier learns features that also separate "
                 "new characters, and a nearest-prototype rule needs nothing more, so it is far above "
                 "chance. On this small budget it stays behind ProtoNet; Chen et al. (2019) and Tian et al. "
                 "(2020), training both to convergence, found such embeddings competitive with or better "
                 "than meta-learned ones."),
)

PREDICTIONS = chapter_predictions(globals())
