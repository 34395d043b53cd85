"""Calibrate the router on the user's own prompts.

Two ways to pick the threshold (requests scoring at or above it go to the strong tier):

- ``calibrate_quality``: on *labeled* prompts (which of the weak and the strong
  model answered each one correctly), the threshold that keeps a chosen share
  of the all-strong accuracy, with a bootstrap interval; with ``every_file``, on
  every label file of a folder (each a domain or task), not only pooled. This is
  how the shipped default is chosen too (on held-out scores of the training
  data, in every held-out domain).
- ``calibrate``: on unlabeled prompts, the threshold that sends a chosen share
  of them to the strong tier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..textfiles import csv_rows, utf8_lines

__all__ = ["calibrate", "calibrate_quality", "input_tokens", "keep_quality_everywhere", "keep_quality_threshold",
           "read_labeled", "read_sample", "write_threshold"]


def read_sample(path: str | Path) -> Iterator[dict[str, Any]]:
    """Request bodies from a sample: JSONL of request bodies, ``{"request": body}`` or ``{"prompt": str}``
    lines, or a CSV with a ``prompt`` column."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        reader = csv_rows(path)
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ValueError(f"{path}: a CSV sample needs a 'prompt' column")
        for row in reader:
            yield {"messages": [{"role": "user", "content": row["prompt"]}]}
        return
    for number, item in _json_lines(path):
        if isinstance(item, dict) and isinstance(item.get("request"), dict):
            yield _as_routed(item["request"], item.get("endpoint"))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            yield {"messages": [{"role": "user", "content": item["prompt"]}]}
        elif isinstance(item, dict) and (isinstance(item.get("messages"), list)
                                         or isinstance(item.get("input"), (str, list))):
            if "system" in item and not isinstance(item["system"], (str, list)):
                raise ValueError(f"{path}:{number}: system is {item['system']!r}; expected text or content blocks")
            yield item
        elif isinstance(item, dict) and ("messages" in item or "input" in item):
            key = "messages" if "messages" in item else "input"
            raise ValueError(f"{path}:{number}: {key} is {item[key]!r:.60}; expected a list of messages"
                             + (" or text" if key == "input" else ""))
        else:
            raise ValueError(f"{path}:{number}: expected a request body, {{'request': ...}} or {{'prompt': ...}}")


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSONL file; a ValueError naming the line otherwise."""
    for number, line in enumerate(utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        except RecursionError:
            raise ValueError(f"{path}:{number}: nested too deep to read; expected one JSON object") from None


def _as_routed(body: dict[str, Any], endpoint: Any) -> dict[str, Any]:
    """A traffic line's request as live routing reads it: an Anthropic Messages body as chat (its ``system``
    first), so that it is scored and counted as in production."""
    if endpoint == "messages":
        from .tiers import chat_view

        return chat_view(body)
    return body


def _score(router: Any, body: dict[str, Any]) -> float:
    """The router's score of ``body``, or +inf for a request live routing never routes (tools, a response
    schema: with the default ``route_tools`` / ``route_schemas``, it always goes strong)."""
    from .tiers import never_routed

    return float("inf") if never_routed(body) is not None else float(router.score(body))


def input_tokens(body: dict[str, Any]) -> int:
    """Estimated input tokens of a request body (the share of them sent strong is the share of input spend)."""
    from ..providers import adapter_for_endpoint

    adapter = adapter_for_endpoint("chat.completions" if "messages" in body else "responses")
    model = body.get("model")
    return adapter.estimate_input_tokens(body, model if isinstance(model, str) else None)


def calibrate(sample: str | Path, *, strong_fraction: float, router: Any = None) -> dict[str, Any]:
    """The threshold that sends ``strong_fraction`` of the sample to the strong tier.

    Also returns ``strong_token_share``: the share of the sample's estimated input tokens those requests
    carry.  The router favours long prompts, so it is larger than ``strong_fraction``; it, not the share
    of calls, is the share of input spend that stays on the strong tier.
    """
    if not 0.0 <= strong_fraction <= 1.0:
        raise ValueError(f"--strong-fraction must be within [0, 1], got {strong_fraction}")
    if router is None:
        from .classifier import Router

        router = Router()
    scored = sorted((_score(router, body), input_tokens(body)) for body in read_sample(sample))
    if not scored:
        raise ValueError(f"{sample}: no prompts in the sample")
    scores = [score for score, _ in scored]
    routable = [score for score in scores if score != float("inf")]  # the others go strong at any threshold
    strong = max(round(strong_fraction * len(scores)) - (len(scores) - len(routable)), 0)
    if not routable:
        threshold = 1.0
    elif strong <= 0:
        threshold = min(1.0, routable[-1] + 1e-9)
    elif strong >= len(routable):
        threshold = routable[0]
    else:
        # Halfway between the last weak score and the first strong one.
        threshold = (routable[len(routable) - strong - 1] + routable[len(routable) - strong]) / 2
    sent = sum(score >= threshold for score in scores)
    total = sum(tokens for _, tokens in scored)
    strong_tokens = sum(tokens for score, tokens in scored if score >= threshold)
    return {
        "prompts": len(scores),
        "threshold": threshold,
        "strong_fraction": sent / len(scores),
        "strong_token_share": strong_tokens / total if total else 0.0,
    }


def read_labeled(path: str | Path, *, weak: str, strong: str) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Labeled requests: bodies and the weak and strong model's correctness (1.0 right, 0.0 wrong).

    ``path`` is a CSV file or a folder of CSVs with a ``prompt`` column and one
    correctness column per model (``weak``/``strong`` name them), or replay traffic
    (``.jsonl`` lines with ``request`` and ``correct: {MODEL: bool}``; ``weak`` and
    ``strong`` name the models; lines without both labels are skipped).
    """
    file = Path(path)
    if file.suffix.lower() != ".jsonl":
        from .evaluate import load_labels

        prompts, weak_ok, strong_ok = load_labels(file, weak=weak, strong=strong)
        return _bodies(prompts), weak_ok, strong_ok
    bodies: list[dict[str, Any]] = []
    labels: list[tuple[float, float]] = []
    for number, item in _json_lines(file):
        correct = item.get("correct") if isinstance(item, dict) else None
        request = item.get("request") if isinstance(item, dict) else None
        if not isinstance(request, dict):
            raise ValueError(f"{file}:{number}: expected a traffic line with a 'request' object")
        if isinstance(correct, dict) and weak in correct and strong in correct:
            if not all(isinstance(correct[m], bool) for m in (weak, strong)):
                raise ValueError(f"{file}:{number}: 'correct' must map each model to true or false, as replay "
                                 f"reads it; it has {weak!r}: {correct[weak]!r}, {strong!r}: {correct[strong]!r}")
            bodies.append(_as_routed(request, item.get("endpoint")))
            labels.append((float(correct[weak]), float(correct[strong])))
    if not bodies:
        raise ValueError(f"{file}: no line has 'correct' labels for both {weak!r} and {strong!r}")
    pairs = np.asarray(labels, dtype=np.float64)
    return bodies, pairs[:, 0], pairs[:, 1]


