"""pytest --llm-budget, run on inner test suites that replay cassettes recorded from a real server."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import openai  # noqa: F401  (imported here so pytester's in-process runs share one copy)
import pytest
import vcr  # noqa: F401
import yaml  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CASSETTES = ROOT / "fixtures" / "cassettes"

CONFTEST = f'''
import openai, pytest, vcr
_vcr = vcr.VCR(cassette_library_dir={str(CASSETTES)!r}, record_mode="none",
               match_on=("method", "scheme", "host", "port", "path", "query", "body"))

@pytest.fixture
def client():
    with openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test", max_retries=0) as c:
        yield c

@pytest.fixture
def cassette():
    return lambda name: _vcr.use_cassette(name)

def ask(client, question, max_tokens, model="gpt-4o-mini"):
    return client.chat.completions.create(
        model=model, messages=[{{"role": "user", "content": question}}], max_tokens=max_tokens, temperature=0)
'''

TESTS = '''
import threading, pytest
from conftest import ask

def test_capital(client, cassette):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)

def test_two(client, cassette):
    with cassette("chat_two_calls.yaml"):
        ask(client, "What is 2+2?", 8)
        ask(client, "Write a haiku about rain.", 24)

def test_no_calls():
    pass
'''

# gpt-4o-mini: $0.15 / $0.60 per 1M input / output tokens. chat.yaml used 16 in / 16 out;
# chat_two_calls.yaml 16 in / 8 out, then 16 in / 24 out.
CAPITAL = (16 * Decimal("0.15") + 16 * Decimal("0.6")) / 10**6
TWO = (32 * Decimal("0.15") + 32 * Decimal("0.6")) / 10**6


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=TESTS)
    pytester.syspathinsert()
    return pytester


def run_json(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    out = pytester.path / "spend.json"
    result = pytester.runpytest("--llm-budget", "--llm-budget-json", str(out), *args)
    return result, json.loads(out.read_text())


def test_json_report_has_exact_shape_and_costs(suite):
    result, doc = run_json(suite)
    result.assert_outcomes(passed=3)
    assert doc["version"] == 1
    assert doc["prices"]["source"].startswith("genai-prices ") and len(doc["prices"]["as_of"]) == 10
    keys = {"calls", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost_usd"}
    capital = doc["tests"]["test_app.py::test_capital"]
    assert keys | {"outcome"} <= set(capital)
    assert {k: capital[k] for k in keys - {"cost_usd"}} == {
        "calls": 1, "input_tokens": 16, "cached_input_tokens": 0, "output_tokens": 16, "reasoning_tokens": 0}
    assert Decimal(capital["cost_usd_exact"]) == CAPITAL and capital["outcome"] == "passed"
    assert doc["tests"]["test_app.py::test_two"]["calls"] == 2
    assert Decimal(doc["tests"]["test_app.py::test_two"]["cost_usd_exact"]) == TWO
    assert doc["tests"]["test_app.py::test_no_calls"]["calls"] == 0
    assert set(doc["models"]) == {"gpt-4o-mini"} and keys <= set(doc["models"]["gpt-4o-mini"])
    assert Decimal(doc["models"]["gpt-4o-mini"]["cost_usd_exact"]) == CAPITAL + TWO  # every entry has it
    assert doc["outside_tests"]["cost_usd_exact"] == "0"
    assert doc["total"]["calls"] == 3 and Decimal(doc["total"]["cost_usd_exact"]) == CAPITAL + TWO
    assert doc["total"]["cost_usd"] == pytest.approx(float(CAPITAL + TWO))
    result.stdout.fnmatch_lines(["*LLM spend (llmbudget)*", "*test_app.py::test_two*2*32*0*32*", "TOTAL*3*48*",
                                 "prices: genai-prices *, as of *"])


def test_marker_budget_fails_the_test_after_it_ran_with_its_calls_listed(suite):
    suite.makepyfile(test_marked='''
import pytest
from conftest import ask

@pytest.mark.llm_budget(usd=0.00001)
def test_over(client, cassette, tmp_path_factory):
    with cassette("chat_two_calls.yaml"):
        ask(client, "What is 2+2?", 8)
        ask(client, "Write a haiku about rain.", 24)
    open("ran-to-the-end", "w").close()

@pytest.mark.llm_budget(calls=1)
def test_too_many_calls(client, cassette):
    with cassette("chat_two_calls.yaml"):
        ask(client, "What is 2+2?", 8)
        ask(client, "Write a haiku about rain.", 24)

@pytest.mark.llm_budget(usd=1, tokens=1000, calls=5)
def test_within(client, cassette):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
''')
    result = suite.runpytest("--llm-budget", "test_marked.py")
    result.assert_outcomes(passed=1, failed=2)
    assert (suite.path / "ran-to-the-end").exists()
    result.stdout.fnmatch_lines([
        "*test_over exceeded its LLM budget: cost $0.0000* > budget $0.00001*",
        "*chat.completions gpt-4o-mini: 16 in (0 cached) / 8 out tokens, $0.0000072*",
        "*chat.completions gpt-4o-mini: 16 in (0 cached) / 24 out tokens, $0.0000168*",
        "*total: 2 calls, 64 tokens*",
    ])
    result.stdout.fnmatch_lines(["*test_too_many_calls exceeded its LLM budget: calls 2 > budget 1*"])


def test_ini_default_budget_applies_to_unmarked_tests(suite):
    suite.makeini("[pytest]\nllm_budget_tokens = 40\n")
    result = suite.runpytest("--llm-budget")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_two exceeded its LLM budget: tokens 64 > budget 40*"])


def test_run_budget_fails_the_run(suite):
    result = suite.runpytest("--llm-budget=0.00002")
    result.assert_outcomes(passed=3)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*FAILED llmbudget: LLM spend $0.000036* exceeds the run budget $0.00002*"])
    assert suite.runpytest("--llm-budget=0.0001").ret == 0


def test_baseline_compare_fails_on_regression_and_lists_new_tests(suite):
    baseline = suite.path / "baseline.json"
    assert suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline)).ret == 0
    assert suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline)).ret == 0
    # The capital test now makes a second, dearer call; a new test appears.
    suite.makepyfile(test_app=TESTS.replace(
        'ask(client, "What is the capital of France?", 16)',
        'ask(client, "What is the capital of France?", 16)\n    with cassette("chat_two_calls.yaml"):\n'
        '        ask(client, "Write a haiku about rain.", 24)',
    ) + '''
def test_new(client, cassette):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
''')
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline), "--llm-budget-tolerance", "10%")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*not in the baseline (not judged): test_app.py::test_new*",
        # the total compares what both runs have: a new test is listed, not judged, there too
        # exact amounts: rounded, a rise could read "from $0.000156 to $0.000156"
        "*FAILED llmbudget: total LLM cost rose from $0.000036 to $0.0000528 (the tests both runs have, and spend "
        "outside tests) (tolerance 10%)*",
        "*FAILED llmbudget: test_app.py::test_capital: LLM cost rose from $0.000012 to $0.0000288*",
    ])
    assert "test_new: LLM cost rose" not in result.stdout.str()
    # A generous tolerance lets the total and the test through.
    loose = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline), "--llm-budget-tolerance", "200%")
    assert loose.ret == 0
    # A pull request that only adds an LLM test passes (the whole total rose by a third; it failed at 10%).
    suite.makepyfile(test_app=TESTS + """
