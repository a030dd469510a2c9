"""The command line: ``python -m mlbook train|evaluate|lake`` (Chapter 5).

    python -m mlbook train --learner ProtoNet --data omniglot --ways 20 --shots 1 --out run.pt
    python -m mlbook evaluate run.pt --ways 5 --shots 1
    python -m mlbook lake run.pt --runs all_runs.zip        (or --proxy)

Every command has ``--help``. Mistakes (an unknown learner or data name, an impossible
way/shot combination, a missing or corrupt checkpoint) end with one line on stderr and a
non-zero exit status, not a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import distributed as dist_utils
from .data.framing import FRAMES
from .learners import LearnerConfig, get_learner, registry
from .learners.protonet import DISTANCES, LOCAL_WEIGHTS
from .models import POOLS
from .reference import add_reproduce_command
from .storage import CheckpointError, load_checkpoint, load_state_into
from .train import OPTIMISERS, PRECISIONS, SCHEDULES, NonFiniteError, TrainConfig, evaluate, meta_train, stop_on_signals
from .utils import UsageError, check_choice, get_device

__all__ = ["main", "build_learner", "build_data", "load_trained", "learner_names", "DATA"]

DATA = ("omniglot", "glyphs", "sinusoid")
DEFAULT_HOLDOUT = "Early_Aramaic,Korean"
GLYPH_CLASSES = 600
EXIT_USAGE = 2


def learner_names() -> tuple[str, ...]:
    """The names ``--learner`` accepts: every registered learner (Chapter 4's taxonomy)."""
    return tuple(registry())


def _names(text: str | None) -> list[str]:
    if text is None or text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def _task(config: dict) -> str:
    return "regression" if config["data"] == "sinusoid" else "classification"


# -- learners and data from a plain config dict (stored in every checkpoint) ----------------
def _usage(build, *args):
    """Call a library constructor on user input; its validation errors are usage errors."""
    try:
        return build(*args)
    except ValueError as error:
        raise UsageError(str(error)) from None


def build_learner(config: dict):
    """The learner a run's config describes, built by the learner's own ``from_config`` (Chapter 5).

    The same config is stored in the checkpoint, so ``evaluate`` and ``lake`` rebuild the
    exact learner that was trained.
    """
    cls = get_learner(config["learner"])
    task = _task(config)
    if task not in cls.tasks:
        able = [name for name, other in registry().items() if task in other.tasks]
        raise UsageError(f"learner {cls.name} does not do {task} (data {config['data']!r}); "
                         f"choose one of {', '.join(able)}")
    return _usage(lambda: cls.from_config(LearnerConfig.from_dict({**config, "task": task})))


def build_data(config: dict) -> dict:
    """Images and class splits (or the sinusoid family) that a config describes (Chapter 5).

    Omniglot: the named background archives, alphabets in ``holdout_alphabets`` held out for
    testing and ``val_alphabets`` for validation; the rest train, or only ``train_alphabets``
    where named (``--train-alphabets``: fewer alphabets, for a learning curve). Glyphs:
    procedural classes split by pseudo-alphabet (70% train, 10% validation, 20% test). With
    ``unions`` (``--unions``), the training split also holds overlaid pairs of its characters
    (:func:`mlbook.tasks.union_characters`); with ``glyph_alphabets`` (``--glyph-alphabets``),
    pseudo-alphabets of procedural glyphs (:func:`mlbook.data.with_glyph_alphabets`).
    """
    kind = check_choice("data", config["data"], DATA)
    if kind == "sinusoid":
        return {"kind": kind}
    from .data import load_image_classes
    from .tasks import alphabet_split

    try:
        data = load_image_classes(kind, image_size=config.get("image_size", LearnerConfig.image_size),
                                  archives=config.get("archives") or (), download=config.get("download", True),
                                  glyph_classes=config.get("glyph_classes", GLYPH_CLASSES),
                                  seed=config.get("data_seed", 0), verbose=False,
                                  frame=config.get("frame", "canvas"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load {kind} images from {config.get('archives')}: {error}") from None
    if kind == "omniglot":
        holdout, val = config.get("holdout_alphabets", []), config.get("val_alphabets", [])
        trained = config.get("train_alphabets", [])
        known = sorted(set(data.alphabets))
        unknown = [a for a in holdout + val + trained if a not in known]
        if unknown:
            raise UsageError(f"alphabets {unknown} are not in these archives; choose from {known}")
        overlap = [a for a in trained if a in holdout + val]
        if overlap:
            raise UsageError(f"--train-alphabets: {overlap} are held out (--holdout-alphabets or --val-alphabets); "
                             f"choose among {[a for a in known if a not in holdout + val]}")
        named = {"test": holdout, "val": val, **({"train": trained} if trained else {})}
        split = _usage(alphabet_split, data.alphabets,
                       named if (holdout or val or trained) else (1.0, 0.0, 0.0))
        if split["test"].numel() == 0:
            split["test"] = split["train"]                 # no held-out alphabets: say so when scoring
    else:
        split = _usage(alphabet_split, data.alphabets, (0.7, 0.1, 0.2), config.get("data_seed", 0))
    images, alphabets, train = data.images, list(data.alphabets), split["train"]
    if config.get("unions", 0) > 0:
        from .tasks import union_characters

        images, alphabets, train = union_characters(images, alphabets, train, config["unions"],
                                                    seed=config.get("data_seed", 0))
    if config.get("glyph_alphabets", 0) > 0:
        from .data import with_glyph_alphabets

        images, alphabets, train = with_glyph_alphabets(images, alphabets, train, config["glyph_alphabets"],
                                                        frame=config.get("frame", "canvas"),
                                                        seed=config.get("data_seed", 0))
    # characters names the release's characters (None for glyphs); classes added after them
    # (unions, glyph alphabets) only ever train.
    return {"kind": kind, "images": images, "alphabets": alphabets, "train": train,
            "val": split["val"], "test": split["test"], "characters": data.characters}


def _image_family(data: dict, split: str, ways: int, shots: int, queries: int, within: float,
                  rotate: bool, device, reflect: bool = False):
    from .tasks import AlphabetFamily, ImageClassFamily, copies_description, copies_per_class

    classes = data[split]
    if classes.numel() == 0:
        raise UsageError(f"the {split} split has no classes")
    if shots + queries > data["images"].shape[1]:
        raise UsageError(f"shots + queries = {shots + queries} is more than the {data['images'].shape[1]} "
                         f"drawings per character: impossible {ways}-way {shots}-shot episodes with {queries} queries")
    available = classes.numel() * copies_per_class(rotate, reflect)
    if ways > available:
        raise UsageError(f"ways = {ways} is more than the {available} classes of the {split} split"
                         f"{copies_description(rotate, reflect)}")
    if within > 0:
        return _usage(lambda: AlphabetFamily(data["images"], data["alphabets"], ways, shots, queries,
                                             classes=classes, within=within, rotate=rotate, device=device,
                                             reflect=reflect))
    return _usage(lambda: ImageClassFamily(data["images"], ways, shots, queries, classes=classes, rotate=rotate,
                                           device=device, reflect=reflect))


def task_family(data: dict, split: str, ways: int, shots: int, queries: int, within: float,
            rotate: bool, device, reflect: bool = False):
    if data["kind"] == "sinusoid":
        from .tasks import SinusoidFamily

        return SinusoidFamily(shots=shots, queries=queries, device=device)
    return _image_family(data, split, ways, shots, queries, within, rotate, device, reflect)


# -- commands --------------------------------------------------------------------------------
_LEARNER_FLAGS = {"inner_lr": "--inner-lr", "inner_steps": "--inner-steps", "first_order": "--first-order",
                  "distance": "--distance", "local_window": "--local-window", "local_weights": "--local-weights",
                  "fixed_scale": "--fixed-scale",
                  "fce": "--fce", "lam": "--lam", "cg_steps": "--cg-steps"}
# What a resumed run may change; everything else defines the run and must stay as it was.
_RESUMABLE_SETTINGS = {"steps", "time_limit", "checkpoint_every", "stop_after", "val_every", "val_episodes",
                       "patience", "cuda_graph"}


def _warn_unused_options(args, learner_class) -> None:
    """Say so when a learner option was set that the chosen learner does not read."""
    defaults = LearnerConfig()
    for option, flag in _LEARNER_FLAGS.items():
        if option not in learner_class.options and getattr(args, option) != getattr(defaults, option):
            print(f"warning: {flag} does not apply to {learner_class.name} and is ignored "
                  f"(it reads: {', '.join(learner_class.options) or 'no learner options'})", file=sys.stderr)


def _run_config(args) -> dict:
    """The plain config that defines a run's learner and data (stored in its checkpoint)."""
    config = {
        "learner": args.learner, "data": args.data, "archives": _names(args.archives),
        "holdout_alphabets": _names(args.holdout_alphabets), "val_alphabets": _names(args.val_alphabets),
        "image_size": args.image_size, "ways": args.ways, "shots": args.shots, "queries": args.queries,
        "channels": args.channels, "norm": args.norm, "distance": args.distance, "fce": args.fce,
        "inner_lr": args.inner_lr, "inner_steps": args.inner_steps, "first_order": args.first_order,
        "lam": args.lam, "cg_steps": args.cg_steps, "activation": args.activation, "rotate": args.rotate, "within_alphabet": args.within_alphabet, "jitter": args.jitter,
        "glyph_classes": args.glyph_classes, "download": not args.no_download,
    }
    # Stored only when used, so checkpoints written before these options existed still resume.
    config.update({key: value for key, value in (
        ("elastic", args.elastic), ("thicken", args.thicken), ("erase", args.erase), ("reflect", args.reflect),
        ("unions", args.unions), ("glyph_alphabets", args.glyph_alphabets),
        ("train_alphabets", _names(args.train_alphabets))) if value})
    if args.local_window is not None:
        if args.distance != "local":
            raise UsageError(f"--local-window applies to --distance local only, got --distance {args.distance}")
        config["local_window"] = args.local_window
    if args.local_weights != "equal":
        if args.distance != "local":
            raise UsageError(f"--local-weights applies to --distance local only, got --distance {args.distance}")
        config["local_weights"] = args.local_weights
    if args.fixed_scale is not None:
        if args.distance == "euclidean":
            raise UsageError("--fixed-scale applies to --distance cosine, local or reconstruction only, "
                             "got --distance euclidean")
        config["fixed_scale"] = args.fixed_scale
    if args.pretrain > 0:
        _check_pretrain(args)
        config["pretrain"] = args.pretrain
        if args.pretrain_head != "mean":
            config["pretrain_head"] = args.pretrain_head
    elif args.pretrain_head != "mean":
        raise UsageError("--pretrain-head chooses the head of --pretrain: give --pretrain SECONDS too")
    if args.pools != LearnerConfig.pools:
        config["pools"] = args.pools
    if args.space_to_depth != LearnerConfig.space_to_depth:
        config["space_to_depth"] = args.space_to_depth
    if args.residual_blocks != LearnerConfig.residual_blocks:
        config["residual_blocks"] = args.residual_blocks
    if args.feature_blocks != LearnerConfig.feature_blocks:
        config["feature_blocks"] = args.feature_blocks
    if args.frame != "canvas":
        if args.data == "sinusoid":
            raise UsageError(f"--frame {args.frame} frames images: it applies to image data (omniglot or glyphs) only")
        config["frame"] = args.frame
    if args.data != "omniglot" and (config["holdout_alphabets"] or config["val_alphabets"]):
        if args.holdout_alphabets != DEFAULT_HOLDOUT or config["val_alphabets"]:
            raise UsageError("--holdout-alphabets and --val-alphabets apply to --data omniglot only")
        config["holdout_alphabets"] = []
    if config.get("train_alphabets") and args.data != "omniglot":
        raise UsageError(f"--train-alphabets names Omniglot alphabets: it needs --data omniglot, "
                         f"got --data {args.data}")
    if args.glyph_alphabets and args.data != "omniglot":
        raise UsageError(f"--glyph-alphabets adds procedural glyphs to Omniglot's training alphabets: it needs "
                         f"--data omniglot, got --data {args.data}")
    if args.data == "sinusoid" and (args.within_alphabet > 0 or args.jitter > 0 or args.rotate or args.reflect
                                    or args.elastic > 0 or args.thicken > 0 or args.erase > 0 or args.unions > 0):
        raise UsageError("--within-alphabet, --jitter, --elastic, --thicken, --erase, --rotate, --reflect and "
                         "--unions apply to image data (omniglot or glyphs) only")
    return config


def _check_pretrain(args) -> None:
    if args.learner != "ProtoNet" or args.data == "sinusoid":
        raise UsageError(f"--pretrain trains ProtoNet's embedding on image data; got --learner {args.learner} "
                         f"--data {args.data}")
    if args.reflect:
        raise UsageError("--pretrain classifies characters and their turns; it cannot be combined with --reflect")
    if args.pretrain_head == "dense" and args.distance != "local":
        raise UsageError(f"--pretrain-head dense classifies each place of a feature map: it needs --distance local, "
                         f"got --distance {args.distance}")
    if args.time_limit is not None and args.time_limit <= args.pretrain:
        raise UsageError(f"--pretrain {args.pretrain:g} seconds is part of --time-limit {args.time_limit:g}: "
                         f"it must be shorter, to leave time for meta-training")


def _train_config(args) -> TrainConfig:
    # Pre-training spends the first --pretrain seconds of --time-limit; meta-training the rest.
    time_limit = None if args.time_limit is None else args.time_limit - args.pretrain
    return TrainConfig(steps=args.steps, meta_batch_size=args.meta_batch_size, outer_lr=args.lr,
                       optimiser=args.optimiser, weight_decay=args.weight_decay, seed=args.seed,
                       schedule=args.schedule, warmup=args.warmup,
                       val_every=args.val_every, val_episodes=args.val_episodes, patience=args.patience,
                       checkpoint_every=args.checkpoint_every, time_limit=time_limit,
                       precision=args.precision, cuda_graph=args.cuda_graph, sam_radius=args.sam,
                       ema_decay=args.ema)


def _differences(saved: dict, now: dict, ignore=()) -> list[str]:
    return [f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
            for key in sorted(set(saved) | set(now)) if key not in ignore and saved.get(key) != now.get(key)]


def _prepare_output(args, config: dict, train_config: TrainConfig) -> Path:
    """Check ``--out`` before any training: writable, and not silently overwritten or changed on resume."""
    if not args.out.strip():
        raise UsageError("--out must name the checkpoint file to write")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the name of a file in it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as error:
        raise UsageError(f"--out {out} cannot be written ({error.strerror or error})") from None
    if out.exists() and not args.resume and not args.overwrite:
        raise UsageError(f"{out} exists: continue that run with --resume, or replace it with --overwrite")
    if out.exists() and args.resume:
        saved = load_checkpoint(out)
        differences = _differences((saved.get("metadata") or {}).get("config") or {}, config, ignore=("download",))
        # Checkpoints written before --precision existed trained in float32.
        saved_settings = {"precision": "float32", **(saved.get("train_config") or {})}
        differences += _differences(saved_settings, asdict(train_config), _RESUMABLE_SETTINGS)
        if differences:
            raise UsageError(f"--resume must continue the same run; changed: {'; '.join(differences)}")
    return out


def _augmentation(args):
    from .augment import AffineJitter, Chain, ElasticWarp, PartErasure, StrokeThickness

    j = args.jitter
    chosen = [augmentation for wanted, augmentation in (
        (args.jitter > 0, lambda: AffineJitter(degrees=10 * j, scale=0.1 * j, shear=0.1 * j, shift=0.1 * j)),
        (args.elastic > 0, lambda: ElasticWarp(pixels=args.elastic)),
        (args.thicken > 0, lambda: StrokeThickness(probability=args.thicken)),
        (args.erase > 0, lambda: PartErasure(probability=args.erase))) if wanted]
    if not chosen:
        return None
    return chosen[0]() if len(chosen) == 1 else Chain(*(make() for make in chosen))


def _pretrained_state(learner, data: dict, args, device, log) -> dict:
    """The learner's initial state with its embedding pre-trained as a classifier of every training
    class for ``--pretrain`` seconds (Chapter 5)."""
    from .pretrain import pretrain

    result = pretrain(learner.model, data["images"].to(device), time_limit=args.pretrain, lr=args.lr,
                      seed=args.seed, classes=data["train"].to(device), rotate=args.rotate,
                      precision=args.precision, augment=_augmentation(args),
                      channels=learner.channels if learner.distance == "local" else None,
                      dense=args.pretrain_head == "dense")
    if log:
        log(f"pre-trained the embedding for {result.seconds:.0f} s: {len(result.losses)} steps of "
            f"{result.images_seen // max(1, len(result.losses))} images over {result.num_classes} classes, "
            f"last loss {result.losses[-1]:.3f}")
    return {**learner.init(args.seed, device=device), "params": result.state["params"]}


def cmd_train(args) -> int:
    """``train``: meta-train a learner and write a checkpoint (Chapter 5)."""
    config, train_config = _run_config(args), _usage(_train_config, args)
    learner = build_learner(config)
    _warn_unused_options(args, type(learner))
    data = build_data(config)
    device = get_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise UsageError(f"--cuda-graph records CUDA graphs: it needs a CUDA device, and --device {args.device} "
                         f"is {device}")
    out = _prepare_output(args, config, train_config)
    world = dist_utils.init_from_env(device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    family = task_family(data, "train", args.ways, args.shots, args.queries, args.within_alphabet, args.rotate, device,
                         reflect=args.reflect)
    val_family = None
    if args.val_every:
        if data["kind"] != "sinusoid" and data["val"].numel() == 0:
            raise UsageError("--val-every needs validation classes: name them with --val-alphabets")
        val_family = task_family(data, "val", args.test_ways or args.ways, args.test_shots or args.shots,
                             args.queries, 0.0, False, device)
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if world.is_main else None
    if log:
        log(f"training {learner!r} on {args.data} ({family.__class__.__name__}, {args.ways}-way "
            f"{args.shots}-shot, {args.queries} queries per class), {args.steps} steps, device {device}, "
            f"{world.size} process(es)")
    started = time.perf_counter()
    state = None
    if args.pretrain > 0 and not (args.resume and out.exists()):
        state = _pretrained_state(learner, data, args, device, log)
    with stop_on_signals():
        result = meta_train(learner, family, state=state, config=train_config, val_family=val_family,
                            checkpoint=out,
                            resume=args.resume, metadata={"config": config, "argv": sys.argv[1:]}, log=log,
                            augment=_augmentation(args))
    if world.is_main:
        print(json.dumps({"checkpoint": result.checkpoint, "steps": result.step, "stopped": result.stopped,
                          "final_loss": round(result.losses[-1], 6) if result.losses else None,
                          "seconds": round(time.perf_counter() - started, 1)}))
    dist_utils.shutdown()
    if result.stopped == "interrupted":
        print(f"interrupted at step {result.step}; the checkpoint {result.checkpoint} holds everything so far. "
              f"Continue with the same command and --resume.", file=sys.stderr)
        return 128 + result.signal
    return 0


def load_trained(path, device):
    """(checkpoint, config, learner, state) of a checkpoint written by ``train`` (Chapter 5)."""
    checkpoint = load_checkpoint(path, map_location=device)
    config = (checkpoint.get("metadata") or {}).get("config")
    if not config:
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by `python -m mlbook train` "
                              f"(it has no learner config)")
    learner = build_learner(config)
    state = learner.init(0, device=device)
    load_state_into(state, checkpoint["state"])
    return checkpoint, config, learner, state


def cmd_evaluate(args) -> int:
    """``evaluate``: accuracy (or loss) ± 95% CI of a checkpoint on N-way K-shot episodes (Chapter 5)."""
    device = get_device(args.device)
    checkpoint, config, learner, state = load_trained(args.checkpoint, device)
    ways = args.ways or config["ways"]
    shots = args.shots or config["shots"]
    queries = args.queries or config["queries"]
    if not learner.any_ways and config["data"] != "sinusoid" and ways != config["ways"]:
        raise UsageError(f"{config['learner']} was trained with a {config['ways']}-way output layer; "
                         f"evaluate it with --ways {config['ways']}")
    config = {**config, "download": False}
    data = build_data(config)
    held_out = data["kind"] == "sinusoid" or bool(config.get("holdout_alphabets")) or data["kind"] == "glyphs"
    family = task_family(data, "test", ways, shots, queries, 1.0 if args.within_alphabet else 0.0,
                     False, device)
    result = evaluate(learner, state, family, episodes=args.episodes, seed=args.seed)
    summary = {"learner": config["learner"], "data": config["data"], "ways": ways, "shots": shots,
               "queries": queries, "episodes": args.episodes, "within_alphabet": bool(args.within_alphabet),
               "metric": result.metric, "mean": round(result.mean, 6), "ci95": round(result.ci95, 6),
               "held_out_classes": held_out, "trained_steps": int(checkpoint["step"])}
    if args.json:
        print(json.dumps(summary))
    else:
        where = "held-out classes" if held_out else "TRAINING classes (no alphabets were held out)"
        print(f"{config['learner']} on {config['data']} {where}, {ways}-way {shots}-shot, "
              f"{args.episodes} episodes: {result.metric} {result}")
    return 0


def _load_ensemble(paths, device):
    """(checkpoint, config, learner, state) of one checkpoint, or of an Ensemble of several trained
    on the same data (its checkpoint's ``step`` adds up theirs; Chapter 5)."""
    if len(paths) == 1:
        return load_trained(paths[0], device)
    from .learners import Ensemble

    loaded = [load_trained(path, device) for path in paths]
    shared = ("data", "archives", "holdout_alphabets", "val_alphabets", "image_size")
    for path, (_, config, _, _) in zip(paths[1:], loaded[1:]):
        differs = [key for key in shared if config.get(key) != loaded[0][1].get(key)]
        if differs:
            raise UsageError(f"checkpoint: an ensemble's members must share their data; {path} differs from "
                             f"{paths[0]} in {', '.join(differs)}")
    ensemble = Ensemble([learner for _, _, learner, _ in loaded])
    step = sum(int(checkpoint["step"]) for checkpoint, _, _, _ in loaded)
    return ({"step": step}, {**loaded[0][1], "learner": ensemble.name}, ensemble,
            ensemble.state_of([state for _, _, _, state in loaded]))


def _with_local_weights(learner, local_weights: str):
    """``learner`` (or each member of an ensemble) rescored with ``local_weights`` (Chapter 5)."""
    from .learners import Ensemble, ProtoNet

    members = learner.members if isinstance(learner, Ensemble) else [learner]
    for member in members:
        if not (isinstance(member, ProtoNet) and member.distance == "local"):
            raise UsageError(f"--local-weights rescores ProtoNet checkpoints trained with --distance local; "
                             f"got {member!r}")
    rescored = [member.with_local_weights(local_weights) for member in members]
    return Ensemble(rescored) if isinstance(learner, Ensemble) else rescored[0]


def _local_weights_of(learner):
    """How the best matches are weighed: one value, a sorted list where ensemble members differ, or
    None where no member uses the local similarity (Chapter 5)."""
    members = getattr(learner, "members", [learner])
    weights = sorted({m.local_weights for m in members if getattr(m, "distance", None) == "local"})
    return (weights or [None])[0] if len(weights) <= 1 else weights


def cmd_lake(args) -> int:
    """``lake``: Lake's within-alphabet one-shot runs, or the held-out-alphabet proxy, as JSON (Chapter 5)."""
    device = get_device(args.device)
    checkpoint, config, learner, state = _load_ensemble(args.checkpoint, device)
    if args.baseline is None and not learner.any_ways and config["ways"] != 20:
        raise UsageError(f"{config['learner']} was trained with a {config['ways']}-way output layer; "
                         f"Lake's runs are 20-way")
    from .lake import lake_runs_result, proxy_result

    if (args.runs is None) == (not args.proxy):
        raise UsageError("give exactly one of --runs PATH (Lake's all_runs.zip or folder) and --proxy")
    if args.pairs and (not args.proxy or args.baseline is not None or args.test_time_shift):
        raise UsageError("--pairs reads a learner's plain predictions on the proxy: give --proxy, and no "
                         "--baseline or --test-time-shift")
    from .augment import ShiftedViews

    views = ShiftedViews(args.test_time_shift) if args.test_time_shift else None
    if args.local_weights is not None:
        learner = _with_local_weights(learner, args.local_weights)
    images = {"image_size": config.get("image_size", LearnerConfig.image_size), "frame": config.get("frame", "canvas")}
    if args.baseline == "hausdorff":
        from .data import OMNIGLOT_SIZE
        from .lake import HausdorffBaseline

        if views is not None or args.local_weights is not None or len(args.checkpoint) > 1:
            raise UsageError("--baseline hausdorff scores Lake's baseline alone: give one checkpoint (it only names "
                             "the held-out alphabets) and no --test-time-shift or --local-weights")
        # Lake's baseline reads the release's drawings as they are: 105 pixels, not framed.
        learner, state, images = HausdorffBaseline(), None, {"image_size": OMNIGLOT_SIZE, "frame": "canvas"}
    if args.runs is not None:
        if config["data"] == "sinusoid":
            raise UsageError("Lake's runs are images; this checkpoint was trained on sinusoids")
        try:
            result = lake_runs_result(learner, state, args.runs, device=device, views=views, **images)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
    else:
        if config["data"] != "omniglot" or not config.get("holdout_alphabets"):
            raise UsageError("--proxy needs a checkpoint trained on --data omniglot with --holdout-alphabets")
        data = build_data({**config, **images, "download": False})
        if data[args.split].numel() == 0:
            raise UsageError(f"--split {args.split}: this checkpoint was trained with no {args.split} "
                             f"alphabets (--{'val' if args.split == 'val' else 'holdout'}-alphabets)")
        result = proxy_result(learner, state, data["images"], data["alphabets"], data[args.split],
                              episodes=args.episodes, seed=args.seed, device=device, views=views)
        result["split"] = args.split
        if args.pairs:
            result["confused_pairs"] = _worst_pairs(learner, state, data, args, device)
    if args.baseline == "hausdorff":
        result.update({"checkpoint": str(args.checkpoint[0]), "learner": learner.name,
                       "image_size": images["image_size"]})
    else:
        result.update({"checkpoint": ",".join(map(str, args.checkpoint)), "learner": config["learner"],
                       "members": len(args.checkpoint), "test_time_shift_px": args.test_time_shift,
                       "local_weights": _local_weights_of(learner),
                       "trained_steps": int(checkpoint["step"])})
    print(json.dumps(result))
    return 0


def _worst_pairs(learner, state, data: dict, args, device) -> dict:
    """The ``--pairs`` worst confused pairs of characters of each proxy alphabet, by name."""
    from .lake import confused_pairs, proxy_confusions

    confusions = proxy_confusions(learner, state, data["images"], data["alphabets"], data[args.split],
                                  episodes=args.episodes, seed=args.seed, device=device)
    names = data.get("characters")
    return {alphabet: [{**pair, "characters": [names[c] if names else c for c in pair["characters"]]}
                       for pair in confused_pairs(confusions, alphabet)[:args.pairs]]
            for alphabet in sorted(set(confusions["alphabets"]))}


# -- argument parsing ------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (Chapter 5)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0 (Chapter 5)."""
    return 0 if text.strip() == "0" else positive_int(text)


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (Chapter 5)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (Chapter 5)."""
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def open_unit_float(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (Chapter 5)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (Chapter 5)."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def stroke_share(text: str) -> float:
    """argparse type: a share of images in [0, 0.5], for ``--thicken`` (Chapter 5)."""
    value = non_negative_float(text)
    if value > 0.5:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.5] (that share thicker, the same share thinner), "
                                         f"got {text!r}")
    return value


def _add_data_options(train) -> None:
    train.add_argument("--data", default="omniglot", choices=DATA, help="the task family (default omniglot)")
    train.add_argument("--archives", default="images_background_small1.zip,images_background_small2.zip",
                       help="comma-separated Omniglot background archives (looked up in $MLBOOK_DATA and "
                            "$MLBOOK_OMNIGLOT, else downloaded)")
    train.add_argument("--holdout-alphabets", default=DEFAULT_HOLDOUT,
                       help=f"comma-separated alphabets held out of training for testing (default {DEFAULT_HOLDOUT}; "
                            "'none' trains on every alphabet)")
    train.add_argument("--val-alphabets", default=None, help="comma-separated alphabets for validation")
    train.add_argument("--train-alphabets", default=None,
                       help="comma-separated alphabets to train on (default: every alphabet neither held out "
                            "nor validating); fewer alphabets give a learning curve over them")
    train.add_argument("--no-download", action="store_true", help="never download Omniglot")
    train.add_argument("--glyph-classes", type=positive_int, default=GLYPH_CLASSES,
                       help="classes of procedural glyphs (--data glyphs)")
    train.add_argument("--image-size", type=positive_int, default=LearnerConfig.image_size,
                       help=f"image side in pixels (default {LearnerConfig.image_size})")
    train.add_argument("--ways", type=positive_int, default=5, help="N: classes per training episode")
    train.add_argument("--shots", type=positive_int, default=1, help="K: support examples per class")
    train.add_argument("--queries", type=positive_int, default=15, help="Q: query examples per class")
    train.add_argument("--test-ways", type=positive_int, default=None, help="ways of validation episodes (default --ways)")
    train.add_argument("--test-shots", type=positive_int, default=None,
                       help="shots of validation episodes (default --shots)")
    train.add_argument("--rotate", action="store_true", help="rotated characters (x90 degrees) as new classes")
    train.add_argument("--reflect", action="store_true",
                       help="mirror images of characters (left-right) as new classes, with --rotate in all four turns")
    train.add_argument("--unions", type=non_negative_float, default=0.0, metavar="PER_CHARACTER",
                       help="new training classes, each two characters of one alphabet drawn over each other "
                            "(drawer by drawer), this many per training character (0: none)")
    train.add_argument("--glyph-alphabets", type=non_negative_int, default=0, metavar="COUNT",
                       help="new training alphabets of procedural glyphs (40 characters each, drawn by 20 "
                            "hands at Omniglot's stroke width; --data omniglot only); 0: none")
    train.add_argument("--within-alphabet", type=fraction, default=0.0,
                       help="fraction of training episodes whose classes share one alphabet")
    train.add_argument("--elastic", type=non_negative_float, default=0.0,
                       help="random smooth warps of the images, up to this many pixels (0: none)")
    train.add_argument("--thicken", type=stroke_share, default=0.0,
                       help="share of images drawn with thicker strokes, and the same share thinner (0 to 0.5)")
    train.add_argument("--erase", type=fraction, default=0.0, metavar="SHARE",
                       help="share of images with a random square a quarter of their side wiped blank (0: none)")
    train.add_argument("--jitter", type=non_negative_float, default=0.0,
                       help="strength of random affine jitter (1.0: up to 10 degrees, 10%% scale, shear, shift)")


def _add_learner_options(train) -> None:
    train.add_argument("--learner", default="ProtoNet", choices=learner_names(), metavar="LEARNER",
                       help=f"one of {', '.join(learner_names())} (default ProtoNet)")
    train.add_argument("--channels", type=positive_int, default=LearnerConfig.channels, help="Conv4 channels")
    train.add_argument("--pools", type=int, choices=POOLS, default=LearnerConfig.pools,
                       help="how many of Conv4's four blocks end in a 2x2 max-pool (default 4; 3 keeps a "
                            "3x3 map at 28 pixels)")
    train.add_argument("--space-to-depth", type=positive_int, default=LearnerConfig.space_to_depth, metavar="F",
                       help="Conv4: fold each FxF patch of pixels into F*F channels first (with --image-size 56 "
                            "and F=2 the first block sees 28x28x4; default 1, no folding)")
    train.add_argument("--residual-blocks", type=non_negative_int, default=LearnerConfig.residual_blocks,
                       metavar="R", help="Conv4: R residual blocks after the four, at the last map's size "
                                         "(default 0)")
    train.add_argument("--feature-blocks", type=positive_int, default=LearnerConfig.feature_blocks, metavar="K",
                       help="Conv4: the embedding stacks the maps of the last K blocks, which must not pool "
                            "(default 1, the last block's map only)")
    train.add_argument("--norm", default="group", choices=("group", "batch", "none"), help="Conv4 normalisation")
    train.add_argument("--frame", default="canvas", choices=FRAMES,
                       help="where each character sits in its image: the drawer's canvas (default), centred on "
                            "its centre of ink mass, fitted to its bounding box, or fitted and its strokes redrawn with "
                            "one pen width")
    train.add_argument("--distance", default="euclidean", choices=DISTANCES,
                       help="ProtoNet distance (local: best matches of the feature maps' local descriptors; "
                            "reconstruction: how well each map's descriptors rebuild the other's)")
    train.add_argument("--local-window", type=non_negative_int, default=None, metavar="R",
                       help="with --distance local: a descriptor matches only those at most R cells of the "
                            "feature map away (default: anywhere)")
    train.add_argument("--local-weights", default="equal", choices=LOCAL_WEIGHTS,
                       help="with --distance local: average the best matches alike (equal) or each by the "
                            "square root of its descriptor's length (sqrt-norm)")
    train.add_argument("--fixed-scale", type=positive_float, default=None, metavar="SCALE",
                       help="with --distance cosine, local or reconstruction: hold the similarities' "
                            "temperature at SCALE "
                            "(default: learned, starting at 10)")
    train.add_argument("--fce", action="store_true", help="MatchingNet: full-context embeddings")
    train.add_argument("--inner-lr", type=positive_float, default=None, help="inner learning rate (gradient learners)")
    train.add_argument("--inner-steps", type=positive_int, default=1, help="inner steps (gradient learners)")
    train.add_argument("--first-order", action="store_true", help="MAML: first-order meta-gradient")
    train.add_argument("--activation", choices=("relu", "tanh"), default="relu",
                       help="activation of the sinusoid MLP (default relu, as in the papers)")
    train.add_argument("--lam", type=positive_float, default=1.0,
                       help="iMAML: strength of the proximal term tying theta to phi (default 1)")
    train.add_argument("--cg-steps", type=positive_int, default=5,
                       help="iMAML: conjugate-gradient iterations of the implicit gradient (default 5)")


def _add_training_options(train) -> None:
    train.add_argument("--steps", type=positive_int, default=1000, help="outer steps")
    train.add_argument("--meta-batch-size", type=positive_int, default=4, help="tasks per outer step")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="outer learning rate")
    train.add_argument("--optimiser", default="adam", choices=OPTIMISERS, help="outer optimiser (default adam)")
    train.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                       help="weight decay of the outer optimiser (decoupled with adamw; default 0)")
    train.add_argument("--sam", type=positive_float, default=None, metavar="RADIUS",
                       help="sharpness-aware minimisation: each gradient taken again RADIUS along it (a second "
                            "backward pass per step; default off)")
    train.add_argument("--ema", type=open_unit_float, default=None, metavar="DECAY",
                       help="keep a moving average of the weights, each step DECAY of the old average "
                            "and 1 - DECAY of the new weights, and validate and save it (default off)")
    train.add_argument("--schedule", default="constant", choices=SCHEDULES,
                       help="learning-rate schedule (cosine_time: a cosine over --time-limit seconds)")
    train.add_argument("--warmup", type=non_negative_int, default=0, help="linear warm-up steps")
    train.add_argument("--val-every", type=positive_int, default=None,
                       help="validate every n steps (needs validation classes)")
    train.add_argument("--val-episodes", type=positive_int, default=100, help="episodes per validation")
    train.add_argument("--patience", type=positive_int, default=None,
                       help="early stopping after n validations without gain")
    train.add_argument("--checkpoint-every", type=positive_int, default=None, help="write the checkpoint every n steps")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out with a new run")
    train.add_argument("--time-limit", type=positive_float, default=None, help="stop after this many seconds")
    train.add_argument("--pretrain", type=non_negative_float, default=0.0, metavar="SECONDS",
                       help="ProtoNet: first train the embedding for this many seconds as a classifier of every "
                            "training class (and its turns), then meta-train from it; part of --time-limit")
    train.add_argument("--pretrain-head", choices=("mean", "dense"), default="mean",
                       help="with --distance local, what the pre-training classifier reads: the mean of the "
                            "feature map's descriptors, or each descriptor on its own (dense; default mean)")
    train.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="bfloat16: meta-loss and gradients under autocast, faster on CPUs with AMX and on "
                            "GPUs (default float32)")
    train.add_argument("--cuda-graph", action="store_true",
                       help="record the meta-step once as a CUDA graph and replay it (CUDA only; same numbers, "
                            "less launching)")
    train.add_argument("--seed", type=int, default=0, help="seed of the initial state and of the episodes")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    train.add_argument("--out", required=True, help="checkpoint file to write")


def _add_evaluate_command(commands) -> None:
    ev = commands.add_parser("evaluate", help="score a checkpoint on N-way K-shot test episodes",
                             description="Accuracy ± 95%% CI of a checkpoint on test episodes of its held-out classes.")
    ev.add_argument("checkpoint", help="checkpoint written by `train`")
    ev.add_argument("--ways", type=positive_int, default=None, help="N (default: as trained)")
    ev.add_argument("--shots", type=positive_int, default=None, help="K (default: as trained)")
    ev.add_argument("--queries", type=positive_int, default=None, help="Q (default: as trained)")
    ev.add_argument("--within-alphabet", action="store_true", help="every episode's classes from one alphabet")
    ev.add_argument("--episodes", type=positive_int, default=600, help="test episodes (default 600)")
    ev.add_argument("--seed", type=int, default=1234, help="seed of the test episodes")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(run=cmd_evaluate)


def _add_lake_command(commands) -> None:
    lake = commands.add_parser("lake", help="Lake's 20-way within-alphabet one-shot runs (or the proxy) as JSON",
                               description="Score a checkpoint on Lake et al.'s 20 one-shot runs (--runs) or "
                                           "on 20-way within-alphabet one-shot episodes of its held-out "
                                           "alphabets (--proxy); prints one JSON object.")
    lake.add_argument("checkpoint", nargs="+", help="checkpoint written by `train`; several: an ensemble "
                                                    "averaging their class log-probabilities (same data)")
    lake.add_argument("--runs", default=None, help="all_runs.zip or its unpacked folder")
    lake.add_argument("--proxy", action="store_true", help="held-out-alphabet proxy instead of the runs")
    lake.add_argument("--episodes", type=positive_int, default=1000, help="proxy episodes (default 1000)")
    lake.add_argument("--split", choices=("test", "val"), default="test",
                      help="proxy alphabets: the held-out test ones (default), or the validation ones "
                           "(--val-alphabets), on which every choice is tuned")
    lake.add_argument("--seed", type=int, default=2015, help="seed of the proxy episodes")
    lake.add_argument("--test-time-shift", type=non_negative_float, default=0.0, metavar="PIXELS",
                      help="test-time augmentation: also score every image shifted by PIXELS in the 8 "
                           "directions (extra support shots, averaged query predictions); 0 (default) "
                           "turns it off; chosen on the validation alphabet Balinese: 1.5 for 28-pixel "
                           "images, 4.5 for 84-pixel ones (the README's command)")
    lake.add_argument("--local-weights", default=None, choices=LOCAL_WEIGHTS,
                      help="rescore a --distance local checkpoint with its best matches weighed another "
                           "way (see train's --local-weights), nothing retrained; default: as trained")
    lake.add_argument("--baseline", default=None, choices=("hausdorff",),
                      help="score Lake et al.'s modified Hausdorff distance baseline (nothing learned, "
                           "105-pixel drawings) on the same runs or episodes instead; the checkpoint only "
                           "names the held-out alphabets")
    lake.add_argument("--pairs", type=non_negative_int, default=0, metavar="K",
                      help="with --proxy: also list each alphabet's K pairs of characters most often "
                           "mistaken for each other, with the queries at risk (two characters drawn alike "
                           "err on about half); default 0, none")
    lake.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    lake.set_defaults(run=cmd_lake)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr, like every other usage error (Chapter 5)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m mlbook`` (Chapter 5)."""
    parser = OneLineParser(prog="python -m mlbook", description="Meta-learning from the command line.")
    commands = parser.add_subparsers(dest="command", metavar="{train,evaluate,lake,reproduce}")
    commands.required = True
    train = commands.add_parser("train", help="meta-train a learner and write a checkpoint",
                                description="Meta-train a learner on episodes and write a checkpoint.")
    _add_learner_options(train)
    _add_data_options(train)
    _add_training_options(train)
    train.set_defaults(run=cmd_train)
    _add_evaluate_command(commands)
    _add_lake_command(commands)
    add_reproduce_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m mlbook``; returns the exit status (Chapter 5).

    A mistake in what was asked (a :class:`UsageError`, a missing or foreign checkpoint) ends
    with one line and exit status 2 (1 for a checkpoint or a diverged run); any other error is
    a bug and keeps its traceback.
    """
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(args)
    except (UsageError, CheckpointError, NonFiniteError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, UsageError) else 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
