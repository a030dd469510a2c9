"""Every learner of the book behind one interface (see :mod:`mlbook.learners.base`).

Learners are imported on first use, so ``import mlbook`` stays quick.
"""
from importlib import import_module

from .base import Learner, task_accuracy, task_loss
from .maml import MAML

# name -> module that defines it (Chapter 4's taxonomy lists them all).
_LEARNER_MODULES = {
    "MAML": "maml", "FOMAML": "maml", "ANIL": "anil", "Reptile": "reptile", "IMAML": "imaml",
    "MetaSGD": "metasgd", "ProtoNet": "protonet", "MatchingNet": "matching", "CNP": "cnp",
    "BlackBox": "blackbox",
}

__all__ = ["Learner", "task_loss", "task_accuracy", *_LEARNER_MODULES]


def __getattr__(name):
    if name in _LEARNER_MODULES:
        return getattr(import_module(f".{_LEARNER_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
