"""Procedural glyphs: an offline stand-in for Omniglot (Chapter 2, "Task distributions").

Each *alphabet* owns a small vocabulary of pen strokes (cubic Bezier curves). A *character*
is two to four strokes from its alphabet's vocabulary, each placed, scaled and turned in its
own way. Each of the 20 *drawings* of a character is drawn by a different hand: the stroke
control points wobble, the whole character is slightly rotated, scaled, sheared and shifted,
and the pen is thicker or thinner. Characters of one alphabet therefore look alike (shared
strokes), as Omniglot's do, which lets the book split classes by alphabet offline.

Everything is drawn with tensor operations from one seeded generator: 1,200 classes of 20
drawings at 28x28 take a few seconds on a CPU, and the same seed gives the same images.
"""
from __future__ import annotations

import math

import torch

from ..utils import check_positive_int

__all__ = ["make_glyphs", "glyph_alphabets", "ALPHABET_SIZE", "OMNIGLOT_PEN_SCALE"]

#: Characters per pseudo-alphabet (Omniglot's alphabets have 14 to 55 characters).
ALPHABET_SIZE = 40

_VOCABULARY = 6        # strokes per alphabet
_MAX_STROKES = 4       # strokes per character (2 to 4)
_POINTS = 32           # samples along each stroke; about a pixel apart at most, at 28x28
#: The pen_scale at which glyphs drawn at 105 pixels have Omniglot's mean stroke width there
#: (about 5.4 pixels, by :func:`mlbook.data.framing.stroke_widths`; glyphs have 7.1 at scale 1).
OMNIGLOT_PEN_SCALE = 0.8


def glyph_alphabets(classes: int = 1200, alphabet_size: int = ALPHABET_SIZE) -> list[str]:
    """The pseudo-alphabet of each glyph class: ``"glyphs-00"`` for the first ``alphabet_size`` (Chapter 2)."""
    classes = check_positive_int("classes", classes)
    alphabet_size = check_positive_int("alphabet_size", alphabet_size)
    return [f"glyphs-{c // alphabet_size:02d}" for c in range(classes)]


def _bezier(control: torch.Tensor, points: int) -> torch.Tensor:
    """Cubic Bezier curves: ``control [..., 4, 2]`` -> ``[..., points, 2]``."""
    t = torch.linspace(0.0, 1.0, points, dtype=control.dtype)[:, None]
    weights = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3], dim=-1)  # [P, 1, 4]
    return (weights[..., 0, :, None] * control[..., None, :, :]).sum(-2)


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def make_glyphs(classes: int = 1200, examples: int = 20, image_size: int = 28, seed: int = 0,
                alphabet_size: int = ALPHABET_SIZE, pen_scale: float = 1.0) -> torch.Tensor:
    """Draw ``classes`` procedural characters, ``examples`` drawings each (Chapter 2).

    Returns uint8 ``[classes, examples, image_size, image_size]`` with bright strokes on a
    dark background, like :func:`mlbook.data.omniglot.load_omniglot`. Class ``c`` belongs to
    the pseudo-alphabet ``c // alphabet_size`` (see :func:`glyph_alphabets`). ``pen_scale``
    multiplies the pen's width (:data:`OMNIGLOT_PEN_SCALE`: Omniglot's strokes at 105 pixels).
    """
    classes = check_positive_int("classes", classes)
    examples = check_positive_int("examples", examples)
    image_size = check_positive_int("image_size", image_size)
    alphabet_size = check_positive_int("alphabet_size", alphabet_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(pen_scale, (int, float)) and math.isfinite(pen_scale) and pen_scale > 0):
        raise ValueError(f"pen_scale must be a positive finite number, got {pen_scale!r}")
    g = torch.Generator().manual_seed(seed)
    alphabets = math.ceil(classes / alphabet_size)
    # The three stages draw from one generator in this order; changing it changes every glyph.
    vocabulary = _stroke_vocabulary(alphabets, g)
    strokes, present = _characters(vocabulary, classes, alphabet_size, g)
    curves = _drawings(strokes, present, examples, g)
    # Pen radius in pixels, so that strokes are one to two pixels wide at 28x28, as in Omniglot.
    pen = (0.6 + 0.5 * torch.rand(classes, examples, 1, generator=g)) * (image_size / 28) * pen_scale
    return _render(curves.reshape(classes * examples, -1, 2), pen.reshape(-1, 1), image_size).reshape(
        classes, examples, image_size, image_size)


def _stroke_vocabulary(alphabets: int, g: torch.Generator) -> torch.Tensor:
    """Each alphabet's strokes ``[A, V, 4, 2]`` (cubic control points), curled by its "hand"."""
    rand = lambda *shape: torch.rand(*shape, generator=g)    # noqa: E731
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    start = rand(alphabets, _VOCABULARY, 1, 2) * 1.2 - 0.6
    direction = _rotation(rand(alphabets, _VOCABULARY) * 2 * math.pi)[..., 0]          # [A, V, 2]
    length = 0.5 + 0.6 * rand(alphabets, _VOCABULARY, 1)
    curl = (0.1 + 0.5 * rand(alphabets, 1, 1, 1)) * randn(alphabets, _VOCABULARY, 2, 2)
    steps = torch.tensor([1 / 3, 2 / 3])[None, None, :, None]
    middle = start + steps * (length * direction)[:, :, None] + curl
    end = start[:, :, 0] + length * direction
    vocabulary = torch.cat([start, middle, end[:, :, None]], dim=2)                      # [A, V, 4, 2]
    return vocabulary - vocabulary.mean(dim=2, keepdim=True)


