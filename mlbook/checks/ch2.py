"""Graders for Chapter 2, "Task distributions"."""
from __future__ import annotations

import math

import torch

from .core import (Case, binomial_frequency_ok, chapter_graders, grade, ks_threshold, ks_uniform_statistic,
                   uniform_end_slack)
from .predictions import Prediction, chapter_predictions

__all__ = ["check_episode", "check_alphabet_split", "check_sinusoid_task"]


def _images(classes=10, examples=8, size=6):
    """Each image carries its class id in pixel (0, 0), its example id in pixel (0, 1), noise elsewhere."""
    images = torch.rand(classes, examples, size, size, generator=torch.Generator().manual_seed(classes * examples))
    images[:, :, 0, 0] = torch.arange(classes, dtype=torch.float)[:, None]
    images[:, :, 0, 1] = torch.arange(examples, dtype=torch.float)[None, :]
    return images


# Every statistical check below is a test whose false-failure probability for a correct
# answer is bounded (Chernoff's bound for a count, the DKW inequality for a KS distance, the
# exact law of the minimum of uniform draws for a range's end); each grader splits a budget of
# 1e-7 between its tests (Bonferroni), so a correct answer fails with probability below 1e-7
# per call, well under the 1e-6 the book promises. The draws come from fixed seeds, so a given
# answer gets the same verdict every time.
_ALPHA = 1e-7


