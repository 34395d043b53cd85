"""How sure the small tier was of its own answer, from the token log-probabilities it returned.

A cascade (``Routing(min_confidence=...)``) asks the small tier for log-probabilities,
reads them with :func:`answer_confidence` and escalates to the strong tier when the
answer looks unsure, as FrugalGPT and AutoMix do. The log-probabilities come with the
answer at no extra price; the app never sees them unless it asked for them
(:func:`without_logprobs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["answer_confidence", "probe", "without_logprobs"]


def _token_logprobs(choice: Mapping[str, Any]) -> list[float] | None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping):
        return None
    content = logprobs.get("content")  # chat: [{"token", "logprob", ...}, ...]
    values: list[Any]
    if isinstance(content, list):
        values = [item.get("logprob") for item in content if isinstance(item, Mapping)]
    else:  # legacy completions: {"tokens": [...], "token_logprobs": [...]}
        legacy = logprobs.get("token_logprobs")
        if not isinstance(legacy, list):
            return None
        values = legacy
    if not values:
        return None
    # a sampled token without a finite log-probability (null, -inf, NaN) was all but impossible: OpenAI's own
    # floor for it, not left out (which made the answer look surer); a legacy prompt's first token has none
    found = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else _FLOOR
             for v in (values[1:] if not isinstance(content, list) and values[0] is None else values)]
    return found or None


#: The log-probability of a sampled token that has none (OpenAI's floor, -9999).
_FLOOR = -9999.0


def answer_confidence(body: Any) -> float | None:
    """The geometric-mean probability of an answer's tokens, in (0, 1], the least sure choice's when there are
    several (``n`` > 1); ``None`` without log-probabilities.

    Reads a chat completion (``choices[i].logprobs.content``) or a legacy completion
    (``choices[i].logprobs.token_logprobs``).
    """
    if not isinstance(body, Mapping):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    confidences = []
    for choice in choices:
        values = _token_logprobs(choice) if isinstance(choice, Mapping) else None
        if values is None:
            return None  # a choice it cannot judge: none is judged
        confidences.append(math.exp(max(min(sum(values) / len(values), 0.0), -700.0)))
    return min(confidences)


def probe(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """``body`` asking for the answer's log-probabilities, or ``None`` when it cannot or need not be probed.

    Only a non-streamed chat request with one choice and no tools is probed; one that asks for
    log-probabilities itself already gets them.
    """
    if body.get("stream") or body.get("logprobs") or body.get("top_logprobs") is not None:
        return None
    if body.get("tools") or body.get("functions") or body.get("n") not in (None, 1):
        return None
    # top_logprobs=1: some OpenAI-compatible servers (llama.cpp's Python server) only return them with it
    return {**body, "logprobs": True, "top_logprobs": 1}


def without_logprobs(body: Any) -> Any:
    """A chat completion with each choice's ``logprobs`` back to ``None``, as an unprobed request gets it."""
    if not isinstance(body, Mapping) or not isinstance(body.get("choices"), list):
        return body
    choices = [{**choice, "logprobs": None} if isinstance(choice, Mapping) else choice for choice in body["choices"]]
    return {**body, "choices": choices}
