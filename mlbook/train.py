"""The one meta-training loop and evaluator shared by every learner (Chapter 5).

``meta_train`` samples meta-batches from a task family, backpropagates the learner's
meta-loss and takes an outer optimiser step. Around that core it offers what a long run needs:
periodic validation with a 95% confidence interval, early stopping, a learning-rate schedule,
a guard that stops on the first NaN or infinity and says where it appeared, atomic checkpoints
(model, optimiser, schedule, episode generator, step, the training configuration) and a resume
that continues bit-for-bit on CPU. With ``torch.distributed`` initialised (``torchrun``), each
process computes its share of the meta-batch and the gradients are all-reduced
(:mod:`mlbook.distributed`). ``evaluate`` scores a learner on fresh test episodes and reports
a 95% confidence interval.

Every setting of a run is one :class:`TrainConfig` (plain values, stored in the checkpoint);
the loop is a :class:`Trainer` made of small steps: restore, step, validate, checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from . import distributed as dist_utils
from .graphs import GraphedMetaStep
from .metrics import confidence_interval, format_score
from .storage import detached, load_checkpoint, load_state_into, remove_stale_temporaries, save_checkpoint
from .tasks import TaskFamily
from .utils import check_choice, check_positive, check_positive_int, make_generator, progress

__all__ = ["meta_train", "evaluate", "make_optimiser", "stop_on_signals", "Trainer", "TrainConfig",
           "EvalResult", "TrainResult", "NonFiniteError", "SCHEDULES", "OPTIMISERS", "PRECISIONS",
           "precision_context", "cpu_has_bfloat16"]

SCHEDULES = ("constant", "cosine", "step", "cosine_time")
OPTIMISERS = ("adam", "adamw", "sgd")
PRECISIONS = ("float32", "bfloat16")


def precision_context(precision: str, device_type: str):
    """The context a loss and its gradient are computed in at ``precision`` (Chapter 5): none for
    'float32'; for 'bfloat16', autocast on ``device_type`` ('cpu' or 'cuda'), which runs
    convolutions and matrix products in bfloat16 and keeps parameters in float32."""
    if check_choice("precision", precision, PRECISIONS) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 kernels for autocast's convolutions and matrix products
    (AVX-512 with bfloat16, or AMX), so that 'bfloat16' training runs faster rather than emulated (Chapter 5)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN has no bfloat16 kernels either
        return False


# Measured with the README's Lake command, one minute each way, on a 2-core AMD EPYC (AVX2 only).
BFLOAT16_EMULATED = (
    "precision 'bfloat16' on this CPU, which has no bfloat16 units (no AVX-512 bfloat16 or AMX): autocast "
    "emulates it, and steps take longer than in float32 (7.6 times as long for the README's Lake command "
    "on a 2-core AMD EPYC); use precision 'float32' (train --precision float32) here")


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity; the message names the step and the tensor (Chapter 5)."""


@dataclass
class EvalResult:
    """Mean of a per-task metric over test episodes with its 95% confidence half-width (Chapter 5)."""

    metric: str
    mean: float
    ci95: float
    values: torch.Tensor = field(repr=False)

    def __str__(self) -> str:
        return format_score(self.metric, self.mean, self.ci95)


@dataclass
class TrainResult:
    """What :func:`meta_train` returns: the learned state and its history (Chapter 5).

    ``losses`` and ``accuracies`` have one entry per step since step 0 (accuracy is NaN for
    learners that do not report it); ``validation`` holds ``(step, mean, ci95)`` rows;
    ``best_step`` is the step of the best validation score; ``stopped`` says why training
    ended ('steps', 'early_stopping', 'time_limit', 'stop_after' or 'interrupted', with the
    ``signal`` number). ``checkpoint`` is where the last checkpoint was written: the file asked
    for, or a fallback in the temporary folder when that file could not be written.
    """

    state: dict
    losses: list[float]
    accuracies: list[float] = field(default_factory=list)
    validation: list[tuple[int, float, float]] = field(default_factory=list)
    best_step: int | None = None
    stopped: str = "steps"
    step: int = 0
    seconds: float = 0.0
    checkpoint: str | None = None
    signal: int | None = None


def _optional(check, name, value):
    return None if value is None else check(name, value)


