"""Lake's one-shot classification benchmark and an honest proxy for it (Chapter 5).

Lake, Salakhutdinov and Tenenbaum (2015) score one-shot learning on Omniglot with 20 runs of
20-way *within-alphabet* one-shot classification: each run shows one drawing of each of 20
characters from one evaluation alphabet, then 20 new drawings (by other people) to classify.
Within an alphabet the characters share strokes and style, so the task is harder than 20-way
episodes whose classes come from anywhere. This module

* evaluates a learner on Lake's runs (``all_runs.zip`` or its folder) -> a JSON-ready dict;
* samples within-alphabet episodes (:class:`AlphabetFamily`), for training and for the proxy:
  20-way within-alphabet one-shot episodes from alphabets held out of training;
* offers :class:`AffineJitter`, a small random affine transform of every image of an episode.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F

from .tasks import Episode, sample_nway_kshot
from .train import confidence_interval
from .utils import check_positive_int, make_generator

__all__ = ["AlphabetFamily", "AffineJitter", "split_alphabets", "lake_runs_result",
           "proxy_result", "LAKE_REFERENCE_ERROR_PCT"]

# Error rates (%) reported by Lake et al. (2015) on the 20 runs.
LAKE_REFERENCE_ERROR_PCT = {"people": 4.5, "Bayesian program learning": 3.3,
                            "modified Hausdorff distance": 38.8}


def split_alphabets(alphabets: Sequence[str], holdout: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class indices of the training alphabets and of the held-out ones (Chapter 5).

    ``alphabets`` names each class's alphabet; ``holdout`` lists alphabet names to hold out.
    Unknown names raise ``ValueError`` listing the alphabets there are.
    """
    known = sorted(set(alphabets))
    unknown = [name for name in holdout if name not in known]
    if unknown:
        raise ValueError(f"holdout alphabets {unknown} are not in the data; choose from {known}")
    held = set(holdout)
    train = torch.tensor([i for i, a in enumerate(alphabets) if a not in held], dtype=torch.long)
    test = torch.tensor([i for i, a in enumerate(alphabets) if a in held], dtype=torch.long)
    return train, test


class AlphabetFamily:
    """N-way K-shot episodes whose N classes come from one alphabet (Chapter 5).

    ``images [classes, examples, H, W]``; ``alphabets`` names each class's alphabet;
    ``classes`` restricts the pool (e.g. training alphabets only). Each episode picks an
    alphabet uniformly among those with at least ``ways`` classes in the pool, then ``ways``
    of its classes. With ``within < 1`` an episode is within-alphabet only with that
    probability and otherwise draws its classes from the whole pool. ``rotate`` turns each
    class by a random multiple of 90 degrees (a new class, as in the usual augmentation).
    """

    def __init__(self, images: torch.Tensor, alphabets: Sequence[str], ways: int = 20, shots: int = 1,
                 queries: int = 1, classes: torch.Tensor | None = None, within: float = 1.0,
                 rotate: bool = False, device=None):
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
                                              generator, classes=pool, rotate=self.rotate))
            names.append(name)
        batch = Episode(*(torch.cat([getattr(e, f) for e in episodes])
                          for f in ("support_x", "support_y", "query_x", "query_y")))
        return (batch, names) if return_alphabets else batch


