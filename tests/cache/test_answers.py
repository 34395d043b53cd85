"""Cached answers come back shaped for the request, in forms the openai SDK accepts."""

from __future__ import annotations

import json

import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from llmbudget.cache.answers import render, storable, stored_usage
from llmbudget.providers import adapter_for_endpoint


def call_of(body: dict, endpoint: str = "chat.completions"):
    return adapter_for_endpoint(endpoint).parse(body, "http://127.0.0.1/v1")


ORIGINAL = ChatCompletion.model_validate({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Paris."}}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16,
              "prompt_tokens_details": {"cached_tokens": 0}},
}).model_dump(mode="json")
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Capital of France?"}]}


def sse_events(body: bytes) -> list:
    events = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: ") and block[6:] != "[DONE]":
            events.append(json.loads(block[6:]))
    return events


def test_chat_json_hit_has_the_original_content_usage_and_model_with_a_fresh_id():
    stored = storable(call_of(ASK), body=ORIGINAL)
    body, content_type = render(stored, call_of(ASK))
    answer = ChatCompletion.model_validate_json(body)
    assert content_type == "application/json"
    assert answer.choices[0].message.content == "Paris." and answer.choices[0].finish_reason == "stop"
    assert answer.model == "gpt-4o-mini-2024-07-18" and answer.usage.prompt_tokens == 14
    assert answer.id != "chatcmpl-1" and answer.created > 1
    assert stored_usage(stored)["completion_tokens"] == 2


def test_chat_stream_hit_is_valid_sse_with_usage_when_asked():
    stored = storable(call_of(ASK), body=ORIGINAL)
    body, content_type = render(stored, call_of({**ASK, "stream": True, "stream_options": {"include_usage": True}}))
    assert content_type.startswith("text/event-stream") and body.endswith(b"data: [DONE]\n\n")
    chunks = [ChatCompletionChunk.model_validate(e) for e in sse_events(body)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Paris."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 16 and chunks[-1].choices == []
    plain, _ = render(stored, call_of({**ASK, "stream": True}))
    assert all(e.get("usage") is None for e in sse_events(plain))


def test_a_streamed_answer_is_stored_from_its_chunks():
    body, _ = render(storable(call_of(ASK), body=ORIGINAL), call_of({**ASK, "stream": True}))
    stored = storable(call_of({**ASK, "stream": True}), events=sse_events(body))
    assert stored["message"]["content"] == "Paris." and stored["finish_reason"] == "stop"


def test_a_search_models_citations_survive_a_hit_streamed_or_not():
    """A streamed answer was stored without its ``annotations`` (a search model's citations), and a stream hit
    rendered none of a JSON answer's: the app got "[1]" markers citing nothing."""
    cited = json.loads(json.dumps(ORIGINAL))
    cited["choices"][0]["message"]["annotations"] = [{"type": "url_citation", "url_citation": {
        "start_index": 0, "end_index": 5, "url": "https://example.com/paris", "title": "Paris"}}]
    streamed = call_of({**ASK, "stream": True})
    body, _ = render(storable(call_of(ASK), body=cited), streamed)
    assert [e["choices"][0]["delta"].get("annotations") for e in sse_events(body) if e["choices"]][0] == \
        cited["choices"][0]["message"]["annotations"]
    stored = storable(streamed, events=sse_events(body))
    again, _ = render(stored, call_of(ASK))
    assert json.loads(again)["choices"][0]["message"]["annotations"] == cited["choices"][0]["message"]["annotations"]


def test_only_complete_stopped_answers_without_tool_calls_are_stored():
    truncated = json.loads(json.dumps(ORIGINAL))
    truncated["choices"][0]["finish_reason"] = "length"
    assert storable(call_of(ASK), body=truncated) is None
    tools = json.loads(json.dumps(ORIGINAL))
    tools["choices"][0]["message"]["tool_calls"] = [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert storable(call_of(ASK), body=tools) is None
    two = json.loads(json.dumps(ORIGINAL))
    two["choices"].append({**two["choices"][0], "index": 1})
    assert storable(call_of(ASK), body=two) is None
    cut = [{"choices": [{"index": 0, "delta": {"content": "Par"}, "finish_reason": None}]}]
    assert storable(call_of({**ASK, "stream": True}), events=cut) is None


RESPONSE = Response.model_validate({
    "id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4o-mini", "status": "completed",
    "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Paris.", "annotations": []}]}],
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    "usage": {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12,
              "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
}).model_dump(mode="json")
ASK_RESPONSES = {"model": "gpt-4o-mini", "input": "Capital of France?", "store": False}


