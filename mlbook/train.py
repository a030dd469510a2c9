"""The one meta-training loop and evaluator shared by every learner (Chapter 5).

``meta_train`` samples meta-batches from a task family, computes the learner's meta-loss,
and takes an outer optimiser step. Around that core it offers what a long run needs:
periodic validation with a 95% confidence interval, early stopping, an optional learning-rate
schedule, a guard that stops on the first NaN or infinity and says where it appeared,
atomic checkpoints (model, optimiser, schedule, episode generator, step) and a resume that
continues bit-for-bit on CPU. With ``torch.distributed`` initialised (``torchrun``), each
process computes its share of the meta-batch and the gradients are all-reduced
(:mod:`mlbook.distributed`). ``evaluate`` scores a learner on fresh test episodes and reports
a 95% confidence interval.
"""
from __future__ import annotations

import copy
import io
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import distributed as dist_utils
from .tasks import TaskFamily
from .utils import check_choice, check_positive, check_positive_int, make_generator, progress

__all__ = [
    "meta_train", "evaluate", "EvalResult", "TrainResult", "confidence_interval",
    "save_checkpoint", "load_checkpoint", "CheckpointError", "NonFiniteError", "SCHEDULES",
]

SCHEDULES = ("constant", "cosine", "step", "cosine_time")
CHECKPOINT_FORMAT = "mlbook-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not an mlbook checkpoint (Chapter 5)."""


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
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


@dataclass
class TrainResult:
    """What :func:`meta_train` returns: the learned state and its history (Chapter 5).

    ``losses`` and ``accuracies`` have one entry per step since step 0 (accuracy is NaN for
    learners that do not report it); ``validation`` holds ``(step, mean, ci95)`` rows;
    ``best_step`` is the step of the best validation score; ``stopped`` says why training
    ended ('steps', 'early_stopping', 'time_limit' or 'stop_after').
    """

    state: dict
    losses: list[float]
    accuracies: list[float] = field(default_factory=list)
    validation: list[tuple[int, float, float]] = field(default_factory=list)
    best_step: int | None = None
    stopped: str = "steps"
    step: int = 0
    seconds: float = 0.0


