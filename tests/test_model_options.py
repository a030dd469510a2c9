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
