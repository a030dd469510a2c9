"""Augmentation of episodes: random at training time, fixed views at test time (Chapter 5).

A training augmentation is a callable ``(episode, generator) -> episode``, the trainer's
``augment`` hook; it draws its randomness from the trainer's generator, so runs stay
reproducible. A test-time augmentation (:class:`ShiftedViews`) is a fixed set of views of each
image, which the evaluator scores together (``views=`` of :meth:`Learner.evaluate_batch`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tasks import Episode

__all__ = ["AffineJitter", "ElasticWarp", "StrokeThickness", "PartErasure", "Chain", "ShiftedViews"]


def _check_non_negative(name: str, value) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


class _ImageAugmentation:
    """Applies ``images(x, generator)`` to the support and the query images of an episode."""

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, episode: Episode, generator: torch.Generator) -> Episode:
        return Episode(self.images(episode.support_x, generator), episode.support_y,
                       self.images(episode.query_x, generator), episode.query_y)



class AffineJitter(_ImageAugmentation):
    """Random small affine transforms of every image of an episode (training augmentation; Chapter 5).

    Each image is rotated by up to ``degrees``, scaled by up to ``scale`` (a fraction),
    sheared by up to ``shear`` (radians) and shifted by up to ``shift`` (a fraction of the
    width). Call as ``jitter(episode, generator) -> episode``; the trainer's ``augment`` hook.
    """

    def __init__(self, degrees: float = 10.0, scale: float = 0.1, shear: float = 0.1, shift: float = 0.1):
        self.degrees, self.scale, self.shear, self.shift = (
            _check_non_negative(name, value)
            for name, value in (("degrees", degrees), ("scale", scale), ("shear", shear), ("shift", shift)))

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

    def __repr__(self) -> str:
        return (f"AffineJitter(degrees={self.degrees}, scale={self.scale}, shear={self.shear}, "
                f"shift={self.shift})")


class ElasticWarp(_ImageAugmentation):
    """Smooth random warps of every image, like a different hand drawing the same strokes (Chapter 5).

    A displacement field of ``grid`` x ``grid`` random vectors, up to ``pixels`` long, is
    interpolated smoothly over the image and each pixel is moved by it: strokes bend and
    their junctions shift, which an affine transform cannot do.
    """

    def __init__(self, pixels: float = 1.5, grid: int = 4):
        self.pixels = _check_non_negative("pixels", pixels)
        if not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an integer of at least 2, got {grid!r}")
        self.grid = grid

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Warp a stack of images ``[..., C, H, W]``."""
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        n, height, width = flat.shape[0], shape[-2], shape[-1]
        coarse = 2 * torch.rand(n, 2, self.grid, self.grid, generator=generator, device=x.device) - 1
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        # grid_sample coordinates span [-1, 1], so one pixel is 2 / size of them.
        scale = torch.tensor([2 * self.pixels / width, 2 * self.pixels / height], device=x.device)
        identity = torch.eye(2, 3, device=x.device).expand(n, 2, 3)
        grid = F.affine_grid(identity, list(flat.shape), align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1) * scale
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(shape)

    def __repr__(self) -> str:
        return f"ElasticWarp(pixels={self.pixels}, grid={self.grid})"