def _characters(vocabulary: torch.Tensor, classes: int, alphabet_size: int, g: torch.Generator):
    """Each character: 2-4 strokes of its alphabet, placed, scaled, turned and fitted to the frame."""
    alphabets = vocabulary.shape[0]
    alphabet_of = torch.arange(classes) // alphabet_size
    pick = torch.randint(0, _VOCABULARY, (classes, _MAX_STROKES), generator=g)
    strokes = vocabulary[alphabet_of[:, None], pick]                                    # [C, S, 4, 2]
    # An alphabet turns its strokes only to two of eight directions, part of its look.
    turns = torch.randint(0, 8, (alphabets, 2), generator=g)
    which = torch.randint(0, 2, (classes, _MAX_STROKES), generator=g)
    quarter_turns = turns[alphabet_of[:, None], which].float() * (math.pi / 4)
    scale = 0.6 + 0.5 * torch.rand(classes, _MAX_STROKES, 1, 1, generator=g)
    offset = torch.rand(classes, _MAX_STROKES, 1, 2, generator=g) * 1.0 - 0.5
    strokes = scale * strokes @ _rotation(quarter_turns).transpose(-1, -2) + offset
    count = torch.randint(2, _MAX_STROKES + 1, (classes,), generator=g)
    present = torch.arange(_MAX_STROKES)[None, :] < count[:, None]                       # [C, S]
    # Centre and fit each character in the frame, so strokes are not cut off.
    points_all = strokes.reshape(classes, -1, 2)
    mask = present[:, :, None].expand(-1, -1, 4).reshape(classes, -1, 1)
    low = torch.where(mask, points_all, torch.full_like(points_all, 9.0)).amin(1)
    high = torch.where(mask, points_all, torch.full_like(points_all, -9.0)).amax(1)
    centre = (low + high) / 2
    size = (high - low).amax(-1).clamp(min=0.3)
    return (strokes - centre[:, None, None]) * (1.2 / size)[:, None, None, None], present


def _drawings(strokes: torch.Tensor, present: torch.Tensor, examples: int, g: torch.Generator) -> torch.Tensor:
    """``examples`` drawings of each character: every hand wobbles the strokes and draws with its own affine."""
    rand = lambda *shape: torch.rand(*shape, generator=g)    # noqa: E731
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    classes = strokes.shape[0]
    wobble = 0.06 * randn(classes, examples, _MAX_STROKES, 4, 2)
    drawn = strokes[:, None] + wobble                                                   # [C, E, S, 4, 2]
    angle = 0.12 * randn(classes, examples)
    shear = torch.zeros(classes, examples, 2, 2)
    shear[..., 0, 0] = 1.0
    shear[..., 1, 1] = 1.0
    shear[..., 0, 1] = 0.12 * randn(classes, examples)
    stretch = torch.diag_embed(0.9 + 0.2 * rand(classes, examples, 2))
    affine = _rotation(angle) @ shear @ stretch                                         # [C, E, 2, 2]
    shift = 0.06 * randn(classes, examples, 1, 2)
    curves = _bezier(drawn, _POINTS)                                                    # [C, E, S, P, 2]
    curves = curves.reshape(classes, examples, -1, 2) @ affine.transpose(-1, -2) + shift
    # Absent strokes are moved far outside the frame, where they draw nothing.
    hidden = ~present[:, None, :, None].expand(-1, examples, -1, _POINTS).reshape(classes, examples, -1)
    return torch.where(hidden[..., None], torch.full_like(curves, 50.0), curves)


def _render(curves: torch.Tensor, pen: torch.Tensor, image_size: int) -> torch.Tensor:
    """Ink ``curves [images, points, 2]`` (glyph units) into uint8 ``[images, S, S]`` images.

    Every curve point inks the pixels around it, brighter the closer they are; a pixel keeps
    the brightest ink it receives. This touches only a small window per point, which is what
    makes drawing a thousand classes take seconds.
    """
    frame = 0.9                                   # the image shows glyph units [-0.9, 0.9]
    per_unit = image_size / (2 * frame)
    # Glyph y goes up while image rows go down: flip y so characters stand upright.
    column = (curves[..., 0] + frame) * per_unit - 0.5
    row = (frame - curves[..., 1]) * per_unit - 0.5
    reach = int(math.ceil(pen.max().item() + 0.5))
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float32)
    images = curves.shape[0]
    out = torch.zeros(images * image_size * image_size, dtype=torch.float32)
    # Chunks bound the [images, points, window] temporaries to a few tens of MB.
    window = offsets.numel() ** 2
    chunk = max(1, 2_000_000 // (curves.shape[1] * window))
    for lo in range(0, images, chunk):
        hi = min(lo + chunk, images)
        c, r = column[lo:hi, :, None, None], row[lo:hi, :, None, None]
        pc = c.round() + offsets[None, None, None, :]                       # [n, P, 1, W]
        pr = r.round() + offsets[None, None, :, None]                       # [n, P, W, 1]
        distance = torch.sqrt((pc - c) ** 2 + (pr - r) ** 2)                # [n, P, W, W]
        ink = (pen[lo:hi, :, None, None] - distance + 0.5).clamp(0.0, 1.0)
        inside = (pc >= 0) & (pc < image_size) & (pr >= 0) & (pr < image_size)
        # Integer arithmetic: float32 holds whole numbers exactly only up to 2**24, which the
        # pixel index of a thousand 28-pixel glyph classes already passes.
        index = (torch.arange(lo, hi)[:, None, None, None] * image_size + pr.clamp(0, image_size - 1).long()) \
            * image_size + pc.clamp(0, image_size - 1).long()
        ink = torch.where(inside, ink, torch.zeros(()))
        out.scatter_reduce_(0, index.reshape(-1), ink.reshape(-1), reduce="amax")
    return (out * 255).round().to(torch.uint8).reshape(images, image_size, image_size)
