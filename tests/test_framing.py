"""Framing characters: centred on their ink or fitted to their bounding box (Chapter 5)."""
import zipfile

import pytest
import torch

from mlbook.data.framing import (FIT_MARGIN, FRAMES, PEN_WIDTH, frame_characters, stroke_widths,
                                  thin_strokes)

from omniglot_support import SHARED, SMALL, isolated, needs_shared  # noqa: F401 (isolated: autouse)


def _stroke_l(top: int, left: int, length: int, width: int = 3, canvas: int = 105) -> torch.Tensor:
    """An L of two strokes on a dark canvas: a character whose place and size we choose."""
    image = torch.zeros(canvas, canvas, dtype=torch.uint8)
    image[top:top + length, left:left + width] = 255
    image[top + length - width:top + length, left:left + length] = 255
    return image


def _ink_box(image: torch.Tensor, threshold: int = 128) -> tuple[int, int, int, int]:
    rows = torch.nonzero((image >= threshold).any(1)).flatten()
    cols = torch.nonzero((image >= threshold).any(0)).flatten()
    return rows[0].item(), rows[-1].item(), cols[0].item(), cols[-1].item()


def test_canvas_is_a_plain_resize_and_batch_dimensions_are_kept():
    images = torch.stack([_stroke_l(10, 10, 40), _stroke_l(50, 30, 20)]).reshape(2, 1, 105, 105)
    framed = frame_characters(images, 21, "canvas")
    assert framed.shape == (2, 1, 21, 21) and framed.dtype == torch.uint8
    # 105 -> 21 is an exact 5x5 area average.
    expected = torch.nn.functional.avg_pool2d(images.float(), 5).round().to(torch.uint8)
    assert torch.equal(framed, expected)


def test_centred_moves_the_ink_to_the_middle_and_keeps_its_size():
    corner, middle = _stroke_l(5, 5, 30), _stroke_l(37, 37, 30)
    framed = frame_characters(torch.stack([corner, middle]), 105, "centred")
    # The same character drawn in a corner and in the middle gives (nearly) the same image.
    assert (framed[0].float() - framed[1].float()).abs().mean() < 2.0
    mass = framed[0].float() / framed[0].float().sum()
    axis = torch.arange(105.0)
    assert abs((mass.sum(1) * axis).sum().item() - 52) < 1.0
    assert abs((mass.sum(0) * axis).sum().item() - 52) < 1.0
    top, bottom, left, right = _ink_box(framed[0])
    assert abs((bottom - top + 1) - 30) <= 2 and abs((right - left + 1) - 30) <= 2


def test_fitted_fills_the_frame_whatever_the_size_drawn():
    small, large = _stroke_l(60, 10, 20, width=2), _stroke_l(5, 20, 80, width=8)
    framed = frame_characters(torch.stack([small, large]), 84, "fitted")
    for image in framed:
        top, bottom, left, right = _ink_box(image)
        # The longer side of the box spans the frame less its margin, centred.
        assert abs((bottom - top + 1) - 84 / (1 + FIT_MARGIN)) <= 2
        assert abs((top + bottom) / 2 - 41.5) <= 1.5 and abs((left + right) / 2 - 41.5) <= 1.5
    # The same L drawn four times larger (strokes four times as wide): fitted, the two images differ
    # by less than a third as much as the two canvases do.
    canvases = frame_characters(torch.stack([small, large]), 84, "canvas").float()
    fitted_gap = (framed[0].float() - framed[1].float()).abs().mean()
    assert fitted_gap < (canvases[0] - canvases[1]).abs().mean() / 3


def test_thinning_leaves_a_connected_centre_line_one_pixel_wide():
    bar = torch.zeros(1, 40, 60, dtype=torch.bool)
    bar[0, 15:24, 10:50] = True                       # a 9-pixel-wide horizontal stroke
    line = thin_strokes(bar)[0]
    rows, cols = torch.nonzero(line, as_tuple=True)
    assert line.sum() >= 30 and (rows - 19).abs().max() <= 1       # most of its length, on its middle
    assert (line.sum(0) <= 1).all()                                 # one pixel wide
    assert cols.max() - cols.min() + 1 == line.sum()                # unbroken
    assert not (line & ~bar[0]).any()
    with pytest.raises(ValueError, match="ink must be a boolean tensor"):
        thin_strokes(bar.to(torch.uint8))


