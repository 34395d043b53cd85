"""Golden routing decisions: the routed requests recorded in a cassette must not move.

fixtures/golden_routing/routing.yaml was recorded from the real local server with
routing on (ci/record_golden_routing.py). vcrpy matches on the JSON body, `model`
included: when a change to the router or the policy sends a prompt to another
tier, its request no longer matches and the test says which prompt moved where.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import vcr
import yaml
from vcr.errors import CannotOverwriteExistingCassetteException

import llmbudget

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden_routing"
SPEC = json.loads((GOLDEN / "routing.json").read_text())
REPLAY = vcr.VCR(record_mode="none", match_on=("method", "scheme", "host", "port", "path", "query", "body"))


def recorded_models() -> dict[str, str]:
    interactions = yaml.safe_load((GOLDEN / "routing.yaml").read_text())["interactions"]
    bodies = [json.loads(i["request"]["body"]) for i in interactions]
    return {body["messages"][-1]["content"]: body["model"] for body in bodies}


def replay(engine: llmbudget.Engine, prompt: str) -> str | None:
    """The model the prompt is routed to now, or None when it matches the recording."""
    sent: list[str] = []
    engine.add_observer(lambda record: sent.append(record.model_sent or ""))
    client = openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="sk-test",
                           http_client=llmbudget.http_client(), max_retries=0)
    try:
        with REPLAY.use_cassette(str(GOLDEN / "routing.yaml"), allow_playback_repeats=True):
            client.chat.completions.create(model=SPEC["model"], max_tokens=SPEC["max_tokens"], temperature=0,
                                           messages=[{"role": "user", "content": prompt}])
    except CannotOverwriteExistingCassetteException:
        return sent[-1] if sent else "an unrecorded request"
    return None


@pytest.fixture
def routed(engine: llmbudget.Engine) -> llmbudget.Engine:
    engine.routing = llmbudget.Routing(tiers=SPEC["tiers"], threshold=SPEC["threshold"])
    return engine


def test_the_recording_routes_some_prompts_each_way():
    models = recorded_models()
    assert set(models) == set(SPEC["prompts"])
    assert set(models.values()) == {"gpt-4.1-nano", "gpt-4o"}


@pytest.mark.parametrize("prompt", SPEC["prompts"])
def test_routing_decision_is_unchanged(routed, prompt):
    moved = replay(routed, prompt)
    was = recorded_models()[prompt]
    assert moved is None, (
        f"routing moved {prompt!r} from {was} to {moved}; if intended, re-record with "
        "python ci/record_golden_routing.py"
    )


def test_a_changed_threshold_is_caught_and_named(engine):
    engine.routing = llmbudget.Routing(tiers=SPEC["tiers"], threshold=0.0)  # everything to the strong tier
    small = [p for p, model in recorded_models().items() if model == "gpt-4.1-nano"]
    assert replay(engine, small[0]) == "gpt-4o"
