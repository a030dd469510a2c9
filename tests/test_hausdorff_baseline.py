"""Lake's modified Hausdorff distance baseline: the distance by hand, its invariances, and scoring
it on the same runs and proxy episodes as a learner (Chapter 5)."""
import json
from pathlib import Path

import pytest
import torch

from mlbook.__main__ import main
from mlbook.lake import HausdorffBaseline, ink_points, lake_runs_result, modified_hausdorff_distances
from mlbook.tasks import Episode
from test_cli import TINY_IMAGES, one_line_error, train_small_omniglot, write_lake_runs

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


def drawing(pixels, size=12):
    """A [1, size, size] image with ink (1.0) at the given (row, column) pixels."""
    image = torch.zeros(1, size, size)
    for row, col in pixels:
        image[0, row, col] = 1.0
    return image


def brute_force_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The definition written out point by point, from the raw images."""
    def points(image):
        found = [(r, c) for r in range(image.shape[-2]) for c in range(image.shape[-1]) if image[0, r, c] > 0.5]
        mean_r = sum(r for r, _ in found) / len(found)
        mean_c = sum(c for _, c in found) / len(found)
        return [(r - mean_r, c - mean_c) for r, c in found]

    def mean_nearest(p, q):
        return sum(min(((x - u) ** 2 + (y - v) ** 2) ** 0.5 for u, v in q) for x, y in p) / len(p)

    pa, pb = points(a), points(b)
    return max(mean_nearest(pa, pb), mean_nearest(pb, pa))


def test_distance_by_hand():
    """One pixel against three in a row: from the pixel the nearest is at 0; from the row, two of
    three points lie 1 away, so the larger mean is 2/3. One against two pixels 2 apart: 1 both ways."""
    dot, row, pair = drawing([(5, 5)]), drawing([(3, 2), (3, 3), (3, 4)]), drawing([(8, 1), (8, 3)])
    distances = modified_hausdorff_distances(torch.stack([dot]), torch.stack([row, pair]))
    assert distances.shape == (1, 2)
    assert distances[0, 0].item() == pytest.approx(2 / 3)
    assert distances[0, 1].item() == pytest.approx(1.0)


def test_distance_matches_its_definition_on_random_drawings():
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 1, 10, 10, generator=generator) > 0.7).float()
    distances = modified_hausdorff_distances(images[:3], images[3:])
    for i in range(3):
        for j in range(3):
            assert distances[i, j].item() == pytest.approx(brute_force_distance(images[i], images[3 + j]), abs=1e-4)
    assert torch.allclose(modified_hausdorff_distances(images[3:], images[:3]), distances.T, atol=1e-4)


def test_distance_ignores_where_a_drawing_sits_and_sees_its_shape():
    generator = torch.Generator().manual_seed(1)
    image = torch.zeros(1, 20, 20)
    image[:, 4:12, 4:12] = (torch.rand(1, 8, 8, generator=generator) > 0.6).float()
    moved = torch.roll(image, shifts=(5, 3), dims=(1, 2))
    flipped = torch.flip(image, dims=(2,))
    distances = modified_hausdorff_distances(torch.stack([image]), torch.stack([image, moved, flipped]))
    assert distances[0, 0].item() == pytest.approx(0.0, abs=1e-2)
    assert distances[0, 1].item() == pytest.approx(0.0, abs=1e-2)
    assert distances[0, 2].item() > 0.1


def test_ink_points_are_centred_and_blank_drawings_refused():
    points = ink_points(drawing([(0, 0), (2, 4)]))
    assert points.tolist() == [[-1.0, -2.0], [1.0, 2.0]]
    with pytest.raises(ValueError, match="no inked pixels"):
        ink_points(torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match=r"\[H, W\] or \[1, H, W\]"):
        ink_points(torch.zeros(2, 5, 5))


def shapes_episode(shift=(2, 1)):
    """Three distinct shapes as supports; the queries are the same shapes moved on the canvas."""
    shapes = [drawing([(3, 3), (3, 4), (3, 5), (3, 6)], 16),          # a bar
              drawing([(3, 3), (4, 4), (5, 5), (6, 6), (7, 7)], 16),  # a diagonal
              drawing([(3, 3), (3, 5), (5, 3), (5, 5)], 16)]          # four corners
    support = torch.stack(shapes)
    query = torch.roll(support, shifts=shift, dims=(2, 3)).flip(0)
    return Episode(support[None], torch.tensor([[0, 1, 2]]), query[None], torch.tensor([[2, 1, 0]]))


def test_baseline_classifies_moved_copies_and_refuses_views():
    baseline = HausdorffBaseline()
    assert baseline.evaluate_batch(None, shapes_episode())["accuracy"].tolist() == [1.0]
    wrong = shapes_episode()
    wrong = Episode(wrong.support_x, wrong.support_y, wrong.query_x, torch.tensor([[0, 1, 2]]))
    assert baseline.evaluate_batch(None, wrong)["accuracy"].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="views"):
        baseline.evaluate_batch(None, shapes_episode(), views=lambda x: x[None])


def test_baseline_on_lake_runs_with_copied_items(tmp_path):
    """Runs whose test items are copies of their training drawings: no errors."""
    folder = tmp_path / "runs"
    write_lake_runs(folder, runs=2, ways=20)
    for run in folder.iterdir():
        for line in (run / "class_labels.txt").read_text().split("\n"):
            if line:
                test, train = line.split()
                (folder / test).write_bytes((folder / train).read_bytes())
    result = lake_runs_result(HausdorffBaseline(), None, folder, image_size=32)
    assert result["per_run_error_pct"] == [0.0, 0.0]


@pytest.fixture(scope="module")
def glyph_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "proto.pt"
    assert main(["train", "--learner", "ProtoNet", *TINY_IMAGES, "--ways", "5", "--steps", "1", "--out", str(out)]) == 0
    return out


def test_cli_scores_the_baseline_on_lake_runs(glyph_checkpoint, tmp_path, capsys):
    capsys.readouterr()
    write_lake_runs(tmp_path / "all_runs", runs=3)
    code = main(["lake", str(glyph_checkpoint), "--runs", str(tmp_path / "all_runs"), "--baseline", "hausdorff"])
    out, _ = capsys.readouterr()
    result = json.loads(out)
    assert code == 0 and result["learner"] == "modified Hausdorff distance" and result["image_size"] == 105
    assert len(result["per_run_error_pct"]) == 3 and all(0 <= e <= 100 for e in result["per_run_error_pct"])
    for checkpoints, extra in (([glyph_checkpoint], ["--test-time-shift", "1.5"]), ([glyph_checkpoint] * 2, [])):
        code = main(["lake", *map(str, checkpoints), "--runs", str(tmp_path / "all_runs"), "--baseline", "hausdorff",
                     *extra])
        _, err = capsys.readouterr()
        one_line_error(code, err, "--baseline hausdorff scores Lake's baseline alone")
    code = main(["lake", str(glyph_checkpoint), "--runs", str(tmp_path / "all_runs"), "--baseline", "chamfer"])
    _, err = capsys.readouterr()
    one_line_error(code, err, "--baseline")


@pytest.mark.skipif(not (OMNIGLOT / "images_background_small1.zip").exists(), reason="Omniglot archives absent")
def test_cli_scores_the_baseline_on_the_proxy_episodes(tmp_path, capsys, monkeypatch):
    """The baseline meets the same held-out alphabets and episodes as the checkpoint would."""
    out = train_small_omniglot(tmp_path, monkeypatch, "--queries", "1", "--steps", "1",
                               "--holdout-alphabets", "Early_Aramaic,Korean")
    capsys.readouterr()
    assert main(["lake", str(out), "--proxy", "--episodes", "4", "--baseline", "hausdorff"]) == 0
    baseline = json.loads(capsys.readouterr()[0])
    assert main(["lake", str(out), "--proxy", "--episodes", "4"]) == 0
    learned = json.loads(capsys.readouterr()[0])
    assert baseline["alphabets"] == learned["alphabets"] == ["Early_Aramaic", "Korean"]
    assert baseline["learner"] == "modified Hausdorff distance" and len(baseline["per_run_error_pct"]) == 4
    assert all(0 <= e <= 100 and e % 5 == 0 for e in baseline["per_run_error_pct"])   # 20 queries an episode
