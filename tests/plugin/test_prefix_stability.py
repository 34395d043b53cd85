"""The prefix-stability check: a suite whose system prompt starts with a timestamp is told so.

The inner suites call the real local LLM server (llama-cpp-python, Gemma 3 270M) through the
openai SDK, as a team's tests would; the report names where the prefixes differ.
"""

from __future__ import annotations

import json
from decimal import Decimal

import openai  # noqa: F401  (imported here so pytester's in-process runs share one copy)
import pytest

from llmbudget.calls import Usage
from llmbudget.prefix import PrefixWatch, excerpt, prefix_text, unstable_prefixes
from llmbudget.pricing import Pricing
from llmbudget.tokens import estimate_text

INSTRUCTIONS = ("You are the support assistant of a bicycle shop. Answer in one short sentence. Be polite, never "
                "promise delivery dates, and point customers to the store page for prices. ") * 3

SUITE = '''
import datetime, itertools, openai, pytest

INSTRUCTIONS = {instructions!r}
_clock = itertools.count()

def system_prompt():
    {system}

@pytest.fixture
def client():
    with openai.OpenAI(base_url={url!r}, api_key="sk-test", max_retries=0) as c:
        yield c

@pytest.mark.parametrize("question", ["Do you sell helmets?", "Can I rent a bike?", "Do you fix flat tyres?",
                                      "Are you open on Sunday?"])
def test_support(client, question):
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=1, temperature=0, messages=[
        {{"role": "system", "content": system_prompt()}},
        {{"role": "user", "content": question}}])
'''

PLANTED = 'return f"Current time: {datetime.datetime(2026, 12, 4, 10, 0, next(_clock)).isoformat()}. " + INSTRUCTIONS'
STABLE = "return INSTRUCTIONS"


def run(pytester: pytest.Pytester, url: str, system: str) -> tuple[pytest.RunResult, dict]:
    pytester.makepyfile(test_support=SUITE.format(instructions=INSTRUCTIONS, system=system, url=url))
    out = pytester.path / "spend.json"
    result = pytester.runpytest("-p", "no:cacheprovider", "--llm-budget", "--llm-budget-json", str(out))
    return result, json.loads(out.read_text())


def test_a_planted_timestamp_is_found_and_named(pytester, llm_server):
    result, doc = run(pytester, llm_server, PLANTED)
    result.assert_outcomes(passed=4)
    [finding] = doc["unstable_prefixes"]
    assert finding["calls"] == 4 and finding["distinct_prefixes"] == 4
    assert finding["model"] == "gpt-4o-mini" and finding["endpoint"] == "chat.completions"
    # the prefix is "system: Current time: 2026-12-04T10:00:0N. You are..."; it first differs at the seconds
    assert finding["differs_at"] == len("system: Current time: 2026-12-04T10:00:0")
    assert finding["excerpt"].startswith("…time: 2026-12-04T10:00:0⟨⟩")
    assert len(finding["excerpt"]) <= 2 * 24 + 4  # a fixed-length window, never the whole prompt
    assert len(finding["tests"]) == 4
    out = result.stdout.str()
    assert "unstable prompt prefixes: 1 group(s)" in out
    assert "gpt-4o-mini: 4 different prefixes in 4 calls, first differing at character 40" in out


def test_a_stable_prefix_is_not_reported(pytester, llm_server):
    result, doc = run(pytester, llm_server, STABLE)
    result.assert_outcomes(passed=4)
    assert doc["unstable_prefixes"] == []
    assert "unstable prompt prefixes" not in result.stdout.str()