def _bodies(prompts: list[str]) -> list[dict[str, Any]]:
    """A label file's prompts as the requests the router scores (one user message each)."""
    return [{"messages": [{"role": "user", "content": p}]} for p in prompts]


def keep_quality_threshold(
    scores: np.ndarray,
    weak: np.ndarray,
    strong: np.ndarray,
    *,
    keep: float,
    confidence: float = 0.9,
    bootstraps: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """The highest threshold whose routing keeps ``keep`` of the all-strong accuracy, and what it saves.

    Quality kept at a threshold is ``accuracy(routed) / accuracy(all strong)``.
    Prompts are resampled ``bootstraps`` times; the chosen threshold is the highest
    one from which every lower threshold keeps ``keep`` at the one-sided
    ``confidence`` lower bound of the resamples (0 < confidence < 1; the
    point estimate alone with ``confidence=0.5``), so that a fresh sample of the
    same traffic keeps it too. Returns ``threshold``, ``strong_fraction``,
    ``quality_kept`` with its two-sided ``confidence`` interval
    (``quality_kept_interval``), the weak, strong and routed accuracies.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"--keep-quality must be a share within (0, 1] (0.97 or 97%), got {keep:g}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    g = np.asarray(strong, dtype=np.float64) - w
    n = len(s)
    if n == 0:
        raise ValueError("no labeled prompts to calibrate on")
    if float(np.sum(w + g)) <= 0.0:
        raise ValueError("the strong model answers none of the labeled prompts correctly; nothing to keep")
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    forced = int(np.sum(np.isposinf(ss)))  # scored +inf: never routed, strong at every threshold
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstraps).astype(np.float64)[:, order]
    counts = np.vstack([np.ones(n), counts])  # row 0: the sample itself
    base = counts @ w[order]
    top = counts @ (w + g)[order]
    # kept[b, k]: quality kept when the k highest-scored prompts go strong (k = 0..n)
    gained = np.concatenate([np.zeros((len(counts), 1)), np.cumsum(counts * g[order], axis=1)], axis=1)
    kept = (base[:, None] + gained) / np.maximum(top[:, None], 1e-12)
    # cuts only between distinct scores (a threshold cannot split tied prompts)
    cuts = np.concatenate([[0], np.flatnonzero(ss[1:] != ss[:-1]) + 1, [n]])
    cuts = cuts[cuts >= forced]  # no threshold sends a never-routed request small
    lower = np.quantile(kept[1:, cuts], 1.0 - confidence, axis=0) if bootstraps else kept[0, cuts]
    ok = (lower >= keep) & (kept[0, cuts] >= keep)
    # the first cut from which every larger one is ok (noise cannot pick a lucky dip)
    bad = np.flatnonzero(~ok)
    first = int(bad[-1]) + 1 if len(bad) else 0
    k = int(cuts[min(first, len(cuts) - 1)])
    if k >= n:
        threshold = float(ss[-1]) if forced < n else 1.0
    elif k <= 0 or np.isposinf(ss[k - 1]):  # everything routable strong... or nothing: just above the highest
        threshold = float(np.nextafter(ss[k], np.inf))
    else:
        threshold = float((ss[k - 1] + ss[k]) / 2.0)
    tail = (1.0 - confidence) / 2.0
    at = kept[1:, k] if bootstraps else kept[:1, k]
    strong_accuracy = float(np.mean(w + g))
    return {
        "prompts": n,
        "threshold": threshold,
        "strong_fraction": k / n,
        "weak_accuracy": float(np.mean(w)),
        "strong_accuracy": strong_accuracy,
        "accuracy": float(kept[0, k]) * strong_accuracy,
        "quality_kept": float(kept[0, k]),
        "quality_kept_interval": [round(float(np.quantile(at, tail)), 4), round(float(np.quantile(at, 1.0 - tail)), 4)],
        "confidence": confidence,
    }


def keep_quality_everywhere(
    scores: np.ndarray,
    weak: np.ndarray,
    strong: np.ndarray,
    groups: Sequence[Any],
    *,
    keep: float,
    confidence: float = 0.9,
    bootstraps: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`keep_quality_threshold` in every group at once: the lowest of the groups' own thresholds, so that
    each group (a domain, a task) keeps ``keep`` of its all-strong accuracy, not only all of them pooled.

    A pooled threshold can keep 97% on average while one domain the router reads badly keeps much less (held
    out, the shipped router's pooled choice kept 88.6% on GSM8K's maths problems). Returns what
    :func:`keep_quality_threshold` returns, for all prompts at the chosen threshold, plus ``by_group`` (each
    group's prompts, own threshold, and quality kept and strong share at the chosen one) and
    ``binding_group`` (the group whose threshold was chosen). A group where the strong model answers none
    right has no quality to keep and no threshold of its own (its ``threshold`` and ``quality_kept`` are None:
    the guarantee does not cover it)."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    g = np.asarray(strong, dtype=np.float64)
    groups = [str(name) for name in groups]  # (numpy's integers are no JSON keys)
    if len(s) == 0:
        raise ValueError("no labeled prompts to calibrate on")
    if len(groups) != len(s):
        raise ValueError(f"{len(groups)} groups for {len(s)} prompts")
    if np.isnan(s).any():  # min() over NaN thresholds depends on the order of the groups
        raise ValueError("a score is NaN: every prompt needs a score to calibrate on")
    names = np.asarray(groups, dtype=object)
    own: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(groups):
        mask = names == name
        if float(np.sum(g[mask])) > 0.0:
            own[name] = keep_quality_threshold(s[mask], w[mask], g[mask], keep=keep, confidence=confidence,
                                               bootstraps=bootstraps, seed=seed)
    if not own:
        raise ValueError("the strong model answers none of the labeled prompts correctly; nothing to keep")
    binding = min(own, key=lambda name: own[name]["threshold"])
    threshold = own[binding]["threshold"]
    result = _kept_at(s, w, g, threshold, confidence=confidence, bootstraps=bootstraps, seed=seed)
    by_group = {name: {"prompts": row["prompts"], "threshold": own[name]["threshold"] if name in own else None, **row}
                for name, row in kept_by_group(s, w, g, groups, threshold).items()}
    return {**result, "binding_group": binding, "by_group": by_group}


def kept_by_group(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, groups: Sequence[str],
                  threshold: float) -> dict[str, dict[str, Any]]:
    """Per group (in the order first met) at ``threshold``: its prompts, the share sent strong and the share of its
    all-strong accuracy kept (None where the strong model answers none right)."""
    names = np.asarray([str(name) for name in groups], dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names.tolist()):
        mask = names == name
        routed = scores[mask] >= threshold
        top = float(np.sum(strong[mask]))
        out[name] = {"prompts": int(mask.sum()), "strong_fraction": float(np.mean(routed)),
                     "quality_kept": float(np.sum(np.where(routed, strong[mask], weak[mask]))) / top if top else None}
    return out


def _kept_at(s: np.ndarray, w: np.ndarray, g: np.ndarray, threshold: float, *, confidence: float,
             bootstraps: int, seed: int) -> dict[str, Any]:
    """:func:`keep_quality_threshold`'s figures at a given threshold (score >= threshold goes strong)."""
    n = len(s)
    routed = np.where(s >= threshold, g, w)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstraps).astype(np.float64)
    at = (counts @ routed) / np.maximum(counts @ g, 1e-12) if bootstraps else np.asarray([routed.sum() / g.sum()])
    tail = (1.0 - confidence) / 2.0
    strong_accuracy = float(np.mean(g))
    return {
        "prompts": n,
        "threshold": threshold,
        "strong_fraction": float(np.mean(s >= threshold)),
        "weak_accuracy": float(np.mean(w)),
        "strong_accuracy": strong_accuracy,
        "accuracy": float(np.mean(routed)),
        "quality_kept": float(routed.sum() / g.sum()),
        "quality_kept_interval": [round(float(np.quantile(at, tail)), 4), round(float(np.quantile(at, 1.0 - tail)), 4)],
        "confidence": confidence,
    }