def confidence_interval(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width 1.96 * std / sqrt(n) of per-episode values (Chapter 5)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("values must hold at least one number")
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, float("nan")
    return mean, 1.96 * values.std(unbiased=True).item() / math.sqrt(values.numel())


# -- checkpoints --------------------------------------------------------------------------
def _detached(tree):
    return torch.utils._pytree.tree_map(
        lambda t: t.detach().cpu().clone() if isinstance(t, torch.Tensor) else t, tree)


def save_checkpoint(path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file, then ``os.replace`` (Chapter 5).

    A crash while writing leaves the previous checkpoint intact, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is not one (Chapter 5)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a torch file "
                              f"({type(error).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an mlbook checkpoint")
    for key in ("state", "step"):
        if key not in data:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks its {key!r} entry")
    return data


def _load_state_into(state, saved):
    """Copy saved tensors into the live state in place, so the optimiser keeps its references."""
    live = torch.utils._pytree.tree_leaves(state)
    stored = torch.utils._pytree.tree_leaves(saved)
    if len(live) != len(stored):
        raise CheckpointError("the checkpoint's state does not fit this learner "
                              f"({len(stored)} tensors saved, {len(live)} expected)")
    with torch.no_grad():
        for a, b in zip(live, stored):
            if isinstance(a, torch.Tensor):
                if a.shape != b.shape:
                    raise CheckpointError(f"the checkpoint's state does not fit this learner: a tensor of "
                                          f"shape {tuple(b.shape)} where {tuple(a.shape)} is expected")
                a.copy_(b)


# -- the loop -----------------------------------------------------------------------------
def _make_schedule(optimiser, schedule: str, steps: int, warmup: int, step_every: int | None,
                   clock: Callable[[], float] | None = None):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine_time":
            # A cosine over the wall-clock budget: on a shared machine the number of steps that
            # fit is unknown in advance. Not reproducible step for step, unlike the others.
            return 0.5 * (1 + math.cos(math.pi * min(1.0, clock())))
        if schedule == "cosine":
            progress_ = min(1.0, (step - warmup) / max(1, steps - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress_))
        if schedule == "step":
            return 0.5 ** (step // (step_every or max(1, steps // 3)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


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


def _accepts_device(learner) -> bool:
    import inspect

    return "device" in inspect.signature(learner.init).parameters


def _loss_and_accuracy(learner, state, episode):
    if hasattr(learner, "meta_loss_and_accuracy"):
        return learner.meta_loss_and_accuracy(state, episode)
    return learner.meta_loss(state, episode), None


def meta_train(learner, family: TaskFamily, steps: int, meta_batch_size: int = 16,
               outer_lr: float = 1e-3, seed: int = 0, state=None, desc: str | None = None, *,
               val_family: TaskFamily | None = None, val_every: int | None = None,
               val_episodes: int = 100, val_seed: int = 4321, patience: int | None = None,
               restore_best: bool = True, schedule: str = "constant", warmup: int = 0,
               step_every: int | None = None, grad_clip: float | None = None,
               weight_decay: float = 0.0, checkpoint: str | os.PathLike | None = None,
               checkpoint_every: int | None = None, resume: bool = False,
               metadata: dict | None = None, stop_after: int | None = None,
               time_limit: float | None = None, log: Callable[[str], None] | None = None,
               augment: Callable | None = None) -> TrainResult:
    """Meta-train ``learner`` on ``family`` for ``steps`` outer steps with Adam (Chapter 5).

    Each step draws ``meta_batch_size`` tasks with a generator seeded by ``seed``, computes the
    learner's meta-loss and takes one Adam step of size ``outer_lr`` (shaped by ``schedule``:
    'constant', 'cosine' or 'step', after ``warmup`` linear steps; 'cosine_time' anneals over
    the ``time_limit`` instead of the steps, for a wall-clock budget on a shared machine). Starts from ``state`` when
    given, else from ``learner.init(seed)``.

    Validation: every ``val_every`` steps (and at the end) the learner is evaluated on
    ``val_episodes`` fixed episodes of ``val_family`` (mean accuracy, or minus the loss for
    regression, with a 95% CI). With ``patience``, training stops after that many validations
    without improvement, and ``restore_best`` returns the best state seen.

    Checkpoints: with ``checkpoint`` (a path), the state, optimiser, schedule, generator and
    step are written atomically every ``checkpoint_every`` steps and at the end; ``resume``
    continues from that file when it exists, bit-for-bit on CPU. ``stop_after`` ends the run
    after that many steps (as if interrupted); ``time_limit`` after that many seconds.
    ``augment(episode, generator)`` transforms each training meta-batch (e.g. affine jitter).
    """
    steps = check_positive_int("steps", steps)
    meta_batch_size = check_positive_int("meta_batch_size", meta_batch_size)
    outer_lr = check_positive("outer_lr", outer_lr)
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "cosine_time" and time_limit is None:
        raise ValueError("schedule 'cosine_time' needs time_limit, the wall-clock budget in seconds")
    if val_every is not None:
        val_every = check_positive_int("val_every", val_every)
        if val_family is None:
            raise ValueError("val_every needs val_family, the task family to validate on")
    val_episodes = check_positive_int("val_episodes", val_episodes)
    if patience is not None:
        patience = check_positive_int("patience", patience)
        if val_family is None:
            raise ValueError("patience (early stopping) needs val_family and val_every")
    if checkpoint_every is not None:
        checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
        if checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint, the file to write")
    if resume and checkpoint is None:
        raise ValueError("resume needs checkpoint, the file to resume from")
    if grad_clip is not None:
        grad_clip = check_positive("grad_clip", grad_clip)
    if warmup < 0 or isinstance(warmup, bool) or not isinstance(warmup, int):
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")

    if state is None:
        state = learner.init(seed, device=family.device) if _accepts_device(learner) else learner.init(seed)
    parameters = learner.parameters(state)
    if not parameters:
        raise ValueError("the learner's state has no tensor that requires grad: nothing to train")
    optimiser = torch.optim.Adam(parameters, lr=outer_lr, weight_decay=weight_decay)
    elapsed_before, started = 0.0, time.perf_counter()
    scheduler = _make_schedule(optimiser, schedule, steps, warmup, step_every,
                               clock=lambda: (elapsed_before + time.perf_counter() - started) / time_limit)
    generator = make_generator(seed, family.device)
    world = dist_utils.world()
    if world.size > 1:
        dist_utils.broadcast_state(state)

    losses: list[float] = []
    accuracies: list[float] = []
    validation: list[tuple[int, float, float]] = []
    best_score, best_step, best_state, bad_validations = -math.inf, None, None, 0
    start_step = 0
    if resume and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint, map_location=family.device)
        _load_state_into(state, saved["state"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"].to(generator.get_state().device))
        if saved.get("torch_rng") is not None:
            torch.set_rng_state(saved["torch_rng"].cpu())
        start_step = int(saved["step"])
        elapsed_before = float(saved.get("elapsed", 0.0))
        losses, accuracies = list(saved.get("losses", [])), list(saved.get("accuracies", []))
        validation = [tuple(v) for v in saved.get("validation", [])]
        best = saved.get("best") or {}
        best_score = best.get("score", -math.inf)
        best_step = best.get("step")
        best_state = best.get("state")
        bad_validations = best.get("bad_validations", 0)

    def write_checkpoint(step: int) -> None:
        if checkpoint is None or not world.is_main:
            return
        save_checkpoint(checkpoint, {
            "learner": getattr(learner, "name", type(learner).__name__),
            "state": _detached(state), "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "generator": generator.get_state().cpu(),
            "torch_rng": torch.get_rng_state(), "step": step, "steps": steps,
            "elapsed": elapsed_before + time.perf_counter() - started,
            "losses": losses, "accuracies": accuracies, "validation": validation,
            "best": {"score": best_score, "step": best_step, "state": best_state,
                     "bad_validations": bad_validations},
            "metadata": metadata or {},
        })

    def validate(step: int) -> bool:
        """Record one validation; True when early stopping says stop."""
        nonlocal best_score, best_step, best_state, bad_validations
        result = evaluate(learner, state, val_family, episodes=val_episodes, seed=val_seed)
        score = result.mean if result.metric == "accuracy" else -result.mean
        validation.append((step, result.mean, result.ci95))
        if log:
            log(f"step {step}: validation {result.metric} {result}")
        if score > best_score:
            best_score, best_step, bad_validations = score, step, 0
            if restore_best and patience is not None:
                best_state = _detached(state)
        else:
            bad_validations += 1
        return patience is not None and bad_validations >= patience

    started = time.perf_counter()
    stopped = "steps"
    step = start_step
    if world.is_main:
        bar = progress(range(start_step, steps), total=steps - start_step,
                       desc=desc or f"meta-training {getattr(learner, 'name', 'learner')}")
    else:
        bar = range(start_step, steps)
    named = _named_leaves(state)
    trainable = [(n, t) for n, t in named if t.requires_grad]
    for step in bar:
        episode = family.sample(meta_batch_size, generator)
        if augment is not None:
            episode = augment(episode, generator)
        shard, weight = dist_utils.shard_episode(episode, world)
        optimiser.zero_grad(set_to_none=True)
        if hasattr(learner, "meta_backward"):
            # Lets a learner free each task's graph as soon as it is backpropagated.
            loss, accuracy = learner.meta_backward(state, shard, weight)
        else:
            loss, accuracy = _loss_and_accuracy(learner, state, shard)
            (loss * weight).backward()
        if not torch.isfinite(loss):
            raise NonFiniteError(f"step {step}: the meta-loss is {loss.item()}; training stopped")
        if world.size > 1:
            dist_utils.all_reduce_gradients(parameters)
            loss = dist_utils.all_reduce_mean(loss.detach() * weight) * world.size
            if accuracy is not None:
                accuracy = dist_utils.all_reduce_mean(accuracy * weight) * world.size
        _check_finite(step, "the gradient", [(n, t.grad) for n, t in trainable])
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimiser.step()
        scheduler.step()
        _check_finite(step, "the updated value", trainable)
        losses.append(loss.item())
        accuracies.append(float("nan") if accuracy is None else float(accuracy))
        done = step + 1
        if world.is_main and hasattr(bar, "set_postfix") and (step % 10 == 0 or done == steps):
            postfix = {"loss": f"{losses[-1]:.3f}"}
            if accuracy is not None:
                postfix["acc"] = f"{accuracies[-1]:.3f}"
            if validation:
                postfix["val"] = f"{validation[-1][1]:.3f}"
            bar.set_postfix(postfix)
        stop_now = False
        if val_every is not None and done % val_every == 0 and done < steps:
            stop_now = validate(done)
            if stop_now:
                stopped = "early_stopping"
        if stop_after is not None and done >= stop_after and not stop_now:
            stopped, stop_now = "stop_after", True
        if (time_limit is not None and elapsed_before + time.perf_counter() - started > time_limit
                and not stop_now):
            stopped, stop_now = "time_limit", True
        if checkpoint_every is not None and (done % checkpoint_every == 0 or stop_now):
            write_checkpoint(done)
        if log and (done % max(1, (val_every or 100)) == 0 or done == steps):
            acc = "" if accuracy is None else f" accuracy {accuracies[-1]:.3f}"
            log(f"step {done}/{steps}: loss {losses[-1]:.4f}{acc} ({time.perf_counter() - started:.0f} s)")
        if stop_now:
            step = done
            break
    else:
        step = steps if steps > start_step else start_step
        if val_family is not None and (val_every is not None or patience is not None):
            validate(step)
    write_checkpoint(step)
    if hasattr(bar, "close"):
        bar.close()
    if best_state is not None and restore_best and stopped == "early_stopping":
        _load_state_into(state, best_state)
    return TrainResult(state, losses, accuracies, validation, best_step, stopped, step,
                       time.perf_counter() - started)


def evaluate(learner, state, family: TaskFamily, episodes: int = 600, batch_size: int = 50,
             seed: int = 1234, metric: str | None = None) -> EvalResult:
    """Mean query metric over ``episodes`` test tasks with a 95% confidence interval (Chapter 5).

    ``metric`` defaults to 'accuracy' for classifiers and 'loss' otherwise. The episodes come
    from their own generator (``seed``), so every learner is scored on the same tasks.
    """
    episodes = check_positive_int("episodes", episodes)
    batch_size = check_positive_int("batch_size", batch_size)
    generator = make_generator(seed, family.device)
    values = []
    remaining = episodes
    key = metric
    while remaining > 0:
        batch = family.sample(min(batch_size, remaining), generator)
        out = learner.evaluate_batch(state, batch)
        key = metric or ("accuracy" if "accuracy" in out else "loss")
        if key not in out:
            raise ValueError(f"metric must be one of {sorted(out)}, got {metric!r}")
        values.append(out[key].float().cpu())
        remaining -= batch.batch_size
    values = torch.cat(values)
    mean, ci95 = confidence_interval(values)
    return EvalResult(key, mean, ci95, values)
