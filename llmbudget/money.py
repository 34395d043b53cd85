"""Money from user input: exact ``Decimal`` dollars, never binary floats."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["exact_usd", "format_usd", "plain_decimal", "usd"]


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


_MICRO = Decimal("0.000001")


def format_usd(amount: Decimal | float) -> str:
    """Dollars for people, the one format every report uses: ``$0.055690`` (six decimals, micro-dollars),
    more digits for a non-zero amount under a micro-dollar (``$0.00000012``), ``-$0.000120`` when negative.
    Exact amounts stay in the JSON outputs."""
    value = amount if isinstance(amount, Decimal) else Decimal(repr(amount) if isinstance(amount, float) else amount)
    sign, value = ("-" if value < 0 else ""), value.copy_abs()  # (never "-0": -0 is 0)
    if 0 < value < _MICRO:
        shown = f"{value:.10f}".rstrip("0")
        return f"{sign}${shown if shown != '0.' else plain_decimal(value)}"  # under 1e-10: every digit
    return f"{sign}${value:.6f}"


def plain_decimal(amount: Decimal) -> str:
    """``amount`` as a decimal string, never in exponent form (``0.00000675``, not ``6.75E-6``), no digit
    added or lost: what a file or JSON keeps of an exact amount."""
    return f"{amount:f}" if amount else "0"


def exact_usd(amount: Decimal) -> str:
    """An exact amount for people, every digit kept and never in exponent form (``$0.0000001``, not ``$1E-7``),
    with cents at least (``$0.60``):
    for verdicts that compare two amounts, which :func:`format_usd`'s rounding could show as equal."""
    sign, value = ("-" if amount < 0 else ""), amount.copy_abs()
    whole, _, cents = f"{value.normalize():f}".partition(".")  # no trailing zeros: $0.001, not $0.00100000000
    return f"{sign}${whole}.{cents.ljust(2, '0')}"  # but cents: $0.60, $1.00
