"""Episodes, N-way K-shot sampling, regression families and alphabet splits (Chapter 2)."""
import math

import pytest
import torch

from mlbook.tasks import (Episode, ImageClassFamily, LineFamily, PolynomialFamily, SinusoidFamily,
                          SwappedSupportFamily, alphabet_split, sample_nway_kshot, union_characters)


def _labelled_images(classes=12, examples=20, size=8):
    """Every image holds its class id in pixel (0, 0) and its example id in pixel (0, 1)."""
    images = torch.zeros(classes, examples, size, size, dtype=torch.uint8)
    images[:, :, 0, 0] = torch.arange(classes)[:, None]
    images[:, :, 0, 1] = torch.arange(examples)[None, :]
    return images


def _ids(x):
    pixels = (x[..., 0, :2, :2] * 255).round().long()  # [B, M, 2, 2] corner of each image
    return pixels[..., 0, 0], pixels[..., 0, 1]


def test_nway_kshot_shapes_and_dtypes():
    images = _labelled_images()
    ep = sample_nway_kshot(images, ways=5, shots=2, queries=3, batch_size=4,
                           generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (4, 10, 1, 8, 8) and ep.query_x.shape == (4, 15, 1, 8, 8)
    assert ep.support_y.shape == (4, 10) and ep.query_y.shape == (4, 15)
    assert ep.support_x.dtype == torch.float32 and ep.support_y.dtype == torch.int64
    assert 0 <= ep.support_x.min() and ep.support_x.max() <= 1


def test_nway_kshot_classes_examples_and_labels():
    images = _labelled_images()
    ep = sample_nway_kshot(images, 5, 2, 3, 64, torch.Generator().manual_seed(1))
    s_class, s_example = _ids(ep.support_x)
    q_class, q_example = _ids(ep.query_x)
    for b in range(64):
        # N distinct classes, labels 0..N-1, one class per label, the same in support and query.
        assert sorted(ep.support_y[b].unique().tolist()) == list(range(5))
        mapping = {}
        for cls, lab in zip(s_class[b].tolist() + q_class[b].tolist(),
                            ep.support_y[b].tolist() + ep.query_y[b].tolist()):
            assert mapping.setdefault(lab, cls) == cls
        assert len(set(mapping.values())) == 5
        assert (ep.support_y[b].bincount(minlength=5) == 2).all()
        assert (ep.query_y[b].bincount(minlength=5) == 3).all()
        # Support and query examples of a class are disjoint.
        for lab in range(5):
            s = set(s_example[b][ep.support_y[b] == lab].tolist())
            q = set(q_example[b][ep.query_y[b] == lab].tolist())
            assert len(s) == 2 and len(q) == 3 and not s & q
    # The label of a class is shuffled: the smallest class id is not always label 0.
    first = [min(range(5), key=lambda lab: s_class[b][ep.support_y[b] == lab][0].item()) for b in range(64)]
    assert len(set(first)) > 1


def test_nway_kshot_respects_class_subset_and_is_deterministic():
    images = _labelled_images()
    allowed = torch.tensor([1, 3, 5, 7, 9, 11])
    ep1 = sample_nway_kshot(images, 4, 1, 1, 32, torch.Generator().manual_seed(5), classes=allowed)
    ep2 = sample_nway_kshot(images, 4, 1, 1, 32, torch.Generator().manual_seed(5), classes=allowed)
    ep3 = sample_nway_kshot(images, 4, 1, 1, 32, torch.Generator().manual_seed(6), classes=allowed)
    assert set(_ids(ep1.support_x)[0].unique().tolist()) <= set(allowed.tolist())
    for a, b in zip((ep1.support_x, ep1.support_y, ep1.query_x, ep1.query_y),
                    (ep2.support_x, ep2.support_y, ep2.query_x, ep2.query_y)):
        assert torch.equal(a, b)
    assert not torch.equal(ep1.support_x, ep3.support_x)


def test_rotation_makes_new_classes():
    images = torch.zeros(2, 4, 5, 5, dtype=torch.uint8)
    images[:, :, 0, 0] = 255                      # a marker in the top-left corner
    images[1, :, 0, 1] = 255                      # class 1 has a second marker
    ep = sample_nway_kshot(images, ways=8, shots=1, queries=1, batch_size=16,
                           generator=torch.Generator().manual_seed(0), rotate=True)
    # Two classes x four turns = eight classes: all of them in every 8-way episode.
    corners = ep.support_x[:, :, 0][..., [0, 0, -1, -1], [0, -1, 0, -1]]   # [B, 8, 4]
    for b in range(16):
        kinds = {(tuple(c.tolist()), int(x.sum().item())) for c, x in zip(corners[b], ep.support_x[b])}
        assert len(kinds) == 8
    with pytest.raises(ValueError, match="ways"):
        sample_nway_kshot(images, 9, 1, 1, 1, torch.Generator(), rotate=True)


def test_mirror_images_make_new_classes_with_and_without_rotation():
    images = torch.zeros(1, 4, 5, 5, dtype=torch.uint8)
    images[0, :, 0, 0] = 255                      # top-left corner
    images[0, :, 0, 1] = 255                      # and its right neighbour: no symmetry left
    # The eight symmetries of the square give eight different images, hence eight classes.
    ep = sample_nway_kshot(images, ways=8, shots=1, queries=1, batch_size=8,
                           generator=torch.Generator().manual_seed(0), rotate=True, reflect=True)
    for b in range(8):
        views = {tuple(x.flatten().tolist()) for x in ep.support_x[b]}
        assert len(views) == 8
        # Support and query of one label are the same copy of the character.
        for label in range(8):
            assert torch.equal(ep.support_x[b][ep.support_y[b] == label],
                               ep.query_x[b][ep.query_y[b] == label])
    mirrored = torch.flip(images[0, 0], dims=(-1,)).float() / 255
    ep = sample_nway_kshot(images, ways=2, shots=1, queries=1, batch_size=4,
                           generator=torch.Generator().manual_seed(1), reflect=True)
    for b in range(4):
        assert {tuple(x[0].flatten().tolist()) for x in ep.support_x[b]} == {
            tuple((images[0, 0].float() / 255).flatten().tolist()), tuple(mirrored.flatten().tolist())}
    with pytest.raises(ValueError, match=r"ways=9 .* 8 classes available \(with rotations and mirror images\)"):
        sample_nway_kshot(images, 9, 1, 1, 1, torch.Generator(), rotate=True, reflect=True)
    assert ImageClassFamily(images, ways=2, reflect=True, queries=1).num_classes == 2
    # Without the option nothing changes: the same seed draws the same episodes as before.
    plain = sample_nway_kshot(_labelled_images(), 4, 1, 1, 8, torch.Generator().manual_seed(3))
    again = sample_nway_kshot(_labelled_images(), 4, 1, 1, 8, torch.Generator().manual_seed(3), reflect=False)
    assert torch.equal(plain.support_x, again.support_x)


def test_alphabet_episodes_carry_mirror_images():
    from mlbook.tasks import AlphabetFamily
    images = torch.zeros(6, 4, 5, 5, dtype=torch.uint8)
    images[:, :, 0, 0] = 255
    family = AlphabetFamily(images, ["a"] * 6, ways=6, shots=1, queries=1, reflect=True)
    ep = family.sample(16, torch.Generator().manual_seed(0))
    corners = ep.support_x[:, :, 0, 0, [0, -1]]     # a marker left or right: original or mirror
    assert (corners.sum(-1) == 1).all()
    mirrored = int(corners[..., 1].sum())
    assert 0 < mirrored < corners[..., 1].numel()


def test_fixed_labels_give_every_class_one_label_across_episodes():
    images = _labelled_images(classes=23)
    allowed = torch.arange(3, 23)                   # 20 classes, dealt into 5 groups of 4
    ep = sample_nway_kshot(images, 5, 2, 3, 400, torch.Generator().manual_seed(2),
                           classes=allowed, fixed_labels=True)
    s_class, s_example = _ids(ep.support_x)
    q_class, _ = _ids(ep.query_x)
    label_of, seen = {}, set()
    for b in range(400):
        assert sorted(ep.support_y[b].unique().tolist()) == list(range(5))
        assert len(set(s_class[b].tolist())) == 5    # still N distinct classes
        for cls, lab in zip(s_class[b].tolist() + q_class[b].tolist(),
                            ep.support_y[b].tolist() + ep.query_y[b].tolist()):
            assert label_of.setdefault(cls, lab) == lab
            seen.add(cls)
        # Position in the episode does not give the label away.
    assert len(set(ep.support_y[:, 0].tolist())) == 5
    # The label is the class's position in the pool modulo N, and every class is used.
    assert seen == set(allowed.tolist())
    assert all(lab == (cls - 3) % 5 for cls, lab in label_of.items())
    # Shuffled labels from the same pool break that map.
    shuffled = sample_nway_kshot(images, 5, 1, 1, 400, torch.Generator().manual_seed(2),
                                 classes=allowed)
    pairs = set(zip(_ids(shuffled.support_x)[0].flatten().tolist(), shuffled.support_y.flatten().tolist()))
    assert len(pairs) > len(seen)


def test_fixed_labels_with_rotations_and_uneven_groups():
    # All examples of a class are one image, so an image's pixels name its (class, turn).
    images = torch.zeros(7, 4, 5, 5, dtype=torch.uint8)
    images[:, :, 0, 0] = 255
    images[:, :, 2, 2] = 10 * torch.arange(1, 8)[:, None]
    family = ImageClassFamily(images, ways=3, shots=1, queries=1, rotate=True, fixed_labels=True)
    ep = family.sample(300, torch.Generator().manual_seed(0))
    assert family.with_shape(shots=2).fixed_labels
    label_of = {}
    for x, y in zip(ep.support_x.flatten(0, 1), ep.support_y.flatten().tolist()):
        assert label_of.setdefault(tuple(x.flatten().tolist()), y) == y
    # 7 classes x 4 turns = 28 classes, dealt into groups of 10, 9 and 9, all of them used.
    assert torch.bincount(torch.tensor(list(label_of.values()))).tolist() == [10, 9, 9]
    with pytest.raises(ValueError, match="two classes per label"):
        ImageClassFamily(images, ways=5, classes=[0, 1, 2, 3, 4, 5], fixed_labels=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ways=13), "ways=13 is larger than the 12"),
    (dict(shots=15, queries=6), "shots \\+ queries = 21"),
    (dict(ways=0), "ways must be a positive integer"),
    (dict(shots=-1), "shots must be a positive integer"),
    (dict(queries=0), "queries"),
    (dict(batch_size=0), "batch_size"),
    (dict(classes=torch.tensor([0, 99])), "classes must index"),
])
def test_nway_kshot_bad_input(kwargs, match):
    args = dict(images=_labelled_images(), ways=5, shots=1, queries=1, batch_size=2,
                generator=torch.Generator())
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_nway_kshot(**args)


