"""Prototypical and Matching Networks: formulas, batched == per-task paths, and they learn."""
import pytest
import torch

from mlbook.learners.base import Learner
from mlbook.learners.matching import MatchingNet, attention_predict
from mlbook.learners.protonet import (ProtoNet, local_similarities, prototypes, reconstruction_similarities,
                                      squared_distances)
from mlbook.models import Conv4
from mlbook.tasks import Episode, ImageClassFamily
from mlbook.train import evaluate, meta_train


def small_conv():
    return Conv4(out_features=0, channels=8, image_size=16)


def easy_images(classes=24, examples=20, size=16, seed=0):
    """Each class is a random template plus per-example noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(classes, 1, size, size, generator=g) > 0.7).float()
    noise = 0.25 * torch.rand(classes, examples, size, size, generator=g)
    return ((0.75 * templates + noise).clamp(0, 1) * 255).to(torch.uint8)


def double(episode):
    return Episode(episode.support_x.double(), episode.support_y, episode.query_x.double(), episode.query_y)


def test_prototypes_are_class_means():
    z = torch.tensor([[0.0, 2.0], [2.0, 4.0], [10.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 2])
    expected = torch.tensor([[1.0, 3.0], [10.0, 0.0], [5.0, 5.0]])
    assert torch.allclose(prototypes(z, y, 3), expected)
    batched = prototypes(torch.stack([z, z + 1]), torch.stack([y, y]), 3)
    assert torch.allclose(batched[1], expected + 1)


def test_squared_distances_match_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(squared_distances(a, b), torch.cdist(a, b) ** 2, atol=1e-10)


def test_attention_predict_is_a_distribution_and_a_nearest_neighbour_when_sharp():
    support = torch.eye(3)
    query = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 1.0]])
    p = attention_predict(query, support, torch.tensor([2, 0, 1]), 3, scale=100.0)
    assert torch.allclose(p.sum(-1), torch.ones(2))
    assert p.argmax(-1).tolist() == [2, 1]


@pytest.mark.parametrize("make", [
    lambda: ProtoNet(small_conv()),
    lambda: ProtoNet(small_conv(), distance="cosine", scale=5.0),
    lambda: ProtoNet(small_conv(), distance="cosine", scale=5.0, learn_scale=True),
    lambda: ProtoNet(Conv4(out_features=0, channels=8, image_size=16, pools=2), distance="local", scale=5.0,
                     learn_scale=True, channels=8),
    lambda: MatchingNet(small_conv()),
    lambda: MatchingNet(small_conv(), fce=True),
], ids=["protonet", "protonet-cosine", "protonet-cosine-learned", "protonet-local", "matching", "matching-fce"])
def test_batched_paths_equal_the_per_task_interface(make):
    """The fast batched meta-loss and evaluation equal adapt/predict task by task (float64)."""
    learner = make()
    episode = double(ImageClassFamily(easy_images(), 5, 2, 3).sample(3, torch.Generator().manual_seed(1)))
    state = learner.init(0, dtype=torch.float64)
    fast, slow = learner.evaluate_batch(state, episode), Learner.evaluate_batch(learner, state, episode)
    assert torch.allclose(fast["loss"], slow["loss"], atol=1e-12)
    assert torch.equal(fast["accuracy"], slow["accuracy"])
    params = learner.parameters(state)
    g_fast = torch.autograd.grad(learner.meta_loss(state, episode), params)
    g_slow = torch.autograd.grad(Learner.meta_loss(learner, state, episode), params)
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in g_fast), "every parameter (LSTMs included) gets a gradient"


def test_protonet_logits_are_negative_squared_distances_to_prototypes():
    learner = ProtoNet(small_conv())
    episode = ImageClassFamily(easy_images(), 4, 3, 2).sample(1, torch.Generator().manual_seed(2))
    state = learner.init(0)
    sx, sy, qx = episode.support_x[0], episode.support_y[0], episode.query_x[0]
    task = learner.adapt(state, sx, sy)
    zs, zq = learner.embed(state, sx), learner.embed(state, qx)
    protos = torch.stack([zs[sy == n].mean(0) for n in range(4)])
    assert torch.allclose(task["prototypes"], protos, atol=1e-5)
    assert torch.allclose(learner.predict(task, qx), -torch.cdist(zq, protos) ** 2, atol=1e-3, rtol=1e-4)


def test_protonet_evaluates_in_slices_of_images_only_where_each_image_is_embedded_alone():
    """Evaluation embeds 64 images at a time (faster on a CPU) with the same values; a model with
    batch statistics still sees its whole batch, since each embedding depends on the others."""
    x = torch.rand(150, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = []

    def record_batch_sizes(learner):
        learner.model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))

    alone = ProtoNet(small_conv())
    record_batch_sizes(alone)
    state = alone.init(0, dtype=torch.float64)
    with torch.no_grad():
        sliced = alone.embed(state, x)
        assert calls == [64, 64, 22]
        pieces = torch.cat([alone.embed(state, part) for part in x.split(50)])
    calls.clear()
    whole = alone.embed(state, x).detach()
    assert calls == [150], "with a graph to keep, one call"
    assert torch.allclose(sliced, whole, atol=1e-12) and torch.allclose(pieces, whole, atol=1e-12)

    batch_stats = ProtoNet(Conv4(out_features=0, channels=8, image_size=16, norm="batch"))
    record_batch_sizes(batch_stats)
    state = batch_stats.init(0, dtype=torch.float64)
    calls.clear()
    with torch.no_grad():
        evaluated = batch_stats.embed(state, x)
        assert calls == [150]
        pieces = torch.cat([batch_stats.embed(state, part) for part in x.split(64)])
    assert torch.allclose(evaluated, batch_stats.embed(state, x).detach(), atol=1e-12)
    assert not torch.allclose(evaluated, pieces, atol=1e-6), "batch statistics depend on the call's images"


@pytest.mark.parametrize("make", [lambda: ProtoNet(small_conv()), lambda: MatchingNet(small_conv())],
                         ids=["protonet", "matching"])
def test_metric_learners_learn_unseen_classes(make):
    images = easy_images(classes=30)
    train = ImageClassFamily(images, 5, 1, 5, classes=torch.arange(20))
    test = ImageClassFamily(images, 5, 1, 5, classes=torch.arange(20, 30))
    learner = make()
    before = evaluate(learner, learner.init(0), test, episodes=40).mean
    result = meta_train(learner, train, steps=30, meta_batch_size=2, outer_lr=3e-3, seed=0)
    after = evaluate(learner, result.state, test, episodes=40).mean
    assert after > max(before + 0.1, 0.5), (before, after)
    assert all(a == a for a in result.accuracies), "metric learners report a live accuracy"


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="distance"):
        ProtoNet(small_conv(), distance="manhattan")
    with pytest.raises(ValueError, match="scale"):
        MatchingNet(small_conv(), scale=0)
    with pytest.raises(ValueError, match="model"):
        ProtoNet(model="conv4")


def test_cosine_protonet_learns_its_temperature():
    from mlbook.learners.base import LearnerConfig

    learner = ProtoNet.from_config(LearnerConfig(distance="cosine", channels=8, image_size=16))
    assert learner.learn_scale and learner.scale == 10.0
    state = learner.init(0)
    assert any(p is state["log_scale"] for p in learner.parameters(state))
    family = ImageClassFamily(easy_images(), ways=5, shots=1, queries=3)
    result = meta_train(learner, family, 30, meta_batch_size=2, outer_lr=1e-2, seed=0)
    learned = result.state["log_scale"].item()
    assert learned != 0.0, "the temperature must move with training"
    # The temperature is the scale of the logits: doubling it doubles them.
    episode = family.sample(2, torch.Generator().manual_seed(1))
    logits = learner.episode_logits(result.state, episode)
    doubled = {**result.state, "log_scale": result.state["log_scale"] + torch.log(torch.tensor(2.0))}
    assert torch.allclose(learner.episode_logits(doubled, episode), 2 * logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "local", "reconstruction"])
def test_a_fixed_scale_holds_the_temperature(distance):
    from mlbook.learners.base import LearnerConfig

    learner = ProtoNet.from_config(LearnerConfig(distance=distance, channels=8, image_size=16, pools=2,
                                                 fixed_scale=30.0))
    assert not learner.learn_scale and learner.scale == 30.0
    state = learner.init(0)
    assert "log_scale" not in state
    family = ImageClassFamily(easy_images(), ways=5, shots=1, queries=3)
    result = meta_train(learner, family, 3, meta_batch_size=2, outer_lr=1e-2, seed=0)
    assert "log_scale" not in result.state
    # The logits are the similarities times 30: the same learner at scale 1 gives a thirtieth.
    unit = ProtoNet(learner.model, distance=distance, scale=1.0, channels=learner.channels)
    episode = family.sample(2, torch.Generator().manual_seed(1))
    assert torch.allclose(learner.episode_logits(result.state, episode),
                          30 * unit.episode_logits(result.state, episode), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fixed_scale applies to distance='cosine', 'local' or 'reconstruction'"):
        ProtoNet.from_config(LearnerConfig(distance="euclidean", fixed_scale=30.0))


def test_local_similarity_is_the_symmetric_mean_of_best_matches():
    """Each descriptor's best cosine match, averaged, from both sides (written out with loops)."""
    g = torch.Generator().manual_seed(0)
    channels, places = 6, 5
    query = torch.randn(2, 3, channels * places, generator=g, dtype=torch.float64)
    support = torch.randn(2, 4, channels * places, generator=g, dtype=torch.float64)
    got = local_similarities(query, support, channels)
    assert got.shape == (2, 3, 4)
    for b in range(2):
        for m in range(3):
            for s in range(4):
                a = torch.nn.functional.normalize(query[b, m].view(channels, places).T, dim=-1)
                c = torch.nn.functional.normalize(support[b, s].view(channels, places).T, dim=-1)
                table = a @ c.T
                expected = 0.5 * (table.max(1).values.mean() + table.max(0).values.mean())
                assert torch.allclose(got[b, m, s], expected, atol=1e-12)


