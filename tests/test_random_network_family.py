"""RandomNetworkFamily: one random tanh network per task (Chapter 2, shared structure)."""
import torch

from mlbook.tasks import Episode, RandomNetworkFamily


def test_shapes_and_determinism():
    family = RandomNetworkFamily(shots=10, queries=7)
    a = family.sample(16, torch.Generator().manual_seed(3))
    b = family.sample(16, torch.Generator().manual_seed(3))
    assert isinstance(a, Episode)
    assert a.support_x.shape == (16, 10, 1) and a.query_y.shape == (16, 7, 1)
    assert torch.equal(a.query_y, b.query_y)


def test_function_matches_its_formula():
    family = RandomNetworkFamily(hidden=3, scale=2.0)
    episode, parameters = family.sample_with_parameters(4, torch.Generator().manual_seed(0))
    a, w, t = parameters.chunk(3, dim=1)
    x = episode.support_x[..., 0]
    expected = 2.0 * (a[:, None] * torch.tanh(w[:, None] * (x[..., None] - t[:, None]))).sum(-1) / 3 ** 0.5
    assert torch.allclose(episode.support_y[..., 0], expected, atol=1e-5)


def test_tasks_differ_and_have_sinusoid_like_scale():
    episode = RandomNetworkFamily(shots=10, queries=10).sample(2000, torch.Generator().manual_seed(1))
    within = episode.query_y.var(1).mean().item()
    assert 1.0 < within < 10.0, within
    # no shared shape: the average function over tasks is flat near zero
    assert episode.query_y.mean().abs().item() < 0.2
