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
    (dict(model="conv"), "torch.nn.Module"),
])
def test_pretrain_bad_input(kwargs, match):
    args = dict(model=Conv4(out_features=0, channels=4, image_size=16), images=_bars(), steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pretrain(**args)