def _zhang_suen_pixel_by_pixel(ink: torch.Tensor) -> torch.Tensor:
    """Zhang and Suen's thinning as they wrote it: every pixel of one image looked at, each pass."""
    image = [[int(v) for v in row] for row in ink.tolist()]
    height, width = len(image), len(image[0])
    at = lambda r, c: image[r][c] if 0 <= r < height and 0 <= c < width else 0  # noqa: E731
    while True:
        peeled = False
        for second_pass in (False, True):
            removable = []
            for r in range(height):
                for c in range(width):
                    if not image[r][c]:
                        continue
                    p = [at(r - 1, c), at(r - 1, c + 1), at(r, c + 1), at(r + 1, c + 1),
                         at(r + 1, c), at(r + 1, c - 1), at(r, c - 1), at(r - 1, c - 1)]
                    runs = sum(p[i] == 0 and p[(i + 1) % 8] == 1 for i in range(8))
                    north, east, south, west = p[0], p[2], p[4], p[6]
                    sides = ((north * east * west, north * south * west) if second_pass
                             else (north * east * south, east * south * west))
                    if 2 <= sum(p) <= 6 and runs == 1 and sides == (0, 0):
                        removable.append((r, c))
            for r, c in removable:
                image[r][c] = 0
            peeled |= bool(removable)
        if not peeled:
            return torch.tensor(image, dtype=torch.bool)


def test_thinning_matches_zhang_and_suen_pixel_by_pixel():
    # Blobs of every thickness, touching the image's edges and each other, in one batch: the
    # batched thinning looks again only at pixels near the last removals, which must change no
    # verdict of the plain algorithm.
    generator = torch.Generator().manual_seed(3)
    noise = torch.rand(6, 1, 30, 34, generator=generator)
    blobs = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)[:, 0] > 0.5
    blobs[0] = True                                   # all ink
    blobs[1] = False                                  # no ink
    expected = torch.stack([_zhang_suen_pixel_by_pixel(image) for image in blobs])
    assert torch.equal(thin_strokes(blobs), expected)
    assert blobs[2:].sum() > 2 * expected[2:].sum()   # the test thins something


def test_the_pen_is_a_disc_of_the_pen_width():
    from mlbook.data.framing import _redraw
    side = 168
    dot = torch.zeros(1, side, side, dtype=torch.bool)
    dot[0, 84, 90] = True
    drawn = _redraw(dot, side)[0] > 0
    radius = round((PEN_WIDTH * side - 1) / 2)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = (rows - 84) ** 2 + (cols - 90) ** 2 <= radius ** 2 + 0.5
    assert radius == 5 and torch.equal(drawn, disc)


def test_redrawn_gives_small_and_large_drawings_one_pen_width():
    small, large = _stroke_l(60, 10, 20, width=4), _stroke_l(5, 20, 80, width=8)
    fitted = frame_characters(torch.stack([small, large]), 84, "fitted")
    redrawn = frame_characters(torch.stack([small, large]), 84, "redrawn")
    fitted_widths, redrawn_widths = stroke_widths(fitted), stroke_widths(redrawn)
    # The same pen (4 px and 8 px) on a 20-px and an 80-px L: fitted, the small L's strokes come
    # out more than twice as wide; redrawn, both have the pen's width. The pen follows the strokes'
    # centre lines, so a thick stroke's outer edge moves in by half the width it loses.
    assert fitted_widths[0] > 2 * fitted_widths[1]
    assert (redrawn_widths - PEN_WIDTH * 84).abs().max() < 1.5
    for image, width in zip(redrawn, fitted_widths):
        top, bottom, left, right = _ink_box(image)
        assert abs((bottom - top + 1) - (84 / (1 + FIT_MARGIN) - (width - PEN_WIDTH * 84))) <= 3
        assert abs((top + bottom) / 2 - 41.5) <= 1.5 and abs((left + right) / 2 - 41.5) <= 1.5


