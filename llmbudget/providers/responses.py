"""OpenAI Responses: ``POST .../responses``."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ..calls import Usage
from ._base import (
    DEFAULT_WEB_SEARCHES,
    Adapter,
    ResponseState,
    _count,
    _text_of,
    as_int,
    image_tokens,
    items,
    json_text,
    openai_media_tokens,
    with_reasoning_beside,
)

_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def responses_usage(raw: dict[str, Any]) -> Usage:
    """Usage from a Responses ``usage`` object."""
    input_details = raw.get("input_tokens_details")
    input_details = input_details if isinstance(input_details, dict) else {}
    output_details = raw.get("output_tokens_details")
    output_details = output_details if isinstance(output_details, dict) else {}
    prompt, output = as_int(raw.get("input_tokens")), as_int(raw.get("output_tokens"))
    reasoning = as_int(output_details.get("reasoning_tokens"))
    return Usage(
        input_tokens=prompt,
        cached_input_tokens=as_int(input_details.get("cached_tokens")),
        cache_write_tokens=as_int(input_details.get("cache_write_tokens")),
        output_tokens=with_reasoning_beside(prompt, output, reasoning, raw.get("total_tokens")),
        reasoning_tokens=reasoning,
    )


# The size (input plus output tokens) of the responses and conversations this process saw answered, by id: a
# call that continues one (``previous_response_id``, ``conversation``) is billed for all of it as input, though
# its body holds only the new turn. Bounded; a chain made by another process is not known here (README).
_KEPT: OrderedDict[str, int] = OrderedDict()
_KEPT_MAX = 20_000
_KEPT_LOCK = threading.Lock()


def _context_ids(data: dict[str, Any]) -> tuple[Any, Any, str | None]:
    """The previous response, the conversation and the stored prompt template (``prompt:<id>``) a request or a
    response names (each None where it names none)."""
    conversation, prompt = data.get("conversation"), data.get("prompt")
    template = "prompt:" + prompt["id"] if isinstance(prompt, dict) and isinstance(prompt.get("id"), str) else None
    return (data.get("previous_response_id"), conversation.get("id") if isinstance(conversation, dict)
            else conversation, template)


def _remember_context(data: dict[str, Any], usage: Usage | None) -> None:
    """Remember the size of the response ``data`` (its ``usage``, as read), of its conversation and of the prompt
    template it used."""
    if usage is None:
        return
    size = usage.input_tokens + usage.output_tokens
    previous, conversation, template = _context_ids(data)
    ids = [(data.get("id"), size), (conversation, size),
           # a stored prompt template: its input is at most what a call that continues nothing took in
           (None if previous or conversation else template, usage.input_tokens)]
    # each output item, for an input that refers to it (an ``item_reference``): at most the answer's output
    ids.extend(("item:" + item["id"], usage.output_tokens) for item in items(data.get("output"))
               if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"])
    with _KEPT_LOCK:
        for key, tokens in ids:
            if isinstance(key, str) and key:
                if key.startswith("prompt:") and key in _KEPT:  # the least a call of it took in
                    tokens = min(tokens, _KEPT[key])
                _KEPT[key] = tokens
                _KEPT.move_to_end(key)
        while len(_KEPT) > _KEPT_MAX:
            _KEPT.popitem(last=False)


def kept_context_tokens(body: dict[str, Any]) -> int:
    """The tokens of the earlier turns a call continues on the server (``previous_response_id``, a
    ``conversation``), of a stored prompt template it names and of the output items its input refers to
    (``item_reference``), as far as this process saw them answered; 0 when unknown."""
    previous, conversation, template = _context_ids(body)
    referred = [item["id"] for item in items(body.get("input")) if isinstance(item, dict)
                and item.get("type") == "item_reference" and isinstance(item.get("id"), str)]
    with _KEPT_LOCK:
        earlier = max([_KEPT.get(key, 0) for key in (previous, conversation) if isinstance(key, str)] or [0])
        # a known chain holds its template already; each output item an input refers to is input again
        return (earlier or (_KEPT.get(template, 0) if template else 0)) + sum(
            _KEPT.get("item:" + ident, 0) for ident in referred)


def container_gb(tools: Any) -> int:
    """The memory of the code interpreter's container, in GB, as ``tools`` ask it (``container.memory_limit``:
    "1g", "4g", "16g", "64g"; 1 where none is named): its fee is $0.03 a GB, $1.92 for 64g."""
    most = 1
    for tool in items(tools):
        container = tool.get("container") if isinstance(tool, dict) and tool.get("type") == "code_interpreter" \
            else None
        limit = container.get("memory_limit") if isinstance(container, dict) else None
        if isinstance(limit, str) and limit.strip().lower().endswith("g") and limit.strip()[:-1].isdigit():
            most = max(most, min(int(limit.strip()[:-1]), 1024))
    return most


def _item_media(item: dict[str, Any], model: str | None) -> int:
    """Estimated tokens of the images and files an input item carries: in its content or a tool's output, a
    screenshot a computer call returned, an image a generation call made (base64 blobs are never counted as
    text, nor is a reasoning item's encrypted content)."""
    total = openai_media_tokens(item.get("content"), model) + openai_media_tokens(item.get("output"), model)
    output = item.get("output")
    if (isinstance(output, dict) and "image" in str(output.get("type"))) or (
            item.get("type") == "image_generation_call" and item.get("result")):
        total += image_tokens(model)[0]
    return total


#: Stream events whose ``delta`` is billed output beside the answer's text.
_HIDDEN_EVENTS = frozenset({"response.function_call_arguments.delta", "response.reasoning_text.delta",
                            "response.reasoning_summary_text.delta", "response.custom_tool_call_input.delta"})

#: Output items asking the app to act (beside every "*_call" but the provider's own tools in :data:`_SERVER_CALLS`).
_TOOL_CALLS = frozenset({"function_call", "mcp_approval_request"})
#: Tool calls the provider runs itself and answers within the same response.
_SERVER_CALLS = frozenset({"web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call",
                           "mcp_call", "mcp_list_tools"})


class ResponsesAdapter(Adapter):
    endpoint = "responses"
    path = "/responses"
    limit_fields: tuple[str, ...] = ("max_output_tokens",)

    def input_text(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        _text_of(body.get("instructions"), out)
        inputs = body.get("input")
        if isinstance(inputs, str):
            out.append(inputs)
        elif isinstance(inputs, list):
            for item in inputs:
                if not isinstance(item, dict):
                    continue
                if "content" in item:
                    _text_of(item.get("content"), out)
                else:  # a tool call's name and arguments, a tool's output, a reasoning summary: input too
                    _text_of(item.get("output"), out)
                    _text_of(item.get("summary"), out)
                    for key in ("name", "arguments", "input", "code"):
                        if isinstance(item.get(key), str):
                            out.append(item[key])
                    for key in ("action", "results"):  # structured (a computer or a search action)
                        if item.get(key):
                            out.append(json_text(item[key]))
        for key in ("tools", "text"):
            if body.get(key):
                out.append(json_text(body[key]))
        return out

    def media_tokens(self, body: dict[str, Any], model: str | None = None) -> int:
        return kept_context_tokens(body) + sum(_item_media(item, model) for item in items(body.get("input"))
                                               if isinstance(item, dict))

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return responses_usage(data)

    def web_searches(self, body: dict[str, Any]) -> int:
        """Responses bounds built-in tool calls with ``max_tool_calls`` (no ``max_uses``): that many searches
        where it is set (a request allowed 20 was reserved 5), else the default per web search tool."""
        searches = super().web_searches(body)
        bound = _count(body.get("max_tool_calls"))
        return bound if searches and bound else searches

    def tool_uses(self, body: dict[str, Any]) -> tuple[int, int]:
        """The most file searches (``max_tool_calls``, else 5) and code interpreter containers (one) the
        request's built-in tools may bill."""
        kinds = {str(tool.get("type", "")) for tool in items(body.get("tools")) if isinstance(tool, dict)}
        files = (_count(body.get("max_tool_calls")) or DEFAULT_WEB_SEARCHES) if "file_search" in kinds else 0
        return files, container_gb(body.get("tools")) if "code_interpreter" in kinds else 0

    def fetched_tokens(self, body: dict[str, Any]) -> int:
        """What file searches add to the input: each search's results, ``max_num_results`` chunks (20 without
        one) of 800 tokens (the default chunk size), for the most searches :meth:`tool_uses` allows."""
        searches = self.tool_uses(body)[0]
        tools = [tool for tool in items(body.get("tools")) if isinstance(tool, dict) and tool.get("type") == "file_search"]
        chunks = max((_count(tool.get("max_num_results")) or 20 for tool in tools), default=0)
        return searches * chunks * 800

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
        _remember_context(data, state.usage if isinstance(data.get("usage"), dict) else None)
        searches = file_searches = 0
        containers: set[Any] = set()
        for item in items(data.get("output")):
            if isinstance(item, dict):
                file_searches += item.get("type") == "file_search_call"
                if item.get("type") == "code_interpreter_call":  # billed per container, however many calls use it
                    container = item.get("container_id")
                    containers.add(container if isinstance(container, str) else None)
                if item.get("type") in _TOOL_CALLS or str(item.get("type", "")).endswith("_call") and \
                        item.get("type") not in _SERVER_CALLS:
                    state.tool_calls = True  # a call the app runs (or approves): the answer is the call
                searches += item.get("type") == "web_search_call"  # each one billed per call, beside the tokens
                if any(isinstance(part, dict) and part.get("type") == "refusal" for part in items(item.get("content"))):
                    state.refused = True
                if not state.text_parts:
                    _text_of(item.get("content"), state.text_parts)
        if (searches or file_searches or containers) and state.usage is not None:
            # (a container is billed by its memory: the response echoes the tools it ran with)
            preview = self.preview_searches(data)  # (the response echoes the request's tools)
            state.usage = state.usage.replace(web_searches=searches, preview_searches=searches if preview else 0,
                                              file_searches=file_searches,
                                              code_containers=len(containers) * container_gb(data.get("tools")))

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
        elif kind in _HIDDEN_EVENTS:  # billed output beside the answer's text: for estimates of a cut stream
            delta = data.get("delta")
            if isinstance(delta, str):
                state.hidden_parts.append(delta)
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


class ResponsesCompactAdapter(ResponsesAdapter):
    """``POST /responses/compact`` (``client.responses.compact``): a compaction pass, billed by the usage it
    reports as a Responses call is. Priced, recorded and budgeted; never cached, routed, capped or directed (its
    endpoint is none of theirs)."""

    endpoint = "responses.compact"
    path = "/responses/compact"
    limit_fields: tuple[str, ...] = ()
