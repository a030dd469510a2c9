"""The trainer: resume bit-for-bit, atomic checkpoints, NaN guard, validation, early stopping."""
import math
import os

import pytest
import torch

from mlbook.learners import MAML
from mlbook.learners.protonet import ProtoNet
from mlbook.augment import AffineJitter
from mlbook.models import MLP, Conv4
from mlbook.tasks import ImageClassFamily, SinusoidFamily
from mlbook.metrics import confidence_interval
from mlbook.storage import CheckpointError, load_checkpoint, save_checkpoint
from mlbook.train import NonFiniteError, evaluate, meta_train, precision_context


def sinusoid_maml():
    return MAML(MLP(hidden=(16, 16)), inner_lr=0.01, loss="mse")


def image_protonet():
    return ProtoNet(Conv4(out_features=0, channels=8, image_size=16))


def images():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(12, 20, 16, 16, generator=g) * 255).to(torch.uint8)


def same_state(a, b):
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))


def test_meta_train_keeps_its_simple_signature():
    result = meta_train(sinusoid_maml(), SinusoidFamily(shots=5, queries=5), 3, 4, 1e-3, 0)
    state, losses = result.state, result.losses
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert result.stopped == "steps" and result.step == 3


@pytest.mark.parametrize("case", ["sinusoid-maml", "images-protonet-jitter-cosine", "sinusoid-maml-ema"])
def test_resume_continues_bit_for_bit(tmp_path, case):
    """Stop after 3 of 7 steps, resume from the checkpoint: identical to an uninterrupted run."""
    if case.startswith("sinusoid-maml"):
        make, family = sinusoid_maml, SinusoidFamily(shots=5, queries=5)
        kwargs = {"ema_decay": 0.7} if case.endswith("ema") else {}
    else:
        make, family = image_protonet, ImageClassFamily(images(), 3, 1, 2, rotate=True)
        kwargs = {"augment": AffineJitter(), "schedule": "cosine", "warmup": 2}
    full = meta_train(make(), family, 7, meta_batch_size=3, seed=5, **kwargs)
    path = tmp_path / "run.pt"
    first = meta_train(make(), family, 7, meta_batch_size=3, seed=5, checkpoint=path, stop_after=3, **kwargs)
    assert first.stopped == "stop_after" and first.step == 3 and load_checkpoint(path)["step"] == 3
    resumed = meta_train(make(), family, 7, meta_batch_size=3, seed=5, checkpoint=path, resume=True, **kwargs)
    assert resumed.losses == full.losses, "the loss history continues exactly"
    assert same_state(resumed.state, full.state), "the final state is bit-for-bit the same"
    assert load_checkpoint(path)["step"] == 7


def test_a_run_without_the_checkpoint_differs_so_the_resume_test_can_fail(tmp_path):
    family = SinusoidFamily(shots=5, queries=5)
    full = meta_train(sinusoid_maml(), family, 6, meta_batch_size=3, seed=5)
    meta_train(sinusoid_maml(), family, 6, meta_batch_size=3, seed=5, checkpoint=tmp_path / "a.pt", stop_after=3)
    restarted = meta_train(sinusoid_maml(), family, 3, meta_batch_size=3, seed=5)   # fresh generator, fresh Adam
    assert restarted.losses != full.losses[3:]


def test_adam_is_fused_where_torch_has_it_and_matches_the_plain_update():
    from mlbook.train import make_optimiser
    torch.manual_seed(0)
    fused_params = [torch.randn(5, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    plain_params = [p.detach().clone().requires_grad_() for p in fused_params]
    fused = make_optimiser("adam", iter(fused_params), 1e-2, weight_decay=1e-3)
    plain = torch.optim.Adam(plain_params, lr=1e-2, weight_decay=1e-3)
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 4):
        pytest.skip("torch before 2.4 has no fused Adam kernel for the CPU")
    assert fused.defaults["fused"] is True
    start = [f.detach().clone() for f in fused_params]
    for _ in range(50):
        for f, p in zip(fused_params, plain_params):
            g = torch.randn_like(f)
            f.grad, p.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for f, p in zip(fused_params, plain_params):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-6)
    assert all((f - s).abs().max() > 0.01 for f, s in zip(fused_params, start)), "the parameters moved"


