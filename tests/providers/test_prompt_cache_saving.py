"""What the provider's prompt cache saved on a call: its cached input tokens at the full rate minus the cached rate."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.completion_usage import CompletionUsage, PromptTokensDetails

import llmbudget
from llmbudget.calls import Counters, SpendRecord, Usage
from llmbudget.pricing import Pricing, UnpricedModelWarning

BASE = "http://127.0.0.1:9"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def _settle(model: str, prompt: int, cached: int, completion: int = 20) -> SpendRecord:
    engine = llmbudget.Engine()
    attempt = engine.begin(url=BASE + "/v1/chat/completions", path="/v1/chat/completions", headers={},
                           body=json.dumps({**BODY, "model": model}).encode())
    assert attempt is not None
    answer = ChatCompletion(
        id="chatcmpl-1", created=1, model=model, object="chat.completion",
        choices=[Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content="Hi"))],
        usage=CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                              prompt_tokens_details=PromptTokensDetails(cached_tokens=cached)),
    )
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(answer.model_dump_json(exclude_unset=True).encode())
    record = attempt.finish(complete=True)
    assert record is not None
    return record


def test_the_saving_is_the_cached_tokens_at_the_full_rate_minus_the_cached_rate() -> None:
    record = _settle("gpt-4o-mini", prompt=4000, cached=3072)
    pricing = Pricing()
    full = pricing.cost(Usage(input_tokens=4000, output_tokens=20), model="gpt-4o-mini").usd
    assert record.cost_usd == pricing.cost(record.usage, model="gpt-4o-mini").usd < full
    assert record.prompt_cache_saved_usd == full - record.cost_usd
    # gpt-4o-mini: $0.15 per 1M input tokens, $0.075 cached: 3,072 cached tokens save 3072 * 0.075 / 1M
    assert record.prompt_cache_saved_usd == Decimal(3072) * Decimal("0.075") / 1_000_000
    again = SpendRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.prompt_cache_saved_usd == record.prompt_cache_saved_usd
    totals = Counters()
    totals.add_record(record)
    totals.add_record(record)
    assert totals.prompt_cache_saved_usd == 2 * record.prompt_cache_saved_usd
    assert Counters.from_dict(totals.to_dict()) == totals


def test_nothing_cached_or_an_unknown_price_saves_nothing() -> None:
    assert _settle("gpt-4o-mini", prompt=4000, cached=0).prompt_cache_saved_usd == 0
    with pytest.warns(UnpricedModelWarning):
        unknown = _settle("no-such-model-xyz", prompt=4000, cached=3072)
    assert unknown.prompt_cache_saved_usd == 0 and unknown.price_source == "unknown"
    assert not unknown.estimated  # its tokens are the server's: reports count it as fallback-priced, not estimated
    # records written before the field existed read back as 0
    data = _settle("gpt-4o-mini", prompt=100, cached=0).to_dict()
    del data["prompt_cache_saved_usd"]
    assert SpendRecord.from_dict(data).prompt_cache_saved_usd == 0
