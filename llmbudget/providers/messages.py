"""Anthropic Messages: ``POST .../v1/messages`` (the ``anthropic`` SDK, and servers that speak it).

Usage: Anthropic's ``input_tokens`` counts only the input after the last cache
breakpoint; ``cache_creation_input_tokens`` (written to the cache, by TTL in
``cache_creation``) and ``cache_read_input_tokens`` (read from it) come on top.
A :class:`~llmbudget.calls.Usage` counts all three as input, with the reads as
``cached_input_tokens`` and the writes as ``cache_write_tokens`` (the one-hour
ones also as ``cache_write_1h_tokens``), so every price applies to its own tokens.
A stream reports input usage in ``message_start`` and the (cumulative) output, and
on newer servers the input again, in ``message_delta``: the later value wins.
"""

from __future__ import annotations

from typing import Any

from ..calls import Usage
from ._base import (
    DEFAULT_WEB_SEARCHES,
    IMAGE_TOKENS,
    MAX_SEARCHES,
    WEB_FETCH_TOKENS,
    Adapter,
    ResponseState,
    _count,
    as_int,
    items,
    json_text,
    pdf_tokens,
)

__all__ = ["STOP_REASONS", "MessagesAdapter", "messages_usage"]

#: Advisor inferences a request's advisor tool is held to without a ``max_uses`` of its own (a reservation's
#: estimate: the API sets no limit, and the executor consults it a few times in a long task), and the output each
#: may write without a ``max_tokens`` (Anthropic's docs: typically 1,400 to 1,800 tokens with thinking).
DEFAULT_ADVISOR_USES = 3
ADVISOR_OUTPUT_TOKENS = 2048

#: Anthropic ``stop_reason`` -> the OpenAI ``finish_reason`` the pipeline reasons about.
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "refusal": "content_filter", "pause_turn": "pause_turn",
                "model_context_window_exceeded": "length"}


def messages_usage(raw: dict[str, Any]) -> Usage:
    """Usage from a Messages ``usage`` object, with the tokens of its ``compaction`` iterations (a context
    compaction's own request, which the top-level fields leave out: the SDK's ``BetaUsage.iterations``) and, as
    ``others``, its ``advisor_message`` iterations (the advisor tool's inferences, on the advisor's model and
    billed at its rates; also left out of the top-level fields)."""
    plain, written, read, written_1h = _input_counts(raw)
    output = as_int(raw.get("output_tokens"))
    others: dict[str, Usage] = {}  # by model: a long agentic call consults its advisor many times
    for step in items(raw.get("iterations")):
        if isinstance(step, dict) and step.get("type") == "compaction":
            more = _input_counts(step)
            plain, written, read, written_1h = (x + y for x, y in zip((plain, written, read, written_1h), more,
                                                                       strict=True))
            output += as_int(step.get("output_tokens"))
        elif isinstance(step, dict) and step.get("type") == "advisor_message":
            a_plain, a_written, a_read, a_1h = _input_counts(step)
            _add(others, step.get("model"), Usage(
                input_tokens=a_plain + a_written + a_read, cached_input_tokens=a_read, cache_write_tokens=a_written,
                cache_write_1h_tokens=min(a_1h, a_written), output_tokens=as_int(step.get("output_tokens"))))
    for part in others.values():  # each count was within the limit; their sums must be too
        as_int(part.input_tokens, what="advisor input tokens")
        as_int(part.output_tokens, what="advisor output tokens")
    server = raw.get("server_tool_use")
    # Anthropic's fast mode, a multiple of the standard rate, priced as the tier "fast" (see Pricing)
    tier = "fast" if raw.get("speed") == "fast" else raw["service_tier"] if isinstance(raw.get("service_tier"),
                                                                                          str) else None
    return Usage(
        input_tokens=plain + written + read,
        cached_input_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(written_1h, written),
        output_tokens=output,
        service_tier=tier,
        web_searches=as_int(server.get("web_search_requests"), MAX_SEARCHES, "web search count")
        if isinstance(server, dict) else 0,
        others=tuple(others.items()),
    )


def _add(parts: dict[str, Usage], model: Any, usage: Usage) -> None:
    """Add ``usage`` to what ``parts`` holds for ``model`` ("unknown" where it is not a name): one pair per model,
    however many inferences ran on it."""
    name = model if isinstance(model, str) and model else "unknown"
    was = parts.get(name)
    parts[name] = usage if was is None else usage.replace(
        input_tokens=was.input_tokens + usage.input_tokens,
        cached_input_tokens=was.cached_input_tokens + usage.cached_input_tokens,
        cache_write_tokens=was.cache_write_tokens + usage.cache_write_tokens,
        cache_write_1h_tokens=was.cache_write_1h_tokens + usage.cache_write_1h_tokens,
        output_tokens=was.output_tokens + usage.output_tokens)


