"""Tests and notebook runs always use the fast experiment sizes (MLBOOK_FAST=1).

Set here, before any kernel starts, so nbval's kernels inherit it.
"""
import os

os.environ.setdefault("MLBOOK_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLBOOK_NO_PROGRESS", "1")