def test_new(client, cassette):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
""")
    added = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline), "--llm-budget-tolerance", "10%")
    assert added.ret == 0, added.stdout.str()
    added.stdout.fnmatch_lines(["*not in the baseline (not judged): test_app.py::test_new*"])


def test_a_test_run_twice_is_counted_twice_and_a_renamed_one_is_listed(suite):
    """The same test run twice (--keep-duplicates, a rerun plugin) was counted once: a run budget that both runs
    passed let the run through. A test of the baseline that no longer runs (renamed, its id changed) was not
    mentioned: a rename was a silent way round the comparison."""
    once = suite.runpytest("--llm-budget", "test_app.py::test_capital")
    assert once.ret == 0
    twice = suite.runpytest("--llm-budget=0.00002", "--keep-duplicates", "-k", "test_capital", "test_app.py",
                            "test_app.py")
    twice.assert_outcomes(passed=2)
    twice.stdout.fnmatch_lines(["*test_app.py::test_capital*2*$0.000024*"])  # two calls, each run's
    assert twice.ret == 1  # $0.000024 is over the run budget; each run alone ($0.000012) is not
    baseline = suite.path / "baseline.json"
    assert suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline)).ret == 0
    suite.makepyfile(test_app=TESTS.replace("def test_capital(", "def test_capital_city("))
    renamed = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline))
    renamed.stdout.fnmatch_lines(["*not in the baseline (not judged): test_app.py::test_capital_city*",
                                  "*in the baseline, not run (not judged): test_app.py::test_capital"])


def test_verdicts_show_their_tolerance_as_written_and_their_test_names_escaped(suite):
    baseline = suite.path / "baseline.json"
    assert suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline)).ret == 0
    suite.makepyfile(test_app=TESTS.replace(
        'ask(client, "What is the capital of France?", 16)',
        'ask(client, "What is the capital of France?", 16)\n    with cassette("chat_two_calls.yaml"):\n'
        '        ask(client, "Write a haiku about rain.", 24)'))
    for tolerance, shown in (("-0%", "(tolerance 0%)"), ("0.5%", "(tolerance 0.5%)"), ("0.1", "(tolerance 10%)")):
        result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline),
                                 f"--llm-budget-tolerance={tolerance}")
        assert result.ret == 1 and shown in result.stdout.str(), (tolerance, result.stdout.str()[-800:])


def test_a_regression_verdict_writes_a_test_ids_control_characters_as_escapes() -> None:
    """Parametrize ids may hold control characters (with pytest's escaping turned off): a verdict line wrote
    them raw (an ESC colouring the terminal, a CR or newline forging a line)."""
    from decimal import Decimal

    from llmbudget.calls import Counters
    from llmbudget.pricing import Pricing
    from pytest_llmbudget.report import Summary, compare
    from pytest_llmbudget.spend import TestSpend

    nodeid = "test_p.py::test_p[esc\x1b[31mred\rx\ny]"
    spend = TestSpend(calls=1, cost_usd=Decimal("0.0002"))
    summary = Summary(tests={nodeid: spend}, outcomes={}, models={}, total=Counters(), outside=TestSpend(),
                      snapshot=Pricing().snapshot, unpriced=[])
    verdicts, _ = compare(summary, {"tests": {nodeid: {"cost_usd": 0.0001}}}, Decimal(0))
    (verdict,) = [line for line in verdicts if line.startswith("test_p.py")]
    assert not any(c in verdict for c in "\x1b\r\n") and "esc\\x1b[31mred\\rx\\ny" in verdict


def test_missing_baseline_is_a_usage_error(suite):
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", "nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no baseline at nope.json; create one with --llm-budget-save nope.json*"])


@pytest.mark.parametrize("option", ["--llm-budget-json", "--llm-budget-save"])
def test_a_report_that_cannot_be_written_fails_the_run_in_one_line(suite, option):
    # A path under a file: the write raised out of pytest_sessionfinish (an INTERNALERROR traceback).
    (suite.path / "a_file").write_text("", encoding="utf-8")
    result = suite.runpytest("--llm-budget", option, "a_file/report.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"*{option}: could not write a_file/report.json (*"])


def test_github_step_summary_and_junit_properties(suite, monkeypatch):
    summary = suite.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = suite.path / "junit.xml"
    assert suite.runpytest("--llm-budget", f"--junitxml={junit}").ret == 0
    text = summary.read_text()
    assert "## LLM spend (llmbudget)" in text and "| `test_app.py::test_two` | 2 | 32 | 0 | 32 | $0.000024 |" in text
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_two"].iter("property")}
    assert Decimal(props["llm_cost_usd"]) == TWO and props["llm_calls"] == "2" and props["llm_output_tokens"] == "32"


def test_xdist_workers_aggregate_on_the_controller(suite):
    serial = run_json(suite)[1]
    out = suite.path / "xdist.json"
    result = suite.runpytest_subprocess("-n", "2", "--llm-budget", "--llm-budget-json", str(out))
    result.assert_outcomes(passed=3)
    parallel = json.loads(out.read_text())
    assert parallel["tests"] == serial["tests"] and parallel["total"] == serial["total"]


def test_calls_from_threads_and_event_loops_count_for_the_test(suite):
    suite.makepyfile(test_threads='''
import asyncio, threading
from concurrent.futures import ThreadPoolExecutor
import openai
from conftest import ask

def test_thread(client, cassette):
    with cassette("chat_two_calls.yaml"):
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda a: ask(client, *a), [("What is 2+2?", 8), ("Write a haiku about rain.", 24)]))

def test_loop(cassette):
    async def main():
        async with openai.AsyncOpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test") as c:
            await c.chat.completions.create(model="gpt-4o-mini", temperature=0, max_tokens=16,
                messages=[{"role": "user", "content": "What is the capital of France?"}])
    with cassette("chat.yaml"):
        thread = threading.Thread(target=asyncio.run, args=(main(),))
        thread.start()
        thread.join()
''')
    out = suite.path / "t.json"
    result = suite.runpytest("--llm-budget", "--llm-budget-json", str(out), "test_threads.py")
    result.assert_outcomes(passed=2)
    tests = json.loads(out.read_text())["tests"]
    assert tests["test_threads.py::test_thread"]["calls"] == 2
    assert Decimal(tests["test_threads.py::test_thread"]["cost_usd_exact"]) == TWO
    assert Decimal(tests["test_threads.py::test_loop"]["cost_usd_exact"]) == CAPITAL


def test_llm_spend_fixture_is_live(suite):
    suite.makepyfile(test_fixture='''
from decimal import Decimal
from conftest import ask

def test_live(client, cassette, llm_spend):
    assert llm_spend.calls == 0
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
    assert llm_spend.calls == 1 and llm_spend.output_tokens == 16
    assert llm_spend.cost_usd == Decimal("0.000012")
''')
    suite.runpytest("--llm-budget", "test_fixture.py").assert_outcomes(passed=1)
    suite.runpytest("test_fixture.py").assert_outcomes(passed=1)  # works without the flag too
    # the other spelling keeps a path a path too ("--llm-budget must be an amount in USD, got 'test_fixture.py'")
    suite.runpytest("--llmbudget", "test_fixture.py").assert_outcomes(passed=1)
    result = suite.runpytest("--llmbudget=lots", "test_fixture.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmbudget must be an amount in USD*lots*"])


def test_falls_back_to_llmbudget_when_another_plugin_owns_the_flag(suite):
    suite.makepyfile(other_plugin='''
def pytest_addoption(parser):
    parser.addoption("--llm-budget", action="store", default=None)
''')
    result = suite.runpytest("-p", "other_plugin", "--llmbudget")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*--llm-budget belongs to another installed plugin; use --llmbudget*", "TOTAL*3*"])


def test_unknown_models_are_flagged_not_free(suite):
    suite.makepyfile(test_local='''
from conftest import ask

def test_local(client, cassette):
    with cassette("chat_local_model.yaml"):
        ask(client, "What is the capital of France?", 16, model="gemma-3-270m-q4_k_m")
''')
    result, doc = run_json(suite, "test_local.py")
    assert doc["unpriced_models"] == ["gemma-3-270m-q4_k_m"]
    assert doc["total"]["cost_usd"] > 0
    result.stdout.fnmatch_lines(["*no price for model 'gemma-3-270m-q4_k_m'*"])
    suite.makefile(".toml", llmbudget='[prices]\n"gemma-3-*" = { input = 1, output = 2 }\n')
    doc = run_json(suite, "test_local.py")[1]
    assert doc["unpriced_models"] == [] and Decimal(doc["total"]["cost_usd_exact"]) == Decimal(48) / 10**6


def test_bad_config_is_a_clear_usage_error(suite):
    suite.makefile(".toml", llmbudget='[prices]\n"gemma" = { input = 1 }\n')
    result = suite.runpytest("--llm-budget")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llmbudget.toml*both 'input' and 'output'*"])
    # [cache] too, which the tests do not open (ini llm_budget_cache off): a typo there was let through
    suite.makefile(".toml", llmbudget='[cache]\nsemantc = true\n')
    result = suite.runpytest("--llm-budget")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llmbudget.toml: cache: unknown keys ?'semantc'?*"])
    suite.makefile(".toml", llmbudget='[cache]\nsemantic = true\npath = "never-opened"\n')
    assert suite.runpytest("--llm-budget").ret == 0 and not (suite.path / "never-opened").exists()


# -- the sharp edges a newcomer hit (issue 13) ---------------------------------------------------------------


@pytest.mark.parametrize(("given", "ok"), [("10", False), ("1.5", False), ("0.1", True), ("10%", True), ("1", False),
                                           ("100%", True), ("-5%", False), ("NaN", False),
                                           ("1e99999999%", False)])  # (a decimal.Overflow: INTERNALERROR)
def test_tolerance_a_bare_number_of_1_or_more_is_refused(suite, given, ok):
    # "1" may mean 1% or 100% (a doubled cost passed): it is refused like "10"
    baseline = suite.path / "base.json"
    suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline))
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline), "--llm-budget-tolerance", given)
    if ok:
        assert result.ret == 0
    else:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--llm-budget-tolerance*"])
        if given == "10":
            result.stderr.fnmatch_lines(["*write 10% for 10 percent*"])


def test_a_failed_budget_gate_is_in_the_final_summary_line(suite):
    result = suite.runpytest("--llm-budget=0.000001")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    last = result.stdout.lines[-1]
    assert "3 passed" in last and "1 LLM budget failed" in last, last


def test_ini_budgets_without_the_plugin_warn_that_nothing_enforces_them(suite):
    """A budget for every test in the ini, run without the flag, was checked by nothing and said nothing."""
    suite.makeini("[pytest]\nllm_budget_usd = 0.01\nllm_budget_calls = 3\n")
    result = suite.runpytest("-W", "default")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*the ini sets llm_budget_usd, llm_budget_calls but --llm-budget is off*"])
    assert "the ini sets" not in suite.runpytest("--llm-budget").stdout.str()


def test_markers_are_checked_without_the_plugin_and_warn_that_nothing_enforces_them(suite):
    suite.makepyfile(test_marked='''
import pytest

@pytest.mark.llm_budget(usd=0.01)
def test_marked():
    pass
''')
    result = suite.runpytest("test_marked.py", "-W", "default")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 test(s) carry @pytest.mark.llm_budget but --llm-budget is off*"])
    quiet = suite.runpytest("test_marked.py", "--llm-budget")
    assert "carry @pytest.mark.llm_budget" not in quiet.stdout.str()
    suite.makepyfile(test_marked='''
import pytest

@pytest.mark.llm_budget(dollars=0.01)
def test_misspelled():
    pass
''')
    for args in ((), ("--llm-budget",)):
        result = suite.runpytest("test_marked.py", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*llm_budget got unknown limits*dollars*; expected usd, tokens or calls*"])


ANTHROPIC_TESTS = f'''
import anthropic, vcr
_vcr = vcr.VCR(cassette_library_dir={str(CASSETTES)!r}, record_mode="none",
               match_on=("method", "scheme", "host", "port", "path", "query", "body"))
SYSTEM = "You answer questions about a bicycle shop, in one short line. " * 5
ASK = {{"max_tokens": 16, "stop_sequences": ["\\n"], "extra_body": {{"temperature": 0}}}}

def test_bells():
    client = anthropic.Anthropic(base_url="http://127.0.0.1:8766", api_key="sk-test", max_retries=0)
    with _vcr.use_cassette("messages.yaml"):
        for _ in range(2):
            client.messages.create(model="claude-haiku-4-5", system=SYSTEM,
                                   messages=[{{"role": "user", "content": "Do you sell bells?"}}], **ASK)

def test_stream():
    client = anthropic.Anthropic(base_url="http://127.0.0.1:8766", api_key="sk-test", max_retries=0)
    with _vcr.use_cassette("messages_stream.yaml"):
        with client.messages.stream(model="claude-haiku-4-5", messages=[{{"role": "user", "content": "Say hi"}}],
                                    **ASK) as stream:
            stream.get_final_message()
'''


def test_anthropic_cassettes_are_priced_exactly_offline(pytester):
    """Cassettes recorded from the real Messages server (the second call read 75 prompt tokens from the
    server's cache): the plugin prices each call from its usage, cache reads at claude-haiku-4-5's read rate."""
    import anthropic  # noqa: F401  (one copy for the in-process run)

    interactions = [yaml.safe_load((CASSETTES / name).read_text())["interactions"]
                    for name in ("messages.yaml", "messages_stream.yaml")]
    bodies = [json.loads(i["response"]["body"]["string"]) for i in interactions[0]]
    pytester.makepyfile(test_claude=ANTHROPIC_TESTS)
    result, doc = run_json(pytester)
    result.assert_outcomes(passed=2)
    bells = doc["tests"]["test_claude.py::test_bells"]
    read = sum(body["usage"]["cache_read_input_tokens"] for body in bodies)
    plain = sum(body["usage"]["input_tokens"] for body in bodies)
    output = sum(body["usage"]["output_tokens"] for body in bodies)
    assert read > 0 and bells["cached_input_tokens"] == read and bells["input_tokens"] == plain + read
    # claude-haiku-4-5: $1 input, $0.10 cache read, $5 output per 1M tokens
    assert Decimal(bells["cost_usd_exact"]) == (plain * Decimal(1) + read * Decimal("0.1") + output * 5) / 10**6
    assert bells["prompt_cache_saved_usd"] == pytest.approx(float(read * Decimal("0.9") / 10**6))
    assert doc["tests"]["test_claude.py::test_stream"]["calls"] == 1
    assert doc["tests"]["test_claude.py::test_stream"]["output_tokens"] > 0


# -- found by a review of the plugin (this release) ---------------------------------------------------------


def test_spend_in_a_fixtures_teardown_counts_against_the_test(suite):
    suite.makepyfile(test_app='''
import pytest
from conftest import ask

@pytest.fixture
def spends_after(client, cassette):
    yield
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)

@pytest.mark.llm_budget(calls=0)
def test_quiet(spends_after):
    pass
''')
    result = suite.runpytest("--llm-budget")
    result.assert_outcomes(passed=1, errors=1)  # passed its call, failed its teardown
    result.stdout.fnmatch_lines(["*test_quiet exceeded its LLM budget: calls 1 > budget 0*"])


def test_module_class_and_function_markers_merge_limit_by_limit(suite):
    suite.makepyfile(test_app='''
import pytest
from conftest import ask

pytestmark = pytest.mark.llm_budget(usd=0.000001)

@pytest.mark.llm_budget(calls=5)
def test_marked(client, cassette):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
''')
    result = suite.runpytest("--llm-budget")
    result.assert_outcomes(failed=1)  # the module's usd limit held beside the function's calls limit
    result.stdout.fnmatch_lines(["*exceeded its LLM budget: cost $0.000012 > budget $0.000001*"])


def test_verdicts_show_tiny_amounts_in_plain_digits(suite):
    suite.makepyfile(test_app='''
import pytest
from conftest import ask

@pytest.mark.llm_budget(usd=0.0000001)
def test_marked(client, cassette):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
''')
    result = suite.runpytest("--llm-budget=0.0000001")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*exceeded its LLM budget: cost $0.000012 > budget $0.0000001*",
                                 "*exceeds the run budget $0.0000001*"])
    assert "E-7" not in result.stdout.str()  # Decimal's str: $1E-7


def test_subtests_are_not_judged_one_by_one(suite):
    suite.makepyfile(test_app='''
import pytest
from conftest import ask

@pytest.mark.llm_budget(calls=0)
def test_many(client, cassette, subtests):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
    for i in range(3):
        with subtests.test(i=i):
            pass
''')
    result = suite.runpytest("--llm-budget")
    assert result.parseoutcomes().get("failed") == 1  # one failure for one overspend (was 4: each subtest too)
    assert "SUBFAIL" not in result.stdout.str()


def test_xdist_workers_spend_outside_tests_counts_for_the_run(suite):
    suite.makepyfile(test_app='''
import openai
from conftest import ask, _vcr

with openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test", max_retries=0) as c, \\
        _vcr.use_cassette("chat.yaml"):
    ask(c, "What is the capital of France?", 16)  # at import, on every worker that collects the module

def test_a():
    pass

def test_b():
    pass
''')
    out = suite.path / "x.json"
    result = suite.runpytest_subprocess("-n", "2", "--llm-budget=0.000001", "--llm-budget-json", str(out))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*exceeds the run budget $0.000001*"])
    doc = json.loads(out.read_text())
    assert doc["outside_tests"]["calls"] == 2 and doc["total"]["calls"] == 2  # one import per worker


def test_collect_only_leaves_the_baseline_as_it_was(suite):
    baseline = suite.path / "baseline.json"
    assert suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline)).ret == 0
    saved = baseline.read_text()
    result = suite.runpytest("--co", "--llm-budget", "--llm-budget-save", str(baseline))
    assert result.ret == 0 and baseline.read_text() == saved
    result.stdout.fnmatch_lines(["*--llm-budget-save: */baseline.json not written: no test ran*"])


# "1e999999999" passed as finite, and summing it crashed the run's end with decimal.Overflow
@pytest.mark.parametrize("cost", ["null", "NaN", "-1", '"lots"', '"1e999999999"', "1e300"])
def test_a_baseline_with_a_bad_cost_is_a_usage_error_before_the_tests(suite, cost):
    baseline = suite.path / "baseline.json"
    assert suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline)).ret == 0
    doc = json.loads(baseline.read_text())
    doc["tests"]["test_app.py::test_capital"] = {"cost_usd": "COST"}
    baseline.write_text(json.dumps(doc).replace('"COST"', cost))
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline.json is not a llmbudget baseline: tests?'test_app.py::test_capital'?: "
                                 "cost_usd is *"])


def test_a_baseline_nested_too_deeply_is_a_usage_error_not_an_internal_error(suite):
    baseline = suite.path / "baseline.json"
    baseline.write_text("[" * 100_000)
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline))
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str()
    result.stderr.fnmatch_lines(["*baseline.json is not a llmbudget baseline: its JSON is nested too deeply*"])


@pytest.mark.parametrize("flag", [["--llm-budget"], []])  # checked with or without it, as README says
@pytest.mark.parametrize(("where", "value"), [("marker", 'tokens="lots"'), ("marker", "calls=-1"),
                                              ("marker", "calls=True"), ("ini", "llm_budget_tokens = 5k")])
def test_limits_that_are_not_numbers_are_usage_errors(suite, where, value, flag):
    if where == "marker":
        suite.makepyfile(test_app=f'''
import pytest

@pytest.mark.llm_budget({value})
def test_x():
    pass
''')
    else:
        suite.makeini(f"[pytest]\n{value}\n")
    result = suite.runpytest(*flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str()
    result.stderr.fnmatch_lines(["*expected a whole number of*"])


def test_a_bad_ini_tolerance_is_named_as_the_ini_option(suite):
    suite.makeini("[pytest]\nllm_budget_tolerance = lots\n")
    result = suite.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini llm_budget_tolerance: expected a percentage such as 10%, got 'lots'*"])


def _summarised_suite(suite, monkeypatch, ids: list[str]):
    """A suite of one test per id in ``ids`` (one cassetted call each), writing the GitHub step summary: its path."""
    summary = suite.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    suite.makepyfile(test_app=f'''
import pytest
from conftest import ask

@pytest.mark.parametrize("q", {ids!r})
def test_q(client, cassette, q):
    with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)
''')
    return summary


def test_the_step_summary_shows_odd_test_ids_as_they_are(suite, monkeypatch):
    summary = _summarised_suite(suite, monkeypatch, ["a|b", "x`y"])
    assert suite.runpytest("--llm-budget").ret == 0
    rows = [line for line in summary.read_text().splitlines() if line.startswith("| ``") or line.startswith("| `")]
    by_id = {row.split(" | ")[0]: row for row in rows}
    assert "| ``test_app.py::test_q[x`y]``" in by_id
    assert "| `test_app.py::test_q[a\\|b]`" in by_id
    # every row still has its six cells (a | in an id split it, and the cost fell out of its column)
    assert all(row.replace("\\|", "").count("|") == 7 for row in rows)


@pytest.mark.parametrize("scope", ["session", "module", "class"])
def test_wider_fixtures_spend_counts_outside_tests_not_for_the_test_that_ran_them(suite, scope):
    """A session (module, class) fixture's setup and teardown ran inside the first and last test that used it:
    their per-test budgets failed, and a baseline compared on a subset regressed, by test order."""
    suite.makepyfile(test_app=f'''
import pytest
from conftest import ask

@pytest.fixture(scope={scope!r})
def warmed_up(cassette):
    import openai
    with openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test", max_retries=0) as c:
        with cassette("chat.yaml"):
            ask(c, "What is the capital of France?", 16)
        yield
        with cassette("chat.yaml"):
            ask(c, "What is the capital of France?", 16)

@pytest.fixture(scope={scope!r})
def cassette():
    from conftest import _vcr
    return lambda name: _vcr.use_cassette(name)

class TestBoth:
    @pytest.mark.llm_budget(calls=0)
    def test_first(self, warmed_up):
        pass

    @pytest.mark.llm_budget(calls=0)
    def test_second(self, warmed_up, client, cassette):
        with cassette("chat.yaml"):
            ask(client, "What is the capital of France?", 16)
''')
    result, doc = run_json(suite)
    result.assert_outcomes(passed=1, failed=1)  # test_second's own call is over its budget; nothing else
    result.stdout.fnmatch_lines(["*test_second*calls 1 > budget 0*"])
    assert doc["outside_tests"]["calls"] == 2
    tests = doc["tests"]
    assert [tests[k]["calls"] for k in sorted(tests)] == [0, 1]


def test_an_unpriced_model_under_filterwarnings_error_is_priced_and_flagged(suite):
    suite.makeini("[pytest]\nfilterwarnings = error\n")
    suite.makepyfile(test_local='''
from conftest import ask

def test_local(client, cassette):
    with cassette("chat_local_model.yaml"):
        ask(client, "What is the capital of France?", 16, model="gemma-3-270m-q4_k_m")
''')
    result, doc = run_json(suite, "test_local.py")
    result.assert_outcomes(passed=1)
    assert doc["unpriced_models"] == ["gemma-3-270m-q4_k_m"]
    assert doc["total"]["cost_usd"] > 0 and doc["total"]["input_tokens"] > 0


def test_a_baseline_of_tests_alone_is_compared_with_nothing_spent_outside_them(suite):
    """A hand-written baseline without "total" or "outside_tests" crashed the run's end with a traceback."""
    baseline = suite.path / "base.json"
    spent = float(CAPITAL)
    baseline.write_text(json.dumps({"version": 1, "tests": {"test_app.py::test_capital": {"cost_usd": spent}}}))
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline), "-k", "capital")
    assert result.ret == 0, result.stdout.str()
    baseline.write_text(json.dumps({"version": 1, "tests": {"test_app.py::test_capital": {"cost_usd": spent / 2}}}))
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline), "-k", "capital")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_app.py::test_capital: LLM cost rose from*"])