def _int_list(values, what):
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.dtype == torch.bool:
            raise AssertionError(f"{what} holds {str(values.dtype).replace('torch.', '')} values; use integers")
        return [int(v) for v in values.flatten().tolist()]
    if not isinstance(values, (list, tuple, range, set)):
        raise AssertionError(f"{what} should be a list of class indices, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise AssertionError(f"{what} should hold integer class indices, got {v!r}")
        out.append(v)
    return out


def _rng_contract(fn, call, describe):
    """Same generator state gives the same result; other states give other results; the
    generator, and no global generator, is what it draws from."""
    first = call(torch.Generator().manual_seed(1234))
    if fn.used_global_rng:
        raise AssertionError(f"your function drew from {' and '.join(fn.used_global_rng)}: draw every random "
                             "number from `generator` (generator=generator)")
    generator = torch.Generator().manual_seed(1234)
    before = generator.get_state()
    again = call(generator)
    if torch.equal(generator.get_state(), before):
        raise AssertionError("your function never drew from `generator`: pass generator=generator to every "
                             "random draw")
    if describe(first) != describe(again):
        raise AssertionError("two calls with generators in the same state gave different results: every random "
                             "draw must come from `generator`, nothing else")
    others = {describe(call(torch.Generator().manual_seed(seed))) for seed in range(5)}
    if len(others | {describe(first)}) == 1:
        raise AssertionError("generators in different states gave the same result: the draws must depend "
                             "on `generator`")


# -- Exercise 1: one N-way K-shot episode with label remapping -----------------------------
def reference_episode(images, ways, shots, queries, generator):
    """The reference (Chapter 2): one episode ``(support_x [N*K, H, W], support_y [N*K],
    query_x [N*Q, H, W], query_y [N*Q])``."""
    classes = torch.randperm(images.shape[0], generator=generator)[:ways]
    support_x, support_y, query_x, query_y = [], [], [], []
    for label, c in enumerate(classes.tolist()):
        picks = torch.randperm(images.shape[1], generator=generator)[:shots + queries]
        support_x.append(images[c, picks[:shots]])
        query_x.append(images[c, picks[shots:]])
        support_y += [label] * shots
        query_y += [label] * queries
    return torch.cat(support_x), torch.tensor(support_y), torch.cat(query_x), torch.tensor(query_y)


def check_episode(fn):
    """Grade ``fn(images, ways, shots, queries, generator) -> (sx, sy, qx, qy)`` (Chapter 2)."""
    return grade("Exercise 2.1: sample an N-way K-shot episode", fn, [
        Case("5-way 1-shot, 3 queries", _episode_case(5, 1, 3, seed=0),
             "pick N distinct classes, then K + Q distinct examples of each"),
        Case("labels 0..N-1, the same in support and query", _episode_case(3, 2, 2, seed=1),
             "label the i-th chosen class i, in both sets, as integer (long) tensors"),
        Case("10-way 4-shot uses every class", _episode_case(10, 4, 4, seed=2, repeats=5),
             "K + Q = 8 uses every example of a class: sample without replacement", hidden=True),
        Case("the generator decides the episode", _episode_rng_case,
             "draw everything with generator=generator: no torch.manual_seed, no global RNG, no `random`"),
        Case("classes, labels and examples are uniformly random", _episode_uniform_case,
             "torch.randperm(n, generator=generator) for the classes and for each class's examples",
             hidden=True),
    ])


def _episode_parts(out, images, ways, shots, queries):
    """Check one episode's structure; return (label -> class, [(label, example, role)])."""
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        raise AssertionError("return a tuple (support_x, support_y, query_x, query_y)")
    names = ("support_x", "support_y", "query_x", "query_y")
    for name, t in zip(names, out):
        if not isinstance(t, torch.Tensor):
            raise AssertionError(f"{name} should be a tensor, got {type(t).__name__}")
    sx, sy, qx, qy = out
    size = tuple(images.shape[2:])
    for name, t, count in (("support_x", sx, ways * shots), ("query_x", qx, ways * queries)):
        if tuple(t.shape) != (count, *size):
            raise AssertionError(f"{name} has shape {tuple(t.shape)}, expected {(count, *size)} "
                                 f"(N*{'K' if name[0] == 's' else 'Q'} images, stacked with torch.cat)")
    for name, t in (("support_x", sx), ("query_x", qx)):
        if t.dtype != images.dtype:
            raise AssertionError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}, the images "
                                 f"{str(images.dtype).replace('torch.', '')}: keep the images as they are")
    for name, t, count in (("support_y", sy, ways * shots), ("query_y", qy, ways * queries)):
        if tuple(t.shape) != (count,):
            raise AssertionError(f"{name} has shape {tuple(t.shape)}, expected {(count,)}")
        if t.dtype != torch.int64:
            raise AssertionError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; labels must be "
                                 "integers (torch.long), as cross-entropy expects")
    labels = sorted(set(sy.tolist()) | set(qy.tolist()))
    if labels != list(range(ways)):
        shifted = " (they start at 1: count from 0)" if labels == list(range(1, ways + 1)) else \
            " (the original class numbers? relabel the i-th chosen class i)"
        raise AssertionError(f"the labels are {labels[:12]}; they must be 0..{ways - 1}{shifted}")
    for name, t, count in (("support_y", sy, shots), ("query_y", qy, queries)):
        per = t.bincount(minlength=ways).tolist()
        if per != [count] * ways:
            raise AssertionError(f"{name} has {per} examples per label; every label needs {count}")
    mapping, picks = {}, []
    for role, x, y in (("support", sx, sy), ("query", qx, qy)):
        for image, label in zip(x, y.tolist()):
            c, e = int(round(image[0, 0].item())), int(round(image[0, 1].item()))
            if not (0 <= c < images.shape[0] and 0 <= e < images.shape[1]) or not torch.equal(image, images[c, e]):
                raise AssertionError(f"a {role} image is not one of the input images: index images[class, "
                                     "example] and keep the images as they are")
            if mapping.setdefault(label, c) != c:
                raise AssertionError("one label stands for two different classes: a label must mean the same "
                                     "class in the support and the query set")
            picks.append((label, e, role))
    if len(set(mapping.values())) != ways:
        raise AssertionError("two labels stand for the same class: pick N *distinct* classes "
                             "(torch.randperm, not torch.randint)")
    for label in range(ways):
        examples = [e for y, e, _ in picks if y == label]
        if len(set(examples)) != len(examples):
            raise AssertionError("an example appears twice in one episode: draw the K + Q examples of a class "
                                 "without replacement, so that support and query are disjoint")
    return mapping, picks


