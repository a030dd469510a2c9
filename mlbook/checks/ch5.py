"""Graders for Chapter 5, "Episodic training"."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Case, assert_close, grade

__all__ = ["check_class_prototypes", "check_prototypical_loss", "check_accuracy_ci"]


def _embeddings(seed, ways, shots, dim):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(ways).repeat_interleave(shots)
    order = torch.randperm(ways * shots, generator=g)            # classes interleaved, not in blocks
    return z[order], labels[order]


# -- Exercise 1: class prototypes ----------------------------------------------------------
def reference_class_prototypes(embeddings, labels, ways):
    return torch.stack([embeddings[labels == n].mean(0) for n in range(ways)])


def _proto_case(seed, ways, shots, dim):
    def test(fn):
        z, y = _embeddings(seed, ways, shots, dim)
        out = fn(z.clone(), y.clone(), ways)
        assert_close(out, reference_class_prototypes(z, y, ways), "prototypes", atol=1e-8)
    return test


def check_class_prototypes(fn):
    """Grade ``fn(embeddings [S, D], labels [S], ways) -> [ways, D]`` class means (Chapter 5)."""
    return grade("Exercise 5.1: class prototypes", fn, [
        Case("5-way 1-shot: a prototype is the one support embedding", _proto_case(0, 5, 1, 4),
             "row n of the result is the embedding whose label is n"),
        Case("3-way 4-shot, shuffled labels", _proto_case(1, 3, 4, 6),
             "average the embeddings of each class (labels are not in blocks)"),
        Case("20-way 5-shot", _proto_case(2, 20, 5, 8), "mean, not sum", hidden=True),
    ])


# -- Exercise 2: the prototypical loss -----------------------------------------------------
def reference_prototypical_loss(query, query_y, prototypes):
    distances = ((query[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)      # [M, N]
    return F.cross_entropy(-distances, query_y)


def _loss_case(seed, ways, queries, dim, check_grad=False):
    def test(fn):
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(ways, dim, generator=g, dtype=torch.float64)
        query_y = torch.arange(ways).repeat(queries)
        query = (protos[query_y] + 0.7 * torch.randn(len(query_y), dim, generator=g, dtype=torch.float64))
        query.requires_grad_(check_grad)
        out = fn(query, query_y, protos)
        expected = reference_prototypical_loss(query, query_y, protos)
        assert_close(out, expected, "loss", atol=1e-8)
        if check_grad:
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                raise AssertionError("the loss carries no gradient to the query embeddings: do not detach")
            assert_close(torch.autograd.grad(out, query)[0], torch.autograd.grad(expected, query)[0],
                         "gradient", atol=1e-8)
    return test


def check_prototypical_loss(fn):
    """Grade ``fn(query [M, D], query_y [M], prototypes [N, D]) -> scalar`` (Chapter 5)."""
    return grade("Exercise 5.2: the prototypical loss", fn, [
        Case("5 classes, 3 queries each", _loss_case(0, 5, 3, 4),
             "logits are minus the SQUARED Euclidean distances; then cross-entropy"),
        Case("gradients flow to the query embeddings", _loss_case(1, 4, 2, 3, check_grad=True),
             "compute with tensor ops on the inputs"),
        Case("20 classes", _loss_case(2, 20, 1, 8), "average over queries", hidden=True),
    ])


# -- Exercise 3: accuracy with a 95% confidence interval -----------------------------------
def reference_accuracy_ci(accuracies):
    accuracies = torch.as_tensor(accuracies, dtype=torch.float64)
    return accuracies.mean().item(), 1.96 * accuracies.std(unbiased=True).item() / math.sqrt(accuracies.numel())


def _ci_case(values):
    def test(fn):
        out = fn(torch.tensor(values, dtype=torch.float64))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"return a tuple (mean, half_width), got {type(out).__name__}")
        mean, half = (float(v) for v in out)
        want_mean, want_half = reference_accuracy_ci(values)
        if not math.isclose(mean, want_mean, rel_tol=1e-6, abs_tol=1e-9):
            raise AssertionError(f"mean is {mean:.6f}, expected {want_mean:.6f}")
        if not math.isclose(half, want_half, rel_tol=1e-6, abs_tol=1e-9):
            raise AssertionError(f"half-width is {half:.6f}, expected {want_half:.6f}")
    return test


def check_accuracy_ci(fn):
    """Grade ``fn(accuracies [E]) -> (mean, 95% half-width)`` (Chapter 5)."""
    return grade("Exercise 5.3: accuracy with a 95% confidence interval", fn, [
        Case("five episodes", _ci_case([0.8, 0.6, 1.0, 0.8, 0.4]),
             "half-width = 1.96 * sample std (divide by E - 1) / sqrt(E)"),
        Case("600 episodes", _ci_case(torch.linspace(0.5, 1.0, 600).tolist()), "divide by sqrt(E)"),
        Case("two episodes", _ci_case([0.25, 0.75]), "the sample std divides by E - 1", hidden=True),
    ])


# -- stubs and plausible wrong answers, used by the tests ---------------------------------
def _stub(*args):
    raise NotImplementedError


def _wrong_proto_sum(embeddings, labels, ways):
    return torch.stack([embeddings[labels == n].sum(0) for n in range(ways)])


def _wrong_proto_blocks(embeddings, labels, ways):
    return embeddings.reshape(ways, -1, embeddings.shape[-1]).mean(1)   # assumes sorted labels


def _wrong_loss_unsquared(query, query_y, prototypes):
    return F.cross_entropy(-torch.cdist(query, prototypes), query_y)


def _wrong_loss_sign(query, query_y, prototypes):
    return F.cross_entropy(((query[:, None] - prototypes[None]) ** 2).sum(-1), query_y)


def _wrong_ci_population(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.96 * a.std(unbiased=False).item() / math.sqrt(a.numel())


def _wrong_ci_no_sqrt(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.96 * a.std().item()


GRADERS = {
    "check_class_prototypes": (check_class_prototypes, reference_class_prototypes, _stub,
                               [_wrong_proto_sum, _wrong_proto_blocks]),
    "check_prototypical_loss": (check_prototypical_loss, reference_prototypical_loss, _stub,
                                [_wrong_loss_unsquared, _wrong_loss_sign]),
    "check_accuracy_ci": (check_accuracy_ci, reference_accuracy_ci, _stub, [_wrong_ci_population, _wrong_ci_no_sqrt]),
}
