"""The ``llmbudget replay --html`` report: one self-contained HTML file, charts in inline SVG.

No scripts, fonts or images are fetched: the file opens offline and can be
attached to a pull request or an email as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from html import escape
from typing import Any

from .money import format_usd
from .replay import ReplayResult, prompt_excerpt
from .textfiles import shown

__all__ = ["render_html"]

_WITHOUT = "#9aa5b1"  # grey: cost without llmbudget
_WITH = "#1f7a4d"  # green: cost with llmbudget
_COST = "#b03a2e"  # red: a mechanism that cost more than it saved (escalations)
#: Short chart labels for ReplayResult.saved_by's mechanisms.
_MECHANISM_LABELS = {"cache": "the cache", "routing": "routing", "caps": "output caps",
                     "refused": "refused by a budget", "other": "other"}
_WIDTH = 720


def _text(value: str) -> str:
    """``value`` for the page: its control and other non-printable characters (NUL, ESC, a right-to-left override,
    a lone surrogate) written as escapes (they are parse errors in HTML and SVG, or reorder what is shown), then
    HTML-escaped."""
    return escape(shown(value))


_money = format_usd


def _svg(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{_text(title)}" font-family="sans-serif" font-size="12">')


def _bars(rows: Sequence[tuple[str, Sequence[tuple[str, float, str]]]], *, title: str,
          signed: dict[str, Decimal] | None = None) -> str:
    """Horizontal grouped bars: each row is (label, [(series, value, colour), ...]); ``signed`` gives the
    amount a row's label shows when its bar is drawn by magnitude (a negative saving)."""
    label_w, value_w, bar_h, gap = 170, 90, 16, 10
    plot_w = _WIDTH - label_w - value_w
    top = max((v for _, series in rows for _, v, _ in series), default=0.0) or 1.0
    group_h = max(1, max((len(series) for _, series in rows), default=1)) * (bar_h + 2) + gap
    height = 10 + len(rows) * group_h
    out = [_svg(_WIDTH, height, title)]
    y = 10
    for label, series in rows:
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h - 3}" text-anchor="end">{_text(label)}</text>')
        for name, value, colour in series:
            width = max(1.0, value / top * plot_w) if value > 0 else 0.0
            shown = _money(signed[label] if signed is not None else value)
            out.append(f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="{colour}">'
                       f'<title>{_text(name)}: {shown}</title></rect>')
            out.append(f'<text x="{label_w + width + 4:.1f}" y="{y + bar_h - 3}" fill="#333">{shown}</text>')
            y += bar_h + 2
        y += gap
    out.append("</svg>")
    return "".join(out)


