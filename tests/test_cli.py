"""`python -m mlbook train|evaluate|lake`: help, clear one-line errors, kill-and-resume, Lake's runs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlbook.__main__ import build_data, main
from mlbook.storage import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"
TINY_IMAGES = ["--data", "glyphs", "--glyph-classes", "200", "--image-size", "16", "--channels", "8"]


def run_cli(*args, timeout=600):
    env = {**os.environ, "MLBOOK_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "mlbook", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def call(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["lake"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    assert "usage: python -m mlbook" in capsys.readouterr().out


def test_help_as_a_module():
    done = run_cli("train", "--help")
    assert done.returncode == 0 and "--learner" in done.stdout and "--out" in done.stdout


def one_line_error(code, err, pattern):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("args, pattern", [
    (["train", "--learner", "Foo", "--out", "x.pt"], "--learner: invalid choice: 'Foo'"),
    (["train", "--data", "mnist", "--out", "x.pt"], "--data: invalid choice: 'mnist'"),
    (["train", *TINY_IMAGES, "--shots", "10", "--queries", "15", "--out", "x.pt"], "impossible 5-way 10-shot"),
    (["train", *TINY_IMAGES, "--ways", "500", "--out", "x.pt"], "ways = 500 is more than"),
    (["train", "--data", "sinusoid", "--learner", "ProtoNet", "--out", "x.pt"], "regression"),
    (["train", *TINY_IMAGES, "--ways", "0", "--out", "x.pt"], "--ways: must be a positive integer"),
    (["evaluate", "missing.pt"], "does not exist"),
    (["lake", "missing.pt", "--proxy"], "does not exist"),
    (["train", *TINY_IMAGES, "--thicken", "0.7", "--out", "x.pt"], "--thicken: must be in [0, 0.5]"),
    (["train", "--data", "sinusoid", "--learner", "MAML", "--elastic", "2", "--out", "x.pt"],
     "apply to image data"),
    (["train", *TINY_IMAGES, "--erase", "1.5", "--out", "x.pt"], "--erase: must be a fraction in"),
    (["train", "--data", "sinusoid", "--learner", "MAML", "--erase", "0.5", "--out", "x.pt"],
     "--erase, --rotate, --reflect and --unions apply to image data"),
    (["train", "--data", "sinusoid", "--learner", "MAML", "--reflect", "--out", "x.pt"],
     "--rotate, --reflect and --unions apply to image data"),
    (["train", "--data", "sinusoid", "--learner", "MAML", "--unions", "1", "--out", "x.pt"],
     "--reflect and --unions apply to image data"),
    (["train", *TINY_IMAGES, "--unions", "-1", "--out", "x.pt"], "--unions: must be"),
    (["train", *TINY_IMAGES, "--glyph-alphabets", "2", "--out", "x.pt"],
     "--glyph-alphabets adds procedural glyphs to Omniglot's training alphabets: it needs --data omniglot"),
    (["train", *TINY_IMAGES, "--glyph-alphabets", "-1", "--out", "x.pt"], "--glyph-alphabets: must be"),
    (["train", *TINY_IMAGES, "--holdout-alphabets", "none", "--ways", "1700", "--rotate", "--reflect",
      "--out", "x.pt"], "(with rotations and mirror images)"),
    (["train", *TINY_IMAGES, "--local-window", "1", "--out", "x.pt"],
     "--local-window applies to --distance local only"),
    (["train", *TINY_IMAGES, "--distance", "local", "--local-window", "-1", "--out", "x.pt"],
     "--local-window: must be"),
    (["train", *TINY_IMAGES, "--local-weights", "sqrt-norm", "--out", "x.pt"],
     "--local-weights applies to --distance local only"),
    (["train", *TINY_IMAGES, "--distance", "local", "--local-weights", "norm", "--out", "x.pt"],
     "--local-weights"),
    (["train", *TINY_IMAGES, "--fixed-scale", "30", "--out", "x.pt"],
     "--fixed-scale applies to --distance cosine, local or reconstruction only"),
    (["train", *TINY_IMAGES, "--learner", "MAML", "--pretrain", "5", "--out", "x.pt"],
     "--pretrain trains ProtoNet's embedding on image data"),
    (["train", *TINY_IMAGES, "--pretrain", "5", "--reflect", "--out", "x.pt"], "cannot be combined with --reflect"),
    (["train", *TINY_IMAGES, "--pretrain", "5", "--time-limit", "5", "--out", "x.pt"], "must be shorter"),
    (["train", *TINY_IMAGES, "--pretrain", "-1", "--out", "x.pt"], "--pretrain: must be"),
    (["train", *TINY_IMAGES, "--pretrain", "5", "--pretrain-head", "dense", "--out", "x.pt"],
     "needs --distance local"),
    (["train", *TINY_IMAGES, "--distance", "local", "--pretrain-head", "dense", "--out", "x.pt"],
     "give --pretrain SECONDS too"),
], ids=["learner", "data", "shots", "ways", "regression", "zero-ways", "missing-eval", "missing-lake",
        "thicken-share", "erase-share", "erase-sinusoid", "elastic-sinusoid", "reflect-sinusoid",
        "unions-sinusoid", "unions-negative", "glyph-alphabets-glyphs", "glyph-alphabets-negative",
        "reflect-ways", "window-euclidean", "window-negative",
        "weights-euclidean", "weights-unknown", "scale-euclidean", "pretrain-maml", "pretrain-reflect",
        "pretrain-too-long", "pretrain-negative",
        "dense-euclidean", "dense-alone"])
def test_mistakes_give_one_line_and_a_nonzero_exit(args, pattern, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = call(capsys, *args)
    one_line_error(code, err, pattern)


def test_corrupt_checkpoint_as_a_real_process(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    done = run_cli("evaluate", str(bad))
    one_line_error(done.returncode, done.stderr, "corrupt")


@pytest.fixture(scope="module")
def glyph_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "proto.pt"
    assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "3", "--steps", "3",
                 "--meta-batch-size", "2", "--out", str(out)]) == 0
    return out


def test_train_then_evaluate(glyph_checkpoint, capsys):
    saved = load_checkpoint(glyph_checkpoint)
    assert saved["step"] == 3 and saved["metadata"]["config"]["learner"] == "ProtoNet"
    code, out, _ = call(capsys, "evaluate", str(glyph_checkpoint), "--ways", "5", "--shots", "1",
                        "--episodes", "20", "--json")
    result = json.loads(out)
    assert code == 0 and result["metric"] == "accuracy" and 0 <= result["mean"] <= 1 and result["ci95"] > 0
    code, out, _ = call(capsys, "evaluate", str(glyph_checkpoint), "--ways", "10", "--episodes", "10")
    assert code == 0 and "10-way 1-shot" in out and "±" in out
    code, _, err = call(capsys, "evaluate", str(glyph_checkpoint), "--shots", "19", "--queries", "5")
    one_line_error(code, err, "impossible")


def write_lake_runs(folder: Path, runs=20, ways=20, seed=0):
    """Runs in the release's layout, drawn from procedural glyphs (black strokes on white)."""
    from PIL import Image

    from mlbook.data.glyphs import make_glyphs

    images = make_glyphs(runs * ways, 2, 32, seed).numpy()
    rng = np.random.default_rng(seed)
    for r in range(1, runs + 1):
        run = folder / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        order = rng.permutation(ways)
        lines = []
        for c in range(ways):
            Image.fromarray(255 - images[(r - 1) * ways + c, 0]).save(run / "training" / f"class{c + 1:02d}.png")
        for i, c in enumerate(order):
            Image.fromarray(255 - images[(r - 1) * ways + c, 1]).save(run / "test" / f"item{i + 1:02d}.png")
            lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/class{c + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")


def test_lake_runs_json(glyph_checkpoint, tmp_path, capsys):
    write_lake_runs(tmp_path / "all_runs")
    code, out, _ = call(capsys, "lake", str(glyph_checkpoint), "--runs", str(tmp_path / "all_runs"))
    result = json.loads(out)
    assert code == 0 and len(result["per_run_error_pct"]) == 20 and result["runs"][0] == "run01"
    assert result["mean_error_pct"] == pytest.approx(np.mean(result["per_run_error_pct"]), abs=1e-3)
    assert all(0 <= e <= 100 and (e / 5) == int(e / 5) for e in result["per_run_error_pct"])  # 20 items a run
    code, _, err = call(capsys, "lake", str(glyph_checkpoint), "--runs", str(tmp_path / "nowhere"))
    one_line_error(code, err, "does not exist")
    code, _, err = call(capsys, "lake", str(glyph_checkpoint), "--proxy")
    one_line_error(code, err, "--proxy needs a checkpoint trained on --data omniglot")


def test_lake_rescores_a_local_checkpoint_with_other_weights(glyph_checkpoint, tmp_path, capsys):
    """lake --local-weights: the same runs scored with the best matches weighed another way (each
    member of an ensemble too); 'equal' on an equal-weights run changes nothing; refused for a
    checkpoint without the local similarity."""
    write_lake_runs(tmp_path / "all_runs")
    local = tmp_path / "local.pt"
    assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "1",
                 "--steps", "2", "--distance", "local", "--pools", "2", "--out", str(local)]) == 0
    capsys.readouterr()

    def lake(*args):
        code, out, _ = call(capsys, "lake", *args, "--runs", str(tmp_path / "all_runs"))
        assert code == 0
        return json.loads(out)

    plain, same = lake(str(local)), lake(str(local), "--local-weights", "equal")
    weighted = lake(str(local), "--local-weights", "sqrt-norm")
    pair = lake(str(local), str(local), "--local-weights", "sqrt-norm")
    assert plain["local_weights"] == same["local_weights"] == "equal"
    assert same["per_run_error_pct"] == plain["per_run_error_pct"]
    assert weighted["local_weights"] == pair["local_weights"] == "sqrt-norm"
    assert pair["per_run_error_pct"] == weighted["per_run_error_pct"]   # two copies of one network
    assert lake(str(glyph_checkpoint))["local_weights"] is None
    code, _, err = call(capsys, "lake", str(glyph_checkpoint), "--runs", str(tmp_path / "all_runs"),
                        "--local-weights", "sqrt-norm")
    one_line_error(code, err, "--local-weights rescores ProtoNet checkpoints trained with --distance local")
    code, _, err = call(capsys, "lake", str(local), "--runs", str(tmp_path / "all_runs"), "--local-weights", "norm")
    one_line_error(code, err, "--local-weights")


