"""The real anthropic SDK against a real Messages server (llama.cpp's llama-server), through llmbudget.

The server reports Anthropic's usage fields; ``cache_read_input_tokens`` counts the prompt
tokens it reused from its own KV cache, so a repeated prompt exercises cache-read pricing
on real responses. Cache *writes* it never reports: see tests/providers/test_messages.py.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import anthropic
import pytest

import llmbudget
from llmbudget.cache import Cache
from llmbudget.pricing import Pricing
from llmbudget.providers.messages import messages_usage
from llmbudget.routing.tiers import Routing

# The 270M base model echoes; a newline ends its answer (stop_reason end_turn).
ASK = {"max_tokens": 24, "stop_sequences": ["\n"], "extra_body": {"temperature": 0}}
HAIKU = "claude-haiku-4-5"


def hi(text: str = "Say hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def explicit(base_url: str, **options) -> anthropic.Anthropic:
    """A client built the explicit way: ``http_client=llmbudget.http_client(sdk="anthropic")``."""
    return anthropic.Anthropic(base_url=base_url, api_key="sk-test", http_client=llmbudget.http_client(sdk="anthropic"),
                               **options)


def priced(usage: dict, model: str = HAIKU) -> Decimal:
    return Pricing().cost(messages_usage(usage), model=model).usd


def test_sync_json_is_recorded_and_priced_exactly(messages_server, records):
    client = explicit(messages_server)
    answer = client.messages.create(model=HAIKU, messages=hi(), **ASK)
    [record] = records
    assert (record.endpoint, record.model_answered, record.status) == ("messages", HAIKU, 200)
    assert record.base_url == f"{messages_server}/v1" and record.price_source == "genai-prices"
    usage = answer.usage.model_dump()
    assert record.usage.input_tokens == usage["input_tokens"] + (usage.get("cache_read_input_tokens") or 0)
    assert record.usage.output_tokens == answer.usage.output_tokens > 0
    assert record.cost_usd == priced(usage) > 0


def test_install_covers_clients_built_before_it_and_streams(messages_server, records):
    client = anthropic.Anthropic(base_url=messages_server, api_key="sk-test")  # built at import, say
    llmbudget.install()
    try:
        with client.messages.stream(model=HAIKU, messages=hi("Name a colour"), **ASK) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    finally:
        llmbudget.uninstall()
    [record] = records
    assert text and not record.estimated
    assert record.usage.output_tokens == final.usage.output_tokens
    assert record.cost_usd == priced(final.usage.model_dump())


def test_async_json_and_stream(messages_server, records):
    async def main() -> tuple[anthropic.types.Message, anthropic.types.Message]:
        async with anthropic.AsyncAnthropic(base_url=messages_server, api_key="sk-test",
                                            http_client=llmbudget.async_http_client(sdk="anthropic")) as client:
            answer = await client.messages.create(model=HAIKU, messages=hi("Count to three"), **ASK)
            async with client.messages.stream(model=HAIKU, messages=hi("Name a fruit"), **ASK) as stream:
                streamed = await stream.get_final_message()
            return answer, streamed

    answer, streamed = asyncio.run(main())
    assert [r.usage.output_tokens for r in records] == [answer.usage.output_tokens, streamed.usage.output_tokens]
    assert [r.cost_usd for r in records] == [priced(answer.usage.model_dump()), priced(streamed.usage.model_dump())]


def test_a_repeated_prompt_reads_the_servers_cache_and_is_priced_at_the_read_rate(messages_server, records):
    client = explicit(messages_server)
    system = "You answer questions about the opening hours of a bicycle shop, briefly. " * 6
    for _ in range(2):
        answer = client.messages.create(model=HAIKU, system=system, messages=hi("Open on Sunday?"), **ASK)
    read = answer.usage.cache_read_input_tokens
    assert read and read > 50  # the server reused the shared prompt from its KV cache
    record = records[-1]
    assert record.usage.cached_input_tokens == read
    assert record.cost_usd == priced(answer.usage.model_dump())
    # read tokens at $0.10 instead of $1 per 1M: the provider's prompt cache saved 90% of their price
    assert record.prompt_cache_saved_usd == read * (Decimal(1) - Decimal("0.1")) / 10**6


def test_a_budget_refuses_before_sending_and_the_sdk_raises_its_own_error(engine, records):
    engine.budgets = (llmbudget.Budget("0"),)
    client = explicit("http://127.0.0.1:9", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=HAIKU, messages=hi(), **ASK)
    assert caught.value.status_code == 402
    refusal = llmbudget.budget_refusal(caught.value)
    assert refusal is not None and refusal.budget == "request" and refusal.estimated_cost_usd > 0
    assert records == []  # nothing was sent, nothing spent


def test_the_semantic_cache_answers_json_and_streams_in_anthropics_shape(messages_server, engine, records, tmp_path):
    engine.cache = Cache(path=str(tmp_path / "cache"))
    client = explicit(messages_server)
    first = client.messages.create(model=HAIKU, messages=hi("What is the capital of France?"), **ASK)
    assert first.stop_reason == "end_turn"
    again = client.messages.create(model=HAIKU, messages=hi("What is the capital of France?"), **ASK)
    with client.messages.stream(model=HAIKU, messages=hi("What is the capital of France?"), **ASK) as stream:
        streamed = stream.get_final_message()
    assert [r.from_cache for r in records] == [False, True, True]
    assert again.content[0].text == streamed.content[0].text == first.content[0].text
    assert again.id != first.id and again.usage.output_tokens == first.usage.output_tokens
    assert records[1].saved_usd == records[0].cost_usd  # the hit's price had it gone to the provider


def test_routing_moves_a_claude_request_between_claude_tiers_only(messages_server, engine, records):
    engine.routing = Routing(tiers={"small": {"model": "gpt-4.1-nano", "anthropic": HAIKU}, "large": None},
                             threshold=1.0)  # everything to the small tier
    client = explicit(messages_server)
    answer = client.messages.create(model="claude-sonnet-4-5", messages=hi(), **ASK)
    [record] = records
    assert (record.model_requested, record.model_sent, record.routed) == ("claude-sonnet-4-5", HAIKU, True)
    usage = answer.usage.model_dump()
    assert record.routing_saved_usd == priced(usage, "claude-sonnet-4-5") - priced(usage) > 0
    # a tier without a Claude model keeps a Claude request's model
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    client.messages.create(model="claude-sonnet-4-5", messages=hi(), **ASK)
    assert records[-1].model_sent == "claude-sonnet-4-5" and not records[-1].routed


def test_a_thinking_request_keeps_its_max_tokens_under_a_bounded_schema(messages_server, records):
    # A bounded output_format gives a cap of a few dozen tokens; thinking tokens count toward max_tokens and the
    # API refuses max_tokens <= thinking.budget_tokens, so the cap would have made this valid call fail.
    import httpx2

    sent: list[bytes] = []

    class Spy(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            sent.append(request.read())
            return super().handle_request(request)

    client = anthropic.Anthropic(base_url=messages_server, api_key="sk-test", max_retries=0,
                                 http_client=llmbudget.http_client(sdk="anthropic", transport=Spy()))
    schema = {"type": "object", "additionalProperties": False, "required": ["label"],
              "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}}}
    ask = {"model": HAIKU, "messages": hi("Classify: WIN A PRIZE NOW"), "stop_sequences": ["\n"],
           "extra_body": {"temperature": 0, "output_format": {"type": "json_schema", "schema": schema}}}
    client.messages.create(max_tokens=200, **ask)  # without thinking the schema's bound caps it
    client.messages.create(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}, **ask)
    import json

    plain, thinking = (json.loads(body) for body in sent)
    assert plain["max_tokens"] < 200 and records[0].output["schema_cap"] == plain["max_tokens"]
    assert thinking["max_tokens"] == 2048 and "schema_cap" not in (records[1].output or {})


def test_a_stream_whose_usage_counts_no_input_is_estimated(messages_server, records):
    # A gateway that leaves message_start's usage out: the input was priced at 0 tokens, and not flagged.
    import json
    import re

    from servers import base_url, proxy

    def drop_input(body: bytes) -> bytes:
        def event(match: re.Match) -> bytes:
            data = json.loads(match.group(1))
            if data.get("type") == "message_start":
                data["message"].pop("usage", None)
            elif data.get("type") == "message_delta" and isinstance(data.get("usage"), dict):
                data["usage"] = {"output_tokens": data["usage"].get("output_tokens", 0)}
            return b"data: " + json.dumps(data).encode()

        return re.sub(rb"data: (\{.*\})", event, body)

    with proxy(f"{messages_server}/v1", rewrite=drop_input) as upstream:
        client = explicit(base_url(upstream).removesuffix("/v1"), max_retries=0)
        events = [event.type for event in client.messages.create(model=HAIKU, messages=hi("Name a colour"),
                                                                  stream=True, **ASK)]
    assert events[0] == "message_start" and events[-1] == "message_stop"  # (the SDK's stream helper needs usage)
    [record] = records
    assert record.usage.input_tokens > 0 and record.usage.output_tokens > 0
    assert record.estimated and record.cost_usd > 0