def test_wrong_rank_images():
    with pytest.raises(ValueError, match="rank 3"):
        sample_nway_kshot(torch.zeros(5, 20, 28), 2, 1, 1, 1, torch.Generator())
    with pytest.raises(ValueError, match="rank 2"):
        ImageClassFamily(torch.zeros(5, 20))


def test_image_class_family():
    family = ImageClassFamily(_labelled_images(), ways=3, shots=1, queries=2, classes=[0, 1, 2, 3])
    ep = family.sample(5, torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (5, 3, 1, 8, 8) and ep.query_y.shape == (5, 6)
    assert family.num_classes == 4
    assert family.with_shape(ways=4).sample(1, torch.Generator()).support_y.shape == (1, 4)
    with pytest.raises(ValueError, match="ways=5"):
        ImageClassFamily(_labelled_images(), ways=5, classes=[0, 1, 2, 3])


@pytest.mark.parametrize("family", [SinusoidFamily(shots=5, queries=7), LineFamily(shots=5, queries=7),
                                    PolynomialFamily(shots=5, queries=7, degree=3)])
def test_regression_families(family):
    ep, params = family.sample_with_parameters(16, torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (16, 5, 1) and ep.query_y.shape == (16, 7, 1)
    assert torch.allclose(family.function(params, ep.support_x), ep.support_y, atol=1e-5)
    again = family.sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(again.query_y, ep.query_y)
    assert ep.support_x.abs().max() <= 5


def test_sinusoid_ranges_are_the_maml_papers():
    family = SinusoidFamily()
    params = family.sample_parameters(4000, torch.Generator().manual_seed(0))
    assert 0.1 <= params[:, 0].min() < 0.3 and 4.8 < params[:, 0].max() <= 5.0
    assert 0 <= params[:, 1].min() < 0.1 and math.pi - 0.1 < params[:, 1].max() <= math.pi


def test_polynomial_family_range_and_bad_input():
    family = PolynomialFamily(degree=2, scale=1.0)
    ep = family.sample(200, torch.Generator().manual_seed(0))
    assert ep.support_y.abs().max() <= 3.0 + 1e-5       # (degree + 1) * scale
    with pytest.raises(ValueError, match="degree"):
        PolynomialFamily(degree=-1)
    with pytest.raises(ValueError, match="scale"):
        PolynomialFamily(scale=0)


ALPHABETS = ["a"] * 3 + ["b"] * 4 + ["c"] * 2 + ["d"] * 5 + ["e"] * 3


def test_alphabet_split_respects_alphabets():
    splits = alphabet_split(ALPHABETS, (0.6, 0.2, 0.2), seed=0)
    assert set(splits) == {"train", "val", "test"}
    everything = torch.cat(list(splits.values()))
    assert sorted(everything.tolist()) == list(range(len(ALPHABETS)))
    owners = {k: {ALPHABETS[i] for i in v.tolist()} for k, v in splits.items()}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert len(owners["train"]) == 3 and len(owners["val"]) == 1 and len(owners["test"]) == 1
    again = alphabet_split(ALPHABETS, (0.6, 0.2, 0.2), seed=0)
    assert all(torch.equal(splits[k], again[k]) for k in splits)
    seeds = {tuple(alphabet_split(ALPHABETS, (0.6, 0.2, 0.2), seed=s)["test"].tolist()) for s in range(10)}
    assert len(seeds) > 1


def test_alphabet_split_by_name_and_one_split():
    test = alphabet_split(ALPHABETS, {"test": ["b"], "val": "e"}, split="test")
    assert test.tolist() == [3, 4, 5, 6]
    train = alphabet_split(ALPHABETS, {"test": ["b"], "val": "e"}, split="train")
    assert {ALPHABETS[i] for i in train.tolist()} == {"a", "c", "d"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="validation"), "split must be one of 'train', 'val', 'test'"),
    (dict(fractions={"holdout": ["a"]}), "keys must be among 'train', 'val', 'test'"),
    (dict(fractions={"test": ["z"]}), "unknown alphabets"),
    (dict(fractions=(0.5, 0.5)), "three non-negative numbers"),
    (dict(fractions=(0.5, 0.2, 0.2)), "summing to 1"),
    (dict(fractions={"test": ["a"], "val": ["a"]}), "in both"),
])
def test_alphabet_split_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alphabet_split(ALPHABETS, **kwargs)


