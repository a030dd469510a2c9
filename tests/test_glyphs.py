"""Procedural glyphs: layout, determinism, drawer variation, alphabets (Chapter 2)."""
import pytest
import torch

from mlbook.data import with_glyph_alphabets
from mlbook.data.framing import stroke_widths
from mlbook.data.glyphs import OMNIGLOT_PEN_SCALE, _render, glyph_alphabets, make_glyphs
from mlbook.tasks import ImageClassFamily, alphabet_split


@pytest.fixture(scope="module")
def glyphs():
    return make_glyphs(classes=120, examples=20, image_size=28, seed=0)


def test_layout_and_ink(glyphs):
    assert glyphs.shape == (120, 20, 28, 28) and glyphs.dtype == torch.uint8
    ink = glyphs.float().mean((-1, -2)) / 255
    # Every drawing has strokes, and strokes cover a small part of the frame, as in Omniglot.
    assert ink.min() > 0.01 and ink.max() < 0.35
    assert (glyphs == 0).float().mean() > 0.6 and glyphs.max() == 255


def test_deterministic(glyphs):
    assert torch.equal(make_glyphs(classes=120, seed=0), glyphs)
    assert not torch.equal(make_glyphs(classes=120, seed=1), glyphs)


def test_drawings_vary_within_a_class_less_than_between(glyphs):
    x = glyphs.float().div(255).flatten(2)                              # [C, E, D]
    # Each class's drawings differ from one another (jitter, pen, affine) ...
    assert (x[:, 1:] != x[:, :1]).any(-1).all()
    # ... but a drawing is closer to its class mean than to other classes' means.
    means = x[:, 1:].mean(1)                                            # [C, D]
    nearest = torch.cdist(x[:, 0], means).argmin(-1)
    assert (nearest == torch.arange(120)).float().mean() > 0.6


def test_alphabets_share_strokes(glyphs):
    names = glyph_alphabets(120)
    assert names[:40] == ["glyphs-00"] * 40 and names[40] == "glyphs-01" and len(set(names)) == 3
    # Class means of one alphabet resemble each other more than those of other alphabets.
    means = glyphs.float().div(255).mean(1).flatten(1)
    means = means - means.mean(0)
    means = means / means.norm(dim=1, keepdim=True)
    similarity = means @ means.T
    group = torch.arange(120) // 40
    same = (group[:, None] == group[None, :]) & ~torch.eye(120, dtype=torch.bool)
    assert similarity[same].mean() > similarity[group[:, None] != group[None, :]].mean() + 0.02


def test_alphabet_split_and_episodes(glyphs):
    splits = alphabet_split(glyph_alphabets(120), (1 / 3, 1 / 3, 1 / 3), seed=0)
    assert all(v.numel() == 40 for v in splits.values())
    family = ImageClassFamily(glyphs, ways=5, shots=1, queries=3, classes=splits["train"])
    episode = family.sample(4, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (4, 5, 1, 28, 28)


def test_other_sizes_and_bad_input():
    assert make_glyphs(classes=3, examples=4, image_size=40).shape == (3, 4, 40, 40)
    for kwargs, name in [(dict(classes=0), "classes"), (dict(examples=-1), "examples"),
                         (dict(image_size=0), "image_size"), (dict(seed=-1), "seed"),
                         (dict(pen_scale=0), "pen_scale"), (dict(pen_scale=float("nan")), "pen_scale")]:
        with pytest.raises(ValueError, match=name):
            make_glyphs(**kwargs)


def test_a_late_image_is_drawn_like_the_first():
    # Past 2**24 pixels (21,400 images of 28x28: the last classes of the default 1,200) a
    # pixel index held in float32 skips every other pixel and leaves a checkerboard.
    images = 22_000
    line = torch.stack([torch.linspace(-0.5, 0.5, 8), torch.linspace(-0.3, 0.4, 8)], -1)
    curves = torch.full((images, 8, 2), 50.0)          # far outside the frame: blank
    curves[0] = curves[-1] = line
    drawn = _render(curves, torch.full((images, 1), 1.0), 28)
    assert drawn[0].sum() > 0 and torch.equal(drawn[-1], drawn[0])


def test_pen_scale_gives_omniglot_strokes_at_105_pixels():
    # Omniglot's drawings at 105 pixels have strokes about 5.4 pixels wide (stroke_widths).
    widths = stroke_widths(make_glyphs(classes=40, examples=4, image_size=105, pen_scale=OMNIGLOT_PEN_SCALE))
    assert 5.0 < widths.mean() < 5.9
    assert widths.mean() + 1 < stroke_widths(make_glyphs(classes=40, examples=4, image_size=105)).mean()


def test_glyph_alphabets_join_the_training_classes_only(glyphs):
    """--glyph-alphabets: whole pseudo-alphabets appended, the given classes untouched."""
    images, names, train = glyphs[:30], [f"real-{c // 10}" for c in range(30)], torch.tensor([0, 1, 2, 10, 11])
    grown, grown_names, grown_train = with_glyph_alphabets(images, names, train, 2, frame="fitted", seed=3)
    assert grown.shape == (30 + 80, 20, 28, 28) and grown.dtype == torch.uint8
    assert torch.equal(grown[:30], images) and grown_names[:30] == names
    assert grown_names[30:] == glyph_alphabets(80) and len(set(grown_names[30:])) == 2
    assert torch.equal(grown_train, torch.cat([train, torch.arange(30, 110)]))
    # Framed like Omniglot's characters: each drawing's longer side fills the frame but its margin
    # (28 / 1.15 pixels), which the canvas (about 19 pixels here) does not.
    ink = grown[30:] >= 128
    def extent(inked):                                                  # [..., 28] -> [...]
        place = torch.arange(inked.shape[-1])
        return torch.where(inked, place, -1).amax(-1) - torch.where(inked, place, 99).amin(-1) + 1
    assert (torch.maximum(extent(ink.any(-1)), extent(ink.any(-2))) >= 23).all()
    # The same seed, the same glyphs.
    assert torch.equal(with_glyph_alphabets(images, names, train, 2, frame="fitted", seed=3)[0], grown)
    assert not torch.equal(with_glyph_alphabets(images, names, train, 2, frame="fitted", seed=4)[0], grown)
    for args, name in [((images, names, train, 0), "glyph_alphabets_count"),
                       ((images.float(), names, train, 1), "images"),
                       ((images, names[:-1], train, 1), "alphabets")]:
        with pytest.raises(ValueError, match=name):
            with_glyph_alphabets(*args)
