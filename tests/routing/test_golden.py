"""Golden routing decisions (the ``llm_golden_routing`` fixture): a cassette pins each prompt's tier.

fixtures/golden_routing/routing.yaml was recorded from the real local server with
routing on (ci/record_golden_routing.py). The suites below run as a user's would,
under pytester: with pytest-recording's ``vcr`` marker and with plain vcrpy, with
and without body matching. A policy change that moves a prompt to another tier
fails the test with one line naming the prompt, both tiers and the score.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy  # noqa: F401  (the same: numpy loads once a process, and the inner runs' llmbudget imports it)
import openai  # noqa: F401  (imported here so pytester's in-process runs share one copy)
import pytest
import yaml

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden_routing"
SPEC = json.loads((GOLDEN / "routing.json").read_text())
CASSETTE = GOLDEN / "routing.yaml"
BODY = '["method", "scheme", "host", "port", "path", "query", "body"]'


def recorded_models() -> dict[str, str]:
    interactions = yaml.safe_load(CASSETTE.read_text())["interactions"]
    bodies = [json.loads(i["request"]["body"]) for i in interactions]
    return {body["messages"][-1]["content"]: body["model"] for body in bodies}


def policy(threshold: float) -> str:
    return textwrap.dedent(f"""\
        [routing]
        threshold = {threshold}
        [routing.tiers]
        small = "gpt-4.1-nano"
        large = ""
        """)


CALL = """
import json, openai, pytest, vcr

PROMPTS = json.loads({spec!r})["prompts"]


def ask(prompt, base_url="http://127.0.0.1:8765/v1"):
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    return client.chat.completions.create(model="gpt-4o", max_tokens=8, temperature=0,
                                          messages=[{{"role": "user", "content": prompt}}])
"""

RECORDING = CALL + """

@pytest.fixture(scope="module")
def vcr_config():
    return {vcr_config}


@pytest.mark.vcr({cassette!r}, allow_playback_repeats=True)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_route(llm_golden_routing, prompt):
    ask(prompt)
"""

PLAIN = CALL + """

@pytest.mark.parametrize("prompt", PROMPTS)
def test_route(llm_golden_routing, prompt):
    my_vcr = vcr.VCR(record_mode="none", match_on={match_on})
    with my_vcr.use_cassette({cassette!r}, allow_playback_repeats=True) as cassette:
        llm_golden_routing.watch(cassette)
        ask(prompt)
"""


def suite(pytester: pytest.Pytester, template: str, threshold: float, **fields: str) -> None:
    pytester.makefile(".toml", llmbudget=policy(threshold))
    pytester.makepyfile(test_routes=template.format(spec=json.dumps(SPEC), cassette=str(CASSETTE), **fields))


def test_the_recording_routes_some_prompts_each_way():
    models = recorded_models()
    assert set(models) == set(SPEC["prompts"])
    assert set(models.values()) == {"gpt-4.1-nano", "gpt-4o"}


@pytest.mark.parametrize("config", ["{}", "{'match_on': " + BODY + "}"], ids=["default-match", "body-match"])
def test_unchanged_policy_passes_with_pytest_recording(pytester, config):
    suite(pytester, RECORDING, SPEC["threshold"], vcr_config=config)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=len(SPEC["prompts"]))


@pytest.mark.parametrize("config", ["{}", "{'match_on': " + BODY + "}"], ids=["default-match", "body-match"])
def test_a_moved_prompt_fails_in_one_line_with_pytest_recording(pytester, config):
    """Threshold 0: everything goes to the strong tier. Without body matching vcrpy would
    replay the old answer silently; with it vcrpy refuses the request. Either way the
    failure is the same single line per prompt."""
    suite(pytester, RECORDING, 0.0, vcr_config=config)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rf")
    small = [p for p, model in recorded_models().items() if model == "gpt-4.1-nano"]
    result.assert_outcomes(passed=len(SPEC["prompts"]) - len(small), failed=len(small))
    lines = [line for line in result.outlines if line.startswith("golden routing: ")]
    assert len(lines) == len(small)
    assert ("golden routing: 'What is the capital of France?' moved from small (gpt-4.1-nano) to large (gpt-4o): "
            "score ") in "\n".join(lines)
    assert all(" >= threshold 0.0000" in line for line in lines)
    assert "CannotOverwriteExistingCassetteException" not in result.stdout.str()


def test_plain_vcrpy_cassette_is_watched(pytester):
    suite(pytester, PLAIN, 0.9, match_on=BODY)  # a high threshold: the large-tier prompts move to small
    result = pytester.runpytest("-p", "no:cacheprovider")
    large = [p for p, model in recorded_models().items() if model == "gpt-4o"]
    result.assert_outcomes(passed=len(SPEC["prompts"]) - len(large), failed=len(large))
    lines = [line for line in result.outlines if line.startswith("golden routing: ")]
    assert len(lines) == len(large)
    assert all(" moved from large (gpt-4o) to small (gpt-4.1-nano): score " in line and "< threshold 0.9000" in line
               for line in lines)


def test_without_a_routing_policy_the_fixture_says_what_is_missing(pytester):
    pytester.makepyfile(test_routes="def test_route(llm_golden_routing):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "llm_golden_routing: no routing policy to pin; add a [routing] table" in result.stdout.str()


def test_recording_through_the_fixture_records_the_routed_request(pytester, llm_server):
    """Recording (pytest-recording --record-mode=once) from the real local server with the
    fixture on stores the routed model, so the cassette is a golden file from the start."""
    pytester.makefile(".toml", llmbudget=policy(SPEC["threshold"]))
    pytester.makepyfile(test_routes=CALL.format(spec=json.dumps(SPEC)) + f"""

