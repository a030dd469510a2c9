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
import sys
import time
from pathlib import Path

import torch

from . import distributed as dist_utils
from .learners import _LEARNER_MODULES
from .reference import add_reproduce_command
from .train import CheckpointError, NonFiniteError, evaluate, load_checkpoint, meta_train
from .utils import check_choice, get_device

__all__ = ["main", "build_learner", "build_data", "LEARNERS", "DATA"]

LEARNERS = tuple(_LEARNER_MODULES)
DATA = ("omniglot", "glyphs", "sinusoid")
METRIC_LEARNERS = ("ProtoNet", "MatchingNet")
GRADIENT_LEARNERS = ("MAML", "FOMAML", "ANIL", "Reptile", "IMAML", "MetaSGD")
DEFAULT_HOLDOUT = "Early_Aramaic,Korean"
EXIT_USAGE = 2


class UsageError(ValueError):
    """A command-line mistake: reported as one line with a non-zero exit (Chapter 5)."""


def _names(text: str | None) -> list[str]:
    if text is None or text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


# -- learners and data from a plain config dict (stored in every checkpoint) ----------------
def build_learner(config: dict):
    """The learner a config describes: name, data kind, ways, backbone size (Chapter 5).

    The same config is stored in the checkpoint, so ``evaluate`` and ``lake`` rebuild the
    exact learner that was trained.
    """
    from . import learners
    from .models import MLP, Conv4

    name = check_choice("learner", config["learner"], LEARNERS)
    regression = config["data"] == "sinusoid"
    if regression and name in METRIC_LEARNERS:
        raise UsageError(f"learner {name} classifies by distances to examples; data 'sinusoid' is "
                         f"regression: choose one of {', '.join(n for n in LEARNERS if n not in METRIC_LEARNERS)}")
    cls = getattr(learners, name)
    size, channels, norm = config.get("image_size", 28), config.get("channels", 64), config.get("norm", "group")
    if name in METRIC_LEARNERS:
        backbone = Conv4(out_features=0, channels=channels, norm=norm, image_size=size)
        if name == "ProtoNet":
            return cls(backbone, distance=config.get("distance", "euclidean"))
        return cls(backbone, fce=config.get("fce", False))
    if name in GRADIENT_LEARNERS:
        model = MLP() if regression else Conv4(out_features=config["ways"], channels=channels, norm=norm,
                                               image_size=size)
        kwargs = {"inner_lr": config.get("inner_lr") or (0.01 if regression else 0.4),
                  "steps": config.get("inner_steps", 1), "loss": "mse" if regression else "cross_entropy"}
        if name == "MAML" and config.get("first_order"):
            kwargs["first_order"] = True
        return cls(model, **kwargs)
    if regression:
        return cls()
    return cls(ways=config["ways"], image_size=size, channels=min(channels, 32))


def build_data(config: dict) -> dict:
    """Images and class splits (or the sinusoid family) that a config describes (Chapter 5).

    Omniglot: the named background archives, alphabets in ``holdout_alphabets`` held out for
    testing and ``val_alphabets`` for validation. Glyphs: procedural classes split by
    pseudo-alphabet (70% train, 10% validation, 20% test).
    """
    kind = check_choice("data", config["data"], DATA)
    if kind == "sinusoid":
        return {"kind": kind}
    from .tasks import alphabet_split

    size = config.get("image_size", 28)
    if kind == "omniglot":
        from .data.omniglot import load_omniglot

        try:
            data = load_omniglot(config["archives"], image_size=size, download=config.get("download", True))
        except (FileNotFoundError, OSError) as error:
            raise UsageError(f"cannot load Omniglot archives {config['archives']}: {error}") from None
        images, alphabets = data.images, data.alphabets
        holdout, val = config.get("holdout_alphabets", []), config.get("val_alphabets", [])
        known = sorted(set(alphabets))
        unknown = [a for a in holdout + val if a not in known]
        if unknown:
            raise UsageError(f"alphabets {unknown} are not in these archives; choose from {known}")
        split = alphabet_split(alphabets, {"test": holdout, "val": val} if (holdout or val) else (1.0, 0.0, 0.0))
        if isinstance(split, dict) and split["test"].numel() == 0:
            split["test"] = split["train"]                 # no held-out alphabets: say so when scoring
    else:
        from .data.glyphs import glyph_alphabets, make_glyphs

        classes = config.get("glyph_classes", 600)
        images = make_glyphs(classes, 20, size, config.get("data_seed", 0))
        alphabets = glyph_alphabets(classes)
        split = alphabet_split(alphabets, (0.7, 0.1, 0.2), seed=config.get("data_seed", 0))
    return {"kind": kind, "images": images, "alphabets": list(alphabets), "train": split["train"],
            "val": split["val"], "test": split["test"]}