#: The fewest labeled prompts from which ``calibrate_quality`` does not warn that its bound means little.
MIN_LABELED = 30


def calibrate_quality(
    labels: str | Path,
    *,
    weak: str,
    strong: str,
    keep: float,
    router: Any = None,
    confidence: float = 0.9,
    bootstraps: int = 400,
    every_file: bool = False,
) -> dict[str, Any]:
    """The threshold that keeps ``keep`` of the labeled all-strong accuracy on ``labels`` (see
    :func:`read_labeled` and :func:`keep_quality_threshold`), and what it saves: the share of calls and of
    estimated input tokens that go to the small tier instead (``small_fraction``, ``small_token_share``).

    ``every_file``: ``labels`` is a folder of label CSVs, one per domain or task, and the threshold keeps
    ``keep`` in each of them (:func:`keep_quality_everywhere`: the lowest of their thresholds), as the shipped
    default does on its held-out domains."""
    if router is None:
        from .classifier import Router

        router = Router()
    groups: list[str] | None = None
    if every_file:
        from .evaluate import _load_labels

        if not Path(labels).is_dir():
            raise ValueError(f"{labels}: every_file needs a folder of label CSVs, one per domain or task")
        prompts, weak_ok, strong_ok, groups, _ = _load_labels(labels, weak=weak, strong=strong)
        bodies = _bodies(prompts)
    else:
        bodies, weak_ok, strong_ok = read_labeled(labels, weak=weak, strong=strong)
    scores = np.asarray([_score(router, body) for body in bodies], dtype=np.float64)
    if groups is not None:
        result = keep_quality_everywhere(scores, weak_ok, strong_ok, groups, keep=keep, confidence=confidence,
                                         bootstraps=bootstraps)
    else:
        result = keep_quality_threshold(scores, weak_ok, strong_ok, keep=keep, confidence=confidence,
                                        bootstraps=bootstraps)
    tokens = np.asarray([input_tokens(body) for body in bodies], dtype=np.float64)
    small = scores < result["threshold"]
    result["keep_quality"] = keep
    if len(bodies) < MIN_LABELED:  # (a bootstrap of one row gave the interval [1.0, 1.0], said as sure)
        result["note"] = (f"{len(bodies)} labeled prompt(s): too few for the {confidence:.0%} bound to mean "
                          f"anything (at least {MIN_LABELED}); label more before relying on this threshold")
    result["small_fraction"] = float(small.mean())
    result["small_token_share"] = float(tokens[small].sum() / tokens.sum()) if tokens.sum() else 0.0
    return result


