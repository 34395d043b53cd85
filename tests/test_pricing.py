"""llmbudget.pricing: exact agreement with genai-prices, overrides, unknown models, the snapshot."""

from __future__ import annotations

import warnings
from datetime import date
from decimal import Decimal
from importlib.metadata import version

import genai_prices
import pytest
from genai_prices import Usage as GenaiUsage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbudget.calls import Usage
from llmbudget.pricing import (
    CONSERVATIVE_PRICE,
    Price,
    Priced,
    Pricing,
    UnknownModelError,
    UnpricedModelWarning,
)

# The generated usages give text models audio tokens too, which llmbudget says it prices as text.
pytestmark = pytest.mark.filterwarnings("ignore:.*lists no audio price:llmbudget.pricing.UnpricedModelWarning")

#: Real OpenAI ids from genai-prices' data: chat, reasoning, embeddings, audio, realtime, dated snapshots.
OPENAI_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4o-2024-08-06",
    "gpt-4.1",
    "gpt-4.1-nano",
    "gpt-3.5-turbo",
    "gpt-4-turbo",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5.4",  # tiered prices: genai-prices' own calc path
    "o1",
    "o3",
    "o3-mini",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "gpt-audio",
    "gpt-audio-mini",
    "gpt-4o-audio-preview",
    "gpt-4o-transcribe",
    "gpt-4o-mini-realtime-preview",
    "gpt-realtime",
]

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def disjoint_usages(draw: st.DrawFn) -> Usage:
    """A usage as OpenAI reports it: cached and audio input are disjoint subsets of input."""
    input_tokens = draw(st.integers(0, 400_000))
    cached = draw(st.integers(0, input_tokens))
    audio_in = draw(st.integers(0, input_tokens - cached))
    output = draw(st.integers(0, 100_000))
    reasoning = draw(st.integers(0, output))
    audio_out = draw(st.integers(0, output))
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output,
        reasoning_tokens=reasoning,
        input_audio_tokens=audio_in,
        output_audio_tokens=audio_out,
    )


def _genai_total(usage: Usage, model: str, *, tier: str | None = None, cache_audio_read: int | None = None,
                 **where: str) -> Decimal:
    values = {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
    }
    if cache_audio_read is not None:
        values["cache_audio_read_tokens"] = cache_audio_read
    if not where:
        where = {"provider_id": "openai"}
    context = {"service_tier": tier} if tier else None
    result = genai_prices.calc_price(genai_prices.Usage(**values), model, price_context=context, **where)
    return Decimal(result.total_price)


# -- exact agreement with genai-prices -----------------------------------------------------------


@pytest.mark.parametrize("model", OPENAI_MODELS)
@SETTINGS
@given(usage=disjoint_usages())
def test_cost_equals_genai_prices_exactly(model: str, usage: Usage) -> None:
    priced = Pricing().cost(usage, model=model)
    # cache_audio_read_tokens=0: the reported cached and audio input are disjoint in these usages.
    assert priced.usd == _genai_total(usage, model, cache_audio_read=0)
    assert isinstance(priced.usd, Decimal)
    assert priced.source == "genai-prices"
    assert priced.known


@pytest.mark.parametrize("model", ["gpt-audio", "gpt-4o-transcribe", "gpt-4o-mini", "gpt-5"])
@SETTINGS
@given(data=st.data())
def test_cost_equals_genai_prices_when_cached_and_audio_input_overlap(model: str, data: st.DataObject) -> None:
    """Cached audio is both cached and audio: subsets of the input that may overlap."""
    input_tokens = data.draw(st.integers(1, 200_000))
    usage = Usage(
        input_tokens=input_tokens,
        cached_input_tokens=data.draw(st.integers(0, input_tokens)),
        input_audio_tokens=data.draw(st.integers(0, input_tokens)),
        output_tokens=data.draw(st.integers(0, 50_000)),
    )
    assert Pricing().cost(usage, model=model).usd == _genai_total(usage, model)


def test_reasoning_tokens_are_billed_as_the_output_they_are_part_of() -> None:
    pricing = Pricing()
    plain = Usage(input_tokens=1000, output_tokens=5000)
    with_reasoning = plain.replace(reasoning_tokens=4000)
    assert pricing.cost(with_reasoning, model="o3").usd == pricing.cost(plain, model="o3").usd
    assert pricing.cost(plain, model="o3").usd == _genai_total(plain, "o3")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "o4-mini", "text-embedding-3-small"])