def test_episode_checks_shapes():
    with pytest.raises(ValueError, match="batch size"):
        Episode(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(3, 3, 1), torch.zeros(3, 3, 1))


def test_scrambled_family_keeps_values_and_breaks_structure():
    from mlbook.tasks import ScrambledFamily

    base = SinusoidFamily(shots=20, queries=20)
    plain = base.sample(64, torch.Generator().manual_seed(0))
    scrambled = ScrambledFamily(base).sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(plain.support_x, scrambled.support_x)
    assert torch.equal(plain.support_y.sort(1).values, scrambled.support_y.sort(1).values)
    assert not torch.equal(plain.support_y, scrambled.support_y)
    with pytest.raises(ValueError, match="base"):
        ScrambledFamily(object())


def test_swapped_support_gives_each_query_set_another_tasks_support():
    family = ImageClassFamily(_labelled_images(), ways=3, shots=2, queries=2)
    true = family.sample(4, torch.Generator().manual_seed(3))
    swapped = SwappedSupportFamily(family).sample(4, torch.Generator().manual_seed(3))
    assert torch.equal(swapped.query_x, true.query_x) and torch.equal(swapped.query_y, true.query_y)
    for i in range(4):
        assert torch.equal(swapped.support_x[i], true.support_x[(i + 1) % 4])
        assert torch.equal(swapped.support_y[i], true.support_y[(i + 1) % 4])
    with pytest.raises(ValueError, match="at least two tasks"):
        SwappedSupportFamily(family).sample(1, torch.Generator())
    with pytest.raises(ValueError, match="task family"):
        SwappedSupportFamily(object())


