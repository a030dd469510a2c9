"""Execute every chapter notebook (book/*.ipynb) in plain Python, in fast mode (Chapter 3's GPU check).

Needs no Jupyter: each notebook's code cells run in one namespace in order, skipping cells
tagged ``remove-cell`` (the Colab install cell), dropping IPython magics and ``!`` shell lines,
with matplotlib's Agg backend. Prints one line per chapter with its time; exits non-zero if
any chapter fails.

    MLBOOK_FAST=1 python benchmarks/run_chapters.py [book/03_bilevel_optimisation.ipynb ...]
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_of(notebook: Path) -> list[str]:
    """The runnable code cells of ``notebook`` with magics and shell escapes removed."""
    cells = []
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "code" or "remove-cell" in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        cells.append("\n".join(lines))
    return cells


def _stand_in_ipython() -> None:
    """Without IPython (a bare GPU image), let ``IPython.display`` print instead of render."""
    try:
        import IPython.display  # noqa: F401
        return
    except ImportError:
        pass
    import types

    display_module = types.ModuleType("IPython.display")
    display_module.display = lambda *objects, **kwargs: print(*objects)
    for name in ("Markdown", "HTML", "Latex", "Image"):
        setattr(display_module, name, lambda data=None, **kwargs: data)
    package = types.ModuleType("IPython")
    package.display = display_module
    package.get_ipython = lambda: None  # matplotlib asks: no shell, so no inline backend
    package.version_info = (8, 0, 0)
    sys.modules.update({"IPython": package, "IPython.display": display_module})


def run(notebook: Path) -> tuple[bool, float, str]:
    _stand_in_ipython()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__"}
    start = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(notebook.parent)  # notebooks use paths relative to book/
    try:
        for i, source in enumerate(code_of(notebook)):
            exec(compile(source, f"{notebook.name}[cell {i}]", "exec"), namespace)
            plt.close("all")
        return True, time.perf_counter() - start, ""
    except Exception:
        return False, time.perf_counter() - start, traceback.format_exc(limit=3)
    finally:
        os.chdir(cwd)


def main(argv=None) -> int:
    os.environ.setdefault("MLBOOK_FAST", "1")
    sys.path.insert(0, str(ROOT))
    paths = [Path(p).resolve() for p in (argv or sys.argv[1:])] or sorted((ROOT / "book").glob("[0-9]*.ipynb"))
    failed = 0
    for path in paths:
        ok, seconds, error = run(path)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {path.name:<40} {seconds:7.1f} s", flush=True)
        if error:
            print(error)
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