def test_a_baseline_whose_two_costs_disagree_is_refused(suite):
    """Editing cost_usd by hand was silently ignored: cost_usd_exact won."""
    baseline = suite.path / "base.json"
    suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline))
    doc = json.loads(baseline.read_text())
    doc["tests"]["test_app.py::test_capital"]["cost_usd"] = 0.000001
    baseline.write_text(json.dumps(doc))
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_capital*cost_usd 1e-06 and cost_usd_exact*disagree*"])


def test_the_step_summary_shows_test_ids_in_verdicts_as_text_not_markdown(suite, monkeypatch):
    summary = _summarised_suite(suite, monkeypatch, ["<img src=x onerror=alert(1)>[see](https://evil.example)**bold**"])
    baseline = suite.path / "base.json"
    suite.runpytest("--llm-budget", "--llm-budget-save", str(baseline))
    doc = json.loads(baseline.read_text())
    for entry in [*doc["tests"].values(), doc["total"]]:
        entry["cost_usd"], entry["cost_usd_exact"] = 1e-9, "0.000000001"
    baseline.write_text(json.dumps(doc))
    summary.write_text("")
    assert suite.runpytest("--llm-budget", "--llm-budget-compare", str(baseline)).ret == pytest.ExitCode.TESTS_FAILED
    [verdict] = [line for line in summary.read_text().splitlines() if "test_q[" in line and line.startswith("- :x:")]
    assert verdict.startswith("- :x: `test_app.py::test_q[<img") and verdict.endswith("`"), verdict


