"""``llmbudget replay``: the real pipeline, offline, on a slice of the bundled sample traffic."""

from __future__ import annotations

import contextlib
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbudget.cli import main
from llmbudget.money import exact_usd, format_usd
from llmbudget.replay import ReplayResult, TrafficError, load_traffic, replay

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "traffic" / "sample.jsonl"
POLICY = ROOT / "fixtures" / "traffic" / "llmbudget.toml"
CACHE_ONLY = "[cache]\nsemantic = true\n"


def _sample() -> list[dict[str, Any]]:
    return [json.loads(text) for text in SAMPLE.read_text(encoding="utf-8").splitlines() if text.strip()]


def _slice() -> list[dict[str, Any]]:
    """About 50 lines in sample order: a few groups asked more than once, near misses, labeled prompts."""
    lines = _sample()
    counts: dict[str, int] = {}
    for line in lines:
        counts[line["group"]] = counts.get(line["group"], 0) + 1
    repeated = [g for g in dict.fromkeys(line["group"] for line in lines) if counts[g] > 1][:14]
    near = [g for g in dict.fromkeys(line["group"] for line in lines) if g.startswith("qqp-near-")][:6]
    labeled = [g for g in dict.fromkeys(line["group"] for line in lines if "correct" in line)][:14]
    keep = set(repeated) | set(near) | set(labeled)
    return [line for line in lines if line["group"] in keep]


