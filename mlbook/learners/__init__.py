"""Every learner of the book behind one interface (see :mod:`mlbook.learners.base`).

Each module of this package defines learners; a learner class with a ``name`` registers itself,
so :func:`registry` finds every algorithm without a list kept by hand (Chapter 4's taxonomy,
the command line and the contract tests all read it). A new algorithm is one new file here.
"""
from importlib import import_module
from pkgutil import iter_modules

from .base import KINDS, TASKS, Learner, LearnerConfig, registered_learners, task_accuracy, task_loss
from .ensemble import Ensemble

for _module in iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        import_module(f".{_module.name}", __name__)
# Each learner class is importable from here by its class name (registry() uses its `name`).
globals().update({cls.__name__: cls for cls in registered_learners().values()})


def registry() -> dict:
    """``{name: learner class}`` for every learner of the library, in name order (Chapter 4)."""
    return dict(sorted(registered_learners().items()))


def get_learner(name: str) -> type:
    """The learner class registered as ``name``; a clear error lists the names (Chapter 4)."""
    learners = registry()
    if name not in learners:
        raise ValueError(f"learner must be one of {', '.join(learners)}; got {name!r}")
    return learners[name]


__all__ = ["Learner", "LearnerConfig", "Ensemble", "KINDS", "TASKS", "task_loss", "task_accuracy", "registry",
           "get_learner", *(cls.__name__ for cls in registered_learners().values())]
