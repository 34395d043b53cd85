"""The SQLite ledger writes off the request path: add() never waits for the file, records are written
in batches by a writer thread, wait in memory while the file is locked, and are written once each."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlite_locks import HOLD_EXCLUSIVE

from llmbudget.calls import SpendRecord, Usage
from llmbudget.ledger.records import SQLiteLedger


def _record(i: int) -> SpendRecord:
    return SpendRecord(time=1000.0 + i, endpoint="chat.completions", base_url="http://127.0.0.1/v1",
                       model_requested="gpt-4o-mini", model_sent="gpt-4o-mini", model_answered="gpt-4o-mini",
                       usage=Usage(input_tokens=10, output_tokens=i), cost_usd=Decimal("0.000001") * i,
                       latency_s=0.01, tenant="acme", request_id=f"r{i}")


def _rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT request_id FROM spend ORDER BY id")]


def _locked(path: Path) -> sqlite3.Connection:
    """Another connection holding the database's write lock."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_add_returns_at_once_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path, timeout=2.0)
    holder = _locked(path)
    started = time.perf_counter()
    for i in range(50):
        ledger.add(_record(i))
    assert time.perf_counter() - started < 0.5  # the writer waits for the lock, not the caller
    assert _rows(path) == []
    holder.execute("COMMIT")
    assert ledger.flush()
    assert _rows(path) == [f"r{i}" for i in range(50)]


def test_records_wait_in_memory_while_the_file_is_locked_and_are_written_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path, timeout=0.1, retry_interval=0.05)
    holder = _locked(path)
    with caplog.at_level(logging.WARNING, logger="llmbudget.ledger"):
        for i in range(20):
            ledger.add(_record(i))
        time.sleep(0.5)  # the writer tries, fails and retries meanwhile
        assert not ledger.flush()
        assert ledger.pending == 20
        holder.execute("COMMIT")
        deadline = time.monotonic() + 5
        while ledger.pending and time.monotonic() < deadline:  # the writer's retry writes them
            time.sleep(0.02)
    assert ledger.pending == 0
    assert _rows(path) == [f"r{i}" for i in range(20)]  # each once, in order
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot be written" in m and "database is locked" in m for m in messages) == 1  # once per outage
    assert any("written again" in m for m in messages)


def test_a_busy_writer_batches_many_records_per_transaction(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path)
    holder = _locked(path)
    for i in range(300):
        ledger.add(_record(i))
    holder.execute("COMMIT")
    assert ledger.flush()
    with sqlite3.connect(path) as conn:
        # every commit appends each page it changed (the table and its two indexes) to the WAL:
        # one commit per record would leave at least 3 frames per record
        frames = conn.execute("PRAGMA wal_checkpoint").fetchone()[1]
    assert _rows(path) == [f"r{i}" for i in range(300)]
    assert frames < 300


def test_the_newest_records_are_kept_when_the_buffer_overflows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path, timeout=0.05, buffer=10, retry_interval=0.05)
    holder = _locked(path)
    with caplog.at_level(logging.WARNING, logger="llmbudget.ledger"):
        for i in range(15):
            ledger.add(_record(i))
    assert "5 oldest record(s) dropped" in caplog.text or "oldest record(s) dropped" in caplog.text
    holder.execute("COMMIT")
    assert ledger.flush()
    rows = _rows(path)
    # the newest ten always survive, in order and once each; a batch the writer had already taken (waiting on
    # the lock) may be written too, or partly dropped with the oldest (it depends on when the writer woke)
    assert rows[-10:] == [f"r{i}" for i in range(5, 15)]
    numbers = [int(row[1:]) for row in rows]
    assert numbers == sorted(set(numbers)) and len(rows) <= 15


