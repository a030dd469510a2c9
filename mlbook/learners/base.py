"""The one learner interface every algorithm in the book implements (Chapters 3-6).

What a learner must define (one task at a time, no batch axis):

    init(seed, *, dtype=None, device=None) -> state        (phi: what meta-learning learns)
    adapt(state, support_x, support_y)     -> task_state   (theta_i: after seeing D_i^train)
    predict(task_state, x)                 -> output       (logits, or a regression output)

From these the base class derives one task's metrics, ``task_metrics(state, support_x,
support_y, query_x, query_y) -> {"loss", "accuracy", ...}``, and everything the trainer and the
evaluator call: :meth:`metrics`, :meth:`meta_loss`, :meth:`meta_backward`,
:meth:`evaluate_batch`, :meth:`parameters`. Two ways to change them, both optional:

* override ``task_metrics`` to add an 'objective' when training minimises something other than
  the query loss (Reptile's and iMAML's surrogates carry their own meta-gradient);
* define the batched hook ``episode_metrics(state, episode) -> {"loss": [B], ...}`` that scores
  every task of a meta-batch in one call (metric and model-based learners embed a whole
  meta-batch at once).

A learner also declares what it is, so that nobody keeps lists of learner names: its ``name``
(the key of the registry), its ``kind`` in Chapter 4's taxonomy, the ``tasks`` it supports,
which :class:`LearnerConfig` fields it reads (``options``), and how it is built from a config
(:meth:`Learner.from_config`). Defining a subclass with a ``name`` registers it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..metrics import query_metrics
from ..models import init_params
from ..taskmap import auto_chunk_size, choose_strategy, map_tasks, run_tasks
from ..tasks import Episode
from ..utils import check_choice, check_positive_int

__all__ = ["Learner", "LearnerConfig", "LOSSES", "KINDS", "TASKS", "task_loss", "task_accuracy",
           "check_labelled_support", "registered_learners"]

LOSSES = ("mse", "cross_entropy")
KINDS = ("optimisation", "metric", "model-based", "black-box", "Bayesian", "hybrid", "learned optimiser",
         "hand-designed")
TASKS = ("classification", "regression")

_REGISTRY: dict[str, type] = {}


def registered_learners() -> dict[str, type]:
    """``{name: class}`` of every learner class defined so far (see :func:`mlbook.learners.registry`)."""
    return dict(_REGISTRY)


def task_loss(kind: str, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-task loss: mean squared error or cross-entropy (Chapter 1)."""
    if kind == "mse":
        return F.mse_loss(output, y)
    return F.cross_entropy(output, y)