def _image_family(data: dict, split: str, ways: int, shots: int, queries: int, within: float,
                  rotate: bool, device):
    from .lake import AlphabetFamily
    from .tasks import ImageClassFamily

    classes = data[split]
    if classes.numel() == 0:
        raise UsageError(f"the {split} split has no classes")
    if shots + queries > data["images"].shape[1]:
        raise UsageError(f"shots + queries = {shots + queries} is more than the {data['images'].shape[1]} "
                         f"drawings per character: impossible {ways}-way {shots}-shot episodes with {queries} queries")
    if ways > classes.numel():
        raise UsageError(f"ways = {ways} is more than the {classes.numel()} classes of the {split} split")
    if within > 0:
        return AlphabetFamily(data["images"], data["alphabets"], ways, shots, queries, classes=classes,
                              within=within, rotate=rotate, device=device)
    return ImageClassFamily(data["images"], ways, shots, queries, classes=classes, rotate=rotate, device=device)


def _family(config: dict, data: dict, split: str, ways: int, shots: int, queries: int, within: float,
            rotate: bool, device):
    if data["kind"] == "sinusoid":
        from .tasks import SinusoidFamily

        return SinusoidFamily(shots=shots, queries=queries, device=device)
    return _image_family(data, split, ways, shots, queries, within, rotate, device)


# -- commands --------------------------------------------------------------------------------
def _check_counts(args, names=("ways", "shots", "queries")):
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be a positive integer, got {value}")


def cmd_train(args) -> int:
    """``train``: meta-train a learner and write a checkpoint (Chapter 5)."""
    _check_counts(args, ("ways", "shots", "queries", "steps", "meta_batch_size"))
    learner_name = args.learner
    if learner_name not in LEARNERS:
        raise UsageError(f"unknown learner {learner_name!r}; choose from {', '.join(LEARNERS)}")
    if args.data not in DATA:
        raise UsageError(f"unknown data {args.data!r}; choose from {', '.join(DATA)}")
    device = get_device(args.device)
    world = dist_utils.init_from_env(device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    config = {
        "learner": learner_name, "data": args.data, "archives": _names(args.archives),
        "holdout_alphabets": _names(args.holdout_alphabets), "val_alphabets": _names(args.val_alphabets),
        "image_size": args.image_size, "ways": args.ways, "shots": args.shots, "queries": args.queries,
        "channels": args.channels, "norm": args.norm, "distance": args.distance, "fce": args.fce,
        "inner_lr": args.inner_lr, "inner_steps": args.inner_steps, "first_order": args.first_order,
        "rotate": args.rotate, "within_alphabet": args.within_alphabet, "jitter": args.jitter,
        "glyph_classes": args.glyph_classes, "download": not args.no_download,
    }
    if args.data != "omniglot" and (config["holdout_alphabets"] or config["val_alphabets"]):
        if args.holdout_alphabets != DEFAULT_HOLDOUT or config["val_alphabets"]:
            raise UsageError("--holdout-alphabets and --val-alphabets apply to --data omniglot only")
        config["holdout_alphabets"] = []
    if args.data != "omniglot" and args.within_alphabet > 0 and args.data != "glyphs":
        raise UsageError("--within-alphabet applies to image data (omniglot or glyphs) only")
    if not 0 <= args.within_alphabet <= 1:
        raise UsageError(f"--within-alphabet must be a fraction in [0, 1], got {args.within_alphabet}")
    learner = build_learner(config)
    data = build_data(config)
    family = _family(config, data, "train", args.ways, args.shots, args.queries, args.within_alphabet,
                     args.rotate, device)
    val_family = None
    if args.val_every:
        if data["kind"] != "sinusoid" and data["val"].numel() == 0:
            raise UsageError("--val-every needs validation classes: name them with --val-alphabets")
        val_family = _family(config, data, "val", args.test_ways or args.ways, args.test_shots or args.shots,
                             args.queries, 0.0, False, device)
    augment = None
    if args.jitter > 0:
        if data["kind"] == "sinusoid":
            raise UsageError("--jitter applies to image data only")
        from .lake import AffineJitter

        j = args.jitter
        augment = AffineJitter(degrees=10 * j, scale=0.1 * j, shear=0.1 * j, shift=0.1 * j)
    out = Path(args.out)
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if world.is_main else None
    if log:
        log(f"training {learner!r} on {args.data} ({family.__class__.__name__}, {args.ways}-way "
            f"{args.shots}-shot, {args.queries} queries per class), {args.steps} steps, device {device}, "
            f"{world.size} process(es)")
    started = time.perf_counter()
    result = meta_train(learner, family, args.steps, meta_batch_size=args.meta_batch_size, outer_lr=args.lr,
                        seed=args.seed, val_family=val_family, val_every=args.val_every or None,
                        val_episodes=args.val_episodes, patience=args.patience, schedule=args.schedule,
                        warmup=args.warmup, checkpoint=out, checkpoint_every=args.checkpoint_every,
                        resume=args.resume, metadata={"config": config, "argv": sys.argv[1:]},
                        time_limit=args.time_limit, log=log, augment=augment)
    if world.is_main:
        print(json.dumps({"checkpoint": str(out), "steps": result.step, "stopped": result.stopped,
                          "final_loss": round(result.losses[-1], 6) if result.losses else None,
                          "seconds": round(time.perf_counter() - started, 1)}))
    dist_utils.shutdown()
    return 0


def _load(path, device):
    checkpoint = load_checkpoint(path, map_location=device)
    config = (checkpoint.get("metadata") or {}).get("config")
    if not config:
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by `python -m mlbook train` "
                              f"(it has no learner config)")
    learner = build_learner(config)
    state = learner.init(0, device=device) if "device" in __import__("inspect").signature(
        learner.init).parameters else learner.init(0)
    from .train import _load_state_into

    _load_state_into(state, checkpoint["state"])
    return checkpoint, config, learner, state