class AffineJitter:
    """Random small affine transforms of every image of an episode (training augmentation; Chapter 5).

    Each image is rotated by up to ``degrees``, scaled by up to ``scale`` (a fraction),
    sheared by up to ``shear`` (radians) and shifted by up to ``shift`` (a fraction of the
    width). Call as ``jitter(episode, generator) -> episode``; the trainer's ``augment`` hook.
    """

    def __init__(self, degrees: float = 10.0, scale: float = 0.1, shear: float = 0.1, shift: float = 0.1):
        for name, value in (("degrees", degrees), ("scale", scale), ("shear", shear), ("shift", shift)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.degrees, self.scale, self.shear, self.shift = float(degrees), float(scale), float(shear), float(shift)

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Jitter a stack of images ``[..., C, H, W]``."""
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        n, device = flat.shape[0], flat.device

        def uniform(bound):
            return (2 * torch.rand(n, generator=generator, device=device) - 1) * bound

        angle = uniform(math.radians(self.degrees))
        scale = 1 + uniform(self.scale)
        shear = uniform(self.shear)
        tx, ty = uniform(2 * self.shift), uniform(2 * self.shift)    # grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1),
                             torch.stack([sin, cos, ty], 1)], 1)           # [n, 2, 3]
        grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(shape)

    def __call__(self, episode: Episode, generator: torch.Generator) -> Episode:
        return Episode(self.images(episode.support_x, generator), episode.support_y,
                       self.images(episode.query_x, generator), episode.query_y)

    def __repr__(self) -> str:
        return (f"AffineJitter(degrees={self.degrees}, scale={self.scale}, shear={self.shear}, "
                f"shift={self.shift})")


def _per_task_error(learner, state, episode: Episode, batch_size: int = 20) -> torch.Tensor:
    errors = []
    for part in episode.chunks(batch_size):
        errors.append(100.0 * (1.0 - learner.evaluate_batch(state, part)["accuracy"].float().cpu()))
    return torch.cat(errors)


def lake_runs_result(learner, state, runs_path, image_size: int = 28, device="cpu") -> dict:
    """Score a learner on Lake's 20 runs; a JSON-ready dict with the error rates (Chapter 5).

    ``runs_path`` is ``all_runs.zip`` or its unpacked folder. Returns ``mean_error_pct``,
    ``per_run_error_pct`` (one number per run), ``runs`` (their names) and the published
    reference error rates.
    """
    from .data.omniglot import read_lake_runs

    episode, names = read_lake_runs(runs_path, image_size=image_size)
    errors = _per_task_error(learner, state, episode.to(device))
    return {"benchmark": "lake2015 20-way within-alphabet one-shot", "runs": list(names),
            "mean_error_pct": round(errors.mean().item(), 4),
            "per_run_error_pct": [round(e, 4) for e in errors.tolist()],
            "reference_error_pct": LAKE_REFERENCE_ERROR_PCT}


def proxy_result(learner, state, images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor,
                 episodes: int = 600, ways: int = 20, seed: int = 2015, device="cpu") -> dict:
    """The honest stand-in for Lake's runs: within-alphabet 20-way 1-shot episodes (Chapter 5).

    ``classes`` must be classes of alphabets held out of training. Like a run, every episode
    has one drawing per character to learn from and one other drawing per character to
    classify. Returns ``mean_error_pct`` with ``ci95_pct``, ``per_run_error_pct`` (one number
    per episode) and the mean error of each held-out alphabet.
    """
    episodes = check_positive_int("episodes", episodes)
    family = AlphabetFamily(images, alphabets, ways=ways, shots=1, queries=1, classes=classes,
                            within=1.0, device=device)
    generator = make_generator(seed, family.device)
    errors, names = [], []
    remaining = episodes
    while remaining > 0:
        batch, batch_names = family.sample(min(20, remaining), generator, return_alphabets=True)
        errors.append(_per_task_error(learner, state, batch))
        names += batch_names
        remaining -= batch.batch_size
    errors = torch.cat(errors)
    mean, ci95 = confidence_interval(errors)
    per_alphabet = {name: round(errors[[i for i, n in enumerate(names) if n == name]].mean().item(), 4)
                    for name in sorted(set(names))}
    return {"benchmark": f"proxy: {ways}-way within-alphabet one-shot on held-out alphabets",
            "alphabets": sorted(set(names)), "episodes": episodes,
            "mean_error_pct": round(mean, 4), "ci95_pct": round(ci95, 4),
            "per_alphabet_error_pct": per_alphabet,
            "per_run_error_pct": [round(e, 4) for e in errors.tolist()],
            "reference_error_pct": LAKE_REFERENCE_ERROR_PCT}
