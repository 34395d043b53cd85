"""Which test a call is charged to, whatever engine is current, and what a run says about tests that did not pass
(pytest --llm-budget on inner suites that replay cassettes recorded from a real server)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy  # noqa: F401  (imported here so pytester's in-process runs share one copy: numpy loads once a process)
import pytest
from test_plugin import CONFTEST, TESTS

import llmbudget
import llmbudget.replay  # noqa: F401  (as numpy)
from llmbudget.routing.tiers import Routing
from pytest_llmbudget.golden import GoldenRouting

#: An inner test's call, replayed from chat.yaml.
CALL = '''with cassette("chat.yaml"):
        ask(client, "What is the capital of France?", 16)'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=TESTS)
    pytester.syspathinsert()
    previous = llmbudget.get_engine()
    yield pytester
    llmbudget.set_engine(previous)  # an inner conftest's configure() must not outlive its run


def _spend(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    out = pytester.path / "spend.json"
    result = pytester.runpytest("--llm-budget", "--llm-budget-json", str(out), *args)
    return result, json.loads(out.read_text())


def test_calls_after_the_app_configures_an_engine_of_its_own_are_still_measured(suite):
    suite.makepyfile(test_app=f'''
import llmbudget
from conftest import ask

def test_app_configures(client, cassette):
    llmbudget.configure(default_tenant="app")
    {CALL}

def test_after(client, cassette):
    {CALL}
''')
    result, doc = _spend(suite)
    result.assert_outcomes(passed=2)
    assert [doc["tests"][f"test_app.py::{name}"]["calls"] for name in ("test_app_configures", "test_after")] == [1, 1]


def test_the_engine_the_project_configured_is_measured_not_replaced(suite):
    suite.makeconftest(CONFTEST + '''
import llmbudget
llmbudget.configure(default_tenant="configured-by-the-app")
''')
    suite.makepyfile(test_app=f'''
import llmbudget
from conftest import ask

def test_sees_the_apps_engine(client, cassette):
    assert llmbudget.get_engine().default_tenant == "configured-by-the-app"
    {CALL}
''')
    result, doc = _spend(suite)
    result.assert_outcomes(passed=1)
    assert doc["tests"]["test_app.py::test_sees_the_apps_engine"]["calls"] == 1


def test_a_call_a_thread_started_in_an_earlier_test_is_not_charged_to_the_next(suite):
    suite.makepyfile(test_app='''
import threading, time
import httpx, openai, pytest
from conftest import ask

def test_starts_a_call(cassette):
    answered = threading.Event()

    def late(response):  # the answer came: it is read a second later, in the next test
        answered.set()
        time.sleep(1.0)

    def work():
        slow = httpx.Client(event_hooks={"response": [late]})
        with openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test", max_retries=0,
                           http_client=slow) as c, cassette("chat.yaml"):
            ask(c, "What is the capital of France?", 16)
    threading.Thread(target=work).start()
    assert answered.wait(30)  # the call is under way; the test ends before it does

@pytest.mark.llm_budget(calls=0)
def test_makes_no_calls():
    time.sleep(2.0)
''')
    result, doc = _spend(suite)
    result.assert_outcomes(passed=2)
    assert doc["tests"]["test_app.py::test_makes_no_calls"]["calls"] == 0 and doc["outside_tests"]["calls"] == 1
    result.stdout.fnmatch_lines(["*1 LLM call(s) ended during a test they had not started in*test_makes_no_calls*"])


def test_tests_that_do_not_pass_say_their_overspend_and_keep_their_outcome(suite):
    suite.makepyfile(test_app=f'''
import pytest
from conftest import ask

@pytest.mark.llm_budget(calls=0)
def test_overspends_then_skips(client, cassette):
    {CALL}
    pytest.skip("not today")

@pytest.mark.xfail(reason="known")
@pytest.mark.llm_budget(calls=0)
def test_overspends_and_xfails(client, cassette):
    {CALL}
    assert False

@pytest.mark.llm_budget(calls=0)
def test_overspends_and_fails(client, cassette):
    {CALL}
    assert False, "wrong answer"
''')
    result, doc = _spend(suite)
    result.assert_outcomes(skipped=1, xfailed=1, failed=1)
    outcomes = {name.split("::")[1]: entry["outcome"] for name, entry in doc["tests"].items()}
    assert outcomes == {"test_overspends_then_skips": "skipped", "test_overspends_and_xfails": "xfailed",
                        "test_overspends_and_fails": "failed"}
    result.stdout.fnmatch_lines([
        "*- llmbudget -*", "exceeded its LLM budget: calls 1 > budget 0",  # the failed test's own section
        "*test_overspends_then_skips skipped after it exceeded its LLM budget: calls 1 > budget 0*",
        "*test_overspends_and_xfails xfailed after it exceeded its LLM budget: calls 1 > budget 0*",
    ], consecutive=False)


def test_a_baseline_path_that_cannot_be_read_is_a_usage_error(suite):
    result = suite.runpytest("--llm-budget", "--llm-budget-compare", str(suite.path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-budget-compare: cannot read*"])


def test_spend_outside_tests_is_not_compared_across_numbers_of_xdist_workers(suite):
    suite.makeconftest(CONFTEST + '''
@pytest.fixture(scope="session")
def warm():
    with openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test", max_retries=0) as c, \\
            _vcr.use_cassette("chat.yaml"):
        ask(c, "What is the capital of France?", 16)  # once per worker
''')
    suite.makepyfile(test_app='''
def test_a(warm):
    pass

def test_b(warm):
    pass
''')
    baseline = suite.path / "baseline.json"
    assert suite.runpytest_subprocess("--llm-budget", "--llm-budget-save", str(baseline)).ret == 0
    assert json.loads(baseline.read_text())["workers"] == 1
    result = suite.runpytest_subprocess("-n", "2", "--llm-budget", "--llm-budget-compare", str(baseline),
                                        "--llm-budget-tolerance", "10%")
    assert result.ret == 0, result.stdout.str()  # twice the session fixture's spend: two workers, not a regression


def test_golden_routing_sees_a_move_in_a_request_with_a_field_that_changes_every_run():
    golden = GoldenRouting(Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=0.5))
    question = [{"role": "user", "content": "What is the capital of France?"}]

    def request(model: str, user: str, **extra: object) -> SimpleNamespace:
        body = json.dumps({"model": model, "messages": question, "user": user, **extra}).encode()
        return SimpleNamespace(method="POST", path="/v1/chat/completions", body=body)

    # the same prompt with a response schema went strong (never routed): it is another request, not a match
    schema = {"response_format": {"type": "json_object"}}
    recorded = [request("gpt-4.1-nano", "run-1"), request("gpt-4o", "run-1", **schema)]
    moved = golden.check(request("gpt-4o", "run-2"), recorded)
    assert moved is not None and (moved.old_tier, moved.new_tier) == ("small", "large")
    assert golden.check(request("gpt-4.1-nano", "run-3"), recorded) is None
    assert golden.check(request("gpt-4o", "run-3", **schema), recorded) is None


def test_golden_routing_sees_a_stream_move_to_or_from_a_reasoning_tier():
    """llmbudget asks a reasoning model's stream for its usage (stream_options): a stream recorded on one tier
    and now sent to the other was another request, not a move, and its old answer replayed silently."""
    golden = GoldenRouting(Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=0.5))
    question = [{"role": "user", "content": "What is the capital of France?"}]

    def request(model: str, **extra: object) -> SimpleNamespace:
        body = json.dumps({"model": model, "messages": question, "stream": True, **extra}).encode()
        return SimpleNamespace(method="POST", path="/v1/chat/completions", body=body)

    usage = {"stream_options": {"include_usage": True}}
    moved = golden.check(request("o4-mini", **usage), [request("gpt-4.1-nano")])
    assert moved is not None and (moved.old_tier, moved.new_tier) == ("small", "large")
    moved = golden.check(request("gpt-4.1-nano"), [request("o4-mini", **usage)])
    assert moved is not None and (moved.old_tier, moved.new_tier) == ("large", "small")


def test_a_replay_inside_a_measured_test_is_nobodys_spend(suite):
    sample = Path(__file__).resolve().parents[2] / "fixtures" / "traffic"
    suite.makepyfile(test_app=f'''
import pytest
from llmbudget.replay import replay

@pytest.mark.llm_budget(calls=0)
def test_replays_the_sample():
    replay({str(sample / "sample.jsonl")!r}, {str(sample / "llmbudget.toml")!r})  # answered from the file
''')
    result, doc = _spend(suite)
    result.assert_outcomes(passed=1)
    assert doc["total"]["calls"] == 0


def test_a_frozen_clock_leaves_the_test_its_calls(suite):
    suite.makepyfile(test_app=f'''
import time
import pytest
from conftest import ask

@pytest.mark.llm_budget(calls=0)
def test_frozen(client, cassette, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1_600_000_000.0)  # as freezegun and time-machine do
    {CALL}
''')
    result, doc = _spend(suite)
    result.assert_outcomes(failed=1)
    assert doc["tests"]["test_app.py::test_frozen"]["calls"] == 1


@pytest.mark.parametrize("outer_configures", [False, True])
def test_a_measured_test_that_runs_a_measured_suite_in_process(suite, outer_configures):
    # the inner run reads its own policy and counts its own calls; the outer test is not charged for them
    (suite.path / "inner_conftest.txt").write_text(CONFTEST)
    configures = "import llmbudget\nllmbudget.configure(default_tenant='outer')\n" if outer_configures else ""
    suite.makeconftest(CONFTEST + '\npytest_plugins = ["pytester"]\n' + configures)
    suite.makepyfile(test_app='''
import json
from decimal import Decimal
from pathlib import Path

def test_inner(pytester, request):
    pytester.makeconftest((Path(str(request.config.rootpath)) / "inner_conftest.txt").read_text())
    pytester.makefile(".toml", llmbudget='[prices]\\n"gemma-3-*" = { input = 1, output = 2 }\\n')
    pytester.makepyfile(test_local="""
