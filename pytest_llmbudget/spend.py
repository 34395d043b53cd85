"""Per-test spend totals that travel between pytest-xdist workers as plain JSON."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from llmbudget.calls import Counters, SpendRecord
from llmbudget.money import exact_usd
from llmbudget.prefix import prefix_row
from llmbudget.textfiles import shown

__all__ = ["Counters", "TestSpend", "COUNTER_KEYS", "to_report"]

_RETRIED = frozenset((408, 409, 429))  # what the openai and anthropic SDKs retry, with 5xx
_MAX_PREFIXES = 5000  # per test: what the prefix check reads of a test that makes more calls than that
COUNTER_KEYS = ("calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                "reasoning_tokens")


def to_report(counters: Counters) -> dict[str, Any]:
    """Counters as the JSON report shows them (cost as a float)."""
    data: dict[str, Any] = {key: getattr(counters, key) for key in COUNTER_KEYS}
    data["cost_usd"] = float(counters.cost_usd)
    data["prompt_cache_saved_usd"] = float(counters.prompt_cache_saved_usd)
    data["deferred_saved_usd"] = float(counters.deferred_saved_usd)
    return data


@dataclass
class TestSpend(Counters):
    """What one test spent so far, in total and by model, with its calls (for failure reports)."""

    __test__ = False  # not a test class, whatever pytest's collection thinks of the name

    models: dict[str, Counters] = field(default_factory=dict)
    calls_seen: list[str] = field(default_factory=list)
    unpriced: set[str] = field(default_factory=set)
    records: list[SpendRecord] = field(default_factory=list)
    #: Each call's prefix (``llmbudget.prefix.prefix_row``), for the prefix-stability check.
    prefixes: list[dict[str, Any]] = field(default_factory=list)
    #: Attempts refused unbilled with a 408, 409, 429 or 5xx (which the SDKs retry): no call of a ``calls=`` budget.
    refused: int = 0
    #: Requests a vcrpy cassette answered with the answer recorded for another prompt (see ``replays``), and the
    #: input tokens they add to it (estimated): spend the replayed usage does not show.
    stale_replays: int = 0
    stale_input_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, record: SpendRecord) -> None:
        with self._lock:
            self.add_record(record)
            self.models.setdefault(record.model, Counters()).add_record(record)
            self.records.append(record)
            row = prefix_row(record)
            if row is not None and len(self.prefixes) < _MAX_PREFIXES:
                self.prefixes.append(row)
            if record.price_source == "unknown":
                self.unpriced.add(record.model)
            if (record.status in _RETRIED or (record.status or 0) >= 500) and not record.cost_usd:
                self.refused += 1
            usage = record.usage
            flags = [name for name in ("estimated", "from_cache") if getattr(record, name)]
            if record.error:
                flags.append(f"error: {shown(record.error)}")
            self.calls_seen.append(  # (the model and error as the answer named them: escaped, never raw)
                f"{record.endpoint} {shown(record.model)}: {usage.input_tokens} in"
                f" ({usage.cached_input_tokens} cached) / {usage.output_tokens} out tokens,"
                f" {exact_usd(record.cost_usd)}" + (f" [{', '.join(flags)}]" if flags else "")
            )

    def merge_spend(self, other: TestSpend) -> None:
        """Add what ``other`` (another process's, say) spent to this."""
        with self._lock:
            self.merge(other)
            for model, counters in other.models.items():
                self.models.setdefault(model, Counters()).merge(counters)
            self.calls_seen.extend(other.calls_seen)
            self.unpriced |= other.unpriced
            self.refused += other.refused
            self.stale_replays += other.stale_replays
            self.stale_input_tokens += other.stale_input_tokens
            self.prefixes.extend(other.prefixes[: max(_MAX_PREFIXES - len(self.prefixes), 0)])

    def to_wire(self) -> dict[str, Any]:
        """ints and strings only (pytest-xdist serializes reports as JSON)."""
        with self._lock:
            data = self.to_dict()
            data["models"] = {model: counters.to_dict() for model, counters in self.models.items()}
            data["calls_seen"] = list(self.calls_seen[:200])
            data["unpriced"] = sorted(self.unpriced)
            data["prefixes"] = list(self.prefixes)
            data["refused"] = self.refused
            data["stale_replays"], data["stale_input_tokens"] = self.stale_replays, self.stale_input_tokens
            return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TestSpend:
        base = Counters.from_dict(data)
        spend = cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Counters)})
        spend.models = {model: Counters.from_dict(value) for model, value in data.get("models", {}).items()}
        spend.calls_seen = list(data.get("calls_seen", []))
        spend.unpriced = set(data.get("unpriced", []))
        spend.prefixes = list(data.get("prefixes", []))
        spend.refused = int(data.get("refused", 0))
        spend.stale_replays = int(data.get("stale_replays", 0))
        spend.stale_input_tokens = int(data.get("stale_input_tokens", 0))
        return spend
