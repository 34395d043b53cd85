"""Calibrate the router on the user's own prompts: the threshold that sends a chosen share to the strong tier."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["calibrate", "input_tokens", "read_sample", "write_threshold"]


def read_sample(path: str | Path) -> Iterator[dict[str, Any]]:
    """Request bodies from a sample: JSONL of request bodies, ``{"request": body}`` or ``{"prompt": str}``
    lines, or a CSV with a ``prompt`` column."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "prompt" not in reader.fieldnames:
                raise ValueError(f"{path}: a CSV sample needs a 'prompt' column")
            for row in reader:
                yield {"messages": [{"role": "user", "content": row["prompt"]}]}
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if isinstance(item, dict) and isinstance(item.get("request"), dict):
                yield item["request"]
            elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
                yield {"messages": [{"role": "user", "content": item["prompt"]}]}
            elif isinstance(item, dict) and ("messages" in item or "input" in item):
                yield item
            else:
                raise ValueError(f"{path}:{number}: expected a request body, {{'request': ...}} or {{'prompt': ...}}")


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
    scored = sorted((float(router.score(body)), input_tokens(body)) for body in read_sample(sample))
    if not scored:
        raise ValueError(f"{sample}: no prompts in the sample")
    scores = [score for score, _ in scored]
    strong = round(strong_fraction * len(scores))
    if strong <= 0:
        threshold = min(1.0, scores[-1] + 1e-9)
    elif strong >= len(scores):
        threshold = scores[0]
    else:
        # Halfway between the last weak score and the first strong one.
        threshold = (scores[len(scores) - strong - 1] + scores[len(scores) - strong]) / 2
    sent = sum(score >= threshold for score in scores)
    total = sum(tokens for _, tokens in scored)
    strong_tokens = sum(tokens for score, tokens in scored if score >= threshold)
    return {
        "prompts": len(scores),
        "threshold": threshold,
        "strong_fraction": sent / len(scores),
        "strong_token_share": strong_tokens / total if total else 0.0,
    }


def write_threshold(policy: str | Path, threshold: float) -> None:
    """Set ``threshold`` in the routing table of a policy file, keeping everything else as it was."""
    path = Path(policy)
    table = "[tool.llmbudget.routing]" if path.name == "pyproject.toml" else "[routing]"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    line = f"threshold = {threshold:.6f}"
    pattern = re.compile(rf"^{re.escape(table)}[ \t]*$", re.M)
    match = pattern.search(text)
    if match is None:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{table}\n{line}\n"
    else:
        start = match.end()
        following = re.search(r"^\[", text[start:], re.M)
        end = start + following.start() if following else len(text)
        body = text[start:end]
        existing = re.compile(r"^threshold[ \t]*=.*$", re.M)
        body = existing.sub(line, body, count=1) if existing.search(body) else "\n" + line + body
        text = text[:start] + body + text[end:]
    path.write_text(text, encoding="utf-8")