def test_responses_json_and_sse_hits():
    call = call_of(ASK_RESPONSES, "responses")
    stored = storable(call, body=RESPONSE)
    body, _ = render(stored, call)
    answer = Response.model_validate_json(body)
    assert answer.output_text == "Paris." and answer.id != "resp_1" and answer.usage.output_tokens == 2
    stream_body, content_type = render(stored, call_of({**ASK_RESPONSES, "stream": True}, "responses"))
    adapter = pydantic.TypeAdapter(ResponseStreamEvent)
    events = [adapter.validate_python(e) for e in sse_events(stream_body)]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Paris."
    assert [e.sequence_number for e in events] == list(range(len(events)))
    restored = storable(call, events=sse_events(stream_body))["response"]["output"]
    assert [{**item, "id": None} for item in restored] == [{**item, "id": None} for item in RESPONSE["output"]]


def test_a_responses_hit_echoes_its_own_callers_fields_with_items_of_its_own():
    """A Responses object echoes the request's metadata, user and tier: a hit gave Bob Alice's (her metadata,
    her user id, her tier), and the first answer's item ids."""
    alice = {**RESPONSE, "metadata": {"order": "A-1"}, "user": "alice", "safety_identifier": "alice-hash",
             "service_tier": "flex"}
    stored = storable(call_of({**ASK_RESPONSES, "metadata": {"order": "A-1"}, "user": "alice"}, "responses"),
                      body=alice)
    bob = call_of({**ASK_RESPONSES, "metadata": {"order": "B-2"}, "user": "bob", "service_tier": "priority"},
                  "responses")
    answer = Response.model_validate_json(render(stored, bob)[0])
    assert (answer.metadata, answer.user, answer.safety_identifier, answer.service_tier) == (
        {"order": "B-2"}, "bob", None, "priority")
    assert answer.output[0].id.startswith("msg_") and answer.output[0].id != "msg_1"
    streamed = sse_events(render(stored, call_of({**ASK_RESPONSES, "stream": True}, "responses"))[0])
    assert streamed[-1]["response"]["metadata"] == {} and streamed[-1]["response"]["user"] is None
    assert streamed[-1]["response"]["service_tier"] == "default"  # asked for none: not the first caller's


def test_a_completions_hit_has_an_id_and_time_of_its_own():
    original = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                "choices": [{"index": 0, "text": " Paris.", "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    call = call_of({"model": "gpt-3.5-turbo-instruct", "prompt": "Capital of France?"}, "completions")
    answer = json.loads(render(storable(call, body=original), call)[0])
    assert answer["id"].startswith("cmpl-") and answer["id"] != "cmpl-1" and answer["created"] > 1
    assert answer["choices"] == original["choices"]


def test_responses_with_tool_calls_are_not_stored():
    body = json.loads(json.dumps(RESPONSE))
    body["output"] = [{"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}"}]
    assert storable(call_of(ASK_RESPONSES, "responses"), body=body) is None


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return ChatCompletionChunk.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).model_dump(mode="json")


def test_a_streamed_tool_call_or_refusal_is_never_stored_whatever_its_finish_reason():
    # With tool_choice naming a function, OpenAI ends the stream with finish_reason "stop", not "tool_calls":
    # kept, the call came back as an empty text answer and the tool call was lost.
    streamed = call_of({**ASK, "stream": True})
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    forced = [_chunk({"role": "assistant", "tool_calls": [call]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]}), _chunk({}, "stop")]
    assert storable(streamed, events=forced) is None
    refused = [_chunk({"role": "assistant", "refusal": "I can't help with that."}), _chunk({}, "stop")]
    assert storable(streamed, events=refused) is None


def test_a_refusal_is_never_stored():
    # the model may answer the next time, and a rewording must not be refused for it
    refused = json.loads(json.dumps(ORIGINAL))
    refused["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert storable(call_of(ASK), body=refused) is None
    body = json.loads(json.dumps(RESPONSE))
    body["output"][0]["content"] = [{"type": "refusal", "refusal": "I can't help with that."}]
    assert storable(call_of(ASK_RESPONSES, "responses"), body=Response.model_validate(body).model_dump(mode="json")) \
        is None


def test_an_answer_with_reasoning_text_is_never_stored():
    """DeepSeek, vLLM and llama.cpp servers send the reasoning as ``reasoning_content`` beside the answer: a hit,
    rendered from the answer alone, lost it."""
    reasoned = json.loads(json.dumps(ORIGINAL))
    reasoned["choices"][0]["message"]["reasoning_content"] = "The capital of France is Paris."
    assert storable(call_of(ASK), body=reasoned) is None
    streamed = [_chunk({"role": "assistant", "content": "", "reasoning_content": "France's capital..."}),
                _chunk({"content": "Paris."}), _chunk({}, "stop")]
    assert storable(call_of({**ASK, "stream": True}), events=streamed) is None
    assert storable(call_of({**ASK, "stream": True}), events=[_chunk({"content": "Paris."}), _chunk({}, "stop")])
