"""Episodes per second: the tensor sampler against a per-item Python pipeline (Chapter 2).

Workload: meta-batches of 32 episodes, 20-way 5-shot with 15 queries per class, from real
Omniglot (the two minimal archives in ../shared/data/omniglot, when present) or else the
procedural glyphs. Both samplers draw from the same decoded uint8 tensor in memory, so the
comparison is about sampling, not decoding.

* tensor: :func:`mlbook.tasks.sample_nway_kshot`, a few random permutations and one gather.
* per-item: the usual pipeline of task datasets (learn2learn's TaskDataset, torchmeta): a
  ``torch.utils.data.Dataset`` that returns one (image, label) at a time, a task sampler that
  picks classes and example indices in Python, ``default_collate`` of the items, labels
  remapped, and the support and query sets split apart; 32 tasks are stacked per meta-batch.
  Two datasets are timed: the usual one (each item made a PIL image, then a ToTensor-style
  cast) and the leanest possible one (a slice of the uint8 tensor and a cast).

The two are timed alternately in one process, several rounds each, and the median rates and
their ratio are printed. Run: ``python benchmarks/episode_sampling.py [--rounds 5]``.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlbook.data import load_image_classes  # noqa: E402
from mlbook.tasks import Episode, ImageClassFamily, sample_nway_kshot  # noqa: E402

WAYS, SHOTS, QUERIES, META_BATCH = 20, 5, 15, 32
FLOOR = 20.0


class CharacterImages(Dataset):
    """One image at a time from the decoded uint8 tensor: (float [1, H, W], class).

    The leanest per-item dataset: no image objects, no transforms, just a slice and a cast.
    """

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.examples = images.shape[1]

    def __len__(self):
        return self.images.shape[0] * self.examples

    def __getitem__(self, index):
        cls, example = divmod(index, self.examples)
        image = self.images[cls, example].float().div(255.0).unsqueeze(0)
        return image, cls


class CharacterPILImages(CharacterImages):
    """The usual per-item dataset (torchmeta's and learn2learn's Omniglot): each item becomes
    a PIL image and goes through a ToTensor-style transform (uint8 array -> float [1, H, W] / 255).

    The arrays are already decoded and resized in memory, so no file is read per item.
    """

    def __init__(self, images: torch.Tensor):
        super().__init__(images)
        self.arrays = images.numpy()

    def __getitem__(self, index):
        cls, example = divmod(index, self.examples)
        image = Image.fromarray(self.arrays[cls, example], mode="L")
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).float().div(255.0)
        return tensor.unsqueeze(0), cls


def per_item_meta_batch(dataset: CharacterImages, classes: int, rng: random.Random) -> Episode:
    """A meta-batch built the per-item way: Python indices, one __getitem__ per image, collate."""
    tasks = []
    for _ in range(META_BATCH):
        chosen = rng.sample(range(classes), WAYS)
        support, query = [], []
        for label, cls in enumerate(chosen):
            picks = rng.sample(range(dataset.examples), SHOTS + QUERIES)
            items = [dataset[cls * dataset.examples + e] for e in picks]
            items = [(image, label) for image, _ in items]      # remap labels to 0..N-1
            support += items[:SHOTS]
            query += items[SHOTS:]
        sx, sy = default_collate(support)
        qx, qy = default_collate(query)
        tasks.append((sx, sy, qx, qy))
    return Episode(*(torch.stack(parts) for parts in zip(*tasks)))


def rate(fn, seconds: float) -> float:
    """Meta-batches per second over at least ``seconds`` of repeated calls, times 32 episodes."""
    fn()  # warm-up
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count * META_BATCH / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing window per round and sampler")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
    if "MLBOOK_OMNIGLOT" not in os.environ and shared.is_dir():
        os.environ["MLBOOK_OMNIGLOT"] = str(shared)
    data = load_image_classes("auto", download=False)
    images = data.images
    family = ImageClassFamily(images, WAYS, SHOTS, QUERIES)
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    samplers = {
        "tensor: ImageClassFamily.sample": lambda: family.sample(META_BATCH, generator),
        "tensor: sample_nway_kshot on uint8": lambda: sample_nway_kshot(images, WAYS, SHOTS, QUERIES,
                                                                         META_BATCH, generator),
        "per-item: uint8 tensor slices": (lambda d: lambda: per_item_meta_batch(d, images.shape[0], rng))(
            CharacterImages(images)),
        "per-item: PIL image + ToTensor": (lambda d: lambda: per_item_meta_batch(d, images.shape[0], rng))(
            CharacterPILImages(images)),
    }
    # Every sampler gives the same layout of the same kind of episode.
    reference = samplers["tensor: ImageClassFamily.sample"]()
    for name, sampler in samplers.items():
        episode = sampler()
        for part in ("support_x", "support_y", "query_x", "query_y"):
            a, b = getattr(reference, part), getattr(episode, part)
            assert a.shape == b.shape and a.dtype == b.dtype, (name, part, a.shape, b.shape, a.dtype, b.dtype)

    print(f"data: {data.source}, {images.shape[0]} classes x {images.shape[1]} examples, "
          f"{images.shape[-1]}x{images.shape[-1]} px; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"workload: meta-batch {META_BATCH} of {WAYS}-way {SHOTS}-shot, {QUERIES} queries per class; "
          f"episodes per second, {args.rounds} alternating rounds")
    rates = {name: [] for name in samplers}
    for r in range(args.rounds):
        for name, sampler in samplers.items():
            rates[name].append(rate(sampler, args.seconds))
        print(f"  round {r + 1}: " + " | ".join(f"{rates[n][-1]:.1f}" for n in samplers))
    median = {name: statistics.median(v) for name, v in rates.items()}
    fastest = median["tensor: ImageClassFamily.sample"]
    for name, value in median.items():
        print(f"{name:38s} {value:9.1f} episodes/s   tensor sampler is {fastest / value:6.1f}x this")
    ratio = fastest / median["per-item: PIL image + ToTensor"]
    lean = fastest / median["per-item: uint8 tensor slices"]
    print(f"ratio against the usual per-item pipeline: {ratio:.1f}x (floor {FLOOR:.0f}x: "
          f"{'met' if ratio >= FLOOR else 'NOT met'}); against the leanest per-item dataset: {lean:.1f}x")
    return 0 if ratio >= FLOOR else 1


if __name__ == "__main__":
    sys.exit(main())
