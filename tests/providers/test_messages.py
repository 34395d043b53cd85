"""Anthropic Messages: usage and pricing of cache writes and reads, automatic breakpoints.

The local Messages server (llama.cpp) reports no cache fields, so the usage paths for
``cache_creation_input_tokens`` (by TTL) and ``cache_read_input_tokens`` are tested on
usage objects shaped as Anthropic's API reference documents them.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

import llmbudget
from llmbudget.breakpoints import Breakpoints, has_cache_control, min_cacheable_tokens
from llmbudget.cache.keys import cache_keys
from llmbudget.calls import Usage
from llmbudget.pricing import Pricing
from llmbudget.providers import ResponseState, adapter_for_path
from llmbudget.providers.messages import MessagesAdapter, messages_usage

# Anthropic's documented usage object (https://docs.anthropic.com/en/api/messages, "usage")
DOCUMENTED_USAGE = {
    "input_tokens": 50, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 8000, "output_tokens": 120,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
    "service_tier": "standard",
}


def test_usage_counts_writes_and_reads_as_input():
    usage = messages_usage(DOCUMENTED_USAGE)
    assert usage.input_tokens == 50 + 2000 + 8000
    assert (usage.cached_input_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (8000, 2000, 500)
    assert usage.output_tokens == 120 and usage.service_tier == "standard"


def test_cache_writes_given_only_by_their_ttl_are_writes():
    # a usage with the TTL breakdown but no cache_creation_input_tokens had its writes dropped (a 1h write of
    # 1,000 tokens charged $0.00045 instead of $0.00245 on claude-haiku-4-5)
    usage = messages_usage({"input_tokens": 50, "output_tokens": 80,
                            "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 1000}})
    assert (usage.input_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (1350, 1300, 1000)
    cost = Pricing().cost(usage, model="claude-haiku-4-5", base_url="https://api.anthropic.com/v1")
    assert cost.usd == (50 * Decimal(1) + 300 * Decimal("1.25") + 1000 * Decimal(2) + 80 * Decimal(5)) / 10**6


def test_a_compactions_tokens_count_though_the_top_level_fields_leave_them_out():
    # the SDK (BetaUsage.iterations): "A `compaction` entry's tokens are not included in the top-level `usage`
    # fields"; they were not counted, so a call that compacted 180,000 tokens was priced at its last turn alone
    raw = {"input_tokens": 9000, "output_tokens": 800, "cache_read_input_tokens": 1000,
           "iterations": [
               {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500, "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0},
               {"type": "message", "input_tokens": 9000, "output_tokens": 800, "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 0},  # the top-level fields' own: not counted twice
               "not an iteration"]}
    usage = messages_usage(raw)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (190000, 1000, 4300)


ADVISED = {"input_tokens": 2000, "output_tokens": 600, "iterations": [
    {"type": "message", "input_tokens": 1200, "output_tokens": 200},  # the executor's own: in the top-level fields
    {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 1500, "output_tokens": 1600,
     "cache_read_input_tokens": 500, "cache_creation_input_tokens": 0},
    {"type": "message", "input_tokens": 800, "output_tokens": 400}]}


def test_an_advisors_inferences_are_priced_at_the_advisors_model():
    # the advisor tool's sub-inferences (usage.iterations, "advisor_message") are billed at the advisor model's
    # rates and left out of the top-level fields: a Sonnet call that consulted Opus was priced as Sonnet alone
    usage = messages_usage(ADVISED)
    assert (usage.input_tokens, usage.output_tokens) == (2000, 600)
    [(model, advice)] = usage.others
    assert model == "claude-opus-4-6" and (advice.input_tokens, advice.cached_input_tokens, advice.output_tokens) == (
        2000, 500, 1600)
    url = "https://api.anthropic.com/v1"
    cost = Pricing().cost(usage, model="claude-sonnet-4-6", base_url=url)
    sonnet = (2000 * Decimal(3) + 600 * Decimal(15)) / 10**6
    opus = (1500 * Decimal(5) + 500 * Decimal("0.5") + 1600 * Decimal(25)) / 10**6
    assert cost.usd == sonnet + opus and cost.source == "genai-prices"
    assert Pricing().cost(usage.replace(others=()), model="claude-sonnet-4-6", base_url=url).usd == sonnet
    # an advisor model without a price is priced conservatively, and the cost says it is not known
    unknown = messages_usage({**ADVISED, "iterations": [{"type": "advisor_message", "input_tokens": 10,
                                                         "output_tokens": 10}]})
    with pytest.warns(UserWarning, match="no price for model 'unknown'"):
        assert Pricing().cost(unknown, model="claude-sonnet-4-6", base_url=url).source == "unknown"


def test_an_advisors_usage_survives_the_ledger_and_malformed_ones_are_named():
    from llmbudget.calls import SpendRecord

    usage = messages_usage(ADVISED)
    record = SpendRecord(time=1.0, endpoint="messages", base_url="", model_requested="claude-sonnet-4-6",
                         model_sent="claude-sonnet-4-6", model_answered="claude-sonnet-4-6", usage=usage,
                         cost_usd=Decimal("0.1"), latency_s=0.1)
    back = SpendRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back.usage == usage and back.usage.others[0][1].output_tokens == 1600
    data = json.loads(json.dumps(record.to_dict()))
    data["usage"]["others"][0][1]["output_tokens"] = -5
    with pytest.raises(ValueError, match=r"usage.others\[claude-opus-4-6\].output_tokens is -5"):
        SpendRecord.from_dict(data)
    data["usage"]["others"] = "opus"
    with pytest.raises(ValueError, match="usage.others is 'opus'; expected"):
        SpendRecord.from_dict(data)
    for bad in ([["", {"output_tokens": 1}]], [["m", {"others": [["n", {"output_tokens": 1}]]}]]):
        data["usage"]["others"] = bad  # no model; another model's usage of another model's (priced at $0)
        with pytest.raises(ValueError, match="others is"):
            SpendRecord.from_dict(data)
    data = json.loads(json.dumps(record.to_dict()))
    for tokens in (None, "many", -5, 10**30):  # the prefix report read int(tokens): a crash, or $1e21 saved
        data["prefix"] = {"group": "g", "hash": "h", "chars": 10, "tokens": tokens}
        if tokens is None:
            assert SpendRecord.from_dict(data).prefix["tokens"] is None
        else:
            with pytest.raises(ValueError, match="prefix.tokens is"):
                SpendRecord.from_dict(data)
    old = json.loads(json.dumps(record.to_dict()))
    del old["usage"]["others"]  # a record written before the field
    assert SpendRecord.from_dict(old).usage.others == ()
    plain = SpendRecord(time=1.0, endpoint="messages", base_url="", model_requested="m", model_sent="m",
                        model_answered="m", usage=Usage(input_tokens=5), cost_usd=Decimal("0.1"), latency_s=0.1)
    assert "others" not in plain.to_dict()["usage"]  # as before the field: an earlier release still reads it


def test_an_advisors_iterations_are_summed_per_model_and_bad_counts_are_bad_usage():
    many = {"input_tokens": 10, "output_tokens": 5, "iterations": [
        {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 100, "output_tokens": 10}] * 10_000}
    [(model, advice)] = messages_usage(many).others  # one pair, not 10,000 (a 3 MB ledger row)
    assert model == "claude-opus-4-6" and (advice.input_tokens, advice.output_tokens) == (1_000_000, 100_000)
    from llmbudget.providers._base import BadUsage

    with pytest.raises(BadUsage):
        messages_usage({**many, "iterations": [{"type": "advisor_message", "input_tokens": -5}]})
    with pytest.raises(BadUsage):  # each count within the limit, their sum not
        messages_usage({**many, "iterations": [{"type": "advisor_message", "input_tokens": 10**9}] * 2})


def _advisor_stream(final_usage: bool, consulted: bool = True) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": [],
            "usage": {"input_tokens": 400, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Step one: back up the database."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    if consulted:
        events.append(("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "server_tool_use", "id": "srvtoolu_1", "name": "advisor", "input": {}}}))
    if final_usage:
        events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
            "output_tokens": 30, "iterations": [{"type": "advisor_message", "model": "claude-opus-4-6",
                                                 "input_tokens": 450, "output_tokens": 1700}]}}))
        events.append(("message_stop", {"type": "message_stop"}))
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


ADVISOR_BODY = {"model": "claude-sonnet-4-6", "max_tokens": 512, "stream": True,
                "messages": [{"role": "user", "content": "Plan the migration, then write the first step."}],
                "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6", "max_uses": 1}]}


def _streamed(body: dict, data: bytes, complete: bool):
    import llmbudget

    engine = llmbudget.Engine()
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                           body=json.dumps(body).encode())
    assert attempt is not None
    reserved = attempt.worst_case_usd()
    attempt.start_response(200, {"content-type": "text/event-stream"})
    attempt.feed(data)
    return reserved, attempt.finish(complete=complete)


@pytest.mark.parametrize("thinking", [{"type": "enabled", "budget_tokens": 8000}, None])
def test_a_thinking_stream_cut_before_its_final_usage_is_charged_its_worst_case(thinking):
    """Claude's thinking is streamed summarised and billed whole: estimated from the summary seen, a stream cut
    mid-thought was charged a fraction of its bill."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 16_000, "stream": True,
            "messages": [{"role": "user", "content": "Prove it."}], **({"thinking": thinking} if thinking else {})}
    started = [("message_start", {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": [],
        "usage": {"input_tokens": 40, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "Consider the square root"}})]
    data = "".join(f"event: {name}\ndata: {json.dumps(event)}\n\n" for name, event in started).encode()
    _, cut = _streamed(body, data, complete=False)
    assert cut.estimated
    assert (cut.usage.output_tokens == 16_000) is (thinking is not None)


