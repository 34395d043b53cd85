"""llmbudget.ledger.budgets: validation, period buckets, reservations, refusals, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import random
import sqlite3
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmbudget
import llmbudget.ledger.budgets as budgets_module
from llmbudget.ledger.budgets import (
    Bucket,
    Budget,
    BudgetStore,
    MemoryBudgetStore,
    Refusal,
    Reservation,
    SQLiteBudgetStore,
)

UTC = UTC
NOW = datetime(2026, 6, 15, 12, 30, 45, tzinfo=UTC).timestamp()


def _bucket(usd: str = "1.00", *, name: str = "", per: str = "global") -> Bucket:
    budget = Budget(Decimal(usd), per=per, name=name)  # type: ignore[arg-type]
    return budget.bucket(tenant="acme", request_id="req-1", now=NOW)


# -- Budget validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((1,), {"per": "week"}, "per='week'"),
        ((1,), {"per": "tenant", "period": "week"}, "period='week'"),
        ((1,), {"period": "day"}, "per-request budget has no period"),
        ((-1,), {}, "Budget usd"),
        (("ten dollars",), {}, "'ten dollars'"),
        ((float("nan"),), {}, "Budget usd"),
        ((float("inf"),), {"per": "global"}, "Budget usd"),
    ],
)
def test_budget_validation(args: tuple[object, ...], kwargs: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError) as raised:
        Budget(*args, **kwargs)  # type: ignore[arg-type]
    assert needle in str(raised.value)


def test_budget_amounts_and_names() -> None:
    assert Budget(0.1).usd == Decimal("0.1")
    assert Budget("2.50", per="tenant").usd == Decimal("2.50")
    assert Budget(0).usd == 0
    assert Budget(1).name == "request"
    assert Budget(1, per="tenant", period="day").name == "tenant/day"
    assert Budget(1, per="global", name="company").name == "company"


# -- period buckets --------------------------------------------------------------------------------


def _expected_bounds(period: str, t: datetime) -> tuple[datetime, datetime]:
    if period == "minute":
        start = t.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start, start.replace(year=year, month=month)


@settings(max_examples=100, deadline=None)
@given(
    t=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)),
    period=st.sampled_from(["minute", "hour", "day", "month"]),
)
def test_period_buckets(t: datetime, period: str) -> None:
    budget = Budget(5, per="tenant", period=period)  # type: ignore[arg-type]
    start, end = _expected_bounds(period, t)
    bucket = budget.bucket(tenant="acme", request_id="r", now=t.timestamp())
    assert bucket.resets_at == end.timestamp()
    assert bucket.limit == Decimal(5)
    assert bucket.budget is budget
    same = budget.bucket(tenant="acme", request_id="other", now=start.timestamp())
    last = budget.bucket(tenant="acme", request_id="r", now=end.timestamp() - 0.001)
    following = budget.bucket(tenant="acme", request_id="r", now=end.timestamp())
    assert bucket.key == same.key == last.key
    assert following.key != bucket.key
    assert following.resets_at == _expected_bounds(period, end)[1].timestamp()


def test_december_rolls_over_to_january() -> None:
    budget = Budget(5, per="global", period="month")
    december = budget.bucket(tenant="a", request_id="r", now=datetime(2026, 12, 31, 23, 59, 59, 999000,
                                                                       tzinfo=UTC).timestamp())
    january = budget.bucket(tenant="a", request_id="r", now=datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert december.resets_at == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert january.resets_at == datetime(2027, 2, 1, tzinfo=UTC).timestamp()
    assert december.key != january.key
    assert "2026-12-01" in december.key and "2027-01-01" in january.key


def test_bucket_owners() -> None:
    def key(budget: Budget, tenant: str, request_id: str) -> str:
        return budget.bucket(tenant=tenant, request_id=request_id, now=NOW).key

    tenant = Budget(1, per="tenant", period="day")
    assert key(tenant, "a", "r1") == key(tenant, "a", "r2") != key(tenant, "b", "r1")
    everyone = Budget(1, per="global", period="day")
    assert key(everyone, "a", "r1") == key(everyone, "b", "r2")
    request = Budget(1)
    assert key(request, "a", "r1") == key(request, "b", "r1") != key(request, "a", "r2")
    assert request.bucket(tenant="a", request_id="r", now=NOW).resets_at is None
    # Different kinds of budgets never share a counter.
    assert len({key(tenant, "a", "r"), key(everyone, "a", "r"), key(Budget(1, per="tenant"), "a", "r")}) == 3


# -- reserve / settle / release --------------------------------------------------------------------


StoreFactory = Callable[..., BudgetStore]


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    def make(ttl: float = 600.0) -> BudgetStore:
        if request.param == "memory":
            return MemoryBudgetStore(reservation_ttl=ttl)
        return SQLiteBudgetStore(tmp_path / "budgets.sqlite3", reservation_ttl=ttl)

    return make


@pytest.fixture
def store(store_factory: StoreFactory) -> BudgetStore:
    return store_factory()


def test_reserve_settle_release(store: BudgetStore) -> None:
    bucket = _bucket("1.00")
    first = store.reserve([bucket], Decimal("0.40"))
    assert isinstance(first, Reservation)
    assert store.spent(bucket.key) == (Decimal(0), Decimal("0.40"))
    second = store.reserve([bucket], Decimal("0.60"))  # exactly up to the limit is allowed
    assert isinstance(second, Reservation)
    assert store.spent(bucket.key) == (Decimal(0), Decimal("1.00"))
    store.settle(first, Decimal("0.25"))
    assert store.spent(bucket.key) == (Decimal("0.25"), Decimal("0.60"))
    store.settle(second, Decimal(0))  # release: nothing charged
    assert store.spent(bucket.key) == (Decimal("0.25"), Decimal(0))
    assert store.spent("never-used") == (Decimal(0), Decimal(0))


def test_reservation_is_atomic_across_buckets(store: BudgetStore) -> None:
    small = Budget(Decimal("0.50"), per="tenant", name="small").bucket(tenant="a", request_id="r", now=NOW)
    large = Budget(Decimal("5"), per="global", name="large").bucket(tenant="a", request_id="r", now=NOW)
    refused = store.reserve([large, small], Decimal("0.75"))
    assert isinstance(refused, Refusal)
    assert refused.budget == "small"
    assert store.spent(large.key) == (0, 0)  # nothing held on the bucket that had room
    granted = store.reserve([large, small], Decimal("0.5"))
    assert isinstance(granted, Reservation)
    store.settle(granted, Decimal("0.125"))
    assert store.spent(large.key) == store.spent(small.key) == (Decimal("0.125"), 0)


def test_refusal_fields_and_json(store: BudgetStore) -> None:
    budget = Budget(Decimal("1.00"), per="tenant", period="day", name="daily-tenant")
    bucket = budget.bucket(tenant="acme", request_id="r", now=NOW)
    held = store.reserve([bucket], Decimal("0.40"), tenant="acme")
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.15"))
    assert isinstance(store.reserve([bucket], Decimal("0.25"), tenant="acme"), Reservation)
    refusal = store.reserve([bucket], Decimal("0.70"), tenant="acme")
    assert isinstance(refusal, Refusal)
    assert refusal.budget == "daily-tenant"
    assert (refusal.per, refusal.period, refusal.tenant) == ("tenant", "day", "acme")
    assert refusal.limit_usd == Decimal("1.00")
    assert refusal.spent_usd == Decimal("0.15")
    assert refusal.reserved_usd == Decimal("0.25")
    assert refusal.estimated_cost_usd == Decimal("0.70")
    assert refusal.remaining_usd == Decimal("0.60")
    assert refusal.resets_at == datetime(2026, 6, 16, tzinfo=UTC).timestamp()
    message = refusal.message()
    assert "'daily-tenant'" in message and "$0.60" in message and "$0.70" in message and "$1.00" in message
    error = json.loads(refusal.to_json())["error"]
    assert error["type"] == "budget_exceeded"
    assert error["code"] == "llmbudget_budget_exceeded"
    assert error["message"] == message
    assert error["llmbudget"] == {
        "budget": "daily-tenant", "per": "tenant", "period": "day", "tenant": "acme",
        "limit_usd": 1.0, "spent_usd": 0.15, "reserved_usd": 0.25, "remaining_usd": 0.6,
        "estimated_cost_usd": 0.7, "resets_at": "2026-06-16T00:00:00+00:00",
    }
    # The refusal the interception returns is read back by budget_refusal from the same JSON.
    assert refusal.to_dict()["remaining_usd"] == 0.6


def test_settling_twice_counts_once(store: BudgetStore) -> None:
    bucket = _bucket("1.00")
    held = store.reserve([bucket], Decimal("0.5"))
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.3"))
    store.settle(held, Decimal("0.3"))
    store.settle(held, Decimal("0.9"))
    assert store.spent(bucket.key) == (Decimal("0.3"), Decimal(0))


class _Clock:
    """Stands in for the ``time`` module of the budgets module: both clocks under the test's control."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(budgets_module, "time", fake)
    return fake


