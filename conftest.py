"""Tests and notebook runs always use the fast experiment sizes (MLBOOK_FAST=1).

Set here, before any kernel starts, so nbval's kernels inherit it. The real Omniglot
archives beside the repository (../shared/data/omniglot), when present, are offered to the
loader through MLBOOK_OMNIGLOT.
"""
import os
from pathlib import Path

os.environ.setdefault("MLBOOK_FAST", "1")
os.environ.setdefault("MLBOOK_NO_PROGRESS", "1")
# The test models are tiny: one thread is as fast, and it does not collapse when another
# process shares the two cores (two threads spin-waiting on each other did, 100x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
_shared_omniglot = Path(__file__).resolve().parent.parent / "shared" / "data" / "omniglot"
if _shared_omniglot.is_dir():
    os.environ.setdefault("MLBOOK_OMNIGLOT", str(_shared_omniglot))
# Notebooks run in book/: a folder given relative to where pytest started is made absolute.
for _folder_variable in ("MLBOOK_OMNIGLOT", "MLBOOK_DATA"):
    if os.environ.get(_folder_variable):
        os.environ[_folder_variable] = str(Path(os.environ[_folder_variable]).expanduser().resolve())