def test_union_characters_overlay_two_characters_of_one_alphabet_drawer_by_drawer():
    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    for c in range(6):
        images[c, :, c // 4, c % 4] = 255            # character c: one stroke pixel of its own
    images[:, :, 3, 3] = torch.arange(3, dtype=torch.uint8) * 10  # the drawer's mark, shared
    alphabets = ["A", "A", "A", "B", "B", "C"]
    train = torch.tensor([0, 1, 2, 3, 4])              # C is held out: it gets no new class
    grown, names, classes = union_characters(images, alphabets, train, 1.0, seed=0)
    assert grown.shape == (11, 3, 4, 4) and names[:6] == alphabets and names[6:] == ["A"] * 3 + ["B"] * 2
    assert torch.equal(grown[:6], images) and classes.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    for new in range(6, 11):
        strokes = {c for c in range(6) if grown[new, 0, c // 4, c % 4] == 255}
        assert len(strokes) == 2 and {alphabets[c] for c in strokes} == {names[new]}
        first, second = sorted(strokes)
        assert torch.equal(grown[new], torch.maximum(images[first], images[second]))
    again = union_characters(images, alphabets, train, 1.0, seed=0)
    assert torch.equal(again[0], grown) and torch.equal(again[2], classes)
    assert union_characters(images, alphabets, train, 0.0)[0] is images
    assert union_characters(images, alphabets, train, 0.5)[0].shape[0] == 6 + 2 + 1  # round(1.5), round(1)
    with pytest.raises(ValueError, match="per_character must be a finite number >= 0"):
        union_characters(images, alphabets, train, -1.0)
    with pytest.raises(ValueError, match="one alphabet per class"):
        union_characters(images, alphabets[:5], train, 1.0)