@pytest.mark.parametrize("score", ["local", "local-sqrt-norm", "reconstruction"])
def test_without_a_graph_the_similarities_come_in_small_blocks_with_the_same_numbers(monkeypatch, score):
    """Without a graph an evaluation batch is scored episode by episode, a few query rows at a
    time, so that no table of products outgrows LOCAL_TABLE_BYTES: the numbers of one call."""
    import mlbook.learners.protonet as protonet

    g = torch.Generator().manual_seed(1)
    channels, places, shots = 6, 5, 4
    many = torch.randn(3, 2, 50, channels * places, generator=g, dtype=torch.float64)
    support = torch.randn(3, 2, shots, channels * places, generator=g, dtype=torch.float64)

    def scored(query, pool):
        if score == "reconstruction":
            return reconstruction_similarities(query, pool, channels)
        return local_similarities(query, pool, channels, weights="sqrt-norm" if score.endswith("norm") else "equal")

    with torch.enable_grad():
        whole = scored(many, support)
    row_bytes = places * shots * places * 8
    calls = []
    monkeypatch.setattr(protonet, "LOCAL_TABLE_BYTES", 7 * row_bytes)
    inner = protonet._in_blocks

    def counted(block, query_parts, support_parts):
        def counting(*parts):
            calls.append(parts[0].shape)
            return block(*parts)
        return inner(counting, query_parts, support_parts)

    monkeypatch.setattr(protonet, "_in_blocks", counted)
    with torch.no_grad():
        blocked = scored(many, support)
        # One pool for every episode: the leading dimensions broadcast.
        shared = scored(many, support[0, 0])
    assert blocked.shape == whole.shape == (3, 2, 50, shots)
    assert torch.allclose(blocked, whole, atol=1e-12)
    assert torch.allclose(shared, scored(many, support[0, 0].expand(3, 2, -1, -1)), atol=1e-12)
    # Six episodes of 50 rows, 7 rows a call: 8 calls each, the last of one row.
    assert len(calls) >= 6 * 8 and max(shape[0] for shape in calls) == 7 and calls[7][0] == 1


