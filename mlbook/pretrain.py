"""Pre-training: the baseline every few-shot learner must beat (Chapter 5).

Chen et al. (2019) and Tian et al. (2020) showed that a plain classifier trained on all the
training classes at once, with ordinary cross-entropy mini-batches, gives an embedding in which
new classes are told apart about as well as, or better than, in a meta-learned one. Nothing
here is episodic: :func:`pretrain` trains an embedding network and a throw-away linear head
over every training class, and returns the embedding in the state format of
:class:`~mlbook.learners.protonet.ProtoNet`, so that a test episode is classified by its
nearest prototype in that embedding with the same code (and the same evaluator) as ProtoNet.

    f_phi, W = argmin  E_{(x, c) ~ training classes}  CE(W f_phi(x), c)      (pre-training)
    test:      c_n = mean of f_phi(x) over the support examples of class n;
               y(x) = argmin_n d(f_phi(x), c_n)                             (nearest prototype)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .models import init_params
from .taskmap import call
from .train import PRECISIONS, precision_context
from .utils import check_choice, check_positive, check_positive_int, make_generator, progress

__all__ = ["PretrainResult", "pretrain", "sample_labelled_images"]


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns (Chapter 5).

    ``state`` is ``{"params": embedding parameters}``, ready for ``ProtoNet(model)``;
    ``head`` the linear classifier's ``weight`` and ``bias`` over the training classes;
    ``losses`` and ``accuracies`` one entry per step; ``images_seen`` how many images were
    processed (steps x batch size), the unit in which Chapter 5 matches compute; ``seconds``
    how long the training took.
    """

    state: dict
    head: dict
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    images_seen: int = 0
    num_classes: int = 0
    seconds: float = 0.0


def sample_labelled_images(images: torch.Tensor, batch_size: int, generator: torch.Generator,
                           classes: torch.Tensor | None = None, rotate: bool = False):
    """A mini-batch of ``(x [B, 1, H, W] in [0, 1], y [B])`` drawn uniformly over classes (Chapter 5).

    ``y`` indexes the pool ``classes`` (all classes when ``None``); with ``rotate`` each class
    turned by 90, 180 or 270 degrees is a class of its own, ``y + k * len(pool)`` for k turns,
    as in episodic sampling with ``rotate=True``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be a tensor [classes, examples, H, W]")
    batch_size = check_positive_int("batch_size", batch_size)
    device = images.device
    pool = (torch.arange(images.shape[0], device=device) if classes is None
            else torch.as_tensor(classes, device=device).long())
    if pool.dim() != 1 or pool.numel() < 2:
        raise ValueError(f"classes must be a 1-D tensor of at least two class indices, got shape {tuple(pool.shape)}")
    if pool.min() < 0 or pool.max() >= images.shape[0]:
        raise ValueError(f"classes must index 0..{images.shape[0] - 1}")
    if rotate and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate=True needs square images, got {tuple(images.shape[-2:])}")
    available = pool.numel() * (4 if rotate else 1)
    y = torch.randint(available, (batch_size,), generator=generator, device=device)
    example = torch.randint(images.shape[1], (batch_size,), generator=generator, device=device)
    x = images[pool[y % pool.numel()], example]
    if rotate:
        turns = y // pool.numel()
        for k in range(1, 4):
            mask = turns == k
            if mask.any():
                x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
    x = x.float().mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x.float()
    return x[:, None], y


def pretrain(model: nn.Module, images: torch.Tensor, steps: int | None = None, batch_size: int = 128,
             lr: float = 3e-3, seed: int = 0, classes: torch.Tensor | None = None,
             rotate: bool = False, desc: str = "pre-training", *, time_limit: float | None = None,
             precision: str = "float32", augment=None, channels: int | None = None,
             dense: bool = False) -> PretrainResult:
    """Train ``model`` (an embedding, e.g. ``Conv4(out_features=0)``) and a linear head to classify
    every training class, with Adam on cross-entropy mini-batches (Chapter 5).

    ``images [classes, examples, H, W]``; ``classes`` restricts training to a pool (the
    training split), ``rotate`` adds the rotated classes. The run is seeded: the weights
    from ``seed``, the mini-batches from a generator seeded by ``seed`` too. The head is
    discarded at test time; the returned ``state`` is the embedding alone.

    It stops after ``steps`` or after ``time_limit`` seconds, whichever comes first (one of
    them is needed). ``precision`` 'bfloat16' computes the loss under autocast, as the trainer
    does; ``augment`` (e.g. :class:`~mlbook.augment.AffineJitter`) transforms each mini-batch
    with its ``images(x, generator)``. ``channels``: the embedding is a flattened
    ``channels x P`` feature map (ProtoNet's local similarity), and the head reads the mean of
    its P local descriptors; with ``dense`` it classifies each descriptor on its own and averages
    the P losses (dense classification, Lifchitz et al., 2019), so that every place of the map
    learns to name the character.
    """
    if steps is None and time_limit is None:
        raise ValueError("pretrain needs steps or time_limit (seconds), or both")
    steps = None if steps is None else check_positive_int("steps", steps)
    time_limit = None if time_limit is None else check_positive("time_limit", time_limit)
    precision = check_choice("precision", precision, PRECISIONS)
    channels = None if channels is None else check_positive_int("channels", channels)
    if dense and channels is None:
        raise ValueError("dense=True classifies each local descriptor: it needs channels, the feature map's channels")
    if augment is not None and not callable(getattr(augment, "images", None)):
        raise ValueError("augment must have an images(x, generator) method, like mlbook.augment.AffineJitter")
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = images.device
    generator = make_generator(seed, device)
    params = init_params(model, seed, device=device)
    probe, _ = sample_labelled_images(images, 2, make_generator(seed, device), classes, rotate)

    def embed(x):
        z = call(model, params, x)
        if channels is None:
            return z
        places = z.unflatten(-1, (channels, -1))
        return places.transpose(-1, -2) if dense else places.mean(-1)     # [B, P, C] or [B, C]

    with torch.no_grad():
        width = embed(probe).shape[-1]
    num_classes = (images.shape[0] if classes is None else len(classes)) * (4 if rotate else 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 1)
        head_module = nn.Linear(width, num_classes)
    head = {k: v.detach().to(device).requires_grad_(True) for k, v in head_module.named_parameters()}
    optimiser = torch.optim.Adam([*params.values(), *head.values()], lr=lr)
    losses, accuracies = [], []
    started = time.perf_counter()
    bar = progress(total=steps, desc=desc)
    while (steps is None or len(losses) < steps) and (
            time_limit is None or time.perf_counter() - started < time_limit):
        x, y = sample_labelled_images(images, batch_size, generator, classes, rotate)
        if augment is not None:
            x = augment.images(x, generator)
        with precision_context(precision, device.type):
            logits = F.linear(embed(x), head["weight"], head["bias"])
        if dense:
            logits, y = logits.flatten(0, 1), y.repeat_interleave(logits.shape[1])
        loss = F.cross_entropy(logits.float(), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        accuracies.append((logits.argmax(-1) == y).float().mean().item())
        bar.update()
    bar.close()
    detach = lambda d: {k: v.detach().requires_grad_(True) for k, v in d.items()}  # noqa: E731
    return PretrainResult(state={"params": detach(params)}, head=detach(head), losses=losses,
                          accuracies=accuracies, images_seen=len(losses) * batch_size, num_classes=num_classes,
                          seconds=time.perf_counter() - started)
