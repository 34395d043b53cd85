"""Offline evaluation of a router on labeled prompts (RouteLLM's APGR and CPT).

A label file is a CSV with a ``prompt`` column and one ``True``/``False``
correctness column per model (the format of ``../shared/data/routing``; ``1``/``0``
too, or a graded score from 0 to 1; a row with an empty label is left out and
counted as ``unlabeled_rows``).  For
every strong-call fraction ``f`` in 0, 0.1, ..., 1 the ``round(f * n)``
prompts the router scores highest go to the strong model, the rest to the
weak one.  PGR(f), the performance gap recovered, is
``(accuracy(f) - weak_accuracy) / (strong_accuracy - weak_accuracy)``; APGR is
the trapezoid area under PGR over those fractions (always-weak 0,
always-strong 1, random about 0.5) and CPT(50%) the smallest fraction, linearly
interpolated between grid points, at which PGR reaches 0.5.  Prompts with tied
scores share the strong calls at the cut evenly (the expectation of a random
tie-break), so a constant router scores exactly the random APGR.  The
cost/quality curve itself, accuracy at each of those fractions, comes back as
``curve``: its endpoints are the weak and the strong model's accuracy.  Each
point also says which share of the prompts' input tokens goes strong
(``strong_token_share``): the router favours long prompts, so the share of
input spend is larger than the share of calls.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..textfiles import csv_rows

if TYPE_CHECKING:
    from llmbudget.routing.classifier import Router

__all__ = [
    "FRACTIONS",
    "apgr",
    "accuracy_curve",
    "cpt",
    "eval_router",
    "load_labels",
    "oracle_order",
    "pgr_curve",
    "routing_metrics",
]

#: Strong-call fractions the curve is measured at.
FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))

_TRUE = frozenset({"true", "yes", "t"})
_FALSE = frozenset({"false", "no", "f"})


def _as_label(value: str, *, column: str, where: str) -> float | None:
    """A correctness cell: True / False (1 / 0), or a graded score from 0 to 1 (a judge's, scaled); None when
    empty (the row has no label: it is left out and counted)."""
    text = value.strip().lower()
    if not text:
        return None
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if 0.0 <= number <= 1.0:
        return number
    raise ValueError(f"{where}: column {column!r} holds {value!r}; expected True or False (or a score from 0 to 1)")


def _csv_files(labels: str | Path) -> list[Path]:
    path = Path(labels)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".csv")
        if not files:
            raise FileNotFoundError(f"no *.csv files under {path}; expected label CSVs with a 'prompt' column")
        return files
    if path.is_file():
        if path.suffix.lower() in (".jsonl", ".json"):
            raise ValueError(f"{path}: eval router reads label CSVs (a 'prompt' column and one correctness column "
                             "per model, as RouteLLM's MMLU files); replay traffic with 'correct' labels goes to "
                             "'llmbudget calibrate router' or 'llmbudget replay'")
        return [path]
    raise FileNotFoundError(f"labels {path} not found; pass a CSV file or a folder of CSV files")


def _group(file: Path, labels: Path) -> str:
    """A label file's name in the per-file figures: its path under the folder, without ``.csv``."""
    if labels.is_dir():
        return file.relative_to(labels).with_suffix("").as_posix()
    return file.stem


def load_labels(labels: str | Path, *, weak: str, strong: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read prompts and the weak/strong correctness columns from a CSV file or a folder of CSVs (rows with an empty
    label are left out)."""
    prompts, weak_ok, strong_ok, _, _ = _load_labels(labels, weak=weak, strong=strong)
    return prompts, weak_ok, strong_ok


def _load_labels(
    labels: str | Path, *, weak: str, strong: str
) -> tuple[list[str], np.ndarray, np.ndarray, list[str], int]:
    """``load_labels`` plus each prompt's file (one group of the per-file figures) and how many rows were left
    out for an empty label."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    prompts: list[str] = []
    weak_ok: list[float] = []
    strong_ok: list[float] = []
    groups: list[str] = []
    unlabeled = 0
    for file in _csv_files(labels):
        group = _group(file, Path(labels))
        line = 1
        try:
            reader = csv_rows(file)
            columns = reader.fieldnames or []
            missing = [c for c in ("prompt", weak, strong) if c not in columns]
            if missing:
                shown = columns if len(", ".join(columns)) <= 300 else [*columns[:5], "..."]
                raise ValueError(
                    f"{file}: missing column(s) {missing}; it has {shown}. "
                    "Pass --weak/--strong as the names of the models' correctness columns."
                )
            line = reader.line_num + 1  # where the next row starts: a quoted prompt may take several lines
            for row in reader:
                where, line = f"{file}:{line}", reader.line_num + 1
                if row["prompt"] is None or row[weak] is None or row[strong] is None or None in row:
                    # a row cut short, or one field too many
                    fields = sum(value is not None for key, value in row.items() if key is not None)
                    raise ValueError(f"{where}: a row with {fields + len(row.get(None) or [])} field(s); the header "
                                     f"has {len(columns)} (a row cut short, or a quote never closed?)")
                w = _as_label(row[weak] or "", column=weak, where=where)
                s = _as_label(row[strong] or "", column=strong, where=where)
                if w is None or s is None:
                    unlabeled += 1
                    continue
                prompts.append(row["prompt"] or "")
                weak_ok.append(w)
                strong_ok.append(s)
                groups.append(group)
        except csv.Error as exc:  # a bare carriage return in a field, a NUL...: not a ValueError of its own
            raise ValueError(f"{file}:{line}: {exc}") from None
    return (prompts, np.asarray(weak_ok, dtype=np.float64), np.asarray(strong_ok, dtype=np.float64), groups,
            unlabeled)


def _routed_gain(scores: np.ndarray, gain: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Total gain of sending the ``k`` highest-scored prompts to strong, for each ``k`` in ``counts``.

    Ties at the cut share the calls evenly (the expectation of a random tie-break).
    """
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    g = gain[order]
    cum = np.concatenate(([0.0], np.cumsum(g)))
    # boundaries of runs of equal scores
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    ends = np.concatenate((starts[1:], [len(s)]))
    out = np.empty(len(counts), dtype=np.float64)
    for i, k in enumerate(counts):
        if k <= 0:
            out[i] = 0.0
            continue
        if k >= len(s):
            out[i] = cum[-1]
            continue
        run = int(np.searchsorted(starts, k, side="right") - 1)
        a, b = int(starts[run]), int(ends[run])
        out[i] = cum[a] + (k - a) * (cum[b] - cum[a]) / (b - a)
    return out


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    return [int(round(f * n)) for f in fractions]


def pgr_curve(
    scores: Iterable[float], weak: Iterable[float], strong: Iterable[float], *, fractions: Sequence[float] = FRACTIONS
) -> np.ndarray:
    """PGR at each strong-call fraction when the highest scores go to the strong model."""
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64)
    w = np.asarray(weak if isinstance(weak, np.ndarray) else list(weak), dtype=np.float64)
    g = np.asarray(strong if isinstance(strong, np.ndarray) else list(strong), dtype=np.float64) - w
    total_gap = float(g.sum())
    if len(s) == 0 or total_gap <= 0.0:  # no gap to recover (or the strong model worse): PGR is undefined
        return np.full(len(fractions), math.nan)
    return _routed_gain(s, g, _counts(len(s), fractions)) / total_gap


def accuracy_curve(
    scores: Iterable[float], weak: Iterable[float], strong: Iterable[float], *, fractions: Sequence[float] = FRACTIONS
) -> list[dict[str, float]]:
    """Accuracy at each strong-call fraction when the highest scores go to the strong model.

    Each point is ``{"strong_fraction": f, "accuracy": a}``; ``f`` is the nominal fraction (the
    ``round(f * n)`` highest-scored prompts go strong), ties at the cut share the calls evenly.
    """
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64)
    w = np.asarray(weak if isinstance(weak, np.ndarray) else list(weak), dtype=np.float64)
    g = np.asarray(strong if isinstance(strong, np.ndarray) else list(strong), dtype=np.float64) - w
    n = len(s)
    if n == 0:
        return [{"strong_fraction": float(f), "accuracy": math.nan} for f in fractions]
    gained = _routed_gain(s, g, _counts(n, fractions))
    base = float(w.sum())
    return [{"strong_fraction": float(f), "accuracy": (base + float(v)) / n} for f, v in zip(fractions, gained)]


def apgr(curve: Sequence[float] | np.ndarray, *, fractions: Sequence[float] = FRACTIONS) -> float:
    """Trapezoid area under a PGR curve over ``fractions``."""
    y = np.asarray(curve, dtype=np.float64)
    x = np.asarray(fractions, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def cpt(curve: Sequence[float] | np.ndarray, target: float = 0.5, *, fractions: Sequence[float] = FRACTIONS) -> float:
    """Smallest strong-call fraction whose PGR reaches ``target`` (linear between grid points)."""
    y = np.asarray(curve, dtype=np.float64)
    if np.isnan(y).any():
        return math.nan
    for i, value in enumerate(y):
        if value >= target:
            if i == 0:
                return float(fractions[0])
            lo, hi = float(y[i - 1]), float(value)
            x0, x1 = float(fractions[i - 1]), float(fractions[i])
            return x0 + (x1 - x0) * (target - lo) / (hi - lo)
    return math.nan


def oracle_order(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Oracle scores: prompts the weak model fails and the strong one solves first, the reverse last."""
    return np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64)


def routing_metrics(
    scores: np.ndarray,
    weak: np.ndarray,
    strong: np.ndarray,
    *,
    threshold: float | None = None,
    tokens: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``eval_router`` figures for given scores and correctness arrays.

    With ``tokens`` (each prompt's input tokens), every curve point and ``at_threshold`` also carry
    ``strong_token_share``: the share of the input tokens that the prompts sent strong carry.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak, dtype=np.float64)
    strong = np.asarray(strong, dtype=np.float64)
    n = len(scores)
    if not (len(weak) == len(strong) == n) or (tokens is not None and len(tokens) != n):
        sizes = [n, len(weak), len(strong)] + ([] if tokens is None else [len(tokens)])
        raise ValueError(f"scores, weak, strong (and tokens) differ in length: {sizes}")
    curve = pgr_curve(scores, weak, strong)
    oracle = pgr_curve(oracle_order(weak, strong), weak, strong)
    counts = _counts(n, FRACTIONS)
    random_curve = np.asarray([k / n for k in counts]) if n and not np.isnan(curve).any() else np.full(11, math.nan)
    if threshold is None or n == 0:
        at = {"strong_fraction": math.nan, "accuracy": math.nan}
    else:
        routed = scores >= threshold
        at = {
            "strong_fraction": float(routed.mean()),
            "accuracy": float(np.where(routed, strong, weak).mean()),
        }
    curve_points = accuracy_curve(scores, weak, strong)
    if tokens is not None:
        t = np.asarray(tokens, dtype=np.float64)
        total = float(t.sum())
        shares = _routed_gain(scores, t, _counts(n, FRACTIONS)) / total if total else np.zeros(len(FRACTIONS))
        for point, share in zip(curve_points, shares):
            point["strong_token_share"] = float(share)
        if n and "strong_fraction" in at and not math.isnan(at["strong_fraction"]):
            at["strong_token_share"] = float(t[scores >= threshold].sum()) / total if total else 0.0
    notes = {} if n == 0 or float(strong.sum()) > float(weak.sum()) else {
        "note": "the strong model is not more accurate than the weak one on these prompts: there is no gap for "
                "routing to recover, so APGR, CPT(50%) and the oracle's APGR are undefined (NaN)"}
    return {
        **notes,
        "prompts": int(n),
        "weak_accuracy": float(weak.mean()) if n else math.nan,
        "strong_accuracy": float(strong.mean()) if n else math.nan,
        "apgr": apgr(curve),
        "cpt50": cpt(curve),
        "random_apgr": apgr(random_curve),
        "oracle_apgr": apgr(oracle),
        "at_threshold": at,
        "curve": curve_points,
    }


def _by_group(
    named: dict[str, np.ndarray], weak: np.ndarray, strong: np.ndarray, groups: Sequence[str]
) -> dict[str, Any]:
    """APGR of each scorer on each group (file) with a weak-to-strong gap, their mean and worst, and wins."""
    names = list(named)
    per: dict[str, dict[str, float]] = {}
    keys = np.asarray(groups)
    for group in sorted(set(groups)):
        sel = keys == group
        if float(strong[sel].sum() - weak[sel].sum()) <= 0.0:
            continue  # no gap to recover: APGR is undefined (or inverted) there
        per[group] = {n: apgr(pgr_curve(named[n][sel], weak[sel], strong[sel])) for n in names}
    summary: dict[str, Any] = {"groups": len(per)}
    for n in names:
        values = [p[n] for p in per.values()]
        summary[n] = {
            "mean_apgr": float(np.mean(values)) if values else math.nan,
            "worst_apgr": float(np.min(values)) if values else math.nan,
        }
        if n != "router":
            summary[n]["router_wins"] = sum(p["router"] > p[n] for p in per.values())
    return {"summary": summary, "groups": per}


def _kept_by_group(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, groups: Sequence[str],
                   threshold: float) -> dict[str, Any]:
    """Per group (file) at ``threshold``: what :func:`~llmbudget.routing.calibrate.kept_by_group` gives, and the
    worst share kept (``worst``)."""
    from llmbudget.routing.calibrate import kept_by_group

    out = dict(sorted(kept_by_group(scores, weak, strong, groups, threshold).items()))
    kept = [g["quality_kept"] for g in out.values() if g["quality_kept"] is not None]
    return {"files": out, "worst_quality_kept": min(kept) if kept else None}


def eval_router(
    labels: str | Path,
    *,
    weak: str,
    strong: str,
    router: Router | None = None,
    threshold: float | None = None,
    baselines: bool = False,
) -> dict[str, Any]:
    """Score every labeled prompt as one user message and measure the routing curve.

    ``router`` defaults to the shipped ``Router()``; ``threshold`` to the router's own.
    Figures that need a weak-to-strong gap are NaN when both models are equally accurate.
    With ``baselines``, the same figures for routing by prompt length and by the
    rule-based complexity scorer (:mod:`llmbudget.routing.baselines`) come back
    under ``"baselines"``, and ``"by_file"`` compares the three on each label file
    with a weak-to-strong gap (mean and worst APGR, and on how many files the router wins). With a folder of
    several label files, ``at_threshold["by_file"]`` gives each file's share sent strong and share of its
    all-strong accuracy kept at the threshold, and the worst of them (the default threshold keeps 97% in every
    held-out domain of its training data: see ``calibrate_quality(every_file=True)``).
    """
    if router is None:
        from llmbudget.routing.classifier import Router

        router = Router()
    prompts, weak_ok, strong_ok, groups, unlabeled = _load_labels(labels, weak=weak, strong=strong)
    if not prompts:
        raise ValueError(f"{labels}: no labeled prompts (each row needs a prompt and both {weak!r} and {strong!r})")
    bodies = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
    scores = np.asarray([router.score(body) for body in bodies], dtype=np.float64)
    if threshold is None:
        threshold = getattr(router, "threshold", None)
    from llmbudget.routing.calibrate import input_tokens

    tokens = np.asarray([input_tokens(body) for body in bodies], dtype=np.float64)
    result = routing_metrics(scores, weak_ok, strong_ok, threshold=threshold, tokens=tokens)
    result["unlabeled_rows"] = unlabeled  # rows with an empty label cell: left out
    if threshold is not None and len(set(groups)) > 1:
        result["at_threshold"]["by_file"] = _kept_by_group(scores, weak_ok, strong_ok, groups, threshold)
    if baselines:
        from llmbudget.routing.baselines import BASELINES

        named = {"router": scores}
        result["baselines"] = {}
        for name, scorer in BASELINES.items():
            named[name] = np.asarray([scorer(body) for body in bodies], dtype=np.float64)
            figures = routing_metrics(named[name], weak_ok, strong_ok, tokens=tokens)
            result["baselines"][name] = {k: figures[k] for k in ("apgr", "cpt50", "curve")}
        result["by_file"] = _by_group(named, weak_ok, strong_ok, groups)
    return result
