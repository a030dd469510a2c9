"""Graders for Chapter 2, "Task distributions"."""
from __future__ import annotations

import math

import torch

from .core import Case, grade

__all__ = ["check_episode", "check_alphabet_split", "check_sinusoid_task"]


def _images(classes=10, examples=8, size=6):
    """Each image carries its class id in pixel (0, 0) and its example id in pixel (0, 1)."""
    images = torch.zeros(classes, examples, size, size)
    images[:, :, 0, 0] = torch.arange(classes, dtype=torch.float)[:, None]
    images[:, :, 0, 1] = torch.arange(examples, dtype=torch.float)[None, :]
    return images


# -- Exercise 1: one N-way K-shot episode with label remapping -----------------------------
def reference_episode(images, ways, shots, queries, generator):
    """One episode: ``(support_x [N*K, H, W], support_y [N*K], query_x [N*Q, H, W], query_y [N*Q])``."""
    classes = torch.randperm(images.shape[0], generator=generator)[:ways]
    support_x, support_y, query_x, query_y = [], [], [], []
    for label, c in enumerate(classes.tolist()):
        picks = torch.randperm(images.shape[1], generator=generator)[:shots + queries]
        support_x.append(images[c, picks[:shots]])
        query_x.append(images[c, picks[shots:]])
        support_y += [label] * shots
        query_y += [label] * queries
    return torch.cat(support_x), torch.tensor(support_y), torch.cat(query_x), torch.tensor(query_y)


def _episode_case(ways, shots, queries, seed, repeats=20):
    def test(fn):
        images = _images()
        generator = torch.Generator().manual_seed(seed)
        seen_sets = set()
        for _ in range(repeats):
            out = fn(images, ways, shots, queries, generator)
            if not isinstance(out, (tuple, list)) or len(out) != 4:
                raise AssertionError("return a tuple (support_x, support_y, query_x, query_y)")
            sx, sy, qx, qy = out
            for name, t in zip(("support_x", "support_y", "query_x", "query_y"), out):
                if not isinstance(t, torch.Tensor):
                    raise AssertionError(f"{name} should be a tensor, got {type(t).__name__}")
            if tuple(sx.shape) != (ways * shots, 6, 6) or tuple(qx.shape) != (ways * queries, 6, 6):
                raise AssertionError(f"support_x has shape {tuple(sx.shape)} and query_x {tuple(qx.shape)}; "
                                     f"expected {(ways * shots, 6, 6)} and {(ways * queries, 6, 6)}")
            if tuple(sy.shape) != (ways * shots,) or tuple(qy.shape) != (ways * queries,):
                raise AssertionError(f"support_y has shape {tuple(sy.shape)} and query_y {tuple(qy.shape)}")
            if sorted(set(sy.tolist())) != list(range(ways)):
                raise AssertionError(f"support labels are {sorted(set(sy.tolist()))}; they must be "
                                     f"0..{ways - 1}, not the original class numbers")
            if sy.long().bincount(minlength=ways).tolist() != [shots] * ways or \
                    qy.long().bincount(minlength=ways).tolist() != [queries] * ways:
                raise AssertionError(f"every label needs {shots} support and {queries} query examples")
            cls_s, ex_s = sx[:, 0, 0].long(), sx[:, 0, 1].long()
            cls_q, ex_q = qx[:, 0, 0].long(), qx[:, 0, 1].long()
            mapping = {}
            for c, y in zip(cls_s.tolist() + cls_q.tolist(), sy.tolist() + qy.tolist()):
                if mapping.setdefault(y, c) != c:
                    raise AssertionError("one label stands for two different classes: a label must "
                                         "mean the same class in the support and the query set")
            if len(set(mapping.values())) != ways:
                raise AssertionError("two labels stand for the same class: pick N *distinct* classes")
            for y in range(ways):
                s = ex_s[sy == y].tolist()
                q = ex_q[qy == y].tolist()
                if len(set(s + q)) != len(s) + len(q):
                    raise AssertionError("an example appears twice (support and query must be disjoint "
                                         "and drawn without replacement)")
            seen_sets.add(tuple(sorted(mapping.values())))
        if ways < images.shape[0] and len(seen_sets) < 2:
            raise AssertionError("every call gave the same classes: draw them at random with the generator")
    return test


def check_episode(fn):
    """Grade ``fn(images, ways, shots, queries, generator) -> (sx, sy, qx, qy)`` (Chapter 2)."""
    return grade("Exercise 2.1: sample an N-way K-shot episode", fn, [
        Case("5-way 1-shot, 3 queries", _episode_case(5, 1, 3, 0),
             "pick N distinct classes, then K + Q distinct examples of each"),
        Case("labels 0..N-1, the same in support and query", _episode_case(3, 2, 2, 1),
             "label the i-th chosen class i, in both sets"),
        Case("10-way 4-shot uses every class", _episode_case(10, 4, 4, 2, repeats=5),
             "K + Q = 8 uses every example of a class: sample without replacement", hidden=True),
    ])