def test_expired_reservations_are_charged_what_they_held(store_factory: StoreFactory, clock: _Clock) -> None:
    # released instead, the hold of a process killed mid-call let calls past the limit, though the provider billed
    # the answer it was generating (an end-to-end run: 39% over a tenant's budget after a SIGKILL)
    store = store_factory(ttl=60)
    bucket = _bucket("1.00")
    stale = store.reserve([bucket], Decimal("0.9"))
    assert isinstance(stale, Reservation)
    clock.now += 59
    assert isinstance(store.reserve([bucket], Decimal("0.2")), Refusal)
    clock.now += 2
    assert isinstance(store.reserve([bucket], Decimal("0.2")), Refusal)  # the stale hold has expired: charged
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)
    assert store.spent(bucket.key) == (Decimal("0.9"), Decimal("0.1"))


def test_a_hold_may_last_longer_than_the_stores_ttl(store_factory: StoreFactory, clock: _Clock) -> None:
    # A call sent as a line of a Batch API job is answered in minutes to hours: its hold must last that long.
    store = store_factory(ttl=60)
    bucket = _bucket("1.00")
    assert isinstance(store.reserve([bucket], Decimal("0.9"), ttl=3600), Reservation)
    clock.now += 61
    assert isinstance(store.reserve([bucket], Decimal("0.2")), Refusal)  # still held
    assert store.spent(bucket.key) == (Decimal(0), Decimal("0.9"))
    clock.now += 3600
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)  # expired at last: charged
    assert store.spent(bucket.key) == (Decimal("0.9"), Decimal("0.1"))


