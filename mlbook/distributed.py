"""Sharding a meta-batch across processes with ``torch.distributed`` (Chapter 5).

Every process draws the same meta-batch from the same seeded generator, keeps its own slice
of the tasks, and back-propagates its slice's share of the mean meta-loss. Summing the
gradients over processes (all-reduce) then gives exactly the gradient of the full meta-batch,
so N processes reproduce one process up to floating-point rounding.

Launch with ``torchrun --nproc_per_node=N -m mlbook train ...``: gloo on CPU, NCCL on GPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .tasks import Episode

__all__ = ["World", "world", "init_from_env", "shard_episode", "all_reduce_gradients",
           "all_reduce_mean", "broadcast_state", "shutdown"]


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (size 1 without ``torch.distributed``; Chapter 5)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The current process group as a :class:`World` (rank 0 of 1 when not distributed; Chapter 5)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: torch.device | str = "cpu") -> World:
    """Join the process group that ``torchrun`` describes in the environment (Chapter 5).

    Uses NCCL for CUDA devices and gloo otherwise; does nothing outside ``torchrun``
    (no ``WORLD_SIZE`` in the environment) and returns rank 0 of 1.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        device = torch.device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return world()


def shutdown() -> None:
    """Leave the process group, if one was joined (Chapter 5)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_episode(episode: Episode, current: World | None = None) -> tuple[Episode, float]:
    """This process's slice of a meta-batch and its weight ``slice size / batch size`` (Chapter 5).

    Tasks are split into contiguous, nearly equal slices. A process whose slice would be
    empty (more processes than tasks) is refused, since it would contribute nothing.
    """
    current = current or world()
    if current.size == 1:
        return episode, 1.0
    total = episode.batch_size
    if total < current.size:
        raise ValueError(f"meta_batch_size ({total}) must be at least the number of processes "
                         f"({current.size}) so that every process gets a task")
    bounds = [round(r * total / current.size) for r in range(current.size + 1)]
    lo, hi = bounds[current.rank], bounds[current.rank + 1]
    shard = Episode(episode.support_x[lo:hi], episode.support_y[lo:hi],
                    episode.query_x[lo:hi], episode.query_y[lo:hi])
    return shard, (hi - lo) / total


def all_reduce_gradients(parameters) -> None:
    """Sum every parameter's gradient over processes, in place (Chapter 5).

    Each process back-propagated ``weight * mean loss of its slice``, so the sum is the
    gradient of the full meta-batch's mean loss.
    """
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over processes (for logging the full meta-batch's loss; Chapter 5)."""
    value = value.detach().clone().float()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world().size


def broadcast_state(state) -> None:
    """Copy rank 0's tensors to every process, so all start from the same phi (Chapter 5)."""
    with torch.no_grad():
        for leaf in torch.utils._pytree.tree_leaves(state):
            if isinstance(leaf, torch.Tensor):
                dist.broadcast(leaf.data, src=0)
