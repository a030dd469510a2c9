"""Episodes and every task family of the book (Chapter 2, "Task distributions").

A task family is a distribution p(T) over tasks. Sampling it returns an :class:`Episode`:
stacked tensors with the meta-batch dimension first, so a meta-learner can ``vmap`` over
tasks. Everything here runs on the family's device with a seeded ``torch.Generator``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Callable, Protocol, Sequence

import torch

from .bayes import Gaussian, num_features
from .utils import check_positive, check_positive_int

__all__ = [
    "Episode", "TaskFamily", "SinusoidFamily", "LineFamily", "ImageClassFamily",
    "PolynomialFamily", "ScrambledFamily", "SwappedSupportFamily", "RandomNetworkFamily", "AlphabetFamily", "LinearGaussianFamily",
    "VariableShotsFamily", "sample_nway_kshot", "union_characters", "copies_per_class", "copies_description", "alphabet_split", "SPLITS",
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
        for name in ("support_x", "support_y", "query_x", "query_y"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise ValueError(f"Episode.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        for name in ("support_x", "query_x"):
            x = getattr(self, name)
            if x.dim() < 3 or not x.dtype.is_floating_point:
                raise ValueError(f"Episode.{name} must be a floating-point tensor [batch, examples, ...] "
                                 f"(images scaled to [0, 1]); got dtype {x.dtype}, shape {tuple(x.shape)}")
        sizes = {f.name: getattr(self, f.name).shape[0] for f in fields(self)}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Episode tensors must share the batch size; got {sizes}")
        if self.support_x.shape[0] == 0:
            raise ValueError("Episode has no tasks: the batch size must be at least 1")
        if self.support_x.shape[1] == 0:
            raise ValueError("support_x has no examples: a task needs a non-empty support set")
        for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
            _check_targets(x, getattr(self, x), y, getattr(self, y))
        if self.support_y.dtype != self.query_y.dtype:
            raise ValueError(f"support_y ({self.support_y.dtype}) and query_y ({self.query_y.dtype}) must "
                             f"be both class labels or both regression targets")
        for name in ("support_x", "query_x", "support_y", "query_y"):
            tensor = getattr(self, name)
            if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
                raise ValueError(f"Episode.{name} holds NaN or infinite values")

    @property
    def batch_size(self) -> int:
        return self.support_x.shape[0]

    def to(self, device) -> "Episode":
        """Move every tensor to ``device``."""
        return Episode(*(getattr(self, f.name).to(device) for f in fields(self)))

    def chunks(self, size: int) -> list["Episode"]:
        """Split the meta-batch into episodes of at most ``size`` tasks (to bound memory)."""
        size = check_positive_int("size", size)
        parts = [getattr(self, f.name).split(size) for f in fields(self)]
        return [Episode(*group) for group in zip(*parts)]


def _check_targets(x_name: str, x: torch.Tensor, y_name: str, y: torch.Tensor) -> None:
    """Targets are integer labels ``[B, M]`` or regression values ``[B, M, D]`` beside ``x``."""
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(f"{x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)} disagree on [batch, examples]")
    if y.dtype.is_floating_point:
        if y.dim() != 3:
            raise ValueError(f"{y_name} holds real values, so it is a regression target and must be "
                             f"[batch, examples, outputs]; got shape {tuple(y.shape)} (a [B, K] target "
                             f"would broadcast against [B, K, 1] predictions into a wrong loss)")
    elif y.dtype == torch.int64:
        if y.dim() != 2:
            raise ValueError(f"{y_name} holds class labels and must be [batch, examples]; got {tuple(y.shape)}")
        if y.numel() and y.min() < 0:
            raise ValueError(f"{y_name} must hold class labels 0..N-1; got {y.min().item()}")
    else:
        raise ValueError(f"{y_name} must be int64 class labels or floating-point regression targets; "
                         f"got dtype {y.dtype}")


class TaskFamily(Protocol):
    """What every task family offers: ``sample(batch_size, generator) -> Episode`` (Chapter 2)."""

    device: torch.device

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode: ...


def _check_range(name: str, value) -> tuple[float, float]:
    """A finite (low, high) pair with low <= high."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a range (low, high), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name} must be a finite range (low, high) with low <= high, got {value!r}")
    return low, high


