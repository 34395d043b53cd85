"""pytest --llm-budget: spend per test, budgets and regressions against a baseline.

The types of its fixtures, for annotations: ``def test_x(llm_spend: TestSpend)`` and
``def test_y(llm_golden_routing: GoldenRouting)``.
"""

from .golden import GoldenRouting
from .spend import TestSpend

__all__ = ["GoldenRouting", "TestSpend"]