def _episode_case(ways, shots, queries, seed, repeats=20):
    def test(fn):
        images = _images()
        generator = torch.Generator().manual_seed(seed)
        for _ in range(repeats):
            _episode_parts(fn(images, ways, shots, queries, generator), images, ways, shots, queries)
    return test


def _episode_rng_case(fn):
    images = _images()
    ways, shots, queries = 4, 1, 2

    def call(generator):
        out = fn(images, ways, shots, queries, generator)
        _episode_parts(out, images, ways, shots, queries)
        return out

    def describe(out):
        return tuple(tuple(t.flatten().tolist()) for t in out)
    _rng_contract(fn, call, describe)


def _episode_uniform_case(fn):
    classes, examples, ways, shots, queries, repeats = 10, 8, 5, 1, 2, 400
    images = _images(classes, examples)
    generator = torch.Generator().manual_seed(7)
    chosen = torch.zeros(classes)
    label_class = torch.zeros(ways, classes)
    pairs = torch.zeros(classes, classes)
    role = {"support": torch.zeros(examples), "query": torch.zeros(examples)}
    for _ in range(repeats):
        mapping, picks = _episode_parts(fn(images, ways, shots, queries, generator), images, ways, shots, queries)
        picked = list(mapping.values())
        chosen[picked] += 1
        for label, c in mapping.items():
            label_class[label, c] += 1
        for a in picked:
            for b in picked:
                pairs[a, b] += 1
        for _, e, r in picks:
            role[r][e] += 1
    tests = classes + ways * classes + classes * (classes - 1) // 2 + 2 * examples
    alpha = _ALPHA / tests
    for c in range(classes):
        if not binomial_frequency_ok(int(chosen[c]), repeats, ways / classes, alpha):
            raise AssertionError(f"class {c} was picked in {int(chosen[c])} of {repeats} episodes, far from the "
                                 f"{repeats * ways // classes} of uniform sampling: every class must be equally likely")
    for a in range(classes):
        for b in range(a + 1, classes):
            if not binomial_frequency_ok(int(pairs[a, b]), repeats, ways * (ways - 1) / (classes * (classes - 1)),
                                         alpha):
                raise AssertionError(f"classes {a} and {b} met in {int(pairs[a, b])} of {repeats} episodes, far from "
                                     "chance: draw the N classes together at random (torch.randperm), not from a "
                                     "few fixed sets")
    for label in range(ways):
        for c in range(classes):
            if not binomial_frequency_ok(int(label_class[label, c]), repeats, 1 / classes, alpha):
                raise AssertionError(f"label {label} meant class {c} in {int(label_class[label, c])} of {repeats} "
                                     "episodes, far from chance: keep the random order of the chosen classes "
                                     "(do not sort them)")
    n = repeats * ways
    for r, count, p in (("support", role["support"], shots / examples), ("query", role["query"], queries / examples)):
        for e in range(examples):
            if not binomial_frequency_ok(int(count[e]), n, p, alpha):
                raise AssertionError(f"example {e} of a class was in the {r} set {int(count[e])} times in {n} "
                                     f"draws, far from the {n * p:.0f} of uniform sampling: shuffle the examples "
                                     "of each class with the generator before splitting them")


# -- Exercise 2: split classes by alphabet ------------------------------------------------
def reference_alphabet_split(alphabets, test_alphabets):
    """The reference (Chapter 2): class indices ``(train, test)``; test classes are those whose
    alphabet is in ``test_alphabets``."""
    test_set = set(test_alphabets)
    train = [c for c, a in enumerate(alphabets) if a not in test_set]
    test = [c for c, a in enumerate(alphabets) if a in test_set]
    return train, test


