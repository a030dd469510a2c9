"""Stroke thinning for the ``redrawn`` frame: pixels near the last removals against every pixel
(Chapter 5).

Workload: every drawing of the two minimal Omniglot archives (../shared/data/omniglot, when
present; else the procedural glyphs), fitted at 56 and at 168 pixels (168 is the oversampled
image from which an 84-pixel ``redrawn`` frame is drawn), as boolean ink.

* incremental: :func:`mlbook.data.framing.thin_strokes`, which after the first round looks only at
  the ink next to pixels that the last two passes removed.
* every pixel: the same Zhang-Suen passes and lookup tables applied to every pixel of every image
  still being thinned, the usual vectorised form.

Both must give the same centre lines (checked). They are timed alternately on one thread, several
rounds each; the medians and their ratio are printed, with the load average (figures are only
worth reading under 0.3). Run: ``python benchmarks/thinning_speed.py [--rounds 3]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mlbook.data import frame_characters, load_image_classes
from mlbook.data.framing import _CHUNK, _NEIGHBOURS, _PEELABLE, thin_strokes

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot")


def thin_every_pixel(ink: torch.Tensor) -> torch.Tensor:
    """The baseline: both passes over every pixel of each image that still changes, in the
    incremental thinning's chunks of images."""
    return torch.cat([_thin_every_pixel(ink[start:start + _CHUNK])
                      for start in range(0, ink.shape[0], _CHUNK)])


def _thin_every_pixel(ink: torch.Tensor) -> torch.Tensor:
    image = ink.to(torch.uint8)
    height, width = image.shape[-2:]
    peeling = torch.arange(image.shape[0])
    while peeling.numel():
        images = image[peeling]
        peeled = torch.zeros(peeling.numel(), dtype=torch.bool)
        for peelable in _PEELABLE:
            padded = F.pad(images, (1, 1, 1, 1))
            neighbourhood = torch.zeros_like(images)
            for bit, (dr, dc) in enumerate(_NEIGHBOURS):
                neighbourhood |= padded[:, 1 + dr:1 + dr + height, 1 + dc:1 + dc + width] << bit
            removable = peelable[neighbourhood.long()] & (images == 1)
            peeled |= removable.flatten(1).any(1)
            images = images.masked_fill(removable, 0)
        image[peeling] = images
        peeling = peeling[peeled]
    return image.bool()


def timed(function, ink: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    lines = function(ink)
    return time.perf_counter() - start, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if os.path.isdir(SHARED):
        os.environ.setdefault("MLBOOK_OMNIGLOT", os.path.abspath(SHARED))
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min); torch {torch.__version__}, 1 thread")
    drawings = load_image_classes("auto", image_size=105, verbose=False)
    print(f"{drawings.source}: {drawings.images.shape[0] * drawings.images.shape[1]:,} drawings")
    print(f"{'side':>5}{'every pixel (s)':>17}{'incremental (s)':>17}{'ratio':>8}")
    for side in (56, 168):
        ink = frame_characters(drawings.images, side, "fitted").flatten(0, 1) >= 128
        baseline, incremental = [], []
        for _ in range(args.rounds):
            seconds, expected = timed(thin_every_pixel, ink)
            baseline.append(seconds)
            seconds, lines = timed(thin_strokes, ink)
            incremental.append(seconds)
            if not torch.equal(lines, expected):
                raise SystemExit(f"at {side} px the two thinnings differ: the benchmark is void")
        slow, fast = statistics.median(baseline), statistics.median(incremental)
        print(f"{side:>5}{slow:>17.2f}{fast:>17.2f}{slow / fast:>7.1f}x")
    seconds, _ = timed(lambda images: frame_characters(images, 84, "redrawn"), drawings.images)
    print(f"framing every drawing 'redrawn' at 84 px: {seconds:.1f} s")


if __name__ == "__main__":
    main()
