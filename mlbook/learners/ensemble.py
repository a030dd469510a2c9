"""An ensemble of trained classifiers behind the learner interface (Chapter 5).

Averaging the class log-probabilities of a few independently trained networks is the oldest
reliable way to buy accuracy with compute: their errors are partly independent, so the average
is right more often than its members. Chapter 5 uses it for Lake's one-shot challenge, where
six 10-minute ProtoNets trained two at a time fill the same 30 minutes of a 2-core CPU as one
long run, which stops improving after about ten minutes.

An :class:`Ensemble` is not a training algorithm (it is not in the registry, and the trainer
does not train it); it adapts and predicts, so evaluation, test-time augmentation and the
Lake benchmark take it like any learner.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Learner


class Ensemble(Learner):
    """Trained classifiers whose query log-probabilities are averaged (Chapter 5).

    ``members`` are learners; the ensemble's state is the tuple of their states, in order
    (``Ensemble.state_of(states)`` checks it). ``adapt`` adapts every member to the support
    set, and ``predict`` returns the mean over members of their log-softmax outputs: the
    log of a geometric mean of their class probabilities, up to normalisation.
    """

    def __init__(self, members: Sequence[Learner]):
        members = tuple(members)
        if not members or not all(isinstance(m, Learner) for m in members):
            raise ValueError(f"members must be a non-empty sequence of mlbook learners, got {members!r}")
        regressors = [type(m).__name__ for m in members if m.loss != "cross_entropy"]
        if regressors:
            raise ValueError(f"members must all be classifiers; {', '.join(regressors)} regress")
        fixed = {m.output_classes() for m in members} - {None}
        if len(fixed) > 1:
            raise ValueError(f"members predict different numbers of classes: {sorted(fixed)}")
        super().__init__(loss="cross_entropy", strategy=members[0].strategy, chunk_size=members[0].chunk_size)
        self.members = members
        self.name = f"Ensemble of {len(members)} ({', '.join(sorted({type(m).__name__ for m in members}))})"
        self.tasks = frozenset({"classification"})
        self.any_ways = all(m.any_ways for m in members)
        self.adapts_with_gradients = any(m.adapts_with_gradients for m in members)
        self._classes = fixed.pop() if fixed else None

    def state_of(self, states: Sequence) -> tuple:
        """The ensemble's state from its members' trained states, one per member (Chapter 5)."""
        states = tuple(states)
        if len(states) != len(self.members):
            raise ValueError(f"states must hold one state per member ({len(self.members)}), got {len(states)}")
        return states

    def init(self, seed: int, *, dtype=None, device=None) -> tuple:
        """Fresh members, seeded ``seed``, ``seed + 1``, ... (an ensemble is normally built from trained ones)."""
        return tuple(m.init(seed + i, dtype=dtype, device=device) for i, m in enumerate(self.members))

    def adapt(self, state, support_x: torch.Tensor, support_y: torch.Tensor):
        """Every member adapted to the support set, in order (Chapter 5)."""
        return tuple(m.adapt(s, support_x, support_y) for m, s in zip(self.members, state))

    def predict(self, task_state, x: torch.Tensor) -> torch.Tensor:
        """The members' class log-probabilities at ``x``, averaged (Chapter 5)."""
        log_probs = [m.predict(s, x).log_softmax(-1) for m, s in zip(self.members, task_state)]
        return torch.stack(log_probs).mean(0)

    def output_classes(self) -> int | None:
        """The members' fixed number of classes, or None when they all score any number (Chapter 5)."""
        return self._classes

    def validate_episode(self, state, episode) -> None:
        """Raise a clear error unless every member can score ``episode`` with its state (Chapter 5)."""
        state = self.state_of(state)
        for member, member_state in zip(self.members, state):
            member.validate_episode(member_state, episode)

    def __repr__(self) -> str:
        return f"Ensemble({list(self.members)!r})"