def test_resume_from_a_checkpoint_written_by_an_unfused_adam(tmp_path):
    """A checkpoint from a torch without the fused kernel resumes with this one's, step count intact."""
    family = SinusoidFamily(shots=5, queries=5)
    path = tmp_path / "run.pt"
    meta_train(sinusoid_maml(), family, 6, meta_batch_size=3, seed=5, checkpoint=path, stop_after=3)
    saved = load_checkpoint(path)
    for group in saved["optimiser"]["param_groups"]:
        group["fused"] = None
    for slot in saved["optimiser"]["state"].values():
        slot["step"] = torch.tensor(float(slot["step"]))
    save_checkpoint(path, {k: v for k, v in saved.items() if k not in ('format', 'version')})
    resumed = meta_train(sinusoid_maml(), family, 6, meta_batch_size=3, seed=5, checkpoint=path, resume=True)
    assert resumed.step == 6 and all(math.isfinite(x) for x in resumed.losses)
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4):
        groups = load_checkpoint(path)["optimiser"]["param_groups"]
        assert all(group["fused"] is True for group in groups), "resumed with this machine's fused kernel"
    full = meta_train(sinusoid_maml(), family, 6, meta_batch_size=3, seed=5)
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5), "the same run, to rounding"


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"state": {"w": torch.ones(2)}, "step": 1})
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"state": {"w": torch.zeros(2)}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1, "a failed write leaves the old checkpoint intact"
    assert os.listdir(tmp_path) == ["ckpt.pt"], "and no temporary file behind"


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(CheckpointError, match="not an mlbook checkpoint"):
        load_checkpoint(other)


class _Bad(MAML):
    """A learner whose loss (or gradient) goes bad at a chosen step."""

    def __init__(self, bad_step, where):
        super().__init__(MLP(hidden=(4,)), inner_lr=0.01, loss="mse")
        self.calls, self.bad_step, self.where = 0, bad_step, where

    def metrics(self, state, episode):
        metrics = super().metrics(state, episode)
        self.calls += 1
        if self.calls - 1 == self.bad_step:
            w = state["params"]["head.weight"]
            if self.where == "loss":
                metrics["loss"] = metrics["loss"] * float("nan")
            else:   # a finite value with an infinite gradient
                metrics["loss"] = metrics["loss"] + torch.sqrt((w - w.detach()).abs().sum())
        return metrics


def test_nan_guard_names_the_step_and_the_tensor():
    family = SinusoidFamily(shots=5, queries=5)
    with pytest.raises(NonFiniteError, match=r"step 2: the meta-loss is nan"):
        meta_train(_Bad(2, "loss"), family, 5, meta_batch_size=2)
    with pytest.raises(NonFiniteError, match=r"step 1: the gradient of state\['params'\]\['head.weight'\]"):
        meta_train(_Bad(1, "grad"), family, 5, meta_batch_size=2)


def test_validation_and_early_stopping_restore_the_best_state():
    family = SinusoidFamily(shots=5, queries=5)
    # A vanishing learning rate never improves validation: patience 2 stops at the third validation.
    result = meta_train(sinusoid_maml(), family, 50, meta_batch_size=2, outer_lr=1e-30, val_family=family,
                        val_every=2, val_episodes=10, patience=2)
    assert result.stopped == "early_stopping" and result.step == 6
    assert [row[0] for row in result.validation] == [2, 4, 6]
    assert result.best_step == 2
    assert all(len(row) == 3 and row[2] > 0 for row in result.validation), "each validation has a CI"


def test_validation_improves_while_learning():
    family = SinusoidFamily(shots=5, queries=5)
    result = meta_train(sinusoid_maml(), family, 60, meta_batch_size=4, outer_lr=1e-2, val_family=family,
                        val_every=20, val_episodes=20)
    assert result.validation[-1][1] < result.validation[0][1], result.validation     # loss goes down


def test_cosine_schedule_and_time_limit(tmp_path):
    family = SinusoidFamily(shots=5, queries=5)
    path = tmp_path / "s.pt"
    meta_train(sinusoid_maml(), family, 10, meta_batch_size=2, schedule="cosine", checkpoint=path)
    saved = load_checkpoint(path)
    assert saved["scheduler"]["_last_lr"][0] < 1e-4 * 1e-3, "cosine decays to zero at the last step"
    limited = meta_train(sinusoid_maml(), family, 10_000, meta_batch_size=2, time_limit=1e-9)
    assert limited.stopped == "time_limit" and limited.step == 1
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="time_limit"):
            meta_train(sinusoid_maml(), family, 2, time_limit=bad)


