"""The normalized model of one LLM call: what was asked, what it used, what it cost."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .money import plain_decimal

__all__ = ["Call", "Counters", "Usage", "SpendRecord", "ENDPOINTS"]

#: The wire formats llmbudget understands, by name.
ENDPOINTS = ("chat.completions", "responses", "embeddings", "completions", "messages")


#: The most tokens one call's usage may count (a billion). A provider's usage beyond it, negative, or not a whole
#: number is malformed (the call is estimated instead), and so is a ledger record holding such a count.
MAX_TOKENS = 10**9

@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call used, by kind.

    ``cached_input_tokens`` and ``cache_write_tokens`` are subsets of
    ``input_tokens`` (``cache_write_1h_tokens``, Anthropic's one-hour writes, of
    ``cache_write_tokens``); ``reasoning_tokens`` is a subset of ``output_tokens``;
    the audio counts are subsets of their side too.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_write_1h_tokens: int = 0
    service_tier: str | None = None
    estimated: bool = False
    #: server-side web searches the call ran (Anthropic's ``web_search`` tool), priced per search
    web_searches: int = 0
    #: of them, OpenAI's older ``web_search_preview`` tool's (and a chat search model's): $25 per 1,000 on a model
    #: that does not reason, $10 on one that does
    preview_searches: int = 0
    #: OpenAI's built-in tools billed per use beside the tokens: file searches (per call) and code interpreter
    #: containers (in GB of their memory: a 1g container is 1, a 64g one 64)
    file_searches: int = 0
    code_containers: int = 0
    #: Inferences the provider ran inside the call on other models and reports beside its usage, each billed at
    #: its own model's rates (Anthropic's advisor tool: ``usage.iterations`` of type ``advisor_message``): pairs of
    #: (model, usage). The fields above are the call's own model's.
    others: tuple[tuple[str, Usage], ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def replace(self, **changes: Any) -> Usage:
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class Call:
    """An LLM request as a provider adapter understood it."""

    endpoint: str
    model: str | None
    body: dict[str, Any]
    stream: bool
    base_url: str
    max_output_tokens: int | None = None


@dataclass(slots=True)
class SpendRecord:
    """One attempt at one LLM call, as the ledger keeps it.

    ``cost_usd`` is exact (``Decimal``); convert to float only to display.
    """

    time: float
    endpoint: str
    base_url: str
    model_requested: str | None
    model_sent: str | None
    model_answered: str | None
    usage: Usage
    cost_usd: Decimal
    latency_s: float
    tenant: str | None = None
    request_id: str | None = None
    test_id: str | None = None
    status: int | None = None
    attempt: int = 0
    price_source: str = "genai-prices"
    from_cache: bool = False
    routed: bool = False
    capped: bool = False
    estimated: bool = False
    error: str | None = None
    saved_usd: Decimal = field(default_factory=Decimal)
    cache_tier: str | None = None
    cache_score: float | None = None
    #: How the request was routed: tier, score, threshold, reason and top features.
    routing: dict[str, Any] | None = None
    #: The answer stopped at an output cap llmbudget set (``finish_reason: length``).
    truncated_by_cap: bool = False
    #: What the provider's prompt cache took off this call: its cached input tokens at the full input
    #: rate minus at the cached rate (0 when none were cached or the model's price is unknown).
    prompt_cache_saved_usd: Decimal = field(default_factory=Decimal)
    #: What routing took off this call: its usage priced at the model the app asked for minus the
    #: price paid (0 when the call kept its model, went to a dearer one, or a price is unknown).
    #: The same usage on both sides: the larger model's answer might have been longer or shorter.
    routing_saved_usd: Decimal = field(default_factory=Decimal)
    #: The request's stable prefix (see ``llmbudget.prefix``): its group, hash and length, and where it
    #: first differs from the group's first prefix, with a short excerpt (None: no prefix to cache).
    prefix: dict[str, Any] | None = None
    #: Output control: the length directive (``directive``, ``max_words``, ``cap``, ``source``, ``in``) or
    #: the JSON schema's cap (``schema_cap``) applied, and for JSON answers ``json``: valid, invalid or cut.
    output: dict[str, Any] | None = None
    #: "flex" or "batch" when the call was deferred (``llmbudget.defer``), and what that took off its price.
    deferred: str | None = None
    deferred_saved_usd: Decimal = field(default_factory=Decimal)
    #: Where the call's start falls in this process's order of calls (0: not known, as for a record read back);
    #: the pytest plugin tells by it which test a call began in. Not kept in the ledger.
    sequence: int = field(default=0, repr=False, compare=False)

    @property
    def saved_by(self) -> dict[str, Decimal]:
        """USD saved on this call by mechanism: ``cache`` (``saved_usd``: a hit's price had it gone to
        the provider), ``routing`` and ``prompt_cache`` (the provider's discount on cached input)."""
        return {"cache": self.saved_usd, "routing": self.routing_saved_usd, "prompt_cache": self.prompt_cache_saved_usd,
                "deferral": self.deferred_saved_usd}

    @property
    def retried(self) -> bool:
        return self.attempt > 0

    @property
    def model(self) -> str:
        """The model that answered, else the one asked for."""
        return self.model_answered or self.model_sent or self.model_requested or "unknown"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (costs as decimal strings, usage flattened)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("usage", "sequence")}
        for key in _MONEY:
            data[key] = plain_decimal(getattr(self, key))
        data["usage"] = usage = dataclasses.asdict(self.usage)
        if not usage["others"]:  # as records were before the field: a reader of an earlier release still reads them
            del usage["others"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpendRecord:
        """The record :meth:`to_dict` wrote; ValueError saying what is wrong with one that is not (a damaged
        or hand-edited ledger): token counts must be whole numbers, amounts and the time finite."""
        if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
            raise ValueError("not a spend record (expected an object with a usage object)")
        values = dict(data)
        values.pop("sequence", None)  # this process's own order: never read back
        values["usage"] = _usage_from(values["usage"], "usage")
        for name in _TEXTS:  # report sorts and groups by these: an int or a list there crashed it
            text = values.get(name)
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{name} is {text!r}; expected a string or null")
        for name in _FLAGS:  # "no" is truthy: a string there was counted as a cache hit
            flag = values.get(name, False)
            if not isinstance(flag, bool):
                raise ValueError(f"{name} is {flag!r}; expected true or false")
        for name in _OBJECTS:
            detail = values.get(name)
            if detail is not None and not isinstance(detail, dict):
                raise ValueError(f"{name} is {detail!r}; expected an object or null")
        _check_prefix(values.get("prefix"))
        verdict = (values.get("output") or {}).get("json")
        if verdict is not None and not isinstance(verdict, str):  # report counts answers by it: a list is unhashable
            raise ValueError(f"output.json is {verdict!r}; expected a string or null")
        moment = values.get("time")
        if isinstance(moment, bool) or not isinstance(moment, (int, float)) or not 0 <= moment < _YEAR_10000:
            raise ValueError(f"time is {moment!r}; expected seconds since the epoch")
        for key in _MONEY:  # records written before a field existed read as 0
            raw = values.get(key, "0")
            try:
                amount = Decimal(str(raw))
            except ArithmeticError:
                amount = Decimal("NaN")
            if not amount.is_finite() or amount.copy_abs() > MAX_USD:  # abs() rounds: 1e999999999 overflowed
                raise ValueError(f"{key} is {raw!r}; expected an amount in dollars")
            if amount < 0 and key in _NEVER_NEGATIVE:  # a saving may be (a tier dearer than the model asked for)
                raise ValueError(f"{key} is {raw!r}; expected an amount of at least 0 dollars")
            values[key] = amount
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(str(exc)) from None


_COUNTS = ("calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
           "estimated")
_USAGE_COUNTS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
                 "input_audio_tokens", "output_audio_tokens", "cache_write_1h_tokens", "web_searches", "file_searches",
                 "code_containers", "preview_searches")