def check_alphabet_split(fn):
    """Grade ``fn(alphabets, test_alphabets) -> (train_indices, test_indices)`` (Chapter 2)."""
    return grade("Exercise 2.2: split classes by alphabet", fn, [
        Case("one test alphabet", _split_case(_ALPHABETS[:12], ["Latin"]),
             "a class goes to test when its alphabet is a test alphabet"),
        Case("an alphabet whose classes are not contiguous", _split_case(_ALPHABETS, ["Greek", "Tagalog"]),
             "look at each class's alphabet; do not assume blocks"),
        Case("names that contain one another", _split_case(_NESTED, ["Cyrillic", "Syriac_(Serto)"]),
             "'Cyrillic' is not 'Old_Church_Slavonic_(Cyrillic)': compare whole names"),
        Case("a test alphabet whose name contains another's",
             _split_case(_NESTED, ["Old_Church_Slavonic_(Cyrillic)", "Japanese_(katakana)"]),
             "'Cyrillic' is a part of 'Old_Church_Slavonic_(Cyrillic)' but not the same alphabet", hidden=True),
        Case("every class in exactly one split", _split_case(["a", "b"] * 6, ["b", "c"]),
             "each index once, in train or in test; a test alphabet may have no classes", hidden=True),
        Case("no test alphabet", _split_case(_NESTED[:7], []), "then every class is a training class", hidden=True),
    ])


def _split_case(alphabets, test_alphabets):
    def test(fn):
        want_train, want_test = reference_alphabet_split(alphabets, test_alphabets)
        out = fn(list(alphabets), list(test_alphabets))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AssertionError("return a pair (train_indices, test_indices)")
        train, test_ = _int_list(out[0], "train_indices"), _int_list(out[1], "test_indices")
        count = len(alphabets)
        for name, part in (("train", train), ("test", test_)):
            outside = [i for i in part if not 0 <= i < count]
            if outside:
                raise AssertionError(f"{name} holds {outside[:3]}, not class indices: there are {count} classes, "
                                     f"0..{count - 1}" + (" (count from 0)" if outside == [count] else ""))
            twice = sorted({i for i in part if part.count(i) > 1})
            if twice:
                raise AssertionError(f"class {twice[0]} appears more than once in {name}")
        both = sorted(set(train) & set(test_))
        if both:
            raise AssertionError(f"class {both[0]} ({alphabets[both[0]]!r}) is in both splits")
        missing = sorted(set(range(count)) - set(train) - set(test_))
        if missing:
            raise AssertionError(f"class {missing[0]} ({alphabets[missing[0]]!r}) is in neither split")
        blocks = set()
        for t in test_alphabets:
            if t in alphabets:
                blocks.update(range(alphabets.index(t), alphabets.index(t) + alphabets.count(t)))
        if set(test_) != set(want_test) and set(test_) == blocks:
            raise AssertionError("your test split is one block of classes per test alphabet, starting at its "
                                 "first class; look at every class's own alphabet (the classes of one alphabet "
                                 "need not be contiguous)")
        wrong_test = sorted(set(test_) - set(want_test))
        if wrong_test:
            a = alphabets[wrong_test[0]]
            stem = a.replace("(", "_").split("_")[0]
            near = [t for t in test_alphabets if t in a or a in t or t.replace("(", "_").split("_")[0] == stem]
            why = (f": {a!r} and the test alphabet {near[0]!r} share part of their names; compare whole names "
                   "exactly (a in set(test_alphabets)), not substrings or prefixes") if near else ""
            raise AssertionError(f"class {wrong_test[0]} of alphabet {a!r} is in test, but {a!r} is not a test "
                                 f"alphabet{why}")
        wrong_train = sorted(set(train) - set(want_train))
        if wrong_train:
            a = alphabets[wrong_train[0]]
            raise AssertionError(f"class {wrong_train[0]} of test alphabet {a!r} is in train: look at every "
                                 "class's own alphabet (classes of one alphabet need not be contiguous)")
    return test


_ALPHABETS = ["Greek"] * 4 + ["Latin"] * 3 + ["Korean"] * 5 + ["Greek"] * 2 + ["Tagalog"] * 3
_NESTED = (["Cyrillic"] * 3 + ["Old_Church_Slavonic_(Cyrillic)"] * 3 + ["Syriac_(Estrangelo)"] * 2 +
           ["Syriac_(Serto)"] * 2 + ["Japanese_(hiragana)"] * 2 + ["Japanese_(katakana)"] * 2 + ["Cyrillic"])