@pytest.mark.vcr
def test_record(llm_golden_routing):
    ask("Hi!", base_url={llm_server!r})
""")
    pytester.runpytest("-p", "no:cacheprovider", "--record-mode=once").assert_outcomes(passed=1)
    recorded = list(pytester.path.glob("cassettes/test_routes/test_record.yaml"))
    assert recorded, "pytest-recording wrote no cassette"
    body = json.loads(yaml.safe_load(recorded[0].read_text())["interactions"][0]["request"]["body"])
    assert body["model"] == "gpt-4.1-nano"  # routed, not the gpt-4o the test asked for


@pytest.mark.parametrize("small", ["o4-mini", {"model": "gpt-4.1-nano", "max_words": 20}])
def test_a_move_to_a_tier_that_rewrites_the_request_is_reported(engine, small):
    # A reasoning tier drops temperature and renames max_tokens; a tier's length directive adds a system message
    # (and so another prompt_cache_key): the moved request matched no recorded one, and nothing was reported.
    from vcr.request import Request

    from llmbudget.routing.tiers import Routing
    from pytest_llmbudget.golden import GoldenRouting

    body = {"model": "gpt-4o", "max_tokens": 2000, "temperature": 0,  # (a reasoning tier takes no smaller limit)
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    url = "https://api.openai.com/v1/chat/completions"

    def sent(threshold: float) -> Request:
        engine.routing = Routing(tiers={"small": small, "large": None}, threshold=threshold)
        attempt = engine.begin(url=url, path="/v1/chat/completions", headers={}, body=json.dumps(body).encode())
        attempt.plan("/")
        return Request("POST", url, attempt.request_bytes(), {})

    recorded, now = sent(0.0), sent(1.0)  # recorded on the large tier; the policy now sends it small
    golden = GoldenRouting(engine.routing)
    moved = golden.check(now, [recorded])
    assert moved is not None and (moved.old_tier, moved.new_tier) == ("large", "small")
    assert golden.check(recorded, [recorded]) is None


def test_a_test_that_fails_on_its_own_keeps_its_failure_and_the_moves_are_said_after_it(pytester):
    """The moves replaced the failing test's own traceback."""
    # vcrpy's default matching replays the old answer to a moved request: the test's own assert then fails too
    suite(pytester, RECORDING.replace("    ask(prompt)\n", "    ask(prompt)\n    assert prompt == 'nothing'\n"),
          0.0, vcr_config="{}")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=len(SPEC["prompts"]))
    out = result.stdout.str()
    small = [p for p, model in recorded_models().items() if model == "gpt-4.1-nano"]
    assert len([line for line in result.outlines if line.startswith("E   ") and "== 'nothing'" in line]) \
        == len(SPEC["prompts"]), out
    assert len([line for line in result.outlines if line.startswith("golden routing: ")]) == len(small) > 0
