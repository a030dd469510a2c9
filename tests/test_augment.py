"""Training augmentations of Chapter 5: what each does to images, reproducibly, and bad input."""
import pytest
import torch

from mlbook.augment import AffineJitter, Chain, ElasticWarp, PartErasure, ShiftedViews, StrokeThickness
from mlbook.tasks import Episode


def strokes(n=6, size=28, seed=0):
    """Images of a few bright one-to-two-pixel strokes on black, like Omniglot's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        row, col = torch.randint(6, size - 6, (2,), generator=g).tolist()
        x[i, 0, row, 4:size - 4] = 1.0
        x[i, 0, 4:size - 4, col:col + 2] = 1.0
    return x


def test_elastic_warp_bends_strokes_smoothly_and_reproducibly():
    x = strokes()
    warp = ElasticWarp(pixels=2.0)
    a = warp.images(x, torch.Generator().manual_seed(1))
    b = warp.images(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert (a - x).abs().sum() > 1.0, "a 2-pixel warp moves strokes"
    # No pixel moves further than 2 pixels (plus 1 of bilinear blur): ink appears only near strokes.
    near = torch.nn.functional.max_pool2d(x, 7, stride=1, padding=3) > 0
    assert float(a[~near].abs().max()) < 1e-6 and float(a.sum()) > 0.7 * float(x.sum())
    still = ElasticWarp(pixels=0.0).images(x, torch.Generator().manual_seed(1))
    assert torch.allclose(still, x, atol=1e-6), "zero pixels is the identity"


def test_stroke_thickness_thickens_and_thins_a_share_of_images():
    x = strokes(n=400)
    out = StrokeThickness(probability=0.25).images(x, torch.Generator().manual_seed(0))
    ink_in, ink_out = x.sum((1, 2, 3)), out.sum((1, 2, 3))
    thicker, thinner = (ink_out > ink_in + 1e-4), (ink_out < ink_in - 1e-4)
    same = (out == x).flatten(1).all(1)
    assert 0.15 < thicker.float().mean() < 0.35 and 0.15 < thinner.float().mean() < 0.35
    assert bool((thicker | thinner | same).all()) and 0.4 < same.float().mean() < 0.6
    assert float(out.max()) <= 1.0 and float(out.min()) >= 0.0
    # A thinned one-pixel-wide stroke fades to half rather than vanishing.
    line = torch.zeros(1, 1, 9, 9)
    line[0, 0, 4, 1:8] = 1.0
    faded = StrokeThickness(probability=0.5).images(line.expand(50, 1, 9, 9), torch.Generator().manual_seed(0))
    assert faded[:, 0, 4, 3:6].min() >= 0.5


def test_part_erasure_wipes_one_square_from_a_share_of_images():
    x = torch.rand(600, 1, 28, 28) + 0.5                 # no pixel blank before
    out = PartErasure(probability=0.3, size=0.25).images(x, torch.Generator().manual_seed(0))
    blank = out == 0
    wiped = blank.flatten(1).any(1)
    assert 0.25 < wiped.float().mean() < 0.35
    assert torch.equal(out[~blank], x[~blank]), "only the erased pixels change"
    for image in blank[wiped][:, 0]:
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        # One 7x7 square (a quarter of 28), whole and inside the image.
        assert len(rows) == len(cols) == 7 and int(image.sum()) == 49
        assert int(rows[-1] - rows[0]) == 6 and int(cols[-1] - cols[0]) == 6
    squares = blank[wiped][:, 0]
    assert bool(squares[:, 0].any()) and bool(squares[:, -1].any()), "squares reach the top and bottom rows"
    assert bool(squares[:, :, 0].any()) and bool(squares[:, :, -1].any()), "and the first and last columns"
    again = PartErasure(probability=0.3, size=0.25).images(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(PartErasure(probability=0.0).images(x, torch.Generator().manual_seed(0)), x)


def test_chain_applies_each_augmentation_to_support_and_query():
    x = strokes(n=4).reshape(1, 4, 1, 28, 28)
    y = torch.arange(4).reshape(1, 4)
    episode = Episode(x, y, x.clone(), y.clone())
    chain = Chain(AffineJitter(), ElasticWarp(), StrokeThickness(0.5))
    out = chain(episode, torch.Generator().manual_seed(3))
    assert out.support_x.shape == x.shape and torch.equal(out.support_y, y)
    assert not torch.equal(out.support_x, x) and not torch.equal(out.query_x, x)
    again = chain(episode, torch.Generator().manual_seed(3))
    assert torch.equal(out.support_x, again.support_x) and torch.equal(out.query_x, again.query_x)


@pytest.mark.parametrize("make, pattern", [
    (lambda: ElasticWarp(pixels=-1), "pixels must be a non-negative number"),
    (lambda: ElasticWarp(grid=1), "grid must be an integer of at least 2"),
    (lambda: StrokeThickness(probability=0.8), "probability must be at most 0.5"),
    (lambda: StrokeThickness(probability=float("nan")), "probability must be a non-negative number"),
    (lambda: PartErasure(probability=1.5), "probability must be in \\[0, 1\\]"),
    (lambda: PartErasure(size=1.0), "size .* must be in \\(0, 1\\)"),
    (lambda: Chain(), "one or more callables"),
])
def test_bad_settings_are_refused_by_name(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def _shifted(x, dx, dy):
    """x moved dx pixels right and dy down, with empty borders."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_shifted_views_are_the_image_and_its_eight_whole_pixel_shifts():
    x = strokes(n=4).reshape(2, 2, 1, 28, 28)     # any leading shape
    views = ShiftedViews(pixels=1.0)(x)
    assert views.shape == (9, 2, 2, 1, 28, 28) and len(ShiftedViews()) == 9
    assert torch.equal(views[0], x)
    expected = [_shifted(x, dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]
    for target in expected:      # each direction exactly once, up to float rounding of the grid
        matches = [i for i in range(1, 9) if torch.allclose(views[i], target, atol=1e-5)]
        assert len(matches) == 1, matches
    two = ShiftedViews(pixels=2.0)(x)
    assert any(torch.allclose(two[i], _shifted(x, 2, 0), atol=1e-5) for i in range(1, 9))


def test_shifted_views_refuse_bad_input():
    for bad in (0, 0.0, -1, float("nan"), "1"):
        with pytest.raises(ValueError, match="pixels must be"):
            ShiftedViews(bad)
    with pytest.raises(ValueError, match="floating-point images"):
        ShiftedViews(1.0)(torch.zeros(3, 28, 28, dtype=torch.uint8))
