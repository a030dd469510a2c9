"""Seeds, devices, experiment budgets and progress bars (Chapter 1, "Learning to learn").

Every experiment in the book takes its size from :func:`budget`, which has a full setting
(what the website shows) and a fast setting (``MLBOOK_FAST=1``, used by the tests).
"""
from __future__ import annotations

import os
import random
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "seed_everything", "get_device", "is_fast", "budget", "progress", "make_generator",
    "check_positive_int", "check_non_negative_int", "check_positive", "check_choice",
]

_DEVICE_ORDER = ("cuda", "mps", "cpu")


class UsageError(ValueError):
    """A command-line mistake: reported as one line with a non-zero exit (Chapter 5).

    Defined here, not in ``mlbook.__main__``: run as ``python -m mlbook`` that module is loaded
    twice (as ``__main__`` and as ``mlbook.__main__``), and each copy would have its own class.
    """


def check_positive_int(name: str, value: Any) -> int:
    """Validate that argument ``name`` is a positive integer and return it (all chapters)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    """Validate that argument ``name`` is an integer of at least 0 and return it (all chapters)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """Validate that argument ``name`` is a positive finite number and return it (all chapters)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Validate that argument ``name`` is one of ``allowed`` and return it (all chapters)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator with that seed.

    Chapter 1 explains why every experiment in the book starts here.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def get_device(name: str | None = None) -> torch.device:
    """Return the best available device (cuda, then mps, then cpu), or the named one.

    ``name`` may be ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    Used by every chapter's setup cell (Chapter 1).
    """
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, (str, torch.device)):
        raise ValueError(f"device must be a string such as 'cpu', 'cuda' or 'mps', got {name!r}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device must be one of 'auto', {', '.join(map(repr, _DEVICE_ORDER))} "
            f"(optionally 'cuda:N'); got {name!r}") from None
    if device.type not in _DEVICE_ORDER:
        raise ValueError(f"device must be one of 'auto', {', '.join(map(repr, _DEVICE_ORDER))}; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} was asked for but MPS is not available here")
    return device


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device``: the source of every episode (Chapter 2)."""
    device = torch.device(device)
    return torch.Generator(device=device).manual_seed(int(seed))


def is_fast() -> bool:
    """True when ``MLBOOK_FAST`` is set to a true value (the tests' setting; Chapter 1)."""
    return os.environ.get("MLBOOK_FAST", "").strip().lower() in {"1", "true", "yes", "on"}


def budget(full: Any, fast: Any) -> Any:
    """Pick an experiment size: ``full`` for the website, ``fast`` under ``MLBOOK_FAST=1``.

    The one place every chapter's sizes come from (Chapter 1, "Budgets").
    """
    return fast if is_fast() else full


def _watched() -> bool:
    """Whether a person may be watching this process's progress bars (all chapters).

    False inside a Jupyter kernel whose cell was sent by a client that cannot answer
    ``input()``: nbclient, and so ``jupyter nbconvert --execute`` and the book build, send
    every cell with ``allow_stdin`` off, while JupyterLab, Notebook, VS Code and Colab send
    it on. A widget bar stored by such a run would only leave a blank area in the page.
    Outside a kernel (a terminal, a script, the command line) the answer is True.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return True
    return bool(getattr(kernel, "_allow_stdin", True))


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kwargs):
    """A tqdm progress bar that shows only when someone watches (all chapters).

    It is off in fast mode (the tests), with ``MLBOOK_NO_PROGRESS=1``, and in a notebook
    executed without a front end (the book build, nbconvert): see :func:`_watched`.
    """
    from tqdm.auto import tqdm

    quiet = is_fast() or os.environ.get("MLBOOK_NO_PROGRESS") == "1" or not _watched()
    disable = kwargs.pop("disable", quiet)
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, **kwargs)