def test_a_batched_call_is_held_for_its_jobs_window(clock: _Clock) -> None:
    from llmbudget.defer import Batcher

    store = MemoryBudgetStore(reservation_ttl=60)
    engine = llmbudget.Engine(budget_store=store, budgets=[llmbudget.Budget("0.0008", per="tenant")])
    engine._batcher = Batcher(completion_window="24h")
    assert engine.batcher.hold_seconds == 25 * 3600 and Batcher(completion_window="90m").hold_seconds == 9000
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "Summarise this report."}]}).encode()

    def attempt(**scope: object) -> llmbudget.pipeline.Attempt:
        with llmbudget.scope(tenant="acme", **scope):  # type: ignore[arg-type]
            made = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                                headers={}, body=body)
        assert made is not None
        made.plan()
        return made

    batched = attempt(defer="batch")
    assert batched.reserve() is None
    clock.now += 3600  # an hour into the job: the store's own 60 s would have let the next call spend it again
    assert attempt().reserve() is not None

def test_late_settle_after_expiry_charges_the_actual_once(store_factory: StoreFactory, clock: _Clock) -> None:
    store = store_factory(ttl=60)
    bucket = _bucket("1.00")
    late = store.reserve([bucket], Decimal("0.6"))
    assert isinstance(late, Reservation)
    clock.now += 61
    other = store.reserve([bucket], Decimal("0.1"))  # triggers expiry of the first hold: charged what it held
    assert isinstance(other, Reservation)
    assert store.spent(bucket.key) == (Decimal("0.6"), Decimal("0.1"))
    store.settle(late, Decimal("0.45"))  # the call was served after all: its cost replaces the charge
    assert store.spent(bucket.key) == (Decimal("0.45"), Decimal("0.1"))
    store.settle(late, Decimal("0.45"))
    assert store.spent(bucket.key) == (Decimal("0.45"), Decimal("0.1"))
    store.settle(other, Decimal(0))  # a release
    expired = store.reserve([bucket], Decimal("0.3"))
    assert isinstance(expired, Reservation)
    clock.now += 61
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # expires it: charged
    assert store.spent(bucket.key) == (Decimal("0.75"), Decimal("0.01"))
    store.settle(expired, Decimal(0))  # released late (never sent): the charge is taken back
    assert store.spent(bucket.key) == (Decimal("0.45"), Decimal("0.01"))


def test_engine_reserve_refuses_with_the_worst_case_estimate() -> None:
    engine = llmbudget.Engine(budgets=[Budget(Decimal("0.0001"), per="global", name="tiny")])
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                       "max_completion_tokens": 1000}).encode()
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=body)
    assert attempt is not None
    refusal = attempt.reserve()
    assert isinstance(refusal, Refusal)
    assert refusal.budget == "tiny"
    assert refusal.estimated_cost_usd == attempt.worst_case_usd() > Decimal("0.0001")
    assert refusal.limit_usd == Decimal("0.0001")


# -- concurrency -----------------------------------------------------------------------------------

LIMIT = Decimal(40)
PER_WORKER = 50


def _reserve_many(store: BudgetStore, bucket: Bucket, seed: int) -> tuple[list[str], int, list[str]]:
    """Reserve random amounts and settle a random actual <= reserved; (actuals, refusals, violations)."""
    rng = random.Random(seed)
    actuals: list[str] = []
    refusals = 0
    violations: list[str] = []
    for _ in range(PER_WORKER):
        amount = Decimal(rng.randint(1, 200)) / 100
        held = store.reserve([bucket], amount)
        spent, reserved = store.spent(bucket.key)
        if spent + reserved > bucket.limit:
            violations.append(f"spent {spent} + reserved {reserved} > {bucket.limit}")
        if isinstance(held, Refusal):
            refusals += 1
            continue
        actual = (amount * Decimal(rng.randint(0, 100)) / 100).quantize(Decimal("0.0001"))
        store.settle(held, actual)
        actuals.append(str(actual))
    return actuals, refusals, violations


