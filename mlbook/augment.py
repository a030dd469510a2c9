"""Training-time augmentation of episodes (Chapter 5).

An augmentation is a callable ``(episode, generator) -> episode``, the trainer's ``augment``
hook; it draws its randomness from the trainer's generator, so runs stay reproducible.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tasks import Episode

__all__ = ["AffineJitter"]


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
