"""Pre-training a classifier as the few-shot baseline (Chapter 5)."""
import pytest
import torch

from mlbook import Conv4, ImageClassFamily, evaluate
from mlbook.learners.protonet import ProtoNet
from mlbook.pretrain import pretrain, sample_labelled_images


def _bars(classes=12, examples=6, size=16, seed=0):
    """Class c is a bright bar: row c, or column c - size beyond the rows; noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    images = (40 * torch.rand(classes, examples, size, size, generator=g)).to(torch.uint8)
    for c in range(classes):
        if c < size:
            images[c, :, c, :] = 255
        else:
            images[c, :, :, c - size] = 255
    return images


def test_labelled_batches_cover_the_pool_and_its_rotations():
    images = torch.zeros(3, 2, 4, 4, dtype=torch.uint8)
    images[:, :, 0, 0] = 255                         # a marker that rotations move
    images[:, :, 2, 2] = torch.tensor([10, 20, 30])[:, None]
    pool = torch.tensor([0, 2])
    x, y = sample_labelled_images(images, 400, torch.Generator().manual_seed(0), pool, rotate=True)
    assert x.shape == (400, 1, 4, 4) and x.dtype == torch.float32 and y.unique().tolist() == list(range(8))
    for image, label in zip(x[:, 0], y.tolist()):
        cls, turns = pool[label % 2].item(), label // 2
        assert torch.allclose(image, torch.rot90(images[cls, 0].float() / 255, turns, dims=(0, 1)))
    with pytest.raises(ValueError, match="at least two"):
        sample_labelled_images(images, 4, torch.Generator(), torch.tensor([1]))


def test_pretrained_embedding_beats_a_random_one_on_new_classes():
    images = _bars()
    train, test = torch.arange(0, 12, 2), torch.arange(1, 12, 2)
    model = Conv4(out_features=0, channels=8, image_size=16)
    result = pretrain(model, images, steps=60, batch_size=32, lr=1e-2, seed=0, classes=train)
    assert result.images_seen == 60 * 32 and result.num_classes == 6
    assert result.head["weight"].shape[0] == 6 and len(result.losses) == 60
    assert sum(result.losses[-10:]) < 0.5 * sum(result.losses[:10])
    assert set(result.state["params"]) == set(dict(model.named_parameters()))
    # The embedding, never trained on the test classes, classifies their episodes by prototype.
    learner = ProtoNet(Conv4(out_features=0, channels=8, image_size=16))
    family = ImageClassFamily(images, ways=3, shots=1, queries=3, classes=test)
    trained = evaluate(learner, result.state, family, episodes=100).mean
    assert trained > 0.9
    again = pretrain(model, images, steps=60, batch_size=32, lr=1e-2, seed=0, classes=train)
    assert again.losses == result.losses


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"), (dict(lr=-1.0), "lr"),
    (dict(model="conv"), "torch.nn.Module"), (dict(steps=None), "steps or time_limit"),
    (dict(time_limit=0.0), "time_limit"), (dict(precision="half"), "precision"),
    (dict(augment=lambda episode, generator: episode), "images\\(x, generator\\)"),
    (dict(dense=True), "needs channels"),
])
def test_pretrain_bad_input(kwargs, match):
    args = dict(model=Conv4(out_features=0, channels=4, image_size=16), images=_bars(), steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pretrain(**args)


def test_pretrain_stops_at_its_time_limit():
    model = Conv4(out_features=0, channels=4, image_size=16)
    result = pretrain(model, _bars(), batch_size=8, time_limit=0.3)
    assert result.seconds >= 0.3 and len(result.losses) >= 1
    assert result.images_seen == 8 * len(result.losses)
    assert len(pretrain(model, _bars(), steps=3, batch_size=8, time_limit=60.0).losses) == 3


@pytest.mark.parametrize("dense", [False, True], ids=["mean", "dense"])
def test_pretrain_of_a_local_feature_map(dense):
    """With ``channels``, the head reads the map's descriptors: their mean, or each one (dense)."""
    from mlbook.learners import LearnerConfig
    from mlbook.learners.protonet import embedding_for

    config = LearnerConfig(channels=8, image_size=16, pools=2, distance="local")
    model = embedding_for(config)
    result = pretrain(model, _bars(), steps=40, batch_size=32, lr=1e-2, seed=0, channels=8,
                      precision="bfloat16", dense=dense)
    assert result.head["weight"].shape == (12, 8)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    again = pretrain(model, _bars(), steps=40, batch_size=32, lr=1e-2, seed=0, channels=8,
                     precision="bfloat16", dense=dense)
    assert again.losses == result.losses


def test_pretrain_augments_each_batch():
    from mlbook.augment import AffineJitter, Chain

    model = Conv4(out_features=0, channels=4, image_size=16)
    plain = pretrain(model, _bars(), steps=3, batch_size=8, seed=0)
    jitter = AffineJitter(degrees=20, scale=0.2, shear=0.2, shift=0.2)
    jittered = pretrain(model, _bars(), steps=3, batch_size=8, seed=0, augment=Chain(jitter))
    assert jittered.losses != plain.losses
    x = torch.rand(4, 1, 16, 16)
    chained = Chain(jitter, jitter).images(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(chained, jitter.images(jitter.images(x, g), g))


def test_dense_pretraining_classifies_every_place():
    """Dense classification's loss is the mean of one cross-entropy per place of the map."""
    from mlbook.learners import LearnerConfig
    from mlbook.learners.protonet import embedding_for

    model = embedding_for(LearnerConfig(channels=8, image_size=16, pools=2, distance="local"))
    # One step at a learning rate too small to matter: the first loss is the untrained one.
    result = pretrain(model, _bars(), steps=1, batch_size=4, lr=1e-12, seed=3, channels=8, dense=True)
    from mlbook.models import init_params
    from mlbook.taskmap import call

    params = init_params(model, 3)
    x, y = sample_labelled_images(_bars(), 4, torch.Generator().manual_seed(3))
    places = call(model, params, x).unflatten(-1, (8, -1)).transpose(-1, -2)      # [4, P, 8]
    logits = places @ result.head["weight"].T + result.head["bias"]
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[:, p], y) for p in range(places.shape[1])])
    assert result.losses[0] == pytest.approx(expected.mean().item(), rel=1e-4)
