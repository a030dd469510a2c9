"""Answers to Chapter 2's exercises as students write them (see grader_answers_ch1.py)."""
import math
import random

import torch


def _episode(images, ways, shots, queries, classes, picks_of, labels_of=None):
    sx, sy, qx, qy = [], [], [], []
    for label, c in enumerate(classes):
        picks = picks_of(c)
        sx.append(images[c, picks[:shots]])
        qx.append(images[c, picks[shots:shots + queries]])
        y = label if labels_of is None else labels_of(label, c)
        sy += [y] * shots
        qy += [y] * queries
    return torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy)


def episode_global_rng(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0])[:ways].tolist()
    return _episode(images, ways, shots, queries, classes, lambda c: torch.randperm(images.shape[1]))


def episode_python_random(images, ways, shots, queries, generator):
    classes = random.sample(range(images.shape[0]), ways)
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.tensor(random.sample(range(images.shape[1]), shots + queries)))


def episode_same_examples(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    return _episode(images, ways, shots, queries, classes, lambda c: torch.arange(images.shape[1]))


_calls = [0]


def episode_two_sets(images, ways, shots, queries, generator):
    order = torch.randperm(images.shape[1], generator=generator)
    _calls[0] += 1
    start = 0 if _calls[0] % 2 else images.shape[0] - ways
    return _episode(images, ways, shots, queries, list(range(start, start + ways)), lambda c: order)


def episode_float_labels(images, ways, shots, queries, generator):
    sx, sy, qx, qy = episode_reference_like(images, ways, shots, queries, generator)
    return sx, sy.float(), qx, qy.float()


def episode_reference_like(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.randperm(images.shape[1], generator=generator))


def episode_one_based(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.randperm(images.shape[1], generator=generator), lambda label, c: label + 1)


def episode_class_ids_as_labels(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.randperm(images.shape[1], generator=generator), lambda label, c: c)


def episode_examples_with_replacement(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.randint(0, images.shape[1], (shots + queries,), generator=generator))


def episode_classes_with_replacement(images, ways, shots, queries, generator):
    classes = torch.randint(0, images.shape[0], (ways,), generator=generator).tolist()
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.randperm(images.shape[1], generator=generator))


def episode_sorted_classes(images, ways, shots, queries, generator):
    classes = sorted(torch.randperm(images.shape[0], generator=generator)[:ways].tolist())
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.randperm(images.shape[1], generator=generator))


def episode_reseeds(images, ways, shots, queries, generator):
    generator = torch.Generator().manual_seed(0)
    return episode_reference_like(images, ways, shots, queries, generator)


def episode_overlap(images, ways, shots, queries, generator):
    # support and query drawn separately: an example can land in both
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    return _episode(images, ways, shots, queries, classes,
                    lambda c: torch.cat([torch.randperm(images.shape[1], generator=generator)[:shots],
                                         torch.randperm(images.shape[1], generator=generator)[:queries]]))


def episode_first_shots(images, ways, shots, queries, generator):
    # the support set is always the first K examples; only the queries are random
    classes = torch.randperm(images.shape[0], generator=generator)[:ways].tolist()
    picks = lambda c: torch.cat([torch.arange(shots),  # noqa: E731
                                 shots + torch.randperm(images.shape[1] - shots, generator=generator)])
    return _episode(images, ways, shots, queries, classes, picks)


def episode_vectorised(images, ways, shots, queries, generator):
    classes = torch.randperm(images.shape[0], generator=generator)[:ways]
    picks = torch.stack([torch.randperm(images.shape[1], generator=generator)[:shots + queries]
                         for _ in range(ways)])
    chosen = images[classes[:, None], picks]                      # [N, K+Q, H, W]
    labels = torch.arange(ways)
    return (chosen[:, :shots].reshape(-1, *images.shape[2:]), labels.repeat_interleave(shots),
            chosen[:, shots:].reshape(-1, *images.shape[2:]), labels.repeat_interleave(queries))


def episode_multinomial(images, ways, shots, queries, generator):
    classes = torch.multinomial(torch.ones(images.shape[0]), ways, replacement=False, generator=generator)
    sx, sy, qx, qy = [], [], [], []
    for label in range(ways):
        picks = torch.multinomial(torch.ones(images.shape[1]), shots + queries, generator=generator)
        sx.append(images[classes[label], picks[:shots]])
        qx.append(images[classes[label], picks[shots:]])
        sy.append(torch.full((shots,), label, dtype=torch.long))
        qy.append(torch.full((queries,), label, dtype=torch.long))
    return torch.cat(sx), torch.cat(sy), torch.cat(qx), torch.cat(qy)