def test_lake_scores_a_perfect_oracle(tmp_path):
    """An identity-like embedding on identical support and query images makes no errors."""
    from mlbook.lake import lake_runs_result
    from mlbook.learners.protonet import ProtoNet

    class Flatten(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    folder = tmp_path / "runs"
    write_lake_runs(folder, runs=3, ways=20)
    for run in folder.iterdir():        # make every test item a copy of its class's training image
        for line in (run / "class_labels.txt").read_text().split("\n"):
            if line:
                test, train = line.split()
                (folder / test).write_bytes((folder / train).read_bytes())
    result = lake_runs_result(ProtoNet(Flatten()), {"params": {}}, folder)
    assert result["per_run_error_pct"] == [0.0, 0.0, 0.0]


def train_small_omniglot(tmp_path, monkeypatch, *options, name="omni.pt"):
    """A tiny checkpoint trained on the shared Omniglot archives (the environment pointed at them)."""
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(OMNIGLOT))
    monkeypatch.setenv("MLBOOK_DATA", str(tmp_path / "data"))
    out = tmp_path / name
    assert main(["train", "--data", "omniglot", "--no-download", "--channels", "8", "--ways", "5",
                 "--meta-batch-size", "1", *options, "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(not (OMNIGLOT / "images_background_small1.zip").exists(), reason="Omniglot archives absent")
def test_proxy_on_held_out_omniglot_alphabets(tmp_path, capsys, monkeypatch):
    out = train_small_omniglot(tmp_path, monkeypatch, "--queries", "2", "--steps", "2", "--within-alphabet", "0.5",
                               "--rotate")
    capsys.readouterr()
    code, out_text, _ = call(capsys, "lake", str(out), "--proxy", "--episodes", "30")
    result = json.loads(out_text)
    assert code == 0 and result["alphabets"] == ["Early_Aramaic", "Korean"]
    assert len(result["per_run_error_pct"]) == 30 and 0 < result["mean_error_pct"] <= 100
    assert result["test_time_shift_px"] == 0.0
    # The episodes' alphabets, replayed with no network, split the scores as the proxy did.
    from mlbook.lake import proxy_episode_alphabets

    held_out = build_data({**load_checkpoint(out)["metadata"]["config"], "download": False})
    names = proxy_episode_alphabets(held_out["images"], held_out["alphabets"], held_out["test"], episodes=30)
    for alphabet, error in result["per_alphabet_error_pct"].items():
        mine = [e for e, n in zip(result["per_run_error_pct"], names) if n == alphabet]
        assert abs(sum(mine) / len(mine) - error) < 1e-3, alphabet
    assert set(names) == set(result["per_alphabet_error_pct"])
    code, out_text, _ = call(capsys, "lake", str(out), "--proxy", "--episodes", "30", "--test-time-shift", "1.5")
    shifted = json.loads(out_text)
    assert code == 0 and shifted["test_time_shift_px"] == 1.5 and len(shifted["per_run_error_pct"]) == 30
    # The same episodes scored from 9 views each: a different, still valid, error.
    assert 0 <= shifted["mean_error_pct"] <= 100 and shifted["per_run_error_pct"] != result["per_run_error_pct"]
    code, _, err = call(capsys, "lake", str(out), "--proxy", "--test-time-shift", "-1")
    one_line_error(code, err, "--test-time-shift")
    # Two checkpoints: an ensemble, scored on the same episodes.
    second = tmp_path / "omni2.pt"
    assert main(["train", "--data", "omniglot", "--no-download", "--channels", "8", "--ways", "5", "--queries", "2",
                 "--steps", "2", "--meta-batch-size", "1", "--within-alphabet", "0.5", "--rotate", "--seed", "1",
                 "--out", str(second)]) == 0
    capsys.readouterr()
    code, out_text, _ = call(capsys, "lake", str(out), str(second), "--proxy", "--episodes", "30")
    together = json.loads(out_text)
    assert code == 0 and together["members"] == 2 and together["learner"] == "Ensemble of 2 (ProtoNet)"
    assert together["trained_steps"] == 4 and len(together["per_run_error_pct"]) == 30
    other_data = tmp_path / "omni_other.pt"
    assert main(["train", "--data", "omniglot", "--no-download", "--channels", "8", "--ways", "5", "--queries", "2",
                 "--steps", "1", "--meta-batch-size", "1", "--holdout-alphabets", "Korean",
                 "--out", str(other_data)]) == 0
    capsys.readouterr()
    code, _, err = call(capsys, "lake", str(out), str(other_data), "--proxy", "--episodes", "5")
    one_line_error(code, err, "must share their data")
    code, _, err = call(capsys, "train", "--data", "omniglot", "--holdout-alphabets", "Klingon", "--out", str(out))
    one_line_error(code, err, "not in these archives")


@pytest.mark.skipif(not (OMNIGLOT / "images_background_small1.zip").exists(), reason="Omniglot archives absent")
def test_train_alphabets_leave_the_others_unused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(OMNIGLOT))
    monkeypatch.setenv("MLBOOK_DATA", str(tmp_path / "data"))
    base = {"data": "omniglot", "archives": ["images_background_small1.zip", "images_background_small2.zip"],
            "holdout_alphabets": ["Early_Aramaic", "Korean"], "val_alphabets": ["Balinese"], "download": False}
    every = build_data(base)
    fewer = build_data({**base, "train_alphabets": ["Greek", "Tagalog"]})
    assert sorted({fewer["alphabets"][c] for c in fewer["train"].tolist()}) == ["Greek", "Tagalog"]
    assert len(fewer["train"]) == 24 + 17 < len(every["train"])
    # Validation and test stay what they were: a learning curve compares like with like.
    assert torch.equal(fewer["val"], every["val"]) and torch.equal(fewer["test"], every["test"])
    out = str(tmp_path / "x.pt")
    code, _, err = call(capsys, "train", "--data", "omniglot", "--no-download", "--val-alphabets", "Balinese",
                        "--train-alphabets", "Greek,Balinese", "--out", out)
    one_line_error(code, err, "--train-alphabets: ['Balinese'] are held out")
    code, _, err = call(capsys, "train", "--data", "sinusoid", "--train-alphabets", "Greek", "--out", out)
    one_line_error(code, err, "--train-alphabets names Omniglot alphabets")


def test_killed_training_resumes_bit_for_bit(tmp_path, capsys):
    """SIGKILL a real training process mid-run, resume from its last checkpoint, compare."""
    args = ["train", "--learner", "MAML", "--data", "sinusoid", "--shots", "5", "--queries", "5",
            "--meta-batch-size", "4", "--steps", "120", "--checkpoint-every", "1", "--seed", "3"]
    killed = tmp_path / "killed.pt"
    env = {**os.environ, "MLBOOK_NO_PROGRESS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mlbook", *args, "--out", str(killed)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if killed.exists() and load_checkpoint(killed)["step"] >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, "training finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    stopped_at = load_checkpoint(killed)["step"]
    assert 3 <= stopped_at < 120
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    full = tmp_path / "full.pt"
    assert main(args + ["--out", str(full)]) == 0
    a, b = load_checkpoint(killed), load_checkpoint(full)
    assert a["step"] == b["step"] == 120 and a["losses"] == b["losses"]
    for x, y in zip(torch.utils._pytree.tree_leaves(a["state"]), torch.utils._pytree.tree_leaves(b["state"])):
        assert torch.equal(x, y)


def test_a_checkpoint_from_before_precision_existed_resumes_and_a_changed_precision_is_refused(tmp_path, capsys):
    """Older checkpoints have no 'precision' setting: they trained in float32 and resume as such."""
    args = ["train", "--learner", "MAML", "--data", "sinusoid", "--shots", "5", "--queries", "5",
            "--meta-batch-size", "2", "--seed", "3"]
    out = tmp_path / "old.pt"
    assert main(args + ["--steps", "2", "--out", str(out)]) == 0
    saved = load_checkpoint(out)
    del saved["train_config"]["precision"]
    save_checkpoint(out, saved)
    assert main(args + ["--steps", "4", "--out", str(out), "--resume"]) == 0 and load_checkpoint(out)["step"] == 4
    capsys.readouterr()
    code, _, err = call(capsys, *args, "--steps", "6", "--precision", "bfloat16", "--out", str(out), "--resume")
    one_line_error(code, err, "precision")


def test_local_window_is_stored_and_read_back(tmp_path):
    """A run trained with --local-window evaluates with the same window."""
    out = tmp_path / "window.pt"
    assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "1",
                 "--steps", "2", "--distance", "local", "--pools", "2", "--local-window", "1",
                 "--out", str(out)]) == 0
    assert load_checkpoint(out)["metadata"]["config"]["local_window"] == 1
    from mlbook.__main__ import load_trained

    assert load_trained(out, torch.device("cpu"))[2].local_window == 1


