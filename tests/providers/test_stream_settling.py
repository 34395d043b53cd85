"""Settling reads the same as the straightforward readers it replaced, on any input.

``_reference_payloads`` and ``_reference_read_stream`` are the earlier implementations
(every SSE block read on its own; the chat chunks walked once per field), and
``json.loads`` the reference for the pipeline's JSON loading: the faster ones must
agree with them on every input, including malformed ones.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbudget.pipeline import _json_body, _json_loads, _sse_payloads
from llmbudget.providers import ResponseState
from llmbudget.providers._base import items
from llmbudget.providers.chat import ChatAdapter

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHAT = ChatAdapter()


def _reference_payloads(text: str) -> tuple[list[str], bool]:
    payloads, done = [], False
    for block in text.split("\n\n"):
        if block.startswith("data: ") and "\n" not in block:
            payload = block[6:]
        else:
            payload = "\n".join(line[6:] if line[5:6] == " " else line[5:]  # (one space goes, as the SDKs read it)
                                for line in block.split("\n") if line.startswith("data:"))  # (not U+2028)
        if payload == "[DONE]":
            done = True
        elif payload:
            payloads.append(payload)
    return payloads, done


def _reference_read_stream(events: list[Any], state: ResponseState) -> str:
    chunks = [event for event in events if isinstance(event, dict)]
    text = "".join(
        content
        for event in events if isinstance(event, dict)
        for c in items(event.get("choices")) if isinstance(c, dict) and isinstance(c.get("delta"), dict)
        for content in (c["delta"].get("content"),) if isinstance(content, str)
    )
    if not chunks:
        return text
    # the first chunk that names the model (Azure's first, its filter results, names none), else the first
    CHAT._read_common(next((chunk for chunk in chunks if chunk.get("model")), chunks[0]), state)
    for chunk in reversed(chunks):
        raw = chunk.get("usage")
        if isinstance(raw, dict):
            state.usage = CHAT.usage(raw)
            tier = chunk.get("service_tier")
            if isinstance(tier, str):
                state.service_tier = tier
            break
    for chunk in reversed(chunks):
        reasons = [c.get("finish_reason") for c in items(chunk.get("choices")) if isinstance(c, dict)]
        reasons = [reason for reason in reasons if isinstance(reason, str)]
        if reasons:
            state.finish_reasons.extend(reasons)
            break
    state.tool_calls = any(
        isinstance(c, dict) and isinstance(c.get("delta"), dict)
        and (c["delta"].get("tool_calls") or c["delta"].get("function_call"))
        for chunk in chunks for c in items(chunk.get("choices"))
    )
    return text


# -- SSE framing ---------------------------------------------------------------------------------

PAYLOADS = st.one_of(
    st.just("[DONE]"), st.just(""), st.just('{"a": 1}'), st.just(" x"),
    st.text(st.sampled_from(list('{}[]":, ab\n\r\u2028data')), max_size=12),
)


@st.composite
def sse_texts(draw: st.DrawFn) -> str:
    """Streams in the usual ``data: ...\\n\\n`` shape, and every way of straying from it."""
    blocks = []
    for payload in draw(st.lists(PAYLOADS, max_size=8)):
        prefix = draw(st.sampled_from(["data: ", "data: ", "data: ", "data:", "event: x\ndata: ", ": ping\n\ndata: "]))
        end = draw(st.sampled_from(["\n\n", "\n\n", "\n\n", "\n", "\n\n\n", ""]))
        blocks.append(prefix + payload + end)
    return "".join(blocks)


@SETTINGS
@given(text=st.one_of(sse_texts(), st.text(st.sampled_from(list("data: [DONE]\n{}x")), max_size=40)))
def test_sse_payloads_match_the_block_by_block_reader(text: str) -> None:
    state = ResponseState()
    payloads, joined = _sse_payloads(text, state)
    expected, done = _reference_payloads(text)
    assert payloads == expected
    assert joined == ",".join(expected)
    assert state.done is done


def test_a_block_of_several_lines_is_read_as_the_sdks_read_it() -> None:
    """A data line loses one space, as the SDKs' SSE decoders take it (all of them went); and lines end only at
    LF (the text's CRs made LF before): str.splitlines() cut a JSON string holding U+2028, which JSON allows raw,
    and the event was counted broken."""
    state = ResponseState()
    text = 'event: x\ndata: {"content": "a\u2028b"}\n\nevent: y\ndata:  [DONE]\n\n'
    assert _sse_payloads(text, state)[0] == ['{"content": "a\u2028b"}', " [DONE]"]
    assert not state.done  # " [DONE]" is no end for the SDKs either


def test_the_usual_shape_takes_one_split() -> None:
    state = ResponseState()
    text = 'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert _sse_payloads(text, state) == (['{"a": 1}', '{"b": 2}'], '{"a": 1},{"b": 2}')
    assert state.done


# -- chat chunks ---------------------------------------------------------------------------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-3, 50), st.floats(0, 50, allow_nan=False),
                      st.sampled_from(["stop", "length", "", "gpt-4o-mini", "flex"]))
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                        max_leaves=6)


@st.composite
def deltas(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_ANY)
    delta: dict[str, Any] = {}
    if draw(st.booleans()):
        delta["content"] = draw(st.one_of(st.text(max_size=8), JSON_LEAF))
    if draw(st.integers(0, 5)) == 0:
        delta["tool_calls"] = draw(st.one_of(st.just([{"index": 0}]), st.just([]), JSON_LEAF))
    if draw(st.integers(0, 8)) == 0:
        delta["function_call"] = draw(st.one_of(st.just({"name": "f"}), JSON_LEAF))
    return delta


@st.composite
def choices(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_ANY)
    choice: dict[str, Any] = {"index": 0}
    if draw(st.integers(0, 6)):
        choice["delta"] = draw(deltas())
    if draw(st.booleans()):
        choice["finish_reason"] = draw(st.one_of(st.sampled_from(["stop", "length", "tool_calls"]), JSON_LEAF))
    return choice


@st.composite
def chunks(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 12)) == 0:
        return draw(JSON_ANY)
    chunk: dict[str, Any] = {"object": "chat.completion.chunk"}
    if draw(st.integers(0, 4)):
        chunk["model"] = draw(st.one_of(st.sampled_from(["gpt-4o-mini", "gpt-4o"]), JSON_LEAF))
    if draw(st.integers(0, 6)) == 0:
        chunk["service_tier"] = draw(st.one_of(st.sampled_from(["default", "flex"]), JSON_LEAF))
    if draw(st.integers(0, 5)):
        chunk["choices"] = draw(st.one_of(st.lists(choices(), max_size=3), JSON_LEAF))
    if draw(st.integers(0, 5)) == 0:
        chunk["usage"] = draw(st.one_of(
            st.fixed_dictionaries({"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99)},
                                  optional={"prompt_tokens_details": JSON_ANY,
                                            "completion_tokens_details": JSON_ANY}),
            JSON_LEAF))
    return chunk


@SETTINGS
@given(events=st.lists(chunks(), max_size=10))
def test_chat_read_stream_matches_the_field_by_field_reader(events: list[Any]) -> None:
    events = json.loads(json.dumps(events))
    state, expected = ResponseState(), ResponseState()
    CHAT.read_stream(events, state)
    text = _reference_read_stream(events, expected)
    assert (state.usage, state.model, state.service_tier, state.finish_reasons, state.done, state.tool_calls,
            state.text) == (expected.usage, expected.model, expected.service_tier, expected.finish_reasons,
                            expected.done, expected.tool_calls, expected.text)
    assert "".join(state.stream_parts or []) == text == CHAT.stream_text(events)


# -- JSON --------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8,
)


def _outcome(load: Any, data: Any) -> Any:
    try:
        return "value", load(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        return "error", type(exc) if isinstance(exc, UnicodeDecodeError) else ValueError


@SETTINGS
@given(value=JSON_VALUES, before=st.sampled_from(["", " ", "\n", "\ufeff"]),
       after=st.sampled_from(["", " ", "\r\n", " x", ",", "}", "\x00"]), ascii=st.booleans(),
       encoding=st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"]))
def test_json_loading_matches_json_loads(value: Any, before: str, after: str, ascii: bool, encoding: str) -> None:
    text = before + json.dumps(value, ensure_ascii=ascii) + after
    assert _outcome(_json_loads, text) == _outcome(json.loads, text)
    assert _outcome(_json_loads, "[" + text + "]") == _outcome(json.loads, "[" + text + "]")
    body = text.encode(encoding, "surrogatepass")
    assert _outcome(_json_body, body) == _outcome(json.loads, body)


@SETTINGS
@given(body=st.binary(max_size=12).map(lambda tail: b"{" + tail) | st.binary(max_size=12))
def test_json_body_matches_json_loads_on_any_bytes(body: bytes) -> None:
    assert _outcome(_json_body, body) == _outcome(json.loads, body)
