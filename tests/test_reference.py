"""Reference runs: every shipped record re-checks, reproduce runs end to end, the CLI lists and refuses."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlbook import reference
from mlbook.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [name for name in reference.names() if (reference.RUNS_DIR / f"{name}.json").is_file()]
# Re-scoring every image run in full takes about 95 minutes on one thread, more than CI has; each
# record holds every episode's score, so the tests re-score the first 100 episodes against those
# (`python -m mlbook reproduce NAME --check` re-scores all of them).
CHECK_EPISODES = 100


def _omniglot_available() -> bool:
    from mlbook.data.omniglot import find_archive

    try:
        for name in ("images_background_small1.zip", "images_background_small2.zip"):
            find_archive(name, download=False)
    except FileNotFoundError:
        return False
    return True


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def test_the_registry_has_at_least_twelve_runs():
    assert len(reference.names()) >= 12


def test_every_run_has_a_record_and_a_small_checkpoint():
    # An ensemble's checkpoints are its members'.
    missing = [n for n in reference.names() if not (reference.RUNS_DIR / f"{n}.json").is_file()
               or not (reference.get(n).members or (reference.RUNS_DIR / f"{n}.pt").is_file())]
    assert not missing, f"runs without a shipped record or checkpoint: {missing}"
    total = sum(p.stat().st_size for p in reference.RUNS_DIR.iterdir())
    # 86 MB: besides the papers' runs, one hundred and forty Lake ablations, twelve ensemble members
    # (six for each of two commands) and sixteen 10-, 30- and 60-minute Lake runs (0.45 MB each, 0.75 MB
    # with two residual blocks, 1 MB at 96 channels), and every record's per-episode scores (2 MB).
    assert total < 86 * 2 ** 20, f"the reference runs take {total / 2 ** 20:.1f} MB; keep them under 86 MB"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_record_is_complete_and_not_a_smoke_test(name):
    record = reference.load_record(name)
    for key in ("name", "metric", "value", "ci95", "paper_value", "paper_ci95", "paper_source", "train_seconds",
                "steps", "device", "torch", "commit", "train_argv", "eval_protocol"):
        assert key in record, f"{name}: the record lacks {key!r}"
    assert record["fast"] is False and record["name"] == name
    run = reference.get(name)
    assert record["eval_protocol"]["seed"] == run.protocol["seed"]
    assert record["train_argv"][4:-4] == list(run.train_args), f"{name}: the record was made with other arguments"
    if run.test_time_shift:
        assert record["eval_protocol"]["test_time_shift_px"] == run.test_time_shift
        assert "tta_value" in record and ("tta_val_value" in record) == ("val_value" in record), sorted(record)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_gives_its_recorded_value(name):
    if reference.get(name).data == "omniglot" and not _omniglot_available():
        pytest.skip("the Omniglot archives are absent (set MLBOOK_OMNIGLOT); this record needs them to re-check")
    # The sinusoid runs re-score in full in about a second each.
    partial = [] if reference.get(name).data == "sinusoid" else ["--episodes", str(CHECK_EPISODES)]
    code = main(["reproduce", name, "--check", *partial])
    assert code == 0


@pytest.mark.parametrize("name", SHIPPED)
def test_a_record_holds_every_episode_and_their_mean_is_its_value(name):
    record = reference.load_record(name)
    keys = {key for key in record if key.endswith("value") and key != "paper_value"}
    assert set(record["per_episode"]) == keys, sorted(record)
    for key, values in record["per_episode"].items():
        assert len(values) == record["eval_protocol"]["episodes"], key
        assert sum(values) / len(values) == pytest.approx(record[key], rel=1e-6), key


@pytest.mark.parametrize("name", [n for n in SHIPPED if reference.get(n).members])
def test_an_ensemble_record_names_its_members(name):
    record = reference.load_record(name)
    run = reference.get(name)
    assert record["members"] == list(run.members) and record["checkpoint"] is None
    assert record["steps"] == sum(reference.load_record(m)["steps"] for m in run.members)


def test_a_partial_check_fails_when_an_episode_score_changed(tmp_path, capsys):
    if not _omniglot_available():
        pytest.skip("the Omniglot archives are absent (set MLBOOK_OMNIGLOT); the ensemble needs them to re-check")
    record = reference.load_record("lake-val-ensemble")
    # Ten or more of the 60 predictions: far past what rounding on another machine may flip.
    record["per_episode"]["value"][0] = 0.0 if record["per_episode"]["value"][0] >= 0.5 else 1.0
    (tmp_path / "lake-val-ensemble.json").write_text(json.dumps(record))
    # The members are not in tmp_path: the shipped checkpoints are used.
    code = main(["reproduce", "lake-val-ensemble", "--check", "--out", str(tmp_path), "--episodes", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "(first 3 episodes)" in err[0], err


def test_a_check_allows_one_prediction_in_a_thousand_to_flip_and_no_more(tmp_path, capsys):
    if not _omniglot_available():
        pytest.skip("the Omniglot archives are absent (set MLBOOK_OMNIGLOT); this record needs them to re-check")
    name = "omniglot-protonet-5way1shot"  # 5 ways x 15 queries: 75 predictions an episode
    for suffix in ("json", "pt"):
        (tmp_path / f"{name}.{suffix}").write_bytes((reference.RUNS_DIR / f"{name}.{suffix}").read_bytes())
    record = reference.load_record(name)
    scores = record["per_episode"]["value"]
    one_query = 1 / 75
    # 20 episodes, 1,500 predictions: one may differ.
    for changed, passes in ((1, True), (2, False)):
        shifted = [s - changed * one_query if s > 0.5 else s + changed * one_query for s in scores[:1]]
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {**record, "per_episode": {"value": shifted + scores[1:]}}))
        code = main(["reproduce", name, "--check", "--out", str(tmp_path), "--episodes", "20"])
        captured = capsys.readouterr()
        assert (code == 0) == passes, (changed, captured.err)
        if not passes:
            assert "2 of 1500 predictions differ" in captured.err and "at most 1" in captured.err, captured.err


def test_a_partial_check_needs_a_record_with_every_episode(tmp_path, capsys):
    record = reference.load_record("sinusoid-metasgd-k10")
    del record["per_episode"]
    (tmp_path / "sinusoid-metasgd-k10.json").write_text(json.dumps(record))
    code = main(["reproduce", "sinusoid-metasgd-k10", "--check", "--episodes", "10", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "episodes: a partial check needs a record" in err[0], err
    code = main(["reproduce", "sinusoid-metasgd-k10", "--check", "--episodes", "1001"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "at most its 1000 episodes" in err[0], err
    code = main(["reproduce", "omniglot-lake-ensemble", "--episodes", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--episodes goes with --check" in err[0], err


@pytest.mark.parametrize("name", [n for n in SHIPPED if reference.get(n).paper_source and "Table 1" in
                                  reference.get(n).paper_source])
def test_sinusoid_maml_and_metasgd_reach_the_paper(name):
    record = reference.load_record(name)
    # "At or below the paper's MSE": within the paper's own interval or better.
    assert record["value"] <= record["paper_value"] + record["paper_ci95"], record


def test_check_fails_with_one_line_when_the_value_changed(tmp_path, capsys):
    name = "sinusoid-maml-k10"
    record = reference.reproduce(name, out=tmp_path, fast=True)
    assert main(["reproduce", name, "--check", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**record, "value": record["value"] + 1.0}))
    code = main(["reproduce", name, "--check", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "the record says" in err[0], err


def test_reproduce_runs_end_to_end_in_fast_mode_without_touching_the_shipped_files(tmp_path):
    assert os.environ.get("MLBOOK_FAST") == "1"
    before = _digest(reference.RUNS_DIR)
    env = {**os.environ, "MLBOOK_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "mlbook", "reproduce", "sinusoid-metasgd-k10", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["name"] == "sinusoid-metasgd-k10" and summary["steps"] == reference.FAST_STEPS
    record = json.loads((tmp_path / "sinusoid-metasgd-k10.json").read_text())
    assert record["fast"] is True and record["train_argv"][:4] == ["python", "-m", "mlbook", "train"]
    assert len(record["per_episode"]["value"]) == record["eval_protocol"]["episodes"]
    # How busy the machine was when training began, printed and kept beside the timing.
    assert record["load_average_at_start"] >= 0
    assert f"load average {record['load_average_at_start']} when training starts" in done.stderr
    assert (tmp_path / "sinusoid-metasgd-k10.pt").stat().st_size < 100_000
    from mlbook.train import load_checkpoint

    slim = load_checkpoint(tmp_path / "sinusoid-metasgd-k10.pt")
    assert "optimiser" not in slim and slim["metadata"]["config"]["learner"] == "MetaSGD"
    assert _digest(reference.RUNS_DIR) == before, "reproduce --out must not touch the shipped runs"


def test_list_prints_one_json_object_per_run(capsys):
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["name"] for row in rows] == reference.names()
    for row in rows:
        for key in ("name", "metric", "value", "ci95", "paper_value", "paper_source", "train_seconds", "device"):
            assert key in row, f"{row['name']} lacks {key!r}"


@pytest.mark.parametrize("args", [["reproduce", "no-such-run"], ["reproduce", "no-such-run", "--check"]])
def test_a_bad_name_gives_one_line_naming_the_allowed_names(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "Traceback" not in err[0]
    assert "no-such-run" in err[0] and "sinusoid-maml-k10" in err[0]


def test_reproduce_needs_a_name_or_list(capsys):
    assert main(["reproduce"]) != 0
    assert "--list" in capsys.readouterr().err


def test_table_lists_every_run_with_the_command():
    text = str(reference.table())
    for name in reference.names():
        assert f"python -m mlbook reproduce {name}" in text
    assert "sinusoid-maml-k10" in reference.table("sinusoid-maml-k10")._repr_html_()
    with pytest.raises(ValueError, match="name must be one of"):
        reference.table(["nope"])


@pytest.mark.parametrize("name", [n for n in SHIPPED if "--val-alphabets" in reference.get(n).train_args])
def test_runs_tuned_on_a_validation_alphabet_record_it_apart_from_the_test(name):
    record = reference.load_record(name)
    held_out = reference.get(name).train_args
    test_alphabets = held_out[held_out.index("--holdout-alphabets") + 1].split(",")
    assert record["val_split"] and not set(record["val_split"].split(",")) & set(test_alphabets)
    assert 0 <= record["val_value"] <= 1 and record["val_ci95"] > 0


def test_each_lake_ablation_changes_exactly_what_it_names_from_its_base():
    base = reference.get("lake-ablation-base").train_args
    pairs = lambda a: {(x, y if not y.startswith("--") else None)  # noqa: E731
                       for x, y in zip(a, (*a[1:], "--end")) if x.startswith("--")}

    def changes_between(args, recipe_args):
        # A repeat from another seed is the same ablation, not another change; AdamW and its
        # weight decay are one change named by two flags, and so are a larger image and its
        # folding, and the local similarity and the map the unpooled blocks keep for it.
        flags = {flag for flag, _ in pairs(args) ^ pairs(recipe_args)} - {"--seed"}
        for named, implied in (("--weight-decay", "--optimiser"), ("--space-to-depth", "--image-size"),
                               ("--distance", "--pools")):
            if named in flags:
                flags.discard(implied)
        return flags
    # Runs on top of a chosen recipe are measured from it: what they add to it, or set back or
    # to another value, is what counts.
    recipes = [base] + [reference._with_changes(base, chosen) for chosen in (
        reference.LAKE_CHOSEN, {**reference.LAKE_CHOSEN, **reference.LAKE_DETAIL},
        {**reference.LAKE_CHOSEN, **reference.LAKE_DETAIL, **reference.LAKE_LOCAL},
        {**reference.LAKE_CHOSEN, **reference.LAKE_DETAIL, **reference.LAKE_LOCAL, **reference.LAKE_FRAME},
        {**reference.LAKE_CHOSEN, **reference.LAKE_DETAIL, **reference.LAKE_LOCAL, **reference.LAKE_FRAME,
         **reference.LAKE_STACK})]
    for variant, (change, _) in reference.LAKE_ABLATIONS.items():
        args = reference.get(f"lake-ablation-{variant}").train_args
        changed = {flag for flag, _ in pairs(args) ^ pairs(base)}
        assert changed == set(change), (variant, pairs(args) ^ pairs(base))
        changes = min((changes_between(args, recipe) for recipe in recipes), key=len)
        assert len(changes) <= 2, f"{variant}: an ablation changes one thing, or two to test a combination"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip").exists(),
                    reason="Omniglot archives absent")
def test_learning_curve_over_alphabets_counts_the_archives_characters(monkeypatch):
    """The curve's alphabets are exactly the training alphabets of the Balinese ablations,
    with the numbers of characters the archives hold; each run trains on the ones it names."""
    from mlbook.__main__ import build_data

    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(ROOT.parent / "shared" / "data" / "omniglot"))
    base = {"data": "omniglot", "archives": ["images_background_small1.zip", "images_background_small2.zip"],
            "holdout_alphabets": ["Early_Aramaic", "Korean"], "val_alphabets": ["Balinese"],
            "image_size": 8, "download": False}
    data = build_data(base)
    counted = {}
    for c in data["train"].tolist():
        counted[data["alphabets"][c]] = counted.get(data["alphabets"][c], 0) + 1
    assert counted == reference.LAKE_CURVE_ALPHABETS
    # With Greek held out for validation instead, Balinese trains in its place.
    on_greek = build_data({**base, "val_alphabets": ["Greek"]})
    trains_on_greek = {on_greek["alphabets"][c] for c in on_greek["train"].tolist()}
    assert trains_on_greek == set(reference.LAKE_GREEK_TRAINS)
    runs = [(variant, change) for variant, (change, _) in reference.LAKE_ABLATIONS.items()
            if "--train-alphabets" in change]
    assert len(runs) == (2 * len(reference.LAKE_CURVE_SIZES) + len(reference.LAKE_SINGLE_ALPHABETS)
                         + len(reference.LAKE_LEFT_OUT))
    for variant, change in runs:
        named = change["--train-alphabets"].split(",")
        trains = trains_on_greek if change.get("--val-alphabets") == "Greek" else set(counted)
        assert len(named) in reference.LAKE_CURVE_SIZES and set(named) <= trains, variant
        if change.get("--val-alphabets") == "Greek":   # one alphabet left out, by name
            left_out = trains - set(named)
            assert len(left_out) == 1 and left_out <= set(reference.LAKE_LEFT_OUT.values()), variant
        else:
            # 20-way episodes within one alphabet need 20 characters in at least one of them.
            assert max(counted[a] for a in named) >= 20, variant


def test_each_ablation_names_its_own_validation_alphabet():
    """Runs that check a Balinese choice on another alphabet say so in their notes and records."""
    alphabets = set()
    for variant, (change, _) in reference.LAKE_ABLATIONS.items():
        run = reference.get(f"lake-ablation-{variant}")
        val = change.get("--val-alphabets", "Balinese")
        alphabets.add(val)
        assert f"with {val} held out of training as the validation alphabet" in run.note, variant
        assert f"one-shot accuracy on {val}," in run.note, variant
        assert reference.load_record(run.name)["val_split"] == val, variant
    assert alphabets == {"Balinese", "Greek"}


def test_rescore_measures_the_numbers_again_and_keeps_what_training_recorded(tmp_path, capsys):
    name = "sinusoid-metasgd-k10"
    for suffix in ("json", "pt"):
        (tmp_path / f"{name}.{suffix}").write_bytes((reference.RUNS_DIR / f"{name}.{suffix}").read_bytes())
    shipped = reference.load_record(name)
    wrong = {**shipped, "value": shipped["value"] * 2, "per_episode": {"value": [0.0] * 1000},
             "steps": shipped["steps"] + 1}
    (tmp_path / f"{name}.json").write_text(json.dumps(wrong))
    assert main(["reproduce", name, "--check", "--out", str(tmp_path)]) != 0
    capsys.readouterr()
    assert main(["reproduce", name, "--rescore", "--out", str(tmp_path)]) == 0
    rescored = reference.load_record(name, tmp_path)
    assert rescored["value"] == pytest.approx(shipped["value"], rel=1e-4)
    assert rescored["per_episode"]["value"] == pytest.approx(shipped["per_episode"]["value"], rel=1e-4)
    assert rescored["steps"] == shipped["steps"] + 1, "what training recorded is kept"
    assert set(rescored["rescored"]) == {"created", "commit"}
    assert main(["reproduce", name, "--check", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["reproduce", name, "--rescore", "--check"]) != 0
    assert "--rescore and --check" in capsys.readouterr().err
    assert main(["reproduce", "omniglot-lake-ensemble", "--rescore"]) != 0
    assert "ensemble" in capsys.readouterr().err


def test_the_readme_lake_command_is_the_shipped_reference_run():
    """What the README tells a reader to run is what `reproduce` trained and the book reports."""
    text = (ROOT / "README.md").read_text()
    start = text.index("python -m mlbook train --learner ProtoNet --data omniglot")
    command = text[start:text.index("\n", text.index("--out", start))].replace("\\\n", " ").split()

    def flags(args):
        pairs, i = {}, 0
        while i < len(args):
            if args[i].startswith("--"):
                has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
                pairs[args[i]] = args[i + 1] if has_value else True
                i += 2 if has_value else 1
            else:
                i += 1
        return pairs

    readme = flags(command[3:])
    readme.pop("--out")
    registered = flags(list(reference.get(reference.LAKE_README_RUN).train_args))
    registered.pop("--no-download")  # the registry reads the local archives; a reader may download
    assert readme == registered
