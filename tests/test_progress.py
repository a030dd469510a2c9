"""Progress bars show to a person watching, and leave nothing in an executed notebook.

A widget bar stored by the book build (``leave=False`` closes it) is drawn as a blank area on
the website; ``mlbook.progress`` therefore turns itself off when a notebook is executed by a
client that cannot answer ``input()`` (nbclient: nbconvert, jupyter-book).
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import mlbook.utils as utils

REPO = Path(__file__).resolve().parents[1]


def _fake_kernel(monkeypatch, allow_stdin):
    import IPython

    shell = types.SimpleNamespace(kernel=types.SimpleNamespace(_allow_stdin=allow_stdin))
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


@pytest.fixture
def loud(monkeypatch):
    """No fast mode and no MLBOOK_NO_PROGRESS: what a reader's kernel sees."""
    monkeypatch.delenv("MLBOOK_FAST", raising=False)
    monkeypatch.delenv("MLBOOK_NO_PROGRESS", raising=False)


def test_bar_shows_for_an_interactive_front_end(loud, monkeypatch):
    _fake_kernel(monkeypatch, allow_stdin=True)
    assert utils._watched()
    bar = utils.progress(range(3))
    assert not bar.disable
    bar.close()


def test_bar_is_off_when_executed_without_front_end(loud, monkeypatch):
    _fake_kernel(monkeypatch, allow_stdin=False)
    assert not utils._watched()
    assert utils.progress(range(3)).disable


def test_bar_shows_in_a_terminal(loud, monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert utils._watched()
    bar = utils.progress(range(3), file=open(os.devnull, "w"))
    assert not bar.disable
    bar.close()


@pytest.mark.timeout(300)
def test_executed_notebook_stores_no_progress_output(loud, tmp_path):
    """What the book build does, in small: a training loop leaves no output behind."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import mlbook\n"
        "for _ in mlbook.progress(range(200), desc='training'):\n"
        "    pass")]
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLBOOK_FAST", "MLBOOK_NO_PROGRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert nb.cells[0].outputs == [], nb.cells[0].outputs