def _process_worker(path: str, seed: int) -> tuple[list[str], int, list[str]]:
    store = SQLiteBudgetStore(path)
    bucket = Budget(LIMIT, per="global", period="month").bucket(tenant="t", request_id="r", now=NOW)
    return _reserve_many(store, bucket, seed)


def _check_totals(store: BudgetStore, bucket: Bucket, results: list[tuple[list[str], int, list[str]]]) -> None:
    actuals = [Decimal(a) for result in results for a in result[0]]
    refusals = sum(result[1] for result in results)
    violations = [v for result in results for v in result[2]]
    assert violations == []
    assert actuals and refusals, "the run should both grant and refuse reservations"
    spent, reserved = store.spent(bucket.key)
    assert reserved == 0
    assert spent == sum(actuals)
    assert spent <= LIMIT


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_threads_never_overspend(kind: str, tmp_path: Path) -> None:
    store: BudgetStore = MemoryBudgetStore() if kind == "memory" else SQLiteBudgetStore(tmp_path / "b.sqlite3")
    bucket = Budget(LIMIT, per="global", period="month").bucket(tenant="t", request_id="r", now=NOW)
    results: list[tuple[list[str], int, list[str]]] = [([], 0, [])] * 16
    start = threading.Barrier(16)

    def run(i: int) -> None:
        start.wait()
        results[i] = _reserve_many(store, bucket, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(r[0]) + r[1] for r in results) == 16 * PER_WORKER
    _check_totals(store, bucket, results)


def test_processes_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    store = SQLiteBudgetStore(path)
    bucket = Budget(LIMIT, per="global", period="month").bucket(tenant="t", request_id="r", now=NOW)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_process_worker, [(str(path), seed) for seed in range(100, 104)])
    assert sum(len(r[0]) + r[1] for r in results) == 4 * PER_WORKER
    _check_totals(store, bucket, results)



def _reserved_and_charged(path: str, body: dict[str, Any], answer: dict[str, Any],
                          host: str = "https://api.openai.com/v1") -> tuple[Decimal, Decimal]:
    """The worst case a call reserves, and what it is charged once answered with ``answer``."""
    engine = llmbudget.Engine(budgets=[Budget(Decimal(1000), per="global")])
    attempt = engine.begin(url=host + path, path="/v1" + path, headers={}, body=json.dumps(body).encode())
    assert attempt is not None
    reserved = attempt.worst_case_usd()
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps(answer).encode())
    record = attempt.finish(complete=True)
    assert record is not None
    return reserved, record.cost_usd