def task_accuracy(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions of one task's logits (Chapter 5)."""
    return (output.argmax(-1) == y).float().mean()


def check_labelled_support(support_x: torch.Tensor, support_y: torch.Tensor) -> None:
    """Raise a clear error for an empty support set or one label too many or too few (Chapter 5)."""
    if support_x.shape[0] == 0:
        raise ValueError("the support set has no examples: a learner needs at least one")
    if support_y.dim() != 1 or support_y.shape[0] != support_x.shape[0]:
        raise ValueError(f"support_y must hold one label per support example ({support_x.shape[0]}); "
                         f"got shape {tuple(support_y.shape)}")


@dataclass
class LearnerConfig:
    """How to build a learner for some data, in plain values (stored in every checkpoint; Chapter 5).

    ``task`` is 'classification' (images ``[1, image_size, image_size]``, ``ways`` classes) or
    'regression' (the sinusoid's 1-D inputs). The other fields are options a learner may read;
    each learner lists the ones it uses in ``options``. ``None`` means the learner's default.
    """

    task: str = "classification"
    ways: int = 5
    image_size: int = 28
    channels: int = 64
    norm: str = "group"
    pools: int = 4
    space_to_depth: int = 1
    residual_blocks: int = 0
    feature_blocks: int = 1
    inner_lr: float | None = None
    inner_steps: int = 1
    first_order: bool = False
    distance: str = "euclidean"
    local_window: int | None = None
    local_weights: str = "equal"
    fixed_scale: float | None = None
    fce: bool = False
    lam: float = 1.0
    cg_steps: int = 5
    activation: str = "relu"

    def __post_init__(self):
        check_choice("task", self.task, TASKS)

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @classmethod
    def from_dict(cls, values: dict) -> "LearnerConfig":
        """The config a plain dict describes; unknown keys are ignored, so a run's full config fits."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


class Learner:
    """Base class of every meta-learner (Chapter 4's taxonomy); see the module docstring.

    ``loss`` is 'mse' (regression) or 'cross_entropy' (classification). ``strategy`` and
    ``chunk_size`` choose how tasks of a meta-batch are mapped (see :func:`mlbook.taskmap.map_tasks`).
    Under vmap, :meth:`meta_backward` backpropagates each chunk of ``chunk_size`` tasks before
    the next, so memory holds one chunk's graph; ``chunk_size='auto'`` picks the chunk on a GPU
    from the free memory (:func:`mlbook.taskmap.auto_chunk_size`).
    """

    name: ClassVar[str] = "learner"
    kind: ClassVar[str] = "optimisation"
    tasks: ClassVar[frozenset] = frozenset(TASKS)
    options: ClassVar[tuple[str, ...]] = ()
    # One trained state serves episodes with any number of classes (metric learners).
    any_ways: ClassVar[bool] = False
    # Adaptation takes gradient steps, so evaluation must keep autograd on.
    adapts_with_gradients: ClassVar[bool] = False
    # predict_distribution gives a predictive mean and variance.
    probabilistic: bool = False
    episode_metrics = None
    # Set while a CUDA graph records a meta-step (mlbook.graphs): the episode was checked just
    # before, and the checks' host reads cannot be recorded.
    _episode_checked = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        check_choice(f"{cls.__name__}.kind", cls.kind, KINDS)
        for task in cls.tasks:
            check_choice(f"{cls.__name__}.tasks", task, TASKS)
        config_fields = {f.name for f in fields(LearnerConfig)}
        for option in cls.options:
            check_choice(f"{cls.__name__}.options", option, config_fields)
        if cls.name in _REGISTRY and _REGISTRY[cls.name].__qualname__ != cls.__qualname__:
            raise ValueError(f"two learners are named {cls.name!r}: {_REGISTRY[cls.name].__qualname__} "
                             f"and {cls.__qualname__}")
        _REGISTRY[cls.name] = cls

    def __init__(self, loss: str = "cross_entropy", strategy: str = "auto",
                 chunk_size: int | None = None):
        self.loss = check_choice("loss", loss, LOSSES)
        self.strategy = strategy
        if chunk_size is not None and chunk_size != "auto":
            check_positive_int("chunk_size", chunk_size)
        self.chunk_size = chunk_size
        # chunk_size='auto': the chunk found for each (device, dtype, task shapes).
        self._auto_chunks: dict[tuple, int | None] = {}

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "Learner":
        """The learner ``config`` describes, with this algorithm's book defaults (Chapter 5)."""
        raise NotImplementedError(f"{cls.__name__} does not define from_config")

    # -- the interface -------------------------------------------------------------------
    def init(self, seed: int, *, dtype=None, device=None) -> dict[str, Any]:
        """phi, seeded: by default ``{"params": ...}``, fresh weights of the learner's ``model``."""
        model = getattr(self, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise NotImplementedError(f"{type(self).__name__} must define init, or keep its network in self.model")
        return {"params": init_params(model, seed, dtype=dtype, device=device)}

    def adapt(self, state, support_x: torch.Tensor, support_y: torch.Tensor):
        raise NotImplementedError

    def predict(self, task_state, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_distribution(self, task_state, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of the predictive distribution at ``x``; only for probabilistic learners (Chapter 6)."""
        raise ValueError(f"{type(self).__name__} is not probabilistic: it predicts no variance "
                         f"(predict_distribution needs a learner with probabilistic=True)")

    # -- derived from the interface ------------------------------------------------------
    def task_metrics(self, state, support_x, support_y, query_x, query_y) -> dict[str, torch.Tensor]:
        """One task's query 'loss' (and 'accuracy'): adapt on the support set, score the query set."""
        return self.score(self.adapt(state, support_x, support_y), query_x, query_y)

    def score(self, task_state, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """'loss' (and 'accuracy' for classification) of an adapted task state on ``(x, y)``."""
        output = self.predict(task_state, x)
        metrics = {"loss": task_loss(self.loss, output, y)}
        if self.loss == "cross_entropy":
            metrics["accuracy"] = task_accuracy(output, y)
        return metrics

    def validate_episode(self, state, episode: Episode) -> None:
        """Raise a clear error when ``episode`` cannot be scored by this learner in ``state`` (Chapter 5)."""
        if not isinstance(episode, Episode):
            raise ValueError(f"episode must be an mlbook.tasks.Episode, got {type(episode).__name__}")
        if self._episode_checked:
            return
        task = "classification" if episode.support_y.dtype == torch.int64 else "regression"
        if task not in self.tasks:
            raise ValueError(f"{self.name} does {', '.join(sorted(self.tasks))}, but the episode is {task}")
        if (self.loss == "cross_entropy") != (task == "classification"):
            raise ValueError(f"this {self.name} was built for {'classification' if self.loss == 'cross_entropy' else 'regression'}"
                             f" (loss {self.loss!r}), but the episode is {task}")
        ways = self.output_classes()
        if task == "classification" and ways and max(episode.support_y.max(), episode.query_y.max()) >= ways:
            raise ValueError(f"episode labels must be 0..{ways - 1}: this {self.name} predicts {ways} classes, "
                             f"but the episode has label {int(max(episode.support_y.max(), episode.query_y.max()))}")
        leaves = self.parameters(state)
        if leaves and leaves[0].dtype != episode.support_x.dtype:
            raise ValueError(f"episode inputs are {episode.support_x.dtype} but the learner's state is "
                             f"{leaves[0].dtype}: convert one of them (e.g. init(seed, dtype=...))")

    def output_classes(self) -> int | None:
        """How many classes this learner's outputs cover, when that is fixed (its ``ways``, or the
        ``head`` of its model); ``None`` when any number of classes is scored (Chapter 5)."""
        if self.any_ways:
            return None
        ways = getattr(self, "ways", None)
        head = getattr(getattr(self, "model", None), "head", None)
        if ways is None and isinstance(head, torch.nn.Linear):
            ways = head.out_features
        return ways

    def metrics(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task metrics ``[B]`` of a meta-batch: the batched hook, or ``task_metrics`` mapped over tasks."""
        self.validate_episode(state, episode)
        if self.episode_metrics is not None:
            return self.episode_metrics(state, episode)
        return map_tasks(lambda *task: self.task_metrics(state, *task), episode.support_x, episode.support_y,
                         episode.query_x, episode.query_y, strategy=self.strategy,
                         chunk_size=self.resolved_chunk_size(state, episode))

    def resolved_chunk_size(self, state, episode: Episode) -> int | None:
        """How many tasks run under vmap at once: ``chunk_size``, with 'auto' resolved (Chapter 3).

        'auto' is ``None`` (all at once) on a CPU, and on a GPU the chunk whose measured memory
        fits in half the free memory (:func:`mlbook.taskmap.auto_chunk_size`), found once for
        each device, dtype and task shape.
        """
        if self.chunk_size != "auto":
            return self.chunk_size
        x = episode.support_x
        if x.device.type != "cuda" or self.execution_strategy(x) != "vmap":
            return None
        key = (x.device, x.dtype, tuple(x.shape[1:]), tuple(episode.query_x.shape[1:]), episode.batch_size)
        if key not in self._auto_chunks:
            self._auto_chunks[key] = auto_chunk_size(
                lambda part: self._chunk_backward(state, part, 1.0, keep_gradient=False), episode)
        return self._auto_chunks[key]

    def meta_loss(self, state, episode: Episode) -> torch.Tensor:
        """The meta-objective: the mean over tasks of the per-task objective (Chapter 1)."""
        metrics = self.metrics(state, episode)
        return metrics.get("objective", metrics["loss"]).mean()

    def meta_backward(self, state, episode: Episode, scale: float = 1.0):
        """Backpropagate ``scale`` x the meta-loss into ``state``; return (loss, accuracy or None).

        The trainer's step (Chapter 5). When tasks run one by one (the 'loop' and 'threads'
        strategies, chosen for convolutions on CPU) and the learner has no batched hook, each
        task is backpropagated as soon as it is computed, so only one task's graph per thread is
        alive at a time. Per-task gradients are added up in task order, so with 'threads' the
        result does not depend on which thread finished first.
        """
        strategy = self.execution_strategy(episode.support_x)
        if self.episode_metrics is None and strategy == "vmap":
            chunk = self.resolved_chunk_size(state, episode)
            if chunk is not None and chunk < episode.batch_size:
                return self._chunked_backward(state, episode, scale, chunk)
        if self.episode_metrics is not None or strategy not in ("loop", "threads"):
            metrics = self.metrics(state, episode)
            loss = metrics.get("objective", metrics["loss"]).mean()
            (loss * scale).backward()
            accuracy = metrics.get("accuracy")
            return loss.detach(), None if accuracy is None else accuracy.mean().detach()
        return self._per_task_backward(state, episode, scale, strategy)

    def execution_strategy(self, x: torch.Tensor) -> str:
        """The strategy a meta-batch whose inputs are ``x`` runs with; 'auto' resolved (Chapter 3)."""
        return self.strategy if self.strategy != "auto" else choose_strategy(x)

    def _chunk_backward(self, state, part: tuple, scale: float, keep_gradient: bool = True):
        # One chunk of tasks (support_x, support_y, query_x, query_y), vmapped and backpropagated
        # with weight ``scale`` per task; its graph is freed before the next chunk is built.
        # Without keep_gradient (measuring memory) the same backward runs and nothing is kept.
        metrics = map_tasks(lambda *task: self.task_metrics(state, *task), *part, strategy="vmap")
        objective = metrics.get("objective", metrics["loss"])
        if keep_gradient:
            (objective.sum() * scale).backward()
        elif objective.requires_grad:
            torch.autograd.grad(objective.sum() * scale, self.parameters(state), allow_unused=True)
        return objective.detach(), metrics.get("accuracy")

    def _chunked_backward(self, state, episode: Episode, scale: float, chunk: int):
        self.validate_episode(state, episode)
        # Plain tensor splits, not Episode.chunks: its finiteness checks read values back to the
        # host, which a CUDA graph being recorded cannot do.
        parts = zip(*(t.split(chunk) for t in (episode.support_x, episode.support_y,
                                               episode.query_x, episode.query_y)))
        results = [self._chunk_backward(state, part, scale / episode.batch_size) for part in parts]
        loss = torch.cat([objective for objective, _ in results]).mean()
        accuracies = [a for _, a in results if a is not None]
        accuracy = torch.cat(accuracies).mean().detach() if accuracies else None
        return loss, accuracy

    def _per_task_backward(self, state, episode: Episode, scale: float, strategy: str):
        self.validate_episode(state, episode)
        tasks = episode.batch_size
        params = self.parameters(state)

        def one_task(i):
            metrics = self.task_metrics(state, episode.support_x[i], episode.support_y[i],
                                        episode.query_x[i], episode.query_y[i])
            loss = metrics.get("objective", metrics["loss"]) / tasks
            grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
            return loss.detach(), metrics.get("accuracy"), grads

        results = run_tasks(one_task, tasks, strategy)
        for j, p in enumerate(params):
            for _, _, grads in results:
                if grads[j] is not None:
                    p.grad = grads[j].clone() if p.grad is None else p.grad + grads[j]
        total = torch.stack([loss for loss, _, _ in results]).sum()
        accuracies = [a for _, a, _ in results if a is not None]
        accuracy = torch.stack(accuracies).mean().detach() if accuracies else None
        return total, accuracy

    def evaluate_batch(self, state, episode: Episode, views=None) -> dict[str, torch.Tensor]:
        """Per-task query metrics without outer gradients ('objective' left out) (Chapter 5).

        ``views`` (classification only) is a test-time augmentation such as
        :class:`mlbook.augment.ShiftedViews`, mapping images ``[n, C, H, W]`` to ``[A, n, C, H, W]``:
        every view of a support image becomes one more shot of its class, and each query's
        class log-probabilities are averaged over its views.
        """
        with torch.set_grad_enabled(self.adapts_with_gradients):
            metrics = self.metrics(state, episode) if views is None else self._metrics_over_views(
                state, episode, views)
        return {k: v.detach() for k, v in metrics.items() if k != "objective"}

    def _metrics_over_views(self, state, episode: Episode, views) -> dict[str, torch.Tensor]:
        self.validate_episode(state, episode)
        if self.loss != "cross_entropy":
            raise ValueError(f"views (test-time augmentation) need a classifier; this {self.name} "
                             f"regresses (loss {self.loss!r})")
        if not callable(views):
            raise ValueError(f"views must be callable images [n, C, H, W] -> [A, n, C, H, W], got {views!r}")

        def stacked(x):
            out = views(x.flatten(0, 1))
            if out.dim() != x.dim() or out.shape[2:] != x.shape[2:] or out.shape[1] != x.shape[0] * x.shape[1]:
                raise ValueError(f"views must map images [n, C, H, W] to [A, n, C, H, W], got "
                                 f"{tuple(out.shape)} from {tuple(x.flatten(0, 1).shape)}")
            # [A, B*n, ...] -> [B, A*n, ...]: the views of one task become more examples of it.
            return out.unflatten(1, x.shape[:2]).transpose(0, 1).flatten(1, 2), out.shape[0]

        support_x, count = stacked(episode.support_x)
        query_x, _ = stacked(episode.query_x)
        support_y = episode.support_y.repeat(1, count)

        queries = episode.query_y.shape[1]
        episode_logits = getattr(self, "episode_logits", None)
        if episode_logits is not None:
            # The metric learners score every task at once: [B, A*Q, N] logits from one call.
            logits = episode_logits(state, Episode(support_x, support_y, query_x, episode.query_y.repeat(1, count)))
            log_probs = logits.log_softmax(-1).unflatten(1, (count, queries)).mean(1)
            return query_metrics(log_probs, episode.query_y, classification=True)

        def one_task(sx, sy, qx, qy):
            logits = self.predict(self.adapt(state, sx, sy), qx)
            log_probs = logits.log_softmax(-1).unflatten(0, (count, queries)).mean(0)
            return {"loss": task_loss(self.loss, log_probs, qy), "accuracy": task_accuracy(log_probs, qy)}

        strategy = self.execution_strategy(support_x)
        if self.episode_metrics is not None and strategy == "vmap":
            # A learner with its own batched hook may read counts from the labels in adapt,
            # which vmap cannot trace (on a GPU 'auto' is vmap): its tasks run one by one.
            strategy = "loop"
        return map_tasks(one_task, support_x, support_y, query_x, episode.query_y,
                         strategy=strategy, chunk_size=None if self.chunk_size == "auto" else self.chunk_size)

    def parameters(self, state) -> list[torch.Tensor]:
        """The tensors the outer optimiser updates: every leaf of ``state`` that requires grad."""
        leaves = torch.utils._pytree.tree_leaves(state)
        return [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

