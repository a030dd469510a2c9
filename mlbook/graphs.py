"""A meta-step recorded once as a CUDA graph and replayed (Chapter 3).

On a GPU, one MAML meta-step of a small network is a thousand or more small kernels (every
inner step's forward and backward, the query loss, and the backward through all of it), and
Python launches them one by one: for Conv4 on Omniglot the launching costs about as much as the
arithmetic. A CUDA graph records that sequence of kernels once, with fixed input and output
addresses, and replays it with one launch. The numbers are those of the eager step; what
changes is that the host no longer runs the Python, autograd and vmap machinery per step.

What a graph needs, and this class checks: the same shapes and dtypes every step (copied into
the recorded input buffers), the same parameter tensors updated in place (as torch's
optimisers do), and nothing in the step that reads values back to the host. The vmapped and
chunked meta-steps of the gradient-based learners qualify; steps that read a count from the
labels (the metric learners' number of classes) or turn rates into Python numbers (the MLP's
closed form) cannot be recorded, and say so.
"""
from __future__ import annotations

import torch

from .tasks import Episode

__all__ = ["GraphedMetaStep"]

_FIELDS = ("support_x", "support_y", "query_x", "query_y")


class GraphedMetaStep:
    """``learner.meta_backward(state, episode)`` recorded as a CUDA graph (Chapter 3).

    Build it with one example episode (it runs ``warmup`` eager steps on a side stream, then
    records one); then ``step(episode, scale)`` copies the episode in, replays the graph and adds
    the meta-gradient into each parameter's ``.grad``, as ``meta_backward`` does, returning
    ``(loss, accuracy or None)``. The recorded step keeps its own memory pool for the graph's
    lifetime.
    """

    def __init__(self, learner, state, episode: Episode, warmup: int = 3):
        if not isinstance(episode, Episode):
            raise ValueError(f"episode must be an mlbook.tasks.Episode, got {type(episode).__name__}")
        device = episode.support_x.device
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the episode on a CUDA device; it is on {device}")
        learner.validate_episode(state, episode)
        self.learner, self.state = learner, state
        self.params = learner.parameters(state)
        if any(p.device != device for p in self.params):
            raise ValueError(f"the learner's state must be on {device}, like the episode")
        self.inputs = Episode(*(getattr(episode, name).clone() for name in _FIELDS))
        saved = [p.grad for p in self.params]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # Eager steps first, off the default stream: cuDNN picks its algorithms and autograd and
        # the allocator set up, none of which may happen while recording.
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._clear_grads()
                learner.meta_backward(state, self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self._clear_grads()
        self.graph = torch.cuda.CUDAGraph()
        learner._episode_checked = True
        try:
            with torch.cuda.graph(self.graph):
                loss, accuracy = learner.meta_backward(state, self.inputs)
        except RuntimeError as error:
            for p, grad in zip(self.params, saved):
                p.grad = grad
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{learner!r}'s meta-step could not be recorded as a CUDA graph ({first_line}); "
                             "a step that reads values back to the host cannot be: train it without "
                             "cuda_graph") from error
        finally:
            learner._episode_checked = False
        self.loss, self.accuracy = loss, accuracy
        # The recorded gradients: rewritten in place by every replay.
        self.grads = [p.grad for p in self.params]
        for p, grad in zip(self.params, saved):
            p.grad = grad

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, episode: Episode, scale: float = 1.0):
        """Replay the recorded meta-step on ``episode``; add ``scale`` x its gradient to ``.grad`` (Chapter 3)."""
        if not isinstance(episode, Episode):
            raise ValueError(f"episode must be an mlbook.tasks.Episode, got {type(episode).__name__}")
        for name in _FIELDS:
            new, recorded = getattr(episode, name), getattr(self.inputs, name)
            if new.shape != recorded.shape or new.dtype != recorded.dtype or new.device != recorded.device:
                raise ValueError(f"episode.{name} is {tuple(new.shape)} {new.dtype} on {new.device}, but the "
                                 f"graph was recorded for {tuple(recorded.shape)} {recorded.dtype} on "
                                 f"{recorded.device}: record another GraphedMetaStep for this shape")
        params = self.learner.parameters(self.state)
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            raise ValueError("the learner's state holds other parameter tensors than when the graph was "
                             "recorded; update them in place (as torch's optimisers do) or record again")
        self.learner.validate_episode(self.state, episode)
        for name in _FIELDS:
            getattr(self.inputs, name).copy_(getattr(episode, name))
        self.graph.replay()
        # Copies out of the recorded buffers, which the next replay overwrites.
        pairs = [(p, g) for p, g in zip(self.params, self.grads) if g is not None]
        fresh = torch._foreach_mul([g for _, g in pairs], float(scale)) if pairs else []
        for (p, _), grad in zip(pairs, fresh):
            p.grad = grad if p.grad is None else p.grad.add_(grad)
        accuracy = None if self.accuracy is None else self.accuracy.clone()
        return self.loss.clone(), accuracy