# -- Exercise 3: a sinusoid task sampler ---------------------------------------------------
def reference_sinusoid_task(points, generator):
    """The reference (Chapter 2): one MAML sinusoid task, ``x [points, 1]`` ~ U[-5, 5], ``y = A sin(x - phase)``."""
    amplitude = 0.1 + 4.9 * torch.rand((), generator=generator)
    phase = math.pi * torch.rand((), generator=generator)
    x = -5 + 10 * torch.rand(points, 1, generator=generator)
    return x, amplitude * torch.sin(x - phase)


def check_sinusoid_task(fn):
    """Grade ``fn(points, generator) -> (x, y)``, one sinusoid task of the MAML paper (Chapter 2)."""
    return grade("Exercise 2.3: a sinusoid task sampler", fn, [
        Case("shapes and the sine law", _sinusoid_law_case(10, 5),
             "y = A * sin(x - phase), with one A and one phase per task"),
        Case("the generator decides the task", _sinusoid_rng_case,
             "draw A, the phase and x with generator=generator, nothing else"),
        Case("the MAML paper's ranges and uniform draws", _sinusoid_distribution_case,
             "A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]: low + (high - low) * torch.rand(..., generator=...)"),
        Case("many points", _sinusoid_law_case(50, 20), "x has shape [points, 1] for any `points`", hidden=True),
    ])