MAX_USD = Decimal(10) ** 15
_TEXTS = ("endpoint", "base_url", "model_requested", "model_sent", "model_answered", "tenant", "request_id", "test_id",
          "price_source", "error", "deferred", "cache_tier")
_FLAGS = ("from_cache", "routed", "capped", "estimated", "truncated_by_cap")
_OBJECTS = ("routing", "prefix", "output")
_YEAR_10000 = 253_402_300_800  # seconds since the epoch: a date datetime can still show
#: The money fields of a record and of counters: spent, then saved by mechanism (cache, routing, prompt cache).
_MONEY = ("cost_usd", "saved_usd", "routing_saved_usd", "prompt_cache_saved_usd", "deferred_saved_usd")
_NEVER_NEGATIVE = frozenset(("cost_usd", "saved_usd"))  # what a call cost; what a cache hit would have cost


def _usage_from(data: dict[str, Any], where: str, *, nested: bool = False) -> Usage:
    """The :class:`Usage` that ``dataclasses.asdict`` wrote (``others`` as [model, usage] pairs, one level deep);
    ValueError naming ``where`` for a count that is not a whole number of tokens, or another model's usage that is
    malformed."""
    values = dict(data)
    others = values.pop("others", ())
    if not isinstance(others, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]
            and isinstance(pair[1], dict) for pair in others) or (nested and others):
        raise ValueError(f"{where}.others is {others!r}; expected [model, usage] pairs")
    try:
        usage = Usage(**values, others=tuple((model, _usage_from(sub, f"{where}.others[{model}]", nested=True))
                                             for model, sub in others))
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for name in _USAGE_COUNTS:
        count = getattr(usage, name)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TOKENS:
            raise ValueError(f"{where}.{name} is {count!r}; expected a whole number of tokens")
    return usage


