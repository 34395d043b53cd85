"""The baselines a router must beat (`eval router --baselines`): prompt length and a rule-based scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbudget.cli import main
from llmbudget.routing import eval_router
from llmbudget.routing.baselines import BASELINES, complexity_rules, prompt_length

from test_router import TableRouter, write_labels  # tests/routing is on sys.path (no packages)


def _body(text: str, system: str | None = None) -> dict[str, object]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return {"messages": messages}


def test_length_counts_the_whole_request_text() -> None:
    assert prompt_length(_body("abcd")) == 4.0
    assert prompt_length(_body("abcd", system="xy")) == 7.0  # "xy\nabcd"
    assert prompt_length({"input": "hello"}) == 5.0
    assert prompt_length({}) == 0.0 and prompt_length("not a body") == 0.0


def test_rules_rank_complex_requests_above_simple_ones() -> None:
    simple = complexity_rules(_body("What is the capital of France?"))
    hello = complexity_rules(_body("hello, thanks!"))
    code = complexity_rules(_body("Implement an async Python function that retries a database query and "
                                  "returns the response; debug the exception it raises."))
    reasoning = complexity_rules(_body("Think step by step and analyze the trade-off, then justify the "
                                       "conclusion you infer from the evidence."))
    assert simple < 0 and hello < 0
    assert code > 0.2 > simple and reasoning > 0.1
    long_text = complexity_rules(_body("word " * 500))
    assert long_text > complexity_rules(_body("word " * 20)) > complexity_rules(_body("word"))


def test_eval_router_reports_the_baselines_by_file(tmp_path: Path) -> None:
    # file a: the long prompts are the ones only the strong model solves; file b: the reverse
    a = [(("x" * 200 if i % 2 else "x") + f" a{i}", i % 2 == 0, True) for i in range(20)]
    b = [(("y" * 200 if i % 2 else "y") + f" b{i}", i % 2 == 1, True) for i in range(20)]
    write_labels(tmp_path / "a.csv", a)
    write_labels(tmp_path / "b.csv", b)
    oracle = {p: float(s) - float(w) for p, w, s in a + b}
    result = eval_router(tmp_path, weak="weak/model", strong="strong-model", router=TableRouter(oracle),
                         baselines=True)
    assert set(result["baselines"]) == set(BASELINES) == {"length", "rules"}
    assert set(result["baselines"]["length"]) == {"apgr", "cpt50", "curve"}
    by_file = result["by_file"]
    assert set(by_file["groups"]) == {"a", "b"}
    # half the prompts carry all the gain: the best order scores 0.75, the worst 0.25
    assert by_file["groups"]["a"]["length"] == pytest.approx(0.75) == by_file["groups"]["a"]["router"]
    assert by_file["groups"]["b"]["length"] == pytest.approx(0.25)
    summary = by_file["summary"]
    assert summary["groups"] == 2
    assert summary["length"]["worst_apgr"] == pytest.approx(by_file["groups"]["b"]["length"])
    assert summary["length"]["mean_apgr"] == pytest.approx(
        (by_file["groups"]["a"]["length"] + by_file["groups"]["b"]["length"]) / 2)
    assert summary["length"]["router_wins"] == 1  # the oracle ties length on a, wins on b
    assert summary["router"]["mean_apgr"] > summary["length"]["mean_apgr"]
    # without the flag the keys stay as they were
    assert "baselines" not in eval_router(tmp_path, weak="weak/model", strong="strong-model",
                                          router=TableRouter(oracle))
    # at the threshold, each file's quality kept (the oracle at 0.5: the gain prompts strong, the rest weak)
    at = eval_router(tmp_path, weak="weak/model", strong="strong-model", router=TableRouter(oracle, threshold=0.5),
                     )["at_threshold"]["by_file"]
    assert at["files"]["a"] == {"prompts": 20, "strong_fraction": 0.5, "quality_kept": 1.0}
    assert at["worst_quality_kept"] == 1.0
    weak_only = eval_router(tmp_path, weak="weak/model", strong="strong-model",
                            router=TableRouter(oracle, threshold=2.0))["at_threshold"]["by_file"]
    assert weak_only["files"]["a"]["quality_kept"] == 0.5 and weak_only["worst_quality_kept"] == 0.5


def test_eval_router_cli_prints_the_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_labels(tmp_path / "labels.csv", [(f"question {i} " + "z" * i, i % 3 == 0, i % 3 != 2) for i in range(30)])
    assert main(["eval", "router", str(tmp_path / "labels.csv"), "--weak", "weak/model", "--strong",
                 "strong-model", "--baselines"]) == 0
    out = capsys.readouterr().out
    assert "router vs baselines" in out and "length" in out and "rules" in out
    assert main(["eval", "router", str(tmp_path / "labels.csv"), "--weak", "weak/model", "--strong",
                 "strong-model", "--baselines", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["by_file"]["summary"]["groups"] == 1
