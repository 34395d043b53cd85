"""Cached answers: what is kept of a provider response, and the response a hit sends back.

A hit returns what the original answer returned (content, finish_reason, usage,
model) with a fresh id and timestamp, shaped for the request that asked: chat
JSON or a chat SSE stream, Responses JSON or SSE, Anthropic Messages JSON or SSE,
embeddings and completions JSON.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..calls import Call

__all__ = ["storable", "render", "stored_usage"]


def _chat_from_stream(events: list[Any]) -> dict[str, Any] | None:
    text: list[str] = []
    annotations: list[Any] = []  # a search model's citations, streamed beside the text
    model = fingerprint = None
    finish = None
    usage = None
    for event in events:
        if not isinstance(event, dict):
            continue
        model = event.get("model") or model
        fingerprint = event.get("system_fingerprint") or fingerprint
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                return None
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict) or delta.get("tool_calls") or delta.get("function_call") \
                    or delta.get("audio") or delta.get("refusal") or _reasons(delta):
                return None  # a tool call (a forced one ends in "stop"), audio, a refusal or reasoning: never kept
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            if isinstance(delta.get("annotations"), list):
                annotations.extend(delta["annotations"])
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish != "stop":
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text), "refusal": None}
    if annotations:  # (kept: a hit without them gave the app "[1]" markers citing nothing)
        message["annotations"] = annotations
    return {"kind": "chat", "model": model, "message": message, "finish_reason": finish, "usage": usage,
            "system_fingerprint": fingerprint}


def _reasons(message: dict[str, Any]) -> bool:
    """A chat message or delta that carries reasoning text beside its answer (``reasoning_content`` of DeepSeek,
    vLLM and llama.cpp servers; ``reasoning``): a hit, rendered from the answer alone, would lose it."""
    return any(isinstance(message.get(key), str) and message[key] for key in ("reasoning_content", "reasoning"))


def _with_usage(stored: dict[str, Any] | None, call: Call) -> dict[str, Any] | None:
    """A streamed chat answer, with a tiktoken estimate of its usage when the stream reported none (no
    ``include_usage``): a hit replayed as JSON carries ``usage``, as every chat completion does."""
    if stored is None or isinstance(stored.get("usage"), dict):
        return stored
    from ..providers.chat import ChatAdapter
    from ..tokens import estimate_output_tokens

    prompt = ChatAdapter().estimate_input_tokens(call.body, call.model)
    completion = estimate_output_tokens(stored["message"]["content"], model=call.model)
    return {**stored, "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion}}


def _message_from_stream(events: list[Any]) -> dict[str, Any] | None:
    """The whole Messages response a stream carried (``message_start`` plus its deltas)."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message = {**event["message"], "usage": dict(event["message"].get("usage") or {})}
        elif message is None:
            continue
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            blocks[event.get("index", len(blocks))] = dict(event["content_block"])
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            block, delta = blocks.get(event.get("index", 0)), event["delta"]
            if block is None:
                return None
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                block["text"] = block.get("text", "") + delta["text"]
            else:
                block["_other"] = True
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                message.update({k: v for k, v in delta.items() if k in ("stop_reason", "stop_sequence")})
            if isinstance(event.get("usage"), dict):
                message["usage"].update({k: v for k, v in event["usage"].items() if v is not None})
    if message is None or any(block.get("_other") for block in blocks.values()):
        return None
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


