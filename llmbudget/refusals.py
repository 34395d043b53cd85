"""Recognise llmbudget's budget refusals in the errors the openai SDK raises."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .ledger.budgets import Refusal

__all__ = ["budget_refusal"]


def budget_refusal(error: BaseException) -> Refusal | None:
    """The :class:`Refusal` behind an ``openai.APIStatusError`` raised for a budget, else None.

    >>> try:
    ...     client.chat.completions.create(...)
    ... except openai.APIStatusError as exc:
    ...     if (refusal := llmbudget.budget_refusal(exc)) is None:
    ...         raise
    ...     print(refusal.budget, refusal.remaining_usd)
    """
    response = getattr(error, "response", None)
    if response is None or response.headers.get("x-llmbudget-refused") != "budget":
        return None
    try:
        data: Any = response.json()["error"]["llmbudget"]
        return Refusal(
            budget=data["budget"],
            per=data["per"],
            period=data["period"],
            limit_usd=Decimal(repr(data["limit_usd"])),
            spent_usd=Decimal(repr(data["spent_usd"])),
            reserved_usd=Decimal(repr(data["reserved_usd"])),
            estimated_cost_usd=Decimal(repr(data["estimated_cost_usd"])),
            resets_at=_epoch(data.get("resets_at")),
            tenant=data.get("tenant"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()
