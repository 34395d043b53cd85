"""What Anthropic's prompt cache saves on a multi-turn workload: no breakpoints, llmbudget's automatic
ones, and an oracle's.

    python ci/bench/prefix_cache.py [--tenants 4] [--minutes 120] [--seed 7] [--model claude-sonnet-4-5]

The workload: several tenants, each with its own long system prompt and tools, whose
users hold conversations of one to five turns; tenants differ in traffic (a new
conversation every 30 s, 2, 6 and 15 minutes on average). Every request goes through
llmbudget's real breakpoint logic (``llmbudget.breakpoints.Breakpoints``) on a simulated
clock; the provider is simulated as Anthropic documents its cache: a prefix is cached
only up to a ``cache_control`` breakpoint, for five minutes after it was last written
or read; a request reads the longest cached prefix ending at a block boundary at or
before its last breakpoint (up to 20 blocks back) and writes the rest up to that
breakpoint. Tokens are priced at the model's published rates (genai-prices: input,
5-minute cache write, cache read, output).

- ``none``: no breakpoints (all input at the input price).
- ``auto``: ``[prefix_cache] breakpoints = "auto"``.
- ``oracle``: a simple rule that knows the future: a breakpoint at the end of the
  system prompt when another request of the tenant follows within five minutes, and
  one at the end of the request when the same conversation's next turn does. Not
  the optimum: auto, which also reads repeated histories, can beat it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llmbudget.breakpoints import Breakpoints, has_cache_control  # noqa: E402
from llmbudget.cache.keys import without_cache_control  # noqa: E402
from llmbudget.calls import Usage  # noqa: E402
from llmbudget.pricing import Pricing  # noqa: E402

TTL = 300.0
LOOKBACK = 20
CHARS_PER_TOKEN = 4  # the generated text below is about four characters per token
WORDS = ("policy", "customer", "order", "refund", "shipping", "warranty", "invoice", "account", "support", "product",
         "delivery", "return", "payment", "discount", "subscription", "address", "tracking", "exchange")


def _text(rng: random.Random, tokens: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < tokens * CHARS_PER_TOKEN:
        words.append(rng.choice(WORDS))
    return " ".join(words)


@dataclass
class Request:
    time: float
    tenant: str
    conversation: int
    body: dict[str, Any]
    output_tokens: int
    next_turn: float | None = None  # when this conversation's next turn comes
    next_tenant: float | None = None  # when the tenant's next request comes


def workload(*, tenants: int, minutes: float, seed: int) -> list[Request]:
    rng = random.Random(seed)
    gaps = [30.0, 120.0, 360.0, 900.0]
    requests: list[Request] = []
    conversation = 0
    for t in range(tenants):
        tenant = f"tenant-{t}"
        system = f"You are the assistant of shop {t}. " + _text(rng, 2500 + 500 * t)
        tools = [{"name": f"lookup_{name}", "description": _text(rng, 120),
                  "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}}}
                 for name in ("order", "customer", "product", "invoice")]
        now = rng.expovariate(1 / gaps[t % len(gaps)])
        while now < minutes * 60:
            conversation += 1
            messages: list[dict[str, Any]] = []
            at = now
            turns = []
            for _ in range(rng.randint(1, 5)):
                messages = [*messages, {"role": "user", "content": _text(rng, 40)}]
                body = {"model": "", "max_tokens": 400, "system": system, "tools": tools, "messages": messages}
                turns.append(Request(at, tenant, conversation, body, rng.randint(80, 300)))
                messages = [*messages, {"role": "assistant", "content": _text(rng, turns[-1].output_tokens)}]
                at += rng.uniform(20, 120)
            for before, after in itertools.pairwise(turns):
                before.next_turn = after.time
            requests += turns
            now += rng.expovariate(1 / gaps[t % len(gaps)])
    requests.sort(key=lambda r: r.time)
    last: dict[str, Request] = {}
    for request in reversed(requests):
        following = last.get(request.tenant)
        request.next_tenant = following.time if following is not None else None
        last[request.tenant] = request
    return requests


def blocks(body: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """(prefix hash up to and including the block, tokens of the block, breakpoint on it) for each block."""
    out = []
    digest = hashlib.blake2b(digest_size=12)

    def add(value: Any) -> None:
        text = json.dumps(without_cache_control(value), sort_keys=True, default=str)  # a breakpoint is not content
        digest.update(text.encode())
        out.append((digest.copy().hexdigest(), len(text) // CHARS_PER_TOKEN, has_cache_control(value)))

    for tool in body.get("tools") or []:
        add(tool)
    if body.get("system"):
        add(body["system"])
    for message in body["messages"]:
        add(message)
    return out


@dataclass
class Provider:
    """Anthropic's prompt cache, as documented, for one organisation."""

    expiry: dict[str, float] = field(default_factory=dict)

    def send(self, body: dict[str, Any], now: float) -> Usage:
        parts = blocks(body)
        marks = [i for i, (_, _, marked) in enumerate(parts) if marked]
        total = sum(tokens for _, tokens, _ in parts)
        if not marks:
            return Usage(input_tokens=total)
        last = marks[-1]
        read_end = -1
        for i in range(last, max(-1, last - LOOKBACK), -1):
            if self.expiry.get(parts[i][0], -1.0) > now:
                read_end = i
                break
        read = sum(tokens for _, tokens, _ in parts[:read_end + 1])
        if read_end >= 0:
            self.expiry[parts[read_end][0]] = now + TTL
        written = sum(tokens for _, tokens, _ in parts[read_end + 1:last + 1])
        for i in marks:
            if i > read_end:
                self.expiry[parts[i][0]] = now + TTL
        return Usage(input_tokens=total, cached_input_tokens=read, cache_write_tokens=written)