def _write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The slice replayed once through the command (--json --html) and once through the API."""
    folder = tmp_path_factory.mktemp("replay")
    lines = _slice()
    traffic = _write(folder / "traffic.jsonl", lines)
    html = folder / "report.html"
    code, out = _cli("replay", str(traffic), "--policy", str(POLICY), "--json", "--html", str(html))
    assert code == 0
    return {"lines": lines, "summary": json.loads(out), "html": html,
            "result": replay(traffic, POLICY)}


def test_the_sample_is_small_and_recorded() -> None:
    lines = load_traffic(SAMPLE)
    assert 150 <= len(lines) <= 250
    assert SAMPLE.stat().st_size < 1_500_000
    for line in lines:
        assert set(line.responses) == {"gpt-4o", "gpt-4.1-nano"}
        assert all(r["id"].startswith("chatcmpl-") and r["usage"]["completion_tokens"] > 0
                   for r in line.responses.values())


def test_json_has_exactly_the_documented_keys(sliced: dict[str, Any]) -> None:
    summary = sliced["summary"]
    assert list(summary) == ["calls", "baseline_usd", "actual_usd", "savings_pct", "saved_by", "cache", "routed",
                             "capped", "quality", "features"]
    assert list(summary["saved_by"]) == ["cache", "routing", "caps", "refused", "other"]
    assert list(summary["cache"]) == ["exact", "semantic", "wrong"]
    assert list(summary["quality"]) == ["baseline_accuracy", "accuracy", "kept_pct", "by_decision"]
    assert list(summary["quality"]["by_decision"]) == ["kept", "routed", "escalated", "cache", "refused"]
    assert list(summary["features"]) == ["cache alone", "routing alone"]
    assert summary["calls"] == len(sliced["lines"])
    assert all(isinstance(summary[k], int) for k in ("calls", "routed", "capped"))
    assert all(isinstance(summary[k], float) for k in ("baseline_usd", "actual_usd", "savings_pct"))


def test_the_policy_saves_money(sliced: dict[str, Any]) -> None:
    summary = sliced["summary"]
    assert summary["baseline_usd"] >= summary["actual_usd"] > 0
    expected = (summary["baseline_usd"] - summary["actual_usd"]) / summary["baseline_usd"] * 100
    assert summary["savings_pct"] == pytest.approx(expected, abs=0.01)
    assert summary["routed"] > 0
    assert summary["capped"] == 0  # the sample policy sets no caps
    result = sliced["result"]
    assert {**result.summary(), "features": result.features} == summary  # the API and the command agree
    saved_by = result.saved_by()
    assert sum(saved_by.values()) == result.baseline_usd - result.actual_usd  # exact: the parts make the whole
    assert saved_by["cache"] > 0 and saved_by["routing"] > 0  # the sample policy caches and routes
    assert saved_by["caps"] == saved_by["refused"] == 0  # no caps, no budgets in it


def test_cache_hits_are_counted_and_stay_inside_a_tenant(sliced: dict[str, Any]) -> None:
    summary, result = sliced["summary"], sliced["result"]
    assert isinstance(result, ReplayResult)
    seen: set[tuple[str, str]] = set()
    repeats = 0
    for line in sliced["lines"]:
        key = (line["tenant"], json.dumps(line["request"], sort_keys=True))
        repeats += key in seen and all(r["choices"][0]["finish_reason"] == "stop" for r in line["responses"].values())
        seen.add(key)
    assert repeats > 0
    assert summary["cache"]["exact"] + summary["cache"]["semantic"] >= repeats
    hits = [r for r in result.lines if r.cache_tier]
    assert len(hits) == summary["cache"]["exact"] + summary["cache"]["semantic"]
    for hit in hits:
        assert hit.cost_usd == 0 and hit.baseline_usd > 0
        assert hit.source is not None
        source = result.lines[hit.source]
        assert source.line.tenant == hit.line.tenant and not source.cache_tier
    assert summary["cache"]["wrong"] == sum(r.wrong for r in result.lines)


def test_quality_figures(sliced: dict[str, Any]) -> None:
    quality = sliced["summary"]["quality"]
    labeled = [line for line in sliced["lines"] if "correct" in line]
    assert labeled
    assert quality["baseline_accuracy"] == pytest.approx(
        sum(line["correct"]["gpt-4o"] for line in labeled) / len(labeled), abs=1e-4)
    judged = [r for r in sliced["result"].lines if r.line.correct]
    assert quality["accuracy"] == pytest.approx(sum(bool(r.correct) for r in judged) / len(judged), abs=1e-4)
    assert quality["kept_pct"] == pytest.approx(quality["accuracy"] / quality["baseline_accuracy"] * 100, abs=0.01)
    for result in judged:  # a routed answer is judged by the label of the model that gave it
        if not result.cache_tier:
            assert result.correct == result.line.correct[result.answered_by]


def test_html_report_is_self_contained(sliced: dict[str, Any]) -> None:
    html = sliced["html"].read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<svg") == 5  # total, saved by mechanism, by model, by tenant, over the replay
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for chunk in html.split("<svg")[1:]:
        ElementTree.fromstring("<svg" + chunk.split("</svg>")[0] + "</svg>")  # well-formed SVG
    for tenant in {line["tenant"] for line in sliced["lines"]}:
        assert tenant in html
    assert "saved by the cache" in html and "saved by routing" in html  # savings by mechanism, as in the table


def test_html_charts_the_savings_by_mechanism_in_the_one_money_format(sliced: dict[str, Any]) -> None:
    html = sliced["html"].read_text(encoding="utf-8")
    chart = next(ElementTree.fromstring("<svg" + chunk.split("</svg>")[0] + "</svg>")
                 for chunk in html.split("<svg")[1:] if 'aria-label="saved by mechanism"' in chunk)
    saved = {name: value for name, value in sliced["result"].saved_by().items() if value}
    assert {"cache", "routing"} <= set(saved)
    svg = "{http://www.w3.org/2000/svg}"
    bars = {rect.findtext(f"{svg}title") for rect in chart.iter(f"{svg}rect")}
    assert f"saved by the cache: {format_usd(saved['cache'])}" in bars
    assert f"saved by routing: {format_usd(saved['routing'])}" in bars
    assert len(bars) == len(saved)
    # one money format in the figures table, the terminal table and the charts: $ and six decimals
    for amount in re.findall(r"\$[0-9.]+", html):
        assert re.fullmatch(r"\$\d+\.\d{6}", amount), amount
    code, out = _cli("replay", str(_write(sliced["html"].parent / "again.jsonl", sliced["lines"])),
                     "--policy", str(POLICY))
    assert code == 0
    assert f"{format_usd(saved['cache'])}" in out and f"{format_usd(saved['routing'])}" in out


def test_format_usd_is_micro_dollars_with_more_digits_below() -> None:
    assert format_usd(Decimal("0.0556904")) == "$0.055690"
    assert format_usd(Decimal(12)) == "$12.000000"
    assert format_usd(Decimal(0)) == "$0.000000"
    assert format_usd(Decimal("-0.00012")) == "-$0.000120"
    assert format_usd(Decimal("0.00000012")) == "$0.00000012"
    assert format_usd(0.5) == "$0.500000"
    # under 1e-10 every digit shows ("$0." before), and minus zero is zero
    assert format_usd(Decimal("1E-11")) == "$0.00000000001"
    assert format_usd(Decimal("-0")) == "$0.000000" and exact_usd(Decimal("-0")) == "$0.00"
    assert exact_usd(Decimal("6.75E-7")) == "$0.000000675"


def _line(line: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(line)), **changes}


def test_a_hit_from_another_group_is_wrong(tmp_path: Path) -> None:
    base = next(line for line in _sample() if line.get("correct", {}).get("gpt-4o")
                and line["responses"]["gpt-4o"]["choices"][0]["finish_reason"] == "stop")
    lines = [base, _line(base, group="another question"), _line(base)]
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(CACHE_ONLY, encoding="utf-8")
    code, out = _cli("replay", str(_write(tmp_path / "t.jsonl", lines)), "--policy", str(policy), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["cache"] == {"exact": 2, "semantic": 0, "wrong": 1}
    assert summary["routed"] == 0
    assert summary["actual_usd"] == pytest.approx(summary["baseline_usd"] / 3)
    quality = summary["quality"]
    assert {k: quality[k] for k in ("baseline_accuracy", "accuracy", "kept_pct")} == {
        "baseline_accuracy": 1.0, "accuracy": 0.6667, "kept_pct": 66.67}
    # the wrong hit is the one answer lost, and it is the cache's
    assert quality["by_decision"]["cache"] == {"requests": 2, "judged": 2, "lost": 1, "gained": 0}
    assert quality["by_decision"]["kept"] == {"requests": 1, "judged": 1, "lost": 0, "gained": 0}
    assert "features" not in summary  # a cache-only policy has no features to compare


def test_lost_and_gained_answers_are_counted_per_decision_and_feature(sliced: dict[str, Any]) -> None:
    result, summary = sliced["result"], sliced["summary"]
    decisions = summary["quality"]["by_decision"]
    assert sum(row["requests"] for row in decisions.values()) == summary["calls"]
    assert decisions["routed"]["requests"] + decisions["escalated"]["requests"] == summary["routed"]
    assert decisions["cache"]["requests"] == summary["cache"]["exact"] + summary["cache"]["semantic"]
    judged = [r for r in result.lines if r.correct is not None and r.baseline_correct is not None]
    lost = sum(r.baseline_correct and not r.correct for r in judged)
    gained = sum(r.correct and not r.baseline_correct for r in judged)
    assert sum(row["lost"] for row in decisions.values()) == lost
    assert sum(row["gained"] for row in decisions.values()) == gained
    assert [r.change for r in result.changes()].count("lost") == lost
    # accuracy moves by exactly the gained minus the lost answers
    assert round((gained - lost) / len(judged), 4) == pytest.approx(
        summary["quality"]["accuracy"] - summary["quality"]["baseline_accuracy"], abs=1e-4)
    # each feature alone: the cache never routes, routing alone never hits the cache
    cache_alone, routing_alone = summary["features"]["cache alone"], summary["features"]["routing alone"]
    assert cache_alone["routed"] == 0 and cache_alone["quality"]["by_decision"]["routed"]["requests"] == 0
    assert routing_alone["cache"] == {"exact": 0, "semantic": 0, "wrong": 0}
    # each saves something, and together more than either alone
    assert summary["savings_pct"] > max(routing_alone["savings_pct"], cache_alone["savings_pct"])
    assert min(routing_alone["savings_pct"], cache_alone["savings_pct"]) > 0
    html = sliced["html"].read_text(encoding="utf-8")
    assert "What each feature saves and keeps" in html and "cache alone" in html


def test_a_model_without_a_recorded_answer_gets_a_stand_in(tmp_path: Path) -> None:
    base = _sample()[0]
    line = _line(base, responses={"gpt-4.1-nano": base["responses"]["gpt-4.1-nano"]})
    policy = tmp_path / "llmbudget.toml"
    policy.write_text("", encoding="utf-8")
    result = replay(_write(tmp_path / "t.jsonl", [line]), policy)
    assert result.missing == 1
    # the stand-in answer is priced as the model the request went to (gpt-4o), like the baseline
    assert result.actual_usd == result.baseline_usd > 0


def test_text_output_has_tables(tmp_path: Path) -> None:
    traffic = _write(tmp_path / "t.jsonl", _slice()[:5])
    code, out = _cli("replay", str(traffic), "--policy", str(POLICY))
    assert code == 0
    for text in ("cost without llmbudget", "cost with llmbudget", "by model", "by tenant", "quality kept",
                 "what each feature saves and keeps", "labeled answers by decision"):
        assert text in out


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}}', "'responses'"),
        ('{"request": {"messages": [{"role": "user", "content": "hi"}]}, "responses": {}}', "no 'model'"),
        ('{"request": {"model": "gpt-4o", "messages": []}, "responses": {}}', "no 'messages'"),
        ('{"endpoint": "embeddings", "request": {}, "responses": {}}', "endpoint 'embeddings' is not supported"),
        ('{"reqest": {}, "responses": {}}', "unknown keys ['reqest']"),
        ('{"request": {"model": "m", "messages": [1]}, "responses": {"m": {"choices": []}}}', "no 'usage'"),
        (('{"request": {"model": "m", "messages": [1]}, "responses": {"m": {"choices": [], "usage": {}}}, '
          '"correct": {"m": "yes"}}'), "'correct' must be"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, message: str) -> None:
    traffic = tmp_path / "t.jsonl"
    traffic.write_text(json.dumps(_sample()[0]) + "\n\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(TrafficError, match=f"t.jsonl line 3: .*{_escape(message)}"):
        load_traffic(traffic)
    assert main(["replay", str(traffic), "--policy", str(POLICY), "--json"]) == 2
    err = capsys.readouterr().err
    assert "llmbudget replay:" in err and "line 3" in err and message in err


def test_missing_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "none.jsonl"), "--policy", str(POLICY), "--json"]) == 2
    assert "no such traffic file" in capsys.readouterr().err
    traffic = _write(tmp_path / "t.jsonl", _sample()[:1])
    assert main(["replay", str(traffic), "--policy", str(tmp_path / "none.toml"), "--json"]) == 2
    assert "no such policy file" in capsys.readouterr().err


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_recorded_logprobs_drive_the_cascade(tmp_path: Path, llm_server: str) -> None:
    """Traffic whose small-tier answers were recorded with their log-probabilities, from the real local server:
    the cascade escalates the unsure ones, pays both attempts, and judges them by the strong tier's label."""
    import math

    import openai

    from llmbudget.routing.confidence import answer_confidence

    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0)
    questions = ["What is the capital of France?", "Name a prime number.", "What colour is the sky?",
                 "How many legs does a spider have?", "Who wrote Hamlet?", "What is 2 + 2?"]
    lines = []
    for i, question in enumerate(questions):
        request = {"model": "gpt-4o", "messages": [{"role": "user", "content": question}], "max_tokens": 6}

        def recorded(model: str, **extra: Any) -> dict[str, Any]:
            raw = client.chat.completions.with_raw_response.create(**{**request, "model": model, **extra})
            return json.loads(raw.http_response.text)

        lines.append({"request": request, "group": f"q{i}",
                      "responses": {"gpt-4o": recorded("gpt-4o"),
                                    "gpt-4.1-nano": recorded("gpt-4.1-nano", logprobs=True, top_logprobs=1)},
                      "correct": {"gpt-4o": True, "gpt-4.1-nano": i % 2 == 0}})
    confidences = sorted(answer_confidence(line["responses"]["gpt-4.1-nano"]) for line in lines)
    assert all(c is not None and 0 < c <= 1 for c in confidences)
    cut = (confidences[2] + confidences[3]) / 2  # the three least sure escalate
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(f'[routing]\nthreshold = 1.0\nmin_confidence = {cut}\n'
                      '[routing.tiers]\nsmall = "gpt-4.1-nano"\nlarge = ""\n', encoding="utf-8")
    result = replay(_write(tmp_path / "t.jsonl", lines), policy)
    escalated = [r for r in result.lines if r.decision == "escalated"]
    assert len(escalated) == 3 and sum(r.decision == "routed" for r in result.lines) == 3
    for line in escalated:
        assert answer_confidence(line.line.responses["gpt-4.1-nano"]) < cut
        assert line.answered_by == "gpt-4o" and line.correct is True
        assert line.cost_usd > line.baseline_usd  # the weak attempt is paid on top of the strong one
    by_decision = result.summary()["quality"]["by_decision"]
    assert by_decision["escalated"]["requests"] == 3 and by_decision["escalated"]["lost"] == 0
    kept = [r for r in result.lines if r.decision == "routed"]
    assert by_decision["routed"]["lost"] == sum(not r.correct for r in kept)
    assert not math.isnan(result.summary()["quality"]["kept_pct"])