@SETTINGS
@given(usage=disjoint_usages())
def test_cost_at_the_openai_url_equals_genai_prices_for_that_url(model: str, usage: Usage) -> None:
    url = "https://api.openai.com/v1"
    expected = _genai_total(usage, model, cache_audio_read=0, provider_api_url=url)
    assert Pricing().cost(usage, model=model, base_url=url).usd == expected


def test_local_base_url_prices_by_model_name() -> None:
    usage = Usage(input_tokens=12_345, cached_input_tokens=2_000, output_tokens=678)
    local = Pricing().cost(usage, model="gpt-4o-mini", base_url="http://127.0.0.1:8080/v1")
    assert local.usd == _genai_total(usage, "gpt-4o-mini")
    assert local.usd == (Decimal(10_345) * Decimal("0.15") + 2_000 * Decimal("0.075") + 678 * Decimal("0.6")) / 10**6


@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-mini", "o3", "gpt-4o", "gpt-4.1", "gpt-5.4"])
@pytest.mark.parametrize("tier", ["flex", "priority", "default"])
@SETTINGS
@given(usage=disjoint_usages())
def test_service_tier_prices_as_genai_prices_says(model: str, tier: str, usage: Usage) -> None:
    pricing = Pricing()
    priced = pricing.cost(usage.replace(service_tier=tier), model=model)
    expected = _genai_total(usage, model, tier=tier, cache_audio_read=0)
    if tier == "flex" and expected == _genai_total(usage, model, tier="default", cache_audio_read=0):
        expected *= 1 - pricing.deferred_discount  # no flex price listed: the documented discount
    assert priced.usd == expected


@pytest.mark.parametrize(("model", "listed"), [("gpt-4o-mini", Decimal("0.075")), ("gpt-5", Decimal("0.625")),
                                              ("claude-haiku-4-5", Decimal("0.5"))])
def test_batch_calls_are_priced_at_the_batch_rate(model: str, listed: Decimal) -> None:
    usage = Usage(input_tokens=1_000_000, service_tier="batch")
    assert Pricing().cost(usage, model=model).usd == listed  # genai-prices' batch input price per 1M
    assert Pricing({"my-model": {"input": 2, "output": 4}}, deferred_discount="0.4").cost(
        usage, model="my-model").usd == Decimal("1.2")  # an override: the configured discount
    with pytest.raises(ValueError, match="deferred_discount must be a fraction"):
        Pricing(deferred_discount=1)


@pytest.mark.parametrize(("model", "tier", "ratio"), [("gpt-5", "flex", Decimal("0.5")),
                                                      ("gpt-5", "priority", Decimal(2)),
                                                      ("o3", "flex", Decimal("0.5"))])
def test_service_tier_changes_the_price(model: str, tier: str, ratio: Decimal) -> None:
    usage = Usage(input_tokens=100_000, output_tokens=10_000)
    pricing = Pricing()
    standard = pricing.cost(usage, model=model).usd
    tiered = pricing.cost(usage.replace(service_tier=tier), model=model).usd
    assert tiered != standard
    assert tiered == standard * ratio
    assert tiered == _genai_total(usage, model, tier=tier)


def test_a_priority_call_with_a_price_override_is_priced_at_the_most_priority_costs(
        recwarn: pytest.WarningsRecorder) -> None:
    """An override lists no priority price: a priority call (reported, or reserved for ``service_tier:
    "priority"``) was priced at the standard rate, silently, below the 1.7-2x OpenAI bills."""
    pricing = Pricing({"gpt-4o": {"input": "2.5", "output": "10"}})
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert pricing.cost(usage, model="gpt-4o").usd == Decimal("12.5")
    assert pricing.cost(usage.replace(service_tier="priority"), model="gpt-4o").usd == Decimal(25)
    assert any("no priority price is listed for model 'gpt-4o' (a price override has none)" in str(w.message)
               for w in recwarn.list)
    # a listed priority price is the price
    assert Pricing().cost(usage.replace(service_tier="priority"), model="gpt-4o").usd == Decimal("21.25")
    # and Anthropic's Priority Tier (its answers say "priority") is billed at the standard rates
    claude = Pricing().cost(usage, model="claude-sonnet-4-5").usd
    assert Pricing().cost(usage.replace(service_tier="priority"), model="claude-sonnet-4-5").usd == claude


# -- overrides -----------------------------------------------------------------------------------

