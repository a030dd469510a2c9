"""mlbook: the library under the course *Learning to Learn*.

One import line per concept; each object's docstring names the chapter that explains it.
Submodules: ``data`` (Omniglot, glyphs), ``tasks`` (every task family), ``learners`` (every
algorithm, found by ``registry()``), ``bilevel`` (Chapter 3's maths) and ``taskmap`` (how tasks
are mapped over), ``train``, ``metrics`` and ``storage`` (Chapter 5), ``bayes`` and
``curriculum`` (Chapter 6), ``compare`` (Chapter 4), ``checks`` (exercise graders),
``distributed``, ``augment``, ``pretrain`` and ``lake`` (Chapter 5).
"""
from .utils import budget, get_device, is_fast, make_generator, progress, seed_everything
from .tasks import Episode, ImageClassFamily, LineFamily, SinusoidFamily, sample_nway_kshot
from .models import MLP, Conv4, init_params
from .bilevel import inner_loop, map_tasks, sgd_step
from .learners import (ANIL, CNP, FOMAML, IMAML, MAML, BayesianLinearRegression, BlackBox, LearnedOptimiser,
                       Learner, LearnerConfig, MatchingNet, MetaSGD, ProtoMAML, ProtoNet, Reptile, registry)
from .train import TrainConfig, evaluate, meta_train

__version__ = "0.1.0"