def test_markup_in_tenants_and_prompts_is_printed_as_text(tmp_path: Path) -> None:
    """A tenant named ``[/]`` crashed the table (Rich MarkupError); ``[link=...]`` rendered as a link."""
    lines = [_line(line, tenant="[/]acme[link=https://example.test]x") for line in _slice()[:6]]
    lines[0]["request"] = {**lines[0]["request"], "messages": [{"role": "user", "content": "[bold]What[/bold] [/]"}]}
    traffic = _write(tmp_path / "t[x].jsonl", lines)
    code, out = _cli("replay", str(traffic), "--policy", str(POLICY))
    assert code == 0
    assert "[/]acme" in out  # printed as text, not read as markup


def test_control_characters_in_tenants_are_printed_as_escapes(tmp_path: Path) -> None:
    """A tenant holding terminal escapes (an OSC that sets the window title, colours) reached the terminal raw."""
    lines = [_line(line, tenant="a\x1b]0;PWNED\x07\x1b[31m") for line in _slice()[:4]]
    code, out = _cli("replay", str(_write(tmp_path / "t.jsonl", lines)), "--policy", str(POLICY))
    assert code == 0
    assert "\x1b]0;" not in out and "\x07" not in out and "a\\x1b]0;" in out


def test_control_characters_in_names_are_written_as_escapes_in_the_html_report(tmp_path: Path) -> None:
    """A NUL, an ESC or a right-to-left override in a tenant reached the HTML raw (a parse error in HTML and its
    SVG; the override reorders what is shown), and a file name that is not UTF-8 failed the report after the
    whole replay, leaving an empty file."""
    lines = [_line(line, tenant="nul\x00x\x1b[31m\u202eRTL") for line in _slice()[:4]]
    traffic = _write(tmp_path / "bad\udcffname.jsonl", lines)
    html = tmp_path / "report.html"
    code, _ = _cli("replay", str(traffic), "--policy", str(POLICY), "--json", "--html", str(html))
    assert code == 0
    page = html.read_text(encoding="utf-8")
    assert not any(c in page for c in "\x00\x1b\u202e") and "nul\\x00x\\x1b" in page and "\\u202eRTL" in page
    assert "bad\\udcffname.jsonl" in page


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        ('{"request": NaN}', "NaN is not a number JSON allows"),
        ("completion_tokens=1e30", "usage.completion_tokens is 1e+30"),
        ("completion_tokens=-3", "usage.completion_tokens is -3"),
        ('completion_tokens="12"', "usage.completion_tokens is '12'"),
    ],
)
def test_hostile_lines_are_refused_with_their_line_number(tmp_path: Path, bad: str, message: str) -> None:
    if bad.startswith("completion_tokens="):
        line = _sample()[0]
        line["responses"]["gpt-4o"]["usage"]["completion_tokens"] = json.loads(bad.split("=", 1)[1])
        bad = json.dumps(line)
    traffic = tmp_path / "t.jsonl"
    traffic.write_text(json.dumps(_sample()[0]) + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(TrafficError, match=f"t.jsonl line 2: .*{_escape(message)}"):
        load_traffic(traffic)


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    traffic = tmp_path / "t.jsonl"
    traffic.write_bytes(json.dumps(_sample()[0]).encode() + b"\n" + b'{"tenant": "\xff\xfe"}\n')
    with pytest.raises(TrafficError, match="t.jsonl line 2: not UTF-8"):
        load_traffic(traffic)


def _mutated(path: tuple[str, ...], value: Any) -> str:
    """The first sample line with the value at ``path`` replaced (``...`` deletes it), as JSON text."""
    line = _sample()[0]
    *folders, last = path
    target = line
    for key in folders:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return json.dumps(line)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_mutated(("tenant",), "a\ud800b"), "'\\ud800' (a lone surrogate), which is not Unicode text"),
        (_mutated(("request", "temperature"), "NUMBER").replace('"NUMBER"', "1e400"), "1e400 is too large"),
        (_mutated(("meta",), "NEST").replace('"NEST"', "[" * 200 + "]" * 200), "nested more than 100 levels"),
        (_mutated(("responses", "gpt-4o", "usage", "prompt_tokens_details"), {"cached_tokens": 1e30}),
         "usage.prompt_tokens_details.cached_tokens is 1e+30"),
        (_mutated(("responses", "gpt-4o", "usage", "completion_tokens_details"), {"reasoning_tokens": -1}),
         "usage.completion_tokens_details.reasoning_tokens is -1"),
        (_mutated(("responses", "gpt-4o", "usage", "completion_tokens"), 2.5), "usage.completion_tokens is 2.5"),
        (_mutated(("responses", "gpt-4o", "usage", "prompt_tokens"), True), "usage.prompt_tokens is True"),
        (_mutated(("responses", "gpt-4o", "usage", "prompt_tokens"), ...), "usage has no prompt_tokens"),
        # charged its estimate when replayed: the baseline, priced from the file, would not be what was recorded
        (_mutated(("responses", "gpt-4o", "usage", "prompt_tokens"), 0), "usage reports no input tokens"),
        (_mutated(("responses", "gpt-4o", "usage", "completion_tokens"), 0), "usage reports no output tokens"),
    ],
)
def test_more_hostile_lines_are_refused_with_their_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, message: str
) -> None:
    """Lone surrogates, numbers past float range, deep nesting the pipeline would recurse into, bad nested counts."""
    traffic = tmp_path / "t.jsonl"
    traffic.write_text(json.dumps(_sample()[0]) + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(TrafficError, match=f"t.jsonl line 2: .*{_escape(message)}"):
        load_traffic(traffic)
    assert main(["replay", str(traffic), "--policy", str(POLICY), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t.jsonl line 2: " in err and "expected" in err


def test_a_bad_count_inside_usage_iterations_names_its_line(tmp_path: Path) -> None:
    # an advisor's (or a compaction's) count inside usage.iterations raised a bare BadUsage, no file or line named
    answer = {"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
              "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 10, "output_tokens": 5,
                        "iterations": [{"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": -5}]}}
    line = {"endpoint": "messages", "request": {"model": "claude-sonnet-4-6", "max_tokens": 16,
                                                "messages": [{"role": "user", "content": "hi"}]},
            "responses": {"claude-sonnet-4-6": answer}}
    traffic = tmp_path / "t.jsonl"
    traffic.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(TrafficError, match=r"t.jsonl line 1: responses\['claude-sonnet-4-6'\].usage.iterations: "
                                           r"token count -5 is not a whole number"):
        load_traffic(traffic)


def test_odd_but_sound_lines_still_load(tmp_path: Path) -> None:
    """A byte-order mark, counts written as 12.0, null details: what providers and editors really write."""
    usage = {"prompt_tokens": 12.0, "completion_tokens": 3, "total_tokens": 15,
             "prompt_tokens_details": {"cached_tokens": None, "audio_tokens": 0}, "completion_tokens_details": None}
    traffic = tmp_path / "t.jsonl"
    traffic.write_bytes(b"\xef\xbb\xbf" + _mutated(("responses", "gpt-4o", "usage"), usage).encode() + b"\n")
    (line,) = load_traffic(traffic)
    assert line.responses["gpt-4o"]["usage"]["prompt_tokens"] == 12


_LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6)
           | st.sampled_from(["\ud800", "[/]", "[link=https://x.test]x", "\x00", "NEST"]))
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4) | st.sampled_from(["model", "messages", "usage"]),
                                         inner, max_size=3), max_leaves=8)
