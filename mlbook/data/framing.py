"""Where a character sits in its image: the drawer's canvas, or a frame around the ink (Chapter 5).

Omniglot's drawers wrote anywhere on a 105x105 canvas, at any size: the same character can sit
in a corner, small, or fill the canvas. A network must learn to ignore both. Framing removes
them before the network sees the image, as optical character recognition has long done (the
MNIST digits were scaled to fit a 20-pixel box and centred on their centre of ink mass in a
28-pixel image; LeCun et al., 1998):

* ``canvas``: the whole canvas, resized (what the release's images are);
* ``centred``: the canvas moved so that the centre of ink mass is in the middle, size kept;
* ``fitted``: the square around the ink's bounding box, with a margin, scaled to fill the image;
* ``redrawn``: fitted, then every stroke thinned to its centre line and drawn again with one pen
  (:data:`PEN_WIDTH`), since fitting enlarges a small drawing's strokes with it: a character
  drawn small comes out with strokes up to three times as thick as one drawn large.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import check_choice, check_positive_int

__all__ = ["FRAMES", "FRAMING_VERSION", "FIT_MARGIN", "PEN_WIDTH", "frame_characters", "stroke_widths", "thin_strokes"]

FRAMES = ("canvas", "centred", "fitted", "redrawn")
#: In ``fitted`` framing, the frame's side is the bounding box's longer side times 1 + FIT_MARGIN.
FIT_MARGIN = 0.15
#: In ``redrawn`` framing, the pen's width as a fraction of the image's side: the median width of
#: fitted Omniglot strokes (ink area over centre-line length, about 11.6 pixels of 168).
PEN_WIDTH = 11 / 168
# A pixel counts as ink for the bounding box at half intensity; fainter pixels are the
# anti-aliased rims of strokes.
_INK = 128
# Resampled at twice the output size, then area-averaged: bilinear sampling alone would drop
# thin strokes when it shrinks an image.
_OVERSAMPLE = 2
# Images framed at once: a chunk's sampling grid (64 images at 168 pixels, 14 MB) stays small
# enough for the allocator to reuse; 512 images' grids were mapped fresh from the system each
# time and took twice as long on a 2-core AMD EPYC.
_CHUNK = 64
#: Bump when frame_characters frames differently, so that cached framed images are not reused.
FRAMING_VERSION = 1


def _frames_of(images: torch.Tensor, frame: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre (row, column) and side, in pixels, of each image's frame."""
    count, height, width = images.shape
    rows = torch.arange(height, dtype=torch.float32)
    cols = torch.arange(width, dtype=torch.float32)
    canvas_side = torch.full((count,), float(max(height, width)))
    if frame == "centred":
        mass = images.sum((1, 2))
        blank = mass == 0
        mass = mass.clamp_min(1e-6)
        centre_row = (images.sum(2) * rows).sum(1) / mass
        centre_col = (images.sum(1) * cols).sum(1) / mass
        centre_row[blank], centre_col[blank] = (height - 1) / 2, (width - 1) / 2
        return centre_row, centre_col, canvas_side
    ink = images >= _INK
    any_row, any_col = ink.any(2), ink.any(1)
    blank = ~any_row.any(1)
    first_row = torch.where(any_row, rows, float(height)).amin(1)
    last_row = torch.where(any_row, rows, -1.0).amax(1)
    first_col = torch.where(any_col, cols, float(width)).amin(1)
    last_col = torch.where(any_col, cols, -1.0).amax(1)
    side = torch.maximum(last_row - first_row + 1, last_col - first_col + 1) * (1 + FIT_MARGIN)
    centre_row, centre_col = (first_row + last_row) / 2, (first_col + last_col) / 2
    # An image with no ink keeps its canvas.
    centre_row[blank], centre_col[blank], side[blank] = (height - 1) / 2, (width - 1) / 2, canvas_side[blank]
    return centre_row, centre_col, side


