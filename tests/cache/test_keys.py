"""Cache keys: what may share an answer, and the never-cache rules."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbudget.cache.keys import cache_keys
from llmbudget.providers import adapter_for_endpoint


def call_of(body: dict, endpoint: str = "chat.completions"):
    return adapter_for_endpoint(endpoint).parse(body, "https://api.openai.com/v1")


def chat(text: str = "What is 2+2?", **extra) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": text}]}
    body.update(extra)
    return body


def keys(body: dict, tenant: str = "t", endpoint: str = "chat.completions", **options):
    return cache_keys(call_of(body, endpoint), tenant=tenant, **options)


def test_semantic_text_is_the_last_user_turn_and_transport_fields_do_not_matter():
    plain = keys(chat())
    streamed = keys(chat(stream=True, stream_options={"include_usage": True}, user="u1"))
    assert plain.text == "What is 2+2?"
    assert plain.exact == streamed.exact and plain.partition == streamed.partition


@pytest.mark.parametrize("change", [
    lambda b: b["messages"].__setitem__(0, {"role": "system", "content": "Be verbose."}),
    lambda b: b.__setitem__("model", "gpt-4o"),
    lambda b: b.__setitem__("temperature", 0),
    lambda b: b.__setitem__("seed", 7),
    lambda b: b.__setitem__("max_tokens", 5),
    lambda b: b.__setitem__("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    lambda b: b.__setitem__("response_format", {"type": "json_object"}),
    lambda b: b["messages"].insert(1, {"role": "assistant", "content": "Earlier."}),
    lambda b: b["messages"].insert(0, {"role": "developer", "content": "Rules."}),
])
def test_everything_but_the_last_user_turn_is_in_the_partition(change):
    body = chat()
    changed = copy.deepcopy(body)
    change(changed)
    assert keys(body).partition != keys(changed).partition
    assert keys(body).exact != keys(changed).exact


def test_the_last_user_turn_changes_the_exact_key_not_the_partition():
    a, b = keys(chat("What is 2+2?")), keys(chat("What's two plus two?"))
    assert a.partition == b.partition and a.exact != b.exact


@given(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8), st.text(max_size=40))
def test_tenants_never_share_a_partition_or_key(t1, t2, text):
    body = chat(text or "x")
    if t1 != t2:
        assert keys(body, t1).partition != keys(body, t2).partition
        assert keys(body, t1).exact != keys(body, t2).exact
    else:
        assert keys(body, t1) == keys(body, t2)


@pytest.mark.parametrize("body, reason", [
    (chat(n=2), "n > 1"),
    (chat(n="2"), "n > 1"),  # a number as a string: vLLM and llama.cpp read it as one
    (chat(n=2.0), "n > 1"),
    (chat(logprobs=True), "logprobs"),
    (chat(temperature=0.7), "temperature > 0"),
    (chat(temperature="0.7"), "temperature > 0"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                                 {"role": "tool", "tool_call_id": "1", "content": "42"}]}, "tool"),
    (chat(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}), "audio"),
    ({"model": "m", "messages": "not a list"}, "no messages"),
    (chat(store=True, metadata={"eval": "run-7"}), "store=true"),  # a hit stored nothing, under an unknown id
])
def test_never_cached(body, reason):
    found = keys(body)
    assert not found.cacheable and reason in found.reason


def test_temperature_can_be_allowed_by_policy():
    assert keys(chat(temperature=0.7), allow_temperature=True).cacheable


def test_media_parts_allow_the_exact_tier_only():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    found = keys(body)
    assert found.cacheable and found.exact and found.text is None


def test_text_parts_are_joined_for_the_semantic_tier():
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                    {"type": "text", "text": "b"}]}]}
    assert keys(body).text == "a\nb"


@pytest.mark.parametrize("body, reason", [
    ({"model": "gpt-4o-mini", "input": "hi"}, "store defaults to true"),
    ({"model": "gpt-4o-mini", "input": "hi", "store": True}, "stored"),
    ({"model": "gpt-4o-mini", "input": "hi", "store": False, "previous_response_id": "resp_1"}, "stateful"),
    # log-probabilities asked through include: another prompt's would be served
    ({"model": "gpt-4o-mini", "input": "hi", "store": False, "include": ["message.output_text.logprobs"]},
     "logprobs"),
    ({"model": "gpt-4o-mini", "input": [{"type": "function_call_output", "call_id": "1", "output": "x"},
                                        {"role": "user", "content": "hi"}], "store": False}, "tool"),
])
def test_stateful_or_tool_responses_calls_are_never_cached(body, reason):
    found = keys(body, endpoint="responses")
    assert not found.cacheable and reason in found.reason


def test_stateless_responses_calls_are_cached():
    found = keys({"model": "gpt-4o-mini", "input": "hi", "store": False, "instructions": "x"}, endpoint="responses")
    assert found.cacheable and found.text == "hi"
    other = keys({"model": "gpt-4o-mini", "input": "hi", "store": False, "instructions": "y"}, endpoint="responses")
    assert other.partition != found.partition


def test_embeddings_use_the_exact_tier():
    found = keys({"model": "text-embedding-3-small", "input": "hello"}, endpoint="embeddings")
    assert found.cacheable and found.exact and found.text is None


def test_the_upstream_is_part_of_both_keys():
    # another server's (or Azure deployment's) model of the same name is another model
    body = chat()
    here = cache_keys(adapter_for_endpoint("chat.completions").parse(body, "https://api.openai.com/v1"), tenant="t")
    for other in ("http://finetune.internal:8000/v1", "https://x.openai.azure.com/openai/deployments/canary"):
        there = cache_keys(adapter_for_endpoint("chat.completions").parse(body, other), tenant="t")
        assert there.exact != here.exact and there.partition != here.partition


def test_a_streamed_completion_is_never_cached():
    # its answer is kept as the JSON body it came in: a stream got that JSON and the SDK read no chunk
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "The capital of France is", "max_tokens": 4}
    assert keys(body, endpoint="completions").cacheable
    assert not keys({**body, "stream": True}, endpoint="completions").cacheable


@pytest.mark.parametrize("item", [
    {"type": "custom_tool_call", "call_id": "c", "name": "f", "input": "x"},
    {"type": "computer_call_output", "call_id": "c", "output": {"type": "computer_screenshot", "image_url": "x"}},
    {"type": "local_shell_call_output", "id": "s", "output": "ok"},
    {"type": "mcp_call", "id": "m", "name": "f", "server_label": "s", "arguments": "{}"},
    {"type": "web_search_call", "id": "w", "status": "completed"},
    {"type": "reasoning", "id": "r", "summary": []},
    {"type": "item_reference", "id": "msg_1"},
])
def test_responses_inputs_with_any_item_but_messages_are_never_cached(item):
    body = {"model": "gpt-4o-mini", "store": False, "input": [item, {"role": "user", "content": "and now?"}]}
    found = keys(body, endpoint="responses")
    assert not found.cacheable and item["type"] in found.reason


def test_cache_control_is_left_out_of_the_keys_only_where_anthropic_reads_it():
    tool = {"name": "fetch", "input_schema": {"type": "object", "properties": {"etag": {"type": "string"}}}}
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "tools": [tool],
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]}
    base = keys(body, endpoint="messages")
    marked = copy.deepcopy(body)
    marked["cache_control"] = {"type": "ephemeral"}
    marked["tools"][0]["cache_control"] = {"type": "ephemeral"}
    marked["system"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    marked["messages"][0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert keys(marked, endpoint="messages") == base  # breakpoints change what is cached, never the answer
    # a tool whose own schema has a field of that name is another tool: it was stripped at every depth
    other = copy.deepcopy(body)
    other["tools"][0]["input_schema"]["properties"]["cache_control"] = {"type": "string"}
    assert keys(other, endpoint="messages").partition != base.partition
