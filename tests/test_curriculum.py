"""Tests for mlbook.curriculum: schedules, the wrapper family and a run with the trainer (Chapter 6)."""
import pytest
import torch

from mlbook.curriculum import CurriculumFamily, difficulty_schedule, sinusoid_at_difficulty
from mlbook.learners import MAML
from mlbook.models import MLP
from mlbook.train import meta_train



def test_schedules_share_difficulties_and_differ_in_order():
    easy = difficulty_schedule(40, "easy_to_hard", start=0.1, ramp=0.5)
    rand = difficulty_schedule(40, "random", start=0.1, ramp=0.5, seed=3)
    anti = difficulty_schedule(40, "hard_to_easy", start=0.1, ramp=0.5)
    assert easy[0] == pytest.approx(0.1) and (easy[20:] == 1).all()
    assert (easy[1:] >= easy[:-1]).all()
    assert torch.equal(easy.sort().values, rand.sort().values)
    assert torch.equal(easy.sort().values, anti.sort().values)
    assert not torch.equal(easy, rand)
    assert torch.equal(anti, easy.flip(0))
    assert (difficulty_schedule(5, "target") == 1).all()
    assert torch.equal(rand, difficulty_schedule(40, "random", start=0.1, ramp=0.5, seed=3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(order="hardest_first"), "order"), (dict(ramp=0.0), "ramp"), (dict(start=1.5), "start"),
    (dict(steps=0), "steps"),
])
def test_schedule_errors(kwargs, match):
    args = dict(steps=10, order="easy_to_hard")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        difficulty_schedule(**args)


def test_family_follows_schedule_and_widens_tasks():
    family = CurriculumFamily(lambda d: sinusoid_at_difficulty(d, shots=5, queries=5), steps=10,
                              order="easy_to_hard", ramp=1.0)
    g = torch.Generator().manual_seed(0)
    first = family.sample(200, g)
    for _ in range(8):
        family.sample(2, g)
    last = family.sample(200, g)
    assert family.history[0] == 0.0 and family.history[-1] == 1.0 and family.step == 10
    # easy tasks: small amplitudes; the target tasks reach amplitude 5
    assert first.query_y.abs().max() < 0.3 < 3.0 < last.query_y.abs().max()
    family.sample(1, g)  # past the end it stays at the last difficulty
    assert family.history[-1] == 1.0
    assert family.reset().step == 0
    with pytest.raises(ValueError, match="difficulty"):
        sinusoid_at_difficulty(1.5)
    with pytest.raises(ValueError, match="make_family"):
        CurriculumFamily("sinusoid", steps=3)


def test_curriculum_runs_with_the_trainer_and_is_deterministic():
    def run():
        family = CurriculumFamily(sinusoid_at_difficulty, steps=30, order="random", seed=1)
        learner = MAML(MLP(hidden=(16, 16)), inner_lr=0.01, steps=1, loss="mse")
        return meta_train(learner, family, steps=30, meta_batch_size=4, outer_lr=1e-3, seed=0), family

    (a, fa), (b, fb) = run(), run()
    assert a.losses == b.losses
    assert fa.history == fb.history == fa.schedule.tolist()


def test_order_changes_training_on_the_same_difficulties():
    # Hard tasks last (easy-to-hard) leaves the initialisation fitted to the target family;
    # easy tasks last (hard-to-easy) leaves it fitted to tiny amplitudes.
    from mlbook.train import evaluate

    steps, results = 150, {}
    for order in ("easy_to_hard", "hard_to_easy"):
        family = CurriculumFamily(sinusoid_at_difficulty, steps=steps, order=order)
        learner = MAML(MLP(hidden=(32, 32)), inner_lr=0.01, steps=1, loss="mse")
        state = meta_train(learner, family, steps=steps, meta_batch_size=10, outer_lr=3e-3, seed=0).state
        results[order] = evaluate(learner, state, sinusoid_at_difficulty(1.0), episodes=200).mean
    assert results["easy_to_hard"] < results["hard_to_easy"] - 0.3, results