URL = "http://10.0.0.5:8080/v1"
BOTH = Price(Decimal(1), Decimal(2))
BY_MODEL = Price(Decimal(3), Decimal(4))
BY_URL = Price(Decimal(5), Decimal(6))


def _pricing_with_all_override_kinds() -> Pricing:
    return Pricing(
        {
            URL: BY_URL,  # listed first on purpose: precedence must not depend on order
            "gemma-*": BY_MODEL,
            f"{URL} gemma-*": BOTH,
        }
    )


@pytest.mark.parametrize(
    ("model", "base_url", "expected", "source"),
    [
        ("gemma-3-270m", URL, BOTH, "override"),  # URL + glob beats a glob and a URL
        ("gemma-3-270m", URL + "/", BOTH, "override"),  # trailing slash is the same URL
        ("GEMMA-3-270M", URL, BOTH, "override"),  # model names match case-insensitively
        ("gemma-3-270m", "http://elsewhere:1/v1", BY_MODEL, "override"),  # glob beats nothing
        ("llama-3", URL, BY_URL, "override"),  # every model at the URL
        ("gpt-4o-mini", URL, BY_URL, "override"),  # even one genai-prices knows
    ],
)
def test_override_precedence(model: str, base_url: str, expected: Price, source: str) -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    priced = _pricing_with_all_override_kinds().cost(usage, model=model, base_url=base_url)
    assert priced.usd == expected.input + expected.output
    assert priced.source == source


def test_override_beats_genai_prices_and_can_be_zero() -> None:
    usage = Usage(input_tokens=500, output_tokens=500)
    priced = Pricing({"gpt-4o-mini": {"input": 0, "output": 0}}).cost(usage, model="gpt-4o-mini")
    assert priced.usd == 0
    assert priced.source == "override"
    assert priced.known


@pytest.mark.parametrize(("answered", "covered"), [
    ("gpt-4o-2024-08-06", True),
    ("GPT-4o-2024-08-06", True),
    ("gpt-4o-0513", True),
    ("gpt-4o", True),
    ("gpt-4o-mini", False),
    ("gpt-4o-mini-2024-07-18", False),
    ("claude-sonnet-4-20250514", True),
    ("claude-sonnet-4@20250514", True),
])
def test_an_override_covers_the_dated_snapshot_the_provider_answers_with(answered: str, covered: bool) -> None:
    """The reservation prices the requested name, the settle the answered one: an override of "gpt-4o" ignored for
    "gpt-4o-2024-08-06" had a call reserved at $2 and settled at $12.50 (list price)."""
    pricing = Pricing({"gpt-4o": {"input": 1, "output": 1}, "claude-sonnet-4": {"input": 1, "output": 1}})
    priced = pricing.cost(Usage(input_tokens=1_000_000, output_tokens=1_000_000), model=answered)
    assert (priced.source == "override" and priced.usd == 2) is covered


def test_a_snapshots_own_override_wins_over_its_undated_names_in_any_order() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    for order in ([("gpt-4o", 1), ("gpt-4o-2024-05-13", 5)], [("gpt-4o-2024-05-13", 5), ("gpt-4o", 1)]):
        pricing = Pricing({name: {"input": usd, "output": usd} for name, usd in order})
        assert pricing.cost(usage, model="gpt-4o-2024-05-13").usd == 10
        assert pricing.cost(usage, model="gpt-4o-2024-08-06").usd == 2


def test_override_prices_cached_input_and_cache_writes() -> None:
    pricing = Pricing({"mine": {"input": "1", "output": "2", "cached_input": "0.1", "cache_write": "1.25"}})
    usage = Usage(input_tokens=1000, cached_input_tokens=300, cache_write_tokens=200, output_tokens=10)
    expected = (500 * Decimal(1) + 300 * Decimal("0.1") + 200 * Decimal("1.25") + 10 * Decimal(2)) / 10**6
    assert pricing.cost(usage, model="mine").usd == expected


def test_an_override_without_a_write_price_charges_anthropics_write_premium() -> None:
    # {input, output} alone priced a 5-minute cache write at the input price: $5.00 for 1M tokens at $5/M,
    # $6.25 at Anthropic's rule (an undercharge; a read at the input price is a charge never below the real one)
    price = Price.of({"input": 5, "output": 25})
    assert price.cost(Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000)) == Decimal("6.25")
    assert price.cost(Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000,
                            cache_write_1h_tokens=1_000_000)) == Decimal("10")
    assert price.cost(Usage(input_tokens=1_000_000, cached_input_tokens=1_000_000)) == Decimal("5")


