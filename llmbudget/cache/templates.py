"""Templated near-misses: two prompts that share a long template but carry different data.

Most application prompts are a template with data inserted (a passage, a
scenario, a name, an amount, a code block). Two such prompts share most of
their words, so embeddings and the verifier see them as the same question;
answering one with the other's answer answers another question.

:class:`TemplateGuard` aligns the two texts' tokens. When they share at least
``min_shared_tokens`` tokens (a template), every token outside the shared part
must carry no content: each differing segment may only differ in stop words,
courtesy fillers, punctuation, letter case or plural endings. A different (or
moved) content word, number, name, symbol or code token means different data,
and the pair is not a hit whatever its score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from .verifier import _STOP

__all__ = [
    "DEFAULT_MAX_SEMANTIC_CHARS",
    "DEFAULT_MIN_SHARED_TOKENS",
    "DEFAULT_MIN_SHARED_TOKENS_MULTILINE",
    "TemplateGuard",
]

DEFAULT_MIN_SHARED_TOKENS = 20
"""Shared tokens from which two one-line texts count as one template (more words than 90% of Quora questions)."""

DEFAULT_MIN_SHARED_TOKENS_MULTILINE = 8
"""The same for two texts that both span several lines (options, a passage, a letter, code: a template's layout)."""

DEFAULT_MAX_SEMANTIC_CHARS = 500
"""Longest text the semantic tier matches (longer ones use the exact tier only); see ``CacheStore``."""

_TOKENS = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")
_SOFT = frozenset("?.,!'\"’‘“”:;")  # punctuation that does not change what is asked
# Words that do not change what is asked either: the verifier's stop words and courtesy or emphasis fillers.
_FILLERS = _STOP | frozenset("please kindly thank thanks really just actually very also anyone someone".split())


def _tokens(text: str) -> list[str]:
    """Lower-case words, numbers and symbols of ``text``, soft punctuation dropped."""
    return [t.lower() for t in _TOKENS.findall(text) if t not in _SOFT]


def _content_word(token: str) -> str | None:
    """The token's content form (plural ``s`` dropped, number separators removed), or None for a filler."""
    if token in _FILLERS:
        return None
    if token[:1].isdigit():
        return token.replace(",", "")
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def _content(tokens: Sequence[str]) -> list[str]:
    """The content words of ``tokens``, in order."""
    return [c for c in map(_content_word, tokens) if c is not None]


@dataclass(frozen=True, slots=True)
class TemplateGuard:
    """Refuses semantic hits between prompts that share a template but differ in its data.

    ``min_shared_tokens``: tokens (words, numbers, symbols) two texts must
    share, in order, to count as one template; below it the verifier alone
    decides. ``min_shared_tokens_multiline``: the same when both texts span
    several lines. ``max_tokens``: a pair with a text longer than this (in
    tokens) is not aligned (the alignment is quadratic in the worst case): it
    passes only with the same content words in the same order.
    """

    min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS
    min_shared_tokens_multiline: int = DEFAULT_MIN_SHARED_TOKENS_MULTILINE
    max_tokens: int = 2000

    def __post_init__(self) -> None:
        if self.min_shared_tokens < 1 or self.min_shared_tokens_multiline < 1:
            raise ValueError(
                f"min_shared_tokens={self.min_shared_tokens}, min_shared_tokens_multiline="
                f"{self.min_shared_tokens_multiline}: expected at least 1 each"
            )

    def conflict(self, query: str, candidate: str) -> bool:
        """True when the texts share a template and the parts that differ carry different content."""
        needed = self._needed(query, candidate)
        a, b = _tokens(query), _tokens(candidate)
        if min(len(a), len(b)) < needed:
            return False
        if max(len(a), len(b)) > self.max_tokens:
            return _content(a) != _content(b)
        matcher = SequenceMatcher(None, a, b, autojunk=False)
        shared = sum(block.size for block in matcher.get_matching_blocks())
        if shared < needed:
            return False
        return any(_content(a[i1:i2]) != _content(b[j1:j2])
                   for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")

    def _needed(self, query: str, candidate: str) -> int:
        """Shared tokens that make the two texts one template."""
        if "\n" in query.strip() and "\n" in candidate.strip():
            return min(self.min_shared_tokens, self.min_shared_tokens_multiline)
        return self.min_shared_tokens
