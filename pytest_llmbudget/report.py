"""The spend report: terminal table, JSON (and baselines), GitHub markdown, budget failures."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmbudget.calls import MAX_USD
from llmbudget.money import exact_usd, format_usd, plain_decimal
from llmbudget.prefix import PrefixFinding, prefix_lines
from llmbudget.pricing import PriceSnapshot
from llmbudget.textfiles import shown

from .spend import Counters, TestSpend, to_report

__all__ = ["Summary", "terminal", "json_document", "markdown", "compare", "budget_failure"]

_OUTSIDE = "(outside tests)"


@dataclass
class Summary:
    tests: dict[str, TestSpend]
    outcomes: dict[str, str]
    models: dict[str, Counters]
    total: Counters
    outside: TestSpend
    snapshot: PriceSnapshot
    unpriced: list[str]
    prefixes: list[PrefixFinding] = field(default_factory=list)
    workers: int = 1  # xdist workers (1: no xdist), each of which runs the session's fixtures once

    def stale(self) -> dict[str, tuple[int, int]]:
        """Per test (and outside tests), its stale replays and the input tokens they add (see ``replays``)."""
        spends = [*self.tests.items(), (_OUTSIDE, self.outside)]
        return {name: (spend.stale_replays, spend.stale_input_tokens) for name, spend in spends
                if spend.stale_replays}

    def rows(self) -> list[tuple[str, Counters]]:
        rows: list[tuple[str, Counters]] = [(nodeid, spend) for nodeid, spend in self.tests.items() if spend.calls]
        if self.outside.calls:
            rows.append((_OUTSIDE, self.outside))
        return rows


usd = format_usd  # dollars for people (the JSON is exact)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    def line(cells: list[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        )
    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def _cells(name: str, c: Counters) -> list[str]:
    return [shown(name), str(c.calls), str(c.input_tokens), str(c.cached_input_tokens), str(c.output_tokens), usd(c.cost_usd)]


_HEADER = ["calls", "input", "cached", "output", "USD"]


def terminal(tr: Any, summary: Summary, verdicts: list[str], new_tests: list[str],
             gone_tests: Sequence[str] = ()) -> None:
    """Write the spend tables and verdicts to pytest's terminal reporter."""
    tr.write_sep("=", "LLM spend (llmbudget)")
    rows = summary.rows()
    if not rows:
        tr.write_line("no LLM calls were made")
    else:
        for line in _table(["test", *_HEADER], [_cells(name, c) for name, c in rows]):
            tr.write_line(line)
        tr.write_line("")
        model_rows = [_cells(model, c) for model, c in sorted(summary.models.items())]
        model_rows.append(_cells("TOTAL", summary.total))
        for line in _table(["model", *_HEADER], model_rows):
            tr.write_line(line)
    tr.write_line(f"prices: {summary.snapshot.source}, as of {summary.snapshot.as_of}")
    if summary.total.estimated:
        tr.write_line(f"{summary.total.estimated} call(s) priced from token estimates (cut streams or no usage)")
    note = fallback_note()
    if note:
        tr.write_line(note, yellow=True)
    for model in summary.unpriced:
        tr.write_line(f"no price for model {model!r}: charged a conservative estimate; add a price override",
                      yellow=True)
    for line in prefix_lines(summary.prefixes):
        tr.write_line(line, yellow=True)
    for line in stale_lines(summary):
        tr.write_line(line, yellow=True)
    for name in new_tests:
        tr.write_line(f"not in the baseline (not judged): {shown(name)}")
    for name in gone_tests[:20]:
        tr.write_line(f"in the baseline, not run (not judged): {shown(name)}")
    if len(gone_tests) > 20:
        tr.write_line(f"... and {len(gone_tests) - 20} more of the baseline's tests not run")
    for verdict in verdicts:
        tr.write_line(f"FAILED llmbudget: {verdict}", red=True, bold=True)


def stale_lines(summary: Summary, *, most: int = 20) -> list[str]:
    """What the stale replays of a run come to, a line per test (see ``replays``)."""
    stale = summary.stale()
    if not stale:
        return []
    requests = sum(count for count, _ in stale.values())
    lines = [f"{requests} replayed request(s) in {len(stale)} test(s) were recorded for another prompt: their "
             "spend is the recording's, not what the prompt costs now; re-record their cassettes"]
    for name, (count, tokens) in sorted(stale.items())[:most]:
        lines.append(f"  {shown(name)}: {count} request(s), {tokens:+,} input tokens (estimated)")
    if len(stale) > most:
        lines.append(f"  ... and {len(stale) - most} more test(s)")
    return lines


