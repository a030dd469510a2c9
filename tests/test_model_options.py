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
    with pytest.raises(ValueError, match="image_size must be at least 8 for 3 2x2 poolings, got 7"):
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


def test_conv4_space_to_depth_folds_pixels_into_channels_and_is_checked():
    from mlbook.models import Conv4
    torch.manual_seed(0)
    folded = Conv4(0, channels=8, image_size=56, space_to_depth=2)
    # Four input channels to the first convolution, a 28x28 map after the fold: the embedding
    # of a 56-pixel image has the size of a 28-pixel one's.
    assert folded.features[0].weight.shape == (8, 4, 3, 3)
    assert folded(torch.rand(2, 1, 56, 56)).shape == (2, 8)
    # The same parameter names as the unfolded Conv4, so code that reads them by name still works.
    assert [n for n, _ in folded.named_parameters()] == [n for n, _ in Conv4(0, channels=8).named_parameters()]
    # The fold is a permutation of pixels into channels: a 1-pixel detail changes one channel's input.
    x = torch.zeros(1, 1, 56, 56)
    x[0, 0, 10, 11] = 1.0
    unfolded = torch.nn.functional.pixel_unshuffle(x, 2)
    assert unfolded.shape == (1, 4, 28, 28) and unfolded[0, 1, 5, 5] == 1.0 and unfolded.sum() == 1.0
    with pytest.raises(ValueError, match="space_to_depth must divide image_size: 3 does not divide 56"):
        Conv4(0, image_size=56, space_to_depth=3)
    with pytest.raises(ValueError, match="image_size must be at least 32 for 4 2x2 poolings after space_to_depth 2"):
        Conv4(0, image_size=28, space_to_depth=2)