def test_override_floats_become_exact_decimals() -> None:
    price = Price.of({"input": 0.1, "output": 0.4})
    assert price.input == Decimal("0.1")
    assert price.output == Decimal("0.4")


def test_override_without_cached_price_charges_cached_input_at_the_input_price() -> None:
    pricing = Pricing({"mine": {"input": 2, "output": 0}})
    cached = Usage(input_tokens=1000, cached_input_tokens=1000)
    assert pricing.cost(cached, model="mine").usd == Decimal(2000) / 10**6


@pytest.mark.parametrize(
    ("mapping", "error", "needle"),
    [
        ({"input": 1}, ValueError, "'output'"),
        ({"output": 1}, ValueError, "'input'"),
        ({"input": -1, "output": 1}, ValueError, "non-negative"),
        ({"input": 1, "output": "-0.5"}, ValueError, "non-negative"),
        ({"input": 1, "output": "lots"}, ValueError, "USD per 1M tokens"),
        ({"input": float("nan"), "output": 1}, ValueError, "finite"),
        ({"input": 1, "output": 1, "inptu": 1}, ValueError, "unknown keys ['inptu']"),
        ([1, 2], TypeError, "mapping"),
    ],
)
def test_override_mapping_validation(mapping: object, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as raised:
        Pricing({"my-model": mapping})  # type: ignore[dict-item]
    message = str(raised.value)
    assert needle in message
    if error is ValueError:
        assert "my-model" in message  # says which override is wrong


def test_override_key_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="model names or base URLs"):
        Pricing({" ": {"input": 1, "output": 1}})


# -- unknown models ------------------------------------------------------------------------------


def test_unknown_model_warns_once_per_model_and_charges_the_unknown_price() -> None:
    pricing = Pricing(unknown_model_price={"input": 7, "output": 11})
    usage = Usage(input_tokens=1000, output_tokens=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [pricing.cost(usage, model=name) for name in ["no-such-model-a"] * 5 + ["no-such-model-b"] * 3]
    unpriced = [w for w in caught if issubclass(w.category, UnpricedModelWarning)]
    assert len(unpriced) == 2
    assert "no-such-model-a" in str(unpriced[0].message)
    assert "no-such-model-b" in str(unpriced[1].message)
    for priced in results:
        assert isinstance(priced, Priced)
        assert priced.usd == (1000 * Decimal(7) + 100 * Decimal(11)) / 10**6
        assert priced.source == "unknown"
        assert priced.known is False


def test_an_unpriced_model_warning_made_an_error_still_prices_the_call_and_logs_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """With ``filterwarnings = error`` (common in CI) the warning raised out of pricing, the call was
    recorded at $0 with no usage, and no later call of that model said anything."""
    pricing = Pricing(unknown_model_price={"input": 7, "output": 11})
    usage = Usage(input_tokens=1000, output_tokens=100)
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="llmbudget"):
        warnings.simplefilter("error")
        first = pricing.cost(usage, model="no-such-model-c")
        gap = Pricing().cost(Usage(input_tokens=10, output_tokens=10, input_audio_tokens=5), model="gpt-4o")
    assert first.usd == (1000 * Decimal(7) + 100 * Decimal(11)) / 10**6 and first.source == "unknown"
    assert gap.usd > 0
    said = [r.getMessage() for r in caplog.records]
    assert any("no price for model 'no-such-model-c'" in m for m in said), said
    assert any("audio" in m for m in said), said


def test_unknown_model_default_price_is_conservative_never_zero() -> None:
    usage = Usage(input_tokens=1000, output_tokens=1000)
    with pytest.warns(UnpricedModelWarning):
        priced = Pricing().cost(usage, model="my-private-model-xyz")
    assert priced.usd == CONSERVATIVE_PRICE.cost(usage) > 0
    # Above what a known frontier model costs for the same usage.
    assert priced.usd > Pricing().cost(usage, model="gpt-4o").usd


def test_missing_model_is_unknown() -> None:
    with pytest.warns(UnpricedModelWarning):
        priced = Pricing().cost(Usage(input_tokens=10, output_tokens=10), model=None)
    assert not priced.known
    assert priced.usd > 0


def test_require_raises_naming_the_model() -> None:
    pricing = Pricing({"my-self-hosted": {"input": 0, "output": 0}})
    pricing.require("gpt-4o-mini")
    pricing.require("my-self-hosted")
    with pytest.raises(UnknownModelError, match="'totally-unknown-model'") as raised:
        pricing.require("totally-unknown-model", "http://127.0.0.1:9/v1")
    assert "http://127.0.0.1:9/v1" in str(raised.value)
    assert isinstance(raised.value, LookupError)