def frame_characters(images: torch.Tensor, image_size: int, frame: str = "canvas") -> torch.Tensor:
    """Images of characters (uint8, bright strokes on dark, ``[..., H, W]``) framed and resized
    to ``[..., image_size, image_size]`` uint8 (Chapter 5).

    ``frame`` is one of :data:`FRAMES`. Frames reaching past the canvas see dark background
    there. Give the largest images there are (Omniglot's 105 pixels): a frame fitted to a small
    character enlarges it, and enlarging a resized image blurs what resizing lost.
    """
    frame = check_choice("frame", frame, FRAMES)
    image_size = check_positive_int("image_size", image_size)
    if images.dtype != torch.uint8 or images.dim() < 2:
        raise ValueError(f"images must be a uint8 tensor [..., H, W], got {images.dtype} "
                         f"{list(images.shape)}")
    *batch, height, width = images.shape
    flat = images.reshape(-1, height, width)
    out = torch.empty(flat.shape[0], image_size, image_size, dtype=torch.uint8)
    fine = image_size * _OVERSAMPLE
    for start in range(0, flat.shape[0], _CHUNK):
        chunk = flat[start:start + _CHUNK].float()
        if frame == "canvas":
            resized = F.interpolate(chunk[:, None], size=(image_size, image_size), mode="area")
        else:
            centre_row, centre_col, side = _frames_of(chunk, frame)
            # affine_grid maps the output's [-1, 1] square onto the input's normalised coordinates.
            theta = torch.zeros(chunk.shape[0], 2, 3)
            theta[:, 0, 0] = side / width
            theta[:, 1, 1] = side / height
            theta[:, 0, 2] = (2 * centre_col + 1) / width - 1
            theta[:, 1, 2] = (2 * centre_row + 1) / height - 1
            grid = F.affine_grid(theta, [chunk.shape[0], 1, fine, fine], align_corners=False)
            sampled = F.grid_sample(chunk[:, None], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)
            if frame == "redrawn":
                sampled = _redraw(sampled[:, 0] >= _INK, fine)[:, None]
            resized = F.avg_pool2d(sampled, _OVERSAMPLE)
        out[start:start + _CHUNK] = resized[:, 0].round().clamp(0, 255).to(torch.uint8)
    return out.reshape(*batch, image_size, image_size)


def _peelable(second_pass: bool) -> torch.Tensor:
    """For each of the 256 ways an ink pixel's 8 neighbours can be inked (bit k: the k-th
    neighbour clockwise from north, Zhang and Suen's P2 to P9), whether the pass peels it."""
    codes = torch.arange(256)
    north, north_east, east, south_east, south, south_west, west, north_west = (
        (codes >> k) & 1 for k in range(8))
    ring = (north, north_east, east, south_east, south, south_west, west, north_west, north)
    neighbours = sum(ring[:8])
    # One 0->1 step around the ring: the pixel joins exactly one run of ink.
    crossings = sum((ring[i] < ring[i + 1]).long() for i in range(8))
    if second_pass:
        open_side = (north * east * west == 0) & (north * south * west == 0)
    else:
        open_side = (north * east * south == 0) & (east * south * west == 0)
    return (neighbours >= 2) & (neighbours <= 6) & (crossings == 1) & open_side


_PEELABLE = (_peelable(second_pass=False), _peelable(second_pass=True))
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def thin_strokes(ink: torch.Tensor) -> torch.Tensor:
    """Centre lines, one pixel wide, of the strokes of boolean images ``[N, H, W]`` (Chapter 5).

    Zhang and Suen's (1984) thinning: two alternating passes peel, from every stroke, the border
    pixels whose removal neither breaks the stroke nor shortens its ends, until none is left.
    """
    if ink.dtype != torch.bool or ink.dim() != 3:
        raise ValueError(f"ink must be a boolean tensor [N, H, W], got {ink.dtype} {list(ink.shape)}")
    return torch.cat([_thin(ink[start:start + _CHUNK]) for start in range(0, ink.shape[0], _CHUNK)])


