"""``llmbudget replay``: run recorded traffic through the real pipeline, offline, and measure a policy.

Each line of a traffic file is one chat request an app sent, with the answers
recorded from one or more models::

    {"request": {...OpenAI chat request body...}, "endpoint": "chat.completions",
     "tenant": "acme", "group": "q-17",
     "responses": {"gpt-4o": {...chat.completion...}, "gpt-4.1-nano": {...}},
     "correct": {"gpt-4o": true, "gpt-4.1-nano": false}}

The replay sends every line, in order, with the real openai SDK through
:func:`llmbudget.http_client` inside :func:`llmbudget.scope` (tenant, the
policy's budgets). Below llmbudget, instead of the network, a transport
answers with the recorded response of whichever model the request names by
then (after routing); a model without a recorded response gets the closest
recorded one by price and is counted. The cache starts empty in a temporary
folder; the policy's ledger and budget store files are never touched.

The baseline is what each request would have cost as the app wrote it: the
usage of the requested model's recorded answer at that model's price.

A line with ``"endpoint": "messages"`` is an Anthropic Messages request (its
``responses`` are recorded Messages bodies); it is sent with the real anthropic
SDK (``pip install anthropic``) the same way.
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .calls import MAX_TOKENS, SpendRecord, Usage
from .caps import cap_field
from .config import ConfigError, Policy, load_config
from .pipeline import REPLAYED_STREAM, SIMULATED, Engine, set_engine
from .providers._base import BadUsage, as_int
from .providers.chat import chat_usage
from .providers.messages import messages_usage
from .textfiles import utf8_lines

__all__ = [
    "BASE_URL", "DECISIONS", "SAVINGS_MECHANISMS", "LineResult", "ReplayResult", "TrafficError", "TrafficLine",
    "load_traffic",
    "prompt_excerpt", "replay",
]

#: The base URL the replayed client talks to (nothing leaves the process).
BASE_URL = "https://api.openai.com/v1"
#: The same for Messages lines (the anthropic SDK adds ``/v1``).
ANTHROPIC_URL = "https://api.anthropic.com"
#: Per endpoint: the path it is served at, the field every recorded body has, and the base URL it is priced at.
_ENDPOINTS = {"chat.completions": ("/chat/completions", "choices", BASE_URL),
              "messages": ("/messages", "content", f"{ANTHROPIC_URL}/v1")}
_LINE_KEYS = frozenset({"request", "endpoint", "tenant", "group", "responses", "correct", "meta"})
_NOT_REPLAYED = frozenset({"stream", "stream_options"})
Progress = Callable[[int, int], None]


class TrafficError(ValueError):
    """A traffic file that cannot be replayed; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class TrafficLine:
    """One recorded request: what was asked, by whom, and the answers of each model."""

    number: int
    request: dict[str, Any]
    responses: dict[str, dict[str, Any]]
    endpoint: str = "chat.completions"
    tenant: str | None = None
    group: str | None = None
    correct: dict[str, bool] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model the app asked for."""
        return str(self.request["model"])


@dataclass(slots=True)
class LineResult:
    """What the policy did with one line, and what it cost."""

    line: TrafficLine
    cost_usd: Decimal = Decimal(0)
    baseline_usd: Decimal = Decimal(0)
    model_sent: str | None = None
    #: The model whose recorded answer was served (for a cache hit: the one that answered the source line).
    answered_by: str | None = None
    cache_tier: str | None = None
    #: For a cache hit, the index (in replay order) of the line whose answer was served.
    source: int | None = None
    wrong: bool = False
    routed: bool = False
    #: Sent to the weak tier, then retried on the strong one (escalation or the cascade); both are paid.
    escalated: bool = False
    capped: bool = False
    refused: bool = False
    missing: bool = False
    correct: bool | None = None
    baseline_correct: bool | None = None
    #: What each paid attempt cost, by the model it was sent to (an escalated line: the weak and the strong one).
    spent_on: dict[str, Decimal] = field(default_factory=dict)

    @property
    def decision(self) -> str:
        """What the policy did: ``"cache"`` (answered from the cache), ``"routed"`` (sent to another model),
        ``"escalated"`` (routed, then retried on the strong tier), ``"refused"`` (by a budget) or ``"kept"``
        (sent as asked)."""
        if self.refused:
            return "refused"
        if self.cache_tier:
            return "cache"
        if self.escalated:
            return "escalated"
        return "routed" if self.routed else "kept"

    @property
    def change(self) -> str | None:
        """``"lost"`` when the policy served a wrong answer where the app's own model was right, ``"gained"`` for
        the reverse, ``None`` when both agree or the line has no labels to judge it by."""
        if self.baseline_correct is None or self.correct is None or self.baseline_correct == self.correct:
            return None
        return "lost" if self.baseline_correct else "gained"


#: The mechanisms ``ReplayResult.saved_by`` attributes savings to, in table order, with their labels in reports.
SAVINGS_LABELS: dict[str, str] = {"cache": "saved by the cache", "routing": "saved by routing",
                                  "caps": "saved by output caps", "refused": "not spent: refused by a budget",
                                  "other": "saved otherwise"}
SAVINGS_MECHANISMS: tuple[str, ...] = tuple(SAVINGS_LABELS)
#: The mechanism a line's decision credits (a "kept" line: "caps" when capped, else "other").
_MECHANISM = {"cache": "cache", "routed": "routing", "escalated": "routing", "refused": "refused"}

#: The decisions ``ReplayResult.by_decision`` counts, in table order.
DECISIONS: tuple[str, ...] = ("kept", "routed", "escalated", "cache", "refused")


@dataclass(slots=True)
class ReplayResult:
    """Every line's outcome, and the figures ``--json`` prints."""

    lines: list[LineResult]
    seconds: float = 0.0
    prices: str = ""
    #: The same traffic under the policy with one feature only (``"cache alone"``, ``"routing alone"``), when the
    #: policy has both: their ``summary()``.
    features: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def baseline_usd(self) -> Decimal:
        return sum((r.baseline_usd for r in self.lines), Decimal(0))

    @property
    def actual_usd(self) -> Decimal:
        return sum((r.cost_usd for r in self.lines), Decimal(0))

    @property
    def refused(self) -> int:
        return sum(r.refused for r in self.lines)

    @property
    def missing(self) -> int:
        return sum(r.missing for r in self.lines)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` document (its keys are stable)."""
        baseline, actual = self.baseline_usd, self.actual_usd
        judged = [r for r in self.lines if r.baseline_correct is not None and r.correct is not None]
        base_acc = sum(bool(r.baseline_correct) for r in judged) / len(judged) if judged else None
        acc = sum(bool(r.correct) for r in judged) / len(judged) if judged else None
        kept = acc / base_acc * 100 if acc is not None and base_acc else None
        return {
            "calls": len(self.lines),
            "baseline_usd": _usd(baseline),
            "actual_usd": _usd(actual),
            "savings_pct": round(float((baseline - actual) / baseline * 100), 2) if baseline else 0.0,
            "saved_by": {name: _usd(value) for name, value in self.saved_by().items()},
            "cache": {
                "exact": sum(r.cache_tier == "exact" for r in self.lines),
                "semantic": sum(r.cache_tier == "semantic" for r in self.lines),
                "wrong": sum(r.wrong for r in self.lines),
            },
            "routed": sum(r.routed for r in self.lines),
            "capped": sum(r.capped for r in self.lines),
            "quality": {
                "baseline_accuracy": _ratio(base_acc),
                "accuracy": _ratio(acc),
                "kept_pct": round(kept, 2) if kept is not None else None,
                "by_decision": self.by_decision(),
            },
        }

    def saved_by(self) -> dict[str, Decimal]:
        """What was saved (cost without llmbudget minus cost with it), per mechanism: each line's saving goes to
        what served it: ``cache`` (a hit), ``routing`` (sent to another model; an escalated line paid both attempts, so
        its saving may be negative), ``caps`` (capped, not routed), ``refused`` (by a budget: not served),
        ``other`` (kept as asked: 0 unless a stand-in answered). The values sum to the total saved."""
        out = {name: Decimal(0) for name in SAVINGS_MECHANISMS}
        for result in self.lines:
            mechanism = _MECHANISM.get(result.decision, "caps" if result.capped else "other")
            out[mechanism] += result.baseline_usd - result.cost_usd
        return out

    def saved_rows(self) -> list[tuple[str, Decimal]]:
        """``saved_by`` for reports: the label and amount of each mechanism that saved (or cost) anything."""
        return [(SAVINGS_LABELS[name], value) for name, value in self.saved_by().items() if value]

    def by_decision(self) -> dict[str, dict[str, int]]:
        """Per decision (``DECISIONS``): requests, labeled ones, and answers lost and gained against the baseline."""
        out = {name: {"requests": 0, "judged": 0, "lost": 0, "gained": 0} for name in DECISIONS}
        for result in self.lines:
            row = out[result.decision]
            row["requests"] += 1
            if result.baseline_correct is not None and result.correct is not None:
                row["judged"] += 1
            change = result.change
            if change is not None:
                row[change] += 1
        return out

    def changes(self) -> list[LineResult]:
        """The lines whose answer the policy made wrong (``lost``) or right (``gained``), in replay order."""
        return [result for result in self.lines if result.change is not None]

    def by(self, key: str) -> dict[str, dict[str, Any]]:
        """Calls and spend per ``"tenant"`` or ``"model"``: baseline by the model asked for, actual by the one sent."""
        rows: dict[str, dict[str, Any]] = {}

        def row(name: str) -> dict[str, Any]:
            return rows.setdefault(name, {"requests": 0, "sent": 0, "cache_hits": 0, "baseline_usd": Decimal(0),
                                          "actual_usd": Decimal(0)})

        for result in self.lines:
            if key == "tenant":
                name = result.line.tenant or "-"
                asked = sent = row(name)
            elif key == "model":
                asked = row(result.line.model)
                sent = row(result.model_sent or result.line.model)
            else:
                raise ValueError(f"by({key!r}): expected 'tenant' or 'model'")
            asked["requests"] += 1
            asked["baseline_usd"] += result.baseline_usd
            if result.cache_tier:
                asked["cache_hits"] += 1
            elif not result.refused:
                sent["sent"] += 1
            if key == "model" and result.spent_on:  # each attempt on the model it was sent to
                for model, cost in result.spent_on.items():
                    paid = row(model)
                    paid["actual_usd"] += cost
                    if model != (result.model_sent or result.line.model) and not result.refused:
                        paid["sent"] += 1  # the weak attempt of an escalated line
            else:
                sent["actual_usd"] += result.cost_usd
        return dict(sorted(rows.items()))

    def cumulative(self) -> list[tuple[Decimal, Decimal]]:
        """(baseline, actual) spend after each line, in replay order."""
        out: list[tuple[Decimal, Decimal]] = []
        base = actual = Decimal(0)
        for result in self.lines:
            base += result.baseline_usd
            actual += result.cost_usd
            out.append((base, actual))
        return out


def prompt_excerpt(request: Mapping[str, Any], limit: int = 60) -> str:
    """The last user turn of a chat request on one line, cut to ``limit`` characters."""
    from .routing.features import request_text

    text = " ".join(request_text(request).query.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _usd(value: Decimal) -> float:
    return float(round(value, 10))


def _ratio(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


# -- reading traffic ------------------------------------------------------------------------------


#: Deeper than any request or answer nests; a deeper line is refused before anything recurses into it.
_MAX_DEPTH = 100


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; expected a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number; expected a finite number")
    return value


def _unsendable(data: Any) -> str | None:
    """Why a loaded line cannot be sent (nested too deep, a string that is not Unicode text), or None."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            stack.extend((key, depth) for key in value)
            value = list(value.values())
        if isinstance(value, list):
            if depth > _MAX_DEPTH:
                return f"nested more than {_MAX_DEPTH} levels deep; expected a traffic line object"
            stack.extend((inner, depth + 1) for inner in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"a string holds {exc.object[exc.start]!r} (a lone surrogate), which is not Unicode "
                        "text; expected UTF-8 text")
    return None


def _is_count(value: Any) -> bool:
    """A token count as the interception reads a provider's usage: a whole number from 0 to ``MAX_TOKENS``
    (``12.0`` too, as providers may write it)."""
    try:
        return value is not None and as_int(value) >= 0
    except BadUsage:
        return False


def _usage_problem(usage: dict[str, Any], endpoint: str = "chat.completions") -> str | None:
    """What is wrong with a recorded ``usage`` (a missing, negative, absurd or non-integer count), or None."""
    expected = f"expected a whole number of tokens from 0 to {MAX_TOKENS:,}"
    required = ("input_tokens", "output_tokens") if endpoint == "messages" else ("prompt_tokens", "completion_tokens")
    for field in required:
        if field not in usage:
            return f"usage has no {field}; {expected} (replay prices answers from it)"
    for field, count in usage.items():
        if (field.endswith("_details") or field == "cache_creation") and isinstance(count, dict):
            for inner, value in count.items():  # cached_tokens, reasoning_tokens...: null means none
                if inner.endswith("_tokens") and value is not None and not _is_count(value):
                    return f"usage.{field}.{inner} is {value!r}; {expected}"
        elif field.endswith("_tokens") and not _is_count(count):
            return f"usage.{field} is {count!r}; {expected}"
    # as the interception reads it (cache reads and writes are input; reasoning beside the output is output): a
    # side at 0 would be charged its estimate when replayed, and the baseline would not be what was recorded
    try:
        read = messages_usage(usage) if endpoint == "messages" else chat_usage(usage)
    except BadUsage as exc:  # a count inside usage.iterations (a compaction's, an advisor's)
        return f"usage.iterations: {exc}; {expected}"
    for side, count in (("input", read.input_tokens), ("output", read.output_tokens)):
        if not count:
            return (f"usage reports no {side} tokens; expected at least 1 (an answered call has input and output, "
                    "and llmbudget charges a count reported as 0 its estimate)")
    return None


def _fail(source: str, number: int, message: str) -> TrafficError:
    return TrafficError(f"{source} line {number}: {message}")


def parse_line(text: str, *, number: int, source: str = "traffic") -> TrafficLine:
    """One traffic line, checked; a :class:`TrafficError` naming the line and what was expected otherwise."""
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:
        raise _fail(source, number, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise _fail(source, number, "nested too deep to read; expected a traffic line object") from None
    if not isinstance(data, dict):
        raise _fail(source, number, f"expected a JSON object, got {type(data).__name__}")
    problem = _unsendable(data)
    if problem:
        raise _fail(source, number, problem)
    unknown = set(data) - _LINE_KEYS
    if unknown:
        raise _fail(source, number, f"unknown keys {sorted(unknown)}; expected some of {sorted(_LINE_KEYS)}")
    endpoint = data.get("endpoint", "chat.completions")
    if not isinstance(endpoint, str) or endpoint not in _ENDPOINTS:
        raise _fail(source, number, f"endpoint {endpoint!r} is not supported; expected one of "
                                    f"{', '.join(repr(e) for e in _ENDPOINTS)}")
    kind = "OpenAI chat" if endpoint == "chat.completions" else "Anthropic Messages"
    field_name = _ENDPOINTS[endpoint][1]
    request = data.get("request")
    if not isinstance(request, dict):
        raise _fail(source, number, f"'request' must be an {kind} request body (a JSON object)")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise _fail(source, number, "'request' has no 'model' (the model the app asked for)")
    if not isinstance(request.get("messages"), list) or not request["messages"]:
        raise _fail(source, number, "'request' has no 'messages' list")
    responses = data.get("responses")
    if not isinstance(responses, dict) or not responses:
        raise _fail(source, number, f"'responses' must be an object {{MODEL: recorded {kind} response body}}")
    for model, body in responses.items():
        if not isinstance(body, dict) or not isinstance(body.get(field_name), list):
            raise _fail(source, number, f"responses[{model!r}] is not an {kind} response body (no '{field_name}')")
        if not isinstance(body.get("usage"), dict):
            raise _fail(source, number, f"responses[{model!r}] has no 'usage'; replay prices answers from it")
    for key in ("tenant", "group"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _fail(source, number, f"'{key}' must be a string, got {data[key]!r}")
    correct = data.get("correct") or {}
    if not isinstance(correct, dict) or not all(isinstance(v, bool) for v in correct.values()):
        raise _fail(source, number, "'correct' must be an object {MODEL: true|false}")
    for model, body in responses.items():
        problem = _usage_problem(body["usage"], endpoint)
        if problem:
            raise _fail(source, number, f"responses[{model!r}].{problem}")
    return TrafficLine(number=number, request=request, responses=responses, endpoint=endpoint,
                       tenant=data.get("tenant") or None, group=data.get("group"), correct=correct)


def load_traffic(path: str | Path) -> list[TrafficLine]:
    """Every line of a traffic JSONL file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such traffic file; expected JSONL lines "
                                '{"request": ..., "responses": {MODEL: ...}}')
    lines = []
    try:
        def fail(number: int, why: str) -> TrafficError:
            return _fail(str(path), number, f"{why}; expected a UTF-8 JSON line")

        for number, text in enumerate(utf8_lines(path, fail=fail), 1):
            if text.strip():
                lines.append(parse_line(text, number=number, source=str(path)))
    except OSError as exc:
        raise TrafficError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not lines:
        raise TrafficError(f"{path}: no traffic lines")
    return lines


# -- the policy -----------------------------------------------------------------------------------


def _policy(path: Path, cache_dir: str, *, without: str | None = None) -> tuple[Policy, Engine]:
    """The policy and its engine, with the replay's own cache folder and no files of the app's.

    ``without``: a policy table (``"cache"`` or ``"routing"``) to leave out.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such policy file; expected an llmbudget.toml or a pyproject.toml")
    config = dict(load_config(path))
    config.pop("ledger", None)  # the replay must not write the app's ledger
    config.pop("budget_store", None)  # ... nor spend the app's budgets
    if without is not None:
        config.pop(without, None)
    cache = config.get("cache")
    if cache is True:
        config["cache"] = {"path": cache_dir}
    elif isinstance(cache, Mapping):
        config["cache"] = {**cache, "path": cache_dir}
    policy = Policy.from_config(config, source=str(path), root=path.parent)
    engine = policy.engine or Engine()
    started = time.time()
    engine.clock = lambda: started  # the whole file is one budget period, however long the replay takes
    return policy, engine


class _StoreTap:
    """Wraps a cache store: which replay line stored each entry, and which entry a hit read."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.line = -1
        self.sources: dict[int, int] = {}
        self.hit_entry: int | None = None

    def put(self, **options: Any) -> int:
        entry_id = int(self._store.put(**options))
        self.sources[entry_id] = self.line
        return entry_id

    def record_hit(self, entry_id: int) -> None:
        self.hit_entry = entry_id
        self._store.record_hit(entry_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# -- the transport below llmbudget ----------------------------------------------------------------


class _Answers:
    """The line being replayed, and how its recorded answers are handed out."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.line: TrafficLine | None = None
        self.answered_by: str | None = None
        self.missing = False
        self.cut = False  # the answer handed out was cut by the request's output cap
        self._prices: dict[str, float] = {}

    def _output_price(self, model: str) -> float:
        if model not in self._prices:
            usd = self.engine.pricing.cost(Usage(output_tokens=1_000_000), model=model, base_url=BASE_URL).usd
            self._prices[model] = max(float(usd), 1e-9)
        return self._prices[model]

    def pick(self, line: TrafficLine, model: str) -> tuple[str, bool]:
        """The recorded model that answers a request for ``model``, and whether it is a stand-in."""
        if model in line.responses:
            return model, False
        target = math.log(self._output_price(model))
        best = min(line.responses, key=lambda m: abs(math.log(self._output_price(m)) - target))
        return best, True

    def answer(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Status and body for one request that reached the network."""
        line = self.line
        if line is None or not path.rstrip("/").endswith(_ENDPOINTS[line.endpoint][0]):
            return 404, json.dumps({"error": {"message": f"replay: nothing recorded for {path}",
                                              "type": "not_found"}}).encode()
        request = json.loads(body)
        model = str(request.get("model") or line.model)
        chosen, missing = self.pick(line, model)
        self.answered_by, self.missing = chosen, self.missing or missing
        response = line.responses[chosen]
        if missing:  # served as the model the request named, so it is priced as that model
            response = {**response, "model": model}
        cut = _cut(line.endpoint, request, response)
        self.cut = cut is not None  # of the answer that served the line last (an escalation's retry is whole)
        if cut is not None:
            response = cut
        return 200, json.dumps(response).encode()


def _cut(endpoint: str, request: Mapping[str, Any], response: dict[str, Any]) -> dict[str, Any] | None:
    """``response`` as a request capped below its recorded output gets it: cut at the cap (its text in
    proportion, its output tokens at the cap, its finish reason "length"), or None when the cap leaves it whole."""
    limit = cap_field(endpoint, dict(request), request.get("model"))
    cap = request.get(limit) if limit is not None else None
    usage = response.get("usage")
    if isinstance(cap, bool) or not isinstance(cap, int) or not isinstance(usage, dict):
        return None
    counted = "output_tokens" if endpoint == "messages" else "completion_tokens"
    recorded = usage.get(counted)
    if not isinstance(recorded, int) or cap >= recorded or cap < 0:
        return None
    share = cap / recorded
    usage = {**usage, counted: cap}
    if endpoint != "messages" and isinstance(usage.get("prompt_tokens"), int):
        usage["total_tokens"] = usage["prompt_tokens"] + cap

    def shortened(text: Any) -> Any:
        return text[: int(len(text) * share)] if isinstance(text, str) else text

    if endpoint == "messages":
        content = [{**b, "text": shortened(b.get("text"))} if isinstance(b, dict) else b
                   for b in response.get("content") or []]
        return {**response, "content": content, "stop_reason": "max_tokens", "usage": usage}
    choices = []
    for choice in response.get("choices") or []:
        if isinstance(choice, dict):
            message = choice.get("message")
            if isinstance(message, dict):
                choice = {**choice, "message": {**message, "content": shortened(message.get("content"))}}
            choice = {**choice, "finish_reason": "length"}
        choices.append(choice)
    return {**response, "choices": choices, "usage": usage}


def _transport(answers: _Answers, sdk: Any) -> Any:
    """An inner transport of the SDK's HTTP library that answers from the recording."""
    module = _http_module(sdk.DefaultHttpxClient)

    class RecordedTransport(module.BaseTransport):  # type: ignore[name-defined,misc]
        """Answers each request with the recorded response of the model it names."""

        def handle_request(self, request: Any) -> Any:
            status, content = answers.answer(request.url.path, request.read())
            return module.Response(status, headers={"content-type": "application/json"}, content=content,
                                   request=request)

    return RecordedTransport()


def _messages_client(answers: _Answers) -> Any:
    """The real anthropic SDK, through llmbudget, answered from the recording."""
    try:
        import anthropic
    except ImportError:
        raise TrafficError("the traffic has Messages lines (\"endpoint\": \"messages\"): replaying them needs the "
                           "anthropic SDK: pip install anthropic") from None
    from .interception import http_client

    return anthropic.Anthropic(api_key="sk-replay", base_url=ANTHROPIC_URL, max_retries=0,
                               http_client=http_client(sdk="anthropic", transport=_transport(answers, anthropic)))


def _http_module(client_class: type) -> Any:
    import importlib

    for base in client_class.__mro__:
        root = base.__module__.split(".")[0]
        if base.__name__ == "Client" and root in ("httpx2", "httpx"):
            return importlib.import_module(root)
    raise ImportError(f"cannot tell which HTTP library {client_class!r} is built on (httpx2 or httpx)")


def _call_options(create: Callable[..., Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """``create(**options)`` arguments for a raw request body (unknown fields go in ``extra_body``)."""
    known = set(inspect.signature(create).parameters) - {"extra_headers", "extra_query", "extra_body", "timeout"}
    options = {k: v for k, v in request.items() if k in known and k not in _NOT_REPLAYED}
    extra = {k: v for k, v in request.items() if k not in known and k not in _NOT_REPLAYED}
    if extra:
        options["extra_body"] = extra
    return options


# -- the replay -----------------------------------------------------------------------------------


def replay(traffic: str | Path | Iterable[TrafficLine], policy: str | Path, *,
           progress: Progress | None = None, features: bool = True) -> ReplayResult:
    """Replay traffic under a policy file; see the module docstring for what is measured.

    With ``features`` (the default) and a policy that has both a cache and routing, the traffic is also
    replayed with each of them alone; ``result.features`` has those runs' summaries.
    """
    lines = load_traffic(traffic) if isinstance(traffic, (str, Path)) else list(traffic)
    started = time.perf_counter()
    result, both = _replay_once(lines, Path(policy), progress=progress)
    if features and both:  # a cache and routing: measure each alone too
        result.features = {
            "cache alone": _replay_once(lines, Path(policy), without="routing")[0].summary(),
            "routing alone": _replay_once(lines, Path(policy), without="cache")[0].summary(),
        }
    result.seconds = time.perf_counter() - started
    return result


def _replay_once(lines: list[TrafficLine], policy: Path, *, without: str | None = None,
                 progress: Progress | None = None) -> tuple[ReplayResult, bool]:
    """One replay of ``lines`` under ``policy`` (less the ``without`` table), and whether the policy used had
    both a cache and routing."""
    import openai

    from .interception import http_client
    from .refusals import budget_refusal
    from .scope import scope

    with tempfile.TemporaryDirectory(prefix="llmbudget-replay-") as cache_dir:
        policy_obj, engine = _policy(policy, cache_dir, without=without)
        both = engine.cache is not None and engine.routing is not None
        tap = None
        if engine.cache is not None:
            tap = _StoreTap(engine.cache.store)
            engine.cache.store = tap
        records: list[SpendRecord] = []
        engine.add_observer(records.append)
        answers = _Answers(engine)
        client = openai.OpenAI(api_key="sk-replay", base_url=BASE_URL, max_retries=0,
                               http_client=http_client(transport=_transport(answers, openai)))
        messages_client = _messages_client(answers) if any(line.endpoint == "messages" for line in lines) else None
        previous = set_engine(engine)
        simulated = SIMULATED.set(True)  # answered from the traffic file: nobody's spend
        results: list[LineResult] = []
        try:
            for index, line in enumerate(lines):
                answers.line, answers.answered_by, answers.missing, answers.cut = line, None, False, False
                if tap is not None:
                    tap.line, tap.hit_entry = index, None
                records.clear()
                result = LineResult(line)
                with scope(tenant=line.tenant, budgets=policy_obj.budgets, on_budget=policy_obj.on_budget,
                           downgrade_to=policy_obj.downgrade_to,
                           cap_min_output_tokens=policy_obj.cap_min_output_tokens):
                    create = (client.chat.completions.create if messages_client is None or line.endpoint != "messages"
                              else messages_client.messages.create)
                    streamed = REPLAYED_STREAM.set(bool(line.request.get("stream")))
                    try:
                        create(**_call_options(create, line.request))
                    except Exception as exc:  # each SDK raises its own APIStatusError
                        if getattr(exc, "status_code", None) is None:
                            raise
                        if budget_refusal(exc) is None:
                            raise TrafficError(f"line {line.number}: the replayed call failed: {exc}") from None
                        result.refused = True
                    finally:
                        REPLAYED_STREAM.reset(streamed)
                _settle(result, records, answers, tap, results, engine)
                results.append(result)
                if progress is not None:
                    progress(index + 1, len(lines))
        finally:
            SIMULATED.reset(simulated)
            set_engine(previous)
            client.close()
            if messages_client is not None:
                messages_client.close()
            if engine.cache is not None:
                store = engine.cache.store
                if hasattr(store, "close"):
                    store.close()
    snapshot = engine.pricing.snapshot
    return ReplayResult(results, prices=f"{snapshot.source}, as of {snapshot.as_of}"), both


def _settle(result: LineResult, records: list[SpendRecord], answers: _Answers, tap: _StoreTap | None,
            done: list[LineResult], engine: Engine) -> None:
    """Fill a line's result from its spend record and the recording."""
    line = result.line
    baseline_model, stand_in = answers.pick(line, line.model)
    raw_usage = line.responses[baseline_model]["usage"]
    usage = messages_usage(raw_usage) if line.endpoint == "messages" else chat_usage(raw_usage)
    base_url = _ENDPOINTS[line.endpoint][2]
    # priced as the interception prices an answer: by the model it names (a dated snapshot), where that has a price
    # (a stand-in is served, and priced, as the model the line asked for)
    named = engine.pricing.answering_model(line.model if stand_in else line.responses[baseline_model].get("model"),
                                           line.model, base_url)
    result.baseline_usd = engine.pricing.cost(usage, model=named, base_url=base_url).usd
    result.missing = stand_in or answers.missing
    result.baseline_correct = line.correct.get(baseline_model)
    record = records[-1] if records else None
    if record is None:  # refused by a budget: nothing served
        result.correct = False if line.correct else None
        return
    result.cost_usd = sum((r.cost_usd for r in records), Decimal(0))  # an escalated line paid both attempts
    for paid in records:
        name = paid.model_sent or result.line.model
        result.spent_on[name] = result.spent_on.get(name, Decimal(0)) + paid.cost_usd
    result.model_sent = record.model_sent
    result.escalated = len(records) > 1 and bool((record.routing or {}).get("reason", "").startswith("escalated"))
    result.routed = record.routed or result.escalated
    result.capped = record.capped
    if not record.from_cache:
        result.answered_by = answers.answered_by
        result.correct = line.correct.get(answers.answered_by) if answers.answered_by else None
        if answers.cut and result.correct:  # an answer its cap cut is not counted right (nor wrong where it was)
            result.correct = False
        return
    result.cache_tier = record.cache_tier
    source_index = tap.sources.get(tap.hit_entry) if tap is not None and tap.hit_entry is not None else None
    if source_index is None or source_index < 0:
        result.correct = None
        return
    source = done[source_index]
    result.source, result.answered_by = source_index, source.answered_by
    grouped = line.group is not None and source.line.group is not None
    result.wrong = grouped and line.group != source.line.group
    if result.wrong:
        result.correct = False if line.correct else None
    elif grouped and source.correct is not None:  # the same question: the answer served is judged as it was
        result.correct = source.correct
    else:  # not known to be the same question: as this line's own label for the model that wrote the answer
        result.correct = line.correct.get(source.answered_by) if source.answered_by else None