def test_the_plugins_notices_never_stop_a_run_where_warnings_are_errors(suite, monkeypatch):
    """With filterwarnings = error, the 'markers but no flag' notice was an INTERNALERROR (exit 3), and an
    unwritable GITHUB_STEP_SUMMARY a traceback out of the run's end."""
    # (the inner run shares this process: a socket another test left to the garbage collector must not be its error)
    suite.makeini("[pytest]\nfilterwarnings =\n    error\n    ignore::pytest.PytestUnraisableExceptionWarning\n")
    suite.makepyfile(test_marked='''
import pytest

@pytest.mark.llm_budget(usd=0.01)
def test_marked():
    pass
''')
    result = suite.runpytest("test_marked.py")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*PytestConfigWarning: 1 test(s) carry @pytest.mark.llm_budget*"])
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(suite.path / "no-such-dir" / "summary.md"))
    result = suite.runpytest("test_marked.py", "--llm-budget")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*could not write GITHUB_STEP_SUMMARY*"])


@pytest.mark.parametrize("value", ["10²", "١٢"])
def test_a_marker_limit_in_other_digits_is_a_usage_error(suite, value):
    suite.makepyfile(test_marked=f'''
import pytest

@pytest.mark.llm_budget(tokens={value!r})
def test_marked():
    pass
''')
    result = suite.runpytest("test_marked.py", "--llm-budget")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*expected a whole number of tokens*"])