def test_local_weights_are_stored_and_read_back(tmp_path):
    """A run trained with --local-weights sqrt-norm evaluates with the same weights; a default run
    stores none."""
    from mlbook.__main__ import load_trained

    runs = {"weighted": ["--local-weights", "sqrt-norm"], "default": []}
    for name, extra in runs.items():
        assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "1",
                     "--steps", "2", "--distance", "local", "--pools", "2", *extra,
                     "--out", str(tmp_path / f"{name}.pt")]) == 0
    assert load_checkpoint(tmp_path / "weighted.pt")["metadata"]["config"]["local_weights"] == "sqrt-norm"
    assert "local_weights" not in load_checkpoint(tmp_path / "default.pt")["metadata"]["config"]
    assert load_trained(tmp_path / "weighted.pt", torch.device("cpu"))[2].local_weights == "sqrt-norm"
    assert load_trained(tmp_path / "default.pt", torch.device("cpu"))[2].local_weights == "equal"
    assert main(["evaluate", str(tmp_path / "weighted.pt"), "--episodes", "3"]) == 0


def test_pretrain_spends_part_of_the_time_limit_then_meta_trains(tmp_path, capsys):
    """--pretrain trains the embedding as a classifier first; meta-training gets the rest of the time."""
    out = tmp_path / "pre.pt"
    assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "1",
                 "--steps", "100000", "--distance", "local", "--pools", "2", "--pretrain", "1",
                 "--time-limit", "3", "--rotate", "--jitter", "0.5", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "pre-trained the embedding for 1 s" in err
    saved = load_checkpoint(out)
    assert saved["metadata"]["config"]["pretrain"] == 1.0
    assert saved["train_config"]["time_limit"] == 2.0
    # Resuming a finished run neither pre-trains again nor changes what it continues.
    assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "1",
                 "--steps", "100000", "--distance", "local", "--pools", "2", "--pretrain", "1",
                 "--time-limit", "3", "--rotate", "--jitter", "0.5", "--out", str(out), "--resume"]) == 0
    assert "pre-trained" not in capsys.readouterr().err


