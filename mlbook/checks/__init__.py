"""Autograded exercises: one module per chapter (``mlbook.checks.ch1`` ... ``ch6``).

Every grader takes the student's function, prints a per-case report and returns a
:class:`~mlbook.checks.core.Report`; ``GRADERS`` in each module lists its graders with their
reference solutions, blank stubs and plausible wrong answers for the tests.
"""
from .core import Case, Report, grade

__all__ = ["Case", "Report", "grade"]