def test_a_rerun_test_carries_its_spend_once_in_junit(suite):
    """As pytest-rerunfailures does: the protocol runs a test again inside one runtest_protocol; every teardown
    appended the llm_* properties again, so JUnit listed each two or more times."""
    suite.makeconftest(CONFTEST + '''
from _pytest.runner import runtestprotocol

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for _ in range(2):
        for report in runtestprotocol(item, nextitem=nextitem, log=False):
            item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
''')
    junit = suite.path / "junit.xml"
    assert suite.runpytest("--llm-budget", f"--junitxml={junit}", "-k", "capital").ret == 0
    case = [c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "test_capital"][-1]
    names = [p.get("name") for p in case.iter("property")]
    assert sorted(names) == sorted(set(names)) and "llm_cost_usd" in names
    calls = {p.get("name"): p.get("value") for p in case.iter("property")}["llm_calls"]
    assert calls == "2"  # both runs' spend, once


def test_an_attempt_refused_unbilled_is_no_call_of_a_tests_calls_budget():
    # a red-team pass: flex's routine 429, retried by the SDK, failed a test marked calls=1 ("calls 2 > budget 1")
    from llmbudget.calls import SpendRecord, Usage
    from pytest_llmbudget.spend import TestSpend

    def attempt(status: int, cost: str) -> SpendRecord:
        return SpendRecord(time=0.0, endpoint="chat.completions", base_url="https://api.openai.com/v1",
                           model_requested="gpt-4o-mini", model_sent="gpt-4o-mini", model_answered="gpt-4o-mini",
                           usage=Usage(input_tokens=10, output_tokens=5), cost_usd=Decimal(cost), latency_s=0.1,
                           status=status)

    spend = TestSpend()
    for record in (attempt(429, "0"), attempt(500, "0"), attempt(200, "0.00001"), attempt(400, "0.000002"),
                   attempt(400, "0")):
        spend.add(record)
    assert spend.calls == 5 and spend.refused == 2  # a billed refusal, or an invalid request's 400, is a call
    again = TestSpend.from_wire(spend.to_wire())  # as an xdist worker sends it
    assert again.refused == 2
    again.merge_spend(spend)
    assert again.refused == 4