def test_snapshot_is_dated_and_names_its_source() -> None:
    snapshot = Pricing().snapshot
    assert snapshot.source == f"genai-prices {version('genai-prices')}"
    assert snapshot.as_of == date.today().isoformat()
    date.fromisoformat(snapshot.as_of)


# -- the rate of each model is looked up once a day ----------------------------------------------


def test_remembered_rates_are_the_ones_looked_up() -> None:
    from llmbudget import pricing as module

    pricing = Pricing({"gemma-*": {"input": 1, "output": 2}, "http://127.0.0.1:8080/v1": {"input": 3, "output": 4}})
    cases = [("gpt-4o-mini", "", None), ("gpt-4o-mini", "https://api.openai.com/v1", "flex"),
             ("gemma-3", "http://127.0.0.1:8080/v1", None), ("llama", "http://127.0.0.1:8080/v1/", None),
             ("no-such-model-xyz", "", None)]
    for model, url, tier in cases * 2:
        override = pricing._override(model, url)
        fresh = override if override is not None else module._genai_rate(model, module._provider_url(url), tier,
                                                                          date.today())
        assert pricing.rate(model, url, service_tier=tier) is fresh


def test_remembered_rates_follow_the_local_date(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from llmbudget import pricing as module

    days: list[date] = []
    real = module._genai_rate

    def rate_on(model: str, provider_url: str | None, service_tier: str | None, day: date) -> object:
        days.append(day)
        return real(model, provider_url, service_tier, day)

    monkeypatch.setattr(module, "_genai_rate", rate_on)
    pricing = Pricing()
    today = date.today()
    pricing.rate("gpt-4o")
    pricing.rate("gpt-4o")
    assert days == [today]
    tomorrow = module.time.time() + 86_400
    monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: tomorrow, tzname=module.time.tzname))
    monkeypatch.setattr(module, "date", type("Tomorrow", (date,), {
        "today": classmethod(lambda cls: date.fromtimestamp(tomorrow))}))
    pricing.rate("gpt-4o")
    pricing.rate("gpt-4o")
    assert days == [today, date.fromtimestamp(tomorrow)]


@pytest.mark.skipif(not hasattr(__import__("time"), "tzset"), reason="time.tzset is POSIX only")
def test_the_remembered_day_follows_a_change_of_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as clock

    from llmbudget import pricing as module

    try:
        for zone in ("Etc/GMT+12", "Etc/GMT-14", "UTC"):  # 26 hours apart: the local dates differ
            monkeypatch.setenv("TZ", zone)
            clock.tzset()
            assert module._today() == date.today(), zone
    finally:
        monkeypatch.undo()
        clock.tzset()


def test_the_unknown_price_warning_prints_once_and_names_the_right_table(tmp_path) -> None:
    import subprocess
    import sys

    code = ("from llmbudget.pricing import Pricing\nfrom llmbudget.calls import Usage\n"
            "Pricing().cost(Usage(input_tokens=10), model='my-own-model')\n"
            "Pricing().cost(Usage(input_tokens=10), model='my-own-model')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no price for model 'my-own-model'") == 1, done.stderr
    assert "[prices] in the policy the app uses (llmbudget.toml" in done.stderr
    assert "[tool.llmbudget.prices] in pyproject.toml" in done.stderr and "llmbudget.configure(prices=" in done.stderr


def test_an_override_prices_one_hour_cache_writes_and_web_searches() -> None:
    # 1h writes were charged at the 5-minute rate (1.25x), web searches at $0
    price = Price(Decimal(3), Decimal(15), cache_write=Decimal("3.75"))
    usage = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000)
    assert price.cost(usage) == Decimal(6)  # twice the input price
    assert price.cost(Usage(output_tokens=1_000_000, web_searches=3)) == Decimal("15.03")
    assert CONSERVATIVE_PRICE.cost(Usage(web_searches=1)) == Decimal("0.01")


