"""No lost training, no code run from a checkpoint, strict command-line values (Chapter 5)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlbook.__main__ import main
from mlbook.storage import CheckpointError, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SINUSOID = ["train", "--learner", "MAML", "--data", "sinusoid", "--shots", "5", "--queries", "5",
            "--meta-batch-size", "4", "--seed", "3"]


def call(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


class _Planted:
    """Unpickling this object would create a file: what a crafted checkpoint tries to do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    planted = tmp_path / "planted"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "mlbook-checkpoint", "version": 1, "state": {}, "step": 1,
                "metadata": {"config": _Planted(planted)}}, crafted)
    with pytest.raises(CheckpointError, match="other than tensors"):
        load_checkpoint(crafted)
    code, _, err = call(capsys, "evaluate", str(crafted))
    assert code == 1 and "other than tensors" in err
    assert not planted.exists(), "loading the checkpoint ran the planted code"


@pytest.mark.parametrize("where", ["folder", "under-a-file", "read-only", "empty", "system"])
def test_an_unwritable_out_fails_before_training(tmp_path, capsys, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = {"folder": str(tmp_path), "under-a-file": str(blocker / "run.pt"), "read-only": str(locked / "run.pt"),
           "empty": "", "system": "/proc/mlbook/run.pt"}[where]
    if where == "read-only" and os.access(locked, os.W_OK):
        pytest.skip("running as a user who may write into a read-only folder (root): nothing to refuse")
    started = time.perf_counter()
    code, _, err = call(capsys, *SINUSOID, "--steps", "100000", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err
    assert time.perf_counter() - started < 5, "the mistake must be found before training starts"


def test_an_existing_checkpoint_is_not_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run.pt"
    assert call(capsys, *SINUSOID, "--steps", "2", "--out", str(out))[0] == 0
    before = out.read_bytes()
    code, _, err = call(capsys, *SINUSOID, "--steps", "2", "--seed", "4", "--out", str(out))
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert call(capsys, *SINUSOID, "--steps", "2", "--seed", "4", "--out", str(out), "--overwrite")[0] == 0
    assert out.read_bytes() != before


@pytest.mark.parametrize("change, named", [
    (["--learner", "FOMAML"], "learner"), (["--seed", "9"], "seed"), (["--shots", "6"], "shots"),
    (["--meta-batch-size", "5"], "meta_batch_size"), (["--inner-steps", "2"], "inner_steps")])
def test_resume_refuses_a_different_run(tmp_path, capsys, change, named):
    out = tmp_path / "run.pt"
    assert call(capsys, *SINUSOID, "--steps", "2", "--out", str(out))[0] == 0
    code, _, err = call(capsys, *_with(SINUSOID, change), "--steps", "4", "--out", str(out), "--resume")
    assert code == 2 and named in err and "changed" in err, err
    assert load_checkpoint(out)["step"] == 2, "the refused resume left the checkpoint as it was"
    # What may change (more steps, a time limit) is accepted.
    assert call(capsys, *SINUSOID, "--steps", "4", "--time-limit", "600", "--out", str(out), "--resume")[0] == 0
    assert load_checkpoint(out)["step"] == 4


def _with(args, change):
    args = list(args)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def test_stale_temporary_files_are_cleaned(tmp_path, capsys):
    out = tmp_path / "run.pt"
    stale = tmp_path / ".run.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert call(capsys, *SINUSOID, "--steps", "2", "--out", str(out))[0] == 0
    assert not stale.exists() and out.exists()


def test_sigint_saves_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    """Ctrl-C a real training process: it finishes its step, writes the checkpoint, exits 130."""
    interrupted, full = tmp_path / "interrupted.pt", tmp_path / "full.pt"
    args = [*SINUSOID, "--steps", "300"]
    env = {**os.environ, "MLBOOK_NO_PROGRESS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mlbook", *args, "--out", str(interrupted),
                                "--checkpoint-every", "5"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not interrupted.exists():
            time.sleep(0.05)
        assert process.poll() is None, "training finished before it could be interrupted"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    stopped_at = load_checkpoint(interrupted)["step"]
    assert 5 <= stopped_at < 300
    assert call(capsys, *args, "--out", str(interrupted), "--checkpoint-every", "5", "--resume")[0] == 0
    assert call(capsys, *args, "--out", str(full), "--checkpoint-every", "5")[0] == 0
    a, b = load_checkpoint(interrupted), load_checkpoint(full)
    assert a["step"] == b["step"] == 300 and a["losses"] == b["losses"]
    for x, y in zip(torch.utils._pytree.tree_leaves(a["state"]), torch.utils._pytree.tree_leaves(b["state"])):
        assert torch.equal(x, y)


def test_a_failed_final_write_keeps_the_run(tmp_path, monkeypatch, capsys):
    import mlbook.train as train

    out = tmp_path / "run.pt"
    real_save = train.save_checkpoint

    def full_disk(path, payload):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real_save(path, payload)

    monkeypatch.setattr(train, "save_checkpoint", full_disk)
    code, printed, err = call(capsys, *SINUSOID, "--steps", "2", "--out", str(out))
    assert code == 0 and "rescued" in err
    rescued = Path(err.split("saved in ")[1].split()[0])
    assert load_checkpoint(rescued)["step"] == 2 and str(rescued) in printed
    rescued.unlink()


@pytest.mark.parametrize("flag, value", [
    ("--inner-lr", "0"), ("--inner-lr", "nan"), ("--test-ways", "0"), ("--time-limit", "0"),
    ("--time-limit", "-5"), ("--time-limit", "nan"), ("--inner-steps", "-1"), ("--steps", "0"),
    ("--lr", "inf"), ("--within-alphabet", "1.5"), ("--jitter", "-1"), ("--meta-batch-size", "0")])
def test_bad_values_are_refused_by_name(tmp_path, capsys, flag, value):
    code, _, err = call(capsys, *SINUSOID, flag, value, "--out", str(tmp_path / "x.pt"))
    assert code == 2 and f"argument {flag}:" in err and len(err.strip().splitlines()) == 1, err


def test_cosine_time_needs_a_time_limit(tmp_path, capsys):
    code, _, err = call(capsys, *SINUSOID, "--schedule", "cosine_time", "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "time_limit" in err


def test_options_a_learner_does_not_read_are_reported(tmp_path, capsys):
    code, _, err = call(capsys, "train", "--learner", "ProtoNet", "--data", "glyphs", "--glyph-classes", "100",
                        "--image-size", "16", "--channels", "8", "--steps", "1", "--inner-steps", "3",
                        "--first-order", "--out", str(tmp_path / "p.pt"))
    assert code == 0
    assert "--inner-steps does not apply to ProtoNet" in err and "--first-order does not apply" in err


def test_rotations_count_in_the_ways_check(tmp_path, capsys):
    tiny = ["train", "--learner", "ProtoNet", "--data", "glyphs", "--glyph-classes", "100", "--image-size", "16",
            "--channels", "8", "--steps", "1", "--queries", "2"]
    # 100 glyph classes split by pseudo-alphabet leave 20 training classes...
    code, _, err = call(capsys, *tiny, "--ways", "21", "--out", str(tmp_path / "a.pt"))
    assert code == 2 and "ways = 21 is more than the 20 classes" in err
    # ...and four rotations of each make 80.
    assert call(capsys, *tiny, "--ways", "21", "--rotate", "--out", str(tmp_path / "b.pt"))[0] == 0


def test_a_library_bug_is_not_reported_as_a_usage_error(monkeypatch, capsys):
    import mlbook.__main__ as cli

    def broken(args):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(cli, "cmd_train", broken)
    parser = cli.make_parser()
    monkeypatch.setattr(cli, "make_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["train"].set_defaults(run=broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["train", "--out", "x.pt"])


def test_checkpoint_round_trip_of_plain_values(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"state": {"w": torch.ones(2)}, "step": 3, "metadata": {"config": {"a": [1, "b"]}}})
    assert load_checkpoint(path)["metadata"]["config"] == {"a": [1, "b"]}


def test_resume_and_determinism_hold_with_tasks_on_threads(tmp_path, monkeypatch):
    """The 'threads' strategy (chosen for convolutions on multi-core CPUs) resumes bit for bit too."""
    import mlbook.taskmap as taskmap
    from mlbook.learners import MAML
    from mlbook.models import Conv4
    from mlbook.tasks import ImageClassFamily
    from mlbook.train import meta_train

    monkeypatch.setattr(taskmap, "_worker_count", lambda: 2)
    images = (torch.rand(12, 6, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    family = ImageClassFamily(images, ways=3, shots=1, queries=2)

    def learner():
        return MAML(Conv4(3, channels=4, image_size=16), inner_lr=0.1, strategy="threads")

    full = meta_train(learner(), family, 6, meta_batch_size=4, seed=2)
    again = meta_train(learner(), family, 6, meta_batch_size=4, seed=2)
    assert full.losses == again.losses, "the same seed gives the same losses"
    path = tmp_path / "run.pt"
    meta_train(learner(), family, 6, meta_batch_size=4, seed=2, checkpoint=path, stop_after=3)
    resumed = meta_train(learner(), family, 6, meta_batch_size=4, seed=2, checkpoint=path, resume=True)
    assert resumed.losses == full.losses
    for x, y in zip(torch.utils._pytree.tree_leaves(resumed.state), torch.utils._pytree.tree_leaves(full.state)):
        assert torch.equal(x, y)