def test_a_model_name_from_an_answer_cannot_drive_the_terminal_or_forge_a_row():
    # the model name comes from the answer (a provider, a cassette): ESC sequences cleared the screen, and a line
    # break forged a "TOTAL ... $0.000000" row in the model table, the calls list and the failure report
    from llmbudget.calls import SpendRecord, Usage
    from pytest_llmbudget.report import _cells, _code, budget_failure
    from pytest_llmbudget.spend import TestSpend

    forged = "gpt-4o-mini\x1b[2J\x1b[H\nTOTAL  0  0  0  0  $0.000000"
    spend = TestSpend()
    spend.add(SpendRecord(time=0.0, endpoint="chat.completions", base_url="https://api.openai.com/v1",
                          model_requested="gpt-4o-mini", model_sent="gpt-4o-mini", model_answered=forged,
                          usage=Usage(input_tokens=10, output_tokens=5), cost_usd=Decimal("0.00001"), latency_s=0.1,
                          status=200, error="bad\nline"))
    shown = [budget_failure("test_x", ["cost over"], spend), _cells(forged, spend)[0], _code(forged, cell=True)]
    for text in shown:
        assert "\x1b" not in text and "TOTAL" in text
    failure = shown[0]
    assert all(not line.startswith("TOTAL") for line in failure.splitlines())  # no forged line
    assert "\\x1b[2J" in failure and "\\nTOTAL" in failure and "bad\\nline" in failure