class StrokeThickness(_ImageAugmentation):
    """Thicker or thinner pen strokes on a random share of the images (Chapter 5).

    With probability ``probability`` an image's strokes (bright on dark) are thickened, with
    the same probability thinned: half-way blends with a 3x3 maximum or minimum, so that a
    28-pixel character keeps its shape and a one-pixel stroke fades rather than vanishes.
    """

    def __init__(self, probability: float = 0.3):
        probability = _check_non_negative("probability", probability)
        if probability > 0.5:
            raise ValueError(f"probability must be at most 0.5 (thicker or thinner, each), got {probability!r}")
        self.probability = probability

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Thicken or thin the strokes of a stack of images ``[..., C, H, W]``."""
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        draw = torch.rand(flat.shape[0], 1, 1, 1, generator=generator, device=x.device)
        thicker = 0.5 * (flat + F.max_pool2d(flat, 3, stride=1, padding=1))
        thinner = 0.5 * (flat - F.max_pool2d(-flat, 3, stride=1, padding=1))
        out = torch.where(draw < self.probability, thicker,
                          torch.where(draw < 2 * self.probability, thinner, flat))
        return out.reshape(shape)

    def __repr__(self) -> str:
        return f"StrokeThickness(probability={self.probability})"


class PartErasure(_ImageAugmentation):
    """A random square of a share of the images wiped blank, as if a part were left out (Chapter 5).

    With probability ``probability`` an image loses a square whose side is ``size`` of the
    image's side, placed at random inside it (random erasing; Zhong et al., 2020). Two drawings
    of one character by different people often differ by a small stroke or a hook that one of
    them left out; a network that must still match the rest learns to rest on every part of a
    character rather than on one.
    """

    def __init__(self, probability: float = 0.5, size: float = 0.25):
        probability, size = _check_non_negative("probability", probability), _check_non_negative("size", size)
        if probability > 1:
            raise ValueError(f"probability must be in [0, 1], got {probability!r}")
        if not 0 < size < 1:
            raise ValueError(f"size (a fraction of the image's side) must be in (0, 1), got {size!r}")
        self.probability, self.size = probability, size

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Erase squares from a stack of images ``[..., C, H, W]``."""
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        n, height, width = flat.shape[0], shape[-2], shape[-1]
        side_y, side_x = max(1, round(self.size * height)), max(1, round(self.size * width))
        draws = torch.rand(n, 3, generator=generator, device=x.device)
        top = (draws[:, 0] * (height - side_y + 1)).floor()
        left = (draws[:, 1] * (width - side_x + 1)).floor()
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side_y)          # [n, H]
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side_x)        # [n, W]
        wiped = in_rows[:, :, None] & in_cols[:, None, :] & (draws[:, 2] < self.probability)[:, None, None]
        return flat.masked_fill(wiped[:, None], 0.0).reshape(shape)

    def __repr__(self) -> str:
        return f"PartErasure(probability={self.probability}, size={self.size})"


class Chain:
    """Several augmentations applied one after another, each with the same generator (Chapter 5)."""

    def __init__(self, *augmentations):
        if not augmentations or not all(callable(a) for a in augmentations):
            raise ValueError("augmentations must be one or more callables (episode, generator) -> episode")
        self.augmentations = augmentations

    def __call__(self, episode: Episode, generator: torch.Generator) -> Episode:
        for augmentation in self.augmentations:
            episode = augmentation(episode, generator)
        return episode

    def images(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Apply each augmentation's ``images`` in turn to a stack of images ``[..., C, H, W]``."""
        for augmentation in self.augmentations:
            if not callable(getattr(augmentation, "images", None)):
                raise ValueError(f"{augmentation!r} transforms episodes only: it has no images(x, generator)")
            x = augmentation.images(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.augmentations))})"


class ShiftedViews:
    """Test-time augmentation: each image and its 8 copies shifted by ``pixels`` (Chapter 5).

    The shifts lie on a 3x3 grid (left/right, up/down and the diagonals), sampled bilinearly
    with empty borders, so a one-shot support image stands for 9 slightly different drawings
    and each query is classified from 9 views. Call as ``views(x)`` on images ``[..., C, H, W]``
    -> ``[9, ..., C, H, W]`` (the first view is ``x`` itself).
    """

    def __init__(self, pixels: float = 1.5):
        self.pixels = _check_non_negative("pixels", pixels)
        if self.pixels == 0:
            raise ValueError("pixels must be positive: a shift of 0 pixels gives 9 copies of the same image")

    def __len__(self) -> int:
        return 9

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or not x.dtype.is_floating_point:
            raise ValueError(f"ShiftedViews needs floating-point images [..., C, H, W], got {tuple(x.shape)} "
                             f"{x.dtype}")
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:])
        height, width = shape[-2], shape[-1]
        offsets = [(dx, dy) for dy in (0, -1, 1) for dx in (0, -1, 1)]
        # grid_sample coordinates span [-1, 1], so one pixel is 2 / size of them.
        theta = torch.tensor([[[1.0, 0.0, 2 * self.pixels * dx / width], [0.0, 1.0, 2 * self.pixels * dy / height]]
                              for dx, dy in offsets], dtype=x.dtype, device=x.device)
        views = [flat]
        for view in theta[1:]:
            grid = F.affine_grid(view.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False)
            views.append(F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        return torch.stack(views).reshape(len(views), *shape)

    def __repr__(self) -> str:
        return f"ShiftedViews(pixels={self.pixels})"