def storable(call: Call, *, body: Any = None, events: list[Any] | None = None) -> dict[str, Any] | None:
    """What to keep of a complete answer, or None when it must not be cached.

    Only complete answers that stopped on their own (``finish_reason`` ``stop``,
    Responses ``status`` ``completed``) without tool calls or a refusal are kept: the model may well answer
    the next time, and a paraphrase must not be refused for it.
    """
    if call.endpoint == "chat.completions":
        if events is not None:
            return _with_usage(_chat_from_stream(events), call)
        if not isinstance(body, dict):
            return None
        choices = body.get("choices")
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        message = choice.get("message")
        if choice.get("finish_reason") != "stop" or not isinstance(message, dict):
            return None
        if message.get("tool_calls") or message.get("function_call") or message.get("audio") \
                or message.get("refusal") or _reasons(message):
            return None
        return {"kind": "chat", "model": body.get("model"), "message": message, "finish_reason": "stop",
                "usage": body.get("usage"), "system_fingerprint": body.get("system_fingerprint")}
    if call.endpoint == "responses":
        response = body
        if events is not None:
            response = next(
                (e.get("response") for e in reversed(events)
                 if isinstance(e, dict) and e.get("type") == "response.completed"), None)
        if not isinstance(response, dict) or response.get("status") != "completed":
            return None
        output = response.get("output") or []
        if any(not isinstance(item, dict) or item.get("type") != "message" for item in output):
            return None  # tool calls, reasoning items tied to stored state...
        if any(isinstance(part, dict) and part.get("type") == "refusal"
               for item in output for part in (item.get("content") or ())):
            return None
        return {"kind": "responses", "response": response}
    if call.endpoint == "messages":
        message = _message_from_stream(events) if events is not None else body
        if (not isinstance(message, dict) or message.get("type", "message") != "message"
                or message.get("stop_reason") not in ("end_turn", "stop_sequence")):
            return None
        content = message.get("content")
        if not isinstance(content, list) or not all(
                isinstance(block, dict) and block.get("type") == "text" for block in content):
            return None  # tool use, thinking blocks tied to their signature...
        return {"kind": "messages", "model": message.get("model"), "message": message}
    if call.endpoint in ("embeddings", "completions") and events is None and isinstance(body, dict):
        if call.endpoint == "completions":
            choices = body.get("choices") or []
            if len(choices) != 1 or not isinstance(choices[0], dict) or choices[0].get("finish_reason") != "stop":
                return None
        return {"kind": "raw", "body": body}
    return None


def stored_usage(stored: dict[str, Any]) -> dict[str, Any] | None:
    """The usage object the original answer reported (None if it reported none)."""
    if stored.get("kind") == "chat":
        usage = stored.get("usage")
    elif stored.get("kind") == "responses":
        usage = stored["response"].get("usage")
    elif stored.get("kind") == "messages":
        usage = stored["message"].get("usage")
    else:
        usage = stored.get("body", {}).get("usage")
    return usage if isinstance(usage, dict) else None


def _sse(events: list[Any], *, done: bool) -> bytes:
    out = [f"data: {json.dumps(event, separators=(',', ':'))}\n\n" for event in events]
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def render(stored: dict[str, Any], call: Call) -> tuple[bytes, str]:
    """The body and content type a hit answers ``call`` with."""
    now = int(time.time())
    kind = stored.get("kind")
    if kind == "chat":
        return _render_chat(stored, call, now)
    if kind == "responses":
        return _render_responses(stored, call, now)
    if kind == "messages":
        return _render_messages(stored, call)
    body = stored["body"]
    if isinstance(body, dict) and isinstance(body.get("id"), str):  # a completion: an id and a time of its own
        body = {**body, "id": _fresh_id(body["id"]), **({"created": now} if "created" in body else {})}
    return json.dumps(body).encode(), "application/json"


def _fresh_id(ident: str) -> str:
    """A new id shaped as ``ident`` (its ``cmpl-``, ``msg_``, ``rs_``... prefix kept)."""
    for sep in ("_", "-"):
        if sep in ident:
            return f"{ident.split(sep, 1)[0]}{sep}{uuid.uuid4().hex}"
    return uuid.uuid4().hex


#: What a Responses object echoes of its request without it deciding the answer (so not in the cache key): a hit
#: echoes the caller's own, never the first caller's (its metadata, its user).
_ECHOED: dict[str, Any] = {"metadata": {}, "user": None, "safety_identifier": None, "prompt_cache_key": None}