def test_the_saving_is_priced_at_the_cached_input_rate():
    """A long prefix (over the 1,024-token minimum) that differs on every call: fixing it would let all
    but the first call read it from the cache, at the model's cached-input price."""
    watch = PrefixWatch()
    rows = []
    long_instructions = "Follow the policy below.\n" + "Rule: answer briefly and politely. " * 160
    for second in range(5):
        body = {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": f"request id r-{second:04d}\n" + long_instructions},
            {"role": "user", "content": "hi"}]}
        prefix = watch.observe("chat.completions", "gpt-4o-mini", body)
        assert prefix is not None
        rows.append({**prefix, "endpoint": "chat.completions", "model": "gpt-4o-mini", "base_url": "", "test_id": None})
    pricing = Pricing()
    [finding] = unstable_prefixes(rows, pricing)
    assert unstable_prefixes([{**row, "tokens": None} for row in rows], pricing)[0].prefix_tokens == \
        len(prefix_text("chat.completions", body)) // 4  # a row without the estimate (null, or written before it)
    tokens = estimate_text(prefix_text("chat.completions", body))
    assert finding.prefix_tokens == tokens >= 1024 and abs(tokens - len(prefix_text("chat.completions", body)) / 4) < 1
    per_call = (pricing.cost(Usage(input_tokens=tokens), model="gpt-4o-mini").usd
                - pricing.cost(Usage(input_tokens=tokens, cached_input_tokens=tokens), model="gpt-4o-mini").usd)
    assert finding.saving_usd == per_call * 4 > 0


def test_tools_in_another_order_and_a_user_name_are_found():
    watch = PrefixWatch()
    tools = [{"type": "function", "function": {"name": name, "description": "x" * 80}} for name in ("a", "b", "c")]
    first = watch.observe("messages", "claude-haiku-4-5", {"tools": tools, "system": "Be brief. " * 30,
                                                           "messages": [{"role": "user", "content": "hi"}]})
    moved = watch.observe("messages", "claude-haiku-4-5", {"tools": tools[::-1], "system": "Be brief. " * 30,
                                                           "messages": [{"role": "user", "content": "hi"}]})
    assert first is not None and moved is not None and first["group"] == moved["group"]
    assert moved["differs_at"] == len('[{"type":"function","function":{"name":"')
    names = [watch.observe("chat.completions", "gpt-4o", {"messages": [
        {"role": "system", "content": f"The user is {name}. " + "Answer with care. " * 20},
        {"role": "user", "content": "hello"}]}) for name in ("Ann", "Bob")]
    assert names[1] is not None and names[1]["differs_at"] == len("system: The user is ")


def test_a_difference_past_the_characters_kept_is_placed_within_its_chunk():
    # only the first 16,384 characters of a group's first prefix are kept: a difference at 18,504 was reported
    # at 16,384, with an excerpt of text every call shares
    watch = PrefixWatch()
    rules = "".join(f"Rule {i:03d}: be kind and precise. " for i in range(700))
    rows = []
    for second in range(3):
        body = {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": rules[:18_500] + f" now 10:00:0{second} " + rules[18_500:]},
            {"role": "user", "content": "hi"}]}
        prefix = watch.observe("chat.completions", "gpt-4o-mini", body)
        rows.append({**prefix, "endpoint": "chat.completions", "model": "gpt-4o-mini", "base_url": "", "test_id": None})
    [finding] = unstable_prefixes(rows, Pricing())
    truth = len("system: ") + 18_500 + len(" now 10:00:0")
    assert finding.within and finding.differs_at <= truth < finding.differs_at + finding.within
    assert f"within characters {finding.differs_at}-" in finding.line()


def test_an_anthropic_prefix_under_the_models_minimum_promises_no_saving():
    # Haiku 4.5 caches nothing under 4,096 tokens: a 2,100-token prefix was promised a saving
    watch = PrefixWatch()
    rows = []
    for second in range(3):
        body = {"model": "claude-haiku-4-5", "max_tokens": 10, "system": f"id {second} " + "Be kind. " * 940,
                "messages": [{"role": "user", "content": "hi"}]}
        prefix = watch.observe("messages", "claude-haiku-4-5", body)
        rows.append({**prefix, "endpoint": "messages", "model": "claude-haiku-4-5", "base_url": "", "test_id": None})
    [finding] = unstable_prefixes(rows, Pricing())
    assert 1024 < finding.prefix_tokens < 4096 and finding.saving_usd == 0


