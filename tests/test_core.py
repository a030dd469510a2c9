"""The spine of mlbook: seeds, devices, budgets, episodes, models, MAML, the trainer."""
import math

import pytest
import torch

import mlbook
from mlbook import MAML, MLP, Conv4, SinusoidFamily, init_params, meta_train, evaluate


def test_seed_everything_repeats_random_streams():
    mlbook.seed_everything(3)
    a = torch.rand(4)
    mlbook.seed_everything(3)
    assert torch.equal(a, torch.rand(4))
    with pytest.raises(ValueError, match="seed"):
        mlbook.seed_everything(-1)


def test_get_device_defaults_and_errors():
    assert mlbook.get_device().type in {"cuda", "mps", "cpu"}
    assert mlbook.get_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        mlbook.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            mlbook.get_device("cuda")


def test_budget_follows_fast_mode(monkeypatch):
    monkeypatch.setenv("MLBOOK_FAST", "1")
    assert mlbook.is_fast() and mlbook.budget(100, 3) == 3
    monkeypatch.setenv("MLBOOK_FAST", "0")
    assert not mlbook.is_fast() and mlbook.budget(100, 3) == 100


def test_sinusoid_family_ranges_shapes_and_determinism():
    family = SinusoidFamily(shots=10, queries=7)
    episode, params = family.sample_with_parameters(64, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (64, 10, 1) and episode.query_y.shape == (64, 7, 1)
    amplitude, phase = params[:, 0], params[:, 1]
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
    assert phase.min() >= 0 and phase.max() <= math.pi
    assert episode.support_x.abs().max() <= 5.0
    torch.testing.assert_close(episode.support_y, amplitude[:, None, None] * torch.sin(episode.support_x - phase[:, None, None]))
    again = family.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(again.query_y, episode.query_y)
    with pytest.raises(ValueError, match="shots"):
        SinusoidFamily(shots=0)
    with pytest.raises(ValueError, match="batch_size"):
        family.sample(-2, torch.Generator())


def test_models_check_inputs():
    with pytest.raises(ValueError, match="norm"):
        Conv4(norm="layer")
    with pytest.raises(ValueError, match="x must have shape"):
        Conv4()(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="in_features"):
        MLP(in_features=0)
    assert Conv4(out_features=5)(torch.zeros(3, 1, 28, 28)).shape == (3, 5)
    assert Conv4(out_features=0, channels=8)(torch.zeros(3, 1, 28, 28)).shape == (3, 8)


def test_init_params_is_seeded_and_leaves_module_alone():
    model = MLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b, c = init_params(model, 1), init_params(model, 1), init_params(model, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_maml_bad_input():
    with pytest.raises(ValueError, match="inner_lr"):
        MAML(MLP(), inner_lr=0, loss="mse")
    with pytest.raises(ValueError, match="steps"):
        MAML(MLP(), steps=0, loss="mse")
    with pytest.raises(ValueError, match="loss"):
        MAML(MLP(), loss="hinge")
    learner = MAML(MLP(), loss="mse")
    state = learner.init(0)
    state["params"].pop("head.bias")
    with pytest.raises(ValueError, match="params does not fit"):
        learner.adapt(state, torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="support set has no examples"):
        learner.adapt(learner.init(0), torch.zeros(0, 1), torch.zeros(0, 1))


def test_maml_meta_training_beats_random_init_and_is_deterministic():
    family = SinusoidFamily(shots=10, queries=10)
    learner = MAML(MLP(), inner_lr=0.01, steps=1, loss="mse")
    first = meta_train(learner, family, steps=300, meta_batch_size=10, outer_lr=2e-3, seed=0)
    second = meta_train(learner, family, steps=300, meta_batch_size=10, outer_lr=2e-3, seed=0)
    assert first.losses == second.losses
    trained = evaluate(learner, first.state, family, episodes=200)
    untrained = evaluate(learner, learner.init(0), family, episodes=200)
    assert trained.metric == "loss"
    assert trained.mean < 0.6 * untrained.mean, (trained, untrained)
    assert trained.ci95 > 0


def test_episode_validation():
    x = torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="batch size"):
        mlbook.Episode(x, x, torch.zeros(3, 3, 1), torch.zeros(3, 3, 1))
    with pytest.raises(ValueError, match="non-empty support"):
        mlbook.Episode(torch.zeros(2, 0, 1), torch.zeros(2, 0, 1), x, x)


def test_meta_backward_matches_meta_loss_gradient_for_every_strategy(monkeypatch):
    monkeypatch.setattr(mlbook.taskmap, "_worker_count", lambda: 2)  # 'threads' really uses two
    images = (torch.rand(12, 5, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    episode = mlbook.ImageClassFamily(images, ways=3, shots=1, queries=2).sample(3, torch.Generator().manual_seed(1))
    for strategy in ("loop", "vmap", "threads"):
        learner = MAML(Conv4(3, channels=8), inner_lr=0.4, steps=1, strategy=strategy)
        reference_state, state = learner.init(0), learner.init(0)
        loss = learner.meta_loss(reference_state, episode)
        expected = torch.autograd.grad(loss, learner.parameters(reference_state))
        got_loss, _ = learner.meta_backward(state, episode, scale=0.5)
        torch.testing.assert_close(got_loss, loss.detach())
        for g, p in zip(expected, learner.parameters(state)):
            torch.testing.assert_close(p.grad, 0.5 * g, rtol=1e-4, atol=1e-6)
