"""Every figure a chapter draws has labelled axes, or is an image grid with titles.

:func:`axis_problems` inspects one matplotlib figure and lists what a reader could not
decode. :func:`install` makes every figure rendered to PNG (``plt.show()`` in a notebook,
``savefig``) carry that list in a PNG text chunk named :data:`KEY`, so the website test can
read, for each image of a built page, whether it was checked and what was found. The book
build in ``tests/site_helpers.build_site`` installs it in every kernel through an IPython
startup file (:func:`write_startup`).

The rules, per visible axes of the figure:

* an axes that plots data (lines, markers, bars, bands) needs an x label and a y label, on
  itself or, for subplots that share an axis, on another axes of the same grid column
  (x) or row (y), or the figure's ``supxlabel`` / ``supylabel``; an axis with no tick marks
  has no scale to name and needs no label;
* an axes that shows an image (``imshow``) with its ticks removed or its axes off is a panel
  of an image grid: it needs a title or label of its own, a title in its grid column, a
  label in its row, or a figure title; an image that keeps its ticks (a heat map) is a plot
  and needs its axis labels;
* colour bars and empty axes (nothing drawn) are skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

KEY = "mlbook-figure-audit"


def _text(label) -> str:
    return label.get_text().strip() if label is not None and label.get_visible() else ""


def _span(ax):
    spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
    if spec is None:
        return None
    return spec.get_gridspec(), spec.rowspan, spec.colspan


def _overlaps(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


def _has_ticks(axis) -> bool:
    return axis.get_visible() and len(axis.get_ticklocs()) > 0 and any(
        tick.tick1line.get_visible() or tick.label1.get_visible() or tick.tick2line.get_visible()
        for tick in axis.get_major_ticks()[:3])


def axis_problems(fig) -> list[str]:
    """What is unlabelled in ``fig``: one message per faulty axes (empty list when fine)."""
    axes = [ax for ax in fig.get_axes() if ax.get_visible()]
    suptitle = _text(getattr(fig, "_suptitle", None))
    supxlabel = _text(getattr(fig, "_supxlabel", None))
    supylabel = _text(getattr(fig, "_supylabel", None))
    spans = {ax: _span(ax) for ax in axes}

    def neighbours(ax, along: str):
        """Axes of the same grid column (along='x') or row (along='y'), ``ax`` included."""
        mine = spans[ax]
        if mine is None:
            return [ax]
        grid, rows, cols = mine
        out = []
        for other, theirs in spans.items():
            if theirs is None or theirs[0] is not grid or getattr(other, "_colorbar", None):
                continue  # a colour bar's label names the colours, not this axis
            if (along == "x" and _overlaps(cols, theirs[2])) or (along == "y" and _overlaps(rows, theirs[1])):
                out.append(other)
        return out

    problems = []
    for index, ax in enumerate(axes):
        if getattr(ax, "_colorbar", None) is not None:
            continue
        drawn = (ax.lines or ax.collections or ax.patches or ax.containers or ax.texts or ax.tables
                 or ax.images)
        name = f"axes {index + 1} of {len(axes)}" + (f" ({_text(ax.title)!r})" if _text(ax.title) else "")
        scaled_x = ax.axison and _has_ticks(ax.xaxis)
        scaled_y = ax.axison and _has_ticks(ax.yaxis)
        if ax.images and not (scaled_x or scaled_y):
            titled = (_text(ax.title) or _text(ax.xaxis.label) or _text(ax.yaxis.label) or suptitle
                      or any(_text(o.title) for o in neighbours(ax, "x"))
                      or any(_text(o.yaxis.label) for o in neighbours(ax, "y")))
            if not titled:
                problems.append(f"{name}: an image panel with no title, no row or column label "
                                f"and no figure title")
            continue
        if not drawn:
            continue
        if not ax.axison:
            if not (_text(ax.title) or suptitle):
                problems.append(f"{name}: drawn with its axes switched off and no title")
            continue
        if scaled_x and not (supxlabel or any(_text(o.xaxis.label) for o in neighbours(ax, "x"))):
            problems.append(f"{name}: the x axis has no label")
        if scaled_y and not (supylabel or any(_text(o.yaxis.label) for o in neighbours(ax, "y"))):
            problems.append(f"{name}: the y axis has no label")
    return problems


def install() -> None:
    """Stamp every PNG that matplotlib renders with this figure's :func:`axis_problems`."""
    from matplotlib.backend_bases import FigureCanvasBase

    if getattr(FigureCanvasBase.print_figure, "_mlbook_audit", False):
        return
    original = FigureCanvasBase.print_figure

    def print_figure(self, *args, **kwargs):
        fmt = kwargs.get("format")
        if fmt is None and args and isinstance(args[0], (str, Path)):
            fmt = Path(args[0]).suffix.lstrip(".")
        if (fmt or "png").lower() == "png":
            try:
                found = axis_problems(self.figure)
            except Exception as exc:  # the audit must never break a figure
                found = [f"the figure audit failed: {type(exc).__name__}: {exc}"]
            metadata = dict(kwargs.get("metadata") or {})
            metadata[KEY] = json.dumps(found, ensure_ascii=True)
            kwargs["metadata"] = metadata
        return original(self, *args, **kwargs)

    print_figure._mlbook_audit = True
    FigureCanvasBase.print_figure = print_figure


def write_startup(ipython_dir: Path) -> Path:
    """An IPython folder whose startup file installs the audit in every kernel started with it."""
    startup = Path(ipython_dir) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    script = startup / "00-mlbook-figure-audit.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "try:\n"
        "    import figure_audit\n"
        "    figure_audit.install()\n"
        "finally:\n"
        "    sys.path.pop(0)\n")
    return script


def audit_of_png(data: bytes):
    """The list stamped into a PNG by :func:`install`, or None when it was never audited."""
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as image:
        text = getattr(image, "text", None) or image.info
        value = text.get(KEY)
    return None if value is None else json.loads(value)


if __name__ == "__main__":  # python tests/figure_audit.py IMAGE.png ...: print each audit
    for name in sys.argv[1:]:
        print(name, audit_of_png(Path(name).read_bytes()))