def _lines(points: Sequence[tuple[Decimal, Decimal]], *, title: str) -> str:
    """Cumulative cost over the replay: two polylines, without and with llmbudget."""
    width, height, left, bottom, top_pad, right = _WIDTH, 300, 80, 40, 16, 20
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    n = max(1, len(points))
    top = float(max((max(b, a) for b, a in points), default=Decimal(0))) or 1.0

    def xy(i: int, value: Decimal) -> str:
        x = left + (i + 1) / n * plot_w
        y = top_pad + plot_h - float(value) / top * plot_h
        return f"{x:.1f},{y:.1f}"

    out = [_svg(width, height, title),
           f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#666"/>',
           f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#666"/>']
    for fraction in (0.0, 0.5, 1.0):
        y = top_pad + plot_h - fraction * plot_h
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_money(top * fraction)}</text>')
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">requests, in replay order '
               f'(1 to {len(points)})</text>')
    for index, colour in ((0, _WITHOUT), (1, _WITH)):
        coords = " ".join(xy(i, pair[index]) for i, pair in enumerate(points))
        out.append(f'<polyline points="{left},{top_pad + plot_h} {coords}" fill="none" stroke="{colour}" '
                   f'stroke-width="2"/>')
    out.append("</svg>")
    return "".join(out)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{_text(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_text(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _tradeoff(result: ReplayResult, summary: dict[str, Any]) -> str:
    """Savings and quality per feature, answers lost and gained per decision, and every line that changed."""

    def kept(figures: dict[str, Any]) -> str:
        return _pct(figures["quality"]["kept_pct"])

    def totals(figures: dict[str, Any], key: str) -> int:
        return sum(row[key] for row in figures["quality"]["by_decision"].values())

    parts = []
    if result.features:
        rows = [[name, f"{figures['savings_pct']:.1f}%", kept(figures), totals(figures, "lost"),
                 totals(figures, "gained")] for name, figures in (*result.features.items(), ("both", summary))]
        parts.append("<h2>What each feature saves and keeps</h2>"
                     + _table(["policy", "saved", "quality kept", "answers lost", "answers gained"], rows))
    decisions = [[name, row["requests"], row["judged"], row["lost"], row["gained"]]
                 for name, row in summary["quality"]["by_decision"].items() if row["requests"]]
    parts.append("<h2>Labeled answers by decision</h2><p class=\"note\">Lost: the model asked for answered right, "
                 "the answer served was wrong; gained: the reverse.</p>"
                 + _table(["decision", "requests", "labeled", "lost", "gained"], decisions))
    changes = [[line.line.number, line.line.tenant or "-", line.decision, line.answered_by or "-", line.change,
                prompt_excerpt(line.line.request, 90)] for line in result.changes()]
    if changes:
        parts.append("<h2>Answers lost and gained</h2>"
                     + _table(["line", "tenant", "decision", "answered by", "change", "request"], changes))
    return "\n".join(parts)


def render_html(result: ReplayResult, *, traffic: str = "", policy: str = "") -> str:
    """The whole report as one HTML document."""
    summary = result.summary()
    quality = summary["quality"]
    baseline, actual = result.baseline_usd, result.actual_usd
    by_model, by_tenant = result.by("model"), result.by("tenant")

    def grouped(rows: dict[str, dict[str, Any]]) -> list[tuple[str, list[tuple[str, float, str]]]]:
        return [(name, [("without llmbudget", float(row["baseline_usd"]), _WITHOUT),
                        ("with llmbudget", float(row["actual_usd"]), _WITH)]) for name, row in rows.items()]

    figures = [
        ("requests replayed", summary["calls"]),
        ("cost without llmbudget", _money(baseline)),
        ("cost with llmbudget", _money(actual)),
        ("saved", f"{_money(baseline - actual)} ({summary['savings_pct']:.1f}%)"),
        *((label, _money(value)) for label, value in result.saved_rows()),
        ("cache hits (exact / semantic)", f"{summary['cache']['exact']} / {summary['cache']['semantic']}"),
        ("wrong cache hits (another group's answer)", summary["cache"]["wrong"]),
        ("routed to another model", summary["routed"]),
        ("output capped", summary["capped"]),
        ("refused by a budget", result.refused),
        ("answered by a stand-in (no recorded answer for the model sent)", result.missing),
        ("accuracy without llmbudget", _pct(None if quality["baseline_accuracy"] is None
                                            else quality["baseline_accuracy"] * 100)),
        ("accuracy with llmbudget", _pct(None if quality["accuracy"] is None else quality["accuracy"] * 100)),
        ("quality kept", _pct(quality["kept_pct"])),
    ]

    def spend_rows(rows: dict[str, dict[str, Any]]) -> list[list[Any]]:
        return [[name, row["requests"], row["sent"], row["cache_hits"], _money(row["baseline_usd"]),
                 _money(row["actual_usd"])] for name, row in rows.items()]

    head = ["", "requests asked", "calls sent", "cache hits", "without llmbudget", "with llmbudget"]
    tradeoff = _tradeoff(result, summary)
    saved = {_MECHANISM_LABELS[name]: value for name, value in result.saved_by().items() if value}
    savings_chart = _bars(
        [(label, [(f"saved by {label}", float(abs(value)), _WITH if value > 0 else _COST)])
         for label, value in saved.items()], title="saved by mechanism", signed=saved,
    ) if saved else '<p class="note">Nothing was saved.</p>'

    legend = (f'<p class="legend"><span style="background:{_WITHOUT}"></span>without llmbudget '
              f'<span style="background:{_WITH}"></span>with llmbudget</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llmbudget replay report</title>
<style>
body {{ font-family: sans-serif; max-width: 760px; margin: 2em auto; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }}
.note {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>llmbudget replay: {_text(traffic)}</h1>
<p class="note">policy {_text(policy)}; prices {_text(result.prices)}; replayed in {result.seconds:.1f} s.</p>
{_table(["figure", "value"], figures)}
{tradeoff}
<h2>Cost with vs without llmbudget</h2>
{legend}
{_bars([("all requests", [("without llmbudget", float(baseline), _WITHOUT),
                          ("with llmbudget", float(actual), _WITH)])], title="total cost")}
<h2>Saved, by mechanism</h2>
<p class="note">Each request's saving (cost without llmbudget minus cost with it) goes to what served it; the
parts sum to the total saved. A red bar cost more than it saved (escalations pay both attempts).</p>
{savings_chart}
<h2>By model</h2>
<p class="note">Without llmbudget: what the requests that asked for a model cost. With llmbudget: what the calls
sent to a model cost (cache hits cost nothing).</p>
{legend}
{_bars(grouped(by_model), title="cost by model")}
{_table(["model", *head[1:]], spend_rows(by_model))}
<h2>By tenant</h2>
{legend}
{_bars(grouped(by_tenant), title="cost by tenant")}
{_table(["tenant", *head[1:]], spend_rows(by_tenant))}
<h2>Over the replay</h2>
{legend}
{_lines(result.cumulative(), title="cumulative cost")}
</body>
</html>
"""
