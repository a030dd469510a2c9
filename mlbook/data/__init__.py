"""Image classes for few-shot episodes: real Omniglot or offline procedural glyphs (Chapter 2).

:func:`load_image_classes` is what chapters call: it returns one uint8 class tensor
``[classes, examples, S, S]`` with an alphabet name per class, from Omniglot when its
archives are on disk (or can be downloaded), else from :func:`~mlbook.data.glyphs.make_glyphs`,
and says which one it used and why.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from ..tasks import alphabet_split
from ..utils import check_choice, check_positive_int
from .framing import FRAMES, FRAMING_VERSION, frame_characters
from .glyphs import ALPHABET_SIZE, OMNIGLOT_PEN_SCALE, glyph_alphabets, make_glyphs
from .omniglot import (OMNIGLOT_SIZE, OmniglotData, read_checked_cache, save_checked_cache, default_data_dir,
                       load_omniglot, read_lake_runs, tensor_sha256)

__all__ = [
    "ImageData", "load_image_classes", "load_omniglot", "read_lake_runs", "make_glyphs",
    "glyph_alphabets", "alphabet_split", "default_data_dir", "OmniglotData", "SOURCES", "FRAMES",
    "frame_characters", "with_glyph_alphabets",
]

SOURCES = ("auto", "omniglot", "glyphs")
# Bump when make_glyphs draws differently, so old cached glyphs are not reused.
_GLYPHS_VERSION = 2
# Bump when the cache file's layout changes (2: header and checksum with the tensor).
_GLYPHS_CACHE_FORMAT = 2
_SMALL = ("images_background_small1.zip", "images_background_small2.zip")
_FRAMED_CACHE_FORMAT = 1


@dataclass
class ImageData:
    """Classes of images for episodes (Chapter 2): ``images`` uint8 ``[classes, examples, S, S]``,
    ``alphabets`` (one name per class) and ``source`` ('omniglot' or 'glyphs')."""

    images: torch.Tensor
    alphabets: list[str]
    source: str
    characters: list[str] | None = None
    reason: str = ""

    @property
    def alphabet_names(self) -> list[str]:
        """The distinct alphabets, in the order they first appear."""
        return list(dict.fromkeys(self.alphabets))

    def split(self, fractions=(0.6, 0.2, 0.2), seed: int = 0, split: str | None = None):
        """Class indices for train / val / test that respect alphabets (see :func:`alphabet_split`)."""
        return alphabet_split(self.alphabets, fractions, seed, split)

    def __repr__(self) -> str:
        c, e, s, _ = self.images.shape
        return (f"ImageData(source={self.source!r}: {c} classes x {e} examples, {s}x{s} px, "
                f"{len(self.alphabet_names)} alphabets)")


def _checked_or_built(path, header: dict, build, cache: str, again: str) -> torch.Tensor:
    """The tensor cached at ``path`` if it is intact and matches ``header``; else ``build()``,
    cached there (a ``cache`` that fails the check is rebuilt with a warning saying so)."""
    if path.is_file():
        images, reason = read_checked_cache(path, header)
        if images is not None:
            return images
        warnings.warn(f"the {cache} {str(path)!r} is not used: {reason}; {again}", RuntimeWarning, stacklevel=4)
    images = build()
    try:
        save_checked_cache(images, header, path)
    except OSError:  # a read-only data folder still gives the tensor, just uncached
        pass
    return images


def _cached_glyphs(classes: int, image_size: int, seed: int, data_dir) -> torch.Tensor:
    """make_glyphs, kept in the data folder: drawing is deterministic, so a cached copy is exact."""
    from pathlib import Path

    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    # The format is in the name so that caches of the unchecked format are left alone, not warned about.
    path = (folder / f"glyphs-v{_GLYPHS_VERSION}-{classes}x20-{image_size}px-seed{seed}"
                     f"-f{_GLYPHS_CACHE_FORMAT}.pt")
    header = {"format": _GLYPHS_CACHE_FORMAT, "glyphs": _GLYPHS_VERSION, "seed": int(seed),
              "shape": [int(classes), 20, image_size, image_size], "dtype": str(torch.uint8)}
    return _checked_or_built(path, header, lambda: make_glyphs(classes, 20, image_size, seed),
                             "glyph cache", "drawing the glyphs again")


def _cached_frames(images: torch.Tensor, image_size: int, frame: str, data_dir) -> torch.Tensor:
    """frame_characters, kept in the data folder under the checksum of the images it framed:
    framing every drawing again took a few seconds of each command that loads them."""
    from pathlib import Path

    source = tensor_sha256(images)
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    path = folder / f"framed-{frame}-{image_size}px-{source[:16]}-v{FRAMING_VERSION}-f{_FRAMED_CACHE_FORMAT}.pt"
    header = {"format": _FRAMED_CACHE_FORMAT, "framing": FRAMING_VERSION, "frame": frame, "source_sha256": source,
              "shape": [*images.shape[:-2], image_size, image_size], "dtype": str(torch.uint8)}
    return _checked_or_built(path, header, lambda: frame_characters(images, image_size, frame),
                             "framed-image cache", "framing the images again")


def load_image_classes(source: str = "auto", image_size: int = 28,
                       archives: Sequence[str] = _SMALL, data_dir=None, download: bool | None = None,
                       glyph_classes: int = 1200, seed: int = 0, verbose: bool = True,
                       frame: str = "canvas") -> ImageData:
    """Omniglot if available, else procedural glyphs, as one class tensor (Chapters 2, 4 and 5).

    ``source``: 'omniglot' (fail if the archives cannot be found or fetched), 'glyphs', or
    'auto' (Omniglot when its archives are on disk or downloadable, else glyphs). Downloads
    are tried unless ``download=False`` or the environment sets ``MLBOOK_OFFLINE=1``.
    Prints which source it used and why, unless ``verbose=False``. ``frame``: where each
    character sits in its image (:func:`~mlbook.data.framing.frame_characters`); Omniglot is
    framed from its 105-pixel drawings.
    """
    check_choice("source", source, SOURCES)
    check_choice("frame", frame, FRAMES)
    image_size = check_positive_int("image_size", image_size)
    glyph_classes = check_positive_int("glyph_classes", glyph_classes)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if download is None:
        download = os.environ.get("MLBOOK_OFFLINE", "").strip().lower() not in {"1", "true", "yes", "on"}
    reason = ""
    if source in ("auto", "omniglot"):
        try:
            data = load_omniglot(archives, image_size=image_size if frame == "canvas" else OMNIGLOT_SIZE,
                                 data_dir=data_dir, download=download)
            reason = f"Omniglot archives found ({', '.join(os.path.basename(str(a)) for a in archives)})"
            images = data.images if frame == "canvas" else _cached_frames(data.images, image_size, frame, data_dir)
            result = ImageData(images, data.alphabets, "omniglot", data.characters, reason)
            if verbose:
                print(f"Image classes: real Omniglot, {result.images.shape[0]} characters from "
                      f"{len(result.alphabet_names)} alphabets; {reason}.")
            return result
        except (FileNotFoundError, ValueError) as error:
            if source == "omniglot":
                raise
            reason = f"Omniglot is not available here ({error})"
    images = _cached_glyphs(glyph_classes, image_size, seed, data_dir)
    if frame != "canvas":
        images = _cached_frames(images, image_size, frame, data_dir)
    if not reason:
        reason = "source='glyphs' was asked for"
    result = ImageData(images, glyph_alphabets(glyph_classes), "glyphs", None, reason)
    if verbose:
        print(f"Image classes: PROCEDURAL GLYPHS (offline stand-in for Omniglot), {glyph_classes} "
              f"classes from {len(result.alphabet_names)} pseudo-alphabets. Why: {reason}.")
    return result


def with_glyph_alphabets(images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor,
                         glyph_alphabets_count: int, frame: str = "canvas", seed: int = 0):
    """Omniglot's training classes and ``glyph_alphabets_count`` pseudo-alphabets of procedural
    glyphs (Chapters 2 and 5, Lake's challenge).

    Each pseudo-alphabet holds :data:`~mlbook.data.glyphs.ALPHABET_SIZE` characters built from a
    few shared strokes, drawn by 20 hands like Omniglot's drawers, at Omniglot's 105 pixels with
    its stroke width, then framed as ``frame`` at the size of ``images`` (uint8 ``[classes, 20,
    S, S]``, bright strokes on dark). They are procedural: no data but the images given is used.
    Returns ``(images, alphabets, classes)`` with the glyph classes appended after the others
    (whose indices do not change) and added to ``classes``; the same ``seed`` draws the same glyphs.
    """
    glyph_alphabets_count = check_positive_int("glyph_alphabets_count", glyph_alphabets_count)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be uint8 [classes, drawings, S, S], got {images.dtype} {list(images.shape)}")
    if len(alphabets) != images.shape[0]:
        raise ValueError(f"alphabets must name one alphabet per class: {len(alphabets)} names for "
                         f"{images.shape[0]} classes")
    count = glyph_alphabets_count * ALPHABET_SIZE
    drawn = make_glyphs(count, images.shape[1], image_size=OMNIGLOT_SIZE, seed=seed, pen_scale=OMNIGLOT_PEN_SCALE)
    framed = frame_characters(drawn, images.shape[-1], frame)
    new = torch.arange(images.shape[0], images.shape[0] + count)
    return (torch.cat([images, framed]), list(alphabets) + glyph_alphabets(count),
            torch.cat([torch.as_tensor(classes, dtype=torch.long), new]))
