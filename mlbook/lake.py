"""Lake's one-shot classification benchmark and an honest proxy for it (Chapter 5).

Lake, Salakhutdinov and Tenenbaum (2015) score one-shot learning on Omniglot with 20 runs of
20-way *within-alphabet* one-shot classification: each run shows one drawing of each of 20
characters from one evaluation alphabet, then 20 new drawings (by other people) to classify.
Within an alphabet the characters share strokes and style, so the task is harder than 20-way
episodes whose classes come from anywhere. This module

* evaluates a learner on Lake's runs (``all_runs.zip`` or its folder) -> a JSON-ready dict;
* scores the proxy: 20-way within-alphabet one-shot episodes (:class:`~mlbook.tasks.AlphabetFamily`)
  from alphabets held out of training;
* scores Lake's own baseline, the modified Hausdorff distance between the drawings' inked pixels
  (:class:`HausdorffBaseline`), on the same runs or episodes as any learner;
* reads which characters a learner mistakes for which on the proxy's episodes
  (:func:`proxy_confusions`, :func:`confused_pairs`), what a pair of characters that nothing can tell
  apart costs any learner (:func:`identical_pair_error_pct`), and whether two characters' drawings
  mix in ink alone (:func:`hausdorff_mixup_share`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .metrics import confidence_interval
from .tasks import AlphabetFamily, Episode
from .utils import check_positive_int, make_generator

__all__ = ["lake_runs_result", "proxy_result", "LAKE_REFERENCE_ERROR_PCT", "HausdorffBaseline",
           "ink_points", "modified_hausdorff_distances", "proxy_confusions", "confused_pairs",
           "identical_pair_error_pct", "hausdorff_mixup_share"]

# Error rates (%) reported by Lake et al. (2015) on the 20 runs.
LAKE_REFERENCE_ERROR_PCT = {"people": 4.5, "Bayesian program learning": 3.3,
                            "modified Hausdorff distance": 38.8}


# Lake's images are black ink on white; ours are bright ink on dark, scaled to [0, 1].
INK_THRESHOLD = 0.5


def ink_points(image: torch.Tensor) -> torch.Tensor:
    """The inked pixels of one drawing as ``[n, 2]`` (row, column) coordinates, centred on their
    mean, as Lake's baseline reads an image (Chapter 5).

    ``image`` is ``[H, W]`` or ``[1, H, W]`` with bright strokes on a dark background in [0, 1];
    a pixel counts as ink above one half. Centring makes the distance blind to where on the
    canvas a character was drawn.
    """
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 2:
        raise ValueError(f"image must be one drawing [H, W] or [1, H, W], got shape {tuple(image.shape)}")
    rows, cols = torch.nonzero(image > INK_THRESHOLD, as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("image has no inked pixels (none above 0.5): the Hausdorff distance needs strokes")
    points = torch.stack([rows, cols], 1).to(torch.float64)
    return points - points.mean(0)


def modified_hausdorff_distances(queries: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
    """``[Q, S]`` modified Hausdorff distances between two stacks of drawings ``[n, 1, H, W]``
    (Dubuisson and Jain, 1994; Lake et al.'s baseline; Chapter 5).

    Each inked point of one drawing finds its nearest inked point of the other; the distances
    are averaged, the same is done the other way, and the larger mean is kept. Points are the
    centred ink pixels of :func:`ink_points`.
    """
    # float32 rather than Lake's float64: faster, and it changed no decision on 300 test and
    # 300 validation proxy episodes; distances agree to about 1e-4 pixels.
    query_points = [ink_points(image).float() for image in queries]
    support_points = [ink_points(image).float() for image in supports]
    support_norms = [(p * p).sum(1) for p in support_points]
    distances = torch.empty(len(query_points), len(support_points), dtype=torch.float64)
    for i, a in enumerate(query_points):
        a_norm = (a * a).sum(1)
        for j, (b, b_norm) in enumerate(zip(support_points, support_norms)):
            # Only the nearest distances need a square root: take minima of the squares first.
            squared = torch.addmm(a_norm[:, None] + b_norm[None], a, b.T, alpha=-2)
            from_a = squared.amin(1).clamp_min(0).sqrt().mean()
            from_b = squared.amin(0).clamp_min(0).sqrt().mean()
            distances[i, j] = torch.maximum(from_a, from_b)
    return distances


class HausdorffBaseline:
    """Lake et al.'s baseline: each query takes the class of its nearest support drawing in
    modified Hausdorff distance on raw pixels, nothing learned (Chapter 5).

    It answers :meth:`evaluate_batch` like a learner, so :func:`lake_runs_result` and
    :func:`proxy_result` score it on exactly the runs or episodes a learner gets (pass
    ``state=None``). Give it the drawings as Lake did: 105 pixels, not framed. On Lake's 20
    runs it makes the 38.8% errors of ``LAKE_REFERENCE_ERROR_PCT``.
    """

    name = "modified Hausdorff distance"

    def evaluate_batch(self, state, episode: Episode, views=None) -> dict[str, torch.Tensor]:
        """Per-task query accuracy ``{"accuracy": [B]}`` (Chapter 5)."""
        if views is not None:
            raise ValueError("views (test-time augmentation) are for learners; the Hausdorff baseline "
                             "compares the drawings as they are")
        if episode.support_y.dtype != torch.int64:
            raise ValueError("the Hausdorff baseline classifies: episode labels must be int64 classes")
        accuracy = []
        for b in range(episode.batch_size):
            nearest = modified_hausdorff_distances(episode.query_x[b].cpu(), episode.support_x[b].cpu()).argmin(1)
            predicted = episode.support_y[b].cpu()[nearest]
            accuracy.append((predicted == episode.query_y[b].cpu()).float().mean())
        return {"accuracy": torch.stack(accuracy)}

    def __repr__(self) -> str:
        return "HausdorffBaseline()"


def _per_task_error(learner, state, episode: Episode, batch_size: int = 20, views=None) -> torch.Tensor:
    errors = []
    for part in episode.chunks(batch_size):
        metrics = learner.evaluate_batch(state, part, views=views)
        errors.append(100.0 * (1.0 - metrics["accuracy"].float().cpu()))
    return torch.cat(errors)


def lake_runs_result(learner, state, runs_path, image_size: int = 28, device="cpu", views=None,
                     frame: str = "canvas") -> dict:
    """Score a learner on Lake's 20 runs; a JSON-ready dict with the error rates (Chapter 5).

    ``runs_path`` is ``all_runs.zip`` or its unpacked folder. Returns ``mean_error_pct``,
    ``per_run_error_pct`` (one number per run), ``runs`` (their names) and the published
    reference error rates. ``views``: optional test-time augmentation (:class:`mlbook.augment.ShiftedViews`).
    ``frame``: the framing the learner was trained with (:func:`mlbook.data.framing.frame_characters`).
    """
    from .data.omniglot import read_lake_runs

    episode, names = read_lake_runs(runs_path, image_size=image_size, frame=frame)
    errors = _per_task_error(learner, state, episode.to(device), views=views)
    return {"benchmark": "lake2015 20-way within-alphabet one-shot", "runs": list(names),
            "mean_error_pct": round(errors.mean().item(), 4),
            "per_run_error_pct": [round(e, 4) for e in errors.tolist()],
            "reference_error_pct": LAKE_REFERENCE_ERROR_PCT}


# Episodes drawn per batch by the proxy; the draws, and so the episodes, depend on it.
PROXY_BATCH = 20


def _proxy_batches(images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor, episodes: int,
                   ways: int, seed: int, device, characters: bool = False):
    """Yield :func:`proxy_result`'s episodes in order, a batch at a time, as ``(batch, alphabet of
    each episode, characters)``; ``characters`` (when asked for) is ``[B, ways]``, the character
    (class index of ``images``) behind each label, else None."""
    episodes = check_positive_int("episodes", episodes)
    family = AlphabetFamily(images, alphabets, ways=ways, shots=1, queries=1, classes=classes,
                            within=1.0, device=device)
    generator = make_generator(seed, family.device)
    if characters:
        # The draws never read the pixels: a twin family whose every image holds its character's
        # number, drawn from the same seed, names the character behind each label of each episode.
        numbers = torch.arange(images.shape[0], dtype=torch.float32, device=family.device)
        numbers = numbers[:, None, None, None].expand(images.shape[0], images.shape[1], 1, 1)
        twin = AlphabetFamily(numbers, alphabets, ways=ways, shots=1, queries=1, classes=classes,
                              within=1.0, device=family.device)
        twin_generator = make_generator(seed, family.device)
    remaining = episodes
    while remaining > 0:
        size = min(PROXY_BATCH, remaining)
        batch, names = family.sample(size, generator, return_alphabets=True)
        named = None
        if characters:
            drawn = twin.sample(size, twin_generator)
            named = torch.empty_like(drawn.support_y)
            named.scatter_(1, drawn.support_y, drawn.support_x.flatten(2)[..., 0].long())
        yield batch, names, named
        remaining -= size


def proxy_episode_alphabets(images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor,
                            episodes: int = 600, ways: int = 20, seed: int = 2015) -> list[str]:
    """The alphabet of each of :func:`proxy_result`'s episodes, in order, with no network
    (Chapter 5): the episodes depend on the seed and the held-out characters only, so a record's
    per-episode scores can be split by alphabet without scoring them again."""
    return [name for _, names, _ in _proxy_batches(images, alphabets, classes, episodes, ways, seed, "cpu")
            for name in names]


def _predicted_labels(learner, state, episode: Episode) -> torch.Tensor:
    """``[B, queries]``: the label each query of each task is given."""
    with torch.set_grad_enabled(getattr(learner, "adapts_with_gradients", False)):
        episode_logits = getattr(learner, "episode_logits", None)
        if episode_logits is not None:
            return episode_logits(state, episode).argmax(-1).detach()
        return torch.stack([learner.predict(learner.adapt(state, sx, sy), qx).argmax(-1).detach()
                            for sx, sy, qx in zip(episode.support_x, episode.support_y, episode.query_x)])


def proxy_confusions(learner, state, images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor,
                     episodes: int = 600, ways: int = 20, seed: int = 2015, device="cpu") -> dict:
    """Which character a learner takes each query of :func:`proxy_result`'s episodes for (Chapter 5).

    The same episodes as :func:`proxy_result` with the same arguments. Returns ``alphabets`` (one
    name per episode), ``present`` ``[episodes, ways]`` (the characters of each episode, as class
    indices of ``images``), ``truth`` and ``predicted`` ``[episodes, ways]`` (each query's character
    and the one it was taken for). :func:`confused_pairs` reads which characters are mistaken for
    which.
    """
    names, present, truth, predicted = [], [], [], []
    for batch, batch_names, characters in _proxy_batches(images, alphabets, classes, episodes, ways, seed,
                                                         device, characters=True):
        labels = _predicted_labels(learner, state, batch).to(characters.device)
        names += batch_names
        present.append(characters)
        truth.append(characters.gather(1, batch.query_y.to(characters.device)))
        predicted.append(characters.gather(1, labels))
    return {"alphabets": names, "present": torch.cat(present).cpu(), "truth": torch.cat(truth).cpu(),
            "predicted": torch.cat(predicted).cpu()}


def confused_pairs(confusions: dict, alphabet: str) -> list[dict]:
    """The pairs of characters of ``alphabet`` mistaken for each other in :func:`proxy_confusions`'s
    episodes, most errors first (Chapter 5).

    Each pair is ``{"characters": (a, b), "errors": n, "at_risk": m}``: ``errors`` queries of either
    character were taken for the other, out of the ``at_risk`` queries of the two in episodes that
    hold both. Two characters nothing can tell apart err on about half of ``at_risk``.
    """
    rows = [i for i, name in enumerate(confusions["alphabets"]) if name == alphabet]
    if not rows:
        raise ValueError(f"alphabet {alphabet!r} has no episode here; the episodes' alphabets are "
                         f"{sorted(set(confusions['alphabets']))}")
    truth, predicted = confusions["truth"][rows].flatten(), confusions["predicted"][rows].flatten()
    wrong = truth != predicted
    counts: dict[tuple[int, int], int] = {}
    for a, b in zip(truth[wrong].tolist(), predicted[wrong].tolist()):
        pair = (min(a, b), max(a, b))
        counts[pair] = counts.get(pair, 0) + 1
    present = [set(row) for row in confusions["present"][rows].tolist()]
    return [{"characters": pair, "errors": n,
             "at_risk": 2 * sum(pair[0] in held and pair[1] in held for held in present)}
            for pair, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def identical_pair_error_pct(characters: int, ways: int = 20) -> float:
    """The error (%) that one pair of indistinguishable characters adds to ``ways``-way one-shot
    episodes drawn from an alphabet of ``characters`` (Chapter 5): an episode holds both with
    probability ways(ways-1) / (characters(characters-1)), and then one of their two queries is
    lost on average, whatever the learner."""
    characters, ways = check_positive_int("characters", characters), check_positive_int("ways", ways)
    if ways > characters:
        raise ValueError(f"ways = {ways} is more than the alphabet's {characters} characters")
    return 100.0 * (ways - 1) / (characters * (characters - 1)) if characters > 1 else 0.0


def hausdorff_mixup_share(first: torch.Tensor, second: torch.Tensor) -> float:
    """The share of the drawings of two characters (``[n, 1, H, W]`` each, 105 pixels as Lake drew
    them) whose nearest other drawing in modified Hausdorff distance is of the other character
    (Chapter 5): about half for two characters drawn alike, near zero for two that differ."""
    if first.shape[0] < 2 or second.shape[0] < 2:
        raise ValueError(f"each character needs at least two drawings; got {first.shape[0]} and "
                         f"{second.shape[0]}")
    drawings = torch.cat([first, second])
    distances = modified_hausdorff_distances(drawings, drawings)
    distances.fill_diagonal_(float("inf"))
    own = torch.arange(drawings.shape[0]) < first.shape[0]
    return (own != own[distances.argmin(1)]).float().mean().item()


def proxy_result(learner, state, images: torch.Tensor, alphabets: Sequence[str], classes: torch.Tensor,
                 episodes: int = 600, ways: int = 20, seed: int = 2015, device="cpu", views=None) -> dict:
    """The honest stand-in for Lake's runs: within-alphabet 20-way 1-shot episodes (Chapter 5).

    ``classes`` must be classes of alphabets held out of training. Like a run, every episode
    has one drawing per character to learn from and one other drawing per character to
    classify. Returns ``mean_error_pct`` with ``ci95_pct``, ``per_run_error_pct`` (one number
    per episode) and the mean error of each held-out alphabet. ``views``: optional test-time
    augmentation (:class:`mlbook.augment.ShiftedViews`), the same for every episode.
    """
    errors, names = [], []
    for batch, batch_names, _ in _proxy_batches(images, alphabets, classes, episodes, ways, seed, device):
        errors.append(_per_task_error(learner, state, batch, views=views))
        names += batch_names
    errors = torch.cat(errors)
    mean, ci95 = confidence_interval(errors)
    per_alphabet = {name: round(errors[[i for i, n in enumerate(names) if n == name]].mean().item(), 4)
                    for name in sorted(set(names))}
    return {"benchmark": f"proxy: {ways}-way within-alphabet one-shot on held-out alphabets",
            "alphabets": sorted(set(names)), "episodes": episodes,
            "mean_error_pct": round(mean, 4), "ci95_pct": round(ci95, 4),
            "per_alphabet_error_pct": per_alphabet,
            "per_run_error_pct": [round(e, 4) for e in errors.tolist()],
            "reference_error_pct": LAKE_REFERENCE_ERROR_PCT}
