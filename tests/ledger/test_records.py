"""llmbudget.ledger.records: SpendRecord round-trips through memory and SQLite, across processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbudget.calls import SpendRecord, Usage
from llmbudget.ledger.records import MemoryLedger, SQLiteLedger

COUNT = st.integers(0, 10**9)
TEXT = st.text(max_size=30)
DECIMALS = st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: d.is_finite()
)

usages = st.builds(
    Usage,
    input_tokens=COUNT, cached_input_tokens=COUNT, cache_write_tokens=COUNT, output_tokens=COUNT,
    reasoning_tokens=COUNT, input_audio_tokens=COUNT, output_audio_tokens=COUNT,
    service_tier=st.none() | st.sampled_from(["default", "flex", "priority"]), estimated=st.booleans(),
)
records = st.builds(
    SpendRecord,
    time=st.floats(0, 4e9, allow_nan=False),
    endpoint=st.sampled_from(["chat.completions", "responses", "embeddings", "completions"]),
    base_url=st.sampled_from(["https://api.openai.com/v1", "http://127.0.0.1:8080/v1"]),
    model_requested=st.none() | TEXT,
    model_sent=st.none() | TEXT,
    model_answered=st.none() | TEXT,
    usage=usages,
    cost_usd=DECIMALS,
    latency_s=st.floats(0, 1e4, allow_nan=False),
    tenant=st.none() | TEXT,
    request_id=st.none() | TEXT,
    test_id=st.none() | TEXT,
    status=st.none() | st.integers(100, 599),
    attempt=st.integers(0, 10),
    price_source=st.sampled_from(["genai-prices", "override", "unknown", "none"]),
    from_cache=st.booleans(),
    routed=st.booleans(),
    capped=st.booleans(),
    estimated=st.booleans(),
    error=st.none() | TEXT,
    saved_usd=DECIMALS,
)

EXACT = [
    Decimal("0.000000123456789012345678901234"),
    Decimal("1E-12"),
    Decimal("0.10"),
    Decimal("12345.678900"),
    Decimal(0),
]


def _record(cost: Decimal, i: int = 0) -> SpendRecord:
    return SpendRecord(
        time=1_750_000_000.123456 + i, endpoint="chat.completions", base_url="https://api.openai.com/v1",
        model_requested="gpt-4o-mini", model_sent="gpt-4o-mini", model_answered="gpt-4o-mini-2024-07-18",
        usage=Usage(input_tokens=100 + i, cached_input_tokens=20, output_tokens=7, reasoning_tokens=3,
                    service_tier="flex"),
        cost_usd=cost, latency_s=0.25, tenant="acme", request_id=f"req-{i}", test_id="tests/x.py::t", status=200,
        attempt=i % 3, estimated=bool(i % 2), error=None if i % 4 else "HTTP 500",
        saved_usd=cost / 3 if cost else Decimal(0),
    )


def _same(a: SpendRecord, b: SpendRecord) -> None:
    assert a == b
    assert str(a.cost_usd) == str(b.cost_usd)  # not just equal: the very same Decimal digits
    assert str(a.saved_usd) == str(b.saved_usd)


@settings(max_examples=50, deadline=None)
@given(record=records)
def test_dict_round_trip_is_exact(record: SpendRecord) -> None:
    _same(SpendRecord.from_dict(record.to_dict()), record)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(records, max_size=5))
def test_sqlite_round_trip_across_two_connections(tmp_path: Path, batch: list[SpendRecord]) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.unlink(missing_ok=True)
    writer = SQLiteLedger(path)
    for record in batch:
        writer.add(record)
    assert writer.flush()  # written by a background thread; flush() waits for it
    reader = SQLiteLedger(path)  # another connection to the same file
    back = list(reader.records())
    assert len(back) == len(batch)
    for got, want in zip(back, batch):
        _same(got, want)


def _write(path: str, costs: list[str], offset: int) -> None:
    ledger = SQLiteLedger(path)
    for i, cost in enumerate(costs):
        ledger.add(_record(Decimal(cost), offset + i))
    ledger.flush()  # the pool terminates its workers: no exit handler runs


def _read(path: str) -> list[SpendRecord]:
    return list(SQLiteLedger(path).records())


def test_sqlite_round_trip_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    costs = [str(d) for d in EXACT]
    first = SQLiteLedger(path)
    first.add(_record(Decimal("0.5"), 99))
    first.flush()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_write, [(path, costs, 0), (path, costs, 100)])
        seen_by_child = pool.apply(_read, (path,))
    expected = [_record(Decimal("0.5"), 99)]
    expected += [_record(Decimal(c), i) for i, c in enumerate(costs)]
    expected += [_record(Decimal(c), 100 + i) for i, c in enumerate(costs)]
    here = list(SQLiteLedger(path).records())
    key = lambda r: (r.request_id, r.time)  # noqa: E731 - the two writers interleave
    assert len(here) == len(expected) == len(seen_by_child)
    for got, child, want in zip(sorted(here, key=key), sorted(seen_by_child, key=key), sorted(expected, key=key)):
        _same(got, want)
        _same(child, want)


def test_memory_ledger_keeps_the_newest_records() -> None:
    ledger = MemoryLedger(max_records=3)
    for i in range(5):
        ledger.add(_record(Decimal(i), i))
    assert [r.cost_usd for r in ledger.records()] == [2, 3, 4]
    snapshot = ledger.records()
    ledger.add(_record(Decimal(9), 9))
    assert [r.cost_usd for r in snapshot] == [2, 3, 4]  # an iterator taken earlier is unaffected


def test_record_flags() -> None:
    retried = _record(Decimal(1), 1)
    assert retried.retried and retried.attempt == 1
    assert not _record(Decimal(1), 0).retried
    assert retried.model == "gpt-4o-mini-2024-07-18"
    anonymous = SpendRecord(time=0, endpoint="responses", base_url="", model_requested=None, model_sent=None,
                            model_answered=None, usage=Usage(), cost_usd=Decimal(0), latency_s=0)
    assert anonymous.model == "unknown"
    assert Usage(input_tokens=3, output_tokens=4).total_tokens == 7


def test_a_forked_child_gets_its_own_queue_before_its_threads_add_records(tmp_path: Path) -> None:
    """gunicorn --preload with threaded workers: a child's first records came from several threads at once, and
    each could restart the ledger it inherited, the second dropping what the first had queued (10 of 300 children
    lost 1 to 15 records). The child's ledger is now restarted at the fork, before any thread runs."""
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.add(SpendRecord(time=0.0, endpoint="chat.completions", base_url="x", model_requested="m", model_sent="m",
                           model_answered="m", usage=Usage(input_tokens=1), cost_usd=Decimal("0.01"), latency_s=0.0,
                           tenant="parent"))
    ledger.flush()
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when the ledger was restarted at the fork and keeps 16 records
        code = 1
        try:
            if ledger._pid == os.getpid() and not ledger.pending:
                barrier = threading.Barrier(16)

                def add() -> None:
                    barrier.wait()
                    ledger.add(SpendRecord(time=0.0, endpoint="chat.completions", base_url="x", model_requested="m",
                                           model_sent="m", model_answered="m", usage=Usage(input_tokens=1),
                                           cost_usd=Decimal("0.01"), latency_s=0.0, tenant="child"))

                threads = [threading.Thread(target=add) for _ in range(16)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                code = 0 if ledger.flush() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("SELECT count(*) FROM spend WHERE tenant = 'child'").fetchone()[0] == 16
