"""Per-test spend totals that travel between pytest-xdist workers as plain JSON."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmbudget.calls import SpendRecord

__all__ = ["Counters", "TestSpend", "COUNTER_KEYS"]

COUNTER_KEYS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


@dataclass
class Counters:
    """Calls, tokens by kind and exact cost (``cost_usd`` is a Decimal)."""

    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    estimated: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add_record(self, record: SpendRecord) -> None:
        usage = record.usage
        self.calls += 1
        self.input_tokens += usage.input_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.output_tokens += usage.output_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        self.cost_usd += record.cost_usd
        self.estimated += int(record.estimated)

    def merge(self, other: Counters) -> None:
        for key in (*COUNTER_KEYS, "estimated"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.cost_usd += other.cost_usd

    def to_wire(self) -> dict[str, Any]:
        """ints and strings only (pytest-xdist serializes reports as JSON)."""
        data: dict[str, Any] = {key: getattr(self, key) for key in (*COUNTER_KEYS, "estimated")}
        data["cost_usd"] = str(self.cost_usd)
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Counters:
        values = {key: int(data.get(key, 0)) for key in (*COUNTER_KEYS, "estimated")}
        return cls(cost_usd=Decimal(str(data.get("cost_usd", "0"))), **values)

    def to_report(self) -> dict[str, Any]:
        """The counters as the JSON report shows them (cost as a float)."""
        data: dict[str, Any] = {key: getattr(self, key) for key in COUNTER_KEYS}
        data["cost_usd"] = float(self.cost_usd)
        return data


@dataclass
class TestSpend(Counters):
    """What one test spent so far, in total and by model, with its calls (for failure reports)."""

    __test__ = False  # not a test class, whatever pytest's collection thinks of the name

    models: dict[str, Counters] = field(default_factory=dict)
    calls_seen: list[str] = field(default_factory=list)
    unpriced: set[str] = field(default_factory=set)
    records: list[SpendRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, record: SpendRecord) -> None:
        with self._lock:
            self.add_record(record)
            self.models.setdefault(record.model, Counters()).add_record(record)
            self.records.append(record)
            if record.price_source == "unknown":
                self.unpriced.add(record.model)
            usage = record.usage
            flags = [name for name in ("estimated", "from_cache") if getattr(record, name)]
            if record.error:
                flags.append(f"error: {record.error}")
            self.calls_seen.append(
                f"{record.endpoint} {record.model}: {usage.input_tokens} in"
                f" ({usage.cached_input_tokens} cached) / {usage.output_tokens} out tokens,"
                f" ${record.cost_usd}" + (f" [{', '.join(flags)}]" if flags else "")
            )

    def to_wire(self) -> dict[str, Any]:
        with self._lock:
            data = super().to_wire()
            data["models"] = {model: counters.to_wire() for model, counters in self.models.items()}
            data["calls_seen"] = list(self.calls_seen[:200])
            data["unpriced"] = sorted(self.unpriced)
            return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TestSpend:
        base = Counters.from_wire(data)
        spend = cls(**{key: getattr(base, key) for key in (*COUNTER_KEYS, "estimated", "cost_usd")})
        spend.models = {model: Counters.from_wire(value) for model, value in data.get("models", {}).items()}
        spend.calls_seen = list(data.get("calls_seen", []))
        spend.unpriced = set(data.get("unpriced", []))
        return spend