def _check_prefix(prefix: dict[str, Any] | None) -> None:
    """ValueError unless a record's ``prefix`` has what the prefix-stability report reads of it."""
    if not prefix:
        return
    for key in ("group", "hash"):
        if not isinstance(prefix.get(key), str):
            raise ValueError(f"prefix.{key} is {prefix.get(key)!r}; expected a string")
    for key in ("chars", "differs_at", "within", "tokens"):
        count = prefix.get(key)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TOKENS):
            raise ValueError(f"prefix.{key} is {count!r}; expected a whole number or null")
    excerpt = prefix.get("excerpt")
    if excerpt is not None and not isinstance(excerpt, str):
        raise ValueError(f"prefix.excerpt is {excerpt!r}; expected a string")


@dataclass
class Counters:
    """Calls, tokens by kind, and exact dollars spent and saved, summed over records."""

    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    saved_usd: Decimal = field(default_factory=Decimal)
    routing_saved_usd: Decimal = field(default_factory=Decimal)
    prompt_cache_saved_usd: Decimal = field(default_factory=Decimal)
    deferred_saved_usd: Decimal = field(default_factory=Decimal)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add_record(self, record: SpendRecord) -> None:
        usage = record.usage
        self.calls += 1
        self.input_tokens += usage.input_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        self.output_tokens += usage.output_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        self.estimated += int(record.estimated)
        for key in _MONEY:
            setattr(self, key, getattr(self, key) + getattr(record, key))

    def merge(self, other: Counters) -> None:
        for key in _COUNTS:
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for key in _MONEY:
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def to_dict(self) -> dict[str, Any]:
        """Ints and decimal strings only (safe for JSON and for pytest-xdist)."""
        data: dict[str, Any] = {key: getattr(self, key) for key in _COUNTS}
        for key in _MONEY:
            data[key] = plain_decimal(getattr(self, key))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        values: dict[str, Any] = {key: int(data.get(key, 0)) for key in _COUNTS}
        counters = cls(**values)
        for key in _MONEY:
            setattr(counters, key, Decimal(str(data.get(key, "0"))))
        return counters