def _uniform(low: float, high: float, shape, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


class _RegressionFamily:
    """Shared sampling for 1-D regression families: K support and Q query points per task."""

    x_range = (-5.0, 5.0)

    def __init__(self, shots: int = 10, queries: int = 10, device="cpu", noise: float = 0.0):
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.device = torch.device(device)

    # Names of the (low, high) ranges each task's parameters are drawn from, in drawing order.
    parameter_ranges: tuple[str, ...] = ()

    def sample_parameters(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Each task's parameters ``[B, P]``, drawn uniformly from ``parameter_ranges`` in order."""
        return torch.stack([_uniform(*getattr(self, name), (batch_size,), generator, self.device)
                            for name in self.parameter_ranges], dim=1)

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

    parameter_ranges = ("amplitude", "phase")

    def __init__(self, shots: int = 10, queries: int = 10, amplitude=(0.1, 5.0),
                 phase=(0.0, math.pi), device="cpu", noise: float = 0.0):
        super().__init__(shots, queries, device, noise)
        self.amplitude = _check_range("amplitude", amplitude)
        if self.amplitude[0] < 0:
            raise ValueError(f"amplitude must be a range (low, high) with 0 <= low <= high, got {amplitude!r}")
        self.phase = _check_range("phase", phase)

    def function(self, parameters, x):
        amplitude, phase = parameters[:, 0, None, None], parameters[:, 1, None, None]
        return amplitude * torch.sin(x - phase)


class LineFamily(_RegressionFamily):
    """Linear regression tasks y = a x + b, a ~ U[-3, 3], b ~ U[-3, 3] (Chapter 2, mismatch)."""

    parameter_ranges = ("slope", "intercept")

    def __init__(self, shots: int = 10, queries: int = 10, slope=(-3.0, 3.0),
                 intercept=(-3.0, 3.0), device="cpu", noise: float = 0.0):
        super().__init__(shots, queries, device, noise)
        self.slope = _check_range("slope", slope)
        self.intercept = _check_range("intercept", intercept)

    def function(self, parameters, x):
        return parameters[:, 0, None, None] * x + parameters[:, 1, None, None]


class PolynomialFamily(_RegressionFamily):
    """Polynomial regression tasks y = sum_k c_k (x / 5)^k, c_k ~ U[-scale, scale] (Chapter 2).

    The rescaled input keeps every term within [-scale, scale] on x in [-5, 5], so the family
    has the same output range as the sinusoids but a different shape.
    """

    def __init__(self, shots: int = 10, queries: int = 10, degree: int = 3, scale: float = 3.0,
                 device="cpu", noise: float = 0.0):
        super().__init__(shots, queries, device, noise)
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
        self.degree = degree
        self.scale = check_positive("scale", scale)

    def sample_parameters(self, batch_size, generator):
        return _uniform(-self.scale, self.scale, (batch_size, self.degree + 1), generator, self.device)

    def function(self, parameters, x):
        powers = (x / 5.0) ** torch.arange(self.degree + 1, device=x.device, dtype=x.dtype)  # [B, M, D+1]
        return (powers * parameters[:, None, :]).sum(-1, keepdim=True)


class _AlteredFamily:
    """A family that draws its episodes from ``base`` and changes them (Chapter 2's controls)."""

    def __init__(self, base):
        if not hasattr(base, "sample") or not hasattr(base, "device"):
            raise ValueError(f"base must be a task family with .sample and .device, got {type(base).__name__}")
        self.base = base
        self.device = base.device


class ScrambledFamily(_AlteredFamily):
    """A family whose tasks share no input-output structure (Chapter 2, structural similarity).

    Each task of ``base`` keeps its inputs and its outputs, but the outputs are shuffled
    among the inputs (separately in support and query), so x says nothing about y and there
    is nothing for a meta-learner to carry from one task to the next.
    """

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` tasks of ``base`` and shuffle each one's outputs (Chapter 2)."""
        episode = self.base.sample(batch_size, generator)

        def shuffle(y):
            order = torch.rand(y.shape[:2], generator=generator, device=y.device).argsort(1)
            return y.gather(1, order.view(*order.shape, *([1] * (y.dim() - 2))).expand_as(y))

        return Episode(episode.support_x, shuffle(episode.support_y), episode.query_x, shuffle(episode.query_y))


class SwappedSupportFamily(_AlteredFamily):
    """Episodes of ``base`` whose support sets are handed to the wrong tasks (Chapter 2, memorisation).

    Task i of a meta-batch keeps its query set but gets the support set of task i + 1 (the
    last gets the first's). A learner that uses its support set falls to chance; one that
    scores the same as on the true episodes never needed the support set at all.
    """

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` >= 2 tasks of ``base`` and pass each support set on to the next task."""
        if check_positive_int("batch_size", batch_size) < 2:
            raise ValueError("swapping support sets needs at least two tasks per batch, got batch_size=1")
        episode = self.base.sample(batch_size, generator)
        return Episode(episode.support_x.roll(-1, 0), episode.support_y.roll(-1, 0),
                       episode.query_x, episode.query_y)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor [classes, examples, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [classes, examples, H, W]; got rank {images.dim()} "
                         f"(shape {tuple(images.shape)})")


def _class_pool(images: torch.Tensor, classes) -> torch.Tensor:
    device = images.device
    if classes is None:
        return torch.arange(images.shape[0], device=device)
    pool = torch.as_tensor(classes, device=device)
    if pool.dim() != 1 or pool.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"classes must be a 1-D tensor of class indices, got dtype {pool.dtype} "
                         f"and shape {tuple(pool.shape)}")
    if pool.numel() and (pool.min() < 0 or pool.max() >= images.shape[0]):
        raise ValueError(f"classes must index 0..{images.shape[0] - 1}; got values from "
                         f"{pool.min().item()} to {pool.max().item()}")
    if pool.unique().numel() != pool.numel():
        raise ValueError("classes must not repeat a class: the same class would appear under two labels")
    return pool.long()


def sample_nway_kshot(images: torch.Tensor, ways: int, shots: int, queries: int,
                      batch_size: int, generator: torch.Generator,
                      classes: torch.Tensor | None = None, rotate: bool = False,
                      fixed_labels: bool = False, reflect: bool = False) -> Episode:
    """Sample ``batch_size`` N-way K-shot episodes from a class tensor (Chapter 2).

    ``images`` is ``[classes, examples, H, W]`` (uint8 or float) on the device. Each episode
    takes ``ways`` distinct classes (from ``classes``, a 1-D index tensor, if given), then
    ``shots + queries`` distinct examples of each; labels are remapped to ``0..ways-1`` in a
    random order. With ``rotate``, every class turned by 0, 90, 180 or 270 degrees counts as
    a class of its own (four times the pool), as is usual for Omniglot; with ``reflect``, so does
    every mirror image (left-right, then turned: twice as many again). Returns float images
    in [0, 1] with a channel axis: ``support_x [B, N*K, 1, H, W]``, ``support_y [B, N*K]``.

    ``fixed_labels`` makes the tasks *not* mutually exclusive (Chapter 2, memorisation): the
    pool (in its order, rotated copies after the originals) is dealt into ``ways`` groups by
    position modulo ``ways``, each episode takes one class from every group, and a class's
    label is always its group. One classifier of the whole pool then solves every episode
    without looking at the support set.
    """
    _check_images(images)
    ways = check_positive_int("ways", ways)
    shots = check_positive_int("shots", shots)
    queries = check_positive_int("queries", queries)
    batch_size = check_positive_int("batch_size", batch_size)
    device = images.device
    pool = _class_pool(images, classes)
    turns_available = 4 if rotate else 1
    if rotate and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate=True needs square images, got {tuple(images.shape[-2:])}")
    available = pool.numel() * copies_per_class(rotate, reflect)
    if ways > available:
        raise ValueError(f"ways={ways} is larger than the {available} classes available"
                         f"{copies_description(rotate, reflect)}; choose ways <= {available}")
    per_class = shots + queries
    if per_class > images.shape[1]:
        raise ValueError(f"shots + queries = {per_class} is larger than the {images.shape[1]} "
                         f"examples per class; choose shots + queries <= {images.shape[1]}")
    if fixed_labels:
        if available < 2 * ways:
            raise ValueError(f"fixed_labels needs at least two classes per label, i.e. "
                             f"{2 * ways} classes for ways={ways}; got {available}")
        # Groups in a random order per episode, then one member of each group: the label is
        # the group, so it is a fixed function of the class.
        labels = torch.rand(batch_size, ways, generator=generator, device=device).argsort(1)  # [B, N]
        members = (available - labels + ways - 1) // ways                          # size of each group
        member = (torch.rand(batch_size, ways, generator=generator, device=device) * members).long()
        pick = labels + ways * member.clamp_max(members - 1)
    else:
        # argsort of uniform noise gives a random permutation per row: distinct picks, no loop.
        pick = torch.rand(batch_size, available, generator=generator, device=device).argsort(1)[:, :ways]
    chosen = pool[pick % pool.numel()]                                             # [B, N]
    example_pick = torch.rand(batch_size, ways, images.shape[1], generator=generator,
                              device=device).argsort(2)[:, :, :per_class]          # [B, N, K+Q]
    # Gather uint8 rows of the flattened [classes * examples, H, W] store straight into the
    # support and query layouts: memory traffic, not arithmetic, is what costs here.
    examples = images.shape[1]
    flat = images.reshape(-1, *images.shape[2:])
    rows = chosen[:, :, None] * examples + example_pick                          # [B, N, K+Q]
    if reflect or rotate:
        copy = pick // pool.numel()                     # which turned or mirrored copy: [B, N]
    parts = []
    for lo, hi in ((0, shots), (shots, per_class)):
        x = flat.index_select(0, rows[:, :, lo:hi].reshape(-1)).view(batch_size, ways, hi - lo, *images.shape[2:])
        if reflect:
            mask = copy // turns_available == 1
            if mask.any():
                x[mask] = torch.flip(x[mask], dims=(-1,))
        if rotate:
            turns = copy % turns_available                                         # [B, N] in 0..3
            for k in range(1, 4):
                mask = turns == k
                if mask.any():
                    x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        x = x.reshape(batch_size, ways * (hi - lo), 1, *images.shape[2:])
        # One pass from uint8 to float in [0, 1] (a multiply promotes the type).
        parts.append(x.float().mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x.float())
    support_x, query_x = parts
    if not fixed_labels:
        # Labels are a random relabelling of the N chosen classes, so position says nothing.
        labels = torch.rand(batch_size, ways, generator=generator, device=device).argsort(1)  # [B, N]
    support_y = labels.repeat_interleave(shots, dim=1)
    query_y = labels.repeat_interleave(queries, dim=1)
    return Episode(support_x, support_y, query_x, query_y)


def union_characters(images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor,
                     per_character: float, seed: int = 0):
    """New classes made of two characters drawn over each other (Chapter 5, Lake's challenge).

    For every alphabet among ``classes``, ``round(per_character * n)`` new classes (``n`` its
    characters there), each the pixel-wise maximum of two distinct characters of that alphabet,
    drawer by drawer: example ``d`` of the new class overlays drawer ``d``'s drawings of both, so
    every new class keeps the 20 drawers' styles. Strokes must be bright on dark (as loaded).
    Returns ``(images, alphabets, classes)`` with the new classes appended after the old ones
    (whose indices do not change), in the new classes' own alphabets, deterministically for a
    ``seed``. Used on the training split only: the test never sees an overlaid character.
    """
    _check_images(images)
    if not math.isfinite(per_character) or per_character < 0:
        raise ValueError(f"per_character must be a finite number >= 0, got {per_character!r}")
    if len(alphabets) != images.shape[0]:
        raise ValueError(f"alphabets must name one alphabet per class: {len(alphabets)} names for "
                         f"{images.shape[0]} classes")
    pool = _class_pool(images, classes)
    members = defaultdict(list)
    for c in pool.tolist():
        members[alphabets[c]].append(c)
    generator = torch.Generator().manual_seed(seed)
    firsts, seconds, names = [], [], []
    for alphabet in sorted(members):
        chars = members[alphabet]
        count = round(per_character * len(chars)) if len(chars) >= 2 else 0
        for _ in range(count):
            first, second = torch.randperm(len(chars), generator=generator)[:2].tolist()
            firsts.append(chars[first])
            seconds.append(chars[second])
            names.append(alphabet)
    if not names:
        return images, list(alphabets), pool
    index = torch.tensor(firsts, device=images.device), torch.tensor(seconds, device=images.device)
    overlaid = torch.maximum(images[index[0]], images[index[1]])
    added = torch.arange(images.shape[0], images.shape[0] + len(names), device=pool.device)
    return torch.cat([images, overlaid]), [*alphabets, *names], torch.cat([pool, added])


SPLITS = ("train", "val", "test")


def copies_description(rotate: bool, reflect: bool) -> str:
    """' (with rotations and mirror images)' or less: how error messages name the extra classes (Chapter 2)."""
    copies = [name for name, used in (("rotations", rotate), ("mirror images", reflect)) if used]
    return f" (with {' and '.join(copies)})" if copies else ""


def copies_per_class(rotate: bool, reflect: bool) -> int:
    """How many classes one character gives: 4 turns with ``rotate``, twice that with ``reflect`` (Chapter 2)."""
    return (4 if rotate else 1) * (2 if reflect else 1)


def _named_assignment(fractions: dict, distinct: list[str]) -> dict[str, str]:
    """{alphabet: split} from a dict naming the alphabets of some splits."""
    unknown = [k for k in fractions if k not in SPLITS]
    if unknown:
        raise ValueError(f"fractions keys must be among {', '.join(map(repr, SPLITS))}; got {unknown}")
    assignment = {}
    for key, members in fractions.items():
        members = [members] if isinstance(members, str) else list(members)
        missing = [m for m in members if m not in distinct]
        if missing:
            raise ValueError(f"fractions[{key!r}] names unknown alphabets {missing}; "
                             f"the alphabets are {distinct}")
        for m in members:
            if m in assignment and assignment[m] != key:
                raise ValueError(f"alphabet {m!r} is in both {assignment[m]!r} and {key!r}")
            assignment[m] = key
    if "train" not in fractions:
        for m in distinct:
            assignment.setdefault(m, "train")
    return assignment


def _shared_assignment(fractions, distinct: list[str], seed: int) -> dict[str, str]:
    """{alphabet: split} from three shares of the alphabets, shuffled by ``seed``."""
    try:
        shares = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be three numbers (train, val, test) or a dict of "
                         f"alphabet names; got {fractions!r}") from None
    if len(shares) != 3 or any(f < 0 for f in shares) or not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing "
                         f"to 1; got {fractions!r}")
    wanted = sum(f > 0 for f in shares)
    if wanted > len(distinct):
        raise ValueError(f"fractions asks for {wanted} non-empty splits but there are only "
                         f"{len(distinct)} alphabets")
    generator = torch.Generator().manual_seed(int(seed))
    order = [distinct[i] for i in torch.randperm(len(distinct), generator=generator).tolist()]
    # Every split with a positive share gets at least one alphabet; train takes the rest.
    counts = [max(1, round(f * len(distinct))) if f > 0 else 0 for f in shares]
    counts[0] = len(distinct) - counts[1] - counts[2]
    if counts[0] < (1 if shares[0] > 0 else 0):
        raise ValueError(f"fractions {fractions!r} leave no alphabet for 'train' out of {len(distinct)}")
    assignment = {}
    start = 0
    for key, count in zip(SPLITS, counts):
        for m in order[start:start + count]:
            assignment[m] = key
        start += count
    return assignment


def alphabet_split(alphabets: Sequence[str], fractions=(0.6, 0.2, 0.2), seed: int = 0,
                   split: str | None = None):
    """Split classes into train / val / test so that no alphabet is in two splits (Chapter 2).

    ``alphabets[c]`` names the alphabet (or any group) of class ``c``. ``fractions`` gives the
    share of *alphabets* per split (a 3-tuple for train, val, test; a zero share leaves that
    split empty), or a dict naming the alphabets of each split, e.g. ``{"test": ["Greek"]}``;
    alphabets named nowhere go to 'train' unless 'train' is named too. The shuffle of
    alphabets is seeded by ``seed``. Returns ``{split: sorted class-index tensor}``, or one
    tensor when ``split`` is given.
    """
    names = list(alphabets)
    if not names or not all(isinstance(a, str) for a in names):
        raise ValueError("alphabets must be a non-empty list of alphabet names, one per class")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))} or None; got {split!r}")
    distinct = list(dict.fromkeys(names))
    if isinstance(fractions, dict):
        assignment = _named_assignment(fractions, distinct)
    else:
        assignment = _shared_assignment(fractions, distinct, seed)
    result = {key: torch.tensor([c for c, a in enumerate(names) if assignment.get(a) == key], dtype=torch.long)
              for key in SPLITS}
    return result if split is None else result[split]


class ImageClassFamily:
    """N-way K-shot classification tasks over a ``[classes, examples, H, W]`` tensor (Chapter 2)."""

    def __init__(self, images: torch.Tensor, ways: int = 5, shots: int = 1, queries: int = 15,
                 classes: torch.Tensor | None = None, rotate: bool = False, device=None,
                 fixed_labels: bool = False, reflect: bool = False):
        _check_images(images)
        self.fixed_labels = bool(fixed_labels)
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.classes = None if classes is None else _class_pool(self.images, classes)
        self.rotate = bool(rotate)
        self.reflect = bool(reflect)
        # Convert to float once here, not per episode: sampling then only gathers rows, which
        # is what makes it memory-bound and fast (benchmarks/episode_sampling.py).
        self._pixels = self.images * (1.0 / 255.0) if self.images.dtype == torch.uint8 else self.images.float()
        available = self.num_classes
        self.ways = check_positive_int("ways", ways)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if self.ways > available:
            raise ValueError(f"ways={ways} is larger than the {available} classes available; "
                             f"choose ways <= {available}")
        if self.fixed_labels and available < 2 * self.ways:
            raise ValueError(f"fixed_labels needs at least two classes per label, i.e. "
                             f"{2 * self.ways} classes for ways={ways}; got {available}")
        if self.shots + self.queries > images.shape[1]:
            raise ValueError(f"shots + queries = {self.shots + self.queries} is larger than the "
                             f"{images.shape[1]} examples per class; choose shots + queries <= {images.shape[1]}")

    @property
    def num_classes(self) -> int:
        """How many classes episodes are drawn from (rotations count as classes)."""
        base = self.images.shape[0] if self.classes is None else self.classes.numel()
        return base * copies_per_class(self.rotate, self.reflect)

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` episodes (Chapter 2); see :func:`sample_nway_kshot` for ``fixed_labels``."""
        return sample_nway_kshot(self._pixels, self.ways, self.shots, self.queries, batch_size,
                                 generator, classes=self.classes, rotate=self.rotate,
                                 fixed_labels=self.fixed_labels, reflect=self.reflect)

    def with_shape(self, ways: int | None = None, shots: int | None = None,
                   queries: int | None = None) -> "ImageClassFamily":
        """The same classes with another N-way K-shot shape (Chapter 5, mismatch)."""
        return ImageClassFamily(self.images, ways or self.ways, shots or self.shots,
                                queries or self.queries, self.classes, self.rotate, self.device,
                                self.fixed_labels, self.reflect)


class AlphabetFamily:
    """N-way K-shot episodes whose N classes come from one alphabet (Chapter 5).

    ``images [classes, examples, H, W]``; ``alphabets`` names each class's alphabet;
    ``classes`` restricts the pool (e.g. training alphabets only). Each episode picks an
    alphabet uniformly among those with at least ``ways`` classes in the pool, then ``ways``
    of its classes. With ``within < 1`` an episode is within-alphabet only with that
    probability and otherwise draws its classes from the whole pool. ``rotate`` turns each
    class by a random multiple of 90 degrees (a new class, as in the usual augmentation);
    ``reflect`` mirrors it with probability one half (another new class).
    """

    def __init__(self, images: torch.Tensor, alphabets: Sequence[str], ways: int = 20, shots: int = 1,
                 queries: int = 1, classes: torch.Tensor | None = None, within: float = 1.0,
                 rotate: bool = False, device=None, reflect: bool = False):
        if images.dim() != 4:
            raise ValueError(f"images must have shape [classes, examples, H, W]; got rank {images.dim()}")
        if len(alphabets) != images.shape[0]:
            raise ValueError(f"alphabets must name each of the {images.shape[0]} classes, got {len(alphabets)}")
        if not 0.0 <= float(within) <= 1.0:
            raise ValueError(f"within must be a probability in [0, 1], got {within!r}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.ways = check_positive_int("ways", ways)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        if self.shots + self.queries > images.shape[1]:
            raise ValueError(f"shots + queries = {self.shots + self.queries} is larger than the "
                             f"{images.shape[1]} examples per class")
        pool = range(images.shape[0]) if classes is None else torch.as_tensor(classes).tolist()
        groups = defaultdict(list)
        for index in pool:
            groups[alphabets[index]].append(index)
        self.pool = torch.tensor(sorted(pool), dtype=torch.long, device=self.device)
        self.groups = {name: torch.tensor(idx, device=self.device) for name, idx in sorted(groups.items())
                       if len(idx) >= self.ways}
        self.within = float(within)
        if self.within > 0 and not self.groups:
            largest = max((len(v) for v in groups.values()), default=0)
            raise ValueError(f"ways={ways} is larger than every alphabet in the pool (the largest has "
                             f"{largest} classes): no within-alphabet episode exists")
        if self.ways > self.pool.numel():
            raise ValueError(f"ways={ways} is larger than the {self.pool.numel()} classes available")
        self.names = list(self.groups)
        self.rotate = bool(rotate)
        self.reflect = bool(reflect)

    def sample(self, batch_size: int, generator: torch.Generator, return_alphabets: bool = False):
        """Draw ``batch_size`` episodes (one alphabet each, or anywhere with probability 1 - within)."""
        batch_size = check_positive_int("batch_size", batch_size)
        episodes, names = [], []
        for _ in range(batch_size):
            inside = self.within >= 1.0 or (
                self.within > 0 and torch.rand((), generator=generator, device=self.device).item() < self.within)
            if inside:
                pick = int(torch.randint(len(self.names), (), generator=generator, device=self.device).item())
                pool, name = self.groups[self.names[pick]], self.names[pick]
            else:
                pool, name = self.pool, None
            episodes.append(sample_nway_kshot(self.images, self.ways, self.shots, self.queries, 1,
                                              generator, classes=pool, rotate=self.rotate,
                                              reflect=self.reflect))
            names.append(name)
        batch = Episode(*(torch.cat([getattr(e, f) for e in episodes])
                          for f in ("support_x", "support_y", "query_x", "query_y")))
        return (batch, names) if return_alphabets else batch


# -- Chapter 6: a known Gaussian prior over linear tasks, and a varying number of shots ----------
class LinearGaussianFamily:
    """Tasks y = phi(x)^T w + noise with w ~ N(prior_mean, prior_cov): a known prior (Chapter 6).

    The ground truth for empirical Bayes: learning the prior from many tasks of this family
    should recover ``prior_mean``, ``prior_cov`` and ``noise``. x ~ U[x_range].
    """

    def __init__(self, features: Callable, prior_mean, prior_cov, noise: float = 0.1,
                 shots: int = 10, queries: int = 10, x_range=(-1.0, 1.0), device="cpu"):
        self.features = features
        self.device = torch.device(device)
        dim = num_features(features)
        self.prior = Gaussian(torch.as_tensor(prior_mean, dtype=torch.float32, device=self.device),
                              cov=torch.as_tensor(prior_cov, dtype=torch.float32, device=self.device))
        if self.prior.dim != dim:
            raise ValueError(f"prior_mean has {self.prior.dim} entries but the features have {dim}")
        self.noise = check_positive("noise", noise)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        low, high = map(float, x_range)
        if not low < high:
            raise ValueError(f"x_range must be (low, high) with low < high, got {x_range!r}")
        self.x_range = (low, high)

    def sample_with_weights(self, batch_size: int, generator: torch.Generator):
        """An :class:`Episode` and the true weights ``[B, D]`` of its tasks."""
        batch_size = check_positive_int("batch_size", batch_size)
        n = self.shots + self.queries
        weights = self.prior.sample(batch_size, generator)
        low, high = self.x_range
        x = low + (high - low) * torch.rand(batch_size, n, 1, generator=generator, device=self.device)
        f = (self.features(x) @ weights.unsqueeze(-1))
        y = f + self.noise * torch.randn(f.shape, generator=generator, device=self.device)
        return Episode(x[:, :self.shots], y[:, :self.shots], x[:, self.shots:], y[:, self.shots:]), weights

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` tasks (Chapter 6)."""
        return self.sample_with_weights(batch_size, generator)[0]


class VariableShotsFamily:
    """Keep a random number K in [min_shots, family.shots] of each meta-batch's support points (Chapter 6).

    A neural process trained only with K = 10 context points has never seen K = 1 and is
    over-confident there; drawing K afresh for every meta-batch (from the same generator, so
    runs stay reproducible) teaches it how uncertainty shrinks with the number of points.
    Support points are drawn independently, so keeping the first K is a fair subsample.
    """

    def __init__(self, family, min_shots: int = 1):
        shots = getattr(family, "shots", None)
        if shots is None:
            raise ValueError("family must have a shots attribute (e.g. SinusoidFamily)")
        self.family = family
        self.min_shots = check_positive_int("min_shots", min_shots)
        if self.min_shots > shots:
            raise ValueError(f"min_shots must be at most the family's shots ({shots}), got {min_shots}")
        self.shots = shots
        self.device = family.device

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """A meta-batch whose tasks all keep the same random number of support points."""
        episode = self.family.sample(batch_size, generator)
        k = int(torch.randint(self.min_shots, self.shots + 1, (1,), generator=generator, device=self.device))
        return Episode(episode.support_x[:, :k], episode.support_y[:, :k], episode.query_x, episode.query_y)


class RandomNetworkFamily(_RegressionFamily):
    """Each task is its own random one-hidden-layer tanh network (Chapter 2, shared structure).

    Task i is ``y = scale * sum_j a_j tanh(w_j (x - t_j)) / sqrt(hidden)`` with its own
    ``a_j ~ N(0, 1)``, slopes ``w_j ~ N(0, slope^2)`` and kink positions ``t_j ~ U[-5, 5]``.
    Every task is a smooth function of x that a few points pin down, as a sinusoid is, but
    two tasks share nothing beyond that: no common shape, period or centre.
    """

    def __init__(self, shots: int = 10, queries: int = 10, hidden: int = 8, scale: float = 3.0,
                 slope: float = 1.0, device="cpu", noise: float = 0.0):
        super().__init__(shots, queries, device, noise)
        self.hidden = check_positive_int("hidden", hidden)
        self.scale = check_positive("scale", scale)
        self.slope = check_positive("slope", slope)

    def sample_parameters(self, batch_size, generator):
        shape = (batch_size, self.hidden)
        a = torch.randn(shape, generator=generator, device=self.device)
        w = self.slope * torch.randn(shape, generator=generator, device=self.device)
        t = _uniform(*self.x_range, shape, generator, self.device)
        return torch.cat([a, w, t], dim=1)

    def function(self, parameters, x):
        a, w, t = parameters[:, None, :].chunk(3, dim=-1)                     # [B, 1, H] each
        hidden = torch.tanh(w * (x - t))                                        # [B, M, H]
        return self.scale * (a * hidden).sum(-1, keepdim=True) / math.sqrt(self.hidden)