def test_a_stream_cut_before_its_final_usage_is_charged_its_advisors_worst_case():
    # from a red-team pass: an advisor's inferences come with the final usage alone; a stream cut before it (or a
    # gateway that strips message_delta's usage) was charged the executor's tokens, the Opus inference Anthropic
    # billed not at all
    reserved, whole = _streamed(ADVISOR_BODY, _advisor_stream(True), complete=True)
    assert whole.usage.others[0][1].output_tokens == 1700 and not whole.estimated
    _, cut = _streamed(ADVISOR_BODY, _advisor_stream(False), complete=False)
    [(model, advice)] = cut.usage.others
    assert model == "claude-opus-4-6" and advice.output_tokens == 2048 and cut.estimated
    assert whole.cost_usd <= cut.cost_usd <= reserved
    plain = {**ADVISOR_BODY, "tools": []}  # no advisor: nothing added
    assert _streamed(plain, _advisor_stream(False), complete=False)[1].usage.others == ()
    # from a review: cut before any consultation began, nothing for the advisor; and an answer whose final usage
    # was read (no advisor ran) then failed was charged every consultation allowed, 35 times its cost
    assert _streamed(ADVISOR_BODY, _advisor_stream(False, consulted=False), complete=False)[1].usage.others == ()
    ran_none = _advisor_stream(True, consulted=False).replace(b', "iterations": [{"type": "advisor_message", '
                                                              b'"model": "claude-opus-4-6", "input_tokens": 450, '
                                                              b'"output_tokens": 1700}]', b"")
    _, failed_after = _streamed(ADVISOR_BODY, ran_none, complete=False)
    assert failed_after.usage.others == () and failed_after.usage.output_tokens == 30