from conftest import ask
def test_local(client, cassette):
    with cassette("chat_local_model.yaml"):
        ask(client, "What is the capital of France?", 16, model="gemma-3-270m-q4_k_m")
""")
    out = pytester.path / "inner.json"
    pytester.runpytest_inprocess("--llm-budget", "--llm-budget-json", str(out)).assert_outcomes(passed=1)
    doc = json.loads(out.read_text())
    assert doc["unpriced_models"] == [] and Decimal(doc["total"]["cost_usd_exact"]) == Decimal(48) / 10**6
''')
    out = suite.path / "outer.json"
    result = suite.runpytest_subprocess("--llm-budget", "--llm-budget-json", str(out))
    result.assert_outcomes(passed=1)
    assert json.loads(out.read_text())["total"]["calls"] == 0


def test_an_inner_run_that_fails_to_end_cleanly_leaves_the_outer_run_counting(suite):
    (suite.path / "inner_conftest.txt").write_text(CONFTEST + """
def pytest_unconfigure(config):
    raise RuntimeError("an inner plugin's unconfigure fails")
""")
    suite.makeconftest(CONFTEST + '\npytest_plugins = ["pytester"]\n')
    suite.makepyfile(test_app=f'''
from pathlib import Path
import pytest
from conftest import ask

def test_1_runs_an_inner_suite(pytester, request):
    pytester.makeconftest((Path(str(request.config.rootpath)) / "inner_conftest.txt").read_text())
    pytester.makepyfile(test_inner="def test_nothing():\\n    pass\\n")
    try:
        pytester.runpytest_inprocess("--llm-budget")
    except RuntimeError:
        pass

@pytest.mark.llm_budget(calls=0)
def test_2_overspends(client, cassette):
    {CALL}
''')
    out = suite.path / "outer.json"
    result = suite.runpytest_subprocess("--llm-budget", "--llm-budget-json", str(out))
    result.assert_outcomes(passed=1, failed=1)
    assert json.loads(out.read_text())["tests"]["test_app.py::test_2_overspends"]["calls"] == 1


def test_an_app_call_made_while_a_replay_runs_is_still_measured(suite):
    sample = Path(__file__).resolve().parents[2] / "fixtures" / "traffic"
    suite.makepyfile(test_app=f'''
import threading, time
import llmbudget, pytest
from llmbudget.replay import replay
from conftest import ask

@pytest.mark.llm_budget(calls=0)
def test_calls_while_replaying(client, cassette):
    before = llmbudget.get_engine()

    def app():  # the app's own call, in another thread, while the replay runs
        while llmbudget.get_engine() is before:
            time.sleep(0.001)
        with cassette("chat.yaml"):
            ask(client, "What is the capital of France?", 16)

    thread = threading.Thread(target=app)
    thread.start()
    replay({str(sample / "sample.jsonl")!r}, {str(sample / "llmbudget.toml")!r}, features=False)
    thread.join()
''')
    result, doc = _spend(suite)
    result.assert_outcomes(failed=1)
    assert doc["tests"]["test_app.py::test_calls_while_replaying"]["calls"] == 1


def test_llm_spend_without_the_flag_follows_an_engine_the_app_configures(suite):
    suite.makepyfile(test_app=f'''
import llmbudget
from conftest import ask

def test_live(client, cassette, llm_spend):
    llmbudget.configure(default_tenant="app")
    {CALL}
    assert llm_spend.calls == 1
''')
    suite.runpytest().assert_outcomes(passed=1)


def test_an_sdk_retry_or_escalation_is_the_call_it_retries():
    engine = llmbudget.Engine()
    url = "https://api.openai.com/v1/chat/completions"

    def begin(retries: int, text: str = "hi") -> llmbudget.pipeline.Attempt:
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()
        return engine.begin(url=url, path="/v1/chat/completions", body=body,
                            headers={"x-stainless-retry-count": str(retries)})

    first = begin(0).sequence
    assert begin(1).sequence == begin(2).sequence == first  # the SDK's retries of that call
    # a first request that says "retry" (a gateway forwarding its client's headers) is another call: it begins now
    assert begin(1, "another question").sequence > first
    weak = begin(0)
    escalation = begin(0)  # an escalation (or a resend without the probe) is a new attempt of the same call ...
    escalation.continues(weak)
    assert escalation.sequence == weak.sequence
    assert begin(1).sequence == weak.sequence  # ... and so is the SDK's retry of it


def test_pytest_run_twice_in_a_process_keeps_the_engine_the_app_configured(suite):
    suite.makeconftest(CONFTEST)
    suite.makepyfile(test_app=f'''
import llmbudget
from conftest import ask

def test_sees_the_apps_engine(client, cassette):
    assert llmbudget.get_engine().default_tenant == "configured-once"
    {CALL}
''')
    llmbudget.configure(default_tenant="configured-once")  # as an app module does at import, once a process
    for _ in range(2):
        result, doc = _spend(suite)
        result.assert_outcomes(passed=1)
        assert doc["tests"]["test_app.py::test_sees_the_apps_engine"]["calls"] == 1
