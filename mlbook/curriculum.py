"""Curricula over tasks: the order in which a meta-learner meets easy and hard tasks (Chapter 6).

Children do not meet the world in a random order: they learn simple things first, and each
skill makes the next one easier to learn (Bengio et al., 2009, call this a curriculum).
:class:`CurriculumFamily` wraps a *difficulty-indexed* task family: it looks like any task
family to :func:`mlbook.train.meta_train` (``.device`` and ``.sample(batch_size, generator)``),
and the difficulty of the tasks it hands out follows a schedule over the training steps.

Orders (all see exactly the same multiset of difficulties, so only the order differs):

* ``"easy_to_hard"``: difficulty rises linearly from ``start`` to 1 over the first ``ramp``
  fraction of the steps, then stays at 1;
* ``"random"``: the same difficulties in a random (seeded) order;
* ``"hard_to_easy"``: the easy-to-hard schedule reversed (an anti-curriculum).

``"target"`` (always difficulty 1, the usual training) is offered as a baseline; it sees
different tasks, the harder ones only.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .tasks import Episode, SinusoidFamily, TaskFamily
from .utils import check_choice, check_positive_int

__all__ = ["CurriculumFamily", "difficulty_schedule", "sinusoid_at_difficulty", "ORDERS"]

ORDERS = ("easy_to_hard", "random", "hard_to_easy", "target")


def difficulty_schedule(steps: int, order: str = "easy_to_hard", start: float = 0.0,
                        ramp: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The difficulty in [0, 1] of every training step under ``order`` (Chapter 6).

    ``start`` is the first difficulty of the easy-to-hard ramp and ``ramp`` the fraction of
    the steps it takes to reach difficulty 1.
    """
    steps = check_positive_int("steps", steps)
    check_choice("order", order, ORDERS)
    if not 0.0 <= float(start) <= 1.0:
        raise ValueError(f"start must be a difficulty in [0, 1], got {start!r}")
    if not 0.0 < float(ramp) <= 1.0:
        raise ValueError(f"ramp must be a fraction of the steps in (0, 1], got {ramp!r}")
    if order == "target":
        return torch.ones(steps, dtype=torch.float64)
    ramp_steps = max(1, math.ceil(ramp * steps))
    rising = torch.linspace(float(start), 1.0, ramp_steps, dtype=torch.float64)
    schedule = torch.cat([rising, torch.ones(steps - ramp_steps, dtype=torch.float64)])[:steps]
    if order == "hard_to_easy":
        return schedule.flip(0)
    if order == "random":
        g = torch.Generator().manual_seed(int(seed))
        return schedule[torch.randperm(steps, generator=g)]
    return schedule


class CurriculumFamily:
    """A task family whose difficulty follows a schedule over training steps (Chapter 6).

    ``make_family(difficulty)`` returns a task family for a difficulty in [0, 1]; difficulty 1
    is the target distribution the learner is evaluated on. Each call to :meth:`sample`
    uses the current step's difficulty and then advances the step counter, so pass it
    straight to ``meta_train`` as the family (one sample per outer step). After ``steps``
    samples it stays at the schedule's last difficulty. :meth:`reset` rewinds it.

    The step counter lives here, not in the trainer's checkpoint: when resuming a run from a
    checkpoint, set ``family.step`` to the step it resumes from.
    """

    def __init__(self, make_family: Callable[[float], TaskFamily], steps: int,
                 order: str = "easy_to_hard", start: float = 0.0, ramp: float = 0.5, seed: int = 0):
        if not callable(make_family):
            raise ValueError("make_family must be a function difficulty -> task family")
        self.make_family = make_family
        self.order = check_choice("order", order, ORDERS)
        self.schedule = difficulty_schedule(steps, order, start, ramp, seed)
        self.target = make_family(1.0)
        self.device = self.target.device
        self.step = 0
        self.history: list[float] = []

    @property
    def difficulty(self) -> float:
        """The difficulty of the next sample."""
        return float(self.schedule[min(self.step, len(self.schedule) - 1)])

    def sample(self, batch_size: int, generator: torch.Generator) -> Episode:
        """Draw ``batch_size`` tasks at the current difficulty and advance one step (Chapter 6)."""
        difficulty = self.difficulty
        family = self.target if difficulty == 1.0 else self.make_family(difficulty)
        episode = family.sample(batch_size, generator)
        self.history.append(difficulty)
        self.step += 1
        return episode

    def reset(self) -> "CurriculumFamily":
        """Rewind to step 0 (to train again with the same schedule)."""
        self.step = 0
        self.history = []
        return self

    def __repr__(self) -> str:
        return f"CurriculumFamily(order={self.order!r}, steps={len(self.schedule)}, step={self.step})"


def sinusoid_at_difficulty(difficulty: float, shots: int = 10, queries: int = 10,
                           noise: float = 0.0, device="cpu") -> SinusoidFamily:
    """Sinusoid tasks whose spread grows with ``difficulty`` in [0, 1] (Chapter 6).

    Difficulty 1 is the MAML sinusoid family (amplitude in [0.1, 5], phase in [0, pi]).
    Lower difficulties narrow both ranges towards small amplitudes and phase 0, so the easy
    tasks are similar to one another and a good initialisation nearly solves them all.
    """
    difficulty = float(difficulty)
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    amp_high = 0.1 + 4.9 * max(difficulty, 0.02)
    return SinusoidFamily(shots=shots, queries=queries, amplitude=(0.1, amp_high),
                          phase=(0.0, math.pi * difficulty), noise=noise, device=device)
