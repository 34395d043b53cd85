"""Output caps: bound what a call may write, in the field its API and model read.

A cap never raises a limit the app set; it only lowers it or adds one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cap_field", "apply_cap", "REASONING_PREFIXES"]

#: Models that take ``max_completion_tokens`` and reject ``max_tokens`` on chat completions.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def cap_field(endpoint: str, body: dict[str, Any], model: str | None) -> str | None:
    """The output-limit field of a request: the one it uses, else the one its API and model read."""
    if endpoint == "responses":
        return "max_output_tokens"
    if endpoint in ("completions", "messages"):
        return "max_tokens"
    if endpoint != "chat.completions":
        return None
    for key in ("max_completion_tokens", "max_tokens"):
        if key in body:
            return key
    name = (model or "").lower().split("/")[-1]
    return "max_completion_tokens" if name.startswith(REASONING_PREFIXES) else "max_tokens"


def apply_cap(endpoint: str, body: dict[str, Any], model: str | None, cap: int) -> tuple[dict[str, Any], bool]:
    """``body`` with its output limit at most ``cap``; True when that changed anything."""
    field = cap_field(endpoint, body, model)
    if field is None or cap <= 0:
        return body, False
    current = body.get(field)
    if isinstance(current, int) and not isinstance(current, bool) and 0 < current <= cap:
        return body, False
    return {**body, field: cap}, True