def test_excerpt_is_a_fixed_window_around_the_difference():
    text = "a" * 100 + "XYZ" + "b" * 100
    assert excerpt(text, 100) == "…" + "a" * 24 + "⟨⟩" + "XYZ" + "b" * 21 + "…"
    assert excerpt("short", 2) == "sh⟨⟩ort"


def test_one_off_prefixes_and_short_ones_are_not_findings():
    watch = PrefixWatch()
    assert watch.observe("chat.completions", "m", {"messages": [{"role": "user", "content": "hi"}]}) is None
    assert watch.observe("embeddings", "m", {"input": "x" * 500}) is None
    rows = []
    for i in range(4):  # the same prefix three times, another once: it mostly matches
        content = ("Stable instructions. " * 20) if i < 3 else ("Other instructions! " * 20)
        prefix = watch.observe("chat.completions", "gpt-4o", {"messages": [
            {"role": "system", "content": content}, {"role": "user", "content": f"q{i}"}]})
        rows.append({**prefix, "endpoint": "chat.completions", "model": "gpt-4o", "base_url": "", "test_id": None})
    assert unstable_prefixes(rows, Pricing()) == []


ANTHROPIC_SUITE = '''
import anthropic, pytest

SYSTEM = "You are the support assistant of a bicycle shop. Answer in one short sentence. " * 4

@pytest.fixture
def client():
    with anthropic.Anthropic(base_url={url!r}, api_key="sk-test", max_retries=0) as c:
        yield c

@pytest.mark.parametrize("n", range(3))
def test_support(client, n):
    client.messages.create(model="claude-haiku-4-5", max_tokens=8, stop_sequences=["\\\\n"],
                           system=f"Request {{n}}. " + SYSTEM, messages=[{{"role": "user", "content": "Helmets?"}}],
                           extra_body={{"temperature": 0}})

def test_again(client):
    for _ in range(2):
        client.messages.create(model="claude-haiku-4-5", max_tokens=8, stop_sequences=["\\\\n"], system=SYSTEM + "Be kind.",
                               messages=[{{"role": "user", "content": "Bells?"}}], extra_body={{"temperature": 0}})
'''


def test_anthropic_calls_are_priced_exactly_with_cache_reads_and_checked_for_stability(pytester, messages_server):
    """pytest --llm-budget on a suite using the anthropic SDK against the real Messages server: every call
    priced from its usage (cache reads at the read rate), and the request number planted at the top of the
    system prompt found."""
    import llmbudget

    pytester.makepyfile(test_support=ANTHROPIC_SUITE.format(url=messages_server))
    out = pytester.path / "spend.json"
    engine_before = llmbudget.get_engine()
    result = pytester.runpytest("-p", "no:cacheprovider", "--llm-budget", "--llm-budget-json", str(out))
    assert llmbudget.get_engine() is engine_before
    result.assert_outcomes(passed=4)
    doc = json.loads(out.read_text())
    again = doc["tests"]["test_support.py::test_again"]
    assert again["calls"] == 2 and again["cached_input_tokens"] > 0  # the second call read the server's cache
    usage = Usage(input_tokens=again["input_tokens"], cached_input_tokens=again["cached_input_tokens"],
                  output_tokens=again["output_tokens"])
    assert Decimal(again["cost_usd_exact"]) == Pricing().cost(usage, model="claude-haiku-4-5").usd > 0
    assert again["prompt_cache_saved_usd"] > 0
    assert doc["models"]["claude-haiku-4-5"]["calls"] == 5
    [finding] = doc["unstable_prefixes"]
    assert finding["endpoint"] == "messages" and finding["differs_at"] == len("Request ")
    assert finding["calls"] == 3 and finding["distinct_prefixes"] == 3