def test_local_similarity_forgives_a_shift_that_the_flattened_distance_does_not():
    """A map moved by one place still matches itself best; position by position it does not."""
    g = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(5, 8, 6, 6, generator=g, dtype=torch.float64))
    maps[..., :, -1] = 0.0                             # an empty last column, so the shift loses nothing
    shifted = torch.roll(maps, shifts=1, dims=-1)       # every part one place to the right
    support, query = maps.flatten(1), shifted.flatten(1)
    assert local_similarities(query, support, 8).argmax(-1).tolist() == list(range(5))
    # The empty column's descriptors are zero and match nothing: 30 of 36 places score 1 with themselves.
    assert torch.allclose(local_similarities(support, support, 8).diagonal(),
                          torch.full((5,), 30 / 36, dtype=torch.float64))
    assert squared_distances(query, support).argmin(-1).tolist() != list(range(5))


def test_local_window_limits_how_far_a_descriptor_may_look_for_its_match():
    """Window r: best matches among places at most r cells away (written out with loops)."""
    g = torch.Generator().manual_seed(1)
    channels, side = 4, 4
    query = torch.randn(3, channels * side * side, generator=g, dtype=torch.float64)
    support = torch.randn(2, channels * side * side, generator=g, dtype=torch.float64)
    for window in (0, 1, 2):
        got = local_similarities(query, support, channels, window=window)
        for m in range(3):
            for s in range(2):
                a = torch.nn.functional.normalize(query[m].view(channels, -1).T, dim=-1)
                c = torch.nn.functional.normalize(support[s].view(channels, -1).T, dim=-1)
                table = a @ c.T
                for p in range(side * side):
                    for r in range(side * side):
                        if max(abs(p // side - r // side), abs(p % side - r % side)) > window:
                            table[p, r] = -2.0
                expected = 0.5 * (table.max(1).values.mean() + table.max(0).values.mean())
                assert torch.allclose(got[m, s], expected, atol=1e-12)
    # A window as wide as the map is no window at all.
    assert torch.allclose(local_similarities(query, support, channels, window=side - 1),
                          local_similarities(query, support, channels), atol=1e-12)


def test_local_weights_average_each_best_match_by_the_root_of_its_length():
    """weights='sqrt-norm': each direction's mean weighs a descriptor's best match by the square
    root of its length (written out with loops), with or without the row-split evaluation path."""
    g = torch.Generator().manual_seed(2)
    channels, places = 4, 9
    query = torch.randn(20, channels * places, generator=g, dtype=torch.float64)
    support = torch.randn(3, channels * places, generator=g, dtype=torch.float64)
    with torch.no_grad():  # more query rows than one call compares: the split path
        got = local_similarities(query, support, channels, weights="sqrt-norm")
    for m in range(20):
        for s in range(3):
            a, c = query[m].view(channels, -1).T, support[s].view(channels, -1).T
            table = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).T
            wa, wc = a.norm(dim=-1).sqrt(), c.norm(dim=-1).sqrt()
            expected = 0.5 * ((table.max(1).values * wa).sum() / wa.sum()
                              + (table.max(0).values * wc).sum() / wc.sum())
            assert torch.allclose(got[m, s], expected, atol=1e-9)
    assert torch.allclose(local_similarities(query, support, channels, weights="sqrt-norm"), got)
    assert not torch.allclose(got, local_similarities(query, support, channels)), \
        "the weights change the similarities, so this test can fail"
    # Descriptors of one length are weighed alike: the plain mean.
    unit = torch.nn.functional.normalize(query.view(20, channels, places), dim=1).flatten(1)
    assert torch.allclose(local_similarities(unit, unit[:3], channels, weights="sqrt-norm"),
                          local_similarities(unit, unit[:3], channels), atol=1e-12)
    # A zero descriptor leaves the gradient finite.
    zeros = query.clone().requires_grad_(True)
    with torch.no_grad():
        zeros.view(20, channels, places)[:, :, 0] = 0.0
    local_similarities(zeros, support, channels, weights="sqrt-norm").sum().backward()
    assert torch.isfinite(zeros.grad).all()
    with pytest.raises(ValueError, match="weights must be one of"):
        local_similarities(query, support, channels, weights="norm")
    with pytest.raises(ValueError, match="local_weights applies to distance='local' only"):
        ProtoNet(distance="euclidean", local_weights="sqrt-norm")


def test_with_local_weights_rescores_the_same_embedding_and_leaves_the_learner_alone():
    """A trained network rescored with other weights: the same model and state, the weighted
    similarities as logits, and the original learner unchanged."""
    channels = 8
    learner = ProtoNet(Conv4(out_features=0, channels=channels, image_size=16, pools=2), distance="local",
                       channels=channels, scale=3.0)
    state = learner.init(0)
    episode = ImageClassFamily(easy_images(), 3, 2, 2).sample(1, torch.Generator().manual_seed(0))
    x, y, qx = episode.support_x[0], episode.support_y[0], episode.query_x[0]
    rescored = learner.with_local_weights("sqrt-norm")
    assert rescored.model is learner.model and learner.local_weights == "equal"
    with torch.no_grad():
        support, query = learner.embed(state, x), learner.embed(state, qx)
        expected = 3.0 * local_similarities(query, support, channels, weights="sqrt-norm") \
            @ (torch.nn.functional.one_hot(y, 3).to(query.dtype) / 2)
        got = rescored.predict(rescored.adapt(state, x, y), qx)
        plain = learner.predict(learner.adapt(state, x, y), qx)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain), "the weights change the logits, so this test can fail"
    assert torch.equal(learner.with_local_weights("equal").predict(learner.adapt(state, x, y), qx), plain)
    with pytest.raises(ValueError, match="local_weights must be one of"):
        learner.with_local_weights("norm")
    with pytest.raises(ValueError, match="local_weights applies to distance='local' only"):
        ProtoNet(small_conv()).with_local_weights("sqrt-norm")