_PATHS = [("request",), ("request", "model"), ("request", "messages"), ("request", "messages", 0),
          ("responses",), ("responses", "gpt-4o"), ("responses", "gpt-4o", "choices"),
          ("responses", "gpt-4o", "usage"), ("responses", "gpt-4o", "usage", "prompt_tokens"),
          ("responses", "gpt-4o", "usage", "completion_tokens"),
          ("responses", "gpt-4o", "usage", "prompt_tokens_details"), ("tenant",), ("group",), ("correct",),
          ("correct", "gpt-4o"), ("endpoint",), ("meta",), ("unknown",)]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(_PATHS), value=_VALUES | st.just(...), depth=st.integers(0, 3000),
       cut=st.none() | st.integers(0, 400))
def test_any_json_ish_line_loads_or_is_a_traffic_error(path: tuple[Any, ...], value: Any, depth: int,
                                                       cut: int | None) -> None:
    """Whatever a line holds, parse_line returns a TrafficLine or raises TrafficError, never another exception."""
    from llmbudget.replay import TrafficLine, parse_line

    try:
        text = _mutated(path, value)
    except (KeyError, IndexError, TypeError):
        return  # the path runs through a value this line does not have
    text = text.replace('"NEST"', "[" * depth + "1" + "]" * depth)
    if cut is not None:
        text = text[:cut]
    try:
        assert isinstance(parse_line(text, number=7, source="t.jsonl"), TrafficLine)
    except TrafficError as exc:
        assert str(exc).startswith("t.jsonl line 7: ")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_bytes_load_or_are_a_traffic_error(tmp_path: Path, data: bytes) -> None:
    traffic = tmp_path / "t.jsonl"
    traffic.write_bytes(data)
    try:
        load_traffic(traffic)
    except TrafficError as exc:
        assert str(exc).startswith(str(traffic))


