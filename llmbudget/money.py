"""Money from user input: exact ``Decimal`` dollars, never binary floats."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["usd"]


def usd(value: Any, what: str, *, unit: str = "an amount in USD") -> Decimal:
    """``value`` as an exact, finite, non-negative Decimal (floats are read by their shortest repr).

    Raises ValueError naming ``what`` and the expected ``unit``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be {unit}, got {value!r}")
    if isinstance(value, float):
        value = repr(value)
    try:
        amount = Decimal(value.strip().lstrip("$") if isinstance(value, str) else value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{what} must be {unit}, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite, non-negative number ({unit}), got {value!r}")
    return amount