def test_a_long_context_claude_call_is_priced_at_anthropics_long_context_rates() -> None:
    # genai-prices lists Sonnet 4's base rates only: 150k input, 60k cache reads and 1k output were priced at
    # $0.4830 with a warning whose advice (an override) could not price them either. Anthropic charges twice the
    # input rates (reads and writes too) and 1.5x the output rate past 200,000 input tokens.
    pricing = Pricing()
    usage = Usage(input_tokens=210_000, cached_input_tokens=60_000, output_tokens=1_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left to warn about
        assert pricing.cost(usage, model="claude-sonnet-4-20250514").usd == Decimal("0.9585")  # 150k*6 + 60k*0.6 + 1k*22.5
        # the same as genai-prices' own tiers for Sonnet 4.5, and the base rates at or under 200,000 tokens
        assert pricing.cost(usage, model="claude-sonnet-4-5").usd == Decimal("0.9585")
        assert pricing.cost(usage.replace(input_tokens=200_000, cached_input_tokens=0),
                            model="claude-sonnet-4").usd == Decimal("0.615")
        # Bedrock's ids of the same model, at Bedrock's endpoint
        bedrock = "https://bedrock-runtime.us-east-1.amazonaws.com"
        for model in ("anthropic.claude-sonnet-4-20250514-v1:0", "us.anthropic.claude-sonnet-4-20250514-v1:0",
                      "us-gov.anthropic.claude-sonnet-4-20250514-v1:0"):
            priced = pricing.cost(usage, model=model, base_url=bedrock)
            assert priced.known and priced.usd == Decimal("0.9585"), model


def test_audio_a_price_cannot_say_is_said_once_and_an_override_can_price_it() -> None:
    # audio tokens were priced as text, and the warning's remedy (an override) had no audio price either
    usage = Usage(input_tokens=1_000, input_audio_tokens=400, output_tokens=500, output_audio_tokens=300)
    pricing = Pricing()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pricing.cost(usage, model="gpt-4o-mini")
        pricing.cost(usage, model="gpt-4o-mini")
    assert len(seen) == 1 and "lists no audio price" in str(seen[0].message)
    assert "input_audio and output_audio" in str(seen[0].message)
    assert issubclass(seen[0].category, UnpricedModelWarning)
    text_only = Pricing({"gpt-4o-audio-preview": {"input": 2.5, "output": 10}})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert text_only.cost(usage, model="gpt-4o-audio-preview").usd == Decimal("0.0075")
    assert len(seen) == 1 and "override" in str(seen[0].message)  # it was silent
    audio = Pricing({"gpt-4o-audio-preview": {"input": 2.5, "output": 10, "input_audio": 40, "output_audio": 80}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # 600 x 2.5 + 400 x 40 + 200 x 10 + 300 x 80 per 1M
        assert audio.cost(usage, model="gpt-4o-audio-preview").usd == Decimal("0.0435")


def test_web_searches_cost_their_fee_on_every_model_and_a_deferred_discount_leaves_it_whole() -> None:
    # a fallback flex / batch discount halved the search fee too; a model whose genai-prices entry lists no
    # search price ran them for free, while an override charged $0.01 each
    pricing = Pricing()
    usage = Usage(input_tokens=1_000, output_tokens=100, web_searches=10)
    tokens_only = pricing.cost(usage.replace(web_searches=0, service_tier="batch"), model="claude-sonnet-4-20250514")
    batch = pricing.cost(usage.replace(service_tier="batch"), model="claude-sonnet-4-20250514")
    assert batch.usd == tokens_only.usd + Decimal("0.10") == Decimal("0.10225")
    nano = pricing.cost(Usage(input_tokens=10, web_searches=100), model="gpt-4.1-nano")
    assert nano.usd == pricing.cost(Usage(input_tokens=10), model="gpt-4.1-nano").usd + Decimal(1)


def test_cached_tokens_beyond_the_text_tokens_of_an_audio_call_are_priced_not_refused() -> None:
    """OpenAI reports cached tokens without their audio share: 300 cached of 1,000 input, 800 of them audio, made
    genai-prices refuse the usage (all cached counted as text, beyond the 200 text tokens) and the call was recorded
    at an estimate. The 100 cached beyond the text are audio, the dearest reading the counts allow."""
    usage = Usage(input_tokens=1000, cached_input_tokens=300, input_audio_tokens=800, output_tokens=500,
                  output_audio_tokens=400)
    priced = Pricing().cost(usage, model="gpt-realtime-mini")
    assert priced.known
    dearest = genai_prices.calc_price(GenaiUsage(input_tokens=1000, cache_read_tokens=300, cache_audio_read_tokens=100,
                                                 input_audio_tokens=800, output_tokens=500, output_audio_tokens=400),
                                      "gpt-realtime-mini", provider_id="openai").total_price
    assert priced.usd == Decimal(dearest)