def write_threshold(policy: str | Path, threshold: float) -> None:
    """Set ``threshold`` in the routing table of a policy file, keeping everything else as it was.

    The file is written only when the result is valid TOML with routing tiers: a policy without
    ``[routing.tiers]`` would not load with a threshold alone (:class:`~llmbudget.config.ConfigError`)."""
    import tomllib

    from ..config import ConfigError

    path = Path(policy)
    pyproject = path.name == "pyproject.toml"
    table = "[tool.llmbudget.routing]" if pyproject else "[routing]"
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    line = f"threshold = {threshold:.6f}"
    pattern = re.compile(rf"^[ \t]*{re.escape(table)}[ \t]*(?:#.*)?$", re.M)  # a comment may follow the header
    match = pattern.search(text)
    if match is None:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{table}\n{line}\n"
    else:
        start = match.end()
        following = re.search(r"^[ \t]*\[", text[start:], re.M)
        end = start + following.start() if following else len(text)
        body = text[start:end]
        existing = re.compile(r"^[ \t]*threshold[ \t]*=.*$", re.M)
        body = existing.sub(line, body, count=1) if existing.search(body) else "\n" + line + body
        text = text[:start] + body + text[end:]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: the threshold could not be written in ({exc}); set threshold = {threshold:.6f} "
                          f"under {table} by hand") from exc
    routing = (data.get("tool", {}).get("llmbudget", {}) if pyproject else data).get("routing", {})
    if not isinstance(routing.get("tiers"), dict):
        raise ConfigError(f"{path}: {table} has no tiers, so a threshold alone would not load; add "
                          f"{table[:-1]}.tiers] (see README, \"Routing and output caps\") and run this again")
    path.write_text(text, encoding="utf-8")
