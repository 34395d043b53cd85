"""Automatic Anthropic cache breakpoints (``[prefix_cache] breakpoints = "auto"``).

Anthropic caches a prompt prefix only up to a ``cache_control`` breakpoint, and a
cache write costs more than plain input (1.25x for five minutes), so a breakpoint on a
prefix that is never sent again loses money. For a Messages request that carries no
``cache_control`` of its own, :class:`Breakpoints` marks the end of the stable part
(tools, system, and the turns before the last) when:

- the prefix is at least the model's minimum cacheable length (1,024 tokens; 2,048
  for the Haiku 3 models; 4,096 for Haiku 4.5 and Opus 4.5, per Anthropic's docs), and
- this tenant sent the same prefix within the cache's five-minute lifetime, often
  enough that the expected reads pay for the write: with ``k`` sightings in the last
  five minutes, ``k * (input - read price) > (write - input price)``. A one-off
  prefix is never marked, so it never pays for a write.

For conversations, a second breakpoint on the last turn writes the conversation so far
for its next turn to read, when the share ``p`` of this tenant's requests that a later
turn continued within five minutes makes it pay: ``p * (input - read) > write - input``
(a tenant starts at ``p = 0``: one-off traffic never pays for it).

At most two breakpoints are added (the API allows four); content and order are never
changed (a string becomes the same text as one block); a request with any breakpoint of
its own is left alone.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .pricing import CACHE_READ_MULTIPLIER, CACHE_WRITE_MULTIPLIER
from .tokens import estimate_text

if TYPE_CHECKING:
    from .pricing import Pricing

__all__ = ["Breakpoints", "cache_write_ttls", "has_cache_control", "min_cacheable_tokens", "without_cache_control"]

TTL_S = 300.0


def min_cacheable_tokens(model: str | None) -> int:
    """The shortest prefix Anthropic caches for ``model`` (its docs' table: 4,096 for Opus 4.6, Opus 4.5 and
    Haiku 4.5, 2,048 for the Haiku 3 models; others and unknown models 1,024, where a breakpoint on a shorter
    prefix would be a slot spent, not a write paid: nothing under the minimum is written)."""
    name = (model or "").lower().replace(".", "-")
    if any(f"{family}-4-{minor}" in name for family, minor in (("haiku", 5), ("opus", 5), ("opus", 6))):
        return 4096
    if "haiku-3" in name or "3-haiku" in name or "3-5-haiku" in name:
        return 2048
    return 1024


def has_cache_control(body: Any) -> bool:
    """Whether a Messages body carries a ``cache_control`` where Anthropic reads one."""
    return bool(cache_write_ttls(body))


#: Blocks that take a ``cache_control`` (the API's request schema; sub-content blocks and thinking do not).
_MARKABLE = frozenset({"text", "image", "document", "search_result", "tool_use", "tool_result", "server_tool_use",
                       "mcp_tool_use", "mcp_tool_result", "container_upload"})


def _markable(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = str(block.get("type", ""))
    if kind == "text":
        return bool(block.get("text"))  # never on an empty text
    return kind in _MARKABLE or kind.endswith("_tool_result")  # web search's, code execution's...


def cache_write_ttls(body: Any) -> set[str]:
    """The ``ttl`` of every ``cache_control`` of a Messages body where Anthropic reads one (see
    :func:`without_cache_control`; "5m" when unset): what a call may write to the prompt cache, and at which rate."""
    found: list[Any] = []
    without_cache_control(body, found)
    return {str(control.get("ttl") or "5m") if isinstance(control, dict) else "5m" for control in found}


def without_cache_control(body: Any, found: list[Any] | None = None) -> Any:
    """A Messages ``body`` without Anthropic's ``cache_control`` markers, where Anthropic reads them: the body's
    own (automatic caching), its ``system`` and message content blocks (and a tool result's), its tool
    definitions. A key of that name inside a tool's JSON schema, or anywhere else, is the app's data and stays.
    A text block left alone becomes its string. ``found``: each marker removed is appended to it."""
    if not isinstance(body, dict):
        return body
    out = _unmarked(body, found)
    if "system" in out:
        out["system"] = _unmarked_blocks(out["system"], found)
    if isinstance(out.get("messages"), list):
        out["messages"] = [{**m, "content": _unmarked_blocks(m["content"], found)}
                           if isinstance(m, dict) and "content" in m else m for m in out["messages"]]
    if isinstance(out.get("tools"), list):
        out["tools"] = [_unmarked(tool, found) if isinstance(tool, dict) else tool for tool in out["tools"]]
    return out


def _unmarked(item: dict[str, Any], found: list[Any] | None) -> dict[str, Any]:
    if "cache_control" not in item:
        return dict(item)
    if found is not None and item["cache_control"] is not None:  # null: no breakpoint, as the API reads it
        found.append(item["cache_control"])
    return {k: v for k, v in item.items() if k != "cache_control"}


def _unmarked_blocks(content: Any, found: list[Any] | None) -> Any:
    """Content blocks without their ``cache_control`` (the blocks inside a tool result, a search result and a
    document's ``content`` source too); one text block: its text."""
    if not isinstance(content, list):
        return content
    blocks = []
    for block in content:
        if isinstance(block, dict):
            block = _unmarked(block, found)
            if block.get("type") in ("tool_result", "search_result") and "content" in block:
                block["content"] = _unmarked_blocks(block["content"], found)
            source = block.get("source")
            if block.get("type") == "document" and isinstance(source, dict) and isinstance(source.get("content"), list):
                block["source"] = {**source, "content": _unmarked_blocks(source["content"], found)}
        blocks.append(block)
    if len(blocks) == 1 and isinstance(blocks[0], dict) and set(blocks[0]) == {"type", "text"} \
            and blocks[0]["type"] == "text":
        return blocks[0]["text"]
    return blocks


def _marked(content: Any) -> Any:
    """``content`` (a string or a list of blocks) with a breakpoint on its last block that may carry one
    (not a thinking block, nor an empty text), or None when it has none."""
    mark = {"type": "ephemeral"}
    if isinstance(content, str):
        return [{"type": "text", "text": content, "cache_control": mark}] if content else None
    if isinstance(content, list):
        for at in range(len(content) - 1, -1, -1):
            if _markable(content[at]):
                return [*content[:at], {**content[at], "cache_control": mark}, *content[at + 1:]]
    return None


class Breakpoints:
    """Decides, per tenant, whether a Messages request's stable prefix gets a breakpoint."""

    def __init__(self, pricing: Pricing, *, max_prefixes: int = 10_000, clock: Any = time.monotonic) -> None:
        self.pricing = pricing
        self.max_prefixes = max_prefixes
        self._clock = clock
        self._seen: OrderedDict[str, list[float]] = OrderedDict()
        #: Per tenant: requests seen, and how many of them continued an earlier one within five minutes.
        self._rates: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _sightings(self, key: str, retry: bool = False) -> int:
        """Sightings of ``key`` within the cache's lifetime before this one (this one is recorded); ``retry``:
        this request's first attempt was recorded already, so it is neither counted nor recorded again."""
        now = self._clock()
        with self._lock:
            times = [t for t in self._seen.pop(key, []) if now - t < TTL_S]
            before = len(times)
            if retry:
                self._seen[key] = times
                return max(0, before - 1)
            times.append(now)
            self._seen[key] = times[-16:]
            while len(self._seen) > self.max_prefixes:
                self._seen.popitem(last=False)
        return before

    def _worth_it(self, model: str | None, tokens: int, sightings: float, base_url: str) -> bool:
        from .calls import Usage

        input_ = self.pricing.cost(Usage(input_tokens=tokens), model=model, base_url=base_url)
        if input_.known:
            write = self.pricing.cost(Usage(input_tokens=tokens, cache_write_tokens=tokens), model=model,
                                      base_url=base_url).usd
            read = self.pricing.cost(Usage(input_tokens=tokens, cached_input_tokens=tokens), model=model,
                                     base_url=base_url).usd
            premium, gain = write - input_.usd, input_.usd - read
        else:
            premium, gain = CACHE_WRITE_MULTIPLIER - 1, 1 - CACHE_READ_MULTIPLIER  # (prices unknown)
        return Decimal(repr(sightings)) * gain > premium

    def _continues(self, tenant: str, earlier: str | None, retry: bool = False) -> float:
        """Note whether this request continues one seen within the cache's lifetime (``earlier``: the key
        of the request it would continue), and the tenant's smoothed share of requests that were continued
        (``retry``: the first attempt noted it; the share it saw)."""
        now = self._clock()
        with self._lock:
            if retry:
                requests, continuations = self._rates.get(tenant, (1, 0))
                return continuations / (max(requests, 1) - 1 + 3)
            continued = earlier is not None and any(now - t < TTL_S for t in self._seen.get(earlier, ()))
            requests, continuations = self._rates.get(tenant, (0, 0))
            self._rates[tenant] = (requests + 1, continuations + int(continued))
            while len(self._rates) > self.max_prefixes:
                self._rates.pop(next(iter(self._rates)))
        return (continuations + int(continued)) / (requests + 3)  # a new tenant starts at 0: no write

    def _key(self, tenant: str, model: str | None, text: str) -> str:
        return hashlib.blake2b(f"{tenant}\0{model}\0{text}".encode(), digest_size=12).hexdigest()

    def apply(self, body: dict[str, Any], *, tenant: str, model: str | None, base_url: str = "",
              retry: bool = False) -> dict[str, Any] | None:
        """``body`` with breakpoints, or None to send it as it is; ``retry``: the same request again (an SDK
        retry), decided as its first attempt was and not counted as another sighting.

        Two prefixes are candidates for the breakpoint that reads, the longest first: everything before
        the last turn (marked on the turn before it) and the head alone, tools and system (marked on the
        system prompt, else the last tool), which a new conversation shares with earlier ones. Both are
        counted as seen. A second breakpoint, on the last turn, writes the whole conversation so far for
        its next turn to read, when this tenant's conversations go on often enough (the share of its
        requests that a later one continued within five minutes) for the expected read to pay the write.
        """
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or has_cache_control(body):
            return None
        head = {"tools": body.get("tools"), "system": body.get("system")}
        candidates = [("turns", {**head, "messages": messages[:-1]})] if len(messages) > 1 else []
        candidates.append(("head", head))
        minimum = min_cacheable_tokens(model)
        chosen = None
        for name, stable in candidates:
            text = json.dumps(stable, separators=(",", ":"), ensure_ascii=False, default=str)
            tokens = estimate_text(text)
            if tokens < minimum:
                continue
            sightings = self._sightings(self._key(tenant, model, text), retry)
            if chosen is None and sightings and self._worth_it(model, tokens, sightings, base_url):
                chosen = name
        whole = json.dumps({**head, "messages": messages}, separators=(",", ":"), ensure_ascii=False, default=str)
        earlier = None
        if len(messages) >= 3:  # this turn's messages less its answer and question were a whole request before
            earlier = self._key(tenant, model, json.dumps({**head, "messages": messages[:-2]}, separators=(",", ":"),
                                                            ensure_ascii=False, default=str))
        share = self._continues(tenant, earlier, retry)
        self._sightings(self._key(tenant, model, whole), retry)  # what the next turn will look for
        tokens = estimate_text(whole)
        last = tokens >= minimum and self._worth_it(model, tokens, share, base_url)
        marked = body
        if chosen == "turns" and isinstance(messages[-2], dict):
            content = _marked(messages[-2].get("content"))
            if content is not None:
                marked = {**body, "messages": [*messages[:-2], {**messages[-2], "content": content}, messages[-1]]}
                chosen = "done"
        if chosen in ("turns", "head"):
            system = _marked(body.get("system"))
            tools = body.get("tools")
            if system is not None:
                marked = {**body, "system": system}
            elif isinstance(tools, list) and tools and isinstance(tools[-1], dict):
                marked = {**body, "tools": [*tools[:-1], {**tools[-1], "cache_control": {"type": "ephemeral"}}]}
        if last and isinstance(messages[-1], dict):
            content = _marked(messages[-1].get("content"))
            if content is not None:
                turns = marked["messages"]
                marked = {**marked, "messages": [*turns[:-1], {**turns[-1], "content": content}]}
        return marked if marked is not body else None