def _note_tool_use(block: Any, state: ResponseState) -> None:
    """A content block that calls a tool: the answer has tool calls, and an advisor's begins a consultation."""
    if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
        state.tool_calls = True
        state.advisor_uses += block.get("type") == "server_tool_use" and block.get("name") == "advisor"


def _input_counts(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    """(uncached input, cache writes, cache reads, 1-hour writes) of a Messages usage object (or iteration)."""
    plain = as_int(raw.get("input_tokens"))
    written = as_int(raw.get("cache_creation_input_tokens"))
    read = as_int(raw.get("cache_read_input_tokens"))
    by_ttl = raw.get("cache_creation")
    written_1h = as_int(by_ttl.get("ephemeral_1h_input_tokens")) if isinstance(by_ttl, dict) else 0
    if isinstance(by_ttl, dict):  # writes a usage gives only by TTL (no cache_creation_input_tokens) are writes too
        written = max(written, written_1h + as_int(by_ttl.get("ephemeral_5m_input_tokens")))
    return plain, written, read, written_1h


def _block_text(content: Any, out: list[str]) -> None:
    """The text of a Messages content (a string or a list of blocks) for token estimates."""
    if isinstance(content, str):
        out.append(content)
        return
    for block in items(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if isinstance(block.get("text"), str):
            out.append(block["text"])
        elif kind == "tool_use":
            out.append(json_text(block.get("input")))
        elif kind == "tool_result":
            _block_text(block.get("content"), out)
        elif kind in ("thinking", "redacted_thinking"):
            out.append(str(block.get("thinking") or block.get("data") or ""))
        elif kind in ("document", "search_result"):  # their text; an image or a PDF is in _media_tokens
            for key in ("title", "context"):
                if isinstance(block.get(key), str):
                    out.append(block[key])
            source = block.get("source")
            if kind == "search_result":
                _block_text(block.get("content"), out)
            elif isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
                out.append(source["data"])
            elif isinstance(source, dict) and source.get("type") == "content":
                _block_text(source.get("content"), out)


def _media_tokens(content: Any) -> int:
    """Estimated tokens of the images and PDFs in a Messages content (see ``_base.IMAGE_TOKENS``)."""
    total = 0
    for block in items(content):
        if not isinstance(block, dict):
            continue
        kind, source = block.get("type"), block.get("source")
        if kind == "image":
            total += IMAGE_TOKENS
        elif kind == "document" and isinstance(source, dict) and source.get("type") not in ("text", "content"):
            total += pdf_tokens(source.get("data") if source.get("type") == "base64" else None)
        elif kind == "tool_result":
            total += _media_tokens(block.get("content"))
    return total


#: Stream deltas that carry billed output beside the answer's text, and the field that holds it.
_HIDDEN_DELTAS = {"thinking_delta": "thinking", "input_json_delta": "partial_json"}


#: Input tokens Anthropic adds to a request with tools, beside the tools' definitions (its tool-use docs): the
#: tool-use system prompt, and the Anthropic-defined tools' own (computer use: the tool and its system prompt).
TOOL_SYSTEM_PROMPT_TOKENS = 346
_ANTHROPIC_TOOL_TOKENS = (("bash_", 245), ("text_editor_", 700), ("computer_", 735 + 499))


def _tool_overhead(tools: Any) -> int:
    defined = [tool for tool in items(tools) if isinstance(tool, dict)]
    if not defined:
        return 0
    return TOOL_SYSTEM_PROMPT_TOKENS + sum(
        next((extra for prefix, extra in _ANTHROPIC_TOOL_TOKENS if str(tool.get("type", "")).startswith(prefix)), 0)
        for tool in defined)

class MessagesAdapter(Adapter):
    endpoint = "messages"
    path = "/messages"
    limit_fields = ("max_tokens",)

    def input_text(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        _block_text(body.get("system"), out)
        for message in items(body.get("messages")):
            if isinstance(message, dict):
                if isinstance(message.get("role"), str):
                    out.append(message["role"])
                _block_text(message.get("content"), out)
        for key in ("tools", "tool_choice", "output_format"):
            if body.get(key):
                out.append(json_text(body[key]))
        return out

    def media_tokens(self, body: dict[str, Any], model: str | None = None) -> int:
        """Images and documents, and the system prompt Anthropic adds for tools (beside their definitions)."""
        return _media_tokens(body.get("system")) + sum(
            _media_tokens(m.get("content")) for m in items(body.get("messages")) if isinstance(m, dict)
        ) + _tool_overhead(body.get("tools"))

    def fetched_tokens(self, body: dict[str, Any]) -> int:
        """Each web fetch tool's ``max_uses`` fetches (5 without one), each its ``max_content_tokens``
        (:data:`WEB_FETCH_TOKENS` without one): the fetched pages are billed as input."""
        return sum((_count(tool.get("max_uses")) or DEFAULT_WEB_SEARCHES)
                   * (_count(tool.get("max_content_tokens")) or WEB_FETCH_TOKENS)
                   for tool in items(body.get("tools"))
                   if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_fetch"))

    def advisors(self, body: dict[str, Any], input_tokens: int, uses: int | None = None
                 ) -> tuple[tuple[str, Usage], ...]:
        """The most each advisor tool (``advisor_20260301``) may bill, on its model: ``max_uses`` inferences
        (:data:`DEFAULT_ADVISOR_USES` without one: the API sets no limit, so a call that consults it more may
        cost more than this), each reading the whole transcript so far (``input_tokens``: the request, what its
        tools may add and the executor's own output) and writing up to its ``max_tokens``
        (:data:`ADVISOR_OUTPUT_TOKENS` without one); with the tool's ``caching``, that input written to the
        prompt cache (at 2x the input price for ``ttl: "1h"``). ``uses``: the most consultations to count
        (those an answer cut short began)."""
        out: dict[str, Usage] = {}
        for tool in items(body.get("tools")):
            if isinstance(tool, dict) and str(tool.get("type", "")).startswith("advisor_"):
                most = _count(tool.get("max_uses")) or DEFAULT_ADVISOR_USES
                count = most if uses is None else min(most, uses)
                if not count:
                    continue
                caching = tool.get("caching")
                read = count * input_tokens
                written = read if isinstance(caching, dict) else 0
                _add(out, tool.get("model"), Usage(
                    input_tokens=read, estimated=True, cache_write_tokens=written,
                    cache_write_1h_tokens=written if isinstance(caching, dict) and caching.get("ttl") == "1h" else 0,
                    output_tokens=count * (_count(tool.get("max_tokens")) or ADVISOR_OUTPUT_TOKENS)))
        return tuple(out.items())

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return messages_usage(data)

    def _read_message(self, data: dict[str, Any], state: ResponseState) -> None:
        for block in items(data.get("content")):
            if isinstance(block, dict):
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    state.text_parts.append(block["text"])
                else:
                    _note_tool_use(block, state)
        reason = data.get("stop_reason")
        if isinstance(reason, str):
            state.finish_reasons.append(STOP_REASONS.get(reason, reason))
            state.refused = state.refused or reason == "refusal"

    def read_json(self, data: Any, state: ResponseState) -> None:
        super().read_json(data, state)
        if isinstance(data, dict):
            self._read_message(data, state)

    def read_stream(self, events: list[Any], state: ResponseState) -> None:
        usage: dict[str, Any] = {}
        parts: list[str] = []
        final = False  # a message_delta with the output count came after message_start's placeholder
        for event in events:
            if not isinstance(event, dict):
                continue
            kind = event.get("type")
            if kind == "message_start" and isinstance(event.get("message"), dict):
                message = event["message"]
                if isinstance(message.get("model"), str):
                    state.model = message["model"]
                if isinstance(message.get("usage"), dict):
                    usage.update(message["usage"])
            elif kind == "content_block_start":
                _note_tool_use(event.get("content_block"), state)
            elif kind == "content_block_delta":
                delta = event.get("delta")
                if isinstance(delta, dict):
                    kind = delta.get("type")
                    if kind == "text_delta" and isinstance(delta.get("text"), str):
                        parts.append(delta["text"])
                    elif kind in _HIDDEN_DELTAS and isinstance(delta.get(_HIDDEN_DELTAS[kind]), str):
                        state.hidden_parts.append(delta[_HIDDEN_DELTAS[kind]])  # billed as output too
            elif kind == "message_delta":
                delta = event.get("delta")
                reason = delta.get("stop_reason") if isinstance(delta, dict) else None
                if isinstance(reason, str):
                    state.finish_reasons.append(STOP_REASONS.get(reason, reason))
                    state.refused = state.refused or reason == "refusal"
                if isinstance(event.get("usage"), dict):
                    usage.update({k: v for k, v in event["usage"].items() if v is not None})
                    final = final or event["usage"].get("output_tokens") is not None
            elif kind == "message_stop":
                state.done = True  # (a gateway may strip message_delta's count: message_start's is a placeholder)
        if usage:
            state.usage = self.reported_usage(usage)
            state.usage_final = final
            if state.usage is not None:
                state.service_tier = state.usage.service_tier or state.service_tier
        state.stream_parts = parts
