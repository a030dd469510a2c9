"""The learned optimiser starts as gradient descent and meta-learns its rule (Chapter 4)."""
import torch

from mlbook.learners import MAML, LearnedOptimiser
from mlbook.models import MLP
from mlbook.tasks import SinusoidFamily
from mlbook.train import evaluate, meta_train


def test_before_meta_training_the_rule_is_gradient_descent():
    model = MLP(hidden=(16, 16))
    learned = LearnedOptimiser(model, inner_lr=0.01, steps=3, loss="mse")
    maml = MAML(model, inner_lr=0.01, steps=3, loss="mse")
    state = learned.init(0)
    ep = SinusoidFamily(shots=5, queries=5).sample(2, torch.Generator().manual_seed(0))
    a = learned.adapt(state, ep.support_x[0], ep.support_y[0])
    b = maml.adapt({"params": state["params"], "inner_lr": torch.tensor([0.01] * 3)}, ep.support_x[0], ep.support_y[0])
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_the_rule_gets_a_meta_gradient_and_learning_it_helps():
    family = SinusoidFamily(shots=5, queries=5)
    learned = LearnedOptimiser(MLP(hidden=(32, 32)), inner_lr=0.01, steps=2, loss="mse")
    state = learned.init(0)
    loss = learned.meta_loss(state, family.sample(4, torch.Generator().manual_seed(1)))
    rule_grads = torch.autograd.grad(loss, list(state["rule"].values()), allow_unused=True)
    assert rule_grads[-1].abs().sum() > 0, "the rule's output layer is trained by the outer loop"
    trained = meta_train(learned, family, 150, meta_batch_size=8, outer_lr=3e-3, seed=0).state
    moved = (trained["rule"]["out.weight"].abs().sum() > 0).item()
    before = evaluate(learned, learned.init(0), family, episodes=50, seed=7).mean
    after = evaluate(learned, trained, family, episodes=50, seed=7).mean
    assert moved and after < 0.8 * before, (before, after)
