"""The meta-step recorded as a CUDA graph (mlbook.graphs; Chapter 3).

On a machine without a CUDA GPU only the refusals run: recording needs CUDA.
"""
import pytest
import torch

from mlbook.__main__ import main
from mlbook.graphs import GraphedMetaStep
from mlbook.learners import MAML
from mlbook.models import MLP, Conv4
from mlbook.tasks import ImageClassFamily, SinusoidFamily
from mlbook.train import TrainConfig, Trainer
from mlbook.utils import make_generator

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: graphs are CUDA-only")


def _images(device):
    pixels = (torch.rand(12, 4, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    return ImageClassFamily(pixels, ways=5, shots=1, queries=3, device=device)


def test_recording_refuses_a_cpu_episode():
    learner = MAML(MLP(hidden=(4,)), loss="mse")
    episode = SinusoidFamily(shots=3, queries=3).sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="CUDA"):
        GraphedMetaStep(learner, learner.init(0), episode)


def test_cuda_graph_setting_is_checked_in_the_config_the_trainer_and_the_cli(capsys, tmp_path):
    with pytest.raises(ValueError, match="cuda_graph must be True or False"):
        TrainConfig(steps=1, cuda_graph="yes")
    learner = MAML(MLP(hidden=(4,)), loss="mse")
    family = SinusoidFamily(shots=3, queries=3)
    with pytest.raises(ValueError, match="cuda_graph needs the run on a CUDA device"):
        Trainer(learner, family, TrainConfig(steps=1, meta_batch_size=2, cuda_graph=True))
    out = tmp_path / "run.pt"
    code = main(["train", "--learner", "MAML", "--data", "sinusoid", "--steps", "1", "--device", "cpu",
                 "--cuda-graph", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--cuda-graph" in err and "CUDA device" in err and not out.exists()


def _learners():
    yield "MAML Conv4, vmap", lambda: MAML(Conv4(5, channels=8), inner_lr=0.4, steps=2, strategy="vmap"), "images"
    yield "MAML Conv4, chunks of 2", lambda: MAML(Conv4(5, channels=8), inner_lr=0.4, strategy="vmap",
                                                 chunk_size=2), "images"
    yield "FOMAML Conv4, vmap", lambda: MAML(Conv4(5, channels=8), inner_lr=0.4, first_order=True,
                                            strategy="vmap"), "images"
    yield "MAML sinusoid, vmap", lambda: MAML(MLP(), inner_lr=0.01, loss="mse", steps=3, strategy="vmap"), "sinusoid"


@needs_cuda
@pytest.mark.parametrize("name,build,data", list(_learners()), ids=[n for n, _, _ in _learners()])
def test_replayed_step_matches_the_eager_step_on_new_episodes(name, build, data):
    device = torch.device("cuda")
    family = _images(device) if data == "images" else SinusoidFamily(shots=5, queries=5, device=device)
    generator = make_generator(1, device)
    episodes = [family.sample(4, generator) for _ in range(3)]
    learner = build()
    state = learner.init(0, device=device)
    params = learner.parameters(state)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the same arithmetic in both, not TF32 rounding
    try:
        graphed = GraphedMetaStep(learner, state, episodes[0])
        for episode in episodes:  # a new episode each replay, copied into the recorded buffers
            for p in params:
                p.grad = None
            want_loss, want_accuracy = learner.meta_backward(state, episode, 0.5)
            want = [p.grad.clone() for p in params]
            for p in params:
                p.grad = None
            got_loss, got_accuracy = graphed.step(episode, 0.5)
            assert torch.allclose(got_loss, want_loss, rtol=1e-5, atol=1e-6)
            if want_accuracy is not None:
                assert torch.equal(got_accuracy, want_accuracy)
            for p, g in zip(params, want):
                assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6), name
        # Gradients are added to what .grad holds, as meta_backward does.
        graphed.step(episodes[0], 1.0)
        before = [p.grad.clone() for p in params]
        graphed.step(episodes[0], 1.0)
        for p, b in zip(params, before):
            assert torch.allclose(p.grad, 2 * b, rtol=1e-5, atol=1e-7)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    other = family.sample(3, generator)
    with pytest.raises(ValueError, match="record another GraphedMetaStep"):
        graphed.step(other)


@needs_cuda
def test_trainer_with_cuda_graph_follows_the_eager_run():
    device = torch.device("cuda")
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        runs = []
        for cuda_graph in (False, True):
            learner = MAML(Conv4(5, channels=8), inner_lr=0.4, strategy="vmap")
            trainer = Trainer(learner, _images(device), TrainConfig(steps=5, meta_batch_size=4, cuda_graph=cuda_graph))
            for _ in range(5):
                trainer.train_step()
            runs.append((trainer.losses, [p.detach().clone() for p in trainer.parameters]))
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    (eager_losses, eager_params), (graph_losses, graph_params) = runs
    assert eager_losses == pytest.approx(graph_losses, rel=1e-4)
    for a, b in zip(eager_params, graph_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@needs_cuda
def test_auto_chunk_size_on_a_gpu_fits_the_free_memory_and_keeps_the_gradient():
    # 'auto' measures one and two tasks' memory: on any GPU half the free memory holds the whole
    # meta-batch of this small model; a budget of almost nothing leaves one task per chunk.
    device = torch.device("cuda")
    family = _images(device)
    episode = family.sample(6, make_generator(2, device))
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        grads = []
        for chunk in (None, "auto", 2):
            learner = MAML(Conv4(5, channels=8), inner_lr=0.4, strategy="vmap", chunk_size=chunk)
            state = learner.init(0, device=device)
            learner.meta_backward(state, episode)
            if chunk == "auto":  # an 8-channel Conv4's six tasks fit many times in half of any GPU
                assert learner.resolved_chunk_size(state, episode) is None
            grads.append(torch.cat([p.grad.flatten() for p in learner.parameters(state)]))
        for g in grads[1:]:
            assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-6)
        from mlbook.taskmap import auto_chunk_size
        learner = MAML(Conv4(5, channels=8), inner_lr=0.4, strategy="vmap")
        state = learner.init(0, device=device)
        chunk = auto_chunk_size(lambda part: learner._chunk_backward(state, part, 1.0, keep_gradient=False), episode, fraction=1e-9)
        assert chunk == 1
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_trainer_records_one_step_per_episode_shape_and_replays_it(monkeypatch):
    # The trainer's wiring, on a CPU: a stand-in for the recorded step runs the eager step, so
    # the run must follow the eager one exactly, with one recording for the one episode shape.
    import dataclasses

    import mlbook.train

    recorded = []

    class EagerStandIn:
        def __init__(self, learner, state, episode):
            recorded.append(tuple(episode.support_x.shape))
            self.learner, self.state = learner, state

        def step(self, episode, scale=1.0):
            return self.learner.meta_backward(self.state, episode, scale)

    monkeypatch.setattr(mlbook.train, "GraphedMetaStep", EagerStandIn)
    runs = []
    for cuda_graph in (False, True):
        learner = MAML(MLP(hidden=(8,)), inner_lr=0.01, loss="mse", strategy="vmap")
        trainer = Trainer(learner, SinusoidFamily(shots=4, queries=4), TrainConfig(steps=4, meta_batch_size=3))
        # Trainer refuses cuda_graph off CUDA; switched on afterwards, only the wiring is tested.
        trainer.config = dataclasses.replace(trainer.config, cuda_graph=cuda_graph)
        for _ in range(4):
            trainer.train_step()
        runs.append((trainer.losses, [p.detach().clone() for p in trainer.parameters]))
    assert recorded == [(3, 4, 1)]
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)