def test_sharpness_aware_step_uses_the_gradient_at_the_moved_parameters():
    """One SGD step with sam_radius: w - lr * grad L(w + rho g / |g|), g = grad L(w), computed here."""
    from mlbook.train import TrainConfig
    from mlbook.utils import make_generator

    learner, family, rho, lr = sinusoid_maml(), SinusoidFamily(shots=5, queries=5), 0.3, 0.1
    start = learner.init(0)
    episode = family.sample(4, make_generator(0, family.device))

    def gradient(at):
        state = {**start, "params": {k: v.detach().clone().requires_grad_(True) for k, v in at.items()}}
        learner.meta_backward(state, episode, 1.0)
        return {k: v.grad for k, v in state["params"].items()}

    g = gradient(start["params"])
    norm = torch.sqrt(sum(v.pow(2).sum() for v in g.values()))
    moved = {k: v.detach() + rho * g[k] / norm for k, v in start["params"].items()}
    g_moved = gradient(moved)
    expected = {k: v.detach() - lr * g_moved[k] for k, v in start["params"].items()}
    plain = {k: v.detach() - lr * g[k] for k, v in start["params"].items()}

    result = meta_train(learner, family, 1, 4, lr, 0, optimiser="sgd", sam_radius=rho)
    for k, v in result.state["params"].items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert max((v - plain[k]).abs().max().item() for k, v in result.state["params"].items()) > 1e-4, \
        "the moved gradient differs from the plain one, so this test can fail"
    with pytest.raises(ValueError, match="sam_radius must be"):
        meta_train(learner, family, 1, sam_radius=0.0)
    with pytest.raises(ValueError, match="a CUDA graph records one"):
        TrainConfig(steps=1, cuda_graph=True, sam_radius=0.1)


def test_moving_average_of_the_weights_is_what_a_run_returns_and_saves(tmp_path):
    """ema_decay d: a_k = d a_(k-1) + (1 - d) w_k from a_0 = w_0, with w_k the raw weights after
    step k, computed here from runs stopped after 1, 2 and 3 steps."""
    learner, family, decay = sinusoid_maml(), SinusoidFamily(shots=5, queries=5), 0.6
    raw = [learner.init(0)["params"]]
    for k in (1, 2, 3):
        raw.append(meta_train(sinusoid_maml(), family, 3, 4, 0.05, 0, optimiser="sgd", stop_after=k).state["params"])
    expected = {name: tensor.detach().clone() for name, tensor in raw[0].items()}
    for weights in raw[1:]:
        expected = {name: decay * expected[name] + (1 - decay) * weights[name].detach() for name in expected}
    path = tmp_path / "ema.pt"
    result = meta_train(learner, family, 3, 4, 0.05, 0, optimiser="sgd", ema_decay=decay, checkpoint=path)
    saved = load_checkpoint(path)
    for name, tensor in result.state["params"].items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
        assert torch.allclose(saved["state"]["params"][name], expected[name], atol=1e-6), name
        assert torch.equal(saved["live_state"]["params"][name], raw[3][name].detach()), name
    gap = max((expected[n] - raw[3][n].detach()).abs().max().item() for n in expected)
    assert gap > 1e-4, "the average differs from the last weights, so this test can fail"


def test_moving_average_refuses_bad_decays_and_a_checkpoint_without_one(tmp_path):
    from mlbook.train import TrainConfig

    for bad in (0.0, 1.0, -0.5, 1.5, float("nan"), "0.9"):
        with pytest.raises(ValueError, match="ema_decay must be a number strictly between 0 and 1"):
            TrainConfig(steps=1, ema_decay=bad)
    family, path = SinusoidFamily(shots=5, queries=5), tmp_path / "plain.pt"
    meta_train(sinusoid_maml(), family, 4, 2, seed=0, checkpoint=path, stop_after=2)
    with pytest.raises(ValueError, match="holds no moving average"):
        meta_train(sinusoid_maml(), family, 4, 2, seed=0, checkpoint=path, resume=True, ema_decay=0.9)


def test_bad_trainer_arguments():
    family = SinusoidFamily()
    with pytest.raises(ValueError, match="schedule"):
        meta_train(sinusoid_maml(), family, 2, schedule="linear")
    with pytest.raises(ValueError, match="val_family"):
        meta_train(sinusoid_maml(), family, 2, val_every=1)
    with pytest.raises(ValueError, match="checkpoint"):
        meta_train(sinusoid_maml(), family, 2, resume=True)
    with pytest.raises(ValueError, match="steps"):
        meta_train(sinusoid_maml(), family, 0)
    with pytest.raises(ValueError, match="optimiser"):
        meta_train(sinusoid_maml(), family, 2, optimiser="rmsprop")
    with pytest.raises(ValueError, match="unknown training settings"):
        meta_train(sinusoid_maml(), family, 2, learning_rate=0.1)


@pytest.mark.parametrize("case", ["images-protonet", "sinusoid-maml"])
def test_bfloat16_training_repeats_exactly_and_keeps_float32_parameters(case):
    """precision='bfloat16' computes the meta-loss under autocast: the losses move a little from
    float32's, repeat exactly from the same seed, and the state stays in float32."""
    if case == "images-protonet":
        make, family = image_protonet, ImageClassFamily(images(), 3, 1, 2)
    else:
        make, family = sinusoid_maml, SinusoidFamily(shots=5, queries=5)
    full = meta_train(make(), family, 5, meta_batch_size=2, seed=3)
    half = meta_train(make(), family, 5, meta_batch_size=2, seed=3, precision="bfloat16")
    again = meta_train(make(), family, 5, meta_batch_size=2, seed=3, precision="bfloat16")
    assert half.losses == again.losses and same_state(half.state, again.state)
    assert half.losses != full.losses, "autocast must change the arithmetic"
    # bfloat16 keeps about three significant digits: the first loss, from the same weights and
    # episode, is float32's rounded; after that each step moves the two runs apart a little more
    # (5% by the fifth step on a CPU without bfloat16 units, where the rounding is emulated).
    relative = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(half.losses, full.losses)]
    assert relative[0] < 0.02 and max(relative) < 0.15, relative
    assert all(t.dtype == torch.float32 for t in torch.utils._pytree.tree_leaves(half.state))


