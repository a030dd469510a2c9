"""Episodes and task families (Chapter 2, "Task distributions").

A task family is a distribution p(T) over tasks. Sampling it returns an :class:`Episode`:
stacked tensors with the meta-batch dimension first, so a meta-learner can ``vmap`` over
tasks. Everything here runs on the family's device with a seeded ``torch.Generator``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import torch

from .utils import check_positive, check_positive_int

__all__ = [
    "Episode", "TaskFamily", "SinusoidFamily", "LineFamily", "ImageClassFamily",
    "sample_nway_kshot",
]


@dataclass
class Episode:
    """A meta-batch of tasks: support (D_train) and query (D_test) sets (Chapter 2).

    Shapes: ``support_x [B, N*K, ...]``, ``support_y [B, N*K]`` (classification, int64) or
    ``[B, K, 1]`` (regression), ``query_x [B, N*Q, ...]``, ``query_y`` likewise.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self):
        sizes = {f.name: getattr(self, f.name).shape[0] if getattr(self, f.name).dim() else None
                 for f in fields(self)}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Episode tensors must share the batch size; got {sizes}")
        if self.support_x.shape[1] == 0:
            raise ValueError("support_x has no examples: a task needs a non-empty support set")
        if self.support_x.shape[:2] != self.support_y.shape[:2]:
            raise ValueError(f"support_x {tuple(self.support_x.shape)} and support_y "
                             f"{tuple(self.support_y.shape)} disagree on [batch, examples]")
        if self.query_x.shape[:2] != self.query_y.shape[:2]:
            raise ValueError(f"query_x {tuple(self.query_x.shape)} and query_y "
                             f"{tuple(self.query_y.shape)} disagree on [batch, examples]")

    @property
    def batch_size(self) -> int:
        return self.support_x.shape[0]

    def to(self, device) -> "Episode":
        """Move every tensor to ``device``."""
        return Episode(*(getattr(self, f.name).to(device) for f in fields(self)))

    def task(self, index: int) -> "Episode":
        """The single task ``index`` as an episode with batch size 1."""
        return Episode(*(getattr(self, f.name)[index:index + 1] for f in fields(self)))

    def chunks(self, size: int) -> list["Episode"]:
        """Split the meta-batch into episodes of at most ``size`` tasks (to bound memory)."""
        size = check_positive_int("size", size)
        parts = [getattr(self, f.name).split(size) for f in fields(self)]
        return [Episode(*group) for group in zip(*parts)]


class TaskFamily(Protocol):
    """What every task family offers: ``sample(batch_size, generator) -> Episode`` (Chapter 2)."""

    device: torch.device

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode: ...


