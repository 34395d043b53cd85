"""pytest --llm-budget: spend per test, budgets and regressions against a baseline."""