def cmd_evaluate(args) -> int:
    """``evaluate``: accuracy (or loss) ± 95% CI of a checkpoint on N-way K-shot episodes (Chapter 5)."""
    _check_counts(args, ("ways", "shots", "queries", "episodes"))
    device = get_device(args.device)
    checkpoint, config, learner, state = _load(args.checkpoint, device)
    ways = args.ways or config["ways"]
    shots = args.shots or config["shots"]
    queries = args.queries or config["queries"]
    if config["learner"] not in METRIC_LEARNERS and config["data"] != "sinusoid" and ways != config["ways"]:
        raise UsageError(f"{config['learner']} was trained with a {config['ways']}-way output layer; "
                         f"evaluate it with --ways {config['ways']}")
    config = {**config, "download": False}
    data = build_data(config)
    held_out = data["kind"] == "sinusoid" or bool(config.get("holdout_alphabets")) or data["kind"] == "glyphs"
    family = _family(config, data, "test", ways, shots, queries, 1.0 if args.within_alphabet else 0.0,
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


def cmd_lake(args) -> int:
    """``lake``: Lake's within-alphabet one-shot runs, or the held-out-alphabet proxy, as JSON (Chapter 5)."""
    device = get_device(args.device)
    checkpoint, config, learner, state = _load(args.checkpoint, device)
    if config["learner"] not in METRIC_LEARNERS and config["ways"] != 20:
        raise UsageError(f"{config['learner']} was trained with a {config['ways']}-way output layer; "
                         f"Lake's runs are 20-way")
    from .lake import lake_runs_result, proxy_result

    if (args.runs is None) == (not args.proxy):
        raise UsageError("give exactly one of --runs PATH (Lake's all_runs.zip or folder) and --proxy")
    if args.runs is not None:
        if config["data"] == "sinusoid":
            raise UsageError("Lake's runs are images; this checkpoint was trained on sinusoids")
        try:
            result = lake_runs_result(learner, state, args.runs, image_size=config.get("image_size", 28),
                                      device=device)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
    else:
        if config["data"] != "omniglot" or not config.get("holdout_alphabets"):
            raise UsageError("--proxy needs a checkpoint trained on --data omniglot with --holdout-alphabets")
        data = build_data({**config, "download": False})
        result = proxy_result(learner, state, data["images"], data["alphabets"], data["test"],
                              episodes=args.episodes, seed=args.seed, device=device)
    result.update({"checkpoint": str(args.checkpoint), "learner": config["learner"],
                   "trained_steps": int(checkpoint["step"])})
    print(json.dumps(result))
    return 0


# -- argument parsing ------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m mlbook`` (Chapter 5)."""
    parser = argparse.ArgumentParser(prog="python -m mlbook", description="Meta-learning from the command line.")
    commands = parser.add_subparsers(dest="command", metavar="{train,evaluate,lake,reproduce}")
    commands.required = True

    train = commands.add_parser("train", help="meta-train a learner and write a checkpoint",
                                description="Meta-train a learner on episodes and write a checkpoint.")
    train.add_argument("--learner", default="ProtoNet", help=f"one of {', '.join(LEARNERS)} (default ProtoNet)")
    train.add_argument("--data", default="omniglot", help=f"one of {', '.join(DATA)} (default omniglot)")
    train.add_argument("--archives", default="images_background_small1.zip,images_background_small2.zip",
                       help="comma-separated Omniglot background archives (looked up in $MLBOOK_DATA and "
                            "$MLBOOK_OMNIGLOT, else downloaded)")
    train.add_argument("--holdout-alphabets", default=DEFAULT_HOLDOUT,
                       help=f"comma-separated alphabets held out of training for testing (default {DEFAULT_HOLDOUT}; "
                            "'none' trains on every alphabet)")
    train.add_argument("--val-alphabets", default=None, help="comma-separated alphabets for validation")
    train.add_argument("--no-download", action="store_true", help="never download Omniglot")
    train.add_argument("--glyph-classes", type=int, default=600, help="classes of procedural glyphs (--data glyphs)")
    train.add_argument("--image-size", type=int, default=28, help="image side in pixels (default 28)")
    train.add_argument("--ways", type=int, default=5, help="N: classes per training episode")
    train.add_argument("--shots", type=int, default=1, help="K: support examples per class")
    train.add_argument("--queries", type=int, default=15, help="Q: query examples per class")
    train.add_argument("--test-ways", type=int, default=None, help="ways of validation episodes (default --ways)")
    train.add_argument("--test-shots", type=int, default=None, help="shots of validation episodes (default --shots)")
    train.add_argument("--steps", type=int, default=1000, help="outer steps")
    train.add_argument("--meta-batch-size", type=int, default=4, help="tasks per outer step")
    train.add_argument("--lr", type=float, default=1e-3, help="outer (Adam) learning rate")
    train.add_argument("--schedule", default="constant", choices=("constant", "cosine", "step", "cosine_time"),
                       help="learning-rate schedule (cosine_time: a cosine over --time-limit seconds)")
    train.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    train.add_argument("--channels", type=int, default=64, help="Conv4 channels")
    train.add_argument("--norm", default="group", choices=("group", "batch", "none"), help="Conv4 normalisation")
    train.add_argument("--distance", default="euclidean", choices=("euclidean", "cosine"), help="ProtoNet distance")
    train.add_argument("--fce", action="store_true", help="MatchingNet: full-context embeddings")
    train.add_argument("--inner-lr", type=float, default=None, help="inner learning rate (gradient learners)")
    train.add_argument("--inner-steps", type=int, default=1, help="inner steps (gradient learners)")
    train.add_argument("--first-order", action="store_true", help="MAML: first-order meta-gradient")
    train.add_argument("--rotate", action="store_true", help="rotated characters (x90 degrees) as new classes")
    train.add_argument("--within-alphabet", type=float, default=0.0,
                       help="fraction of training episodes whose classes share one alphabet")
    train.add_argument("--jitter", type=float, default=0.0,
                       help="strength of random affine jitter (1.0: up to 10 degrees, 10%% scale, shear, shift)")
    train.add_argument("--val-every", type=int, default=0, help="validate every n steps (needs validation classes)")
    train.add_argument("--val-episodes", type=int, default=100, help="episodes per validation")
    train.add_argument("--patience", type=int, default=None, help="early stopping after n validations without gain")
    train.add_argument("--checkpoint-every", type=int, default=None, help="write the checkpoint every n steps")
    train.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    train.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    train.add_argument("--seed", type=int, default=0, help="seed of the initial state and of the episodes")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    train.add_argument("--out", required=True, help="checkpoint file to write")
    train.set_defaults(run=cmd_train)

    ev = commands.add_parser("evaluate", help="score a checkpoint on N-way K-shot test episodes",
                             description="Accuracy ± 95%% CI of a checkpoint on test episodes of its held-out classes.")
    ev.add_argument("checkpoint", help="checkpoint written by `train`")
    ev.add_argument("--ways", type=int, default=None, help="N (default: as trained)")
    ev.add_argument("--shots", type=int, default=None, help="K (default: as trained)")
    ev.add_argument("--queries", type=int, default=None, help="Q (default: as trained)")
    ev.add_argument("--within-alphabet", action="store_true", help="every episode's classes from one alphabet")
    ev.add_argument("--episodes", type=int, default=600, help="test episodes (default 600)")
    ev.add_argument("--seed", type=int, default=1234, help="seed of the test episodes")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(run=cmd_evaluate)

    lake = commands.add_parser("lake", help="Lake's 20-way within-alphabet one-shot runs (or the proxy) as JSON",
                               description="Score a checkpoint on Lake et al.'s 20 one-shot runs (--runs) or "
                                           "on 20-way within-alphabet one-shot episodes of its held-out "
                                           "alphabets (--proxy); prints one JSON object.")
    lake.add_argument("checkpoint", help="checkpoint written by `train`")
    lake.add_argument("--runs", default=None, help="all_runs.zip or its unpacked folder")
    lake.add_argument("--proxy", action="store_true", help="held-out-alphabet proxy instead of the runs")
    lake.add_argument("--episodes", type=int, default=1000, help="proxy episodes (default 1000)")
    lake.add_argument("--seed", type=int, default=2015, help="seed of the proxy episodes")
    lake.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    lake.set_defaults(run=cmd_lake)
    add_reproduce_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m mlbook``; returns the exit status (Chapter 5)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, CheckpointError, NonFiniteError, ValueError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, (UsageError, ValueError)) else 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
