"""Input checks and batching helpers shared by the context-reading learners (Chapter 4).

The model-based (:class:`~mlbook.learners.cnp.CNP`) and black-box
(:class:`~mlbook.learners.blackbox.BlackBox`) learners read a support set directly instead
of taking gradient steps, so they check it at the boundary themselves.
"""
from __future__ import annotations

import torch
from torch import nn

from ..tasks import Episode
from ..utils import check_positive_int
from .base import Learner, LearnerConfig

__all__ = ["ContextLearner", "check_support", "check_inputs", "check_ways_and_image_size", "check_episode_shape", "probe_feature_size"]


def check_ways_and_image_size(ways, image_size) -> tuple[int | None, int | None]:
    """Validate the optional ``ways`` (classification) and ``image_size`` arguments (Chapter 4)."""
    ways = None if ways is None else check_positive_int("ways", ways)
    if ways is not None and ways < 2:
        raise ValueError(f"ways must be at least 2 for classification, got {ways}")
    if image_size is not None:
        image_size = check_positive_int("image_size", image_size)
        if ways is None:
            raise ValueError("image_size needs ways: image tasks are N-way classification here")
    return ways, image_size


def check_inputs(x: torch.Tensor, feature_shape: tuple, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is ``[M, *feature_shape]`` (one task, no batch axis)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 + len(feature_shape) or tuple(x.shape[1:]) != tuple(feature_shape):
        raise ValueError(f"{name} must have shape [examples, {', '.join(map(str, feature_shape))}] "
                         f"for one task; got {tuple(x.shape)}")


def check_support(support_x: torch.Tensor, support_y: torch.Tensor, feature_shape: tuple,
                  ways: int | None, y_dim: int) -> None:
    """Validate one task's support set for a regression (``ways=None``) or N-way learner."""
    check_inputs(support_x, feature_shape, "support_x")
    if support_x.shape[0] == 0:
        raise ValueError("the support set has no examples: a learner needs at least one")
    if not isinstance(support_y, torch.Tensor) or support_y.shape[:1] != support_x.shape[:1]:
        got = tuple(support_y.shape) if isinstance(support_y, torch.Tensor) else type(support_y).__name__
        raise ValueError(f"support_y must have one label per support example "
                         f"({support_x.shape[0]}); got {got}")
    if ways is None:
        if support_y.dim() != 2 or support_y.shape[1] != y_dim:
            raise ValueError(f"support_y must have shape [examples, {y_dim}] for regression; "
                             f"got {tuple(support_y.shape)}")
    else:
        if support_y.dim() != 1 or support_y.dtype.is_floating_point or support_y.dtype == torch.bool:
            raise ValueError(f"support_y must be a 1-D integer tensor of class labels; "
                             f"got dtype {support_y.dtype}, shape {tuple(support_y.shape)}")
        if support_y.min() < 0 or support_y.max() >= ways:
            raise ValueError(f"support_y must hold labels in 0..{ways - 1} (ways={ways}); "
                             f"got values from {support_y.min().item()} to {support_y.max().item()}")


def check_episode_shape(episode, feature_shape: tuple) -> None:
    """Raise a clear error unless ``episode`` is an Episode whose inputs end in ``feature_shape``."""
    if not isinstance(episode, Episode):
        raise ValueError(f"episode must be an mlbook.tasks.Episode, got {type(episode).__name__}")
    for name in ("support_x", "query_x"):
        x = getattr(episode, name)
        if tuple(x.shape[2:]) != tuple(feature_shape):
            raise ValueError(f"episode.{name} must have shape [B, M, "
                             f"{', '.join(map(str, feature_shape))}]; got {tuple(x.shape)}")


def probe_feature_size(features: nn.Module, shape: tuple) -> int:
    """The output width of an image feature extractor, found by one probe forward pass (Chapter 4)."""
    if not isinstance(features, nn.Module):
        raise ValueError(f"features must be a torch.nn.Module, got {type(features).__name__}")
    with torch.no_grad():
        out = features(torch.zeros(2, *shape))
    if out.dim() != 2:
        raise ValueError(f"features must map [M, {', '.join(map(str, shape))}] images to [M, F] "
                         f"vectors; it gave shape {tuple(out.shape)}")
    return out.shape[1]


class ContextLearner(Learner):
    """Base of the learners that read a support set instead of taking gradient steps (Chapter 4).

    Regression (``ways=None``) of ``[M, x_dim]`` inputs to ``[M, y_dim]`` targets, or ``ways``-way
    classification of vectors, or of ``[M, 1, S, S]`` images when ``image_size=S``.
    """

    def __init__(self, x_dim: int = 1, y_dim: int = 1, ways: int | None = None, image_size: int | None = None):
        self.ways, self.image_size = check_ways_and_image_size(ways, image_size)
        super().__init__(loss="mse" if self.ways is None else "cross_entropy", strategy="loop")
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.y_dim = check_positive_int("y_dim", y_dim)

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "ContextLearner":
        """The default model for the config's task: 1-D regression, or ``ways``-way images (Chapter 4)."""
        if config.regression:
            return cls()
        return cls(ways=config.ways, image_size=config.image_size, channels=min(config.channels, 32))
