"""The `llmbudget` command: prices, report, and the eval/bench commands' JSON keys."""

from __future__ import annotations

import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest

from llmbudget.calls import SpendRecord, Usage
from llmbudget.cli import main
from llmbudget.ledger import SQLiteLedger

SAMPLE_TRAFFIC = Path(__file__).resolve().parents[1] / "fixtures" / "traffic" / "sample.jsonl"


def run(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_prices_use_the_apps_own_prices(capsys, tmp_path, monkeypatch):
    # the policy's [prices] were ignored: "unknown: charged 15", and the advice to add what was there already
    (tmp_path / "llmbudget.toml").write_text('[prices]\n"gemma-3-*" = { input = 0.02, output = 0.04 }\n')
    monkeypatch.chdir(tmp_path)
    code, doc = run(capsys, "prices", "gemma-3-1b", "--json")
    assert code == 0 and doc["models"][0]["input_per_mtok"] == 0.02 and doc["models"][0]["output_per_mtok"] == 0.04
    monkeypatch.chdir(tmp_path.parent)
    code, doc = run(capsys, "prices", "gemma-3-1b", "--json", "--policy", str(tmp_path / "llmbudget.toml"))
    assert code == 0 and doc["models"][0]["known"]


def test_prices_check_the_policy_file_as_the_app_does(capsys, tmp_path):
    # a missing file was a raw "[Errno 2] ...", and a typo at the top level was accepted (the app refuses it)
    assert main(["prices", "gpt-4o", "--policy", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such policy file" in capsys.readouterr().err
    (tmp_path / "llmbudget.toml").write_text('ledgr = "x.db"\n')
    assert main(["prices", "gpt-4o", "--policy", str(tmp_path / "llmbudget.toml")]) == 2
    assert "llmbudget.toml: unknown keys ['ledgr']" in capsys.readouterr().err


def test_prices_known_and_unknown(capsys):
    code, doc = run(capsys, "prices", "gpt-4o-mini", "no-such-model", "--json")
    assert code == 1  # an unknown model is an error, not $0
    known, unknown = doc["models"]
    assert known == {"model": "gpt-4o-mini", "known": True, "input_per_mtok": 0.15, "cached_input_per_mtok": 0.075,
                     "output_per_mtok": 0.6, "per_request": 0.0}
    assert unknown["known"] is False and unknown["input_per_mtok"] is None
    assert doc["prices"]["source"].startswith("genai-prices")
    assert run(capsys, "prices", "gpt-4o-mini", "--json")[0] == 0


def test_prices_are_a_calls_rates_below_the_long_context_line(capsys):
    """A call of a million tokens crosses Claude's and Gemini 2.5 Pro's 200k-token line: their doubled rates were
    shown as the model's price (claude-sonnet-4 input $6, not $3)."""
    from llmbudget.calls import Usage
    from llmbudget.pricing import Pricing

    code, doc = run(capsys, "prices", "claude-sonnet-4", "gemini-2.5-pro", "--json")
    assert code == 0
    pricing = Pricing()
    for row in doc["models"]:
        small = pricing.cost(Usage(input_tokens=1_000), model=row["model"]).usd * 1000
        long_context = pricing.cost(Usage(input_tokens=1_000_000), model=row["model"]).usd
        assert row["input_per_mtok"] == float(small) < float(long_context), row
    # a fee per request is not a price per token: it was counted a thousand times ("sonar" input at $13 per 1M)
    code, doc = run(capsys, "prices", "sonar", "--base-url", "https://api.perplexity.ai", "--json")
    [row] = doc["models"]
    fee = pricing.cost(Usage(), model="sonar", base_url="https://api.perplexity.ai").usd
    per_token = pricing.cost(Usage(input_tokens=1_000), model="sonar", base_url="https://api.perplexity.ai").usd - fee
    assert code == 0 and fee > 0 and row["per_request"] == float(fee) and row["input_per_mtok"] == float(per_token * 1000)
    assert main(["prices", "sonar", "--base-url", "https://api.perplexity.ai"]) == 0
    assert f"sonar: plus ${float(fee):g} per request" in capsys.readouterr().out


def record(tenant: str, model: str, cost: str, saved: str = "0", day: float = 0.0, prompt_cache: str = "0",
           routing: str = "0") -> SpendRecord:
    return SpendRecord(time=time.time() - day * 86400, endpoint="chat.completions", base_url="https://api.openai.com/v1",
                       model_requested=model, model_sent=model, model_answered=model, usage=Usage(10, 0, 0, 5),
                       cost_usd=Decimal(cost), latency_s=0.1, tenant=tenant, saved_usd=Decimal(saved),
                       prompt_cache_saved_usd=Decimal(prompt_cache), routing_saved_usd=Decimal(routing))


def test_report_sums_spend_and_savings_by_tenant_model_and_day(tmp_path, capsys):
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    for rec in (record("a", "gpt-4o", "0.01"), record("a", "gpt-4o-mini", "0.002", "0.01", routing="0.003"),
                record("b", "gpt-4o", "0.03", day=1, prompt_cache="0.004")):
        ledger.add(rec)
    ledger.flush()  # written by a background thread otherwise
    code, doc = run(capsys, "report", str(tmp_path / "ledger.db"), "--json")
    assert code == 0
    assert doc["tenant"]["a"] == {"calls": 2, "cost_usd": pytest.approx(0.012), "cost_usd_exact": "0.012",
                                  "saved_usd": pytest.approx(0.01), "routing_saved_usd": pytest.approx(0.003),
                                  "prompt_cache_saved_usd": 0.0, "deferred_saved_usd": 0.0}
    assert doc["tenant"]["b"]["prompt_cache_saved_usd"] == pytest.approx(0.004)
    assert doc["model"]["gpt-4o"]["calls"] == 2 and len(doc["day"]) == 2
    assert doc["total"] == {"calls": 3, "cost_usd": pytest.approx(0.042), "cost_usd_exact": "0.042",
                            "saved_usd": pytest.approx(0.01), "routing_saved_usd": pytest.approx(0.003),
                            "prompt_cache_saved_usd": pytest.approx(0.004), "deferred_saved_usd": 0.0}


def test_report_puts_an_advisors_cost_under_the_advisors_model(tmp_path, capsys):
    # a Sonnet call that consulted Opus showed Opus's share under Sonnet
    from llmbudget.pricing import Pricing

    base = "https://api.anthropic.com/v1"
    advised = Usage(input_tokens=1_000, output_tokens=100,
                    others=(("claude-opus-4-6", Usage(input_tokens=2_000, output_tokens=400)),))
    cost = Pricing().cost(advised, model="claude-sonnet-4-6", base_url=base).usd
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    for usage, usd in ((advised, cost), (Usage(input_tokens=10, output_tokens=5), Decimal("0.0001"))):
        ledger.add(SpendRecord(time=time.time(), endpoint="messages", base_url=base, model_requested="claude-sonnet-4-6",
                               model_sent="claude-sonnet-4-6", model_answered="claude-sonnet-4-6", usage=usage,
                               cost_usd=usd, latency_s=0.1, tenant="a"))
    ledger.flush()
    code, doc = run(capsys, "report", str(tmp_path / "ledger.db"), "--json")
    assert code == 0
    sonnet, opus = doc["model"]["claude-sonnet-4-6"], doc["model"]["claude-opus-4-6"]
    # Sonnet: $3 / $15 per 1M tokens, Opus: $5 / $25; the call's own part and the advisor's, as priced
    assert sonnet["cost_usd_exact"] == "0.0046" and opus["cost_usd_exact"] == "0.02"
    assert sonnet["calls"] == 2 and opus["calls"] == 0  # the calls stay the executor's: one request each
    assert doc["total"]["cost_usd_exact"] == "0.0246" and doc["tenant"]["a"]["cost_usd_exact"] == "0.0246"


def test_exact_amounts_are_written_without_exponents(tmp_path, capsys):
    # the ledger's cost_usd column held "1E-7" and "6.75E-7", and report --json gave floats only
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add(record("a", "gpt-4o-mini", "1E-7"))
    ledger.add(record("a", "gpt-4o-mini", "6.75E-7"))
    ledger.flush()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        column = sorted(row[0] for row in db.execute("SELECT cost_usd FROM spend"))
        stored = [json.loads(row[0])["cost_usd"] for row in db.execute("SELECT record FROM spend")]
    assert column == ["0.0000001", "0.000000675"] and sorted(stored) == column
    code, doc = run(capsys, "report", str(tmp_path / "ledger.db"), "--json")
    assert code == 0 and doc["total"]["cost_usd_exact"] == "0.000000775"


def test_an_extra_left_out_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    # `eval cache --reranker` without MiniLM's weights printed a 15-line traceback
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"a": "How do I cook rice?", "b": "How to cook rice?", "label": 1}) + "\n")
    monkeypatch.setenv("LLMBUDGET_MINILM_PATH", str(tmp_path / "no-such-model"))
    assert main(["eval", "cache", str(pairs), "--mode", "pairs", "--reranker", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmbudget eval: ") and err.count("\n") == 1 and "Traceback" not in err


def test_eval_cache_reads_quoras_field_names_and_string_labels(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"question1": "How do I learn Python quickly?", "question2": "How can I learn Python fast?",
             "is_duplicate": "1"},
            {"question1": "What is 2+2?", "question2": "What is 2+3?", "is_duplicate": 0},
            {"a": "What is the capital of France?", "b": "Capital of Peru?", "label": "false"}]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, doc = run(capsys, "eval", "cache", str(pairs), "--mode", "pairs", "--json")
    assert code == 0 and doc["pairs"] == 3


def test_eval_cache_pairs_decide_as_the_store_does(tmp_path, capsys):
    # empty texts are never searched, and pairs below the store's WordLlama floor are never scored
    pairs = tmp_path / "pairs.jsonl"
    rows = [("", "", True), ("   ", "\n\t", False), ("How do I bake bread?", "What is the tallest mountain?", False)]
    pairs.write_text("".join(json.dumps({"a": a, "b": b, "duplicate": d}) + "\n" for a, b, d in rows))
    code, pairs_doc = run(capsys, "eval", "cache", str(pairs), "--mode", "pairs", "--json")
    assert code == 0 and pairs_doc["default"]["precision"] in (None, 1.0) and pairs_doc["default"]["recall"] == 0.0
    code, replay = run(capsys, "eval", "cache", str(pairs), "--mode", "replay", "--json")
    assert replay["correct_hits"] == replay["wrong_hits"] == 0
    assert replay["hit_precision"] is None  # no hit: no precision (0 read as "every hit wrong")


def test_eval_cache_pairs_and_replay_keys(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [("How do I learn Python quickly?", "How can I learn Python fast?", True),
            ("What is 2+2?", "What is 2+3?", False),
            ("What is the capital of France?", "what is the capital of france", True),
            ("How do I bake bread?", "How do I fix a bike?", False)]
    pairs.write_text("".join(json.dumps({"a": a, "b": b, "duplicate": d}) + "\n" for a, b, d in rows))
    code, doc = run(capsys, "eval", "cache", str(pairs), "--mode", "pairs", "--json")
    assert code == 0 and doc["pairs"] == 4 and set(doc) == {
        "pairs", "auc", "recall_at_precision", "default", "score_p50_ms", "score_p99_ms", "by_duplicate_share"}
    assert set(doc["recall_at_precision"]) == {"0.8", "0.9", "0.95"} and doc["auc"] == 1.0
    code, doc = run(capsys, "eval", "cache", str(pairs), "--mode", "replay", "--json")
    assert set(doc) == {"stored", "queries", "correct_hits", "wrong_hits", "misses", "hit_precision", "hit_recall",
                        "lookup_p50_ms", "lookup_p99_ms", "same_text_hits", "false_hits", "false_hit_rate"}
    assert doc["stored"] == 4 and doc["wrong_hits"] == 0 and doc["correct_hits"] >= 1
    assert doc["false_hits"] == 0 and doc["false_hit_rate"] == 0.0
    code, curved = run(capsys, "eval", "cache", str(pairs), "--mode", "replay", "--json", "--curve", "0.99,0.0")
    assert code == 0 and [point["threshold"] for point in curved.pop("curve")] == [0.0, 0.99]
    assert curved["correct_hits"] == doc["correct_hits"] and curved["wrong_hits"] == doc["wrong_hits"]
    assert main(["eval", "cache", str(pairs), "--mode", "replay", "--curve", "0.5,0.9"]) == 0
    assert "the same replay at other thresholds" in capsys.readouterr().out
    for bad in (["--mode", "pairs", "--curve", "0.5"], ["--mode", "replay", "--curve", "high"]):
        assert main(["eval", "cache", str(pairs), *bad]) == 2
        assert "--curve" in capsys.readouterr().err


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["eval", "cache", str(tmp_path / "missing.jsonl"), "--json"]) == 2
    assert "llmbudget eval:" in capsys.readouterr().err


def test_route_explains_one_prompt(capsys, tmp_path):
    from llmbudget.routing.classifier import Router

    prompt = "Prove that the square root of 2 is irrational, step by step."
    code, doc = run(capsys, "route", prompt, "--json")
    router = Router()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    assert code == 0 and doc["score"] == pytest.approx(router.score(body)) and doc["threshold"] == router.threshold
    assert doc["tier"] == ("large" if doc["score"] >= doc["threshold"] else "small") and doc["reason"] == "router"
    assert [f["name"] for f in doc["features"]] == [name for name, _ in router.explain(body, top=5)]
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[routing]\nthreshold = 1.0\nnever = ["/admin/*"]\n[routing.tiers]\nsmall = "gpt-4.1-nano"\n'
                      'large = ""\n')
    code, doc = run(capsys, "route", prompt, "--policy", str(policy), "--json")
    assert (doc["tier"], doc["model"], doc["threshold"]) == ("small", "gpt-4.1-nano", 1.0)
    code, doc = run(capsys, "route", prompt, "--policy", str(policy), "--path", "/admin/x", "--json")
    assert (doc["tier"], doc["model"], doc["score"], doc["features"]) == ("large", "gpt-4o", None, [])
    assert main(["route", "[/]odd [link=x]prompt"]) == 0
    assert "tier " in capsys.readouterr().out


