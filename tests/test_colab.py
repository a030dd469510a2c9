"""Every chapter runs the way Colab runs it: the notebook alone, with mlbook from a wheel.

In Colab there is no repository: only the notebook and the ``mlbook`` that its install cell
fetched. So this test builds a wheel of ``mlbook`` (``pip wheel --no-deps``), installs it,
not editable, in a fresh virtual environment, copies each chapter alone into an empty
folder and executes it there in fast mode. A chapter that reads a file of the repository,
or needs a module file that the wheel does not ship, fails here.

So that torch and the Jupyter tools need no download, the virtual environment also sees the
site-packages of the Python running the tests, listed after its own (a ``.pth`` file; this
works whether that Python is a system one or itself a virtual environment). Those
site-packages hold the editable ``mlbook`` of the development checkout too;
``test_venv_imports_mlbook_from_the_wheel`` proves that the environment's ``import mlbook``
resolves to the installed wheel, not to the checkout, and every executed chapter prints
where its ``mlbook`` came from, which is checked too.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from site_helpers import REPO, toc_sources

pytestmark = pytest.mark.timeout(1800)

CHAPTERS = [s for s in toc_sources() if s.endswith(".ipynb")]
KERNEL = "mlbook-colab-test"
MARK = "MLBOOK_LOADED_FROM"

# Runs inside the virtual environment: execute one notebook with the environment's kernel.
_DRIVER = r'''
import json, re, sys
import nbformat
from nbclient import NotebookClient

path, kernel, folder = sys.argv[1:4]
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, timeout=900, kernel_name=kernel,
                        resources={"metadata": {"path": folder}})
try:
    client.execute()
    status = "ok"
except Exception as exc:  # the failing cell and its traceback are the finding
    status = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")
nbformat.write(nb, path)
print(json.dumps({"status": status[-6000:]}))
'''


def _run(command, **kwargs):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A virtual environment with the mlbook wheel installed, and the environment for kernels."""
    root = tmp_path_factory.mktemp("colab")
    # Build from a copy with only what the package is made of, so that nothing the build
    # writes lands in the checkout, and nothing else of the checkout can end up in the wheel.
    source = root / "source"
    shutil.copytree(REPO / "mlbook", source / "mlbook",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = root / "wheels"
    # Without build isolation the build uses the setuptools that is here and needs no network;
    # where that setuptools cannot build wheels, pip's isolated build fetches one.
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, source]
    local = subprocess.run(command[:4] + ["--no-build-isolation"] + command[4:],
                           capture_output=True, text=True)
    if local.returncode != 0:
        _run(command)
    (wheel,) = wheels.glob("mlbook-*.whl")

    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", env_dir])
    python = env_dir / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    # Then the test runner's packages (torch, Jupyter), after the environment's own. Plain
    # paths, so the runner's .pth files (its editable mlbook finder among them) do not run.
    own = _run([python, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip()
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    (Path(own) / "zz_test_runner_packages.pth").write_text("\n".join(parents) + "\n")
    _run([python, "-m", "ipykernel", "install", "--prefix", env_dir, "--name", KERNEL])

    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "MLBOOK_NO_PROGRESS", "MPLBACKEND", "JUPYTER_PATH")}
    env.update(
        MLBOOK_FAST="1", OMP_NUM_THREADS="1", PIP_NO_INDEX="1",
        # A fresh data cache, as in a new Colab session; Omniglot archives that the tests
        # point to (MLBOOK_OMNIGLOT) are data, not repository files, and stay visible.
        MLBOOK_DATA=str(root / "data"), MLBOOK_OFFLINE="1",
        JUPYTER_PATH=str(env_dir / "share" / "jupyter"),
        VIRTUAL_ENV=str(env_dir), PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )
    driver = root / "execute.py"
    driver.write_text(_DRIVER)
    return {"root": root, "python": python, "env": env, "env_dir": env_dir, "driver": driver}


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_venv_imports_mlbook_from_the_wheel(colab):
    """The venv's mlbook is the installed wheel, not the checkout's editable install."""
    probe = ("import json, mlbook, importlib.metadata as m\n"
             "d = m.distribution('mlbook')\n"
             "print(json.dumps({'file': mlbook.__file__, 'dist': str(d._path),\n"
             "                  'direct_url': d.read_text('direct_url.json') or ''}))")
    empty = colab["root"] / "probe"
    empty.mkdir()
    out = _run([colab["python"], "-c", probe], env=colab["env"], cwd=empty)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert _inside(found["file"], colab["env_dir"]), found
    assert not _inside(found["file"], REPO), found
    assert _inside(found["dist"], colab["env_dir"]), found
    direct_url = json.loads(found["direct_url"]) if found["direct_url"] else {}
    assert not direct_url.get("dir_info", {}).get("editable"), found
    assert direct_url.get("url", "").endswith(".whl"), found


@pytest.mark.parametrize("source", CHAPTERS)
def test_chapter_runs_from_the_notebook_alone(source, colab):
    folder = colab["root"] / Path(source).stem
    folder.mkdir()
    notebook = folder / Path(source).name
    nb = nbformat.read(REPO / source, as_version=4)
    # One extra cell at the end reports which mlbook the kernel imported.
    nb.cells.append(nbformat.v4.new_code_cell(f"print('{MARK}', mlbook.__file__)"))
    nbformat.write(nb, notebook)

    result = subprocess.run(
        [str(colab["python"]), str(colab["driver"]), str(notebook), KERNEL, str(folder)],
        capture_output=True, text=True, env=colab["env"], cwd=folder, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout.strip().splitlines()[-1])["status"]
    assert status == "ok", f"{source} failed when run alone with the wheel:\n{status}"

    executed = nbformat.read(notebook, as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    loaded = printed.split(MARK, 1)[-1].strip()
    assert printed.startswith(MARK) and _inside(loaded, colab["env_dir"]), printed