def _chat_answer(model: str, prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "model": model, **extra,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


_IDS = list(range(8_000))


def _wav(seconds: int, rate: int = 16_000) -> str:
    """A base64 WAV of silence (16-bit mono at ``rate``), with a real header."""
    import base64
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\0\0" * rate * seconds)
    return base64.b64encode(out.getvalue()).decode()
_IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}
_WORST_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    # what the provider reports for requests whose worst case was far below it (a red-team review's figures)
    "embeddings given as token ids": (
        "/embeddings", {"model": "text-embedding-3-large", "input": [_IDS] * 36},
        {"object": "list", "data": [], "model": "text-embedding-3-large",
         "usage": {"prompt_tokens": 288_000, "total_tokens": 288_000}}, "openai"),
    "a completion prompt given as token ids": (
        "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": _IDS[:3000], "max_tokens": 10},
        {"id": "c", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
         "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
         "usage": {"prompt_tokens": 3000, "completion_tokens": 10, "total_tokens": 3010}}, "openai"),
    "twenty prompts in one completion": (
        "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["Say hi"] * 20, "max_tokens": 1000},
        {"id": "c", "object": "text_completion", "model": "gpt-3.5-turbo-instruct", "choices": [],
         "usage": {"prompt_tokens": 40, "completion_tokens": 20_000, "total_tokens": 20_040}}, "openai"),
    "best_of": (
        "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 1000, "best_of": 10},
        {"id": "c", "object": "text_completion", "model": "gpt-3.5-turbo-instruct", "choices": [],
         "usage": {"prompt_tokens": 4, "completion_tokens": 10_000, "total_tokens": 10_004}}, "openai"),
    "n=8 with no output limit": (
        "/chat/completions", {"model": "gpt-4o", "n": 8, "messages": [{"role": "user", "content": "A story."}]},
        _chat_answer("gpt-4o", 14, 8 * 4096), "openai"),
    "priority service tier": (
        "/chat/completions", {"model": "gpt-5", "service_tier": "priority", "max_completion_tokens": 2000,
                              "messages": [{"role": "user", "content": "Plan a trip."}]},
        _chat_answer("gpt-5", 12, 2000, service_tier="priority"), "openai"),
    "four high-detail images on gpt-4o-mini": (
        "/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 300, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Compare."}, *[_IMAGE] * 4]}]},
        _chat_answer("gpt-4o-mini", 4 * (2833 + 8 * 5667), 300), "openai"),
    "a Responses tool output": (
        "/responses", {"model": "gpt-4.1", "max_output_tokens": 300, "input": [
            {"type": "function_call", "call_id": "c1", "name": "read", "arguments": "{\"path\": \"a.txt\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "word " * 76_000}]},
        {"id": "r", "object": "response", "model": "gpt-4.1", "status": "completed", "output": [],
         "usage": {"input_tokens": 76_040, "output_tokens": 300, "total_tokens": 76_340}}, "openai"),
    "audio in and out": (
        "/chat/completions", {"model": "gpt-audio", "modalities": ["text", "audio"], "max_completion_tokens": 2000,
                              "audio": {"voice": "alloy", "format": "wav"}, "messages": [{"role": "user", "content": [
                                  {"type": "input_audio", "input_audio": {"data": _wav(30), "format": "wav"}}]}]},
        _chat_answer("gpt-audio", 310, 2000, usage_details=None) | {"usage": {
            "prompt_tokens": 310, "completion_tokens": 2000, "total_tokens": 2310,
            "prompt_tokens_details": {"audio_tokens": 300},
            "completion_tokens_details": {"audio_tokens": 1600}}}, "openai"),
    "Anthropic web search with max_uses": (
        "/messages", {"model": "claude-sonnet-4-20250514", "max_tokens": 1024,
                      "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
                      "messages": [{"role": "user", "content": "News today?"}]},
        {"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
         "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 45_000, "output_tokens": 1024,
                   "server_tool_use": {"web_search_requests": 5}}}, "anthropic"),
    "Responses web searches bounded by max_tool_calls": (  # reserved as 5 searches whatever max_tool_calls said
        "/responses", {"model": "gpt-4.1", "max_output_tokens": 500, "max_tool_calls": 20, "input": "News?",
                       "tools": [{"type": "web_search"}]},
        {"id": "r", "object": "response", "model": "gpt-4.1", "status": "completed",
         "output": [{"type": "web_search_call", "id": f"ws{i}", "status": "completed"} for i in range(20)],
         "usage": {"input_tokens": 150_000, "output_tokens": 500, "total_tokens": 150_500}}, "openai"),
    "Responses file search and code interpreter fees": (  # billed per call and per container: neither counted
        "/responses", {"model": "gpt-4.1-mini", "max_output_tokens": 300, "input": "Chart the sales file.",
                       "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]},
                                 {"type": "code_interpreter", "container": {"type": "auto"}}]},
        {"id": "r", "object": "response", "model": "gpt-4.1-mini", "status": "completed", "output": [
            *({"type": "file_search_call", "id": f"fs{i}", "status": "completed", "queries": []} for i in range(5)),
            {"type": "code_interpreter_call", "id": "ci1", "status": "completed", "container_id": "cntr_1",
             "code": "print(1)"}],
         "usage": {"input_tokens": 3_000, "output_tokens": 300, "total_tokens": 3_300}}, "openai"),
    "Responses code interpreter with a 64g container": (  # billed by its memory: reserved and charged at 1g's
        "/responses", {"model": "gpt-4.1-mini", "max_output_tokens": 300, "input": "Crunch the big file.",
                       "tools": [{"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "64g"}}]},
        {"id": "r", "object": "response", "model": "gpt-4.1-mini", "status": "completed",
         "tools": [{"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "64g"}}], "output": [
             {"type": "code_interpreter_call", "id": "ci1", "status": "completed", "container_id": "cntr_1",
              "code": "print(1)"}],
         "usage": {"input_tokens": 20, "output_tokens": 300, "total_tokens": 320}}, "openai"),
    "Anthropic web fetch": (  # the fetched pages are input: reserved at 0 tokens, one call spent 3x a budget
        "/messages", {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [
            {"role": "user", "content": "Summarise these three pages."}], "tools": [
            {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3, "max_content_tokens": 35_000}]},
        {"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
         "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 95_000, "output_tokens": 1024}}, "anthropic"),
    "Anthropic advisor tool": (  # its inferences bill the advisor's (dearer) model: reserved and priced as none
        "/messages", {"model": "claude-sonnet-4-6", "max_tokens": 512, "messages": [
            {"role": "user", "content": "Plan the database migration, then write the first step."}], "tools": [
            {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6", "max_uses": 2}]},
        {"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
         "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 420, "output_tokens": 512, "iterations": [
             {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 160, "output_tokens": 1750},
             {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 380, "output_tokens": 1600}]}},
        "anthropic"),
    "Anthropic-defined tools": (  # their system prompts (346 + 245 + 700 tokens) are billed beside the request
        "/messages", {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": [
            {"role": "user", "content": "List the files in the repo."}], "tools": [
            {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]},
        {"id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
         "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 1_320, "output_tokens": 256}}, "anthropic"),
}


@pytest.mark.parametrize("case", _WORST_CASES)
def test_the_worst_case_covers_what_the_provider_charges(case: str) -> None:
    """Each of these reserved 6-140x less than it cost, so a budget could be overspent by that much."""
    path, body, answer, provider = _WORST_CASES[case]
    host = "https://api.anthropic.com/v1" if provider == "anthropic" else "https://api.openai.com/v1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reserved, charged = _reserved_and_charged(path, body, answer, host)
    assert charged > 0 and reserved >= charged, (reserved, charged)
    assert reserved < 3 * charged  # and not absurdly above it
    if case == "Anthropic advisor tool":  # Opus's 3,350 output tokens at $25 per million are in the charge
        assert charged > Decimal(3350 * 25) / 10**6
    if case == "Responses code interpreter with a 64g container":  # $0.03 a GB
        assert charged > Decimal("1.92")


def test_a_responses_call_that_continues_a_known_chain_reserves_its_earlier_turns() -> None:
    """previous_response_id and conversation: the server bills the whole chain as input, the body holds one turn."""
    first = {"id": "resp_chain_1", "object": "response", "model": "gpt-5", "status": "completed",
             "conversation": {"id": "conv_chain_1"}, "output": [],
             "usage": {"input_tokens": 119_000, "output_tokens": 500, "total_tokens": 119_500}}
    _reserved_and_charged("/responses", {"model": "gpt-5", "input": "Summarise the contract."}, first)
    later = {"id": "resp_chain_2", "object": "response", "model": "gpt-5", "status": "completed", "output": [],
             "usage": {"input_tokens": 120_000, "output_tokens": 500, "total_tokens": 120_500}}
    for continued in ({"previous_response_id": "resp_chain_1"}, {"conversation": "conv_chain_1"}):
        body = {"model": "gpt-5", "input": "And next?", "max_output_tokens": 500, **continued}
        reserved, charged = _reserved_and_charged("/responses", body, later)
        assert reserved >= charged, (continued, reserved, charged)
    unknown = {"model": "gpt-5", "input": "And next?", "max_output_tokens": 500, "previous_response_id": "resp_x"}
    reserved, _ = _reserved_and_charged("/responses", unknown, later)
    assert reserved < Decimal("0.01")  # a chain this process never saw is not known (README says so)


def _mp3(frames: int, header: bytes, first: bytes = b"") -> str:
    """A base64 MP3 of ``frames`` silent frames with the 4-byte frame ``header`` (an MPEG-2.5 layer III frame
    at 8 kbit/s and 8 kHz is 72 bytes), ``first`` put in the first frame's body (a Xing header)."""
    import base64

    body = bytearray(72 - 4)
    frame = header + bytes(body)
    opening = header + (first + bytes(body))[:68]
    return base64.b64encode(opening + frame * (frames - 1)).decode()


# MPEG-2.5 layer III, no CRC; 8 kbit/s at 8,000 Hz; mono: 72 bytes and 576 samples (72 ms) a frame
_MP3_8K = bytes([0xFF, 0xE3, 0x18, 0xC0])


def test_a_recordings_length_is_never_read_shorter_than_it_is() -> None:
    """An 8 kbit/s MP3 (MPEG-2.5's least, common for voice) was read at an assumed 32 kbit/s, a quarter of its
    length; a WAV whose header's byte rate field says more than its samples make was read as almost nothing."""
    import base64
    import struct

    from llmbudget.providers._base import audio_seconds

    ten_minutes = 600 * 1000 // 72  # frames
    assert audio_seconds(_mp3(ten_minutes, _MP3_8K), "mp3") == pytest.approx(600, abs=1)
    # a variable bit rate with a Xing header (in a first frame at 64 kbit/s, 576 bytes; then 8 kbit/s frames):
    # its frame count says how long it is, where the first frame's rate would read it 8 times shorter
    xing = bytes([0xFF, 0xE3, 0x88, 0xC0]) + b"\0" * 9 + b"Xing" + struct.pack(">II", 1, 1001)
    varying = xing + bytes(576 - len(xing)) + base64.b64decode(_mp3(1000, _MP3_8K))
    assert audio_seconds(base64.b64encode(varying).decode(), "mp3") == pytest.approx(1001 * 0.072, abs=0.1)
    # neither: a rate that varies with no header: the least rate of compressed audio
    rising = base64.b64encode(base64.b64decode(_mp3(10, _MP3_8K)) + bytes([0xFF, 0xE3, 0x28, 0xC0]) + bytes(140))
    assert audio_seconds(rising.decode(), "mp3") >= 11 * 72 / 1000
    # hostile or broken files: never an error (the call went out unbudgeted), never shorter, never longer than
    # their bytes can be at the least bit rate
    frame_448k = bytes([0xFF, 0xFF, 0xE0, 0x00])  # MPEG-1 layer I, 448 kbit/s
    cut = base64.b64encode(bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(32) + b"Xing").decode()
    assert audio_seconds(cut, "mp3") == pytest.approx(len(cut) * 3 // 4 / 1000)  # (the least bit rate)
    endless = b"\0" * 9 + b"Xing" + struct.pack(">II", 1, 2**32 - 1)
    assert audio_seconds(_mp3(6, _MP3_8K, endless), "mp3") == pytest.approx(6 * 72 / 1000)
    lone = base64.b64encode(frame_448k + bytes(2_000_000)).decode()  # one frame header, then no frames
    assert audio_seconds(lone, "mp3") == pytest.approx(2_000_004 / 1000)
    # a short file (fewer than 24 frames) ending in an ID3v1 tag: its frames' rate, not the least one
    frame_128k = bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(413)  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417 bytes
    tagged = base64.b64encode(frame_128k * 10 + b"TAG" + bytes(125)).decode()
    assert audio_seconds(tagged, "mp3") == pytest.approx(10 * 1152 / 44100, abs=0.02)
    wav = bytearray(base64.b64decode(_wav(60)))
    wav[28:32] = (10**9).to_bytes(4, "little")  # its byte rate field: a billion bytes a second
    assert audio_seconds(base64.b64encode(bytes(wav)).decode(), "wav") == pytest.approx(60, abs=0.1)
    assert audio_seconds(_wav(60), "wav") == pytest.approx(60, abs=0.1)
    body = {"model": "gpt-audio-mini", "max_completion_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": _mp3(ten_minutes, _MP3_8K), "format": "mp3"}}]}]}
    assert _reserved("/chat/completions", body) > Decimal("0.05")  # 6,000 audio tokens at gpt-audio-mini's rate


def test_a_responses_input_that_refers_to_a_known_output_item_reserves_it() -> None:
    """An ``item_reference`` input is the referred item again, billed as input: five references to a 20,000
    token answer this process saw went through a $0.05 budget and spent $0.20."""
    first = {"id": "resp_ref_1", "object": "response", "model": "gpt-4.1", "status": "completed",
             "output": [{"type": "message", "id": "msg_ref_1", "role": "assistant", "status": "completed",
                         "content": [{"type": "output_text", "text": "...", "annotations": []}]}],
             "usage": {"input_tokens": 100, "output_tokens": 20_000, "total_tokens": 20_100}}
    _reserved_and_charged("/responses", {"model": "gpt-4.1", "input": "Write it all."}, first)
    later = {"id": "resp_ref_2", "object": "response", "model": "gpt-4.1", "status": "completed", "output": [],
             "usage": {"input_tokens": 100_050, "output_tokens": 16, "total_tokens": 100_066}}
    body = {"model": "gpt-4.1", "max_output_tokens": 16,
            "input": [{"type": "item_reference", "id": "msg_ref_1"}] * 5 + [{"role": "user", "content": "Again?"}]}
    reserved, charged = _reserved_and_charged("/responses", body, later)
    assert reserved >= charged > Decimal("0.2"), (reserved, charged)


def _reserved(path: str, body: dict[str, Any], host: str = "https://api.openai.com/v1") -> Decimal:
    engine = llmbudget.Engine()
    attempt = engine.begin(url=host + path, path="/v1" + path, headers={}, body=json.dumps(body).encode())
    assert attempt is not None
    return attempt.worst_case_usd()


def test_blobs_in_responses_items_are_not_read_as_text() -> None:
    """A generated image passed back (base64 in ``result``) was counted as a million tokens of text, a reasoning
    item's encrypted content as 41k: one call reserved dollars."""
    image = {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBOR" * 300_000}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA" * 12_000}
    for item in (image, reasoning):
        body = {"model": "gpt-4.1-mini", "max_output_tokens": 100,
                "input": [{"role": "user", "content": "Again, in blue."}, item]}
        assert _reserved("/responses", body) < Decimal("0.01")


def test_a_prompt_templates_size_is_what_a_fresh_call_of_it_took_in() -> None:
    """After a long chain on a template, a new user's first call with it reserved the whole chain (118x)."""
    prompt = {"id": "pmpt_fresh_test", "version": "1"}

    def answered(rid: str, tokens: int, **chain: Any) -> dict[str, Any]:
        return {"id": rid, "object": "response", "model": "gpt-4.1", "status": "completed", "output": [],
                "prompt": prompt, **chain, "usage": {"input_tokens": tokens, "output_tokens": 10,
                                                     "total_tokens": tokens + 10}}

    body = {"model": "gpt-4.1", "prompt": prompt, "input": "hi", "max_output_tokens": 10}
    _reserved_and_charged("/responses", body, answered("resp_t1", 800))
    _reserved_and_charged("/responses", {**body, "previous_response_id": "resp_t1"},
                          answered("resp_t2", 150_000, previous_response_id="resp_t1"))
    fresh, charged = _reserved_and_charged("/responses", body, answered("resp_t3", 800))
    assert charged <= fresh < 2 * charged
    chained, charged = _reserved_and_charged("/responses", {**body, "previous_response_id": "resp_t2"},
                                             answered("resp_t4", 150_400, previous_response_id="resp_t2"))
    assert charged <= chained < Decimal("1.5") * charged  # the chain, not the chain and the template again


def test_search_results_are_never_priced_as_prompt_cache_writes() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    body = {"model": "claude-sonnet-4-20250514", "max_tokens": 100, "tools": tools,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "News?"}]}
    engine = llmbudget.Engine()
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                           body=json.dumps(body).encode())
    assert attempt is not None
    worst = attempt._worst_input()
    assert worst.web_searches == 2 and worst.input_tokens >= 20_000 and worst.cache_write_tokens < 1_000


def test_a_call_the_server_refused_is_never_charged_its_worst_case_when_its_record_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from llmbudget.pipeline import Attempt

    engine = llmbudget.Engine()
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=json.dumps({"model": "gpt-4o", "max_tokens": 1000,
                                                        "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert attempt is not None

    def broken(self: Attempt, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Attempt, "_build_record", broken)
    attempt.start_response(429, {"content-type": "application/json"})
    attempt.feed(b'{"error": {"message": "slow down"}}')
    record = attempt.finish(complete=True)
    assert record is not None and record.cost_usd == 0


def test_a_refusal_message_shows_tiny_amounts_in_plain_digits() -> None:
    refusal = llmbudget.Refusal("tenant/day", "tenant", "day", Decimal("1E-7"), Decimal("5E-8"), Decimal(0),
                                Decimal("0.00000012"), None, "acme")
    assert refusal.message() == ("llmbudget refused this call: budget 'tenant/day' has $0.00000005 left of $0.0000001 "
                                 "and the call could cost up to $0.00000012.")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_counters_of_periods_over_are_dropped(kind: str, tmp_path: Path) -> None:
    """A process with minute budgets for 2,000 tenants kept 360,000 counters after three hours (the memory store,
    the default), and a SQLite file a row per tenant and period for ever. Counters of periods that are over and
    hold nothing are dropped (SQLite's a day after: late settles still find theirs); a late settle does not bring
    one back."""
    store: Any = MemoryBudgetStore() if kind == "memory" else SQLiteBudgetStore(tmp_path / "b.sqlite3")
    now = datetime.now(UTC).timestamp()
    minute = Budget("1", per="tenant", period="minute")
    month = Budget("1", per="tenant", period="month")
    gone = 86400 * 3 if kind == "sqlite" else 3600  # a period over (past SQLite's day of grace)
    old = [minute.bucket(tenant=f"t{i}", request_id="r", now=now - gone) for i in range(50)]
    for bucket in old:
        store.settle(store.reserve([bucket], Decimal("0.01")), Decimal("0.01"))
    held = store.reserve([minute.bucket(tenant="held", request_id="r", now=now - gone)], Decimal("0.01"))
    late = store.reserve([minute.bucket(tenant="late", request_id="r", now=now - gone)], Decimal("0.01"))
    store.settle(late, Decimal(0))
    assert isinstance(held, Reservation) and isinstance(late, Reservation)
    current = month.bucket(tenant="t0", request_id="r", now=now)
    store._pruned_at = -1e18  # the next reservation sweeps
    if kind == "sqlite":
        store._expired_at = 0.0
    store.settle(store.reserve([current], Decimal("0.01")), Decimal("0.01"))
    store.settle(late, Decimal("0.5"))  # settled again, late: changes nothing
    assert all(store.spent(b.key) == (0, 0) for b in old)
    assert store.spent(current.key) == (Decimal("0.01"), 0)  # this period's counter stays
    assert store.spent(held.keys[0])[1] == Decimal("0.01")  # a counter still holding a call stays
    if kind == "memory":
        assert set(store._counters) == {current.key, held.keys[0]}
    else:
        with sqlite3.connect(tmp_path / "b.sqlite3") as conn:
            keys = {row[0] for row in conn.execute("SELECT key FROM budget_counters")}
        assert keys == {current.key, held.keys[0]}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_counters_are_dropped_by_the_clock_their_keys_were_made_by(kind: str, tmp_path: Path) -> None:
    """`llmbudget replay` freezes the engine's clock at its start (the whole file is one period): pruning by the
    wall clock dropped a minute budget's counter once the replay ran past that minute, and its spend restarted
    from zero ($0.90 of a $1 budget spent twice)."""
    store: Any = MemoryBudgetStore() if kind == "memory" else SQLiteBudgetStore(tmp_path / "b.sqlite3")
    frozen = datetime.now(UTC).timestamp() - 3 * 86400  # the replay's clock, days behind the wall's
    bucket = Budget("1", per="tenant", period="minute").bucket(tenant="acme", request_id="r", now=frozen)
    store.settle(store.reserve([bucket], Decimal("0.9")), Decimal("0.9"))
    store._pruned_at = -1e18  # the next reservation sweeps
    if kind == "sqlite":
        store._expired_at = 0.0
    assert isinstance(store.reserve([bucket], Decimal("0.9")), Refusal)
    assert store.spent(bucket.key)[0] == Decimal("0.9")