def test_local_window_forgives_a_small_shift_but_not_a_part_moved_across_the_character():
    g = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(5, 8, 6, 6, generator=g, dtype=torch.float64))
    maps[..., :, -3:] = 0.0                            # three empty columns: shifts lose nothing
    near, far = torch.roll(maps, shifts=1, dims=-1), torch.roll(maps, shifts=3, dims=-1)
    support = maps.flatten(1)
    unlimited = local_similarities(far.flatten(1), support, 8).diagonal()
    # One place over is within a window of 1, as close a match as without a window ...
    assert torch.allclose(local_similarities(near.flatten(1), support, 8, window=1).diagonal(),
                          local_similarities(near.flatten(1), support, 8).diagonal(), atol=1e-12)
    # ... three places over is out of its reach and scores lower than without one.
    assert (local_similarities(far.flatten(1), support, 8, window=1).diagonal() < unlimited - 0.1).all()


def test_local_window_is_checked_and_read_from_the_config():
    from mlbook.learners.base import LearnerConfig

    with pytest.raises(ValueError, match="local_window applies to distance='local'"):
        ProtoNet(small_conv(), distance="euclidean", local_window=1)
    with pytest.raises(ValueError, match="local_window must be"):
        ProtoNet(small_conv(), distance="local", channels=8, local_window=-1)
    with pytest.raises(ValueError, match="square"):
        local_similarities(torch.zeros(2, 4 * 6), torch.zeros(3, 4 * 6), channels=4, window=1)
    learner = ProtoNet.from_config(LearnerConfig(distance="local", channels=8, image_size=16, pools=2,
                                                 local_window=1))
    assert learner.local_window == 1 and "local_window=1" in repr(learner)