# -- Exercise 2: split classes by alphabet ------------------------------------------------
def reference_alphabet_split(alphabets, test_alphabets):
    """Class indices ``(train, test)``: test classes are those whose alphabet is in ``test_alphabets``."""
    test_set = set(test_alphabets)
    train = [c for c, a in enumerate(alphabets) if a not in test_set]
    test = [c for c, a in enumerate(alphabets) if a in test_set]
    return train, test


def _split_case(alphabets, test_alphabets):
    def test(fn):
        out = fn(list(alphabets), list(test_alphabets))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AssertionError("return a pair (train_indices, test_indices)")
        train, test_ = ([int(i) for i in (part.tolist() if isinstance(part, torch.Tensor) else part)]
                        for part in out)
        want_train, want_test = reference_alphabet_split(alphabets, test_alphabets)
        if sorted(train) != want_train or sorted(test_) != want_test:
            leaked = {alphabets[i] for i in train} & {alphabets[i] for i in test_}
            if leaked:
                raise AssertionError(f"alphabets {sorted(leaked)} have classes in both splits")
            raise AssertionError(f"expected {len(want_train)} train and {len(want_test)} test classes "
                                 f"(every class in exactly one split), got {len(train)} and {len(test_)}")
    return test


_ALPHABETS = ["Greek"] * 4 + ["Latin"] * 3 + ["Korean"] * 5 + ["Greek"] * 2 + ["Tagalog"] * 3


def check_alphabet_split(fn):
    """Grade ``fn(alphabets, test_alphabets) -> (train_indices, test_indices)`` (Chapter 2)."""
    return grade("Exercise 2.2: split classes by alphabet", fn, [
        Case("one test alphabet", _split_case(_ALPHABETS[:12], ["Latin"]),
             "a class goes to test when its alphabet is a test alphabet"),
        Case("an alphabet whose classes are not contiguous", _split_case(_ALPHABETS, ["Greek", "Tagalog"]),
             "look at each class's alphabet; do not assume blocks"),
        Case("every class in exactly one split", _split_case(["a", "b"] * 6, ["b"]), "", hidden=True),
    ])


# -- Exercise 3: a sinusoid task sampler ---------------------------------------------------
def reference_sinusoid_task(points, generator):
    """One MAML sinusoid task: ``x [points, 1]`` ~ U[-5, 5], ``y = A sin(x - phase)``."""
    amplitude = 0.1 + 4.9 * torch.rand((), generator=generator)
    phase = math.pi * torch.rand((), generator=generator)
    x = -5 + 10 * torch.rand(points, 1, generator=generator)
    return x, amplitude * torch.sin(x - phase)


def _fit(x, y):
    """Least-squares A, phase with y = a sin x + b cos x (= A sin(x - phase))."""
    design = torch.cat([torch.sin(x), torch.cos(x)], dim=1).double()
    solution = torch.linalg.lstsq(design, y.double()).solution[:, 0]
    a, b = solution.tolist()
    residual = (design @ solution[:, None] - y.double()).abs().max().item()
    return math.hypot(a, b), math.atan2(-b, a) % (2 * math.pi), residual


def _sinusoid_case(points, tasks, check_distribution):
    def test(fn):
        generator = torch.Generator().manual_seed(points)
        amplitudes, phases, xs = [], [], []
        for _ in range(tasks):
            out = fn(points, generator)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise AssertionError("return a pair (x, y)")
            x, y = out
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (points, 1) or \
                    not isinstance(y, torch.Tensor) or tuple(y.shape) != (points, 1):
                raise AssertionError(f"x and y must be tensors of shape {(points, 1)}")
            if x.min() < -5 or x.max() > 5:
                raise AssertionError("x must lie in [-5, 5]")
            amplitude, phase, residual = _fit(x, y)
            if residual > 1e-3 * max(1.0, amplitude):
                raise AssertionError("y is not A * sin(x - phase) for one A and phase per task")
            amplitudes.append(amplitude)
            phases.append(phase)
            xs.append(x)
        if min(amplitudes) < 0.1 - 1e-4 or max(amplitudes) > 5 + 1e-4:
            raise AssertionError(f"amplitudes range over [{min(amplitudes):.2f}, {max(amplitudes):.2f}]; "
                                 f"they must lie in [0.1, 5]")
        if any(math.pi + 1e-3 < p < 2 * math.pi - 1e-3 for p in phases):
            raise AssertionError("a phase lies outside [0, pi]")
        if check_distribution:
            if max(amplitudes) < 4 or min(amplitudes) > 1.2:
                raise AssertionError(f"amplitudes only cover [{min(amplitudes):.2f}, {max(amplitudes):.2f}]: "
                                     f"draw them uniformly from [0.1, 5]")
            if max(p for p in phases if p <= math.pi + 1e-3) < 2.5:
                raise AssertionError("phases do not cover [0, pi]: draw them uniformly from it")
            x_all = torch.cat(xs)
            if x_all.min() > -4 or x_all.max() < 4:
                raise AssertionError("x values do not cover [-5, 5]")
            if len({round(a, 6) for a in amplitudes}) < tasks:
                raise AssertionError("tasks repeat: draw a new amplitude and phase for every task")
    return test


