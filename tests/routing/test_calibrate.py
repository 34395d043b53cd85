"""`llmbudget calibrate router`: the threshold that sends the chosen share of a sample to the strong tier."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    pyproject.write_text('[project]\nname = "app"\n\n[tool.llmbudget.routing.tiers]\nsmall = "gpt-4.1-nano"\n')
    write_threshold(pyproject, 0.25)
    routing = tomllib.loads(pyproject.read_text())["tool"]["llmbudget"]["routing"]
    assert routing["threshold"] == 0.25 and routing["tiers"] == {"small": "gpt-4.1-nano"}


def test_the_threshold_is_never_written_into_a_policy_that_would_not_load(tmp_path):
    from llmbudget.config import ConfigError, Policy

    # a [routing] header with a comment is the same table: it was appended a second time (invalid TOML)
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[routing]   # tuned by hand\nthreshold = 0.9\n\n[routing.tiers]\nsmall = "gpt-4.1-nano"\nlarge = ""\n')
    write_threshold(policy, 0.3)
    assert tomllib.loads(policy.read_text())["routing"]["threshold"] == 0.3
    Policy.from_file(policy)  # loads
    # no tiers: a threshold alone made every later command fail on "routing.tiers must be a table"
    for name, text in (("llmbudget.toml", '[cache]\nenabled = true\n'), ("pyproject.toml", '[project]\nname = "a"\n')):
        bare = tmp_path / "bare" / name
        bare.parent.mkdir(exist_ok=True)
        bare.write_text(text)
        with pytest.raises(ConfigError, match="has no tiers"):
            write_threshold(bare, 0.3)
        assert bare.read_text() == text


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


# -- --keep-quality: the threshold that keeps a share of the labeled accuracy ----------------------------------

import numpy as np  # noqa: E402

from llmbudget.routing.calibrate import (  # noqa: E402
    calibrate_quality,
    keep_quality_everywhere,
    keep_quality_threshold,
)


def test_keep_quality_sends_just_enough_strong() -> None:
    # 100 prompts, scores 0..99; the 30 highest-scored are the only ones the weak model gets wrong
    scores = np.arange(100, dtype=float)
    weak = (scores < 70).astype(float)
    strong = np.ones(100)
    exact = keep_quality_threshold(scores, weak, strong, keep=1.0, confidence=0.5)
    assert exact["strong_fraction"] == pytest.approx(0.3) and exact["quality_kept"] == 1.0
    assert 69 < exact["threshold"] <= 70
    half = keep_quality_threshold(scores, weak, strong, keep=0.85, confidence=0.5)
    assert half["strong_fraction"] == pytest.approx(0.15) and half["quality_kept"] == pytest.approx(0.85)
    # the bootstrap lower bound asks for more strong calls than the point estimate
    sure = keep_quality_threshold(scores, weak, strong, keep=0.85, confidence=0.95)
    assert sure["strong_fraction"] > half["strong_fraction"]
    lo, hi = sure["quality_kept_interval"]
    assert lo <= sure["quality_kept"] <= hi
    # nothing to keep: all weak
    easy = keep_quality_threshold(scores, np.ones(100), strong, keep=0.97)
    assert easy["strong_fraction"] == 0.0 and easy["threshold"] > scores.max()


def test_keep_quality_never_splits_tied_scores() -> None:
    scores = np.asarray([1.0] * 10 + [0.0] * 10)
    weak = np.asarray([0.0] + [1.0] * 19)
    result = keep_quality_threshold(scores, weak, np.ones(20), keep=1.0, confidence=0.5)
    assert result["strong_fraction"] == 0.5 and 0.0 < result["threshold"] <= 1.0


def test_keep_quality_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="keep-quality"):
        keep_quality_threshold(np.ones(3), np.ones(3), np.ones(3), keep=1.5)
    with pytest.raises(ValueError, match="no labeled prompts"):
        keep_quality_threshold(np.ones(0), np.ones(0), np.ones(0), keep=0.9)
    with pytest.raises(ValueError, match="strong model answers none"):
        keep_quality_threshold(np.ones(3), np.zeros(3), np.zeros(3), keep=0.9)


def test_keep_quality_on_a_handful_of_labels_says_its_bound_means_little(tmp_path: Path) -> None:
    """One labeled row gave the interval [1.0, 1.0] at 90%, said as sure as a thousand."""
    few = tmp_path / "few.csv"
    few.write_text("prompt,weak,strong\nWhat is 2+2?,1,1\n", encoding="utf-8")
    result = calibrate_quality(few, weak="weak", strong="strong", keep=0.9)
    assert "too few" in result["note"] and "at least 30" in result["note"]
    many = tmp_path / "many.csv"
    many.write_text("prompt,weak,strong\n" + "".join(f"Question {i}?,{i % 2},1\n" for i in range(40)),
                    encoding="utf-8")
    assert "note" not in calibrate_quality(many, weak="weak", strong="strong", keep=0.9)


def test_keep_quality_everywhere_keeps_the_share_in_the_domain_the_router_reads_worst() -> None:
    # Two domains of 100 prompts. In "facts" the weak model misses only the highest-scored 10; in "maths" the
    # router's scores say nothing: the weak model misses every other prompt, whatever its score.
    scores = np.concatenate([np.arange(100, dtype=float), np.arange(100, dtype=float)])
    weak = np.concatenate([(np.arange(100) < 90).astype(float), (np.arange(100) % 2).astype(float)])
    strong = np.ones(200)
    groups = ["facts"] * 100 + ["maths"] * 100
    pooled = keep_quality_threshold(scores, weak, strong, keep=0.9, confidence=0.5)
    every = keep_quality_everywhere(scores, weak, strong, groups, keep=0.9, confidence=0.5)
    maths = np.asarray(groups) == "maths"

    def kept(threshold: float, mask: np.ndarray) -> float:
        return float(np.where(scores[mask] >= threshold, strong[mask], weak[mask]).sum() / strong[mask].sum())

    assert kept(pooled["threshold"], maths) < 0.9  # pooled, maths loses more than the share allows
    assert every["binding_group"] == "maths" and every["threshold"] < pooled["threshold"]
    assert kept(every["threshold"], maths) >= 0.9 and kept(every["threshold"], ~maths) >= 0.9
    assert every["by_group"]["maths"]["quality_kept"] == pytest.approx(kept(every["threshold"], maths))
    assert every["by_group"]["facts"]["threshold"] == pytest.approx(
        keep_quality_threshold(scores[:100], weak[:100], strong[:100], keep=0.9, confidence=0.5)["threshold"])
    assert every["quality_kept"] == pytest.approx(kept(every["threshold"], np.ones(200, dtype=bool)))
    assert every["strong_fraction"] == pytest.approx(float(np.mean(scores >= every["threshold"])))
    sure = keep_quality_everywhere(scores, weak, strong, groups, keep=0.9)  # at the 90% bootstrap lower bound
    lo, hi = sure["quality_kept_interval"]
    assert lo <= sure["quality_kept"] <= hi and sure["threshold"] <= every["threshold"]
    with pytest.raises(ValueError, match="3 groups for 200 prompts"):
        keep_quality_everywhere(scores, weak, strong, groups[:3], keep=0.9)
    # from a review: a NaN score made the threshold NaN (nothing strong, quality kept 0.5 against 0.9, silently)
    with pytest.raises(ValueError, match="a score is NaN"):
        keep_quality_everywhere([float("nan"), .1, .3, .4], [0, 0, 1, 1], [1, 1, 1, 1], ["a", "a", "b", "b"], keep=0.9)
    with pytest.raises(ValueError, match="no labeled prompts"):
        keep_quality_everywhere([], [], [], [], keep=0.9)
    numbered = keep_quality_everywhere(scores, weak, strong, np.asarray([1] * 100 + [2] * 100), keep=0.9)
    assert set(numbered["by_group"]) == {"1", "2"} and json.dumps(numbered)  # numpy integers as JSON keys


def test_calibrate_every_file_of_a_label_folder(tmp_path, capsys):
    folder = tmp_path / "labels"
    folder.mkdir()
    for name, weak_ok in (("easy", lambda i: True), ("hard", lambda i: i % 2 == 0)):
        rows = ["prompt,weak,strong"] + [f'"{p} ({name} {i})",{int(weak_ok(i))},1' for i, p in enumerate(PROMPTS * 2)]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    result = calibrate_quality(folder, weak="weak", strong="strong", keep=0.9, every_file=True)
    assert result["binding_group"] == "hard" and set(result["by_group"]) == {"easy", "hard"}
    assert min(g["quality_kept"] for g in result["by_group"].values()) >= 0.9
    assert result["threshold"] <= calibrate_quality(folder, weak="weak", strong="strong", keep=0.9)["threshold"]
    assert main(["calibrate", "router", str(folder), "--keep-quality", "0.9", "--weak", "weak", "--strong",
                 "strong", "--every-file"]) == 0
    assert "the threshold is hard's" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs a folder of label CSVs"):
        calibrate_quality(folder / "easy.csv", weak="weak", strong="strong", keep=0.9, every_file=True)
    assert main(["calibrate", "router", str(folder), "--strong-fraction", "0.3", "--every-file"]) == 2
    assert "--every-file goes with --keep-quality" in capsys.readouterr().err


def _traffic_line(prompt: str, weak_ok: bool, strong_ok: bool) -> str:
    return json.dumps({"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]},
                       "correct": {"gpt-4.1-nano": weak_ok, "gpt-4o": strong_ok}})


def test_calibrate_quality_on_traffic_and_the_cli_writes_the_policy(tmp_path, capsys):
    traffic = tmp_path / "traffic.jsonl"
    lines = [_traffic_line(p, i % 3 != 0, True) for i, p in enumerate(PROMPTS * 3)]
    lines.append(json.dumps({"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}}))
    traffic.write_text("\n".join(lines) + "\n")
    result = calibrate_quality(traffic, weak="gpt-4.1-nano", strong="gpt-4o", keep=0.9)
    assert result["prompts"] == 30  # the unlabeled line is skipped
    assert result["quality_kept"] >= 0.9 and result["small_fraction"] == pytest.approx(1 - result["strong_fraction"])
    assert 0.0 <= result["small_token_share"] <= 1.0
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[routing.tiers]\nsmall = "gpt-4.1-nano"\nlarge = ""\n')
    assert main(["calibrate", "router", str(traffic), "--keep-quality", "0.9", "--weak", "gpt-4.1-nano",
                 "--strong", "gpt-4o", "--policy", str(policy)]) == 0
    assert "of the all-strong accuracy" in capsys.readouterr().out
    assert tomllib.loads(policy.read_text())["routing"]["threshold"] == pytest.approx(result["threshold"], abs=1e-6)


def test_traffic_labels_must_be_true_or_false(tmp_path):
    traffic = tmp_path / "traffic.jsonl"
    line = json.loads(_traffic_line("hi", True, True))
    line["correct"] = {model: "false" for model in line["correct"]}  # a string reads as True by bool()
    traffic.write_text(_traffic_line("hello", True, True) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="traffic.jsonl:2: 'correct' must map each model to true or false"):
        calibrate_quality(traffic, weak="gpt-4.1-nano", strong="gpt-4o", keep=0.9)


def test_calibrate_cli_needs_one_mode(tmp_path, capsys):
    sample = tmp_path / "s.jsonl"
    sample.write_text(_traffic_line("hi", True, True) + "\n")
    assert main(["calibrate", "router", str(sample)]) == 2
    assert "--keep-quality" in capsys.readouterr().err
    assert main(["calibrate", "router", str(sample), "--keep-quality", "0.9"]) == 2
    assert "needs --weak and --strong" in capsys.readouterr().err
    assert main(["calibrate", "router", str(sample), "--keep-quality", "0.9", "--weak", "a", "--strong", "b"]) == 2
    assert "no line has 'correct' labels" in capsys.readouterr().err
    # a percentage reads as its share (argparse's "invalid float value" before); a bare 97 says what it wants
    assert main(["calibrate", "router", str(sample), "--keep-quality", "97%", "--weak", "a", "--strong", "b"]) == 2
    assert "no line has 'correct' labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", "router", str(sample), "--keep-quality", "97", "--weak", "a", "--strong", "b"])
    assert "such as 0.97 or 97%, got '97'" in capsys.readouterr().err


@pytest.mark.parametrize(("bad", "message"), [(b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
                                              (b'{"request": "\xff"}', "not UTF-8")])
def test_calibrate_names_a_hostile_traffic_line(tmp_path, bad, message):
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_bytes(_traffic_line("hi", True, True).encode() + b"\n" + bad + b"\n")
    with pytest.raises(ValueError, match=f"traffic.jsonl:2: {message}"):
        calibrate_quality(traffic, weak="gpt-4.1-nano", strong="gpt-4o", keep=0.9)


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": "notalist"}', "messages is 'notalist'; expected a list of messages"),
    ('{"input": 5}', "input is 5; expected a list of messages or text"),
    ('{"messages": [{"role": "user", "content": "hi"}], "system": 7}', "system is 7; expected text or content"),
])
def test_a_sample_line_of_the_wrong_shape_is_named_not_scored(tmp_path, line, message):
    """Such a line was scored as a prompt, moving the threshold by a request no app can send."""
    from llmbudget.routing.calibrate import read_sample

    sample = tmp_path / "sample.jsonl"
    sample.write_text('{"input": "a question"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"sample.jsonl:2: {re.escape(message)}"):
        list(read_sample(sample))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_label_csvs_samples_and_pairs_that_are_not_utf8_name_the_file_and_line(tmp_path, capsys, suffix):
    """A byte that is not UTF-8 gave a bare "'utf-8' codec can't decode byte 0xff in position 8"."""
    from llmbudget.cache.evaluate import read_pair_rows
    from llmbudget.routing.calibrate import read_sample

    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"prompt,weak,strong\nhi,1,1\ncaf\xe9,0,1\n")  # latin-1, not UTF-8
    assert main(["calibrate", "router", str(labels), "--keep-quality", "0.9", "--weak", "weak", "--strong",
                 "strong"]) == 2
    assert f"{labels}:3: not UTF-8 text" in capsys.readouterr().err
    sample = tmp_path / f"sample{suffix}"
    sample.write_bytes(b"prompt\nhi\n\xff\n" if suffix == ".csv" else b'{"prompt": "hi"}\n{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=f"sample{suffix}:{3 if suffix == '.csv' else 2}: not UTF-8 text"):
        list(read_sample(sample))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"a": "x", "b": "y", "duplicate": true}\n{"a": "\xff", "b": "y", "duplicate": true}\n')
    with pytest.raises(ValueError, match="pairs.jsonl:2: not UTF-8 text"):
        read_pair_rows(pairs)
    labels.write_bytes(b"\xef\xbb\xbfprompt,weak,strong\nhi,1,1\n")  # a byte-order mark is not a column name
    assert main(["calibrate", "router", str(labels), "--keep-quality", "0.9", "--weak", "weak", "--strong",
                 "strong", "--json"]) == 0


def test_calibration_reads_traffic_as_live_routing_does(tmp_path):
    # requests with tools never go small live (route_tools = false), and a Messages body is scored as chat with
    # its system first: calibration counted the tool lines as small-tier savings, and scored Messages raw
    from llmbudget.routing.classifier import Router
    from llmbudget.routing.tiers import chat_view

    tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    lines = [{"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": p}], **extra},
              "correct": {"gpt-4.1-nano": True, "gpt-4o": True}}
             for p, extra in (("Hi", {}), ("What is 2+2?", {}), ("Call f", {"tools": tool}),
                              ("Call f now", {"tools": tool}))]
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = calibrate_quality(traffic, weak="gpt-4.1-nano", strong="gpt-4o", keep=0.97)
    assert result["small_fraction"] == 0.5 and result["strong_fraction"] == 0.5 and result["threshold"] <= 1.0
    messages = {"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "You are a maths tutor. Show all steps.",
                "messages": [{"role": "user", "content": "Prove that there are infinitely many primes."}]}
    from llmbudget.routing.calibrate import read_labeled

    (messages_file := tmp_path / "m.jsonl").write_text(json.dumps(
        {"request": messages, "endpoint": "messages", "correct": {"w": True, "s": True}}) + "\n")
    bodies, _, _ = read_labeled(messages_file, weak="w", strong="s")
    assert Router().score(bodies[0]) == Router().score(chat_view(messages))