def _child_adds(ledger: SQLiteLedger) -> None:
    ledger.add(_record(99))
    for _ in range(200):  # the parent's writer may hold the lock past this ledger's 0.05 s wait
        if ledger.flush():
            return
        time.sleep(0.01)
    raise SystemExit(1)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_writes_only_its_own_records(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path, timeout=0.05, retry_interval=0.05)
    holder = _locked(path)
    for i in range(3):
        ledger.add(_record(i))  # queued in the parent when it forks
    holder.execute("COMMIT")
    child = multiprocessing.get_context("fork").Process(target=_child_adds, args=(ledger,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert ledger.flush()
    assert sorted(_rows(path)) == ["r0", "r1", "r2", "r99"]  # the parent's three once, not again by the child


def test_records_reads_what_this_process_queued(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    for i in range(5):
        ledger.add(_record(i))
    assert [r.request_id for r in ledger.records()] == [f"r{i}" for i in range(5)]


_ENDS_DURING_AN_OUTAGE = """
import sys
from decimal import Decimal
from llmbudget.calls import SpendRecord, Usage
from llmbudget.ledger.records import SQLiteLedger
ledger = SQLiteLedger(sys.argv[1], timeout=0.2)
for i in range(3):
    ledger.add(SpendRecord(time=1000.0 + i, endpoint="chat.completions", base_url="http://127.0.0.1/v1",
                           model_requested="m", model_sent="m", model_answered="m", usage=Usage(10, i),
                           cost_usd=Decimal("0.01"), latency_s=0.01, tenant="acme", request_id=f"gone{i}"))
"""


def test_records_a_process_could_not_write_before_it_ended_are_kept_and_written_once(tmp_path: Path) -> None:
    """A worker ending (a deploy, a recycle) while the ledger's file was locked or its disk full lost the records
    that waited in memory, with nothing logged; they are kept beside the ledger and written by the next process."""
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    made = "import sys; from llmbudget.ledger import SQLiteLedger; SQLiteLedger(sys.argv[1]).flush()"
    subprocess.run([sys.executable, "-c", made, str(path)], check=True, timeout=60)  # no connection here holds it
    holder = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        ended = subprocess.run([sys.executable, "-c", _ENDS_DURING_AN_OUTAGE, str(path)], capture_output=True,
                               text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert ended.returncode == 0 and "3 spend record(s) could not be written" in ended.stderr
    (kept,) = tmp_path.glob("ledger.db.records-*.jsonl")
    assert str(kept) in ended.stderr and len(kept.read_text().splitlines()) == 3
    copy = kept.read_bytes()
    SQLiteLedger(path)  # the next process to open the ledger writes them
    assert _rows(path) == ["gone0", "gone1", "gone2"] and not kept.exists()
    kept.write_bytes(copy)  # removing the file failed after its records were written (a crash): not twice
    ledger = SQLiteLedger(path)
    assert _rows(path) == ["gone0", "gone1", "gone2"] and not kept.exists()
    (tmp_path / "ledger.db.records-1-x.jsonl").write_text('{"not": "a record"}\n' + copy.decode().splitlines()[0])
    ledger._write_kept(force=True)  # a damaged line is left out, the others written
    assert _rows(path) == ["gone0", "gone1", "gone2", "gone0"]


_LOCK_GOES_DURING_EXIT = """
import atexit, subprocess, sys, time
path, hold = sys.argv[1], sys.argv[2]
holder = subprocess.Popen([sys.executable, "-c", hold, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "locked"

def another_librarys_exit_work():  # registered first: runs after the ledger's exit hook
    holder.kill()
    holder.wait()
    time.sleep(1.5)  # the ledger's writer thread still runs, and the file answers now

atexit.register(another_librarys_exit_work)
from decimal import Decimal  # (llmbudget imported after: its exit hook runs first)
from llmbudget.calls import SpendRecord, Usage
from llmbudget.ledger.records import SQLiteLedger
ledger = SQLiteLedger(path, timeout=0.2, retry_interval=0.3)
for i in range(3):
    ledger.add(SpendRecord(time=1000.0 + i, endpoint="chat.completions", base_url="http://127.0.0.1/v1",
                           model_requested="m", model_sent="m", model_answered="m", usage=Usage(10, i),
                           cost_usd=Decimal("0.01"), latency_s=0.01, tenant="acme", request_id=f"gone{i}"))
time.sleep(0.5)
"""


def test_records_kept_at_exit_are_not_also_written_by_the_writer_thread(tmp_path: Path) -> None:
    """The records kept in a file at exit stayed queued: the writer thread, still running while other exit hooks
    ran, wrote them once the file answered, and the next process wrote the kept file too (each record twice)."""
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    made = "import sys; from llmbudget.ledger import SQLiteLedger; SQLiteLedger(sys.argv[1]).flush()"
    subprocess.run([sys.executable, "-c", made, str(path)], check=True, timeout=60)
    ended = subprocess.run([sys.executable, "-c", _LOCK_GOES_DURING_EXIT, str(path), HOLD_EXCLUSIVE],
                           capture_output=True, text=True, timeout=60)
    assert ended.returncode == 0, ended.stderr
    SQLiteLedger(path)  # writes what was kept, if anything was
    assert sorted(_rows(path)) == ["gone0", "gone1", "gone2"]