def test_messages_traffic_replays_through_the_anthropic_sdk(tmp_path: Path, messages_server: str) -> None:
    """Anthropic Messages lines, their answers recorded now from the real Messages server for two models,
    replayed under a policy with the cache and Claude tiers: routed, cached, priced, saved."""
    import anthropic

    client = anthropic.Anthropic(base_url=messages_server, api_key="sk-test", max_retries=0)
    questions = ["Say hi", "Name a colour", "Say hi", "Count to three", "Name a colour", "Say hi"]
    lines = []
    for number, question in enumerate(questions):
        request = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stop_sequences": ["\n"], "temperature": 0,
                   "messages": [{"role": "user", "content": question}]}
        responses = {}
        for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
            raw = client.messages.with_raw_response.create(**{**{k: v for k, v in request.items()
                                                                 if k != "temperature"}, "model": model},
                                                           extra_body={"temperature": 0})
            responses[model] = json.loads(raw.http_response.text)
        lines.append({"endpoint": "messages", "tenant": "acme", "group": question, "request": request,
                      "responses": responses, "correct": {"claude-sonnet-4-5": True, "claude-haiku-4-5": True}})
        assert number == len(lines) - 1
    traffic = _write(tmp_path / "messages.jsonl", lines)
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[cache]\n[routing]\nthreshold = 0.2\n[routing.tiers]\n'
                      'small = { model = "gpt-4.1-nano", anthropic = "claude-haiku-4-5" }\nlarge = ""\n')
    code, out = _cli("replay", str(traffic), "--policy", str(policy), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["calls"] == 6
    assert summary["cache"]["exact"] == 3  # the repeated questions
    assert summary["routed"] >= 1 and summary["savings_pct"] > 0
    assert sum(summary["saved_by"].values()) == pytest.approx(summary["baseline_usd"] - summary["actual_usd"],
                                                              abs=1e-8)


def _replay_long_answers(tmp_path: Path, longer_than: int, policy_text: str) -> Any:
    """The replay, under ``policy_text``, of five sample lines whose right gpt-4o answer is over ``longer_than``
    tokens."""
    lines = [line for line in _sample() if line.get("correct", {}).get("gpt-4o")
             and line["responses"]["gpt-4o"]["usage"]["completion_tokens"] > longer_than][:5]
    assert len(lines) == 5
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(policy_text, encoding="utf-8")
    return replay(_write(tmp_path / "t.jsonl", lines), policy)


def test_a_capped_request_is_answered_as_its_cap_cuts_it(tmp_path: Path) -> None:
    # The recorded answer was served whole whatever the cap: caps looked free and cost no quality.
    result = _replay_long_answers(tmp_path, 4, '[routing]\nthreshold = 0.0\n[routing.tiers]\nsmall = "gpt-4.1-nano"\n'
                                               'large = { model = "", max_output_tokens = 4 }\n')
    capped = [r for r in result.lines if r.capped]
    assert len(capped) == 5
    for r in capped:
        prompt = r.line.responses["gpt-4o"]["usage"]["prompt_tokens"]
        assert r.cost_usd == (prompt * Decimal("2.5") + 4 * Decimal("10")) / 1_000_000  # 4 output tokens, not all
        assert r.correct is False and r.baseline_correct is True  # cut short: not counted right
    assert result.summary()["saved_by"]["caps"] > 0


def test_periodic_budgets_see_the_whole_file_as_one_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each reservation read the wall clock: a replay across a minute (or a midnight) started its budgets over.
    import time as time_module

    lines = [line for line in _sample() if line.get("tenant") == "acme"][:12]
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[[budgets]]\nusd = 0.002\nper = "tenant"\nperiod = "minute"\n', encoding="utf-8")
    clock = iter(range(0, 10**6, 30))  # every reading of the clock half a minute later
    monkeypatch.setattr(time_module, "time", lambda: 1_750_000_000.0 + next(clock))
    result = replay(_write(tmp_path / "t.jsonl", lines), policy)
    assert result.refused > 0 and result.actual_usd <= Decimal("0.002")


def test_an_escalated_line_is_judged_by_the_answer_that_served_it(tmp_path: Path) -> None:
    # The small tier's answer is cut by its cap and retried on gpt-4o, which answers in full: the cut flag of the
    # weak answer stayed on, and every such line was counted wrong.
    result = _replay_long_answers(tmp_path, 8, '[routing]\nthreshold = 1.0\nescalate = true\n[routing.tiers]\n'
                                               'small = { model = "gpt-4.1-nano", max_output_tokens = 8 }\nlarge = ""\n')
    escalated = [r for r in result.lines if r.escalated]
    assert len(escalated) == 5
    assert all(r.answered_by == "gpt-4o" and r.correct is True for r in escalated)
    # each attempt is booked on the model it was sent to (the weak one's cost was on gpt-4o, nano had no row)
    by_model = result.by("model")
    assert by_model["gpt-4.1-nano"]["sent"] == 5 and by_model["gpt-4.1-nano"]["actual_usd"] > 0
    assert sum(row["actual_usd"] for row in by_model.values()) == sum(r.cost_usd for r in result.lines)
    assert by_model["gpt-4o"]["actual_usd"] == sum(r.spent_on["gpt-4o"] for r in escalated)


def test_a_streamed_line_is_never_escalated_as_live_it_would_not_be(tmp_path: Path) -> None:
    # live, a stream reaches the app as it comes: never judged nor escalated. Replayed as one JSON answer, the line
    # was escalated and judged by the strong answer, so the replay overstated the quality routing keeps.
    lines = [line for line in _sample() if line.get("correct", {}).get("gpt-4o")
             and line["responses"]["gpt-4o"]["usage"]["completion_tokens"] > 8][:5]
    streamed = [_line(line, request={**line["request"], "stream": True}) for line in lines]
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[routing]\nthreshold = 1.0\nescalate = true\n[routing.tiers]\n'
                      'small = { model = "gpt-4.1-nano", max_output_tokens = 8 }\nlarge = ""\n', encoding="utf-8")
    result = replay(_write(tmp_path / "t.jsonl", streamed), policy)
    assert [r.decision for r in result.lines] == ["routed"] * 5
    assert all(r.answered_by == "gpt-4.1-nano" for r in result.lines)