def test_reconstruction_similarity_is_the_symmetric_ridge_error_written_out():
    """Each descriptor rebuilt by ridge regression on the other image's descriptors, minus the mean
    squared error, from both sides (written out with explicit solves), also on the split path."""
    g = torch.Generator().manual_seed(4)
    channels, places, ridge = 6, 5, 0.3
    query = torch.randn(2, 20, channels * places, generator=g, dtype=torch.float64)
    support = torch.randn(2, 3, channels * places, generator=g, dtype=torch.float64)

    def error(target, pool):
        t = torch.nn.functional.normalize(target.view(channels, places).T, dim=-1)
        s = torch.nn.functional.normalize(pool.view(channels, places).T, dim=-1)
        weights = torch.linalg.solve(s @ s.T + ridge * torch.eye(places, dtype=s.dtype), s @ t.T).T
        return (t - weights @ s).pow(2).sum(-1).mean()
    got = reconstruction_similarities(query, support, channels, ridge=ridge)
    assert got.shape == (2, 20, 3)
    for b in range(2):
        for m in range(20):
            for s in range(3):
                expected = -0.5 * (error(query[b, m], support[b, s]) + error(support[b, s], query[b, m]))
                assert torch.allclose(got[b, m, s], expected, atol=1e-5)
    with torch.no_grad():  # more query rows than one call compares: the split path
        assert torch.allclose(reconstruction_similarities(query, support, channels, ridge=ridge), got, atol=1e-6)
    # A larger ridge rebuilds less: every similarity falls.
    assert (reconstruction_similarities(query, support, channels, ridge=3.0) < got).all()
    with pytest.raises(ValueError, match="ridge"):
        reconstruction_similarities(query, support, channels, ridge=0.0)
    with pytest.raises(ValueError, match="channels"):
        reconstruction_similarities(torch.zeros(2, 10), torch.zeros(3, 10), channels=4)