def json_document(summary: Summary) -> dict[str, Any]:
    """The report as JSON (version 1): tests, models and total, costs as floats."""
    def exact(counters: Counters) -> dict[str, Any]:  # every entry's cost also as the exact decimal string
        return {**to_report(counters), "cost_usd_exact": plain_decimal(counters.cost_usd)}

    tests = {nodeid: {**exact(spend), "outcome": summary.outcomes.get(nodeid, "unknown")}
             for nodeid, spend in summary.tests.items()}
    return {
        "version": 1,
        "prices": {"source": summary.snapshot.source, "as_of": summary.snapshot.as_of},
        "tests": tests,
        "models": {model: exact(counters) for model, counters in sorted(summary.models.items())},
        "total": exact(summary.total),
        "outside_tests": exact(summary.outside),
        "workers": summary.workers,
        "unpriced_models": summary.unpriced,
        "unstable_prefixes": [finding.to_dict() for finding in summary.prefixes],
        "stale_replays": {name: {"requests": count, "input_tokens": tokens}
                          for name, (count, tokens) in sorted(summary.stale().items())},
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a baseline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """A report or baseline, every cost in it checked (a missing, null, negative or NaN cost is a ValueError
    that names the entry: compared, it would crash the run's end or pass anything)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("its JSON is nested too deeply to read") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("tests"), dict):
        raise ValueError("expected a JSON object with version 1 and a tests table")
    workers = doc.get("workers", 1)
    if type(workers) is not int or workers < 1:
        raise ValueError(f"workers is {workers!r}; expected a whole number of 1 or more")
    entries = [(f"tests[{name!r}]", entry) for name, entry in doc["tests"].items()]
    entries += [(key, doc[key]) for key in ("total", "outside_tests") if key in doc]
    for where, entry in entries:
        _cost(entry, where)
    return doc


def _cost(entry: Any, where: str = "entry") -> Decimal:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is {entry!r}; expected an object with cost_usd")
    exact = entry.get("cost_usd_exact")
    raw = exact if exact is not None else entry.get("cost_usd")
    amount = _amount(raw)
    if amount is None:
        raise ValueError(f"{where}: cost_usd is {raw!r}; expected an amount in dollars from 0 to {MAX_USD:,.0f}")
    shown = entry.get("cost_usd")
    if exact is not None and shown is not None:  # cost_usd is cost_usd_exact as a float: one edited alone
        as_float = _amount(shown)
        if as_float is None or abs(float(amount) - float(as_float)) > 1e-12 + 1e-9 * float(amount):
            raise ValueError(f"{where}: cost_usd {shown!r} and cost_usd_exact {exact!r} disagree; edit both, or "
                             "remove cost_usd_exact")
    return amount


def _amount(raw: Any) -> Decimal | None:
    """``raw`` as a finite amount from 0 to a record's most (:data:`llmbudget.calls.MAX_USD`: 1e999999999 made the
    run's end crash with decimal.Overflow when summed), or None."""
    try:
        amount = Decimal(str(raw)) if isinstance(raw, (int, float, str)) and not isinstance(raw, bool) else None
    except ArithmeticError:
        return None
    return amount if amount is not None and amount.is_finite() and 0 <= amount <= MAX_USD else None


def compare(summary: Summary, baseline: dict[str, Any], tolerance: Decimal) -> tuple[list[str], list[str]]:
    """Regressions beyond ``tolerance`` (a fraction) against a baseline, and tests it doesn't know."""
    regressions: list[str] = []
    def over(now: Decimal, before: Decimal) -> bool:
        return now > before * (1 + tolerance) and now - before > Decimal("1e-9")
    known: dict[str, Any] = baseline["tests"]
    new_tests = [nodeid for nodeid, spend in summary.tests.items() if nodeid not in known and spend.calls]
    # The total compares what both runs share: the tests the baseline knows and the spend outside tests. New
    # tests are listed, not judged, so a pull request that adds one is not failed by the total either.
    # Spend outside tests (session fixtures, imports) is made once per xdist worker: with another number of workers
    # than the baseline's it is not compared (a run was failed for adding -n auto)
    workers_before = baseline.get("workers", 1)
    same_workers = workers_before == summary.workers
    now_total = (summary.outside.cost_usd if same_workers else Decimal(0)) + sum(
        (spend.cost_usd for nodeid, spend in summary.tests.items() if nodeid in known), Decimal(0))
    if not same_workers:
        before_total = Decimal(0)
    elif "outside_tests" in baseline:
        before_total = _cost(baseline["outside_tests"], "outside_tests")
    elif "total" in baseline:  # an older baseline: what the tests did not spend
        before_total = _cost(baseline["total"], "total") - sum((_cost(entry) for entry in known.values()), Decimal(0))
    else:  # written by hand with the tests alone: nothing spent outside them
        before_total = Decimal(0)
    before_total = max(before_total, Decimal(0)) + sum(
        (_cost(known[nodeid]) for nodeid in summary.tests if nodeid in known), Decimal(0))
    if over(now_total, before_total):
        partial = new_tests or any(nodeid not in summary.tests for nodeid in known)
        shared = " (the tests both runs have, and spend outside tests)" if partial else ""
        if not same_workers:
            shared = (f" (the tests both runs have; spend outside tests not compared: the baseline ran "
                      f"{workers_before} worker(s), this run {summary.workers})")
        regressions.append(
            f"total LLM cost rose from {exact_usd(before_total)} to {exact_usd(now_total)}{shared}"
            f" (tolerance {_percent(tolerance)})"
        )
    for nodeid, spend in summary.tests.items():
        if nodeid not in known:
            continue
        before = _cost(known[nodeid])
        if over(spend.cost_usd, before):  # (exact: rounded, a rise could read "from $0.000156 to $0.000156")
            regressions.append(f"{shown(nodeid)}: LLM cost rose from {exact_usd(before)} to "
                               f"{exact_usd(spend.cost_usd)} (tolerance {_percent(tolerance)})")
    return regressions, new_tests


def gone(summary: Summary, baseline: dict[str, Any]) -> list[str]:
    """The baseline's tests that spent and did not run now (renamed, a parametrize id changed, deselected): not
    judged, and listed, since a rename is otherwise a silent way round the comparison."""
    return [nodeid for nodeid, entry in baseline["tests"].items()
            if nodeid not in summary.tests and _cost(entry) > 0]


def _percent(fraction: Decimal) -> str:
    """A tolerance as people write it: ``10%``, ``0.5%``, ``0%`` (never ``-0%`` nor ``0.500%``)."""
    text = f"{(fraction * 100).normalize():f}"
    return f"{'0' if Decimal(text) == 0 else text}%"


def fallback_note() -> str | None:
    """One line when this run's token estimates fell back to characters per token (tiktoken offline), else None."""
    from llmbudget.tokens import FALLBACK_NOTE, unavailable_encodings

    names = unavailable_encodings()
    return FALLBACK_NOTE.format(names=" and ".join(names)) if names else None


def markdown(summary: Summary, verdicts: list[str], new_tests: list[str], gone_tests: Sequence[str] = ()) -> str:
    """A GitHub step summary: verdicts, the per-test and per-model tables."""
    lines = ["## LLM spend (llmbudget)", ""]
    lines += [f"- :x: {_code(verdict)}" for verdict in verdicts]  # they name tests: never read as Markdown
    lines += [f"- not in the baseline: {_code(name)}" for name in new_tests]
    lines += [f"- in the baseline, not run: {_code(name)}" for name in gone_tests[:20]]
    if verdicts or new_tests or gone_tests:
        lines.append("")
    lines += ["| test | calls | input | cached | output | USD |", "|---|---:|---:|---:|---:|---:|"]
    for name, c in summary.rows():
        lines.append(f"| {_code(name, cell=True)} | " + " | ".join(_cells(name, c)[1:]) + " |")
    lines += ["", "| model | calls | input | cached | output | USD |", "|---|---:|---:|---:|---:|---:|"]
    for model, c in sorted(summary.models.items()):
        lines.append(f"| {_code(model, cell=True)} | " + " | ".join(_cells(model, c)[1:]) + " |")
    lines.append("| **total** | " + " | ".join(_cells("total", summary.total)[1:]) + " |")
    lines += ["", f"Prices: {summary.snapshot.source}, as of {summary.snapshot.as_of}.", ""]
    found = prefix_lines(summary.prefixes)
    if found:
        lines += [f"- {line}" for line in found] + [""]
    stale = stale_lines(summary)
    if stale:
        lines += [f"- {stale[0]}"] + [f"  - {_code(line.strip())}" for line in stale[1:]] + [""]
    note = fallback_note()
    if note:
        lines += [f"> {note}", ""]
    return "\n".join(lines) + "\n"


def _code(text: str, *, cell: bool = False) -> str:
    """``text`` as a Markdown code span that its own backticks cannot end (and, in a table ``cell``, whose ``|``
    cannot split the row): a test id or model name is shown as it is, never read as Markdown."""
    text = shown(" ".join(text.split()))  # a line break would end the table row; an escape drive the terminal
    if cell:
        text = text.replace("|", "\\|")  # GitHub's tables split on | even inside code spans
    run = max((len(r) for r in re.findall(r"`+", text)), default=0) + 1
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return "`" * run + pad + text + pad + "`" * run


def budget_failure(nodeid: str, problems: list[str], spend: TestSpend) -> str:
    """The failure text of a test over its llm_budget: what was exceeded and every call."""
    lines = [f"{shown(nodeid)} exceeded its LLM budget: " + "; ".join(problems), "calls:"]
    lines += [f"  {line}" for line in spend.calls_seen] or ["  (none)"]
    by_model = ", ".join(f"{shown(model)} {exact_usd(c.cost_usd)} ({c.calls} calls)"
                         for model, c in sorted(spend.models.items()))
    lines.append(f"by model: {by_model}")  # (exact, as the problems beside them: cost $0.0001542 > budget $0.0001)
    lines.append(f"total: {spend.calls} calls, {spend.tokens} tokens, {exact_usd(spend.cost_usd)}")
    return "\n".join(lines)
