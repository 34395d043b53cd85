"""``llmbudget``: evaluate and benchmark the cache and the router, look up prices, read ledgers.

Every command prints readable tables (rich) or, with ``--json``, one JSON object
whose keys tools may rely on.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from decimal import Decimal
from typing import Any

from . import __version__

__all__ = ["main"]


def escape(text: str) -> str:
    """``text`` shown as it is in Rich output: a tenant or model named ``[/]`` is not markup, and control or other
    non-printable characters are written as escapes (``\\x1b``), so a name cannot drive the terminal."""
    from rich.markup import escape as rich_escape

    from .textfiles import shown

    return rich_escape(shown(text))


def _console() -> Any:
    from rich.console import Console

    # no highlighting: its regexes took minutes on a long tenant or model name (40,000 characters: 21 s), and
    # nothing printed here needs it
    return Console(stderr=False, highlight=False)


def _run(task: Callable[..., dict[str, Any]], args: dict[str, Any], *, as_json: bool, title: str) -> dict[str, Any]:
    """Run a long task, with a progress bar when the task reports progress and the output is a terminal."""
    if as_json or "progress" not in inspect.signature(task).parameters:
        if as_json:
            return task(**args)
        with _console().status(escape(title)):
            return task(**args)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        tid = bar.add_task(escape(title), total=None)

        def progress(done: int, total: int | None = None) -> None:
            bar.update(tid, completed=done, total=total)

        return task(**args, progress=progress)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: JSON has no NaN (``json.dumps`` writes a bare ``NaN``
    that other readers refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _print(result: dict[str, Any], *, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(_finite(result), indent=2, default=str, allow_nan=False))
        return
    from rich.table import Table

    table = Table(title=escape(title), show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")

    def rows(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                rows(f"{prefix}{key}." if isinstance(inner, dict) else f"{prefix}{key}", inner)
        else:
            table.add_row(escape(prefix), f"{value:.4f}" if isinstance(value, float) else escape(str(value)))

    for key, value in result.items():
        rows(f"{key}." if isinstance(value, dict) else key, value)
    _console().print(table)


def _print_eval_replay(result: dict[str, Any], *, as_json: bool, title: str) -> None:
    """A cache replay's figures, then (in a table of its own) its ``curve`` when it has one."""
    if as_json or "curve" not in result:
        _print(result, as_json=as_json, title=title)
        return
    from rich.table import Table

    _print({k: v for k, v in result.items() if k != "curve"}, as_json=False, title=title)
    table = Table(title="the same replay at other thresholds")
    columns = ("threshold", "hit_precision", "hit_recall", "correct_hits", "wrong_hits", "same_text_hits", "false_hits")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for point in result["curve"]:
        table.add_row(*(f"{point[c]:.4f}" if isinstance(point[c], float) else str(point[c]) for c in columns))
    _console().print(table)


# -- commands ---------------------------------------------------------------------------------