def check_sinusoid_task(fn):
    """Grade ``fn(points, generator) -> (x, y)``, one sinusoid task of the MAML paper (Chapter 2)."""
    return grade("Exercise 2.3: a sinusoid task sampler", fn, [
        Case("shapes and the sine law", _sinusoid_case(10, 5, False),
             "y = A * sin(x - phase), with one A and one phase per task"),
        Case("the MAML paper's ranges", _sinusoid_case(10, 200, True),
             "A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5], all from the generator"),
        Case("many points", _sinusoid_case(50, 50, True), "", hidden=True),
    ])


# -- stubs and plausible wrong answers, used by the tests ---------------------------------
def _stub(*args):
    raise NotImplementedError


def _wrong_episode_no_remap(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways]
    sx, sy, qx, qy = [], [], [], []
    for c in classes.tolist():
        picks = torch.randperm(images.shape[1], generator=generator)[:shots + queries]
        sx.append(images[c, picks[:shots]])
        qx.append(images[c, picks[shots:]])
        sy += [c] * shots
        qy += [c] * queries
    return torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy)


def _wrong_episode_with_replacement(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways]
    sx, sy, qx, qy = [], [], [], []
    for label, c in enumerate(classes.tolist()):
        picks = torch.randint(0, images.shape[1], (shots + queries,), generator=generator)
        sx.append(images[c, picks[:shots]])
        qx.append(images[c, picks[shots:]])
        sy += [label] * shots
        qy += [label] * queries
    return torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy)


def _wrong_episode_classes_with_replacement(images, ways, shots, queries, generator):
    classes = torch.randint(0, images.shape[0], (ways,), generator=generator)
    sx, sy, qx, qy = [], [], [], []
    for label, c in enumerate(classes.tolist()):
        picks = torch.randperm(images.shape[1], generator=generator)[:shots + queries]
        sx.append(images[c, picks[:shots]])
        qx.append(images[c, picks[shots:]])
        sy += [label] * shots
        qy += [label] * queries
    return torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy)


def _wrong_split_random(alphabets, test_alphabets):
    count = sum(a in set(test_alphabets) for a in alphabets)
    order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(0)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def _wrong_split_blocks(alphabets, test_alphabets):
    # Assumes each alphabet's classes form one block, starting where it first appears.
    first = {}
    for c, a in enumerate(alphabets):
        first.setdefault(a, c)
    test = []
    for a in test_alphabets:
        test += range(first[a], first[a] + alphabets.count(a))
    return [c for c in range(len(alphabets)) if c not in test], test


def _wrong_sinusoid_full_phase(points, generator):
    amplitude = 0.1 + 4.9 * torch.rand((), generator=generator)
    phase = 2 * math.pi * torch.rand((), generator=generator)
    x = -5 + 10 * torch.rand(points, 1, generator=generator)
    return x, amplitude * torch.sin(x - phase)


def _wrong_sinusoid_unit_x(points, generator):
    amplitude = 0.1 + 4.9 * torch.rand((), generator=generator)
    phase = math.pi * torch.rand((), generator=generator)
    x = torch.rand(points, 1, generator=generator)
    return x, amplitude * torch.sin(x - phase)


def _wrong_sinusoid_offset(points, generator):
    amplitude = 0.1 + 4.9 * torch.rand((), generator=generator)
    phase = math.pi * torch.rand((), generator=generator)
    x = -5 + 10 * torch.rand(points, 1, generator=generator)
    return x, amplitude * torch.sin(x) + phase


GRADERS = {
    "check_episode": (check_episode, reference_episode, _stub,
                      [_wrong_episode_no_remap, _wrong_episode_with_replacement,
                       _wrong_episode_classes_with_replacement]),
    "check_alphabet_split": (check_alphabet_split, reference_alphabet_split, _stub,
                             [_wrong_split_random, _wrong_split_blocks]),
    "check_sinusoid_task": (check_sinusoid_task, reference_sinusoid_task, _stub,
                            [_wrong_sinusoid_full_phase, _wrong_sinusoid_unit_x, _wrong_sinusoid_offset]),
}
