"""Bad input to the library is refused at its boundary, by name, before torch sees it (Chapter 5)."""
import math

import pytest
import torch

from mlbook.learners import MAML, ProtoNet
from mlbook.models import MLP, Conv4
from mlbook.tasks import Episode, ImageClassFamily, LineFamily, SinusoidFamily, sample_nway_kshot
from mlbook.train import evaluate, meta_train

X = torch.zeros(2, 3, 1)
Y = torch.zeros(2, 3, 1)
LABELS = torch.zeros(2, 3, dtype=torch.long)
IMAGES = torch.rand(2, 3, 1, 8, 8)


@pytest.mark.parametrize("fields, message", [
    ((IMAGES.mul(255).to(torch.uint8), LABELS, IMAGES, LABELS), "support_x must be a floating-point"),
    ((IMAGES, LABELS.int(), IMAGES, LABELS.int()), "int64 class labels"),
    ((IMAGES, LABELS.float(), IMAGES, LABELS.float()), "regression target"),
    ((X, Y[..., 0], X, Y[..., 0]), "regression target"),
    ((IMAGES, -LABELS - 1, IMAGES, LABELS), "class labels 0..N-1"),
    ((X[:0], Y[:0], X[:0], Y[:0]), "no tasks"),
    ((torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3)), "support_x must be"),
    ((X, Y, X, LABELS), "both class labels or both regression"),
    ((X.clone().fill_(float("nan")), Y, X, Y), "NaN"),
    ((X, Y, X, Y.clone().fill_(float("inf"))), "query_y holds NaN or infinite"),
    (([[0.0]], Y, X, Y), "must be a torch.Tensor"),
])
def test_bad_episodes_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Episode(*fields)


@pytest.mark.parametrize("make, message", [
    (lambda: SinusoidFamily(noise=float("nan")), "noise"),
    (lambda: SinusoidFamily(noise=-1.0), "noise"),
    (lambda: SinusoidFamily(amplitude=(5.0, 0.1)), "amplitude"),
    (lambda: SinusoidFamily(phase=(1.0, float("nan"))), "phase"),
    (lambda: LineFamily(slope=(3.0, -3.0)), "slope"),
    (lambda: LineFamily(intercept="ab"), "intercept"),
])
def test_bad_families_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_class_listed_twice_is_refused():
    images = (torch.rand(6, 4, 8, 8) * 255).to(torch.uint8)
    with pytest.raises(ValueError, match="must not repeat a class"):
        sample_nway_kshot(images, 2, 1, 1, 1, torch.Generator().manual_seed(0), classes=torch.tensor([1, 1, 2]))


def test_a_learner_refuses_an_episode_it_cannot_score():
    maml = MAML(MLP(), inner_lr=0.01, loss="mse")
    regression = SinusoidFamily(shots=3, queries=3)
    images = ImageClassFamily((torch.rand(6, 4, 16, 16) * 255).to(torch.uint8), ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="episode is classification"):
        meta_train(maml, images, 1, meta_batch_size=2)
    with pytest.raises(ValueError, match="ProtoNet does classification, but the episode is regression"):
        evaluate(ProtoNet(Conv4(0, channels=4, image_size=16)), ProtoNet(Conv4(0, channels=4, image_size=16)).init(0),
                 regression, episodes=2)
    with pytest.raises(ValueError, match="float64 but the learner's state is torch.float32"):
        ep = regression.sample(2, torch.Generator().manual_seed(0))
        maml.meta_loss(maml.init(0), Episode(*(t.double() for t in (ep.support_x, ep.support_y, ep.query_x,
                                                                     ep.query_y))))
    assert math.isfinite(maml.meta_loss(maml.init(0, dtype=torch.float64), Episode(
        *(t.double() for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)))).item())


def test_labels_beyond_the_learners_classes_are_refused():
    maml = MAML(Conv4(3, channels=4, image_size=16), inner_lr=0.1)
    images = ImageClassFamily((torch.rand(8, 4, 16, 16) * 255).to(torch.uint8), ways=4, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"labels must be 0..2: this MAML predicts 3 classes"):
        evaluate(maml, maml.init(0), images, episodes=2)
