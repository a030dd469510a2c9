"""Interactive and static demos of the inner loop (Chapter 3).

:func:`inner_loop_demo` shows, with two sliders (inner learning rate and number of steps),
how one sinusoid task's fit changes as Adapt(phi, D_train) runs; :func:`inner_loop_grid`
draws the same thing for a few settings as one static matplotlib figure, which is what the
website shows (widgets need a live kernel).
"""
from __future__ import annotations

import torch

from .bilevel import inner_loop
from .utils import check_positive, check_positive_int, make_generator

__all__ = ["adapted_curve", "inner_loop_grid", "inner_loop_demo"]


def adapted_curve(learner, state, episode, parameters, inner_lr: float, steps: int, points: int = 200):
    """x grid, true curve, and the prediction after ``steps`` inner steps of size ``inner_lr`` (Chapter 3).

    ``episode`` holds one sinusoid task (batch size 1) and ``parameters`` its (amplitude, phase).
    """
    inner_lr = check_positive("inner_lr", inner_lr)
    steps = check_positive_int("steps", steps)
    phi = {k: v.detach() for k, v in state["params"].items()}
    x = torch.linspace(-5, 5, points, device=episode.support_x.device)[:, None]
    theta = inner_loop(learner.inner_loss, phi, episode.support_x[0], episode.support_y[0], steps, inner_lr,
                       first_order=True)
    with torch.no_grad():
        before = learner.predict(phi, x)
        after = learner.predict(theta, x)
    amplitude, phase = parameters[0, 0], parameters[0, 1]
    truth = amplitude * torch.sin(x - phase)
    return x.cpu(), truth.cpu(), before.cpu(), after.cpu()


def _draw(ax, learner, state, episode, parameters, inner_lr, steps):
    x, truth, before, after = adapted_curve(learner, state, episode, parameters, inner_lr, steps)
    ax.plot(x, truth, "k--", lw=1, label="true task")
    ax.plot(x, before, color="0.6", label="phi (before)")
    ax.plot(x, after, color="C0", label=f"theta after {steps} step(s)")
    ax.scatter(episode.support_x[0].cpu(), episode.support_y[0].cpu(), color="C3", zorder=3, label="D_train")
    ax.set_ylim(-6, 6)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"lr={inner_lr:g}, steps={steps}", fontsize=9)


def inner_loop_grid(learner, state, family, lrs=(0.001, 0.01, 0.05), steps=(1, 5, 20), seed: int = 0):
    """A static figure: one task adapted with every (learning rate, steps) pair (Chapter 3)."""
    import matplotlib.pyplot as plt

    episode, parameters = family.sample_with_parameters(1, make_generator(seed, family.device))
    fig, axes = plt.subplots(len(steps), len(lrs), figsize=(3.2 * len(lrs), 2.4 * len(steps)),
                             sharex=True, sharey=True, squeeze=False)
    for i, k in enumerate(steps):
        for j, lr in enumerate(lrs):
            _draw(axes[i][j], learner, state, episode, parameters, lr, k)
    for ax in axes.flat:  # axis labels on the outer edge of the grid only
        ax.label_outer()
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Adapt(phi, D_train) for one task: rows = inner steps, columns = inner learning rate")
    fig.tight_layout()
    return fig


def inner_loop_demo(learner, state, family, seed: int = 0):
    """Sliders for the inner learning rate and steps, redrawing the adapted fit (Chapter 3).

    Falls back to :func:`inner_loop_grid` (a static figure) when ipywidgets is not installed.
    """
    import matplotlib.pyplot as plt

    try:
        import ipywidgets as widgets
    except ImportError:
        print("ipywidgets is not installed: showing the static figure instead")
        fig = inner_loop_grid(learner, state, family, seed=seed)
        plt.show()
        return fig
    episode, parameters = family.sample_with_parameters(1, make_generator(seed, family.device))

    def show(log10_lr=-2.0, steps=1, task_seed=seed):
        ep, params = (episode, parameters) if task_seed == seed else family.sample_with_parameters(
            1, make_generator(task_seed, family.device))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _draw(ax, learner, state, ep, params, 10 ** log10_lr, steps)
        ax.legend(fontsize=8, loc="lower left")
        plt.show()

    return widgets.interactive(
        show,
        log10_lr=widgets.FloatSlider(value=-2.0, min=-4.0, max=-0.5, step=0.1, description="log10 lr"),
        steps=widgets.IntSlider(value=1, min=1, max=30, description="steps"),
        task_seed=widgets.IntSlider(value=seed, min=0, max=50, description="task"))