def _mark_system(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "system": [{"type": "text", "text": body["system"], "cache_control": {"type": "ephemeral"}}]}


def _mark_last(body: dict[str, Any]) -> dict[str, Any]:
    messages = body["messages"]
    last = {**messages[-1], "content": [{"type": "text", "text": messages[-1]["content"],
                                         "cache_control": {"type": "ephemeral"}}]}
    return {**body, "messages": [*messages[:-1], last]}


def oracle(request: Request) -> dict[str, Any]:
    body = request.body
    if request.next_tenant is not None and request.next_tenant - request.time < TTL:
        body = _mark_system(body)
    if request.next_turn is not None and request.next_turn - request.time < TTL:
        body = _mark_last(body)
    return body


def run(requests: list[Request], model: str) -> dict[str, dict[str, Any]]:
    pricing = Pricing()
    clock = [0.0]
    automatic = Breakpoints(pricing, clock=lambda: clock[0])
    results = {}
    for name in ("none", "auto", "oracle"):
        provider = Provider()
        cost = Decimal(0)
        written = read = total = marked = 0
        for request in requests:
            clock[0] = request.time
            body = {**request.body, "model": model}
            if name == "auto":
                body = automatic.apply(body, tenant=request.tenant, model=model) or body
            elif name == "oracle":
                body = oracle(request)
            marked += int(has_cache_control(body))
            usage = provider.send(body, request.time).replace(output_tokens=request.output_tokens)
            cost += pricing.cost(usage, model=model, base_url="https://api.anthropic.com/v1").usd
            written += usage.cache_write_tokens
            read += usage.cached_input_tokens
            total += usage.input_tokens
        results[name] = {"cost": cost, "written": written, "read": read, "input": total, "marked": marked}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="claude-sonnet-4-5")
    args = parser.parse_args(argv)
    requests = workload(tenants=args.tenants, minutes=args.minutes, seed=args.seed)
    results = run(requests, args.model)
    base = results["none"]["cost"]
    print(f"{len(requests)} requests from {args.tenants} tenants over {args.minutes:g} minutes, "
          f"{len({r.conversation for r in requests})} conversations, {args.model} at genai-prices' rates")
    print(f"{'breakpoints':<12}{'marked':>8}{'input tok':>12}{'written':>11}{'read':>12}{'cost':>12}{'saved':>8}")
    for name, row in results.items():
        saved = (base - row["cost"]) / base * 100 if base else Decimal(0)
        print(f"{name:<12}{row['marked']:>8}{row['input']:>12,}{row['written']:>11,}{row['read']:>12,}"
              f"{'$' + format(row['cost'], '.4f'):>12}{float(saved):>7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