def stroke_widths(images: torch.Tensor) -> torch.Tensor:
    """Mean stroke width, in pixels, of each image of characters (uint8 ``[..., H, W]``): its
    ink's area over the length of its strokes' centre lines (Chapter 5)."""
    if images.dtype != torch.uint8 or images.dim() < 2:
        raise ValueError(f"images must be a uint8 tensor [..., H, W], got {images.dtype} "
                         f"{list(images.shape)}")
    ink = images.reshape(-1, *images.shape[-2:]) >= _INK
    length = thin_strokes(ink).sum((1, 2)).clamp_min(1)
    return (ink.sum((1, 2)) / length).reshape(images.shape[:-2])


def _thin(ink: torch.Tensor) -> torch.Tensor:
    """:func:`thin_strokes` of a few hundred images, visiting only the pixels that can change."""
    count, height, width = ink.shape
    # One flat array with a blank border round every image, so that a pixel's neighbours are
    # fixed offsets from it and never another image's.
    row = width + 2
    padded = F.pad(ink.to(torch.uint8), (1, 1, 1, 1)).flatten()
    offsets = [dr * row + dc for dr, dc in _NEIGHBOURS]
    itself_and_neighbours = torch.tensor([0, *offsets])
    every_ink_pixel = padded.nonzero()[:, 0]
    # A pass can only change its verdict on a pixel whose neighbourhood changed since that pass
    # last looked at it: by the other pass's removals, or by its own. Most strokes are thin, so
    # after the first round only a small fraction of the ink is looked at again.
    removed_by_pass: list[torch.Tensor | None] = [None, None]
    last_listed_at = torch.empty(padded.shape, dtype=torch.int32)
    places, this_pass, passes_without_removal = every_ink_pixel, 0, 0
    while passes_without_removal < 2:
        neighbourhood = torch.zeros(places.shape, dtype=torch.uint8)
        for bit, offset in enumerate(offsets):
            neighbourhood |= padded[places + offset] << bit
        removable = _PEELABLE[this_pass][neighbourhood.long()] & (padded[places] == 1)
        removed = places[removable]
        padded[removed] = 0
        passes_without_removal = passes_without_removal + 1 if removed.numel() == 0 else 0
        removed_by_pass[this_pass] = removed
        this_pass = 1 - this_pass
        if removed_by_pass[this_pass] is None:  # the second pass's first look: all the ink
            places = every_ink_pixel
            continue
        near = (torch.cat(removed_by_pass)[:, None] + itself_and_neighbours).flatten()
        near = near[padded[near] == 1]
        # Each place once, without sorting: keep an entry only where it was the last written.
        order = torch.arange(near.numel(), dtype=torch.int32)
        last_listed_at[near] = order
        places = near[last_listed_at[near] == order]
    return padded.view(count, height + 2, width + 2)[:, 1:-1, 1:-1].bool()


def _redraw(ink: torch.Tensor, side: int) -> torch.Tensor:
    """Boolean images ``[N, side, side]``: their strokes' centre lines drawn with the pen of
    :data:`PEN_WIDTH`, as float ``[N, side, side]`` in 0..255."""
    radius = max(round((PEN_WIDTH * side - 1) / 2), 0)
    lines = F.pad(thin_strokes(ink).to(torch.uint8), (radius,) * 4)
    # The round pen is the union of its rows: row dy reaches dx with dx^2 + dy^2 <= r^2 + 1/2.
    # Widen the lines once per half-width, then stack each row's widening shifted by dy.
    widened = [lines[:, :, radius:radius + side]]
    for half in range(1, radius + 1):
        widened.append(widened[-1] | lines[:, :, radius + half:radius + half + side]
                       | lines[:, :, radius - half:radius - half + side])
    drawn = torch.zeros(ink.shape, dtype=torch.uint8)
    for dy in range(-radius, radius + 1):
        half = int((radius ** 2 + 0.5 - dy ** 2) ** 0.5)
        drawn |= widened[half][:, radius + dy:radius + dy + side]
    return drawn.float() * 255
