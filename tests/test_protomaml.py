"""Proto-MAML: before its inner steps it is ProtoNet; its steps fine-tune the prototype head (Chapter 4)."""
import torch

from mlbook.learners import ProtoMAML, ProtoNet
from mlbook.models import Conv4
from mlbook.tasks import ImageClassFamily


def _episode():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(10, 6, 16, 16, generator=g) * 255).to(torch.uint8)
    return ImageClassFamily(images, ways=4, shots=2, queries=3).sample(2, g)


def test_the_prototype_head_ranks_classes_as_protonet_does():
    embedding = Conv4(out_features=0, channels=8, image_size=16)
    proto_maml = ProtoMAML(embedding, ways=4, inner_lr=1e-12)
    protonet = ProtoNet(embedding)
    state = proto_maml.init(0)
    ep = _episode()
    for i in range(ep.batch_size):
        a = proto_maml.predict(proto_maml.adapt(state, ep.support_x[i], ep.support_y[i]), ep.query_x[i])
        b = protonet.predict(protonet.adapt(state, ep.support_x[i], ep.support_y[i]), ep.query_x[i])
        # -||z - c||^2 and 2 z.c - ||c||^2 differ by ||z||^2, the same for every class of a query.
        torch.testing.assert_close(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), rtol=1e-4, atol=1e-4)


def test_inner_steps_lower_the_support_loss_and_reach_the_embedding_only_when_asked():
    embedding = Conv4(out_features=0, channels=8, image_size=16)
    ep = _episode()
    sx, sy = ep.support_x[0], ep.support_y[0]
    for adapt_body in (False, True):
        learner = ProtoMAML(embedding, ways=4, inner_lr=0.005, steps=3, adapt_body=adapt_body)
        state = learner.init(0)
        start = ProtoMAML(embedding, ways=4, inner_lr=1e-12).adapt(state, sx, sy)
        adapted = learner.adapt(state, sx, sy)
        assert learner.inner_loss(adapted, sx, sy) < learner.inner_loss(start, sx, sy)
        body_moved = any(not torch.equal(adapted[k], state["params"][k]) for k in state["params"])
        assert body_moved == adapt_body


def test_the_meta_gradient_reaches_the_embedding_through_the_prototypes():
    learner = ProtoMAML(Conv4(out_features=0, channels=8, image_size=16), ways=4, inner_lr=0.05, steps=2)
    state = learner.init(0)
    grads = torch.autograd.grad(learner.meta_loss(state, _episode()), learner.parameters(state))
    assert all(g.abs().sum() > 0 for g in grads)