def _eval_cache(ns: argparse.Namespace) -> int:
    from .cache.bench import eval_replay
    from .cache.evaluate import eval_pairs

    task: Callable[..., dict[str, Any]] = eval_pairs if ns.mode == "pairs" else eval_replay
    from .cache.templates import DEFAULT_MAX_SEMANTIC_CHARS, TemplateGuard

    if not os.path.isfile(ns.pairs):  # said before any model loads or progress shows
        what = "a folder, not a file" if os.path.isdir(ns.pairs) else \
            "not a regular file" if os.path.exists(ns.pairs) else "no such file"
        raise ValueError(f'{ns.pairs}: {what} (expected JSON lines {{"a": str, "b": str, "duplicate": bool}})')
    if ns.max_semantic_chars is not None and ns.max_semantic_chars < 0:
        raise ValueError(f"--max-semantic-chars {ns.max_semantic_chars}: expected a number of characters (0: no "
                         "limit)")

    limit = DEFAULT_MAX_SEMANTIC_CHARS if ns.max_semantic_chars is None else ns.max_semantic_chars or None
    options: dict[str, Any] = {"pairs_path" if ns.mode == "replay" else "path": ns.pairs, "max_semantic_chars": limit,
                               "template_guard": None if ns.no_template_guard else TemplateGuard()}
    curve: list[float] = []
    if ns.curve is not None:
        if ns.mode != "replay":
            raise ValueError("--curve scores a replay at several thresholds: use it with --mode replay")
        try:
            curve = [float(t) for t in ns.curve.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--curve takes thresholds separated by commas (0.7,0.8,0.9), not {ns.curve!r}") from None
        if not curve:
            raise ValueError("--curve needs at least one threshold (0.7,0.8,0.9)")
        options["curve"] = curve
    store = None
    what, title = ns.mode, f"cache evaluation ({ns.mode})"
    if ns.gptcache is not None:
        if ns.mode != "replay" or ns.reranker:
            raise ValueError("--gptcache replays the baseline instead of the cache: use it with --mode replay, "
                             "without --reranker")
        from .cache.bench import gptcache_baseline

        try:
            store = gptcache_baseline(ns.gptcache)
        except (ValueError, ImportError) as exc:
            raise ValueError(f"--gptcache {ns.gptcache}: {exc}") from None
        options = {"pairs_path": ns.pairs, "store": store, "curve": curve}  # the store is the baseline as built
        what, title = "GPTCache-style baseline", f"GPTCache-style baseline, cosine >= {ns.gptcache} (replay)"
    elif ns.reranker and ns.mode == "replay":
        options["reranker"] = True
    elif ns.reranker:
        from .cache.reranker import RewordReranker

        options["verifier"] = RewordReranker()
    try:
        result = _run(task, options, as_json=ns.json, title=f"scoring {ns.pairs} ({what})")
    finally:
        if store is not None:
            store.close()
    _print_eval_replay(result, as_json=ns.json, title=title)
    return 0


def _bench_cache(ns: argparse.Namespace) -> int:
    from .cache.bench import bench_cache

    result = _run(bench_cache, {"entries": ns.entries, "reranker": ns.reranker}, as_json=ns.json,
                  title=f"building {ns.entries} entries")
    _print(result, as_json=ns.json, title="cache benchmark")
    return 0


def _policy_routing(path: str) -> Any:
    """The routing of a policy file (router and threshold), or a clear error when it has none."""
    from pathlib import Path

    from .config import ConfigError, engine_from_config, load_config

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such file; expected an llmbudget.toml or a pyproject.toml")
    routing = engine_from_config(load_config(file), source=str(file), root=file.parent).routing
    if routing is None:
        raise ConfigError(f"{file}: no [routing] table; the router is evaluated with the policy's routing")
    return routing


def _eval_router(ns: argparse.Namespace) -> int:
    from .routing.evaluate import eval_router

    options: dict[str, Any] = {"labels": ns.labels, "weak": ns.weak, "strong": ns.strong, "baselines": ns.baselines}
    if ns.policy:
        routing = _policy_routing(ns.policy)
        options.update(router=routing.router, threshold=routing.threshold)
    result = _run(eval_router, options, as_json=ns.json, title=f"scoring {ns.labels}")
    if ns.json:
        _print(result, as_json=True, title="router evaluation")
        return 0
    _print({k: v for k, v in result.items() if k not in ("curve", "baselines", "by_file")}, as_json=False,
           title="router evaluation")
    from rich.table import Table

    if "baselines" in result:
        _print_baselines(result)

    weak, strong = result["weak_accuracy"], result["strong_accuracy"]
    gap = strong - weak
    table = Table(title="cost/quality curve (highest-scored prompts go to the strong model)")
    for column in ("strong calls", "accuracy", "gap recovered", "input tokens strong"):
        table.add_column(column, justify="right")
    for point in result["curve"]:
        recovered = (point["accuracy"] - weak) / gap if gap > 0 else float("nan")
        table.add_row(f"{point['strong_fraction']:.0%}", f"{point['accuracy']:.4f}", f"{recovered:.1%}",
                      f"{point.get('strong_token_share', float('nan')):.1%}")
    _console().print(table)
    return 0


def _print_baselines(result: dict[str, Any]) -> None:
    """The router against the baselines: pooled APGR and CPT(50%), then mean and worst APGR over the files."""
    from rich.table import Table

    summary = result["by_file"]["summary"]
    table = Table(title=f"router vs baselines (by file: {summary['groups']} files with a weak-to-strong gap)")
    for column in ("scorer", "APGR", "CPT(50%)", "mean APGR by file", "worst file", "router better on"):
        table.add_column(column, justify="right")
    rows = {"router": result, **result["baselines"]}
    for name, figures in rows.items():
        wins = summary[name].get("router_wins")
        table.add_row(escape(name), f"{figures['apgr']:.3f}", f"{figures['cpt50']:.2f}",
                      f"{summary[name]['mean_apgr']:.3f}",
                      f"{summary[name]['worst_apgr']:.3f}", "" if wins is None else f"{wins} of {summary['groups']}")
    _console().print(table)


def _calibrate_router(ns: argparse.Namespace) -> int:
    from .config import ConfigError
    from .routing.calibrate import calibrate, calibrate_quality, write_threshold

    if (ns.strong_fraction is None) == (ns.keep_quality is None):
        raise ConfigError("pass one of --keep-quality (with --weak and --strong labels) or --strong-fraction")
    if ns.keep_quality is not None:
        if not (ns.weak and ns.strong):
            raise ConfigError("--keep-quality needs --weak and --strong: the label columns (CSV) or the models "
                              "(replay traffic JSONL) of the small and the large tier")
        result = calibrate_quality(ns.sample, weak=ns.weak, strong=ns.strong, keep=ns.keep_quality,
                                   confidence=ns.confidence, every_file=ns.every_file)
    else:
        if ns.every_file:
            raise ConfigError("--every-file goes with --keep-quality: it keeps that share in every label file")
        result = calibrate(ns.sample, strong_fraction=ns.strong_fraction)
    if ns.policy:
        write_threshold(ns.policy, result["threshold"])
        result["policy"] = ns.policy
    _print(result, as_json=ns.json, title="router calibration")
    if not ns.json and ns.keep_quality is not None:
        lo, hi = result["quality_kept_interval"]
        _console().print(
            f"keeps {result['quality_kept']:.1%} of the all-strong accuracy ({result['confidence']:.0%} interval "
            f"{lo:.1%}-{hi:.1%}) and sends {result['small_fraction']:.1%} of the calls "
            f"({result['small_token_share']:.1%} of the input tokens) to the small tier"
        )
        if "by_group" in result:
            kept = [g["quality_kept"] for g in result["by_group"].values() if g["quality_kept"] is not None]
            _console().print(f"every file keeps at least {min(kept):.1%}; the threshold is "
                             f"{escape(str(result['binding_group']))}'s")
    return 0


def _route(ns: argparse.Namespace) -> int:
    """Where one prompt would go, and why: tier, score, threshold and the largest contributions."""
    if ns.policy:
        routing = _policy_routing(ns.policy)
    else:
        from .routing.tiers import Routing

        routing = Routing(tiers={"small": "the small tier", "large": "the model asked for"})
    from .providers import adapter_for_endpoint

    body: dict[str, Any] = {"model": ns.model, "messages": [{"role": "user", "content": ns.prompt}]}
    if ns.system:
        body["messages"].insert(0, {"role": "system", "content": ns.system})
    call = adapter_for_endpoint("chat.completions").parse(body, "https://api.openai.com/v1")
    decision = routing.decide(call, path=ns.path)
    tier = routing.tiers[decision.tier]
    result = {
        "tier": decision.tier,
        "model": tier.model or ns.model,
        "score": decision.score,
        "threshold": decision.threshold,
        "reason": decision.reason,
        "features": [{"name": name, "log_odds": value} for name, value in
                     (routing.router.explain(body, top=ns.top) if decision.score is not None else [])],
    }
    if ns.json:
        print(json.dumps(_finite(result), indent=2, allow_nan=False))
        return 0
    console = _console()
    score = "n/a" if decision.score is None else f"{decision.score:.4f}"
    threshold = "n/a" if decision.threshold is None else f"{decision.threshold:.4f}"
    console.print(f"tier [bold]{escape(decision.tier)}[/bold] ({escape(str(result['model']))}): score {score}, "
                  f"threshold {threshold} ({escape(decision.reason)})")
    if result["features"]:
        from rich.table import Table

        table = Table(title="why (log-odds against a typical request)")
        table.add_column("feature")
        table.add_column("log-odds", justify="right")
        for feature in result["features"]:
            table.add_row(escape(feature["name"]), f"{feature['log_odds']:+.3f}")
        console.print(table)
    return 0


def _apps_policy(named: str | None) -> tuple[Any, dict[str, Any]] | None:
    """The app's policy file and table: the one ``--policy`` names, else found as the app finds it; its keys
    checked (a typo such as ``ledgr`` is an error here as in the app)."""
    from pathlib import Path

    from .config import ConfigError, check_keys, load_config, locate_config

    if named and not Path(named).is_file():
        raise ConfigError(f"{named}: no such policy file; expected an llmbudget.toml or a pyproject.toml")
    found = (Path(named), load_config(Path(named))) if named else locate_config(Path.cwd())
    if found is not None:
        check_keys(found[1], str(found[0]))
    return found


def _prices(ns: argparse.Namespace) -> int:
    from .calls import Usage
    from .config import pricing_from_config
    from .pricing import Pricing

    found = _apps_policy(ns.policy)  # the app's own [prices], as its calls are priced
    pricing = pricing_from_config(found[1], source=str(found[0])) if found else Pricing()
    rows = []
    for model in ns.models:
        if pricing.rate(model, ns.base_url) is None:
            fallback = pricing.unknown_model_price  # what an unpriced call is charged, with a warning
            rows.append({"model": model, "known": False, "input_per_mtok": None, "cached_input_per_mtok": None,
                         "output_per_mtok": None, "per_request": None, "charged_input_per_mtok": float(fallback.input),
                         "charged_output_per_mtok": float(fallback.output)})
            continue
        # a thousand tokens, times a thousand: a call of a million would cross the long-context line (200k tokens
        # for Claude and Gemini 2.5 Pro) and show its doubled rates as the model's price; less what a call costs
        # whatever its tokens (Perplexity's fee per request), which is not a price per token
        bare = pricing.cost(Usage(), model=model, base_url=ns.base_url)
        inputs, cached, output = (float((pricing.cost(usage, model=model, base_url=ns.base_url).usd - bare.usd) * 1000)
                                  for usage in (Usage(input_tokens=1_000),
                                                Usage(input_tokens=1_000, cached_input_tokens=1_000),
                                                Usage(output_tokens=1_000)))
        rows.append({"model": model, "known": bare.known, "input_per_mtok": inputs, "cached_input_per_mtok": cached,
                     "output_per_mtok": output, "per_request": float(bare.usd)})
    snapshot = pricing.snapshot
    if ns.json:
        print(json.dumps({"prices": {"source": snapshot.source, "as_of": snapshot.as_of}, "models": rows}, indent=2))
        return 0 if all(row["known"] for row in rows) else 1
    from rich.table import Table

    table = Table(title=escape(f"USD per 1M tokens ({snapshot.source}, {snapshot.as_of})"))
    for column in ("model", "input", "cached input", "output"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        if not row["known"]:
            table.add_row(escape(row["model"]), f"unknown: charged {row['charged_input_per_mtok']:g}", "",
                          f"charged {row['charged_output_per_mtok']:g}")
        else:
            table.add_row(escape(row["model"]), f"{row['input_per_mtok']:g}", f"{row['cached_input_per_mtok']:g}",
                          f"{row['output_per_mtok']:g}")
    _console().print(table)
    for row in rows:
        if row.get("per_request"):
            _console().print(escape(f"{row['model']}: plus ${row['per_request']:g} per request"), highlight=False)
    if not all(row["known"] for row in rows):
        _console().print("unknown models are charged the conservative price shown, with a warning; add their "
                         "prices under \\[prices] in llmbudget.toml to price them exactly")
    return 0 if all(row["known"] for row in rows) else 1


def _report(ns: argparse.Namespace) -> int:
    from datetime import datetime

    from .calls import Counters
    from .money import format_usd, plain_decimal
    from .prefix import prefix_lines, prefix_row, unstable_prefixes
    from .pricing import Pricing

    groups: dict[str, dict[str, Counters]] = {"tenant": {}, "model": {}, "day": {}}
    total = Counters()
    prefixes = []
    json_answers = {"valid": 0, "invalid": 0, "cut": 0}  # answers to requests for JSON (record.output["json"])
    pricing = Pricing()
    for record in _ledger_records(ns.ledger):
        prefixes.append(prefix_row(record))
        verdict = (record.output or {}).get("json")
        if verdict in json_answers:  # (a string: SpendRecord.from_dict refuses any other)
            json_answers[verdict] += 1
        day = datetime.fromtimestamp(record.time, tz=UTC).date().isoformat()
        keys = (("tenant", record.tenant or "-"), ("model", record.model), ("day", day))
        for row in [groups[name].setdefault(key, Counters()) for name, key in keys] + [total]:
            row.add_record(record)
        for model, usd in _other_models(record, pricing):  # an advisor's inferences: under the advisor's model
            groups["model"][record.model].cost_usd -= usd
            groups["model"].setdefault(model, Counters()).cost_usd += usd

    def out(row: Counters) -> dict[str, Any]:
        # saved_usd: by the cache; routing_saved_usd: by routing (net of escalations); prompt_cache_saved_usd:
        # the provider's discount on cached input; deferred_saved_usd: flex and batch (see SpendRecord.saved_by)
        # (cost_usd_exact: the exact sum as a decimal string, as the pytest plugin's JSON gives it)
        return {"calls": row.calls, "cost_usd": float(row.cost_usd), "cost_usd_exact": plain_decimal(row.cost_usd),
                "saved_usd": float(row.saved_usd), "routing_saved_usd": float(row.routing_saved_usd),
                "prompt_cache_saved_usd": float(row.prompt_cache_saved_usd),
                "deferred_saved_usd": float(row.deferred_saved_usd)}

    result: dict[str, Any] = {name: {key: out(row) for key, row in sorted(rows.items())}
                              for name, rows in groups.items()}
    result["total"] = out(total)
    findings = unstable_prefixes(prefixes, pricing)
    result["unstable_prefixes"] = [finding.to_dict() for finding in findings]
    result["json_answers"] = json_answers
    if ns.json:
        print(json.dumps(_finite(result), indent=2, allow_nan=False))
        return 0
    from rich.table import Table

    console = _console()
    # the mechanisms that saved anything (all of them take more than 80 columns, a CI log's width: cut figures)
    money = [(title, field) for title, field in (
        ("USD spent", "cost_usd"), ("saved by cache", "saved_usd"), ("saved by routing", "routing_saved_usd"),
        ("saved by prompt cache", "prompt_cache_saved_usd"), ("saved by deferral", "deferred_saved_usd"))
        if field == "cost_usd" or getattr(total, field)]
    for name in ("tenant", "model", "day"):
        rows = [[key, str(row.calls), *(format_usd(getattr(row, field)) for _, field in money)]
                for key, row in sorted(groups[name].items())]
        titles = [name, "calls", *(title for title, _ in money)]
        widths = [max([len(title), *(len(r[i]) for r in rows)]) for i, title in enumerate(titles)]
        if sum(widths) + 3 * len(widths) + 1 > console.width:  # too wide for the terminal (a CI log's 80 columns)
            console.print(f"spend by {name}")  # one line a row: a table shrunk to fit cut its figures ($0.00000…)
            for r in rows:
                console.print(escape(f"  {r[0]}: " + ", ".join(f"{t} {v}" for t, v in zip(titles[1:], r[1:], strict=True))),
                              soft_wrap=True)
            continue
        table = Table(title=f"spend by {name}")
        table.add_column(name, justify="left", overflow="fold")
        for title in titles[1:]:
            table.add_column(title, justify="right", no_wrap=True)
        for r in rows:
            table.add_row(escape(r[0]), *r[1:])
        console.print(table)
    console.print(f"total: {total.calls} calls, {format_usd(total.cost_usd)} spent; saved "
                  f"{format_usd(total.saved_usd)} by the cache, {format_usd(total.routing_saved_usd)} by routing, "
                  f"{format_usd(total.prompt_cache_saved_usd)} by the provider's prompt cache, "
                  f"{format_usd(total.deferred_saved_usd)} by deferral (flex, batch)")
    if any(json_answers.values()):
        console.print(f"answers to requests for JSON: {json_answers['valid']} valid, {json_answers['invalid']} "
                      f"invalid, {json_answers['cut']} cut by an output limit")
    if findings:
        for line in prefix_lines(findings):
            console.print(escape(line), highlight=False)
    return 0


def _ledger_records(path: str) -> list[Any]:
    """Every record of a SQLite ledger file or a Redis ledger (its ``redis://`` URL), or an error naming the file
    when it is not one."""
    import sqlite3
    from pathlib import Path

    from .ledger.budgets import is_outage
    from .ledger.records import SQLiteLedger

    if path.startswith(("redis://", "rediss://")):
        return _redis_records(path)
    if Path(path).is_dir():
        raise ValueError(f"{path}: a folder, not a ledger; expected the SQLite file named by ledger = ... in the "
                         "policy, or its redis:// URL")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such ledger file; expected the SQLite file named by ledger = ... "
                                "in the policy, or its redis:// URL")
    try:
        # read-only first: a file without the ledger's table (an empty file, another app's database) is
        # refused untouched; opening it as a ledger would write the schema into it
        check = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            found = check.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spend'").fetchone()
        finally:
            check.close()
        if found is None:
            raise sqlite3.DatabaseError("no spend table")
        return list(SQLiteLedger(path).records())
    except sqlite3.Error as exc:
        if is_outage(exc, path):  # a ledger, busy (another process's lock) or on a failing disk: not "not one"
            raise ValueError(f"{path}: the ledger cannot be read now ({type(exc).__name__}: {exc}); another process "
                             "may hold its lock: try again") from None
        raise ValueError(f"{path}: not an llmbudget SQLite ledger ({exc}); expected the file named by "
                         "ledger = ... in the policy") from None


def _other_models(record: Any, pricing: Any) -> list[tuple[str, Decimal]]:
    """The share of ``record``'s cost that went to inferences on other models (``usage.others``: an advisor's), per
    model: the recorded cost split as today's prices split it (to the picodollar; the call's own model keeps the
    rest, so the models still sum to the record). Nothing where a part has no known price; the call's own model
    named among them stays with the call."""
    others = [(name, sub) for name, sub in record.usage.others if name != record.model]
    if not others or record.cost_usd <= 0:
        return []
    own = pricing.cost(record.usage.replace(others=()), model=record.model, base_url=record.base_url)
    parts = [(name, pricing.cost(sub, model=name, base_url=record.base_url)) for name, sub in others]
    whole = own.usd + sum((part.usd for _, part in parts), Decimal(0))
    if not (own.known and all(part.known for _, part in parts)) or whole <= 0:
        return []
    split: dict[str, Decimal] = {}
    for name, part in parts:
        split[name] = split.get(name, Decimal(0)) + (record.cost_usd * part.usd / whole).quantize(_PICODOLLAR).normalize()
    return list(split.items())


_PICODOLLAR = Decimal("1e-12")


def _redis_records(url: str) -> list[Any]:
    """Every record of the Redis ledger at ``url`` (as the policy's ``ledger = "redis://..."`` names it)."""
    try:
        from .ledger.redis import RedisLedger, location

        ledger = RedisLedger(url)
        where = f"redis at {location(url)}"
    except Exception as exc:  # noqa: BLE001 - redis-py missing, a bad port or TLS option: one line, no password
        raise ValueError(f"the ledger URL: {type(exc).__name__}: {exc}") from None
    try:
        records = list(ledger.records())
        stream_found = bool(records) or ledger.exists()
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, a damaged entry: one line, without the password
        raise ValueError(f"{where}: the ledger could not be read ({type(exc).__name__}: {exc})") from None
    finally:
        ledger.close()
    if not stream_found:
        raise ValueError(f"{where}: no ledger stream {ledger.stream!r} (is the URL's prefix= the policy's?)")
    return records


def _batches(ns: argparse.Namespace) -> int:
    import os

    from .defer import pending_jobs, resume

    if not ns.resume and (ns.wait or ns.ledger or ns.policy):
        raise ValueError("--wait, --ledger and --policy go with --resume (without it, the pending jobs are only "
                         "listed)")
    if ns.resume and not os.path.isdir(ns.state):  # a mistyped folder would resume nothing, and say nothing
        raise ValueError(f"--state {ns.state}: no such folder (the Batcher's state= folder, which holds the jobs)")
    if not ns.resume:
        jobs = [{"id": job["id"], "base_url": job["base_url"], "endpoint": job["endpoint"],
                 "calls": len(job["calls"]), "created": job["created"]} for job in pending_jobs(ns.state)]
        if ns.json:
            print(json.dumps(jobs, indent=2))
        else:
            for job in jobs:
                print(f"{job['id']}  {job['calls']} call(s)  {job['endpoint']}  {job['base_url']}")
            missing = "" if os.path.isdir(ns.state) else " (no such folder: the Batcher's state= folder?)"
            print(f"{len(jobs)} pending job(s) in {ns.state}{missing}")
        return 0
    from .config import engine_from_config
    from .ledger.records import MemoryLedger, SQLiteLedger
    from .pipeline import Engine

    found = _apps_policy(ns.policy)  # the app's policy: its [prices], its ledger
    engine = engine_from_config(found[1], source=str(found[0]), root=found[0].parent) if found else Engine()
    if ns.ledger:
        close = getattr(engine.ledger, "close", None)
        if close is not None:  # the policy's own, replaced
            close()
        engine.ledger = SQLiteLedger(ns.ledger)
    elif engine.ledger is None or isinstance(engine.ledger, MemoryLedger):  # recorded nowhere, the jobs forgotten
        raise ValueError("--resume records the calls' spend in a ledger: give --ledger FILE, or run it where the "
                         "app's policy (with its ledger = ...) is found (or name it with --policy)")
    summaries = resume(ns.state, api_key=os.environ.get("OPENAI_API_KEY"), engine=engine, wait=ns.wait,
                       anthropic_api_key=os.environ.get("ANTHROPIC_API_KEY"))  # it flushes the ledger per job
    if ns.json:
        print(json.dumps(summaries, indent=2))
    else:
        for summary in summaries:
            if summary["status"] == "error":
                print(f"{summary['id']}: not resumed ({summary['error']}); kept for a later --resume")
            else:
                print(f"{summary['id']}: {summary['status']}, {summary['recorded']} of {summary['calls']} "
                      "call(s) recorded")
        if not summaries:
            print(f"no pending jobs in {ns.state}: nothing to resume")
    return 1 if any(summary["status"] == "error" for summary in summaries) else 0


def _replay(ns: argparse.Namespace) -> int:
    try:
        import openai  # noqa: F401
    except ImportError:
        raise ValueError("replay sends every request through the openai SDK; install it: "
                         "pip install 'llmbudget[openai]'") from None
    from .replay import replay

    if ns.json:
        result = replay(ns.traffic, ns.policy)
    else:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(TextColumn("replaying {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
            tid = bar.add_task(escape(ns.traffic), total=None)
            result = replay(ns.traffic, ns.policy,
                            progress=lambda done, total: bar.update(tid, completed=done, total=total))
    if ns.html:
        from pathlib import Path

        from .report_html import render_html

        try:
            Path(ns.html).write_text(render_html(result, traffic=ns.traffic, policy=ns.policy), encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--html {ns.html}: the report cannot be written there ({exc.strerror or exc}); "
                             "expected a file path in a folder you can write") from None
    if ns.json:
        print(json.dumps(_finite({**result.summary(), **({"features": result.features} if result.features else {})}),
                         indent=2, allow_nan=False, default=str))
    else:
        _print_replay(result, ns)
    from .tokens import FALLBACK_NOTE, unavailable_encodings

    if unavailable_encodings():
        print(f"llmbudget replay: {FALLBACK_NOTE.format(names=' and '.join(unavailable_encodings()))}",
              file=sys.stderr)
    if result.missing:
        print(f"llmbudget replay: {result.missing} request(s) went to a model with no recorded answer; each was "
              "answered with the recorded answer of the model closest in price, priced as the model sent",
              file=sys.stderr)
    return 0


def _print_replay(result: Any, ns: argparse.Namespace) -> None:
    from rich.table import Table

    console = _console()
    summary = result.summary()
    baseline, actual = result.baseline_usd, result.actual_usd

    from .money import format_usd as usd

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}%"

    table = Table(title=f"replay of {escape(ns.traffic)} under {escape(ns.policy)}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    quality = summary["quality"]
    for name, value in (
        ("requests", str(summary["calls"])),
        ("cost without llmbudget", usd(baseline)),
        ("cost with llmbudget", usd(actual)),
        ("saved", f"{usd(baseline - actual)} ({summary['savings_pct']:.1f}%)"),
        *((f"  {label}", usd(value)) for label, value in result.saved_rows()),
        ("cache hits: exact", str(summary["cache"]["exact"])),
        ("cache hits: semantic", str(summary["cache"]["semantic"])),
        ("cache hits: wrong (another group)", str(summary["cache"]["wrong"])),
        ("routed to another model", str(summary["routed"])),
        ("output capped", str(summary["capped"])),
        ("refused by a budget", str(result.refused)),
        ("accuracy without llmbudget", pct(None if quality["baseline_accuracy"] is None
                                           else quality["baseline_accuracy"] * 100)),
        ("accuracy with llmbudget", pct(None if quality["accuracy"] is None else quality["accuracy"] * 100)),
        ("quality kept", pct(quality["kept_pct"])),
    ):
        table.add_row(name, value)
    console.print(table)
    by_model = Table(title="by model (asked for / sent to)")
    for column in ("model", "asked", "sent", "cache hits", "without", "with"):
        by_model.add_column(column, justify="left" if column == "model" else "right")
    for name, row in result.by("model").items():
        by_model.add_row(escape(name), str(row["requests"]), str(row["sent"]), str(row["cache_hits"]),
                         usd(row["baseline_usd"]), usd(row["actual_usd"]))
    console.print(by_model)
    by_tenant = Table(title="by tenant")
    for column in ("tenant", "requests", "cache hits", "without", "with", "saved"):
        by_tenant.add_column(column, justify="left" if column == "tenant" else "right")
    for name, row in result.by("tenant").items():
        by_tenant.add_row(escape(name), str(row["requests"]), str(row["cache_hits"]), usd(row["baseline_usd"]),
                          usd(row["actual_usd"]), usd(row["baseline_usd"] - row["actual_usd"]))
    console.print(by_tenant)
    _print_tradeoff(result, summary)
    console.print(f"prices: {escape(str(result.prices))}; {len(result.lines)} requests replayed in "
                  f"{result.seconds:.1f} s"
                  + (f"; report written to {escape(ns.html)}" if ns.html else ""))


#: At most this many lost or gained answers are listed under the replay tables (``--json`` has none, HTML all).
_CHANGES_SHOWN = 20


def _print_tradeoff(result: Any, summary: dict[str, Any]) -> None:
    """Savings and quality per feature, answers lost and gained per decision, and the lines that changed."""
    from rich.table import Table

    from .replay import prompt_excerpt

    console = _console()

    def kept(figures: dict[str, Any]) -> str:
        value = figures["quality"]["kept_pct"]
        return "n/a" if value is None else f"{value:.1f}%"

    if result.features:
        table = Table(title="what each feature saves and keeps")
        for column in ("policy", "saved", "quality kept", "answers lost", "answers gained"):
            table.add_column(column, justify="left" if column == "policy" else "right")
        for name, figures in (*result.features.items(), ("both", summary)):
            decisions = figures["quality"]["by_decision"].values()
            table.add_row(escape(name), f"{figures['savings_pct']:.1f}%", kept(figures),
                          str(sum(d["lost"] for d in decisions)), str(sum(d["gained"] for d in decisions)))
        console.print(table)
    table = Table(title="labeled answers by decision (against the model asked for)")
    for column in ("decision", "requests", "labeled", "lost", "gained"):
        table.add_column(column, justify="left" if column == "decision" else "right")
    for name, row in summary["quality"]["by_decision"].items():
        if row["requests"]:
            table.add_row(escape(name), str(row["requests"]), str(row["judged"]), str(row["lost"]),
                          str(row["gained"]))
    console.print(table)
    changes = result.changes()
    if not changes:
        return
    table = Table(title=f"answers lost and gained ({min(len(changes), _CHANGES_SHOWN)} of {len(changes)})")
    for column in ("line", "tenant", "decision", "answered by", "change", "request"):
        table.add_column(column, justify="right" if column == "line" else "left")
    for line in changes[:_CHANGES_SHOWN]:
        table.add_row(str(line.line.number), escape(line.line.tenant or "-"), escape(line.decision),
                      escape(line.answered_by or "-"), escape(line.change or ""),
                      escape(prompt_excerpt(line.line.request)))
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmbudget", description="Cut and control what an app spends on LLM APIs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser("eval", help="measure the cache or the router on labeled data")
    what = evaluate.add_subparsers(dest="what", required=True)
    cache = what.add_parser("cache", help="score question pairs with the semantic tier's hit decision")
    cache.add_argument("pairs", help='JSONL lines {"a": str, "b": str, "duplicate": bool}')
    cache.add_argument("--mode", choices=("pairs", "replay"), default="pairs",
                       help="pairs: score each pair; replay: store the first of each, look the other up (default: "
                            "pairs)")
    cache.add_argument("--json", action="store_true", help="print one JSON object")
    cache.add_argument("--max-semantic-chars", type=int, default=None, metavar="N",
                       help="texts longer than N characters use the exact tier only (default: the cache's, 500; "
                            "0: no limit)")
    cache.add_argument("--no-template-guard", action="store_true",
                       help="let prompts that share a template but differ in its data be semantic hits")
    cache.add_argument("--reranker", action="store_true",
                       help="decide hits with the MiniLM second stage ([cache] reranker = true; needs "
                            "llmbudget[reranker])")
    cache.add_argument("--curve", metavar="T1,T2,...",
                       help="with --mode replay: also score the replay at these hit thresholds (one pass; "
                            "\"curve\" in the output; with --gptcache, cosine thresholds)")
    cache.add_argument("--gptcache", type=float, metavar="THRESHOLD",
                       help="replay the GPTCache-style baseline instead of the cache, for comparison: the best "
                            "stored question by all-MiniLM-L6-v2 cosine, a hit at or above THRESHOLD (needs "
                            "llmbudget[reranker])")
    cache.set_defaults(handler=_eval_cache)
    router = what.add_parser("router", help="APGR, CPT(50%%) and the cost/quality curve of the router on labeled prompts")
    router.add_argument("labels", help="a CSV file or a folder of CSVs with a prompt column")
    router.add_argument("--weak", required=True, help="column of the weak model's correctness")
    router.add_argument("--strong", required=True, help="column of the strong model's correctness")
    router.add_argument("--policy", help="evaluate the routing of this policy file (its threshold for at_threshold)")
    router.add_argument("--baselines", action="store_true",
                        help="also score routing by prompt length and by a rule-based complexity scorer")
    router.add_argument("--json", action="store_true")
    router.set_defaults(handler=_eval_router)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_what = bench.add_subparsers(dest="what", required=True)
    bench_cache = bench_what.add_parser("cache", help="time cache lookups at N entries (embedding included)")
    bench_cache.add_argument("--entries", type=_count, default=100_000, help="entries in the store (default 100000)")
    bench_cache.add_argument("--reranker", action="store_true",
                             help="the store [cache] reranker = true builds (stored MiniLM vectors are random)")
    bench_cache.add_argument("--json", action="store_true")
    bench_cache.set_defaults(handler=_bench_cache)

    calibrate = commands.add_parser("calibrate", help="fit a setting to a sample of your own traffic")
    calibrate_what = calibrate.add_subparsers(dest="what", required=True)
    calibrate_router = calibrate_what.add_parser(
        "router", help="the threshold that keeps a share of labeled quality, or sends a share of prompts to strong")
    calibrate_router.add_argument(
        "sample", help="with --keep-quality: label CSV(s) with a prompt column, or replay traffic JSONL with "
        "'correct' labels; with --strong-fraction: JSONL of request bodies / {'prompt': ...}, or a CSV")
    calibrate_router.add_argument("--keep-quality", type=_share, metavar="SHARE",
                                  help="keep this share of the all-strong accuracy: 0.97 or 97%%")
    calibrate_router.add_argument("--weak", help="the small tier's label column (CSV) or model (traffic JSONL)")
    calibrate_router.add_argument("--strong", help="the large tier's label column (CSV) or model (traffic JSONL)")
    calibrate_router.add_argument("--confidence", type=float, default=0.9,
                                  help="keep the share at this one-sided bootstrap confidence (default 0.9)")
    calibrate_router.add_argument("--every-file", action="store_true",
                                  help="with --keep-quality and a folder of label CSVs (one per domain or task): keep "
                                  "the share in every file, not only pooled (the lowest of their thresholds)")
    calibrate_router.add_argument("--strong-fraction", type=float, help="send this share of the sample to strong")
    calibrate_router.add_argument("--policy", help="write the threshold to this policy file (llmbudget.toml or pyproject)")
    calibrate_router.add_argument("--json", action="store_true")
    calibrate_router.set_defaults(handler=_calibrate_router)

    route = commands.add_parser("route", help="which tier one prompt goes to, and why (score, threshold, features)")
    route.add_argument("prompt", help="the user message")
    route.add_argument("--policy", help="use this policy's routing (tiers, threshold); default: the shipped router")
    route.add_argument("--model", default="gpt-4o", help="the model the app asks for (default gpt-4o)")
    route.add_argument("--system", help="a system message to send with it")
    route.add_argument("--path", default="", help="the request path, for the policy's never-route globs")
    route.add_argument("--top", type=_count, default=5, help="how many contributions to list (default 5)")
    route.add_argument("--json", action="store_true")
    route.set_defaults(handler=_route)

    prices = commands.add_parser("prices", help="what models cost per 1M tokens (genai-prices)")
    prices.add_argument("models", nargs="+")
    prices.add_argument("--base-url", default="", help="the base URL the model is served at")
    prices.add_argument("--policy", help="price with this policy file's [prices] (default: the policy found from the "
                                         "working folder up, or LLMBUDGET_POLICY, as the app finds it)")
    prices.add_argument("--json", action="store_true")
    prices.set_defaults(handler=_prices)

    report = commands.add_parser("report", help="spend and savings by tenant, model and day from a ledger")
    report.add_argument("ledger", help="the ledger: its SQLite file or redis:// URL (ledger = ... in the policy)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(handler=_report)

    replay = commands.add_parser("replay", help="replay recorded traffic through a policy: what it saves and keeps")
    replay.add_argument("traffic", help='JSONL lines {"request", "responses": {MODEL: body}, "tenant", "group", '
                        '"correct"}')
    replay.add_argument("--policy", required=True, help="the policy file (llmbudget.toml or pyproject.toml)")
    replay.add_argument("--json", action="store_true", help="print one JSON object")
    replay.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report with charts")
    replay.set_defaults(handler=_replay)

    batches = commands.add_parser("batches", help="list the Batch API jobs llmbudget.defer(\"batch\") left pending, "
                                                   "or fetch their results (--resume)")
    batches.add_argument("--state", default=".llmbudget/batches", help="the Batcher's state folder "
                         "(default .llmbudget/batches)")
    batches.add_argument("--resume", action="store_true", help="fetch finished jobs: results to "
                         "STATE/<job>.results.jsonl, spend to --ledger (API keys from OPENAI_API_KEY and "
                         "ANTHROPIC_API_KEY)")
    batches.add_argument("--wait", action="store_true", help="with --resume: poll until every job is finished")
    batches.add_argument("--ledger", help="with --resume: the SQLite ledger to record the calls' spend in (default: "
                         "the policy's ledger)")
    batches.add_argument("--policy", help="with --resume: the app's policy file, for its prices and ledger (default: "
                         "LLMBUDGET_POLICY, else llmbudget.toml or pyproject.toml found from here)")
    batches.add_argument("--json", action="store_true")
    batches.set_defaults(handler=_batches)
    return parser


def _count(text: str) -> int:
    """A whole number, 0 or more (``--top -1`` printed nothing and said nothing)."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return count


def _share(text: str) -> float:
    """A share given as a fraction (0.97) or a percentage (97%)."""
    raw = text.strip()
    try:
        share = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        share = math.nan
    if not 0.0 < share <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share within (0, 1] such as 0.97 or 97%, got {text!r}")
    return share


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmbudget`` command."""
    ns = _parser().parse_args(argv)
    import warnings

    # a warning is one line for people (an unpriced model...), not the file and source line it came from
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_args, **_kw: f"{category.__name__}: {message}\n"
    try:
        return int(ns.handler(ns))
    except BrokenPipeError:  # the reader left (`| head`): nothing more to say, to it or anyone
        try:  # the stdout file itself to /dev/null (Python's recipe): the exit's flush, Rich's too, fails no more
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's stand-in)
            pass
        return 1  # as Python's recipe and Rich's own handler (the tables) end: the output was cut
    except (OSError, ValueError) as exc:  # FileNotFoundError, PermissionError...; ConfigError, TrafficError...
        print(f"llmbudget {ns.command}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if "pip install" not in str(exc):  # not an extra left out (ours say which to install): a real bug
            raise
        print(f"llmbudget {ns.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    raise SystemExit(main())