def test_blank_images_stay_blank_and_bad_input_is_refused():
    blank = torch.zeros(2, 105, 105, dtype=torch.uint8)
    for frame in FRAMES:
        assert torch.equal(frame_characters(blank, 28, frame), torch.zeros(2, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="frame must be one of.*canvas.*centred.*fitted"):
        frame_characters(blank, 28, "cropped")
    with pytest.raises(ValueError, match="images must be a uint8 tensor"):
        frame_characters(blank.float(), 28, "fitted")
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        frame_characters(blank, 0, "fitted")
    with pytest.raises(ValueError, match="images must be a uint8 tensor"):
        stroke_widths(blank.float())


def test_the_command_line_stores_the_frame_and_refuses_it_for_sinusoids(tmp_path, capsys):
    from mlbook.__main__ import main
    from mlbook.storage import load_checkpoint
    tiny = ["--data", "glyphs", "--glyph-classes", "200", "--image-size", "16", "--channels", "8", "--pools", "2"]
    assert main(["train", *tiny, "--frame", "fitted", "--steps", "2", "--out", str(tmp_path / "f.pt")]) == 0
    assert load_checkpoint(tmp_path / "f.pt")["metadata"]["config"]["frame"] == "fitted"
    assert main(["evaluate", str(tmp_path / "f.pt"), "--episodes", "3"]) == 0
    assert main(["train", *tiny, "--steps", "1", "--out", str(tmp_path / "c.pt")]) == 0
    assert "frame" not in load_checkpoint(tmp_path / "c.pt")["metadata"]["config"]
    capsys.readouterr()
    assert main(["train", "--data", "sinusoid", "--frame", "centred", "--steps", "1",
                 "--out", str(tmp_path / "s.pt")]) != 0
    assert "--frame centred frames images" in capsys.readouterr().err
    assert main(["train", *tiny, "--frame", "zoomed", "--out", str(tmp_path / "z.pt")]) != 0
    assert "--frame" in capsys.readouterr().err


@needs_shared
def test_real_characters_are_framed_from_their_full_size_drawings(tmp_path):
    from mlbook.data import load_image_classes
    from mlbook.data.omniglot import read_lake_runs
    plain = load_image_classes("omniglot", image_size=28, archives=[str(SHARED / SMALL[0])], data_dir=tmp_path,
                               download=False, verbose=False)
    fitted = load_image_classes("omniglot", image_size=28, archives=[str(SHARED / SMALL[0])], data_dir=tmp_path,
                                download=False, verbose=False, frame="fitted")
    assert fitted.images.shape == plain.images.shape and fitted.alphabets == plain.alphabets
    # Characters rarely fill the drawer's canvas: fitted, each one covers more of its image.
    assert (fitted.images > 127).float().mean() > 1.5 * (plain.images > 127).float().mean()
    # Lake's runs are framed the same way as the training images.
    with zipfile.ZipFile(SHARED / SMALL[0]) as source:
        pngs = sorted(n for n in source.namelist() if n.endswith(".png"))[:2]
        drawings = [source.read(n) for n in pngs]
    with zipfile.ZipFile(tmp_path / "all_runs.zip", "w") as archive:
        archive.writestr("run01/class_labels.txt", "run01/test/item01.png run01/training/class01.png\n")
        archive.writestr("run01/training/class01.png", drawings[0])
        archive.writestr("run01/test/item01.png", drawings[1])
    runs, _ = read_lake_runs(tmp_path / "all_runs.zip", image_size=28, frame="fitted")
    first = fitted.images[0, 0].float() / 255
    assert torch.allclose(runs.support_x[0, 0, 0], first, atol=1 / 255 + 1e-6)
