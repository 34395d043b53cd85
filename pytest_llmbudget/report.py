"""The spend report: terminal table, JSON (and baselines), GitHub markdown, budget failures."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmbudget.money import format_usd
from llmbudget.prefix import PrefixFinding, prefix_lines
from llmbudget.pricing import PriceSnapshot

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
    return [name, str(c.calls), str(c.input_tokens), str(c.cached_input_tokens), str(c.output_tokens), usd(c.cost_usd)]


_HEADER = ["calls", "input", "cached", "output", "USD"]


def terminal(tr: Any, summary: Summary, verdicts: list[str], new_tests: list[str]) -> None:
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
    for name in new_tests:
        tr.write_line(f"not in the baseline (not judged): {name}")
    for verdict in verdicts:
        tr.write_line(f"FAILED llmbudget: {verdict}", red=True, bold=True)


def json_document(summary: Summary) -> dict[str, Any]:
    """The report as JSON (version 1): tests, models and total, costs as floats."""
    tests = {}
    for nodeid, spend in summary.tests.items():
        entry = to_report(spend)
        entry["outcome"] = summary.outcomes.get(nodeid, "unknown")
        entry["cost_usd_exact"] = str(spend.cost_usd)
        tests[nodeid] = entry
    total = to_report(summary.total)
    total["cost_usd_exact"] = str(summary.total.cost_usd)
    return {
        "version": 1,
        "prices": {"source": summary.snapshot.source, "as_of": summary.snapshot.as_of},
        "tests": tests,
        "models": {model: to_report(counters) for model, counters in sorted(summary.models.items())},
        "total": total,
        "outside_tests": to_report(summary.outside),
        "unpriced_models": summary.unpriced,
        "unstable_prefixes": [finding.to_dict() for finding in summary.prefixes],
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
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("tests"), dict):
        raise ValueError("expected a JSON object with version 1 and a tests table")
    return doc


def _cost(entry: Any) -> Decimal:
    if not isinstance(entry, dict):
        return Decimal(0)
    exact = entry.get("cost_usd_exact")
    return Decimal(str(exact if exact is not None else entry.get("cost_usd", 0)))


def compare(summary: Summary, baseline: dict[str, Any], tolerance: Decimal) -> tuple[list[str], list[str]]:
    """Regressions beyond ``tolerance`` (a fraction) against a baseline, and tests it doesn't know."""
    regressions: list[str] = []
    def over(now: Decimal, before: Decimal) -> bool:
        return now > before * (1 + tolerance) and now - before > Decimal("1e-9")
    before_total = _cost(baseline.get("total"))
    if over(summary.total.cost_usd, before_total):
        regressions.append(
            f"total LLM cost rose from {usd(before_total)} to {usd(summary.total.cost_usd)}"
            f" (tolerance {tolerance * 100:g}%)"
        )
    new_tests = []
    for nodeid, spend in summary.tests.items():
        if nodeid not in baseline["tests"]:
            if spend.calls:
                new_tests.append(nodeid)
            continue
        before = _cost(baseline["tests"][nodeid])
        if over(spend.cost_usd, before):
            regressions.append(
                f"{nodeid}: LLM cost rose from {usd(before)} to {usd(spend.cost_usd)} (tolerance {tolerance * 100:g}%)"
            )
    return regressions, new_tests


def fallback_note() -> str | None:
    """One line when this run's token estimates fell back to characters per token (tiktoken offline), else None."""
    from llmbudget.tokens import FALLBACK_NOTE, unavailable_encodings

    names = unavailable_encodings()
    return FALLBACK_NOTE.format(names=" and ".join(names)) if names else None


def markdown(summary: Summary, verdicts: list[str], new_tests: list[str]) -> str:
    """A GitHub step summary: verdicts, the per-test and per-model tables."""
    lines = ["## LLM spend (llmbudget)", ""]
    lines += [f"- :x: {verdict}" for verdict in verdicts]
    lines += [f"- not in the baseline: `{name}`" for name in new_tests]
    if verdicts or new_tests:
        lines.append("")
    lines += ["| test | calls | input | cached | output | USD |", "|---|---:|---:|---:|---:|---:|"]
    for name, c in summary.rows():
        lines.append("| `" + name + "` | " + " | ".join(_cells(name, c)[1:]) + " |")
    lines += ["", "| model | calls | input | cached | output | USD |", "|---|---:|---:|---:|---:|---:|"]
    for model, c in sorted(summary.models.items()):
        lines.append(f"| {model} | " + " | ".join(_cells(model, c)[1:]) + " |")
    lines.append("| **total** | " + " | ".join(_cells("total", summary.total)[1:]) + " |")
    lines += ["", f"Prices: {summary.snapshot.source}, as of {summary.snapshot.as_of}.", ""]
    found = prefix_lines(summary.prefixes)
    if found:
        lines += [f"- {line}" for line in found] + [""]
    note = fallback_note()
    if note:
        lines += [f"> {note}", ""]
    return "\n".join(lines) + "\n"


def budget_failure(nodeid: str, problems: list[str], spend: TestSpend) -> str:
    """The failure text of a test over its llm_budget: what was exceeded and every call."""
    lines = [f"{nodeid} exceeded its LLM budget: " + "; ".join(problems), "calls:"]
    lines += [f"  {line}" for line in spend.calls_seen] or ["  (none)"]
    by_model = ", ".join(f"{model} {usd(c.cost_usd)} ({c.calls} calls)" for model, c in sorted(spend.models.items()))
    lines.append(f"by model: {by_model}")
    lines.append(f"total: {spend.calls} calls, {spend.tokens} tokens, {usd(spend.cost_usd)}")
    return "\n".join(lines)
