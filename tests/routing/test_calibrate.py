"""`llmbudget calibrate router`: the threshold that sends the chosen share of a sample to the strong tier."""

from __future__ import annotations

import json

import pytest

from llmbudget.cli import main
from llmbudget.config import tomllib
from llmbudget.routing.calibrate import calibrate, write_threshold
from llmbudget.routing.classifier import Router

PROMPTS = ["hi", "What is 2+2?", "Prove that there are infinitely many primes, step by step.",
           "Write a Python function that parses ISO 8601 dates with time zones and test it.",
           "Thanks!", "Compare the economic policies of two countries over 30 years and explain why they differ.",
           "Solve for x: 3x^2 - 12x + 9 = 0", "What's the weather like?", "Tell me a joke", "Translate 'cat'"]


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n")
    return path


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_threshold_sends_that_share_to_strong(sample, fraction):
    result = calibrate(sample, strong_fraction=fraction)
    scores = [Router().score({"messages": [{"role": "user", "content": p}]}) for p in PROMPTS]
    sent = sum(score >= result["threshold"] for score in scores)
    assert sent == round(fraction * len(PROMPTS)) and result["strong_fraction"] == sent / len(PROMPTS)


def test_cli_writes_the_threshold_into_the_policy_keeping_other_keys(sample, tmp_path, capsys):
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[routing]\ntiers = { small = "gpt-4.1-nano" }\nthreshold = 0.9\n\n[prices]\n"x" = { input = 1, output = 2 }\n')
    assert main(["calibrate", "router", str(sample), "--strong-fraction", "0.3", "--policy", str(policy), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    data = tomllib.loads(policy.read_text())
    assert data["routing"]["threshold"] == pytest.approx(printed["threshold"], abs=1e-6)
    assert data["routing"]["tiers"] == {"small": "gpt-4.1-nano"} and data["prices"]["x"]["output"] == 2


def test_pyproject_gets_the_tool_table(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "app"\n')
    write_threshold(pyproject, 0.25)
    assert tomllib.loads(pyproject.read_text())["tool"]["llmbudget"]["routing"]["threshold"] == 0.25


def test_bad_samples_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nothing": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        calibrate(bad, strong_fraction=0.3)
    with pytest.raises(ValueError, match="within"):
        calibrate(bad, strong_fraction=1.5)


def test_reports_the_share_of_input_tokens_sent_strong(sample):
    from llmbudget.routing.calibrate import input_tokens, read_sample

    bodies = list(read_sample(sample))
    result = calibrate(sample, strong_fraction=0.3)
    router = Router()
    tokens = [input_tokens(b) for b in bodies]
    strong = sum(t for b, t in zip(bodies, tokens) if router.score(b) >= result["threshold"])
    assert result["strong_token_share"] == pytest.approx(strong / sum(tokens))
    # the router sends the longer prompts strong: 30% of the calls carry more than 30% of the tokens
    assert result["strong_token_share"] > result["strong_fraction"]
    assert calibrate(sample, strong_fraction=0.0)["strong_token_share"] == 0.0
    assert calibrate(sample, strong_fraction=1.0)["strong_token_share"] == pytest.approx(1.0)