def test_space_to_depth_reaches_the_checkpoint_through_the_command_line(tmp_path, capsys):
    from mlbook.__main__ import main
    from mlbook.storage import load_checkpoint
    out = tmp_path / "s.pt"
    tiny = ["--data", "glyphs", "--glyph-classes", "200", "--channels", "8"]
    assert main(["train", *tiny, "--image-size", "32", "--space-to-depth", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    assert load_checkpoint(out)["metadata"]["config"]["space_to_depth"] == 2
    assert main(["evaluate", str(out), "--episodes", "3"]) == 0
    assert main(["train", *tiny, "--image-size", "16", "--steps", "1", "--out", str(tmp_path / "d.pt")]) == 0
    assert "space_to_depth" not in load_checkpoint(tmp_path / "d.pt")["metadata"]["config"]
    capsys.readouterr()
    assert main(["train", *tiny, "--image-size", "30", "--space-to-depth", "4", "--out", str(tmp_path / "e.pt")]) != 0
    assert "space_to_depth must divide image_size: 4 does not divide 30" in capsys.readouterr().err


def test_conv4_residual_blocks_keep_the_map_start_near_identity_and_are_checked():
    from mlbook.models import Conv4, ResidualBlock
    torch.manual_seed(0)
    plain, deeper = Conv4(0, channels=8, pools=2), Conv4(0, channels=8, pools=2, residual_blocks=2)
    x = torch.rand(3, 1, 28, 28)
    # Two more blocks at the 7x7 map: the embedding keeps its size, the parameters grow by theirs.
    assert deeper(x).shape == plain(x).shape == (3, 8 * 7 * 7)
    assert sum(isinstance(m, ResidualBlock) for m in deeper.modules()) == 2
    extra = sum(p.numel() for p in deeper.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * (8 * 8 * 9 + 8 + 2 * 8)
    # The skip connection: with the block's normalisation scaled to zero, it passes its (non-negative)
    # input through unchanged.
    block = ResidualBlock(8)
    torch.nn.init.zeros_(block.norm.weight)
    torch.nn.init.zeros_(block.norm.bias)
    h = torch.rand(2, 8, 7, 7)
    assert torch.equal(block(h), h)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="residual_blocks must be a non-negative integer"):
            Conv4(0, residual_blocks=bad)


TINY_GLYPHS = ["--data", "glyphs", "--glyph-classes", "200", "--image-size", "16", "--channels", "8"]


def check_backbone_option_reaches_the_checkpoint(tmp_path, capsys, key, train_args, refused_args, refusal):
    """Trained with ``train_args`` the run stores ``key`` in its config and evaluates; a default run
    stores no ``key``; ``refused_args`` end the command with ``refusal`` on stderr."""
    from mlbook.__main__ import main
    from mlbook.storage import load_checkpoint
    out = tmp_path / "with.pt"
    assert main(["train", *TINY_GLYPHS, *train_args, "--steps", "2", "--out", str(out)]) == 0
    value = train_args[train_args.index("--" + key.replace("_", "-")) + 1]
    assert load_checkpoint(out)["metadata"]["config"][key] == int(value)
    assert main(["evaluate", str(out), "--episodes", "3"]) == 0
    assert main(["train", *TINY_GLYPHS, "--steps", "1", "--out", str(tmp_path / "default.pt")]) == 0
    assert key not in load_checkpoint(tmp_path / "default.pt")["metadata"]["config"]
    capsys.readouterr()
    assert main(["train", *TINY_GLYPHS, *refused_args, "--out", str(tmp_path / "refused.pt")]) != 0
    assert refusal in capsys.readouterr().err


def test_residual_blocks_reach_the_checkpoint_through_the_command_line(tmp_path, capsys):
    check_backbone_option_reaches_the_checkpoint(
        tmp_path, capsys, "residual_blocks", ["--pools", "2", "--residual-blocks", "1"],
        ["--residual-blocks", "-1"], "--residual-blocks")


def test_conv4_feature_blocks_stack_the_last_maps_and_are_checked():
    from mlbook.models import Conv4
    torch.manual_seed(0)
    plain = Conv4(0, channels=8, pools=2)
    stacked = Conv4(0, channels=8, pools=2, feature_blocks=3)
    stacked.load_state_dict(plain.state_dict())     # the same parameters: stacking adds none
    x = torch.rand(3, 1, 28, 28)
    z = stacked(x)
    assert z.shape == (3, 3 * 8 * 7 * 7) and stacked.embedding_size == 3 * 8 * 7 * 7
    # The maps after blocks 2, 3 and 4, in that order, computed layer by layer without the fused kernels.
    h, maps = x, []
    for i, layer in enumerate(plain.features[:-1]):
        h = layer(h)
        if isinstance(layer, torch.nn.ReLU):
            maps.append(h)
    assert torch.allclose(z, torch.cat(maps[1:], dim=1).flatten(1), atol=1e-5)
    assert torch.allclose(z.unflatten(1, (24, 49))[:, 16:].flatten(1), plain(x), atol=1e-5)
    # Under vmap the fused CPU kernels are skipped; the stacking must not depend on them.
    assert torch.allclose(torch.func.vmap(stacked)(x[None])[0], z, atol=1e-5)
    with pytest.raises(ValueError, match="feature_blocks=4 would stack maps of different sizes"):
        Conv4(0, pools=2, feature_blocks=4)
    with pytest.raises(ValueError, match="feature_blocks=2 would stack maps of different sizes"):
        Conv4(0, pools=4, feature_blocks=2)
    assert Conv4(0, channels=8, pools=4, residual_blocks=1, feature_blocks=2)(x).shape == (3, 2 * 8)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="feature_blocks must be a positive integer"):
            Conv4(0, feature_blocks=bad)


def test_feature_blocks_reach_the_local_similarity_and_the_checkpoint(tmp_path, capsys):
    from mlbook.learners import ProtoNet
    learner = ProtoNet.from_config(LearnerConfig(channels=8, pools=2, distance="local", feature_blocks=2))
    # Each place of the map is one descriptor of both blocks' channels.
    assert learner.channels == 16 and learner.model.embedding_size == 16 * 7 * 7
    check_backbone_option_reaches_the_checkpoint(
        tmp_path, capsys, "feature_blocks", ["--pools", "2", "--distance", "local", "--feature-blocks", "2"],
        ["--feature-blocks", "2"], "feature_blocks=2 would stack maps of different sizes")