def test_an_advisor_reads_what_the_tools_and_the_executor_added_and_its_cache_writes_are_reserved():
    adapter = MessagesAdapter()
    tool = {"type": "advisor_20260301", "model": "claude-opus-4-6", "max_uses": 1,
            "caching": {"type": "ephemeral", "ttl": "1h"}}
    [(_, cached)] = adapter.advisors({"tools": [tool]}, 1000)
    assert (cached.cache_write_tokens, cached.cache_write_1h_tokens) == (1000, 1000)
    import llmbudget

    body = {"model": "claude-sonnet-4-6", "max_tokens": 32000, "messages": [{"role": "user", "content": "Go."}],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                      {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6", "max_uses": 1}]}
    attempt = llmbudget.Engine().begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages",
                                       headers={}, body=json.dumps(body).encode())
    worst = attempt.worst_usage()
    # a late consultation reads the search results and the executor's 32,000 tokens of output
    assert worst.others[0][1].input_tokens == worst.input_tokens + 32000


def test_an_advisors_cache_reads_are_a_prompt_cache_saving_and_an_unknown_advisor_leaves_the_rest():
    import llmbudget

    body = {**ADVISOR_BODY, "stream": False}
    answer = {"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
              "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 20, "iterations": [
                  {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 500,
                   "cache_read_input_tokens": 20000, "output_tokens": 1500}]}}

    def saving(model: str) -> Decimal:
        iteration = {**answer["usage"]["iterations"][0], "model": model}
        data = {**answer, "usage": {**answer["usage"], "iterations": [iteration]}}
        attempt = llmbudget.Engine().begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages",
                                           headers={}, body=json.dumps(body).encode())
        attempt.start_response(200, {"content-type": "application/json"})
        attempt.feed(json.dumps(data).encode())
        return attempt.finish(complete=True).prompt_cache_saved_usd

    executor = 1000 * (Decimal(3) - Decimal("0.3")) / 10**6
    advisor = 20000 * (Decimal(5) - Decimal("0.5")) / 10**6
    assert saving("claude-opus-4-6") == executor + advisor
    with pytest.warns(UserWarning):
        assert saving("claude-opus-9-unknown") == executor  # not wiped out by the advisor's unknown price


def test_an_advisor_tool_is_held_in_the_reservation_at_its_models_price():
    adapter = MessagesAdapter()
    body = {"model": "claude-sonnet-4-6", "max_tokens": 1000, "messages": [{"role": "user", "content": "plan it"}],
            "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6", "max_uses": 2}]}
    [(model, most)] = adapter.advisors(body, 5000)
    assert model == "claude-opus-4-6" and (most.input_tokens, most.output_tokens) == (10000, 2 * 2048)
    [(_, default)] = adapter.advisors({**body, "tools": [{"type": "advisor_20260301", "model": "claude-opus-4-6",
                                                          "max_tokens": 1500}]}, 100)
    assert (default.input_tokens, default.output_tokens) == (300, 4500)  # three uses without max_uses
    assert adapter.advisors({**body, "tools": [{"type": "web_search_20250305"}]}, 100) == ()