STALE = f'''
import openai, vcr
from conftest import ask

_loose = vcr.VCR(cassette_library_dir={str(CASSETTES)!r}, record_mode="none")  # vcrpy's default: no body

def test_same(client):
    with _loose.use_cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)

def test_grown(client):
    with _loose.use_cassette("chat.yaml"):
        ask(client, "What is the capital of France? Tell me its whole history, street by street, "
                    "with every king, every revolution and every bridge over the Seine.", 16)
'''


@pytest.mark.parametrize("workers", [None, "2"])
def test_a_replay_recorded_for_another_prompt_is_named_with_the_tokens_it_adds(suite, workers):
    """vcrpy matches without the body by default: a prompt grown since its cassette was recorded was answered,
    and priced, as recorded, and the pull request that made the call dearer passed the spend check unseen."""
    suite.makepyfile(test_stale=STALE)
    out = suite.path / "stale.json"
    args = ("--llm-budget", "--llm-budget-json", str(out), "test_stale.py")
    result = suite.runpytest_subprocess("-n", workers, *args) if workers else suite.runpytest(*args)
    result.assert_outcomes(passed=2)
    doc = json.loads(out.read_text())
    assert list(doc["stale_replays"]) == ["test_stale.py::test_grown"]
    grown = doc["stale_replays"]["test_stale.py::test_grown"]
    assert grown["requests"] == 1 and grown["input_tokens"] >= 20
    assert doc["tests"]["test_stale.py::test_grown"]["input_tokens"] == 16  # the recording's usage, as replayed
    result.stdout.fnmatch_lines(["*1 replayed request(s) in 1 test(s) were recorded for another prompt*",
                                 f"*test_stale.py::test_grown: 1 request(s), +{grown['input_tokens']} input tokens*"])