@pytest.mark.parametrize("has_units", [True, False])
def test_bfloat16_on_a_cpu_without_its_units_warns_once_that_float32_is_faster(monkeypatch, has_units):
    import warnings

    import mlbook.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_bfloat16", lambda: has_units)
    family = SinusoidFamily(shots=5, queries=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta_train(sinusoid_maml(), family, 2, meta_batch_size=2, seed=0, precision="bfloat16")
        meta_train(sinusoid_maml(), family, 2, meta_batch_size=2, seed=0)
    emulated = [w for w in caught if "no bfloat16 units" in str(w.message)]
    assert len(emulated) == (0 if has_units else 1), [str(w.message) for w in caught]
    if emulated:
        assert emulated[0].category is RuntimeWarning and "--precision float32" in str(emulated[0].message)


def test_cpu_has_bfloat16_agrees_with_the_cpu_flags():
    """No AVX-512 at all: no bfloat16 kernels; AMX or AVX-512 bfloat16 instructions: kernels."""
    from pathlib import Path

    from mlbook.train import cpu_has_bfloat16

    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo to read this CPU's flags from (not Linux)")
    flags = set(next((line.split(":", 1)[1].split() for line in info.read_text().splitlines()
                      if line.startswith("flags")), []))
    if not flags & {"avx512bw", "amx_bf16", "avx512_bf16"}:
        assert cpu_has_bfloat16() is False
    elif flags & {"amx_bf16", "avx512_bf16"}:
        assert cpu_has_bfloat16() is True
    else:
        pytest.skip("AVX-512 without bfloat16 instructions: oneDNN's answer depends on its build")


def test_bfloat16_reaches_the_task_threads():
    """Autocast is per thread: tasks run on worker threads must see the caller's, or the
    'threads' strategy would silently train in float32."""
    family = ImageClassFamily(images(), 3, 1, 2)

    def run(strategy, precision):
        learner = MAML(Conv4(out_features=3, channels=8, image_size=16), inner_lr=0.1, strategy=strategy)
        return meta_train(learner, family, 2, meta_batch_size=2, seed=3, precision=precision).losses

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers, so the tasks really leave the calling thread
    try:
        threaded = run("threads", "bfloat16")
        assert threaded != run("threads", "float32")
    finally:
        torch.set_num_threads(threads)
    looped = run("loop", "bfloat16")
    assert abs(threaded[0] - looped[0]) < 1e-2 * abs(looped[0])


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision.*float32.*bfloat16"):
        meta_train(sinusoid_maml(), SinusoidFamily(), 2, precision="float16")
    with pytest.raises(ValueError, match="precision.*float32.*bfloat16"):
        precision_context("half", "cpu")


def test_precision_context_computes_products_in_bfloat16_only_when_asked():
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    with precision_context("float32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with precision_context("bfloat16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32


def test_train_config_is_stored_as_plain_values_and_sgd_is_available(tmp_path):
    from mlbook.train import TrainConfig

    family = SinusoidFamily(shots=5, queries=5)
    path = tmp_path / "run.pt"
    config = TrainConfig(steps=3, meta_batch_size=2, outer_lr=0.1, optimiser="sgd", seed=2)
    result = meta_train(sinusoid_maml(), family, config=config, checkpoint=path, meta_batch_size=3)
    saved = load_checkpoint(path)
    assert saved["train_config"]["optimiser"] == "sgd" and saved["train_config"]["meta_batch_size"] == 3
    assert TrainConfig(**saved["train_config"]).steps == 3 and result.step == 3


def test_evaluate_reports_a_95_percent_interval():
    learner, family = image_protonet(), ImageClassFamily(images(), 3, 1, 2)
    result = evaluate(learner, learner.init(0), family, episodes=30, batch_size=7)
    assert result.values.shape == (30,) and result.metric == "accuracy"
    assert math.isclose(result.ci95, 1.96 * result.values.double().std().item() / math.sqrt(30), rel_tol=1e-9)
    mean, ci = confidence_interval(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert mean == 0.5 and math.isclose(ci, 1.96 * (1 / 3) ** 0.5 / 2)