def test_a_fast_mode_call_is_priced_and_reserved_at_its_fast_rate(caplog):
    """Fast mode (speed "fast") bills a multiple of the standard rate: it was reserved and priced at the standard
    one (a claude-opus-4-6 call reserved $0.05 and billed $0.30 went through a $0.10 budget)."""
    import llmbudget

    host = "https://api.anthropic.com/v1"
    usage = messages_usage({"input_tokens": 1000, "output_tokens": 2000, "speed": "fast"})
    standard = messages_usage({"input_tokens": 1000, "output_tokens": 2000})
    assert usage.service_tier == "fast"
    listed = Pricing().cost(usage, model="claude-opus-4-8", base_url=host)  # genai-prices lists its fast rate
    assert listed.usd == 2 * Pricing().cost(standard, model="claude-opus-4-8", base_url=host).usd
    with caplog.at_level("WARNING", logger="llmbudget"):
        unlisted = Pricing().cost(usage, model="claude-opus-4-6", base_url=host)  # none listed: 6x, said
    assert unlisted.usd == 6 * Pricing().cost(standard, model="claude-opus-4-6", base_url=host).usd
    assert any("fast-mode price" in r.getMessage() for r in caplog.records)
    body = {"model": "claude-opus-4-6", "max_tokens": 2000, "speed": "fast",
            "messages": [{"role": "user", "content": "Refactor this module."}]}
    attempt = llmbudget.Engine().begin(url=host + "/messages", path="/v1/messages", headers={},
                                       body=json.dumps(body).encode())
    assert attempt is not None
    plain = llmbudget.Engine().begin(url=host + "/messages", path="/v1/messages", headers={},
                                     body=json.dumps({k: v for k, v in body.items() if k != "speed"}).encode())
    assert plain is not None and attempt.worst_case_usd() == 6 * plain.worst_case_usd()


def test_each_kind_of_token_is_priced_at_its_own_rate():
    """claude-haiku-4-5 at genai-prices: $1 input, $5 output, $0.10 cache read, $1.25 5-minute and $2 1-hour write."""
    cost = Pricing().cost(messages_usage(DOCUMENTED_USAGE), model="claude-haiku-4-5",
                          base_url="https://api.anthropic.com/v1")
    assert cost.source == "genai-prices"
    expected = (50 * Decimal(1) + 8000 * Decimal("0.1") + 1500 * Decimal("1.25") + 500 * Decimal(2)
                + 120 * Decimal(5)) / 10**6
    assert cost.usd == expected


