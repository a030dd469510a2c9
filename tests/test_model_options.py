"""Options that reach the model and the learner through LearnerConfig and the command line."""
import pytest
import torch

from mlbook.learners import IMAML
from mlbook.learners.base import LearnerConfig
from mlbook.models import MLP


def test_mlp_activation_is_chosen_and_checked():
    assert any(isinstance(m, torch.nn.Tanh) for m in MLP(activation="tanh").modules())
    assert not any(isinstance(m, torch.nn.Tanh) for m in MLP().modules())
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="sigmoid")


def test_imaml_reads_its_proximal_strength_cg_steps_and_activation_from_the_config():
    learner = IMAML.from_config(LearnerConfig(task="regression", lam=30.0, cg_steps=7, activation="tanh",
                                              inner_steps=10, inner_lr=0.0125))
    assert (learner.lam, learner.cg_steps, learner.steps) == (30.0, 7, 10)
    assert any(isinstance(m, torch.nn.Tanh) for m in learner.model.modules())
    with pytest.raises(ValueError, match="lam"):
        IMAML.from_config(LearnerConfig(task="regression", lam=-1.0))


def test_conv4_pools_keeps_a_spatial_map_and_is_checked():
    from mlbook.models import Conv4
    x = torch.zeros(2, 1, 28, 28)
    assert Conv4(0, channels=8)(x).shape == (2, 8)
    assert Conv4(0, channels=8, pools=3)(x).shape == (2, 8 * 3 * 3)
    assert Conv4(0, channels=8, pools=2).embedding_size == 8 * 7 * 7
    # The same parameters whatever the pooling: only the function changes.
    shapes = [p.shape for p in Conv4(0, channels=8).parameters()]
    assert [p.shape for p in Conv4(0, channels=8, pools=3).parameters()] == shapes
    with pytest.raises(ValueError, match="pools must be one of 1, 2, 3, 4"):
        Conv4(0, pools=0)
    with pytest.raises(ValueError, match="image_size must be at least 8 for 3"):
        Conv4(0, image_size=7, pools=3)


def test_pools_and_mirror_images_reach_the_checkpoint_through_the_command_line(tmp_path, capsys):
    from mlbook.__main__ import main
    from mlbook.learners import ProtoNet
    from mlbook.storage import load_checkpoint
    learner = ProtoNet.from_config(LearnerConfig(image_size=28, channels=8, pools=3))
    assert learner.model(torch.zeros(1, 1, 28, 28)).shape == (1, 72)
    out = tmp_path / "p.pt"
    tiny = ["--data", "glyphs", "--glyph-classes", "200", "--image-size", "16", "--channels", "8"]
    assert main(["train", *tiny, "--pools", "2", "--rotate", "--reflect", "--optimiser", "adamw",
                 "--weight-decay", "0.1", "--steps", "2", "--out", str(out)]) == 0
    saved = load_checkpoint(out)
    assert saved["metadata"]["config"]["pools"] == 2 and saved["metadata"]["config"]["reflect"] is True
    assert saved["train_config"]["weight_decay"] == 0.1
    assert main(["evaluate", str(out), "--episodes", "3"]) == 0
    # The default is not stored, so checkpoints written before the option existed read the same.
    assert main(["train", *tiny, "--steps", "1", "--out", str(tmp_path / "q.pt")]) == 0
    assert not {"pools", "reflect"} & set(load_checkpoint(tmp_path / "q.pt")["metadata"]["config"])
    capsys.readouterr()
    assert main(["train", *tiny, "--pools", "5", "--out", str(tmp_path / "r.pt")]) != 0
    assert "--pools: invalid choice: 5" in capsys.readouterr().err