def _uniform(low: float, high: float, shape, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


class _RegressionFamily:
    """Shared sampling for 1-D regression families: K support and Q query points per task."""

    x_range = (-5.0, 5.0)

    def __init__(self, shots: int = 10, queries: int = 10, device="cpu", noise: float = 0.0):
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)
        self.device = torch.device(device)

    def sample_parameters(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def function(self, parameters: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Evaluate each task's function: ``parameters [B, P]``, ``x [B, M, 1]`` -> ``[B, M, 1]``."""
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` tasks with K support and Q query points each (Chapter 2)."""
        batch_size = check_positive_int("batch_size", batch_size)
        parameters = self.sample_parameters(batch_size, generator)
        x = _uniform(*self.x_range, (batch_size, self.shots + self.queries, 1), generator, self.device)
        y = self.function(parameters, x)
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=generator, device=self.device)
        return Episode(x[:, :self.shots], y[:, :self.shots], x[:, self.shots:], y[:, self.shots:])

    def sample_with_parameters(self, batch_size: int, generator: torch.Generator):
        """Like :meth:`sample`, also returning the task parameters (for plots of true curves)."""
        state = generator.get_state()
        parameters = self.sample_parameters(batch_size, generator)
        generator.set_state(state)
        return self.sample(batch_size, generator), parameters


class SinusoidFamily(_RegressionFamily):
    """Sinusoid regression tasks y = A sin(x - phase) from the MAML paper (Chapters 1-2).

    Amplitude ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5].
    """

    def __init__(self, shots: int = 10, queries: int = 10, amplitude=(0.1, 5.0),
                 phase=(0.0, math.pi), device="cpu", noise: float = 0.0):
        super().__init__(shots, queries, device, noise)
        low, high = amplitude
        if not 0 <= low <= high:
            raise ValueError(f"amplitude must be a range (low, high) with 0 <= low <= high, got {amplitude!r}")
        if not phase[0] <= phase[1]:
            raise ValueError(f"phase must be a range (low, high) with low <= high, got {phase!r}")
        self.amplitude = (float(low), float(high))
        self.phase = (float(phase[0]), float(phase[1]))

    def sample_parameters(self, batch_size, generator):
        amplitude = _uniform(*self.amplitude, (batch_size,), generator, self.device)
        phase = _uniform(*self.phase, (batch_size,), generator, self.device)
        return torch.stack([amplitude, phase], dim=1)

    def function(self, parameters, x):
        amplitude, phase = parameters[:, 0, None, None], parameters[:, 1, None, None]
        return amplitude * torch.sin(x - phase)


class LineFamily(_RegressionFamily):
    """Linear regression tasks y = a x + b, a ~ U[-3, 3], b ~ U[-3, 3] (Chapter 2, mismatch)."""

    def __init__(self, shots: int = 10, queries: int = 10, slope=(-3.0, 3.0),
                 intercept=(-3.0, 3.0), device="cpu", noise: float = 0.0):
        super().__init__(shots, queries, device, noise)
        self.slope = tuple(map(float, slope))
        self.intercept = tuple(map(float, intercept))

    def sample_parameters(self, batch_size, generator):
        slope = _uniform(*self.slope, (batch_size,), generator, self.device)
        intercept = _uniform(*self.intercept, (batch_size,), generator, self.device)
        return torch.stack([slope, intercept], dim=1)

    def function(self, parameters, x):
        return parameters[:, 0, None, None] * x + parameters[:, 1, None, None]


def sample_nway_kshot(images: torch.Tensor, ways: int, shots: int, queries: int,
                      batch_size: int, generator: torch.Generator,
                      classes: torch.Tensor | None = None, rotate: bool = False) -> Episode:
    """Sample ``batch_size`` N-way K-shot episodes from a class tensor (Chapter 2).

    ``images`` is ``[classes, examples, H, W]`` (uint8 or float) on the device. Each episode
    takes ``ways`` distinct classes (from ``classes``, a 1-D index tensor, if given), then
    ``shots + queries`` distinct examples of each; labels are remapped to ``0..ways-1`` in a
    random order. With ``rotate``, each chosen class is turned by a random multiple of 90
    degrees, as a new class. Returns float images in [0, 1] with a channel axis:
    ``support_x [B, N*K, 1, H, W]``, ``support_y [B, N*K]``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [classes, examples, H, W]; got rank {images.dim()}")
    ways = check_positive_int("ways", ways)
    shots = check_positive_int("shots", shots)
    queries = check_positive_int("queries", queries)
    batch_size = check_positive_int("batch_size", batch_size)
    device = images.device
    pool = torch.arange(images.shape[0], device=device) if classes is None else classes.to(device)
    if ways > pool.numel():
        raise ValueError(f"ways={ways} is larger than the {pool.numel()} classes available")
    per_class = shots + queries
    if per_class > images.shape[1]:
        raise ValueError(f"shots + queries = {per_class} is larger than the {images.shape[1]} "
                         f"examples per class")
    # argsort of uniform noise gives a random permutation per row: distinct picks, no loop.
    class_pick = torch.rand(batch_size, pool.numel(), generator=generator, device=device).argsort(1)[:, :ways]
    chosen = pool[class_pick]                                                      # [B, N]
    example_pick = torch.rand(batch_size, ways, images.shape[1], generator=generator,
                              device=device).argsort(2)[:, :, :per_class]          # [B, N, K+Q]
    x = images[chosen[:, :, None], example_pick]                                   # [B, N, K+Q, H, W]
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    if rotate:
        turns = torch.randint(0, 4, (batch_size, ways), generator=generator, device=device)
        rotated = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # [4, B, N, ...]
        index = turns[None, :, :, None, None, None].expand(1, *x.shape)
        x = rotated.gather(0, index)[0]
    # Labels are a random relabelling of the N chosen classes, so position says nothing.
    labels = torch.rand(batch_size, ways, generator=generator, device=device).argsort(1)  # [B, N]
    y = labels[:, :, None].expand(batch_size, ways, per_class)
    support_x = x[:, :, :shots].reshape(batch_size, ways * shots, 1, *x.shape[-2:])
    query_x = x[:, :, shots:].reshape(batch_size, ways * queries, 1, *x.shape[-2:])
    support_y = y[:, :, :shots].reshape(batch_size, ways * shots)
    query_y = y[:, :, shots:].reshape(batch_size, ways * queries)
    return Episode(support_x, support_y, query_x, query_y)


class ImageClassFamily:
    """N-way K-shot classification tasks over a ``[classes, examples, H, W]`` tensor (Chapter 2)."""

    def __init__(self, images: torch.Tensor, ways: int = 5, shots: int = 1, queries: int = 15,
                 classes: torch.Tensor | None = None, rotate: bool = False, device=None):
        if images.dim() != 4:
            raise ValueError(f"images must have shape [classes, examples, H, W]; got rank {images.dim()}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.classes = None if classes is None else torch.as_tensor(classes, device=self.device)
        available = images.shape[0] if classes is None else self.classes.numel()
        self.ways = check_positive_int("ways", ways)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if self.ways > available:
            raise ValueError(f"ways={ways} is larger than the {available} classes available")
        if self.shots + self.queries > images.shape[1]:
            raise ValueError(f"shots + queries = {self.shots + self.queries} is larger than the "
                             f"{images.shape[1]} examples per class")
        self.rotate = bool(rotate)

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` episodes (Chapter 2)."""
        return sample_nway_kshot(self.images, self.ways, self.shots, self.queries, batch_size,
                                 generator, classes=self.classes, rotate=self.rotate)

    def with_shape(self, ways: int | None = None, shots: int | None = None,
                   queries: int | None = None) -> "ImageClassFamily":
        """The same classes with another N-way K-shot shape (Chapter 5, mismatch)."""
        return ImageClassFamily(self.images, ways or self.ways, shots or self.shots,
                                queries or self.queries, self.classes, self.rotate, self.device)