def test_prices_shows_what_an_unknown_model_is_charged(capsys):
    from llmbudget.pricing import Pricing

    code, doc = run(capsys, "prices", "no-such-model", "--json")
    (row,) = doc["models"]
    assert code == 1 and row["known"] is False
    fallback = Pricing().unknown_model_price
    assert (row["charged_input_per_mtok"], row["charged_output_per_mtok"]) == (float(fallback.input),
                                                                               float(fallback.output))
    assert main(["prices", "no-such-model"]) == 1
    assert "charged" in capsys.readouterr().out


def test_start_up_errors_name_the_file_and_the_key(tmp_path, capsys):
    from llmbudget.config import ConfigError, Policy

    bad = tmp_path / "llmbudget.toml"
    bad.write_bytes(b'[cache]\nsemantic = true\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="llmbudget.toml: not UTF-8"):
        Policy.from_file(bad)
    (tmp_path / "afile").write_text("")
    under_a_file = tmp_path / "ledger.toml"
    under_a_file.write_text('ledger = "afile/ledger.db"\n')
    with pytest.raises(ConfigError, match=r"ledger = '.*afile/ledger.db' cannot be opened"):
        Policy.from_file(under_a_file)
    under_a_file.write_text('budget_store = "afile/budgets.db"\n')
    with pytest.raises(ConfigError, match=r"budget_store = '.*afile/budgets.db' cannot be opened"):
        Policy.from_file(under_a_file)
    under_a_file.write_text('[cache]\npath = "afile/cache"\n')
    with pytest.raises(ConfigError, match=r"cache.path = '.*afile/cache' cannot be opened"):
        Policy.from_file(under_a_file)
    sample = Path(__file__).resolve().parent.parent / "fixtures" / "traffic" / "sample.jsonl"
    assert main(["replay", str(sample), "--policy", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def _odd_folder(tmp_path: Path) -> Path:
    """A folder whose path holds ``[/]`` (Rich's closing tag) and ``[link=...]``."""
    folder = tmp_path / "a[" / "]b[link=x]"
    folder.mkdir(parents=True)
    return folder


def test_file_names_with_markup_are_printed_as_text(tmp_path, capsys):
    """The spinner, the progress bar and the titles read file names as Rich markup: ``[/]`` raised MarkupError."""
    folder = _odd_folder(tmp_path)
    pairs = folder / "pairs.jsonl"
    pairs.write_text(json.dumps({"a": "What is 2+2?", "b": "What is 2+3?", "duplicate": False}) + "\n")
    assert main(["eval", "cache", str(pairs)]) == 0
    sample = Path(__file__).resolve().parent.parent / "fixtures" / "traffic"
    traffic = folder / "t.jsonl"
    traffic.write_text("".join((sample / "sample.jsonl").read_text().splitlines(keepends=True)[:3]))
    capsys.readouterr()
    assert main(["replay", str(traffic), "--policy", str(sample / "llmbudget.toml")]) == 0
    assert "a[/]b[link=x]/t.jsonl" in "".join(capsys.readouterr().out.split())  # the title wraps


def test_report_errors_name_the_ledger(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a database, just text\n" * 20)
    for path, message in ((tmp_path / "none.db", "no such ledger file"), (tmp_path / "afile" / "ledger.db",
                          "no such ledger file"), (tmp_path / "afile", "not an llmbudget SQLite ledger"),
                         (tmp_path, "a folder, not a ledger")):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"llmbudget report: {path}: {message}" in err
    assert not (tmp_path / "none.db").exists()  # reading a report creates no ledger
    # An empty file and another app's SQLite database are refused untouched (the report wrote the schema in)
    import sqlite3

    (tmp_path / "empty.db").write_bytes(b"")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE users (id INTEGER)")
    other.commit()
    other.close()
    for name in ("empty.db", "other.db"):
        before = (tmp_path / name).read_bytes()
        assert main(["report", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not an llmbudget SQLite ledger (no spend table)" in err
        assert (tmp_path / name).read_bytes() == before
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add(record("[/]acme[link=https://example.test]x", "gpt-4o", "0.01"))
    ledger.flush()
    assert main(["report", str(tmp_path / "ledger.db")]) == 0
    assert "[/]acme" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: {**r, "cost_usd": "NaN"}, "cost_usd is 'NaN'"),
    (lambda r: {**r, "cost_usd": "1e999999"}, "cost_usd is '1e999999'"),  # summing it ran for minutes
    (lambda r: {**r, "cost_usd": "1e999999999"}, "cost_usd is '1e999999999'"),  # decimal.Overflow in the check
    (lambda r: {**r, "output": {"json": []}}, "output.json is []"),  # unhashable in the JSON answers' count
    (lambda r: {**r, "saved_usd": "lots"}, "saved_usd is 'lots'"),
    (lambda r: {**r, "cost_usd": "-999.999"}, "cost_usd is '-999.999'; expected an amount of at least 0"),  # a total < 0
    (lambda r: {**r, "saved_usd": "-5"}, "saved_usd is '-5'"),
    (lambda r: {**r, "time": "yesterday"}, "time is 'yesterday'"),
    (lambda r: {**r, "time": 1e300}, "time is 1e+300"),
    (lambda r: {**r, "usage": {**r["usage"], "output_tokens": "5"}}, "usage.output_tokens is '5'"),
    (lambda r: {**r, "usage": None}, "not a spend record"),
    (lambda r: None, "not a spend record"),
    (lambda r: [r], "not a spend record"),
    (lambda r: {**r, "colour": "red"}, "unexpected keyword argument 'colour'"),
    (lambda r: {**r, "tenant": 5}, "tenant is 5"),  # sorting tenants raised TypeError
    (lambda r: {**r, "model_answered": [1]}, "model_answered is [1]"),  # grouping by model: unhashable
    (lambda r: {**r, "from_cache": "no"}, "from_cache is 'no'"),  # counted as a cache hit
    (lambda r: {**r, "estimated": [1]}, "estimated is [1]"),
    (lambda r: {**r, "output": [1]}, "output is [1]"),  # AttributeError in the JSON answers' count
    (lambda r: {**r, "prefix": "group"}, "prefix is 'group'"),
    (lambda r: {**r, "prefix": {"group": "g"}}, "prefix.hash is None"),  # KeyError in the prefix report
    (lambda r: {**r, "prefix": {"group": ["g"], "hash": "h"}}, "prefix.group is ['g']"),
    (lambda r: {**r, "prefix": {"group": "g", "hash": "h", "chars": "many"}}, "prefix.chars is 'many'"),
    (lambda r: {**r, "prefix": {"group": "g", "hash": "h", "within": "soon"}}, "prefix.within is 'soon'"),
])
def test_a_damaged_ledger_row_is_an_error_naming_the_file_and_row(tmp_path, capsys, change, message):
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path)
    for _ in range(2):
        ledger.add(record("acme", "gpt-4o", "0.01"))
    ledger.flush()
    with sqlite3.connect(path) as conn:
        (text,) = conn.execute("SELECT record FROM spend WHERE id = 2").fetchone()
        conn.execute("UPDATE spend SET record = ? WHERE id = 2", (json.dumps(change(json.loads(text))),))
    code = main(["report", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1  # one line, never a traceback or a hang
    assert f"{path}: spend row 2 is not a readable record" in err and message in err


def test_a_ledger_row_nested_too_deep_or_not_utf8_is_an_error_too(tmp_path, capsys):
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path)
    ledger.add(record("acme", "gpt-4o", "0.01"))
    ledger.flush()
    for bad in ("[" * 100_000 + "]" * 100_000, b"\xff\xfe{}"):
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE spend SET record = ? WHERE id = 1", (bad,))
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "spend row 1 is not a readable record" in err


def test_an_html_report_that_cannot_be_written_is_one_line(tmp_path, capsys):
    sample = Path(__file__).resolve().parent.parent / "fixtures" / "traffic"
    traffic = tmp_path / "t.jsonl"
    traffic.write_text((sample / "sample.jsonl").read_text().splitlines(keepends=True)[0])
    assert main(["replay", str(traffic), "--policy", str(sample / "llmbudget.toml"), "--json",
                 "--html", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--html {tmp_path}: the report cannot be written there" in err


def test_a_read_only_cache_folder_is_a_config_error(tmp_path, capsys, monkeypatch):
    import os
    import sqlite3

    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: answer as SQLite does for everyone else
        connect = sqlite3.connect

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(read_only)):
                raise sqlite3.OperationalError("unable to open database file")
            return connect(path, *args, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", refuse)
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[cache]\npath = "ro"\n[routing.tiers]\nsmall = "gpt-4.1-nano"\nlarge = ""\n')
    try:
        assert main(["route", "hello", "--policy", str(policy)]) == 2
    finally:
        read_only.chmod(0o700)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{policy}: cache.path = " in err and "cannot be opened" in err


def test_report_names_a_prefix_that_never_matches(tmp_path, capsys, llm_server, engine):
    """Calls to the real local server whose system prompt starts with a request id: the ledger keeps where
    each prefix differs, and the report names the group, the position and a short excerpt."""
    import openai

    import llmbudget

    engine.ledger = SQLiteLedger(tmp_path / "ledger.db")
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0,
                           http_client=llmbudget.http_client())
    for n in range(3):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=1, temperature=0, messages=[
            {"role": "system", "content": f"request r-{n}7f. " + "Answer as the shop's assistant, briefly. " * 8},
            {"role": "user", "content": "Do you sell bells?"}])
    engine.ledger.flush()
    code, doc = run(capsys, "report", str(tmp_path / "ledger.db"), "--json")
    assert code == 0
    [finding] = doc["unstable_prefixes"]
    assert (finding["calls"], finding["distinct_prefixes"]) == (3, 3)
    assert finding["differs_at"] == len("system: request r-") and "request r-⟨⟩" in finding["excerpt"]
    assert main(["report", str(tmp_path / "ledger.db")]) == 0
    assert "3 different prefixes in 3 calls, first differing at character 18" in capsys.readouterr().out


def test_report_counts_json_answers_valid_invalid_and_cut(tmp_path, capsys):
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    for verdict in ("valid", "valid", "invalid", "cut", None):
        rec = record("a", "gpt-4o-mini", "0.001")
        rec.output = {"json": verdict} if verdict else None
        ledger.add(rec)
    ledger.flush()
    code, doc = run(capsys, "report", str(tmp_path / "ledger.db"), "--json")
    assert code == 0 and doc["json_answers"] == {"valid": 2, "invalid": 1, "cut": 1}
    assert main(["report", str(tmp_path / "ledger.db")]) == 0
    assert "answers to requests for JSON: 2 valid, 1 invalid, 1 cut by an output limit" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000 + "\n", "pairs.jsonl:1: expected"),
    ('{"a": "\\ud800", "b": "y", "duplicate": true}\n', "pairs.jsonl:1: expected"),
    ('{"a": "x", "b": "y", "duplicate": 2}\n', "pairs.jsonl:1: expected"),
    ("\n\n", "pairs.jsonl: no pairs"),
    ('{"a": "x", "b": "y", "duplicate": "maybe"}\n', "'duplicate' is 'maybe'; expected true or false"),
    ('{"a": "x", "second": "y", "duplicate": true}\n', "no 'b' field (nor 'question2'"),
    ('{"a": "x", "b": 3, "duplicate": true}\n', "'b' is int, not a string"),
    ('{"a": "x", "b": "y", "duplicate": true, "is_duplicate": 0}\n', "both 'duplicate' and 'is_duplicate'"),
])
@pytest.mark.parametrize("mode", ["pairs", "replay"])
def test_eval_cache_refuses_bad_pair_files_in_one_line(tmp_path, capsys, content, message, mode):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(content, encoding="utf-8")
    assert main(["eval", "cache", str(pairs), "--mode", mode, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("mode", ["pairs", "replay"])
def test_eval_cache_says_a_missing_file_before_it_starts(tmp_path, capsys, mode):
    assert main(["eval", "cache", str(tmp_path / "missing.jsonl"), "--mode", mode]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "missing.jsonl: no such file (expected JSON lines" in captured.err
    assert main(["eval", "cache", str(tmp_path), "--mode", mode]) == 2  # it said "no such file" for a folder
    assert f"{tmp_path}: a folder, not a file" in capsys.readouterr().err
    (tmp_path / "pairs.jsonl").write_text('{"a": "x", "b": "y", "duplicate": false}\n')
    assert main(["eval", "cache", str(tmp_path / "pairs.jsonl"), "--max-semantic-chars", "-5"]) == 2  # was taken
    assert "--max-semantic-chars -5: expected a number of characters" in capsys.readouterr().err


def test_a_policy_nested_too_deeply_is_a_config_error(tmp_path, capsys):
    policy = tmp_path / "llmbudget.toml"
    policy.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert main(["route", "--policy", str(policy), "hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llmbudget.toml: not a policy file" in err


@pytest.mark.parametrize(("name", "text", "message"), [
    ("llmbudget.toml", "prices = [1, 2]\n", "[prices] must be a table, got [1, 2]"),
    ("llmbudget.toml", '[prices]\n"gpt-4o" = { input = 1e300, output = 1 }\n',  # InvalidOperation when summed
     "prices['gpt-4o'].input must be at most 1,000,000 USD per 1M tokens"),
    ("llmbudget.toml", '[output]\nmax_words = "x"\n', "llmbudget.toml: [output]: max_words must be a whole number"),
    ("pyproject.toml", "tool = 5\n", "pyproject.toml: tool must be a table"),
    ("pyproject.toml", "[tool]\nllmbudget = 5\n", "pyproject.toml: tool.llmbudget must be a table"),
])
@pytest.mark.parametrize("command", [["route", "hello"], ["replay", str(SAMPLE_TRAFFIC)]])
def test_a_policy_of_the_wrong_shape_is_one_line_naming_the_file(tmp_path, capsys, name, text, message, command):
    policy = tmp_path / name
    policy.write_text(text, encoding="utf-8")
    assert main([*command, "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and str(policy) in err and message in err  # one line (replay: after progress)


def test_damaged_batch_state_files_are_skipped_with_a_warning(tmp_path, capsys, caplog):
    state = tmp_path / "state"
    state.mkdir()
    (state / "job1.json").write_text("[1, 2, 3]", encoding="utf-8")
    (state / "job2.json").write_text('{"id": 5, "provider": [], "lines": "x"}', encoding="utf-8")
    (state / "job3.json").write_text("{not json", encoding="utf-8")
    with caplog.at_level("WARNING", logger="llmbudget.defer"):
        assert main(["batches", "--state", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 3


def test_python_dash_m_runs_the_command() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "llmbudget", "route", "What is 2+2?", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tier"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import llmbudget

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"llmbudget {llmbudget.__version__}"
    import re
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert re.findall(r'(?m)^version = "([^"]+)"', pyproject) == [llmbudget.__version__]  # one version, said twice


def test_eval_router_writes_strict_json_and_refuses_an_empty_sample(tmp_path, capsys):
    # A bare NaN (json.dumps' default) is not JSON: other readers refused the output; 0 prompts gave 19 of them
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,weak,strong\n", encoding="utf-8")
    assert main(["eval", "router", str(empty), "--weak", "weak", "--strong", "strong", "--json"]) == 2
    assert "no labeled prompts" in capsys.readouterr().err
    level = tmp_path / "level.csv"  # the weak model as good as the strong one: no gap to recover (APGR undefined)
    level.write_text("prompt,weak,strong\nWhat is 2+2?,1,1\nName a colour,0,0\n", encoding="utf-8")
    assert main(["eval", "router", str(level), "--weak", "weak", "--strong", "strong", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out, parse_constant=lambda token: pytest.fail(f"not JSON: {token}"))
    assert result["prompts"] == 2 and result["apgr"] is None


def test_batches_refuses_a_missing_state_folder_and_options_it_would_ignore(tmp_path, capsys):
    assert main(["batches", "--state", str(tmp_path / "typo"), "--resume"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["batches", "--state", str(tmp_path), "--ledger", str(tmp_path / "l.db")]) == 2
    assert "--wait, --ledger and --policy go with --resume" in capsys.readouterr().err


def test_a_reader_that_leaves_early_ends_the_command_quietly(capsys, monkeypatch):
    # `llmbudget report --json | head` printed "[Errno 32] Broken pipe" and exited 2
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Gone())
    assert main(["prices", "gpt-4o-mini", "--json"]) == 1  # cut short, as Rich's tables end on a broken pipe
    assert capsys.readouterr().err == ""


def test_the_report_table_fits_a_ci_logs_80_columns_with_every_figure_whole(tmp_path, capsys, monkeypatch):
    # at 80 columns (output piped or logged) money, models and days were cut: "$0.00000…", "gemma-3-…"
    monkeypatch.setenv("COLUMNS", "80")
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add(record("acme", "gemma-3-270m-instruct", "0.0000009", saved="0.001234", routing="0.000321"))
    ledger.flush()
    assert main(["report", str(tmp_path / "ledger.db")]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "gemma-3-270m-instru" in out  # a long name folds, never cut
    assert "$0.0000009" in out and "$0.001234" in out and "$0.000321" in out
    assert "saved by deferral" not in out  # nothing saved by it: no column


def test_listing_batches_of_a_folder_that_is_not_there_says_so(tmp_path, capsys):
    # "0 pending job(s)" for a mistyped folder, while --resume on it said "no such folder"
    assert main(["batches", "--state", str(tmp_path / "typo")]) == 0
    assert "0 pending job(s)" in (out := capsys.readouterr().out) and "no such folder" in out
    (tmp_path / "state").mkdir()
    assert main(["batches", "--state", str(tmp_path / "state")]) == 0
    assert "no such folder" not in capsys.readouterr().out


def test_a_report_too_wide_for_the_terminal_lists_its_rows_with_every_figure_whole(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add(record("tenant-with-a-rather-long-name", "gpt-4o", "0.001", saved="1234.5", routing="2345.25",
                      prompt_cache="3456.125"))
    ledger.flush()
    assert main(["report", str(tmp_path / "ledger.db")]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "tenant-with-a-rather-long-name" in out
    for figure in ("$0.001000", "$1234.500000", "$2345.250000", "$3456.125000"):
        assert figure in out


def test_a_report_on_a_very_long_tenant_or_model_name_does_not_hang(tmp_path, capsys):
    """Rich's highlighting regexes took 21 s on one 40,000-character tenant (an upstream's long "model" is recorded
    as it came, too): the report prints without highlighting. A hang, not a speed target: 40x the time it takes."""
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add(record("t" * 40_000, "m" * 40_000, "0.01"))
    ledger.flush()
    started = time.perf_counter()
    assert main(["report", str(tmp_path / "ledger.db")]) == 0
    assert time.perf_counter() - started < 8
    assert "t" * 1000 in capsys.readouterr().out.replace("\n", "")


def test_resuming_a_folder_with_no_pending_jobs_says_so(tmp_path, capsys):
    # `batches --resume` on a folder with nothing pending printed nothing at all
    (tmp_path / "state").mkdir()
    assert main(["batches", "--state", str(tmp_path / "state"), "--resume", "--ledger", str(tmp_path / "l.db")]) == 0
    assert "no pending jobs" in capsys.readouterr().out


def test_report_on_a_ledger_another_process_locked_says_so(tmp_path, capsys):
    """It said "not an llmbudget SQLite ledger (database is locked)" of a ledger that was one."""
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    made = ("import sys; from decimal import Decimal; from llmbudget.ledger import SQLiteLedger; "
            "from llmbudget.calls import SpendRecord, Usage; ledger = SQLiteLedger(sys.argv[1]); "
            "ledger.add(SpendRecord(time=1.0, endpoint='chat.completions', base_url='http://h/v1', model_requested='m', "
            "model_sent='m', model_answered='m', usage=Usage(1, 1), cost_usd=Decimal('0.01'), latency_s=0.1)); "
            "ledger.flush()")  # (made in a process of its own: a connection here would stop the exclusive lock)
    subprocess.run([sys.executable, "-c", made, str(path)], check=True, timeout=60)
    from sqlite_locks import HOLD_EXCLUSIVE

    holder = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["report", str(path)]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert "the ledger cannot be read now" in err and "not an llmbudget" not in err
    assert main(["report", str(path)]) == 0


def test_a_label_file_that_names_a_column_twice_is_refused(tmp_path, capsys):
    """prompt,weak,weak,strong: the last "weak" silently won, and eval and calibrate reported 0% weak accuracy."""
    labels = tmp_path / "labels.csv"
    labels.write_text("prompt,weak,weak,strong\nWhat is 2+2?,1,0,1\nProve it.,1,0,1\n")
    for command in (["eval", "router", str(labels), "--weak", "weak", "--strong", "strong"],
                    ["calibrate", "router", str(labels), "--weak", "weak", "--strong", "strong",
                     "--keep-quality", "0.97"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{labels}: the header names column(s) ['weak'] more than once" in err and "Traceback" not in err
    labels.write_text("prompt,weak,strong,,\nWhat is 2+2?,1,1,,\nProve it.,0,1,,\n")  # a spreadsheet's export
    assert main(["eval", "router", str(labels), "--weak", "weak", "--strong", "strong"]) == 0


def test_counts_on_the_command_line_are_whole_numbers_from_zero(capsys):
    for command in (["route", "hello", "--top", "-1"], ["bench", "cache", "--entries", "-5"],
                    ["route", "hello", "--top", "many"]):
        with pytest.raises(SystemExit) as exited:
            main(command)
        assert exited.value.code == 2 and "expected a whole number, 0 or more" in capsys.readouterr().err
    assert main(["route", "hello", "--top", "0"]) == 0