def test_a_hit_between_lines_not_known_to_ask_the_same_is_judged_by_the_lines_own_label(tmp_path: Path) -> None:
    # one line without a group: the hit inherited the source's label, and the replay kept 200% of quality
    base = next(line for line in _sample() if line.get("correct", {}).get("gpt-4o")
                and line["responses"]["gpt-4o"]["choices"][0]["finish_reason"] == "stop")
    first = {k: v for k, v in _line(base).items() if k != "group"}
    second = _line(base, group="g2", correct={model: False for model in base["correct"]})
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(CACHE_ONLY, encoding="utf-8")
    result = replay(_write(tmp_path / "t.jsonl", [first, second]), policy)
    hit = result.lines[1]
    assert hit.cache_tier == "exact" and hit.correct is False
    quality = result.summary()["quality"]
    assert quality["kept_pct"] == 100.0 and quality["by_decision"]["cache"]["gained"] == 0


def test_an_answer_naming_a_dated_snapshot_is_priced_alike_on_both_sides(tmp_path: Path) -> None:
    """A recorded answer names the snapshot that answered (``gpt-4o-2024-05-13``, dearer than ``gpt-4o``): the
    baseline was priced as ``gpt-4o`` and the replayed call as the snapshot, a 74% loss no policy made."""
    base = next(line for line in _sample() if line["responses"]["gpt-4o"]["choices"][0]["finish_reason"] == "stop")
    responses = {**base["responses"], "gpt-4o": {**base["responses"]["gpt-4o"], "model": "gpt-4o-2024-05-13"}}
    policy = tmp_path / "llmbudget.toml"
    policy.write_text("", encoding="utf-8")  # nothing on: what was spent is what the baseline says
    code, out = _cli("replay", str(_write(tmp_path / "t.jsonl", [_line(base, responses=responses)])),
                     "--policy", str(policy), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["actual_usd"] == summary["baseline_usd"] > 0 and summary["savings_pct"] == 0
