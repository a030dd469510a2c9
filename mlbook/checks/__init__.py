"""Autograded exercises: one module per chapter (``mlbook.checks.ch1`` ... ``ch6``).

Every grader takes the student's function, prints a per-case report and returns a
:class:`~mlbook.checks.core.Report`; ``GRADERS`` in each module pairs its graders with their
reference solutions for the tests, which keep the wrong answers the graders must fail
(``tests/grader_answers_ch*.py``).
"""
from .core import Case, Report, grade

__all__ = ["Case", "Report", "grade"]