def _sinusoid_tasks(fn, points, tasks, seed):
    """Call ``fn`` ``tasks`` times; check shapes and the sine law; return (amplitudes, phases, x)."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for _ in range(tasks):
        out = fn(points, generator)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AssertionError("return a pair (x, y)")
        x, y = out
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise AssertionError(f"{name} should be a tensor, got {type(t).__name__}")
            if tuple(t.shape) != (points, 1):
                raise AssertionError(f"{name} has shape {tuple(t.shape)}, expected {(points, 1)} (`points` rows, "
                                     "one column)")
            if not t.is_floating_point():
                raise AssertionError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected floats")
            if not torch.isfinite(t).all():
                raise AssertionError(f"{name} contains NaN or infinite values")
        xs.append(x.detach().double())
        ys.append(y.detach().double())
    x, y = torch.stack(xs), torch.stack(ys)                           # [T, P, 1]
    if x.min() < -5 or x.max() > 5:
        raise AssertionError(f"x ranges over [{x.min().item():.3g}, {x.max().item():.3g}]; it must lie in [-5, 5]")
    design = torch.cat([torch.sin(x), torch.cos(x)], dim=2)           # y = a sin x + b cos x
    solution = torch.linalg.lstsq(design, y).solution                 # [T, 2, 1]
    residual = (design @ solution - y).abs().amax(dim=(1, 2))
    a, b = solution[:, 0, 0], solution[:, 1, 0]
    amplitude = torch.hypot(a, b)
    if (residual > 1e-4 * amplitude.clamp(min=1)).any():
        raise AssertionError("y is not A * sin(x - phase) for one A and one phase per task (an added constant, "
                             "another function of x, or a new A or phase per point?)")
    phase = torch.atan2(-b, a)                                        # in (-pi, pi]
    return amplitude, phase, x.flatten()


def _sinusoid_law_case(points, tasks):
    def test(fn):
        amplitude, phase, _ = _sinusoid_tasks(fn, points, tasks, points)
        _check_ranges(amplitude, phase)
    return test


def _check_ranges(amplitude, phase):
    if amplitude.min() < 0.1 - 1e-4 or amplitude.max() > 5 + 1e-4:
        raise AssertionError(f"amplitudes range over [{amplitude.min().item():.3g}, {amplitude.max().item():.3g}]; "
                             "they must lie in [0.1, 5]")
    outside = phase[(phase < -1e-3) | (phase > math.pi + 1e-3)]
    if outside.numel():
        if (phase < 1e-3).all():
            raise AssertionError("the phases lie in [-pi, 0]: y = A * sin(x - phase), with a minus, and "
                                 "phase ~ U[0, pi]")
        if (phase.abs() < math.pi / 2 + 1e-3).all():
            raise AssertionError("the phases look shifted by pi/2: y = A * sin(x - phase), a sine, not a cosine")
        raise AssertionError(f"a phase of {outside[0].item():.3f} lies outside [0, pi]: phase ~ U[0, pi], "
                             "with y = A * sin(x - phase)")


def _sinusoid_rng_case(fn):
    def call(generator):
        return fn(10, generator)

    def describe(out):
        return tuple(round(v, 5) for t in out if isinstance(t, torch.Tensor) for v in t.flatten().tolist())
    _rng_contract(fn, call, describe)


def _sinusoid_distribution_case(fn):
    tasks, points = 1500, 10
    amplitude, phase, x = _sinusoid_tasks(fn, points, tasks, 11)
    _check_ranges(amplitude, phase)
    alpha = _ALPHA / 9                                  # three KS tests and six range ends
    for name, values, low, high, law in (
            ("amplitude", amplitude, 0.1, 5.0, "A ~ U[0.1, 5]"),
            ("phase", phase, 0.0, math.pi, "phase ~ U[0, pi]"),
            ("x", x, -5.0, 5.0, "x ~ U[-5, 5], drawn afresh for every task")):
        n = values.numel()
        slack = uniform_end_slack(n, high - low, alpha)
        if values.min() > low + slack:
            raise AssertionError(f"no {name} comes near {low:g}: the smallest of {n} is {values.min().item():.3f} "
                                 f"({law})")
        if values.max() < high - slack:
            raise AssertionError(f"no {name} comes near {high:g}: the largest of {n} is {values.max().item():.3f} "
                                 f"({law})")
        distance = ks_uniform_statistic(values, low, high)
        if distance > ks_threshold(n, alpha):
            raise AssertionError(f"the {name}s are not uniform over [{low:g}, {high:.4g}] (Kolmogorov-Smirnov "
                                 f"distance {distance:.3f} over {n} draws; {law}: torch.rand, scaled and shifted, "
                                 "not a grid, torch.randn or a constant)")


GRADERS = chapter_graders(globals())


# -- Prediction questions: the memorisation pitfall ------------------------------------------
PREDICT_MEMORISATION = Prediction(
    key="memorisation",
    question=("MAML is meta-trained twice on 5-way 1-shot episodes from the same 30 characters: once "
              "with labels re-shuffled in every episode, once with every character always under the same "
              "label. Both reach high accuracy on their training episodes. On 5-way 1-shot episodes of "
              "characters from held-out alphabets, the model trained with fixed labels will score"),
    choices=("far lower than the one trained with shuffled labels, much closer to chance (20%)",
             "about the same as the one trained with shuffled labels",
             "higher than the one trained with shuffled labels: its labels were easier to learn"),
    answer="a",
    hint=("With fixed labels, one classifier of the 30 characters solves every training episode. "
          "Does such a model need to read the support set?"),
    explanation=("Fixed labels make the training tasks consistent with one global classifier, so the "
                 "meta-learner can solve them from memory, without learning to adapt (Yin et al., 2020). "
                 "New characters have no place in that memory."),
)

PREDICT_SWAPPED_SUPPORT = Prediction(
    key="swapped-support",
    question=("Now each query set of a training episode is given the support set of *another* episode "
              "(other characters, other label assignment). The accuracy of the model trained with "
              "fixed labels on these training queries will"),
    choices=("drop to about chance, as for the model trained with shuffled labels",
             "stay about as high as with the right support set",
             "drop by about half"),
    answer="b",
    hint="Which part of the episode did the fixed-label model need to answer a training query?",
    explanation=("It answers from memory: the support set hardly moves its predictions, so a wrong one "
                 "does no harm. The shuffled-label model has nothing but the support set to go on, so a "
                 "wrong one leaves it at chance."),
)

PREDICTIONS = chapter_predictions(globals())
