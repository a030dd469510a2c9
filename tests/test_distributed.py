"""Sharding the meta-batch over processes: 2 CPU processes (torchrun, gloo) equal one process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlbook.distributed import World, shard_episode, world
from mlbook.tasks import SinusoidFamily
from mlbook.storage import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_shards_cover_the_meta_batch_once_with_weights_summing_to_one():
    episode = SinusoidFamily(shots=3, queries=2).sample(7, torch.Generator().manual_seed(0))
    for size in (1, 2, 3, 7):
        shards = [shard_episode(episode, World(rank, size)) for rank in range(size)]
        assert sum(w for _, w in shards) == pytest.approx(1.0)
        assert torch.equal(torch.cat([s.support_x for s, _ in shards]), episode.support_x)
        assert torch.equal(torch.cat([s.query_y for s, _ in shards]), episode.query_y)
    with pytest.raises(ValueError, match="meta_batch_size"):
        shard_episode(episode, World(0, 8))


def test_not_distributed_means_one_process():
    assert world() == World(0, 1) and world().is_main


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path, name, processes, args):
    out = tmp_path / f"{name}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLBOOK_NO_PROGRESS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "mlbook"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={_free_port()}", "-m", "mlbook"]
    done = subprocess.run(command + ["train", *args, "--device", "cpu", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_checkpoint(out)


@pytest.mark.parametrize("args", [
    ["--learner", "MAML", "--data", "sinusoid", "--shots", "5", "--queries", "5", "--steps", "4",
     "--meta-batch-size", "4"],
    ["--learner", "ProtoNet", "--data", "glyphs", "--glyph-classes", "200", "--image-size", "16", "--channels", "8", "--norm", "none",
     "--distance", "cosine",
     "--ways", "5", "--shots", "1", "--queries", "3", "--steps", "3", "--meta-batch-size", "3", "--rotate",
     "--jitter", "1"],
], ids=["maml-sinusoid", "protonet-glyphs-odd-batch"])
def test_two_processes_match_one(tmp_path, args):
    one = _train(tmp_path, "one", 1, args)
    two = _train(tmp_path, "two", 2, args)
    assert two["step"] == one["step"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    for a, b in zip(torch.utils._pytree.tree_leaves(one["state"]), torch.utils._pytree.tree_leaves(two["state"])):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # (The image case uses no normalisation and cosine distances on purpose: a conv bias just before
    # GroupNorm, or a shift of every embedding under Euclidean distances, has an exactly zero
    # gradient, and Adam would blow its rounding noise up to steps of size lr.)
    # The processes really learned: the state moved away from its initialisation.
    assert one["losses"][0] != one["losses"][-1]