# -- alphabet split ---------------------------------------------------------------------------
def split_substring(alphabets, test_alphabets):
    joined = ",".join(test_alphabets)
    test = [c for c, a in enumerate(alphabets) if a in joined]
    return [c for c in range(len(alphabets)) if c not in test], test


def split_any_in(alphabets, test_alphabets):
    test = [c for c, a in enumerate(alphabets) if any(t in a for t in test_alphabets)]
    return [c for c in range(len(alphabets)) if c not in test], test


def split_prefix(alphabets, test_alphabets):
    prefixes = {t.split("_")[0] for t in test_alphabets}
    test = [c for c, a in enumerate(alphabets) if a.split("_")[0] in prefixes]
    return [c for c in range(len(alphabets)) if c not in test], test


def split_swapped(alphabets, test_alphabets):
    train = [c for c, a in enumerate(alphabets) if a not in test_alphabets]
    test = [c for c, a in enumerate(alphabets) if a in test_alphabets]
    return test, train


def split_one_based(alphabets, test_alphabets):
    train = [c + 1 for c, a in enumerate(alphabets) if a not in test_alphabets]
    test = [c + 1 for c, a in enumerate(alphabets) if a in test_alphabets]
    return train, test


def split_names(alphabets, test_alphabets):
    return [a for a in alphabets if a not in test_alphabets], [a for a in alphabets if a in test_alphabets]


def split_all_in_train(alphabets, test_alphabets):
    return list(range(len(alphabets))), [c for c, a in enumerate(alphabets) if a in test_alphabets]


def split_sorts_input(alphabets, test_alphabets):
    alphabets.sort()
    train = [c for c, a in enumerate(alphabets) if a not in test_alphabets]
    return train, [c for c, a in enumerate(alphabets) if a in test_alphabets]


def split_first_block(alphabets, test_alphabets):
    test = []
    for t in test_alphabets:
        if t in alphabets:
            start = alphabets.index(t)
            test += range(start, start + alphabets.count(t))
    return [c for c in range(len(alphabets)) if c not in test], test


def split_first_test_only(alphabets, test_alphabets):
    test = [c for c, a in enumerate(alphabets) if test_alphabets and a == test_alphabets[0]]
    return [c for c in range(len(alphabets)) if c not in test], test


def split_random(alphabets, test_alphabets):
    # the right number of test classes, but any of them
    count = sum(a in set(test_alphabets) for a in alphabets)
    order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(0)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def split_blocks_from_first(alphabets, test_alphabets):
    # assumes each alphabet's classes form one block, starting where it first appears
    first = {}
    for c, a in enumerate(alphabets):
        first.setdefault(a, c)
    test = []
    for a in test_alphabets:
        test += range(first[a], first[a] + alphabets.count(a))
    return [c for c in range(len(alphabets)) if c not in test], test


def split_loop(alphabets, test_alphabets):
    train, test = [], []
    for index in range(len(alphabets)):
        (test if alphabets[index] in test_alphabets else train).append(index)
    return train, test


def split_tensor(alphabets, test_alphabets):
    mask = torch.tensor([a in set(test_alphabets) for a in alphabets], dtype=torch.bool)
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


# -- sinusoid task ----------------------------------------------------------------------------
def _task(points, generator, amplitude=None, phase=None, x=None, law=None):
    amplitude = 0.1 + 4.9 * torch.rand((), generator=generator) if amplitude is None else amplitude
    phase = math.pi * torch.rand((), generator=generator) if phase is None else phase
    x = -5 + 10 * torch.rand(points, 1, generator=generator) if x is None else x
    y = amplitude * torch.sin(x - phase) if law is None else law(amplitude, phase, x)
    return x, y


def sinusoid_amplitude_1_5(points, generator):
    return _task(points, generator, amplitude=1 + 4 * torch.rand((), generator=generator))


def sinusoid_constant_phase(points, generator):
    return _task(points, generator, phase=math.pi / 2)


def sinusoid_half_phase(points, generator):
    return _task(points, generator, phase=math.pi / 2 + math.pi / 2 * torch.rand((), generator=generator))


def sinusoid_grid(points, generator):
    return _task(points, generator, x=torch.linspace(-5, 5, points)[:, None])


def sinusoid_narrow_x(points, generator):
    return _task(points, generator, x=-4.5 + 9 * torch.rand(points, 1, generator=generator))