def test_a_stream_takes_input_usage_from_message_start_and_output_from_message_delta():
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "model": "claude-haiku-4-5", "content": [],
                                              "usage": {"input_tokens": 12, "cache_read_input_tokens": 4096,
                                                        "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    state = ResponseState()
    MessagesAdapter().read_stream(events, state)
    assert state.model == "claude-haiku-4-5" and state.done
    assert state.usage == Usage(input_tokens=12 + 4096, cached_input_tokens=4096, output_tokens=7)
    assert state.finish_reasons == ["length"] and "".join(state.stream_parts or []) == "Hello there"


def test_the_messages_path_is_anthropics_and_assistants_threads_are_not_llm_calls():
    found = adapter_for_path("/v1/messages")
    assert found is not None and found[0].endpoint == "messages" and found[1] == "/v1"
    assert adapter_for_path("/v1/threads/thread_abc/messages") is None
    assert adapter_for_path("/v1/messages/count_tokens") is None


def _body(system: str, turns: int = 1, **extra):
    messages = []
    for i in range(turns - 1):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": "the question"})
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": system, "messages": messages, **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LONG = "You are the assistant of a bicycle shop. " * 120  # about 1,200 tokens


def test_a_one_off_prefix_never_pays_for_a_write_and_a_repeated_one_gets_a_breakpoint():
    clock = Clock()
    points = Breakpoints(Pricing(), clock=clock)
    assert points.apply(_body(LONG), tenant="acme", model="claude-sonnet-4-5") is None  # first sighting
    marked = points.apply(_body(LONG), tenant="acme", model="claude-sonnet-4-5")
    assert marked is not None
    assert marked["system"] == [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    assert marked["messages"] == _body(LONG)["messages"]  # content and order untouched
    # another tenant's first sighting is its own
    assert points.apply(_body(LONG), tenant="globex", model="claude-sonnet-4-5") is None
    # past the cache's five minutes the prefix counts as new again
    clock.now += 301
    assert points.apply(_body(LONG), tenant="acme", model="claude-sonnet-4-5") is None



@pytest.mark.parametrize("last", [
    [{"type": "text", "text": "answer 0"}, {"type": "thinking", "thinking": "Let me see", "signature": "s"}],
    [{"type": "text", "text": "answer 0"}, {"type": "redacted_thinking", "data": "abc"}],
    [{"type": "text", "text": "answer 0"}, {"type": "text", "text": ""}],
    [{"type": "thinking", "thinking": "Let me see", "signature": "s"}],
    [{"type": "text", "text": "answer 0"}, {"type": "mcp_tool_listing", "server_name": "s", "tools": []}],
    [{"type": "text", "text": "answer 0"}, {"type": "fallback", "text": "x"}],  # beta blocks without the field
])
def test_a_breakpoint_never_lands_on_a_block_the_api_refuses_one_on(last):
    # The API refuses cache_control on thinking blocks and on empty text: the mark goes on the last block
    # that takes one, or on the head when the turn has none.
    points = Breakpoints(Pricing(), clock=Clock())
    body = _body(LONG, turns=2, thinking={"type": "enabled", "budget_tokens": 1024})
    body["messages"][1]["content"] = last
    assert points.apply(body, tenant="t", model="claude-sonnet-4-5") is None
    marked = points.apply(body, tenant="t", model="claude-sonnet-4-5")
    assert marked is not None
    blocks = [b for m in marked["messages"] if isinstance(m["content"], list) for b in m["content"]]
    blocks += marked["system"] if isinstance(marked["system"], list) else []
    carriers = [b for b in blocks if "cache_control" in b]
    assert carriers and all(b["type"] == "text" and b["text"] for b in carriers)
    assert [{k: v for k, v in b.items() if k != "cache_control"} for b in marked["messages"][1]["content"]] == last

def test_an_sdk_retry_is_decided_as_its_first_attempt_and_not_counted_again():
    # the retry of a one-off prompt counted as its second sighting: it was marked and paid for a cache write
    points = Breakpoints(Pricing(), clock=Clock())
    assert points.apply(_body(LONG), tenant="t", model="claude-sonnet-4-5") is None
    assert points.apply(_body(LONG), tenant="t", model="claude-sonnet-4-5", retry=True) is None
    marked = points.apply(_body(LONG), tenant="t", model="claude-sonnet-4-5")  # truly seen again
    assert marked is not None
    again = points.apply(_body(LONG), tenant="t", model="claude-sonnet-4-5", retry=True)
    assert again == marked  # a marked request's retry is marked too


def test_a_field_named_cache_control_in_a_tool_schema_is_not_a_breakpoint():
    # it made the request look marked by the app (never marked by llmbudget) and reserved at the write price
    tool = {"name": "fetch", "input_schema": {"type": "object", "properties": {"cache_control": {"type": "string"}}}}
    body = _body(LONG, tools=[tool])
    assert not has_cache_control(body)
    points = Breakpoints(Pricing(), clock=Clock())
    assert points.apply(body, tenant="t", model="claude-sonnet-4-5") is None
    assert points.apply(body, tenant="t", model="claude-sonnet-4-5") is not None
    marked = {**body, "tools": [{**tool, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    assert has_cache_control(marked)


def test_breakpoints_inside_a_document_or_a_search_result_are_the_apps_own_and_null_is_none():
    # nested markers were not seen: llmbudget added a fifth breakpoint (the API allows four), or a 5-minute one
    # before the app's 1-hour one, and reserved no write premium; "cache_control": null counted as a marker
    ttl = {"type": "ephemeral", "ttl": "1h"}
    document = {"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "chapter one", "cache_control": ttl}]}}
    search = {"type": "search_result", "source": "https://example.com", "title": "t",
              "content": [{"type": "text", "text": "a result", "cache_control": {"type": "ephemeral"}}]}
    for block in (document, search):
        body = _body([block, {"type": "text", "text": LONG}])
        assert has_cache_control(body)
        points = Breakpoints(Pricing(), clock=Clock())
        assert all(points.apply(body, tenant="t", model="claude-sonnet-4-5") is None for _ in range(3))
    from llmbudget.breakpoints import cache_write_ttls
    assert cache_write_ttls(_body([document])) == {"1h"}
    null = _body([{"type": "text", "text": LONG, "cache_control": None}])
    assert not has_cache_control(null) and cache_write_ttls(null) == set()


def test_a_chinese_system_prompt_over_the_minimum_gets_its_breakpoint():
    # about 1,500 tokens for Claude (a token a character), read as 375 at four characters a token: never marked
    chinese = "你是一家自行车店的助手，请用简短的中文回答顾客关于自行车维修和保养的问题。" * 40
    points = Breakpoints(Pricing(), clock=Clock())
    assert points.apply(_body(chinese), tenant="t", model="claude-sonnet-4-5") is None  # first sighting
    assert has_cache_control(points.apply(_body(chinese), tenant="t", model="claude-sonnet-4-5"))
    short = "你是一家自行车店的助手。" * 40  # 480 characters: under the minimum
    assert all(points.apply(_body(short), tenant="t", model="claude-sonnet-4-5") is None for _ in range(3))


def test_breakpoints_respect_the_minimum_length_and_the_apps_own_markers():
    points = Breakpoints(Pricing(), clock=Clock())
    short = "Be brief. " * 20
    for _ in range(3):
        assert points.apply(_body(short), tenant="t", model="claude-sonnet-4-5") is None
    own = _body([{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    for _ in range(3):
        assert points.apply(own, tenant="t", model="claude-sonnet-4-5") is None
    assert has_cache_control(own) and not has_cache_control(_body(LONG))
    assert min_cacheable_tokens("claude-haiku-4-5") == 4096 and min_cacheable_tokens("claude-3-haiku-20240307") == 2048
    # Opus 4.6 as Opus 4.5 (it was read as 1,024); other Opus and Sonnet releases 1,024
    assert [min_cacheable_tokens(m) for m in ("claude-opus-4-6", "anthropic/claude-opus-4.6", "claude-opus-4-5-20251101",
                                              "claude-opus-4-1-20250805", "claude-sonnet-4-6")] == [4096, 4096, 4096,
                                                                                                    1024, 1024]
    for _ in range(3):  # about 1,200 tokens is too short for Haiku 4.5
        assert points.apply(_body(LONG), tenant="t", model="claude-haiku-4-5") is None


def test_a_repeated_conversation_is_marked_on_its_last_earlier_turn():
    points = Breakpoints(Pricing(), clock=Clock())
    body = _body(LONG, turns=3)
    assert points.apply(body, tenant="t", model="claude-sonnet-4-5") is None
    marked = points.apply(body, tenant="t", model="claude-sonnet-4-5")
    assert marked is not None and marked["system"] == LONG
    assert marked["messages"][-2]["content"] == [{"type": "text", "text": "answer 1",
                                                  "cache_control": {"type": "ephemeral"}}]
    # a new conversation sharing the system prompt: the head is marked
    other = _body(LONG, turns=2)
    other["messages"][0]["content"] = "a different opening"
    marked = points.apply(other, tenant="t", model="claude-sonnet-4-5")
    assert marked is not None and marked["system"][0]["cache_control"] == {"type": "ephemeral"}


def test_the_semantic_cache_key_ignores_breakpoints():
    from llmbudget.providers import adapter_for_endpoint

    adapter = adapter_for_endpoint("messages")
    plain = adapter.parse(_body(LONG), "https://api.anthropic.com/v1")
    marked = adapter.parse(_body([{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]),
                           "https://api.anthropic.com/v1")
    a, b = cache_keys(plain, tenant="t"), cache_keys(marked, tenant="t")
    assert a.exact == b.exact and a.partition == b.partition and a.text == b.text == "the question"


@pytest.mark.parametrize("content", [
    [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
    [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
    # MCP connector and server tools' blocks: a tool's result all the same
    [{"type": "mcp_tool_use", "id": "m1", "name": "search", "server_name": "docs", "input": {}}],
    [{"type": "mcp_tool_result", "tool_use_id": "m1", "content": [{"type": "text", "text": "42"}]}],
    [{"type": "web_search_tool_result", "tool_use_id": "s1", "content": []}],
])
def test_conversations_with_tool_blocks_are_not_cached(content):
    from llmbudget.providers import adapter_for_endpoint

    body = _body("sys")
    body["messages"].insert(0, {"role": "user", "content": content})
    keys = cache_keys(adapter_for_endpoint("messages").parse(body, "https://api.anthropic.com/v1"), tenant="t")
    assert not keys.cacheable


def test_a_tenant_whose_conversations_go_on_gets_its_last_turn_written_for_the_next():
    clock = Clock()
    points = Breakpoints(Pricing(), clock=clock)
    history: list[dict] = []
    last_marked = []
    for turn in range(6):  # one conversation, a turn every 30 s: each continues the one before
        history = [*history, {"role": "user", "content": f"question {turn} " + "about the order " * 40}]
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": LONG, "messages": history}
        marked = points.apply(body, tenant="t", model="claude-sonnet-4-5") or body
        last_marked.append(isinstance(marked["messages"][-1]["content"], list))
        history = [*history, {"role": "assistant", "content": f"answer {turn} " + "your order ships soon " * 20}]
        clock.now += 30
    assert last_marked[0] is False  # nothing known about the tenant yet: no write on a guess
    assert last_marked[-1] is True  # its conversations go on: the next turn will read this one
    # the content is unchanged: the marked turn's text is the same, as one block
    assert marked["messages"][-1]["content"][0]["text"] == history[-2]["content"]
    assert points.apply({"model": "claude-sonnet-4-5", "max_tokens": 8, "system": LONG,
                         "messages": [{"role": "user", "content": "one-off"}]}, tenant="other",
                        model="claude-sonnet-4-5") is None  # another tenant: nothing known, nothing written


def test_a_call_that_may_write_the_prompt_cache_reserves_at_the_write_rate():
    # A write costs 1.25x the input price (a one-hour one 2x): the worst case must pay it, or a per-request
    # budget that fits the plain price lets the call spend past it.
    import json

    import llmbudget

    engine = llmbudget.Engine()

    def worst(system: object) -> Decimal:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "system": system,
                "messages": [{"role": "user", "content": "Hi"}]}
        attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                               body=json.dumps(body).encode())
        assert attempt is not None
        attempt.plan()
        return attempt.worst_case_usd()

    def marked(ttl: str | None) -> list[dict]:
        control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
        return [{"type": "text", "text": LONG, "cache_control": control}]

    plain, five, hour = worst(LONG), worst(marked(None)), worst(marked("1h"))
    pricing, output = Pricing(), Pricing().cost(Usage(output_tokens=16), model="claude-sonnet-4-5").usd
    assert plain < five < hour
    assert (five - output) == (plain - output) * Decimal("1.25") and (hour - output) == (plain - output) * 2
    assert pricing.cost(Usage(input_tokens=1), model="claude-sonnet-4-5").known


def test_documents_images_and_pdfs_count_in_the_input_estimate():
    # They were read as no tokens at all: a per-request budget let a 48k-token document through as 16 tokens.
    import base64
    import json

    import llmbudget
    from llmbudget.providers._base import (
        IMAGE_TOKENS,
        LOW_DETAIL_IMAGE_TOKENS,
        PDF_PAGE_TOKENS,
        pdf_tokens,
    )

    adapter = MessagesAdapter()
    text = "The quarterly report says revenue grew. " * 500

    def estimate(*blocks: dict) -> int:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 16,
                "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "Summarise it."}]}]}
        return adapter.estimate_input_tokens(body, "claude-sonnet-4-5")

    bare = estimate()
    document = {"type": "document", "title": "Q3", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    assert estimate(document) > bare + 3_000
    result = {"type": "search_result", "source": "https://example.com", "title": "Q3",
              "content": [{"type": "text", "text": text}]}
    assert estimate(result) > bare + 3_000
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    assert estimate(image, image) == bare + 2 * IMAGE_TOKENS
    pages = b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R 3 0 R 4 0 R] /Count 3 >> endobj\n" + b"".join(
        b"%d 0 obj << /Type /Page /Parent 1 0 R >> endobj\n" % n for n in (2, 3, 4))
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": base64.b64encode(pages).decode()}}
    assert pdf_tokens(base64.b64encode(pages).decode()) == 3 * PDF_PAGE_TOKENS
    assert estimate(pdf) == bare + 3 * PDF_PAGE_TOKENS
    assert estimate({"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}}) == bare + PDF_PAGE_TOKENS
    tool = {"type": "tool_result", "tool_use_id": "t", "content": [image]}
    assert estimate(tool) >= bare + IMAGE_TOKENS

    found = adapter_for_path("/v1/chat/completions")
    assert found is not None
    chat = found[0]
    picture = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                           {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}
    small = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}}]}
    plain = chat.estimate_input_tokens({"model": "gpt-4o", "messages": [{"role": "user", "content": "What is this?"}]},
                                       "gpt-4o")
    assert chat.estimate_input_tokens({"model": "gpt-4o", "messages": [picture]}, "gpt-4o") == plain + IMAGE_TOKENS
    assert chat.estimate_input_tokens({"model": "gpt-4o", "messages": [small]}, "gpt-4o") == \
        plain + LOW_DETAIL_IMAGE_TOKENS

    found = adapter_for_path("/v1/responses")
    assert found is not None
    responses, question = found[0], {"type": "input_text", "text": "What is this?"}
    assert responses.estimate_input_tokens({"model": "gpt-4o", "input": [{"role": "user", "content": [
        question, {"type": "input_image", "image_url": "https://x/a.png"}, {"type": "input_file", "file_id": "f"}]}]},
        "gpt-4o") == responses.estimate_input_tokens({"model": "gpt-4o", "input": [{"role": "user", "content": [
            question]}]}, "gpt-4o") + IMAGE_TOKENS + PDF_PAGE_TOKENS

    # and a per-request budget that fits the question alone refuses the call with the document
    engine = llmbudget.Engine()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": [document, {"type": "text", "text": "Summarise it."}]}]}
    with llmbudget.scope(budgets=[llmbudget.Budget("0.01")]):
        attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                               body=json.dumps(body).encode())
        assert attempt is not None
        attempt.plan()
        refusal = attempt.reserve()
    assert refusal is not None and refusal.estimated_cost_usd > Decimal("0.01")


def test_web_searches_are_read_and_priced():
    # Anthropic's web_search tool costs $10 per 1,000 searches beside the tokens: it was priced at $0.
    raw = {"input_tokens": 1200, "output_tokens": 300, "server_tool_use": {"web_search_requests": 25}}
    usage = messages_usage(raw)
    assert usage.web_searches == 25
    pricing = Pricing()
    tokens_only = pricing.cost(usage.replace(web_searches=0), model="claude-sonnet-4-5").usd
    assert pricing.cost(usage, model="claude-sonnet-4-5").usd - tokens_only == Decimal("0.25")
    assert messages_usage({"input_tokens": 1, "output_tokens": 1}).web_searches == 0


def test_openai_web_searches_are_counted_from_the_responses_output():
    from openai.types.responses import Response

    from llmbudget.providers import adapter_for_endpoint
    from llmbudget.providers._base import ResponseState

    searched = Response.model_validate({
        "id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4.1", "status": "completed",
        "output": [*({"type": "web_search_call", "id": f"ws_{i}", "status": "completed",
                      "action": {"type": "search", "query": "news"}} for i in range(3)),
                   {"type": "message", "id": "m", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "Here.", "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100,
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    }).model_dump(mode="json")
    state = ResponseState()
    adapter_for_endpoint("responses").read_json(searched, state)
    assert state.usage is not None and state.usage.web_searches == 3
    pricing = Pricing()
    tokens_only = pricing.cost(state.usage.replace(web_searches=0), model="gpt-4.1").usd
    assert pricing.cost(state.usage, model="gpt-4.1").usd - tokens_only == Decimal("0.03")


@pytest.mark.parametrize(("model", "fee"), [("gpt-4.1", "0.075"), ("gpt-4o", "0.075"), ("o4-mini", "0.03"),
                                          ("gpt-5", "0.03")])
def test_the_web_search_preview_tool_is_priced_at_its_own_rate(model: str, fee: str):
    """OpenAI bills the older ``web_search_preview`` tool at $25 per 1,000 calls on a model that does not reason
    ($10 on one that does, and for the ``web_search`` tool): it was charged $10, 40% of the bill."""
    from llmbudget.providers import adapter_for_endpoint
    from llmbudget.providers._base import ResponseState

    answer = {
        "id": "resp_1", "object": "response", "created_at": 1, "model": model, "status": "completed",
        "output": [*({"type": "web_search_call", "id": f"ws_{i}", "status": "completed",
                      "action": {"type": "search", "query": "news"}} for i in range(3)),
                   {"type": "message", "id": "m", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "Here.", "annotations": []}]}],
        "tools": [{"type": "web_search_preview"}],
        "usage": {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }
    adapter = adapter_for_endpoint("responses")
    state = ResponseState()
    adapter.read_json(answer, state)
    assert state.usage is not None and state.usage.web_searches == state.usage.preview_searches == 3
    pricing = Pricing()
    tokens_only = pricing.cost(state.usage.replace(web_searches=0), model=model).usd
    assert pricing.cost(state.usage, model=model).usd - tokens_only == Decimal(fee)
    # the GA tool is $10 per 1,000 on any model
    state = ResponseState()
    adapter.read_json({**answer, "tools": [{"type": "web_search"}]}, state)
    assert state.usage is not None and state.usage.preview_searches == 0
    assert pricing.cost(state.usage, model=model).usd - tokens_only == Decimal("0.03")
    # and the reservation holds the preview's rate too
    engine = llmbudget.Engine()
    body = {"model": model, "input": "news?", "tools": [{"type": "web_search_preview"}], "max_tool_calls": 3,
            "max_output_tokens": 100}
    attempt = engine.begin(url="https://api.openai.com/v1/responses", path="/v1/responses", headers={},
                           body=json.dumps(body).encode(), adapter=adapter)
    assert attempt is not None
    worst = attempt.worst_usage()
    assert worst.preview_searches == worst.web_searches == 3
    assert pricing.cost(worst, model=model).usd - pricing.cost(worst.replace(web_searches=0), model=model).usd \
        == Decimal(fee)


def test_an_implausible_web_search_count_is_malformed_not_charged():
    from llmbudget.providers._base import BadUsage

    # a count of a billion searches was charged $10,000,000 as exact
    with pytest.raises(BadUsage, match="web search count"):
        messages_usage({"input_tokens": 10, "output_tokens": 5, "server_tool_use": {"web_search_requests": 1e9}})


def test_the_pipeline_tells_breakpoints_an_sdk_retry_from_a_new_request(engine):
    # the SDK's retry header makes the attempt a retry: it is decided as the first attempt was, never counted again
    engine.breakpoints = Breakpoints(Pricing(), clock=Clock())

    def marked(retry: int) -> bool:
        attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages",
                               headers={"x-stainless-retry-count": str(retry)}, body=json.dumps(_body(LONG)).encode())
        attempt.plan("/v1/messages")
        return attempt.breakpoint

    assert [marked(0), marked(1), marked(2), marked(0)] == [False, False, False, True]


def test_a_messages_call_in_a_container_is_never_cached_and_a_beta_header_keys_its_answer():
    """A code execution container keeps its files and state from call to call, and a beta feature (the header
    ``anthropic-beta``) changes the answer the same body gets: both shared one cached answer."""
    import llmbudget
    from llmbudget.providers import adapter_for_endpoint

    body = _body("sys")
    parse = adapter_for_endpoint("messages").parse
    assert not cache_keys(parse({**body, "container": "container_011"}, "https://api.anthropic.com/v1"),
                          tenant="t").cacheable
    call = parse(body, "https://api.anthropic.com/v1")
    plain, beta = cache_keys(call, tenant="t"), cache_keys(call, tenant="t", variant="context-1m-2025-08-07")
    assert plain.cacheable and beta.cacheable and {plain.exact, plain.partition}.isdisjoint({beta.exact, beta.partition})
    engine = llmbudget.Engine()
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages",
                           headers={"anthropic-beta": "context-1m-2025-08-07"}, body=json.dumps(body).encode())
    assert attempt is not None and attempt.answer_variant == "context-1m-2025-08-07"


def test_a_responses_code_interpreter_in_a_container_of_its_own_is_never_cached():
    from llmbudget.providers import adapter_for_endpoint

    parse = adapter_for_endpoint("responses").parse
    body = {"model": "gpt-4.1", "input": "Plot it.", "store": False}
    kept = {**body, "tools": [{"type": "code_interpreter", "container": "cntr_abc"}]}
    fresh = {**body, "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}
    assert not cache_keys(parse(kept, "https://api.openai.com/v1"), tenant="t").cacheable
    assert cache_keys(parse(fresh, "https://api.openai.com/v1"), tenant="t").cacheable
