"""Provider prefix caching: the stable prefix of a request, and why a team's prefixes never match.

Providers cache the longest prefix a request shares with an earlier one (OpenAI by
itself, Anthropic up to an explicit breakpoint), so a prefix that changes on every
call, a timestamp or a request id at the top of the system prompt, tools in another
order, a user name before the instructions, is never read from the cache.

:class:`PrefixWatch` sees every request's *stable part* (tools, system, and every turn
before the last one), in the order the provider reads it. Requests whose stable parts
end the same way (the same last 256 characters, for one endpoint and model) are one
group; when a group's prefixes differ, the record of the call says where
(``record.prefix["differs_at"]``) with a fixed-length excerpt around that position.
:func:`unstable_prefixes` turns records into findings: the groups whose prefixes
(almost) never match, where they first differ, and what fixing it would save at the
provider's cached-input price. The pytest plugin and ``llmbudget report`` print them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .calls import Usage
from .money import format_usd
from .providers._base import json_text
from .tokens import estimate_text

if TYPE_CHECKING:
    from .calls import SpendRecord
    from .pricing import Pricing

__all__ = ["MIN_CACHEABLE_TOKENS", "PrefixFinding", "PrefixWatch", "prefix_lines", "prefix_row", "prefix_text", "unstable_prefixes"]

#: The shortest prefix the providers cache (OpenAI and most Claude models: 1,024 tokens).
MIN_CACHEABLE_TOKENS = 1024
#: The tokens of a prefix recorded before records carried their own estimate (``tokens``, from
#: :func:`llmbudget.tokens.estimate_text`): its characters, four a token (reports only: nothing is charged by it).
CHARS_PER_TOKEN = 4
_TAIL = 256
_KEPT = 16_384  # characters of a group's first prefix kept to find where later ones differ
_CHUNK = 4_096  # beyond them, a digest per chunk of this many characters says where a difference lies
_MAX_CHUNKS = 256
_EXCERPT = 24  # characters shown on each side of the first difference


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json_text(value)


def prefix_text(endpoint: str, body: dict[str, Any]) -> str | None:
    """The stable part of a request as its provider reads it: tools, then system or instructions,
    then every turn before the last; None for endpoints with no prefix cache or without a last turn."""
    if endpoint == "chat.completions":
        turns, head = body.get("messages"), [body.get("tools"), body.get("functions")]
    elif endpoint == "messages":
        turns, head = body.get("messages"), [body.get("tools"), body.get("system")]
    elif endpoint == "responses":
        turns = body.get("input")
        turns = turns if isinstance(turns, list) else [turns]
        head = [body.get("tools"), body.get("instructions")]
    else:
        return None
    if not isinstance(turns, list) or not turns:
        return None
    parts = [_text(part) for part in head if part]
    for turn in turns[:-1]:
        if isinstance(turn, dict):
            parts.append(f"{turn.get('role', turn.get('type', ''))}: {_text(turn.get('content'))}")
        else:
            parts.append(_text(turn))
    return "\n".join(parts)


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()


def excerpt(text: str, at: int) -> str:
    """A fixed-length window of ``text`` around position ``at``, the difference marked with ``⟨⟩``."""
    before = text[max(0, at - _EXCERPT):at]
    after = text[at:at + _EXCERPT]
    clean = str.maketrans({"\n": "⏎", "\r": " ", "\t": " "})
    return ("…" if at > _EXCERPT else "") + before.translate(clean) + "⟨⟩" + after.translate(clean) + (
        "…" if at + _EXCERPT < len(text) else "")


class PrefixWatch:
    """Groups requests by how their stable part ends and notes where a group's prefixes differ.

    Keeps the first prefix of at most ``max_groups`` groups (its first 16,384 characters),
    least recently seen dropped first. Thread-safe; ``observe`` never raises.
    """

    def __init__(self, *, max_groups: int = 512, min_chars: int = 200) -> None:
        self.max_groups = max_groups
        self.min_chars = min_chars
        self._groups: OrderedDict[str, tuple[str, str, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, endpoint: str, model: str | None, body: dict[str, Any]) -> dict[str, Any] | None:
        """What the record of this request keeps about its prefix (None: too short to matter)."""
        try:
            text = prefix_text(endpoint, body)
        except Exception:  # noqa: BLE001  (a report, never a reason for a call to fail)
            return None
        if text is None or len(text) < self.min_chars:
            return None
        group = _digest(endpoint, model or "", text[-_TAIL:])
        full = _digest(text)
        differs_at: int | None = None
        with self._lock:
            first = self._groups.get(group)
            if first is None:  # its first characters, and a digest of each chunk beyond them
                chunks = tuple(_digest(text[at : at + _CHUNK]) for at in range(_KEPT, len(text), _CHUNK))
                self._groups[group] = (full, text[:_KEPT], chunks[:_MAX_CHUNKS])
                if len(self._groups) > self.max_groups:
                    self._groups.popitem(last=False)
            else:
                self._groups.move_to_end(group)
                if first[0] != full:
                    differs_at = _common_prefix(first[1], text)
        out: dict[str, Any] = {"group": group, "hash": full, "chars": len(text), "tokens": estimate_text(text)}
        if differs_at is not None and first is not None:
            if differs_at == _KEPT:  # past the characters kept: the first chunk that differs
                chunk = next((i for i, digest in enumerate(first[2])
                              if _digest(text[_KEPT + i * _CHUNK : _KEPT + (i + 1) * _CHUNK]) != digest), len(first[2]))
                differs_at = _KEPT + chunk * _CHUNK
                out["within"] = _CHUNK  # somewhere in the next _CHUNK characters
            out["differs_at"] = differs_at
            out["excerpt"] = excerpt(text, differs_at)
        return out


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (a bisection over C-speed compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True, slots=True)
class PrefixFinding:
    """A group of requests whose prefixes are near-identical but (almost) never match."""

    endpoint: str
    model: str
    calls: int
    distinct: int
    differs_at: int
    excerpt: str
    prefix_tokens: int
    #: What the calls would have saved at the provider's cached-input price had the prefix been stable
    #: (0 when it is shorter than the providers' 1,024-token minimum or the model's price is unknown).
    saving_usd: Decimal
    tests: tuple[str, ...] = ()
    #: Past the first 16,384 characters the difference is known to a chunk: it lies within this many characters
    #: from ``differs_at`` (0: exactly there).
    within: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "model": self.model, "calls": self.calls, "distinct_prefixes": self.distinct,
                "differs_at": self.differs_at, "excerpt": self.excerpt, "prefix_tokens": self.prefix_tokens,
                "saving_usd": str(self.saving_usd), "tests": list(self.tests), "within": self.within}

    def line(self) -> str:
        where = (f"within characters {self.differs_at}-{self.differs_at + self.within}" if self.within
                 else f"at character {self.differs_at}")
        return (f"{self.model}: {self.distinct} different prefixes in {self.calls} calls, first differing {where}: "
                f"{self.excerpt!r}")


def prefix_row(record: SpendRecord) -> dict[str, Any] | None:
    """What :func:`unstable_prefixes` needs of a record (plain JSON: it travels between pytest-xdist workers)."""
    if not record.prefix or "group" not in record.prefix or record.from_cache:
        return None
    return {**record.prefix, "endpoint": record.endpoint, "model": record.model, "base_url": record.base_url,
            "test_id": record.test_id}


def unstable_prefixes(rows: Iterable[dict[str, Any] | None], pricing: Pricing) -> list[PrefixFinding]:
    """The prefix groups (from :func:`prefix_row`) whose prefixes differ on at least half their calls,
    those whose fix would save the most first."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not row:
            continue
        group = groups.setdefault(row["group"], {"calls": 0, "hashes": set(), "differs_at": None, "excerpt": "", "within": 0,
                                                  "tokens": 0, "row": row, "tests": []})
        group["calls"] += 1
        group["hashes"].add(row["hash"])
        tokens = row.get("tokens")
        if tokens is None:  # a row written before rows carried their estimate: its characters, four a token
            tokens = int(row.get("chars") or 0) // CHARS_PER_TOKEN
        group["tokens"] = max(group["tokens"], int(tokens))
        at = row.get("differs_at")
        if at is not None and (group["differs_at"] is None or at < group["differs_at"]):
            group["differs_at"], group["excerpt"], group["within"] = at, row.get("excerpt", ""), row.get("within", 0)
        test = row.get("test_id")
        if test and test not in group["tests"]:
            group["tests"].append(test)
    findings = []
    for group in groups.values():
        calls, distinct = group["calls"], len(group["hashes"])
        if distinct < 2 or group["differs_at"] is None or distinct * 2 < calls:
            continue
        row = group["row"]
        tokens = group["tokens"]
        saving = Decimal(0)
        if tokens >= _minimum_tokens(row["endpoint"], row["model"]):
            base_url = row.get("base_url", "")
            full = pricing.cost(Usage(input_tokens=tokens), model=row["model"], base_url=base_url)
            cached = pricing.cost(Usage(input_tokens=tokens, cached_input_tokens=tokens), model=row["model"],
                                  base_url=base_url)
            if full.known and cached.known:
                saving = (full.usd - cached.usd) * (distinct - 1)
                if row["endpoint"] == "messages":  # Anthropic caches at a breakpoint, and writing it costs more
                    written = pricing.cost(Usage(input_tokens=tokens, cache_write_tokens=tokens), model=row["model"],
                                           base_url=base_url)
                    saving = max(Decimal(0), saving - (written.usd - full.usd))
        findings.append(PrefixFinding(row["endpoint"], row["model"], calls, distinct, group["differs_at"],
                                      group["excerpt"], tokens, saving, tuple(group["tests"]), group["within"]))
    return sorted(findings, key=lambda f: (-f.saving_usd, -f.calls))


def _minimum_tokens(endpoint: str, model: str) -> int:
    """The shortest prefix the provider caches: OpenAI's 1,024 tokens, Anthropic's per model."""
    if endpoint == "messages":
        from .breakpoints import min_cacheable_tokens

        return min_cacheable_tokens(model)
    return MIN_CACHEABLE_TOKENS


def prefix_lines(findings: list[PrefixFinding]) -> list[str]:
    """The prefix-stability findings for people: one line each, and where the prefix changes."""
    if not findings:
        return []
    out = [(f"unstable prompt prefixes: {len(findings)} group(s) of near-identical prompts whose prefixes never "
            "match, so the provider's prompt cache cannot serve them")]
    for finding in findings:
        saving = (f"fixing it would save about {format_usd(finding.saving_usd)}" if finding.saving_usd
                  else f"prefix of about {finding.prefix_tokens} tokens (the provider caches from "
                       f"{_minimum_tokens(finding.endpoint, finding.model):,})")
        tests = f" (in {', '.join(finding.tests[:3])}{', ...' if len(finding.tests) > 3 else ''})" if finding.tests else ""
        out.append(f"  {finding.line()}; {saving}{tests}")
    return out