def sinusoid_global_rng(points, generator):
    return _task(points, generator, x=-5 + 10 * torch.rand(points, 1))


def sinusoid_python_random(points, generator):
    return _task(points, generator, amplitude=random.uniform(0.1, 5.0))


def sinusoid_plus_phase(points, generator):
    return _task(points, generator, law=lambda a, p, x: a * torch.sin(x + p))


def sinusoid_cosine(points, generator):
    return _task(points, generator, law=lambda a, p, x: a * torch.cos(x - p))


def sinusoid_gaussian_x(points, generator):
    return _task(points, generator, x=(2 * torch.randn(points, 1, generator=generator)).clamp(-5, 5))


def sinusoid_flat_y(points, generator):
    x, y = _task(points, generator)
    return x, y.flatten()


def sinusoid_full_amplitude(points, generator):
    return _task(points, generator, amplitude=5 * torch.rand((), generator=generator))


def sinusoid_full_phase(points, generator):
    return _task(points, generator, phase=2 * math.pi * torch.rand((), generator=generator))


def sinusoid_unit_x(points, generator):
    return _task(points, generator, x=torch.rand(points, 1, generator=generator))


def sinusoid_offset(points, generator):
    return _task(points, generator, law=lambda a, p, x: a * torch.sin(x) + p)


def sinusoid_float64(points, generator):
    u = torch.rand(2 + points, generator=generator, dtype=torch.float64)
    amplitude, phase = 0.1 + 4.9 * u[0], math.pi * u[1]
    x = (u[2:] * 10 - 5)[:, None]
    return x, amplitude * torch.sin(x - phase)


def sinusoid_uniform_(points, generator):
    amplitude = torch.empty(()).uniform_(0.1, 5.0, generator=generator)
    phase = torch.empty(()).uniform_(0, math.pi, generator=generator)
    x = torch.empty(points, 1).uniform_(-5, 5, generator=generator)
    return x, amplitude * (torch.sin(x) * torch.cos(phase) - torch.cos(x) * torch.sin(phase))


CATALOGUE = {
    "ch2.check_episode": {
        "wrong": [(episode_global_rng, "global generator"), (episode_python_random, "Python's random module"),
                  (episode_same_examples, "example 0 of a class"), (episode_two_sets, "met in"),
                  (episode_float_labels, "integers \\(torch.long\\)"), (episode_one_based, "start at 1"),
                  (episode_sorted_classes, "do not sort"), (episode_reseeds, "never drew from `generator`"),
                  (episode_overlap, "appears twice"), (episode_first_shots, "in the support set"),
                  (episode_class_ids_as_labels, "the original class numbers"),
                  (episode_examples_with_replacement, "appears twice"),
                  (episode_classes_with_replacement, "two labels stand for the same class")],
        "right": [episode_vectorised, episode_multinomial],
    },
    "ch2.check_alphabet_split": {
        "wrong": [(split_substring, "compare whole names"), (split_any_in, "compare whole names"),
                  (split_prefix, "compare whole names"),
                  (split_swapped, "is in test, but"), (split_one_based, "count from 0"),
                  (split_names, "integer class indices"), (split_all_in_train, "in both splits"),
                  (split_sorts_input, "changed its input `alphabets`"), (split_first_block, "one block of classes"),
                  (split_first_test_only, "in train"), (split_random, "is in test, but"),
                  (split_blocks_from_first, "one block of classes")],
        "right": [split_loop, split_tensor],
    },
    "ch2.check_sinusoid_task": {
        "wrong": [(sinusoid_amplitude_1_5, "no amplitude comes near 0.1"), (sinusoid_constant_phase, "phase"),
                  (sinusoid_half_phase, "no phase comes near 0"), (sinusoid_grid, "xs are not uniform"),
                  (sinusoid_narrow_x, "no x comes near -5"), (sinusoid_global_rng, "global generator"),
                  (sinusoid_python_random, "Python's random module"), (sinusoid_plus_phase, "with a minus"),
                  (sinusoid_cosine, "not a cosine"), (sinusoid_gaussian_x, "xs are not uniform"),
                  (sinusoid_flat_y, "shape"), (sinusoid_full_amplitude, "must lie in \\[0.1, 5\\]"),
                  (sinusoid_full_phase, "outside \\[0, pi\\]"), (sinusoid_unit_x, "no x comes near -5"),
                  (sinusoid_offset, "an added constant")],
        "right": [sinusoid_float64, sinusoid_uniform_],
    },
}
