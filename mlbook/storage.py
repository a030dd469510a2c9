"""Files that must never be half-written: atomic writes and checkpoints (Chapter 5).

Every file the library writes (checkpoints, decoded-image caches, downloads) goes through
:func:`atomic_write`: the bytes land in a temporary file beside the target, are flushed to disk
and then renamed over it in one step, so a crash leaves the old file or the new one, never a
mix. Checkpoints hold tensors and plain Python values only and are read with
``torch.load(weights_only=True)``, so opening a checkpoint can never run code.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["atomic_write", "atomic_torch_save", "remove_stale_temporaries", "save_checkpoint",
           "load_checkpoint", "load_state_into", "detached", "CheckpointError", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "mlbook-checkpoint"
CHECKPOINT_VERSION = 1
_TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not an mlbook checkpoint (Chapter 5)."""


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Any]:
    """Open a binary file that appears at ``path`` only once it is complete (Chapter 5).

    ``with atomic_write(p) as f: f.write(...)``. On any error the temporary file is removed
    and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=_TEMPORARY_SUFFIX,
                                         dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes owner-only files; ours are shareable
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write` (Chapter 5)."""
    with atomic_write(path) as file:
        torch.save(obj, file)
    return Path(path)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files that an interrupted :func:`atomic_write` to ``path`` left behind (Chapter 5)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.glob(f"{_temporary_prefix(path)}*{_TEMPORARY_SUFFIX}") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def detached(tree):
    """A copy of a pytree with every tensor detached and moved to the CPU (Chapter 5)."""
    return torch.utils._pytree.tree_map(
        lambda t: t.detach().cpu().clone() if isinstance(t, torch.Tensor) else t, tree)


def save_checkpoint(path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain values) to ``path`` atomically (Chapter 5)."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, path)


def load_checkpoint(path, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is not one (Chapter 5).

    Loaded with ``weights_only=True``: a file that holds anything but tensors and plain values
    (for instance an object that would run code when unpickled) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if "weights_only" in str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt, not a torch file, or holds "
                              f"objects other than tensors and plain values ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an mlbook checkpoint")
    for key in ("state", "step"):
        if key not in data:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks its {key!r} entry")
    return data


def load_state_into(state, saved) -> None:
    """Copy saved tensors into a live learner state in place, so an optimiser keeps its references (Chapter 5)."""
    live = torch.utils._pytree.tree_leaves(state)
    stored = torch.utils._pytree.tree_leaves(saved)
    if len(live) != len(stored):
        raise CheckpointError("the checkpoint's state does not fit this learner "
                              f"({len(stored)} tensors saved, {len(live)} expected)")
    with torch.no_grad():
        for a, b in zip(live, stored):
            if isinstance(a, torch.Tensor):
                if a.shape != b.shape:
                    raise CheckpointError(f"the checkpoint's state does not fit this learner: a tensor of "
                                          f"shape {tuple(b.shape)} where {tuple(a.shape)} is expected")
                a.copy_(b)