def test_reconstruction_scores_a_missing_part_and_rebuilds_a_map_from_itself():
    """A map rebuilds itself almost exactly (similarity near 0, the most there is); a map that
    lacks one of the other's parts cannot rebuild that part, and scores lower."""
    g = torch.Generator().manual_seed(5)
    channels, places = 8, 6
    parts = torch.nn.functional.normalize(torch.randn(places, channels, generator=g, dtype=torch.float64), dim=-1)
    lacking = parts.clone()
    lacking[-1] = parts[0]                    # one place repeats a part instead of the last one
    full, lacking = parts.T.flatten()[None], lacking.T.flatten()[None]
    itself = reconstruction_similarities(full, full, channels, ridge=1e-6)
    assert itself.item() <= 0 and itself.abs().item() < 1e-5
    # From the lacking map's side everything is rebuilt; from the full map's the last part is not.
    assert reconstruction_similarities(full, lacking, channels, ridge=1e-6).item() < itself.item() - 0.01


def test_reconstruction_runs_in_float32_under_bfloat16_autocast():
    """Under bfloat16 autocast the ridge algebra stays in float32: a float32 result, near the
    float32 one."""
    g = torch.Generator().manual_seed(6)
    query, support = torch.randn(4, 8 * 9, generator=g), torch.randn(3, 8 * 9, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = reconstruction_similarities(query, support, 8)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, reconstruction_similarities(query, support, 8), atol=0.03)


def test_reconstruction_protonet_reads_the_config_and_learns():
    from mlbook.learners.base import LearnerConfig

    with pytest.raises(ValueError, match="channels"):
        ProtoNet(small_conv(), distance="reconstruction")
    learner = ProtoNet.from_config(LearnerConfig(distance="reconstruction", channels=8, image_size=16, pools=2))
    assert learner.distance == "reconstruction" and learner.channels == 8 and learner.learn_scale
    family = ImageClassFamily(easy_images(), ways=5, shots=2, queries=3)
    result = meta_train(learner, family, 40, meta_batch_size=2, outer_lr=1e-2, seed=0)
    accuracy = evaluate(learner, result.state, family, episodes=40, seed=5).mean
    assert accuracy > 0.6, f"the reconstruction similarity must learn the easy classes, got {accuracy}"


def test_local_protonet_needs_the_channels_and_reads_them_from_the_config():
    from mlbook.learners.base import LearnerConfig

    with pytest.raises(ValueError, match="channels"):
        ProtoNet(small_conv(), distance="local")
    with pytest.raises(ValueError, match="channels"):
        local_similarities(torch.zeros(2, 10), torch.zeros(3, 10), channels=4)
    learner = ProtoNet.from_config(LearnerConfig(distance="local", channels=8, image_size=16, pools=2))
    assert learner.channels == 8 and learner.learn_scale
    family = ImageClassFamily(easy_images(), ways=5, shots=2, queries=3)
    result = meta_train(learner, family, 40, meta_batch_size=2, outer_lr=1e-2, seed=0)
    accuracy = evaluate(learner, result.state, family, episodes=40, seed=5).mean
    assert accuracy > 0.6, f"the local similarity must learn the easy classes, got {accuracy}"
