"""The figure rule itself: labelled axes, or image grids with titles (tests/figure_audit.py)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from figure_audit import audit_of_png, axis_problems, install  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_labelled_plot_passes():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    assert axis_problems(fig) == []


def test_unlabelled_axis_is_found():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_xlabel("x")
    assert axis_problems(fig) == ["axes 1 of 1: the y axis has no label"]


def test_shared_grid_labelled_on_its_edges_passes():
    fig, axes = plt.subplots(2, 3, sharex=True, sharey=True)
    for ax in axes.flat:
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.label_outer()
    assert axis_problems(fig) == []
    axes[1, 2].set_xlabel("")  # the last column loses its only x label
    assert [p for p in axis_problems(fig) if "x axis" in p], axis_problems(fig)


def test_image_grid_needs_titles():
    fig, axes = plt.subplots(2, 2)
    for ax in axes.flat:
        ax.imshow(np.zeros((4, 4)))
        ax.set_xticks([])
        ax.set_yticks([])
    assert len(axis_problems(fig)) == 4
    for ax in axes[0]:
        ax.set_title("class")
    assert axis_problems(fig) == []


def test_axis_without_ticks_needs_no_label():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_yticks([])
    ax.set_xlabel("x")
    assert axis_problems(fig) == []


def test_png_carries_the_audit():
    install()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert audit_of_png(buffer.getvalue()) == ["axes 1 of 1: the x axis has no label",
                                               "axes 1 of 1: the y axis has no label"]


def test_heat_map_with_ticks_needs_axis_labels():
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((3, 3)))
    ax.set_title("accuracy")
    assert len(axis_problems(fig)) == 2
    ax.set_xlabel("test shape")
    ax.set_ylabel("training shape")
    assert axis_problems(fig) == []
    ax.axis("off")  # an image with its axes off is a titled panel
    assert axis_problems(fig) == []


def test_colour_bar_label_does_not_name_the_y_axis():
    fig, ax = plt.subplots()
    image = ax.imshow(np.zeros((3, 3)))
    fig.colorbar(image, label="accuracy")
    ax.set_xlabel("test shape")
    assert axis_problems(fig) == ["axes 1 of 2: the y axis has no label"]