def test_pretrained_state_starts_meta_training(tmp_path, monkeypatch):
    """The state meta-training starts from is the pre-trained embedding, with the learner's scale."""
    import mlbook.__main__ as cli

    started_from = {}

    def record(learner, family, state=None, **kwargs):
        started_from.update(state=state)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "meta_train", record)
    with pytest.raises(SystemExit):
        main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--queries", "1",
              "--distance", "local", "--pools", "2", "--pretrain", "0.5", "--out", str(tmp_path / "x.pt")])
    state = started_from["state"]
    assert set(state) == {"params", "log_scale"} and float(state["log_scale"].detach()) == 0.0
    fresh = cli.build_learner({**cli._run_config(cli.make_parser().parse_args(
        ["train", "--learner", "ProtoNet", *TINY_IMAGES, "--distance", "local", "--pools", "2", "--out", "x.pt"]))})
    initial = fresh.init(0)["params"]
    assert set(state["params"]) == set(initial)
    assert any(not torch.equal(state["params"][k], initial[k]) for k in initial)


def test_unions_grow_the_training_split_only():
    """--unions adds overlaid characters to training; validation and test keep their classes."""
    from mlbook.__main__ import build_data

    config = {"data": "glyphs", "glyph_classes": 200, "image_size": 16}
    plain, grown = build_data(config), build_data({**config, "unions": 1.0})
    for split in ("val", "test"):
        assert torch.equal(plain[split], grown[split])
    old = plain["images"].shape[0]
    assert torch.equal(grown["images"][:old], plain["images"])
    added = grown["train"][grown["train"] >= old]
    assert added.numel() == plain["train"].numel() == grown["images"].shape[0] - old
    assert torch.equal(grown["train"][grown["train"] < old], plain["train"])
