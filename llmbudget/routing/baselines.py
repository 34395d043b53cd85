"""Simple routers the learned one must beat: prompt length, and a rule-based complexity scorer.

``eval router --baselines`` scores the same labeled prompts with each of them, so
a router change is judged against what needs no training at all:

- ``length``: the longer the request's text, the more it goes strong.
- ``rules``: a weighted sum of hand-written complexity signals in the spirit of
  LiteLLM's ``complexity_router`` (token count, code, reasoning markers,
  technical terms, simple-question markers with a negative weight, multi-step
  patterns, several questions). Its keyword lists and weights are fixed here,
  never fitted to any data, so it is a fair out-of-the-box baseline.

Both take a request body (chat ``messages`` or Responses ``input``) and return a
score where higher means "send to the strong model".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .features import request_text

__all__ = ["BASELINES", "complexity_rules", "prompt_length"]

_WORD = re.compile(r"[a-z0-9_+#']+")

#: Each dimension's weight (they sum to 1) and its word or phrase list.
_CODE = frozenset(
    "function class def const let var import export return async await try catch exception error debug api "
    "endpoint request response database sql query schema algorithm implement refactor optimize python "
    "javascript typescript java rust golang react docker kubernetes git commit merge branch compile "
    "compiler runtime recursion pointer array".split()
)
_REASONING = (
    "step by step", "think through", "let's think", "reason through", "analyze", "analyse", "break down",
    "explain your reasoning", "show your work", "chain of thought", "think carefully", "consider all",
    "evaluate", "pros and cons", "compare and contrast", "trade-off", "tradeoff", "logical", "deduce",
    "infer", "conclude", "prove", "justify", "derive",
)
_TECHNICAL = frozenset(
    "architecture distributed scalable microservice encryption authentication authorization performance "
    "latency throughput benchmark concurrency parallel threading memory cpu gpu optimization protocol tcp "
    "http container orchestration theorem equation integral derivative matrix probability statistics "
    "regression hypothesis quantum molecule enzyme statute jurisdiction liability".split()
)
_TECHNICAL_PHRASES = ("machine learning", "neural network", "deep learning")
_SIMPLE = (
    "what is", "what's", "define", "definition of", "who is", "who was", "when did", "when was", "where is",
    "where was", "how many", "how much", "yes or no", "true or false", "simple", "brief", "short", "quick",
    "hello", "thanks", "thank you",
)
_MULTI_STEP = re.compile(r"\b(first\b.{0,200}\bthen\b|step \d|\n\s*\d+[.)]\s)", re.S)

_WEIGHTS: Mapping[str, float] = {
    "tokens": 0.10,
    "code": 0.30,
    "reasoning": 0.25,
    "technical": 0.25,
    "simple": 0.05,
    "multi_step": 0.03,
    "questions": 0.02,
}
_SHORT_TOKENS = 15
_LONG_TOKENS = 400


def _text(body: Any) -> str:
    found = request_text(body)
    return "\n".join([*found.context, found.query]) if found.context else found.query


def prompt_length(body: Any) -> float:
    """The length-only router: the request's text length in characters."""
    return float(len(_text(body)))


def _dimensions(text: str) -> dict[str, float]:
    lower = text.lower()
    words = _WORD.findall(lower)
    tokens = len(text) / 4.0  # characters per token, as a rule-based router would estimate it
    token_score = -1.0 if tokens < _SHORT_TOKENS else 1.0 if tokens > _LONG_TOKENS else (
        math.log(tokens / _SHORT_TOKENS) / math.log(_LONG_TOKENS / _SHORT_TOKENS) * 2.0 - 1.0
    )
    word_set = set(words)
    code_hits = len(word_set & _CODE) + lower.count("```")
    technical_hits = len(word_set & _TECHNICAL) + sum(p in lower for p in _TECHNICAL_PHRASES)
    return {
        "tokens": token_score,
        "code": min(code_hits / 3.0, 1.0),
        "reasoning": min(sum(p in lower for p in _REASONING) / 2.0, 1.0),
        "technical": min(technical_hits / 3.0, 1.0),
        "simple": -min(float(sum(p in lower for p in _SIMPLE)), 1.0),
        "multi_step": 1.0 if _MULTI_STEP.search(lower) else 0.0,
        "questions": 1.0 if text.count("?") > 1 else 0.0,
    }


def complexity_rules(body: Any) -> float:
    """The rule-based router: a fixed weighted sum of complexity signals, in about [-0.2, 1]."""
    dims = _dimensions(_text(body))
    return sum(_WEIGHTS[name] * value for name, value in dims.items())


#: The baselines ``eval router --baselines`` reports, by name.
BASELINES: Mapping[str, Callable[[Any], float]] = {"length": prompt_length, "rules": complexity_rules}
