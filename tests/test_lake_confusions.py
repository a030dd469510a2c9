"""Which characters a learner mistakes for which on the proxy's episodes, what a pair of identical
characters costs any learner, and whether two characters' drawings mix in ink alone (Chapter 5)."""
import json
from itertools import combinations
from pathlib import Path

import pytest
import torch

from mlbook.__main__ import main
from mlbook.lake import (confused_pairs, hausdorff_mixup_share, identical_pair_error_pct, proxy_confusions,
                         proxy_episode_alphabets, proxy_result)
from mlbook.learners import ProtoNet
from mlbook.reference import LAKE_README_RUN, RUNS_DIR
from mlbook.tasks import Episode
from test_cli import one_line_error

CHARACTERS, DRAWERS, SIZE = 12, 4, 6
ALPHABETS = ["Alpha"] * 7 + ["Beta"] * 5


def numbered_images() -> torch.Tensor:
    """Every drawing of character c is the constant (c + 1) / 100, so a pixel names its character."""
    values = (torch.arange(CHARACTERS, dtype=torch.float32) + 1) / 100
    return values[:, None, None, None].expand(CHARACTERS, DRAWERS, SIZE, SIZE).contiguous()


class ReadsThePixels:
    """A stand-in learner: each query is taken for the support image whose pixel value is nearest,
    except that character ``confused`` is always taken for ``confused_with`` when both are present."""

    adapts_with_gradients = False

    def __init__(self, confused=None, confused_with=None):
        self.confused, self.confused_with = confused, confused_with

    def episode_logits(self, state, episode: Episode) -> torch.Tensor:
        support = episode.support_x.flatten(2)[..., 0]                 # [B, N]
        query = episode.query_x.flatten(2)[..., 0]                     # [B, Q]
        logits = -(query[..., None] - support[:, None, :]).abs()       # [B, Q, N]
        if self.confused is not None:
            wrong = (query - (self.confused + 1) / 100).abs() < 1e-6
            other = (support - (self.confused_with + 1) / 100).abs() < 1e-6
            for b, q in zip(*torch.nonzero(wrong, as_tuple=True)):
                if other[b].any():
                    logits[b, q, other[b]] = 1.0
        # Columns by label, as a learner's logits are (one shot: one support image per label).
        return torch.empty_like(logits).scatter_(2, episode.support_y[:, None].expand_as(logits), logits)

    def evaluate_batch(self, state, episode: Episode, views=None) -> dict[str, torch.Tensor]:
        labels = self.episode_logits(state, episode).argmax(-1)
        return {"accuracy": (labels == episode.query_y).float().mean(1)}


def test_confusions_name_each_episodes_characters_in_the_proxys_order():
    images, classes = numbered_images(), torch.arange(CHARACTERS)
    confusions = proxy_confusions(ReadsThePixels(), None, images, ALPHABETS, classes, episodes=30, ways=4,
                                  seed=3)
    assert confusions["alphabets"] == proxy_episode_alphabets(images, ALPHABETS, classes, episodes=30, ways=4,
                                                              seed=3)
    assert confusions["present"].shape == confusions["truth"].shape == (30, 4)
    # A learner that reads the pixels makes no error, and each episode's four characters are
    # distinct characters of the episode's alphabet.
    assert torch.equal(confusions["truth"], confusions["predicted"])
    for name, present, truth in zip(confusions["alphabets"], confusions["present"].tolist(),
                                    confusions["truth"].tolist()):
        assert len(set(present)) == 4 and all(ALPHABETS[c] == name for c in present)
        assert sorted(truth) == sorted(present)   # one query per character


def test_confusions_score_the_same_episodes_as_the_proxy():
    images, classes = numbered_images(), torch.arange(CHARACTERS)
    learner = ReadsThePixels(confused=2, confused_with=5)
    confusions = proxy_confusions(learner, None, images, ALPHABETS, classes, episodes=40, ways=4, seed=7)
    scored = proxy_result(learner, None, images, ALPHABETS, classes, episodes=40, ways=4, seed=7)
    replayed = 100 * (confusions["truth"] != confusions["predicted"]).float().mean(1)
    assert replayed.tolist() == pytest.approx(scored["per_run_error_pct"])
    # Every error is character 2 taken for 5, in exactly the episodes that hold both.
    pairs = confused_pairs(confusions, "Alpha")
    held_both = sum({2, 5} <= set(row) for row, name in zip(confusions["present"].tolist(), confusions["alphabets"])
                    if name == "Alpha")
    assert held_both > 0
    assert pairs == [{"characters": (2, 5), "errors": held_both, "at_risk": 2 * held_both}]
    assert confused_pairs(confusions, "Beta") == []
    with pytest.raises(ValueError, match="alphabet 'Gamma'.*'Alpha', 'Beta'"):
        confused_pairs(confusions, "Gamma")


