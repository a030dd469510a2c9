"""Figures and an interactive demo of posterior predictive bands (Chapter 6).

:func:`plot_bands` draws the posterior predictive of a Bayesian linear model after K support
points; :func:`posterior_grid` is the static figure the website shows; :func:`posterior_demo`
is the same picture with sliders (number of support points, prior strength), which needs a
live Jupyter or Colab kernel.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .bayes import BayesianLinearRegression, Gaussian, posterior, predictive
from .utils import check_positive

__all__ = ["scaled_prior", "plot_bands", "posterior_grid", "posterior_demo"]


def scaled_prior(learner: BayesianLinearRegression, state, strength: float = 1.0) -> Gaussian:
    """The learner's prior with its covariance divided by ``strength`` (Chapter 6).

    ``strength`` > 1 makes the prior more confident (narrower), < 1 vaguer; the mean stays.
    """
    strength = check_positive("strength", strength)
    prior = learner.prior(state)
    return Gaussian(prior.mean.detach(), root=prior.root.detach() / math.sqrt(strength))


def plot_bands(ax, learner: BayesianLinearRegression, state, x: torch.Tensor, y: torch.Tensor, k: int,
               grid: torch.Tensor, truth: torch.Tensor | None = None, strength: float = 1.0,
               title: str | None = None, ylim=(-6, 6)):
    """Plot the predictive mean and 95% band after the first ``k`` of ``(x, y)`` on ``ax`` (Chapter 6).

    ``x``, ``y`` are one task's points ``[N, 1]``; ``grid`` is ``[G, 1]`` and ``truth`` the
    true function on it. ``k = 0`` shows the prior predictive.
    """
    if not 0 <= int(k) <= x.shape[0]:
        raise ValueError(f"k must be between 0 and the {x.shape[0]} points given, got {k!r}")
    k = int(k)
    with torch.no_grad():
        belief = scaled_prior(learner, state, strength)
        noise = learner.noise_var(state).detach()
        if k > 0:
            belief = posterior(belief, learner.features(x[:k]), y[:k], noise)
        mean, var = predictive(belief, learner.features(grid), noise)
    g, m, s = grid[:, 0].cpu(), mean.cpu(), var.sqrt().cpu()
    ax.fill_between(g, m - 1.96 * s, m + 1.96 * s, color="tab:blue", alpha=0.25, label="95% band")
    ax.plot(g, m, color="tab:blue", label="predictive mean")
    if truth is not None:
        ax.plot(g, truth.reshape(-1).cpu(), "k--", lw=1, label="true function")
    if k:
        ax.scatter(x[:k, 0].cpu(), y[:k].reshape(-1).cpu(), color="tab:red", zorder=3, s=18, label="support")
    ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title if title is not None else f"K = {k}")
    return ax


def posterior_grid(rows: Sequence[tuple[str, BayesianLinearRegression, dict]], x, y, grid, truth,
                   ks=(0, 1, 2, 5, 10), strength: float = 1.0, figsize=None):
    """A static grid of predictive bands: one row per (label, learner, state), one column per K (Chapter 6)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(ks), figsize=figsize or (2.6 * len(ks), 2.3 * len(rows)),
                             sharex=True, sharey=True, squeeze=False)
    for r, (label, learner, state) in enumerate(rows):
        for c, k in enumerate(ks):
            plot_bands(axes[r, c], learner, state, x, y, k, grid, truth, strength,
                       title=f"{label}, K = {k}")
    for ax in axes.flat:  # axis labels on the outer edge of the grid only
        ax.label_outer()
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def posterior_demo(learner: BayesianLinearRegression, state, x, y, grid, truth, max_k: int | None = None):
    """Sliders for the number of support points and the prior strength (Chapter 6).

    Needs ipywidgets and a live kernel (Jupyter or Colab); on the static website use
    :func:`posterior_grid` instead. Returns the widget, or draws one fixed view and returns
    None when ipywidgets is not installed.
    """
    import matplotlib.pyplot as plt

    max_k = x.shape[0] if max_k is None else min(int(max_k), x.shape[0])

    def draw(k, log10_strength):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        plot_bands(ax, learner, state, x, y, k, grid, truth, 10 ** log10_strength,
                   title=f"K = {k}, prior strength = {10 ** log10_strength:.2g}")
        ax.legend(fontsize=8, loc="lower left")
        plt.show()

    try:
        import ipywidgets as widgets
    except ImportError:
        print("ipywidgets is not installed (pip install ipywidgets), so here is one fixed view: "
              "K = 2, prior strength 1")
        draw(min(2, max_k), 0.0)
        return None
    return widgets.interactive(
        draw,
        k=widgets.IntSlider(value=2, min=0, max=max_k, description="K"),
        log10_strength=widgets.FloatSlider(value=0.0, min=-2.0, max=2.0, step=0.25,
                                           description="log10 strength"))