@dataclass
class TrainConfig:
    """Every setting of a meta-training run, in plain values (saved in each checkpoint; Chapter 5).

    ``steps`` outer steps of ``meta_batch_size`` tasks, drawn with a generator seeded by ``seed``;
    ``optimiser`` ('adam', 'adamw' or 'sgd') with learning rate ``outer_lr`` shaped by
    ``schedule`` ('constant', 'cosine', 'step' every ``step_every`` steps, or 'cosine_time' over
    ``time_limit`` seconds) after ``warmup`` linear steps. Validation every ``val_every`` steps on
    ``val_episodes`` fixed episodes (``val_seed``); early stopping after ``patience``
    validations without gain, returning the best state when ``restore_best``. A checkpoint every
    ``checkpoint_every`` steps; ``stop_after`` ends the run after that many steps (as if
    interrupted), ``time_limit`` after that many seconds. ``precision`` 'bfloat16' runs the
    meta-loss and its gradient under autocast (convolutions and matrix products in bfloat16,
    parameters, optimiser and evaluation in float32): faster where the hardware has bfloat16
    units (recent CPUs with AMX, GPUs), at a small cost in gradient precision. ``cuda_graph``
    records the meta-step once as a CUDA graph and replays it (:class:`mlbook.graphs.GraphedMetaStep`;
    CUDA only): the same numbers, without the host's per-kernel launching (Chapter 3).
    ``sam_radius`` rho turns on sharpness-aware minimisation (Foret et al., 2021): each step's
    gradient is taken again at the parameters moved rho along their normalised gradient, the
    worst point within rho to first order, so the step favours minima that stay low around
    them; a second backward pass per step. ``ema_decay`` d keeps an exponential moving average
    of the trained tensors (Polyak averaging), a <- d a + (1 - d) w after every step, starting
    from the initial weights: validation, the returned state and the checkpoint's ``state`` are
    the averaged weights, and the checkpoint's ``live_state`` the raw ones a resume continues from.
    """

    steps: int
    meta_batch_size: int = 16
    outer_lr: float = 1e-3
    seed: int = 0
    optimiser: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    step_every: int | None = None
    grad_clip: float | None = None
    val_every: int | None = None
    val_episodes: int = 100
    val_seed: int = 4321
    patience: int | None = None
    restore_best: bool = True
    checkpoint_every: int | None = None
    stop_after: int | None = None
    time_limit: float | None = None
    precision: str = "float32"
    cuda_graph: bool = False
    sam_radius: float | None = None
    ema_decay: float | None = None

    def __post_init__(self):
        self.steps = check_positive_int("steps", self.steps)
        self.meta_batch_size = check_positive_int("meta_batch_size", self.meta_batch_size)
        self.outer_lr = check_positive("outer_lr", self.outer_lr)
        check_choice("optimiser", self.optimiser, OPTIMISERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.cuda_graph, bool):
            raise ValueError(f"cuda_graph must be True or False, got {self.cuda_graph!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {self.warmup!r}")
        for name in ("step_every", "val_every", "patience", "checkpoint_every", "stop_after"):
            setattr(self, name, _optional(check_positive_int, name, getattr(self, name)))
        self.val_episodes = check_positive_int("val_episodes", self.val_episodes)
        self.grad_clip = _optional(check_positive, "grad_clip", self.grad_clip)
        self.time_limit = _optional(check_positive, "time_limit", self.time_limit)
        self.sam_radius = _optional(check_positive, "sam_radius", self.sam_radius)
        if self.sam_radius is not None and self.cuda_graph:
            raise ValueError("sam_radius needs two backward passes per step; a CUDA graph records one "
                             "(cuda_graph=False)")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float))
                                               and 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be a number strictly between 0 and 1 (or None, no "
                             f"averaging), got {self.ema_decay!r}")
        if self.schedule == "cosine_time" and self.time_limit is None:
            raise ValueError("schedule 'cosine_time' needs time_limit, the wall-clock budget in seconds")

    @classmethod
    def from_settings(cls, base: "TrainConfig | None" = None, **settings) -> "TrainConfig":
        """A config from ``base`` (if any) with ``settings`` replacing its fields; unknown names are refused."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; the settings are {', '.join(known)}")
        values = asdict(base) if base is not None else {}
        values.update({k: v for k, v in settings.items() if v is not None})
        if "steps" not in values:
            raise ValueError("steps must be given: the number of outer steps")
        return cls(**values)


def make_optimiser(name: str, parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The outer optimiser: 'adam' (the book's default), 'adamw' or 'sgd' (Chapter 5).

    With 'sgd' and ``lr`` = beta, Reptile's surrogate gives exactly the paper's update. Adam
    and AdamW run as one fused kernel where this torch has it for the parameters' device
    (CPU from torch 2.4): the same update to rounding, in a third of the time, which on a
    small model is a tenth of a meta-step.
    """
    check_choice("optimiser", name, OPTIMISERS)
    parameters = list(parameters)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay)
    kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    try:
        return kind(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype here
        return kind(parameters, lr=lr, weight_decay=weight_decay)


def _lr_factor(config: TrainConfig, clock: Callable[[], float]) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if config.warmup and step < config.warmup:
            return (step + 1) / config.warmup
        if config.schedule == "cosine_time":
            # A cosine over the wall-clock budget: on a shared machine the number of steps that
            # fit is unknown in advance. Not reproducible step for step, unlike the others.
            return 0.5 * (1 + math.cos(math.pi * min(1.0, clock())))
        if config.schedule == "cosine":
            done = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
            return 0.5 * (1 + math.cos(math.pi * done))
        if config.schedule == "step":
            return 0.5 ** (step // (config.step_every or max(1, config.steps // 3)))
        return 1.0

    return factor


def _named_leaves(state) -> list[tuple[str, torch.Tensor]]:
    leaves, _ = torch.utils._pytree.tree_flatten_with_path(state)
    return [(torch.utils._pytree.keystr(path), leaf) for path, leaf in leaves
            if isinstance(leaf, torch.Tensor)]


def _check_finite(step: int, what: str, named: list[tuple[str, torch.Tensor]]) -> None:
    for name, tensor in named:
        if tensor is not None and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise NonFiniteError(f"step {step}: {what} of state{name} has {bad} non-finite "
                                 f"value(s) (NaN or inf); training stopped")


_stop_signal: list[int] = []


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Within the block, SIGINT or SIGTERM makes a running :func:`meta_train` finish its step,
    write its checkpoint and return with ``stopped='interrupted'`` (Chapter 5).

    A second signal while it finishes acts as usual (the handler is set back after the first).
    """
    previous = {}

    def request_stop(signum, frame):
        _stop_signal.append(signum)
        signal.signal(signum, previous[signum])

    for signum in signals:
        previous[signum] = signal.signal(signum, request_stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_signal.clear()


class Trainer:
    """One meta-training run: its state, optimiser, schedule, generator and history (Chapter 5).

    :func:`meta_train` is the usual way in; the class exists so that each part of a run
    (restore, step, validate, checkpoint) is a small method of its own.
    """

    def __init__(self, learner, family: TaskFamily, config: TrainConfig, state=None, *,
                 val_family: TaskFamily | None = None, checkpoint: str | os.PathLike | None = None,
                 metadata: dict | None = None, log: Callable[[str], None] | None = None,
                 augment: Callable | None = None):
        if config.val_every is not None and val_family is None:
            raise ValueError("val_every needs val_family, the task family to validate on")
        if config.patience is not None and val_family is None:
            raise ValueError("patience (early stopping) needs val_family and val_every")
        if config.checkpoint_every is not None and checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint, the file to write")
        self.learner, self.family, self.config = learner, family, config
        self.val_family, self.metadata, self.log, self.augment = val_family, metadata or {}, log, augment
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.state = learner.init(config.seed, device=family.device) if state is None else state
        self.parameters = learner.parameters(self.state)
        if not self.parameters:
            raise ValueError("the learner's state has no tensor that requires grad: nothing to train")
        self.trainable = [(n, t) for n, t in _named_leaves(self.state) if t.requires_grad]
        self.averaged = None if config.ema_decay is None else [t.detach().clone() for _, t in self.trainable]
        if config.cuda_graph and self.parameters[0].device.type != "cuda":
            raise ValueError(f"cuda_graph needs the run on a CUDA device; it is on {self.parameters[0].device}")
        self._graphs: dict[tuple, GraphedMetaStep] = {}
        if config.precision == "bfloat16" and self.parameters[0].device.type == "cpu" and not cpu_has_bfloat16():
            warnings.warn(BFLOAT16_EMULATED, RuntimeWarning, stacklevel=3)
        self.optimiser = make_optimiser(config.optimiser, self.parameters, config.outer_lr, config.weight_decay)
        self.elapsed_before, self.started = 0.0, time.perf_counter()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser, _lr_factor(config, self._time_used))
        self.generator = make_generator(config.seed, family.device)
        self.world = dist_utils.world()
        if self.world.size > 1:
            dist_utils.broadcast_state(self.state)
        self.step = 0
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        self.validation: list[tuple[int, float, float]] = []
        self.best = {"score": -math.inf, "step": None, "state": None, "bad_validations": 0}
        self.saved_to = self.checkpoint

    def _seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _time_used(self) -> float:
        return self._seconds() / self.config.time_limit

    # -- restore and checkpoint ------------------------------------------------------------
    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint written by :meth:`write_checkpoint`."""
        if self.averaged is not None:
            if "live_state" not in saved:
                raise ValueError("ema_decay is set but the checkpoint holds no moving average "
                                 "(it was written without ema_decay); resume it without ema_decay")
            load_state_into(self.state, saved["state"])
            with torch.no_grad():
                for average, (_, tensor) in zip(self.averaged, self.trainable):
                    average.copy_(tensor)
        load_state_into(self.state, saved.get("live_state", saved["state"]))
        built_with = [group.get("fused") for group in self.optimiser.param_groups]
        self.optimiser.load_state_dict(saved["optimiser"])
        for group, fused in zip(self.optimiser.param_groups, built_with):
            # The kernel this torch and device have, not the saving machine's; a fused step
            # wants its step count as a float tensor beside the parameter.
            group["fused"] = fused
            for param in group["params"] if fused else ():
                slot = self.optimiser.state.get(param, {})
                if "step" in slot:
                    slot["step"] = torch.as_tensor(slot["step"], dtype=torch.float32).to(param.device)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"].to(self.generator.get_state().device))
        if saved.get("torch_rng") is not None:
            torch.set_rng_state(saved["torch_rng"].cpu())
        self.step = int(saved["step"])
        self.elapsed_before = float(saved.get("elapsed", 0.0))
        self.losses, self.accuracies = list(saved.get("losses", [])), list(saved.get("accuracies", []))
        self.validation = [tuple(v) for v in saved.get("validation", [])]
        self.best.update(saved.get("best") or {})

    def write_checkpoint(self, final: bool = False) -> None:
        """Write everything a bit-for-bit resume needs, atomically (only the main process).

        When the final write fails (the disk is full, the folder was removed), the run is saved
        to a fallback file in the temporary folder instead, and ``self.saved_to`` says where.
        """
        if self.checkpoint is None or not self.world.is_main:
            return
        try:
            self._save(self.checkpoint)
        except OSError as error:
            if not final:
                raise
            fallback = Path(tempfile.gettempdir()) / f"{self.checkpoint.stem}.rescued-{os.getpid()}.pt"
            self._save(fallback)
            print(f"could not write {self.checkpoint} ({error}); the finished run is saved in {fallback}",
                  file=sys.stderr)
            self.saved_to = fallback

    @contextlib.contextmanager
    def _with_averaged_weights(self):
        """Within the block the state holds the moving average (no-op without ``ema_decay``)."""
        if self.averaged is None:
            yield
            return
        live = [t.detach().clone() for _, t in self.trainable]
        self._load_averaged()
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, (_, tensor) in zip(live, self.trainable):
                    tensor.copy_(saved)

    def _load_averaged(self) -> None:
        with torch.no_grad():
            for average, (_, tensor) in zip(self.averaged, self.trainable):
                tensor.copy_(average)

    def _save(self, path: Path) -> None:
        live = {} if self.averaged is None else {"live_state": detached(self.state)}
        with self._with_averaged_weights():
            state = detached(self.state)
        save_checkpoint(path, {
            "learner": self.learner.name, "state": state, **live,
            "optimiser": self.optimiser.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state().cpu(), "torch_rng": torch.get_rng_state(),
            "step": self.step, "steps": self.config.steps, "elapsed": self._seconds(),
            "losses": self.losses, "accuracies": self.accuracies, "validation": self.validation,
            "best": self.best, "train_config": asdict(self.config), "metadata": self.metadata,
        })

    # -- one outer step ----------------------------------------------------------------------
    def train_step(self) -> None:
        """Sample a meta-batch, backpropagate the meta-loss, check it, take the outer step."""
        episode = self.family.sample(self.config.meta_batch_size, self.generator)
        if self.augment is not None:
            episode = self.augment(episode, self.generator)
        shard, weight = dist_utils.shard_episode(episode, self.world)
        self.optimiser.zero_grad(set_to_none=True)
        with precision_context(self.config.precision, self.parameters[0].device.type):
            if self.config.cuda_graph:
                loss, accuracy = self._graph_for(shard).step(shard, weight)
            else:
                loss, accuracy = self.learner.meta_backward(self.state, shard, weight)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"step {self.step}: the meta-loss is {loss.item()}; training stopped")
        if self.world.size > 1:
            dist_utils.all_reduce_gradients(self.parameters)
            loss = dist_utils.all_reduce_mean(loss.detach() * weight) * self.world.size
            if accuracy is not None:
                accuracy = dist_utils.all_reduce_mean(accuracy * weight) * self.world.size
        _check_finite(self.step, "the gradient", [(n, t.grad) for n, t in self.trainable])
        if self.config.sam_radius is not None:
            self._sharpness_aware_gradient(shard, weight)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
        self.optimiser.step()
        self.scheduler.step()
        _check_finite(self.step, "the updated value", self.trainable)
        if self.averaged is not None:
            with torch.no_grad():
                for average, (_, tensor) in zip(self.averaged, self.trainable):
                    average.lerp_(tensor.detach(), 1 - self.config.ema_decay)
        self.losses.append(loss.item())
        self.accuracies.append(float("nan") if accuracy is None else float(accuracy))
        self.step += 1

    def _sharpness_aware_gradient(self, shard, weight) -> None:
        """Replace the gradient by the one at the parameters moved ``sam_radius`` along it."""
        grads = [p.grad for p in self.parameters]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
        moves = [None if g is None else g * (self.config.sam_radius / (norm + 1e-12)) for g in grads]
        with torch.no_grad():
            for p, move in zip(self.parameters, moves):
                if move is not None:
                    p.add_(move)
        self.optimiser.zero_grad(set_to_none=True)
        with precision_context(self.config.precision, self.parameters[0].device.type):
            self.learner.meta_backward(self.state, shard, weight)
        if self.world.size > 1:
            dist_utils.all_reduce_gradients(self.parameters)
        with torch.no_grad():
            for p, move in zip(self.parameters, moves):
                if move is not None:
                    p.sub_(move)
        _check_finite(self.step, "the sharpness-aware gradient", [(n, t.grad) for n, t in self.trainable])

    def _graph_for(self, episode) -> GraphedMetaStep:
        # One recorded step per episode shape (a shard's may differ in the last process).
        key = tuple((t.shape, t.dtype) for t in (episode.support_x, episode.support_y,
                                                  episode.query_x, episode.query_y))
        if key not in self._graphs:
            self._graphs[key] = GraphedMetaStep(self.learner, self.state, episode)
        return self._graphs[key]

    def validate(self) -> bool:
        """Record one validation; True when early stopping says stop."""
        config, best = self.config, self.best
        with self._with_averaged_weights():
            result = evaluate(self.learner, self.state, self.val_family, episodes=config.val_episodes,
                              seed=config.val_seed)
            keeps_best = config.restore_best and config.patience is not None
            best_state = detached(self.state) if keeps_best else None
        score = result.mean if result.metric == "accuracy" else -result.mean
        self.validation.append((self.step, result.mean, result.ci95))
        if self.log:
            self.log(f"step {self.step}: validation {result.metric} {result}")
        if score > best["score"]:
            best.update(score=score, step=self.step, bad_validations=0)
            if config.restore_best and config.patience is not None:
                best["state"] = best_state
        else:
            best["bad_validations"] += 1
        return config.patience is not None and best["bad_validations"] >= config.patience

    def _why_stop(self) -> str | None:
        config, done = self.config, self.step
        if _stop_signal:
            return "interrupted"
        if config.val_every is not None and done % config.val_every == 0 and done < config.steps:
            if self.validate():
                return "early_stopping"
        if config.stop_after is not None and done >= config.stop_after:
            return "stop_after"
        if config.time_limit is not None and self._seconds() > config.time_limit:
            return "time_limit"
        return None

    def _report(self, bar) -> None:
        done, config = self.step, self.config
        if self.world.is_main and hasattr(bar, "set_postfix") and ((done - 1) % 10 == 0 or done == config.steps):
            postfix = {"loss": f"{self.losses[-1]:.3f}"}
            if not math.isnan(self.accuracies[-1]):
                postfix["acc"] = f"{self.accuracies[-1]:.3f}"
            if self.validation:
                postfix["val"] = f"{self.validation[-1][1]:.3f}"
            bar.set_postfix(postfix)
        if self.log and (done % max(1, (config.val_every or 100)) == 0 or done == config.steps):
            accuracy = "" if math.isnan(self.accuracies[-1]) else f" accuracy {self.accuracies[-1]:.3f}"
            self.log(f"step {done}/{config.steps}: loss {self.losses[-1]:.4f}{accuracy} "
                     f"({time.perf_counter() - self.started:.0f} s)")

    # -- the run -----------------------------------------------------------------------------
    def run(self, desc: str | None = None) -> TrainResult:
        """Train from the current step to ``config.steps`` (or until a stop condition)."""
        config, stopped = self.config, "steps"
        self.started = time.perf_counter()
        steps = range(self.step, config.steps)
        bar = progress(steps, total=len(steps), desc=desc or f"meta-training {self.learner.name}") \
            if self.world.is_main else steps
        for _ in bar:
            self.train_step()
            reason = self._why_stop()
            if config.checkpoint_every is not None and (self.step % config.checkpoint_every == 0 or reason):
                self.write_checkpoint()
            self._report(bar)
            if reason:
                stopped = reason
                break
        else:
            if self.val_family is not None and (config.val_every is not None or config.patience is not None):
                self.validate()
        self.write_checkpoint(final=True)
        if hasattr(bar, "close"):
            bar.close()
        if self.averaged is not None:
            self._load_averaged()
        if self.best["state"] is not None and config.restore_best and stopped == "early_stopping":
            load_state_into(self.state, self.best["state"])
        return TrainResult(self.state, self.losses, self.accuracies, self.validation, self.best["step"],
                           stopped, self.step, time.perf_counter() - self.started,
                           None if self.saved_to is None else str(self.saved_to),
                           _stop_signal[0] if stopped == "interrupted" else None)


def meta_train(learner, family: TaskFamily, steps: int | None = None, meta_batch_size: int | None = None,
               outer_lr: float | None = None, seed: int | None = None, state=None, desc: str | None = None,
               *, config: TrainConfig | None = None, val_family: TaskFamily | None = None,
               checkpoint: str | os.PathLike | None = None, resume: bool = False,
               metadata: dict | None = None, log: Callable[[str], None] | None = None,
               augment: Callable | None = None, **settings) -> TrainResult:
    """Meta-train ``learner`` on ``family``; returns a :class:`TrainResult` (Chapter 5).

    The run's settings are a :class:`TrainConfig`: pass ``config``, or its fields as keywords
    (``steps``, ``meta_batch_size``, ``outer_lr``, ``seed``, ``schedule``, ``val_every``,
    ``patience``, ``time_limit``, ...), which override ``config``'s. Starts from ``state`` when
    given, else from ``learner.init(seed)``. ``val_family`` is validated on; ``checkpoint`` is
    the file written every ``checkpoint_every`` steps and at the end, from which ``resume``
    continues (bit-for-bit on CPU) when it exists. ``augment(episode, generator)`` transforms each
    training meta-batch; ``metadata`` (plain values) is stored in the checkpoint.
    """
    config = TrainConfig.from_settings(config, steps=steps, meta_batch_size=meta_batch_size,
                                       outer_lr=outer_lr, seed=seed, **settings)
    if resume and checkpoint is None:
        raise ValueError("resume needs checkpoint, the file to resume from")
    trainer = Trainer(learner, family, config, state, val_family=val_family, checkpoint=checkpoint,
                      metadata=metadata, log=log, augment=augment)
    if checkpoint is not None:
        remove_stale_temporaries(checkpoint)
    if resume and Path(checkpoint).exists():
        trainer.restore(load_checkpoint(checkpoint, map_location=family.device))
    return trainer.run(desc)


def evaluate(learner, state, family: TaskFamily, episodes: int = 600, batch_size: int = 50,
             seed: int = 1234, metric: str | None = None, views=None) -> EvalResult:
    """Mean query metric over ``episodes`` test tasks with a 95% confidence interval (Chapter 5).

    ``metric`` defaults to 'accuracy' for classifiers and 'loss' otherwise. The episodes come
    from their own generator (``seed``), so every learner is scored on the same tasks.
    ``views`` is an optional test-time augmentation (see :meth:`Learner.evaluate_batch`).
    """
    episodes = check_positive_int("episodes", episodes)
    batch_size = check_positive_int("batch_size", batch_size)
    generator = make_generator(seed, family.device)
    values = []
    remaining = episodes
    key = metric
    while remaining > 0:
        batch = family.sample(min(batch_size, remaining), generator)
        out = learner.evaluate_batch(state, batch, views=views)
        key = metric or ("accuracy" if "accuracy" in out else "loss")
        if key not in out:
            raise ValueError(f"metric must be one of {sorted(out)}, got {metric!r}")
        values.append(out[key].float().cpu())
        remaining -= batch.batch_size
    values = torch.cat(values)
    mean, ci95 = confidence_interval(values)
    return EvalResult(key, mean, ci95, values)