def test_a_replay_is_compared_as_its_cassette_records_it(llm_server, tmp_path):
    """A cassette that redacts what it records (an email, a key) was compared with the request unredacted: an
    unchanged prompt was reported as recorded for another prompt."""
    import openai as sdk
    import vcr as vcrpy

    import llmbudget
    from pytest_llmbudget.replays import watch_replays

    def redact(request):  # noqa: ANN001, ANN202
        if request.body:
            request.body = request.body.replace(b"alice@example.com", b"<EMAIL>")
        return request

    recorder = vcrpy.VCR(before_record_request=redact)
    client = sdk.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    cassette = str(tmp_path / "redacted.yaml")

    def ask(text: str) -> None:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": text}])

    with recorder.use_cassette(cassette, record_mode="once"):
        ask("Write to alice@example.com about the invoice")
    stale: list = []
    undo = watch_replays(stale.append, lambda: ())
    try:
        with recorder.use_cassette(cassette, record_mode="none"):
            ask("Write to alice@example.com about the invoice")
        assert stale == []
        with recorder.use_cassette(cassette, record_mode="none"):
            ask("Write to alice@example.com about the invoice, and the three overdue ones before it")
        assert len(stale) == 1 and stale[0].input_tokens > 0
    finally:
        if undo is not None:
            undo()