def test_confusions_of_a_real_learner_match_its_proxy_errors():
    """A Conv4 ProtoNet, untrained: whatever it predicts, the replayed errors are the proxy's."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(CHARACTERS, DRAWERS, 28, 28, generator=generator)
    learner = ProtoNet()
    state = learner.init(0)
    classes = torch.arange(CHARACTERS)
    confusions = proxy_confusions(learner, state, images, ALPHABETS, classes, episodes=12, ways=5, seed=1)
    scored = proxy_result(learner, state, images, ALPHABETS, classes, episodes=12, ways=5, seed=1)
    replayed = 100 * (confusions["truth"] != confusions["predicted"]).float().mean(1)
    assert replayed.tolist() == pytest.approx(scored["per_run_error_pct"])


@pytest.mark.parametrize("characters, ways", [(4, 3), (6, 4), (7, 7), (5, 2)])
def test_identical_pair_cost_matches_every_episode_enumerated(characters, ways):
    """Over all equally likely episodes, a pair held together loses one query of ``ways``."""
    episodes = list(combinations(range(characters), ways))
    lost = sum(1 for held in episodes if 0 in held and 1 in held)
    assert identical_pair_error_pct(characters, ways) == pytest.approx(100 * lost / (len(episodes) * ways))


def test_identical_pair_cost_refuses_more_ways_than_characters():
    assert identical_pair_error_pct(22, 20) == pytest.approx(100 * 19 / (22 * 21))
    with pytest.raises(ValueError, match="ways = 5 is more than the alphabet's 4 characters"):
        identical_pair_error_pct(4, 5)
    with pytest.raises(ValueError, match="ways"):
        identical_pair_error_pct(4, 0)


def strokes(kind: str, count: int, size: int = 16) -> torch.Tensor:
    """``count`` drawings [count, 1, size, size]: a vertical or a horizontal bar, moved a little."""
    images = torch.zeros(count, 1, size, size)
    for i in range(count):
        offset = 3 + i % 4
        if kind == "vertical":
            images[i, 0, 2:14, offset] = 1.0
        else:
            images[i, 0, offset, 2:14 - i % 3] = 1.0
    return images


def test_ink_mixup_is_zero_for_distinct_characters_and_whole_for_copies():
    vertical, horizontal = strokes("vertical", 5), strokes("horizontal", 5)
    assert hausdorff_mixup_share(vertical, horizontal) == 0.0
    # Two "characters" drawn identically (bars of three lengths, copied): every drawing's
    # nearest other drawing is its copy, of the other character.
    bars = strokes("horizontal", 3)
    assert hausdorff_mixup_share(bars, bars.clone()) == 1.0
    with pytest.raises(ValueError, match="at least two drawings; got 1 and 5"):
        hausdorff_mixup_share(vertical[:1], horizontal)


ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


@pytest.mark.skipif(not (OMNIGLOT / "images_background_small1.zip").exists(), reason="Omniglot archives absent")
def test_cli_names_the_readme_runs_worst_pairs(capsys, monkeypatch, tmp_path):
    """The README's reference run: Early Aramaic's worst pair is characters 04 and 20, a coin flip."""
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(OMNIGLOT))
    monkeypatch.setenv("MLBOOK_DATA", str(tmp_path / "data"))
    checkpoint = RUNS_DIR / f"{LAKE_README_RUN}.pt"
    capsys.readouterr()
    assert main(["lake", str(checkpoint), "--proxy", "--episodes", "200", "--pairs", "2"]) == 0
    result = json.loads(capsys.readouterr()[0])
    pairs = result["confused_pairs"]
    assert sorted(pairs) == ["Early_Aramaic", "Korean"] and all(len(p) == 2 for p in pairs.values())
    worst = pairs["Early_Aramaic"][0]
    assert worst["characters"] == ["Early_Aramaic/character04", "Early_Aramaic/character20"]
    assert 0.35 < worst["errors"] / worst["at_risk"] < 0.65
    # The pairs' errors are among the proxy's own: never more than it counts.
    assert sum(p["errors"] for p in pairs["Early_Aramaic"]) <= result["per_alphabet_error_pct"]["Early_Aramaic"] \
        * 20 * result["episodes"] / 100
    for extra in (["--runs", str(tmp_path)], ["--proxy", "--baseline", "hausdorff"],
                  ["--proxy", "--test-time-shift", "6"]):
        code = main(["lake", str(checkpoint), *extra, "--pairs", "1"])
        one_line_error(code, capsys.readouterr()[1], "--pairs reads a learner's plain predictions")