def _render_chat(stored: dict[str, Any], call: Call, now: int) -> tuple[bytes, str]:
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    model = stored.get("model") or call.model
    message = stored["message"]
    base = {"id": ident, "created": now, "model": model, "system_fingerprint": stored.get("system_fingerprint")}
    if not call.stream:
        body = {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": stored.get("usage")}
        return json.dumps(body).encode(), "application/json"
    chunk = {**base, "object": "chat.completion.chunk"}
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("refusal"):
        delta["refusal"] = message["refusal"]
    if message.get("annotations"):
        delta["annotations"] = message["annotations"]
    events: list[dict[str, Any]] = [
        {**chunk, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    ]
    options = call.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append({**chunk, "choices": [], "usage": stored.get("usage")})
    return _sse(events, done=True), "text/event-stream; charset=utf-8"


def _render_responses(stored: dict[str, Any], call: Call, now: int) -> tuple[bytes, str]:
    response = dict(stored["response"])
    response["id"] = f"resp_{uuid.uuid4().hex}"
    response["created_at"] = now
    for field, absent in _ECHOED.items():
        if field in response:
            response[field] = call.body.get(field, absent)
    tier = call.body.get("service_tier") or "auto"
    if "service_tier" in response and isinstance(tier, str):  # what the caller asked for, not the first caller
        response["service_tier"] = "default" if tier == "auto" else tier
    if isinstance(response.get("output"), list):  # items of their own, as a new answer's
        response["output"] = [{**item, "id": _fresh_id(item["id"])} if isinstance(item, dict) and
                              isinstance(item.get("id"), str) else item for item in response["output"]]
    if not call.stream:
        return json.dumps(response).encode(), "application/json"
    events: list[dict[str, Any]] = []
    seq = 0

    def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        events.append({"type": kind, "sequence_number": seq, **fields})
        seq += 1

    emit("response.created", response={**response, "status": "in_progress", "output": [], "usage": None})
    emit("response.in_progress", response={**response, "status": "in_progress", "output": [], "usage": None})
    for index, item in enumerate(response.get("output") or []):
        item_id = item.get("id") or f"msg_{uuid.uuid4().hex}"
        emit("response.output_item.added", output_index=index,
             item={**item, "id": item_id, "status": "in_progress", "content": []})
        for part_index, part in enumerate(item.get("content") or []):
            empty = {**part, "text": ""} if part.get("type") == "output_text" else part
            emit("response.content_part.added", item_id=item_id, output_index=index, content_index=part_index,
                 part=empty)
            if part.get("type") == "output_text":
                emit("response.output_text.delta", item_id=item_id, output_index=index, content_index=part_index,
                     delta=part.get("text", ""), logprobs=[])
                emit("response.output_text.done", item_id=item_id, output_index=index, content_index=part_index,
                     text=part.get("text", ""), logprobs=[])
            emit("response.content_part.done", item_id=item_id, output_index=index, content_index=part_index,
                 part=part)
        emit("response.output_item.done", output_index=index, item={**item, "id": item_id})
    emit("response.completed", response=response)
    return _sse(events, done=False), "text/event-stream; charset=utf-8"


def _render_messages(stored: dict[str, Any], call: Call) -> tuple[bytes, str]:
    message = {**stored["message"], "id": f"msg_{uuid.uuid4().hex[:24]}"}
    if not call.stream:
        return json.dumps(message).encode(), "application/json"
    usage = message.get("usage") or {}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": min(1, usage.get("output_tokens") or 0)}}}),
    ]
    for index, block in enumerate(message.get("content") or []):
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {**block, "text": ""}}))
        events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": {"type": "text_delta", "text": block.get("text", "")}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    body = "".join(f"event: {name}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n" for name, event in events)
    return body.encode(), "text/event-stream; charset=utf-8"
