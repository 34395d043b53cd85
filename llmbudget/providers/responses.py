"""OpenAI Responses: ``POST .../responses``."""

from __future__ import annotations

from typing import Any

from ..calls import Usage
from ._base import Adapter, ResponseState, _text_of, as_int, items, json_text, openai_media_tokens

_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def responses_usage(raw: dict[str, Any]) -> Usage:
    """Usage from a Responses ``usage`` object."""
    input_details = raw.get("input_tokens_details")
    input_details = input_details if isinstance(input_details, dict) else {}
    output_details = raw.get("output_tokens_details")
    output_details = output_details if isinstance(output_details, dict) else {}
    return Usage(
        input_tokens=as_int(raw.get("input_tokens")),
        cached_input_tokens=as_int(input_details.get("cached_tokens")),
        cache_write_tokens=as_int(input_details.get("cache_write_tokens")),
        output_tokens=as_int(raw.get("output_tokens")),
        reasoning_tokens=as_int(output_details.get("reasoning_tokens")),
    )


class ResponsesAdapter(Adapter):
    endpoint = "responses"
    path = "/responses"
    limit_fields = ("max_output_tokens",)

    def input_text(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        _text_of(body.get("instructions"), out)
        items = body.get("input")
        if isinstance(items, str):
            out.append(items)
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    _text_of(item.get("content"), out)
        for key in ("tools", "text"):
            if body.get(key):
                out.append(json_text(body[key]))
        return out

    def media_tokens(self, body: dict[str, Any]) -> int:
        return sum(openai_media_tokens(item.get("content")) for item in items(body.get("input"))
                   if isinstance(item, dict))

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return responses_usage(data)

    def _read_response(self, data: dict[str, Any], state: ResponseState) -> None:
        self._read_common(data, state)
        status = data.get("status")
        if isinstance(status, str):
            # an answer cut at max_output_tokens reads as chat's "length" (caps, escalation, the record see it)
            details = data.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            state.finish_reasons.append("stop" if status == "completed" else "length"
                                        if reason == "max_output_tokens" else reason
                                        if reason == "content_filter" else status)
        searches = 0
        for item in items(data.get("output")):
            if isinstance(item, dict):
                if item.get("type") == "function_call":
                    state.tool_calls = True
                searches += item.get("type") == "web_search_call"  # each one billed per call, beside the tokens
                if any(isinstance(part, dict) and part.get("type") == "refusal" for part in items(item.get("content"))):
                    state.refused = True
                if not state.text_parts:
                    _text_of(item.get("content"), state.text_parts)
        if searches and state.usage is not None:
            state.usage = state.usage.replace(web_searches=searches)

    def read_json(self, data: Any, state: ResponseState) -> None:
        if isinstance(data, dict):
            self._read_response(data, state)
            state.done = True

    def read_event(self, data: Any, state: ResponseState) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "response.output_text.delta":
            delta = data.get("delta")
            if isinstance(delta, str):
                state.text_parts.append(delta)
        elif kind in _FINAL_EVENTS or kind == "response.created":
            response = data.get("response")
            if isinstance(response, dict):
                if kind == "response.created":
                    self._read_common(response, state)
                else:
                    text = list(state.text_parts)
                    self._read_response(response, state)
                    state.text_parts[:] = text or state.text_parts
                    state.done = True
