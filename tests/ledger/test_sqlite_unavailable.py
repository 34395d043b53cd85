"""A SQLite budget store that cannot be written (locked, disk full) is enforced, waits boundedly, logs the cause."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest
from fail_open import assert_a_killed_hold_is_counted_and_charged
from sqlite_locks import HOLD_EXCLUSIVE

import llmbudget
from llmbudget.config import engine_from_config
from llmbudget.ledger import spool
from llmbudget.ledger.budgets import (
    SQLITE_TIMEOUT_S,
    Budget,
    BudgetStoreUnavailable,
    Refusal,
    Reservation,
    SQLiteBudgetStore,
    WouldWait,
    no_wait,
)

HI = [{"role": "user", "content": "Say hi"}]
LOG = "llmbudget.ledger.budgets"
_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def _bucket(usd: str = "1", on_unavailable: str | None = None):  # type: ignore[no-untyped-def]
    budget = Budget(usd, per="global", period="day", on_unavailable=on_unavailable)  # type: ignore[arg-type]
    return budget.bucket(tenant="t", request_id="r", now=time.time())


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A database file whose write lock another process holds until the test writes a line to its stdin."""
    path = tmp_path / "budgets.db"
    SQLiteBudgetStore(path)  # the schema exists before the lock is taken
    with _holding(path) as holder:
        yield path, holder


@contextmanager
def _holding(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the file's write lock until :func:`_release` (or the end of the block)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    holder.wait(timeout=10)


def _fill_disk(store: SQLiteBudgetStore) -> sqlite3.Connection:
    """Make every further write to the store's file fail with SQLITE_FULL ("database or disk is full")."""
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    rows = {  # fill every b-tree (each table and index has pages of its own), big rows first, then small ones
        "INSERT INTO budget_counters VALUES (?, '0', '0')": lambda key: (key,),
        "INSERT INTO budget_reservations VALUES (?, '[]', '0', 1e12, 'settled')": lambda key: (key,),
    }
    n = 0
    for sql, args in rows.items():
        for pad in (200, 40, 8, 1):
            failures = 0
            while failures < 3:
                n += 1
                try:
                    conn.execute(sql, args(f"{n:x}".rjust(pad, "f")))
                except sqlite3.OperationalError as exc:
                    assert "full" in str(exc)
                    failures += 1
    return conn


# -- a lock another process holds -----------------------------------------------------------------


def test_the_lock_wait_is_bounded_and_documented() -> None:
    assert SQLITE_TIMEOUT_S <= 10
    assert SQLiteBudgetStore(":memory:").timeout == SQLITE_TIMEOUT_S


def test_a_locked_file_refuses_within_the_wait(lock_holder, caplog) -> None:  # type: ignore[no-untyped-def]
    path, _ = lock_holder
    store = SQLiteBudgetStore(path, timeout=0.3)
    caplog.set_level(logging.WARNING, logger=LOG)
    started = time.monotonic()
    with pytest.raises(BudgetStoreUnavailable) as caught:
        store.reserve([_bucket()], Decimal("0.1"))
    assert time.monotonic() - started < 3  # 0.3 s, not the 30 s it used to wait
    assert "database is locked" in str(caught.value) and "0.3 s" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert json.loads(caught.value.to_json())["error"]["llmbudget"]["store"] == "sqlite"
    started = time.monotonic()
    with pytest.raises(BudgetStoreUnavailable) as again:  # within retry_interval: refused at once, same cause
        store.reserve([_bucket()], Decimal("0.1"))
    assert time.monotonic() - started < 0.2 and "database is locked" in str(again.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "database is locked" in warnings[0]  # once per outage, with the cause


def test_threads_waiting_for_a_locked_file_wait_at_most_the_timeout_in_all(lock_holder) -> None:  # type: ignore[no-untyped-def]
    """A thread waited ``timeout`` for this process's lock while the thread before it waited in SQLite, then
    ``timeout`` again in SQLite's busy handler: twice the bound README gives."""
    path, _ = lock_holder
    store = SQLiteBudgetStore(path, timeout=1.0)
    took: list[float] = []

    def reserve() -> None:
        started = time.monotonic()
        with pytest.raises(BudgetStoreUnavailable):
            store.reserve([_bucket()], Decimal("0.1"))
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=reserve) for _ in range(4)]
    for thread in threads:  # the later ones get this process's lock as the first gives up
        thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    assert len(took) == 4 and max(took) < 1.5, took  # each within the timeout (and the scheduler's slack)


def test_a_locked_file_serves_when_open_and_writes_the_settle_later(lock_holder) -> None:  # type: ignore[no-untyped-def]
    path, holder = lock_holder
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2&open_share=1", retry_interval=0)
    bucket = _bucket("1")
    started = time.monotonic()
    held = store.reserve([bucket], Decimal("0.6"))
    assert isinstance(held, Reservation) and time.monotonic() - started < 3
    assert isinstance(store.reserve([bucket], Decimal("0.6")), Refusal)  # counted in this process meanwhile
    store.settle(held, Decimal("0.5"))
    assert store.pending_settles == 1
    _release(holder)
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)  # the file answers again
    assert store.pending_settles == 0
    spent, reserved = SQLiteBudgetStore(path).spent(bucket.key)
    assert (spent, reserved) == (Decimal("0.5"), Decimal("0.1"))  # the served call is charged, once
    store.settle(held, Decimal("0.5"))
    assert SQLiteBudgetStore(path).spent(bucket.key)[0] == Decimal("0.5")


def test_settles_that_waited_are_written_in_a_few_transactions(lock_holder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each settle that waited was written in a transaction of its own (an fsync each): 10,000 held the calls
    that wrote them for seconds once the file answered."""
    path, holder = lock_holder
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2&open_share=1", retry_interval=0)
    bucket = _bucket("1000")
    for _ in range(600):
        held = store.reserve([bucket], Decimal("0.01"))
        assert isinstance(held, Reservation)
        store.settle(held, Decimal("0.01"))
    assert store.pending_settles == 600
    _release(holder)
    transactions = []
    real = store._transaction
    monkeypatch.setattr(store, "_transaction", lambda work: (transactions.append(1), real(work))[1])
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # the file answers: written
    assert store.pending_settles == 0 and len(transactions) <= 3 + 1  # 256 at a time, then the reserve
    assert SQLiteBudgetStore(path).spent(bucket.key)[0] == Decimal("6.00")


_SPEND_WHILE_LOCKED = """
import sys, time
from decimal import Decimal
from llmbudget.ledger.budgets import Budget, Reservation, SQLiteBudgetStore
store = SQLiteBudgetStore(sys.argv[1] + "?on_unavailable=open&timeout=0.2")
bucket = Budget("1", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())
held = store.reserve([bucket], Decimal("0.2"))
assert isinstance(held, Reservation), held
store.settle(held, Decimal("0.2"))
assert store.pending_settles == 1
"""


@pytest.mark.parametrize("ending", ["exit", "os._exit"])
def test_settles_a_process_could_not_write_by_its_exit_are_written_by_the_next(lock_holder, ending) -> None:  # type: ignore[no-untyped-def]
    """A fail-open process that ended while the file was locked lost the settles it had not written: the spend
    was never charged, and the process after it (a recycled worker) got a fresh open_share of the limit. A pool
    worker ends by ``os._exit``, without exit hooks: each settle is kept on disk as it starts to wait."""
    path, holder = lock_holder
    # made before the other process ends, as a worker forked from a preloaded app has its store
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2", retry_interval=0)
    script = _SPEND_WHILE_LOCKED + ("import os; os._exit(0)\n" if ending == "os._exit" else "")
    child = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert ("kept in" in child.stderr) is (ending == "exit")  # (no exit hook runs on os._exit)
    assert len(list(path.parent.glob("budgets.db.pending-*.jsonl"))) == 1
    bucket = _bucket("1")
    # still locked: 0.75 (the floor of a process that may spend open_share, 0.25) + 0.2 spent before + 0.1 > 1
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Refusal)
    served = store.reserve([bucket], Decimal("0.05"))
    assert isinstance(served, Reservation)
    # the other process's file is left (this one's own, made as it served, keeps what it will spend)
    assert store.pending_settles == 0 and len(set(path.parent.glob("budgets.db.pending-*.jsonl")) -
                                              {store._journal.own_path}) == 1
    _release(holder)
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # the file answers: written
    assert store.pending_settles == 0 and [p.name for p in path.parent.glob("budgets.db.pending-*")] == [
        store._journal.own_path.name]  # its own, with the hold of its call in flight
    store.settle(served, Decimal("0.05"))
    assert not list(path.parent.glob("budgets.db.pending-*"))  # nothing left to keep
    assert SQLiteBudgetStore(path).spent(bucket.key)[0] == Decimal("0.25")  # the earlier process's call, charged


def test_a_hold_a_process_killed_while_the_file_was_down_is_counted_and_charged_what_it_held(lock_holder) -> None:  # type: ignore[no-untyped-def]
    """Fail-open holds lived in memory only: a worker SIGKILLed with calls in flight left no trace of them, the
    next worker got a fresh share, and the calls the provider billed were never charged."""
    path, holder = lock_holder
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2", retry_interval=0)
    assert_a_killed_hold_is_counted_and_charged(
        store, 'SQLiteBudgetStore(sys.argv[1] + "?on_unavailable=open&timeout=0.2")', str(path),
        lambda: _release(holder), lambda key: SQLiteBudgetStore(path).spent(key)[0])


_SETTLE_QUEUED_AND_DIE = """
import os, signal, sqlite3, sys, time
from decimal import Decimal
from llmbudget.ledger.budgets import Budget, Reservation, SQLiteBudgetStore
path = sys.argv[1]
store = SQLiteBudgetStore(path + "?on_unavailable=open&timeout=0.2", retry_interval=0, settle_delay=30)
bucket = Budget("1", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())
locker = sqlite3.connect(path, isolation_level=None)
locker.execute("BEGIN EXCLUSIVE")
held = store.reserve([bucket], Decimal("0.2"))
assert isinstance(held, Reservation) and held.id.startswith("local-"), held
locker.execute("COMMIT")
assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # the file answers again
store.settle(held, Decimal("0.2"))  # queued for the writer thread (settle_delay)
os.kill(os.getpid(), signal.SIGKILL)  # killed before it wrote it
"""


def test_a_hold_settled_but_not_yet_written_when_its_process_is_killed_is_still_charged(tmp_path: Path) -> None:
    """Its row on disk was dropped as the settle was queued, before it was written: killed in between, the call
    the provider billed was charged nothing."""
    path = tmp_path / "budgets.db"
    SQLiteBudgetStore(path)
    child = subprocess.run([sys.executable, "-c", _SETTLE_QUEUED_AND_DIE, str(path)], capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    bucket = _bucket("1")
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2", retry_interval=0)
    assert isinstance(store.reserve([bucket], Decimal("0.001")), Reservation)  # the killed process's file taken
    assert SQLiteBudgetStore(path).spent(bucket.key)[0] == Decimal("0.2")


def test_a_hold_whose_settle_another_thread_is_writing_keeps_its_row(lock_holder) -> None:  # type: ignore[no-untyped-def]
    """One thread's written settle removed the file while another's settle of a fail-open hold was taken but not
    yet written: killed then, that billed call was charged nothing."""
    path, holder = lock_holder
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2&open_share=1", retry_interval=0,
                              settle_delay=30)
    bucket = _bucket("1")
    first, second = (store.reserve([bucket], Decimal("0.3")), store.reserve([bucket], Decimal("0.2")))
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    _release(holder)
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # the file answers again
    store.settle(first, Decimal("0.3"))
    taken = store._take_settles()  # another thread's: taken to be written, not written yet
    store.settle(second, Decimal("0.2"))
    store.flush()  # this one written
    journal = store._journal.own_path
    assert journal is not None and journal.exists()
    rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    assert [row["actual"] for row in rows if row["id"] == first.id][-1] == "0.3"  # its hold, still charged if killed
    store._return_settles(taken)
    store.flush()
    assert not journal.exists()  # both written: nothing left to keep


def test_settles_left_at_exit_are_written_there_when_the_file_answers_again(tmp_path: Path) -> None:
    """At exit, settles that waited for a file which answered again meanwhile were kept for the next process
    instead of written."""
    path = tmp_path / "budgets.db"
    SQLiteBudgetStore(path)
    script = _SPEND_WHILE_LOCKED.replace("assert store.pending_settles == 1", "assert store.pending_settles == 1\n"
                                         "sys.stdin.readline()  # the lock goes meanwhile")
    with _holding(path) as holder:
        child = subprocess.Popen([sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(2)  # it reserves and settles while the file is locked
        _release(holder)
    _, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 0, err
    assert "kept in" not in err and not list(tmp_path.glob("budgets.db.pending-*"))
    assert SQLiteBudgetStore(path).spent(_bucket("1").key)[0] == Decimal("0.2")


def test_kept_settles_count_once_and_damaged_ones_are_skipped(lock_holder, caplog) -> None:  # type: ignore[no-untyped-def]
    """A child forked with settles waiting keeps them too (two files with the same settle: counted twice); a
    damaged row stopped the store from starting, "NaN" was committed as a spend, and a byte that was not UTF-8
    lost the whole file."""
    path, holder = lock_holder
    bucket = _bucket("1")
    row = {"id": "local-x1", "keys": [bucket.key], "amount": "0.2", "actual": "0.2"}  # served while it was down
    damaged = [{**row, "id": "x2", "amount": [1, 2]}, {**row, "id": "x3", "actual": "NaN"},
               {**row, "id": "x4", "actual": "-1"}, {"id": "x5"}]
    for n, rows in enumerate(([row], [row], damaged)):  # files of processes that have ended (no such pid)
        lines = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        (path.parent / f"budgets.db.pending-99999999{n}-abcd.jsonl").write_bytes(b"\xff\xfe not utf-8\n" + lines)
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.2", retry_interval=0)
    caplog.set_level(logging.WARNING)
    served = store.reserve([bucket], Decimal("0.05"))  # 0.75 + 0.2 (once) + 0.05
    assert isinstance(served, Reservation)
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Refusal)
    assert "does not read" in caplog.text and "not a budget settle" in caplog.text
    _release(holder)
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)
    assert SQLiteBudgetStore(path).spent(bucket.key)[0] == Decimal("0.2")
    store.settle(served, Decimal("0.05"))
    assert not list(path.parent.glob("budgets.db.pending-*"))


def test_a_fresh_process_fails_open_from_the_spend_it_reads_and_within_its_share(tmp_path: Path) -> None:
    """A process that never read the budget (a recycled worker) while another holds the lock: it reads the
    spend the file still shows, and spends at most open_share of the limit during the outage either way."""
    path = tmp_path / "budgets.db"
    bucket = _bucket("1")
    before = SQLiteBudgetStore(path)
    held = before.reserve([bucket], Decimal("0.95"))
    assert isinstance(held, Reservation)
    before.settle(held, Decimal("0.95"))
    with _holding(path):
        fresh = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.1", retry_interval=60)
        assert isinstance(fresh.reserve([bucket], Decimal("0.10")), Refusal)  # $0.05 left, as the file says
        other = Budget("1", per="tenant", period="day").bucket(tenant="new", request_id="r", now=time.time())
        fresh_again = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.1", retry_interval=60)
        served = 0
        while isinstance(fresh_again.reserve([other], Decimal("0.05")), Reservation):
            served += 1
        assert served == 5  # a budget nobody spent: 0.25 of its limit in this process while the file is down
    with pytest.raises(ValueError, match="open_share"):
        SQLiteBudgetStore(f"{path}?open_share=0")


def test_a_process_that_read_the_spend_before_reads_it_again_while_the_file_still_reads(tmp_path: Path) -> None:
    """Its last read was stale: another process spent since. Read again during the outage (a held lock stops
    writes, not reads), as README says; counted from the stale read, $1.10 of a $1 budget was spent."""
    path = tmp_path / "budgets.db"
    bucket = _bucket("1")
    this = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.1", retry_interval=60)
    mine = this.reserve([bucket], Decimal("0.01"))
    assert isinstance(mine, Reservation)
    this.settle(mine, Decimal("0.01"))  # this process last read $0.01 spent
    other = SQLiteBudgetStore(path)
    theirs = other.reserve([bucket], Decimal("0.84"))
    assert isinstance(theirs, Reservation)
    other.settle(theirs, Decimal("0.84"))  # $0.85 spent in the file
    with _holding(path):
        served = Decimal(0)
        while isinstance(this.reserve([bucket], Decimal("0.05")), Reservation):
            served += Decimal("0.05")
            assert served < 1, "never refused"
    assert served == Decimal("0.15")  # what the file says is left, not what the stale read left ($0.25)




@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_store_and_a_ledger_made_while_their_file_cannot_be_opened_start_as_unavailable(
        tmp_path: Path, mode: str, caplog) -> None:  # type: ignore[no-untyped-def]
    """A worker restarted during an outage (a lock nobody else can read past, a full disk): the store could not
    be made, so the app could not start, even with on_unavailable="open"; it now starts as unavailable."""
    from llmbudget.ledger import SQLiteLedger

    path, ledger_path = tmp_path / "budgets.db", tmp_path / "ledger.db"
    made = ("import sys; from llmbudget.ledger import SQLiteBudgetStore, SQLiteLedger; "
            "SQLiteBudgetStore(sys.argv[1]); SQLiteLedger(sys.argv[2]).flush()")  # files no connection here holds
    subprocess.run([sys.executable, "-c", made, str(path), str(ledger_path)], check=True, timeout=60)
    holders = [subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(p)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for p in (path, ledger_path)]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = SQLiteBudgetStore(f"{path}?on_unavailable={mode}&timeout=1", retry_interval=60)
        ledger = SQLiteLedger(ledger_path, timeout=0.2)
        assert "cannot be written" in caplog.text and "is unavailable" in caplog.text
        began = time.monotonic()
        if mode == "closed":
            with pytest.raises(BudgetStoreUnavailable, match="locked"):
                store.reserve([_bucket("1")], Decimal("0.10"))
        else:  # served within its share of the limit
            assert isinstance(store.reserve([_bucket("1")], Decimal("0.25")), Reservation)
            assert isinstance(store.reserve([_bucket("1")], Decimal("0.01")), Refusal)
        # neither waits for the lock (the store's timeout) before retry_interval: reading the spend again
        # waited it on every fail-open call, since this lock stops reads too
        assert time.monotonic() - began < 0.5
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert ledger.flush() or ledger.flush()  # the file answers again: written
    with pytest.raises(sqlite3.DatabaseError):  # a file that is not SQLite's is a mistake, said at start-up
        (tmp_path / "notes.db").write_text("not a database" * 100)
        SQLiteBudgetStore(tmp_path / "notes.db")


_OTHER_PROCESS = """
import sys, time
from decimal import Decimal
from llmbudget.ledger.budgets import Budget, SQLiteBudgetStore
bucket = Budget("10", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())
store = SQLiteBudgetStore(f"{sys.argv[1]}?on_unavailable=open&timeout=0.1", retry_interval=0)
held = store.reserve([bucket], Decimal("1.00"))
store.settle(held, Decimal("1.00"))  # during the outage: it waits, kept on disk for the others to count
print("settled", store.pending_settles, flush=True)
sys.stdin.readline()  # the file answers again
store.reserve([bucket], Decimal("0.01"))  # its waiting settle is written first
print("written", store.pending_settles, flush=True)
sys.stdin.readline()
"""


def test_a_settle_another_process_kept_and_then_wrote_counts_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Reading the spend again found the other process's settle in the file, and it was still counted as waiting
    (read from its spool file at the last retry): $9.01 of $10 spent, a call of $0.50 refused. The waiting settles
    are read again with the file at most every _PEEK_S (1 s; 0 here): until then, counted twice."""
    from llmbudget.ledger import budgets

    monkeypatch.setattr(budgets, "_PEEK_S", 0.0)
    path = tmp_path / "budgets.db"
    bucket = Budget("10", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())
    this = SQLiteBudgetStore(f"{path}?on_unavailable=open&timeout=0.1", retry_interval=60)
    held = this.reserve([bucket], Decimal("8.00"))
    assert isinstance(held, Reservation)
    this.settle(held, Decimal("8.00"))
    with _holding(path) as holder:
        other = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, str(path)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout is not None and other.stdout.readline().split() == ["settled", "1"]
            mine = this.reserve([bucket], Decimal("0.01"))  # the outage: this process counts the other's $1
            assert isinstance(mine, Reservation)
            this.settle(mine, Decimal("0.01"))
            _release(holder)
            assert other.stdin is not None
            other.stdin.write("go\n")
            other.stdin.flush()
            assert other.stdout.readline().split() == ["written", "0"]
            # this process still fails open (its retry_interval): $8 + $1 + $0.01 = $9.01 spent
            assert isinstance(this.reserve([bucket], Decimal("0.50")), Reservation)
        finally:
            other.kill()
            other.wait()


def test_a_budget_can_choose_for_itself(lock_holder) -> None:  # type: ignore[no-untyped-def]
    path, _ = lock_holder
    closed_store = SQLiteBudgetStore(path, timeout=0.1, retry_interval=0)
    assert isinstance(closed_store.reserve([_bucket(on_unavailable="open")], Decimal("0.1")), Reservation)
    open_store = SQLiteBudgetStore(path, timeout=0.1, retry_interval=0, on_unavailable="open")
    with pytest.raises(BudgetStoreUnavailable):
        open_store.reserve([_bucket(on_unavailable="closed")], Decimal("0.1"))


def _python_work() -> int:
    total = 0
    for i in range(3000):  # bytecode, holding the GIL, as an app's code does
        total += i
    return total


def test_threads_of_one_process_never_starve_each_other_of_the_lock(tmp_path: Path) -> None:
    """Exact accounting under load (32 threads and an event loop settling on a store that never waits there).

    SQLite's busy handler sleeps and retries: with connections that never wait (the event loop's) taking
    the lock between its tries, a thread could wait past the timeout, and calls were refused (503) with the
    file merely busy."""
    store = SQLiteBudgetStore(tmp_path / "budgets.db", timeout=1)
    bucket = _bucket("1000")
    refused: list[BaseException] = []

    def calls() -> None:
        for _ in range(150):
            try:
                held = store.reserve([bucket], Decimal("0.001"))
                assert isinstance(held, Reservation)
                _python_work()  # the app's own, between reserving and settling
                store.settle(held, Decimal("0.0005"))
            except BudgetStoreUnavailable as exc:
                refused.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(32)]
    for thread in threads:
        thread.start()
    on_loop = 0
    for _ in range(1500):  # an event loop's settles and reservations, which never wait, between them
        _python_work()
        try:
            with no_wait():
                held = store.reserve([bucket], Decimal("0.001"))
                assert isinstance(held, Reservation)
                store.settle(held, Decimal("0.0005"))
                on_loop += 1
        except WouldWait:
            pass
        except BudgetStoreUnavailable as exc:
            refused.append(exc)
    for thread in threads:
        thread.join()
    store.flush()
    assert refused == []
    assert store.spent(bucket.key) == (Decimal("2.4") + on_loop * Decimal("0.0005"), Decimal(0))


# -- on the event loop (no_wait): never waiting for the lock ---------------------------------------


def test_inside_no_wait_a_locked_file_raises_would_wait_at_once(lock_holder, caplog) -> None:  # type: ignore[no-untyped-def]
    path, holder = lock_holder
    store = SQLiteBudgetStore(path, timeout=5)
    caplog.set_level(logging.WARNING, logger=LOG)
    started = time.monotonic()
    with no_wait(), pytest.raises(WouldWait):
        store.reserve([_bucket()], Decimal("0.1"))
    assert time.monotonic() - started < 1  # not the 5 s lock wait
    assert caplog.records == []  # busy is not unavailable: nothing logged, the store is not marked down
    _release(holder)
    bucket = _bucket()
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)
    assert store.spent(bucket.key) == (Decimal(0), Decimal("0.1"))  # only the reservation made after it


def test_inside_no_wait_a_settle_the_locked_file_cannot_take_goes_to_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "budgets.db"
    store = SQLiteBudgetStore(path, timeout=5)
    bucket = _bucket()
    held = store.reserve([bucket], Decimal("0.3"))
    assert isinstance(held, Reservation)
    with _holding(path) as holder:
        started = time.monotonic()
        with no_wait():
            store.settle(held, Decimal("0.2"))
        assert time.monotonic() - started < 1 and store.pending_settles == 1
        _release(holder)
        deadline = time.monotonic() + 10
        while store.pending_settles and time.monotonic() < deadline:  # the writer thread got the lock
            time.sleep(0.01)
    assert store.pending_settles == 0
    assert SQLiteBudgetStore(path).spent(bucket.key) == (Decimal("0.2"), Decimal(0))


def test_a_waiting_thread_gets_the_lock_from_connections_that_never_wait(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SQLite's busy handler sleeps between tries: against a no-wait connection that takes the lock again at
    once, a thread waited past the timeout and its calls were refused (503) with the file merely busy."""
    store = SQLiteBudgetStore(tmp_path / "budgets.db", timeout=0.5)
    bucket = _bucket("1000")
    reserve_in = SQLiteBudgetStore._reserve_in

    def slow(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "hog":
            time.sleep(0.003)  # holds the lock most of the time
        return reserve_in(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteBudgetStore, "_reserve_in", slow)
    stop = threading.Event()

    def hog() -> None:  # an event loop reserving as fast as it can
        while not stop.is_set():
            try:
                with no_wait():
                    held = store.reserve([bucket], Decimal("0.001"))
                    assert isinstance(held, Reservation)
                    store.settle(held, Decimal(0))
            except WouldWait:
                time.sleep(0)

    hogger = threading.Thread(target=hog, name="hog")
    hogger.start()
    refused = 0
    try:
        time.sleep(0.05)
        for _ in range(10):
            try:
                held = store.reserve([bucket], Decimal("0.001"))
                assert isinstance(held, Reservation)
                store.settle(held, Decimal("0.001"))
            except BudgetStoreUnavailable:
                refused += 1
    finally:
        stop.set()
        hogger.join()
    assert refused == 0
    assert store.spent(bucket.key) == (Decimal("0.010"), Decimal(0))


def test_async_calls_budget_on_the_event_loop_and_wait_for_a_busy_file_off_it(tmp_path: Path, engine) -> None:  # type: ignore[no-untyped-def]
    """No thread hop per call (it doubled the CPU of a busy server), and a lock held elsewhere never stalls the loop."""
    path = tmp_path / "budgets.db"
    store = SQLiteBudgetStore(path, timeout=5)
    llmbudget.set_engine(llmbudget.Engine(hosts=["llm.test"], budget_store=store,
                                          budgets=[Budget("1", per="tenant", period="day")]))
    reserved_in: list[int] = []
    reserve = store.reserve

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        reserved_in.append(threading.get_ident())
        return reserve(*args, **kwargs)

    store.reserve = watched  # type: ignore[method-assign]

    async def call(client: openai.AsyncOpenAI) -> None:
        answer = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2)
        assert answer.choices[0].message.content == "hi"

    async def main(holder: subprocess.Popen[str] | None) -> tuple[int, int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with openai.AsyncOpenAI(base_url="http://llm.test/v1", api_key="sk-test", max_retries=0,
                                      http_client=llmbudget.async_http_client(
                                          transport=httpx2.MockTransport(_answer))) as client:
            running = asyncio.ensure_future(ticker())
            if holder is not None:
                asyncio.get_running_loop().call_later(0.5, _release, holder)
            started = time.monotonic()
            await call(client)
            took = time.monotonic() - started
            running.cancel()
            return threading.get_ident(), ticks, took

    loop_thread, _, _ = asyncio.run(main(None))
    assert reserved_in == [loop_thread]  # free file: on the event loop
    with _holding(path) as holder:
        loop_thread, ticks, took = asyncio.run(main(holder))
    assert took >= 0.4  # the call waited for the lock ...
    assert reserved_in[1] == loop_thread and reserved_in[2] != loop_thread  # ... in a worker thread,
    assert ticks >= 20  # while the event loop went on
    tenant = Budget("1", per="tenant", period="day").bucket(tenant=llmbudget.get_engine().default_tenant,
                                                             request_id="-", now=time.time())
    spent, reserved = store.spent(tenant.key)
    assert spent > 0 and reserved == 0 and store.pending_settles == 0  # both calls charged, every hold settled


# -- a disk that is full --------------------------------------------------------------------------


def test_a_full_disk_is_enforced_and_logged_with_its_cause(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteBudgetStore(tmp_path / "budgets.db", retry_interval=0)
    _fill_disk(store)
    caplog.set_level(logging.WARNING, logger=LOG)
    served = 0
    for _ in range(20):  # a budget that fits 5
        with pytest.raises(BudgetStoreUnavailable) as caught:
            served += isinstance(store.reserve([_bucket("1")], Decimal("0.2")), Reservation)
        assert "database or disk is full" in str(caught.value)  # not "cannot rollback"
    assert served == 0
    text = caplog.text
    assert "database or disk is full" in text and "cannot rollback" not in text
    assert text.count("is unavailable") == 1


def test_a_full_disk_when_open_counts_locally_from_the_last_spend_read(tmp_path: Path) -> None:
    store = SQLiteBudgetStore(tmp_path / "budgets.db", on_unavailable="open", retry_interval=0, open_share=1.0)
    bucket = _bucket("1")
    for _ in range(2):  # $0.40 spent before the disk fills
        reservation = store.reserve([bucket], Decimal("0.2"))
        assert isinstance(reservation, Reservation)
        store.settle(reservation, Decimal("0.2"))
    store.flush()
    conn = _fill_disk(store)
    results = [store.reserve([bucket], Decimal("0.2")) for _ in range(18)]
    served = [r for r in results if isinstance(r, Reservation)]
    assert len(served) == 3 and all(isinstance(r, Refusal) for r in results[3:])
    for reservation in served:
        store.settle(reservation, Decimal("0.2"))
    store.settle(served[0], Decimal("0.2"))  # settled again while it waits: it waits once, counted once
    assert store.pending_settles == 3
    conn.execute("PRAGMA max_page_count=1073741823")  # space again
    assert isinstance(store.reserve([bucket], Decimal("0")), Reservation)
    assert store.pending_settles == 0 and store.spent(bucket.key)[0] == Decimal("1.0")


class _Upstream(httpx2.BaseTransport):
    """A provider that answers every chat completion (sync only, unlike httpx2.MockTransport)."""

    def __init__(self) -> None:
        self.sent: list[httpx2.Request] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        return _answer(request)


def _openai(upstream: _Upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://llm.test/v1", api_key="sk-test", max_retries=3,
                         http_client=llmbudget.http_client(transport=upstream))


def _answer(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    })


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_the_call_is_refused_with_a_503_not_served_unbudgeted(tmp_path: Path, engine, caplog, mode) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "budgets.db"
    store = SQLiteBudgetStore(path if mode == "closed" else f"{path}?on_unavailable=open")
    _fill_disk(store)
    llmbudget.set_engine(llmbudget.Engine(hosts=["llm.test"], budget_store=store,
                                          budgets=[Budget("1", per="tenant", period="day")]))
    upstream = _Upstream()
    sent = upstream.sent
    client = _openai(upstream)
    caplog.set_level(logging.WARNING)
    if mode == "open":
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2).choices
        assert len(sent) == 1
        return
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2)
    assert sent == []  # never sent, and not retried by the SDK
    response = caught.value.response
    assert response.status_code == 503 and response.headers["x-llmbudget-refused"] == "budget-store-unavailable"
    error = response.json()["error"]
    assert error["type"] == "budget_store_unavailable" and "database or disk is full" in error["message"]
    assert "unbudgeted" not in caplog.text and "database or disk is full" in caplog.text


# -- configuration --------------------------------------------------------------------------------


def test_options_come_from_the_path_as_from_a_redis_url(tmp_path: Path) -> None:
    engine = engine_from_config({"budget_store": "budgets.db?on_unavailable=open&timeout=2"}, root=tmp_path)
    store = engine.budget_store
    assert isinstance(store, SQLiteBudgetStore)
    assert (store.path, store.on_unavailable, store.timeout) == (tmp_path / "budgets.db", "open", 2.0)
    assert SQLiteBudgetStore(tmp_path / "b.db").on_unavailable == "closed"  # closed by default
    keyword = SQLiteBudgetStore(f"{tmp_path / 'b.db'}?on_unavailable=open", on_unavailable="closed", timeout=1)
    assert (keyword.on_unavailable, keyword.timeout) == ("closed", 1.0)  # keywords win over the path
    for bad, needle in [("b.db?onunavailable=open", "unknown option"), ("b.db?on_unavailable=maybe", "on_unavailable"),
                        ("b.db?timeout=0", "timeout"), ("b.db?timeout=soon", "timeout"),
                        ("b.db?settle_delay=-1", "settle_delay"), ("b.db?settle_delay=later", "settle_delay"),
                        ("b.db?reservation_ttl=0", "reservation_ttl"), ("b.db?reservation_ttl=inf", "reservation_ttl")]:
        with pytest.raises(ValueError, match=needle):
            SQLiteBudgetStore(tmp_path / bad)


# -- when settles are written -----------------------------------------------------------------------


def test_a_settle_is_seen_by_other_processes_at_once_by_default(tmp_path: Path) -> None:
    store, other = SQLiteBudgetStore(tmp_path / "b.db"), SQLiteBudgetStore(tmp_path / "b.db")
    bucket = _bucket("1")
    held = store.reserve([bucket], Decimal("0.6"))
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.1"))
    assert store.pending_settles == 0
    assert other.spent(bucket.key) == (Decimal("0.1"), Decimal("0"))
    assert isinstance(other.reserve([bucket], Decimal("0.6")), Reservation)  # the hold is gone for everyone


def test_a_settle_delay_batches_settles_with_the_next_reserve(tmp_path: Path) -> None:
    store = SQLiteBudgetStore(f"{tmp_path / 'b.db'}?settle_delay=60")
    other = SQLiteBudgetStore(tmp_path / "b.db")
    bucket = _bucket("1")
    held = store.reserve([bucket], Decimal("0.6"))
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.1"))
    assert store.pending_settles == 1
    assert other.spent(bucket.key) == (Decimal("0"), Decimal("0.6"))  # still held elsewhere: early refusal, no overspend
    assert isinstance(other.reserve([bucket], Decimal("0.6")), Refusal)
    assert isinstance(store.reserve([bucket], Decimal("0.2")), Reservation)  # writes the settle in its transaction
    assert store.pending_settles == 0
    assert other.spent(bucket.key) == (Decimal("0.1"), Decimal("0.2"))
    store.settle(held, Decimal("0.1"))  # a second settle of one reservation changes nothing
    store.flush()
    assert other.spent(bucket.key)[0] == Decimal("0.1")


def test_a_queued_settle_is_written_by_the_writer_thread(tmp_path: Path) -> None:
    store = SQLiteBudgetStore(tmp_path / "b.db", settle_delay=0.01)
    bucket = _bucket("1")
    held = store.reserve([bucket], Decimal("0.3"))
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.2"))
    deadline = time.monotonic() + 5
    while store.pending_settles and time.monotonic() < deadline:
        time.sleep(0.01)
    assert SQLiteBudgetStore(tmp_path / "b.db").spent(bucket.key) == (Decimal("0.2"), Decimal("0"))


def test_settles_on_the_event_loop_are_written_together_by_its_next_turn(tmp_path: Path) -> None:
    store = SQLiteBudgetStore(tmp_path / "b.db")
    other = SQLiteBudgetStore(tmp_path / "b.db")
    bucket = _bucket("1")
    commits: list[str] = []

    async def main() -> None:
        with no_wait():
            held = [store.reserve([bucket], Decimal("0.1")) for _ in range(4)]
        store._conn(quick=True).set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        with no_wait():
            for reservation in held[:3]:
                assert isinstance(reservation, Reservation)
                store.settle(reservation, Decimal("0.05"))
        assert store.pending_settles == 3 and not commits  # queued for the end of this turn of the loop
        await asyncio.sleep(0)
        assert store.pending_settles == 0 and commits == ["COMMIT"]  # one transaction for the three
        assert other.spent(bucket.key) == (Decimal("0.15"), Decimal("0.1"))
        with no_wait():  # a reservation in the same turn takes a queued settle along, in its own transaction
            assert isinstance(held[3], Reservation)
            store.settle(held[3], Decimal("0.05"))
            assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)
        assert store.pending_settles == 0 and commits == ["COMMIT"] * 2
        await asyncio.sleep(0)
        assert commits == ["COMMIT"] * 2 and other.spent(bucket.key) == (Decimal("0.20"), Decimal("0.1"))
        third = store.reserve([bucket], Decimal("0.1"))
        assert isinstance(third, Reservation)
        with no_wait():  # a settle that could never be written is refused at once, not lost with its turn's others
            with pytest.raises(TypeError, match="Decimal"):
                store.settle(third, 0.05)  # type: ignore[arg-type]
            store.settle(third, Decimal("0.05"))
        await asyncio.sleep(0)
        assert store.pending_settles == 0 and other.spent(bucket.key) == (Decimal("0.25"), Decimal("0.1"))

    asyncio.run(main())


def test_a_settle_left_by_a_loop_that_closed_is_written_by_the_next_read_or_reserve(tmp_path: Path) -> None:
    store = SQLiteBudgetStore(tmp_path / "b.db")
    bucket = _bucket("1")
    held = store.reserve([bucket], Decimal("0.3"))
    assert isinstance(held, Reservation)
    loop = asyncio.new_event_loop()

    async def settle() -> None:
        with no_wait():
            store.settle(held, Decimal("0.2"))

    loop.run_until_complete(settle())  # its last turn ran the write
    assert store.pending_settles == 0
    second = store.reserve([bucket], Decimal("0.3"))
    assert isinstance(second, Reservation)

    def in_its_last_turn() -> None:
        with no_wait():
            store.settle(second, Decimal("0.1"))
        loop.stop()  # the turn ends, and the loop with it: the write it scheduled never runs

    loop.call_soon(in_its_last_turn)
    loop.run_forever()
    loop.close()
    assert store.pending_settles == 1
    assert SQLiteBudgetStore(tmp_path / "b.db").spent(bucket.key) == (Decimal("0.2"), Decimal("0.3"))  # held
    assert store.spent(bucket.key) == (Decimal("0.3"), Decimal(0)) and store.pending_settles == 0


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_an_unexpected_store_error_refuses_a_fail_closed_budget(tmp_path: Path, engine, caplog, mode) -> None:  # type: ignore[no-untyped-def]
    # Any error but the store's own "unavailable" let the call go ahead unbudgeted, fail-closed or not (a Redis
    # URL option redis-py does not take made every command raise TypeError).
    class Broken(SQLiteBudgetStore):
        def reserve(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise TypeError("AbstractConnection.__init__() got an unexpected keyword argument 'timeout'")

    store = Broken(tmp_path / "budgets.db", on_unavailable=mode)
    llmbudget.set_engine(llmbudget.Engine(hosts=["llm.test"], budget_store=store,
                                          budgets=[Budget("1", per="tenant", period="day")]))
    upstream = _Upstream()
    client = _openai(upstream)
    if mode == "open":
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2).choices
        assert len(upstream.sent) == 1 and "goes ahead unbudgeted" in caplog.text
        return
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2)
    assert upstream.sent == [] and caught.value.response.status_code == 503
    assert "unexpected keyword argument" in caught.value.response.json()["error"]["message"]


def test_the_hold_of_a_killed_process_is_charged_after_the_policys_reservation_ttl(tmp_path: Path) -> None:
    """reservation_ttl could be set in Python only: from a policy file, a killed worker's holds waited 600 s. Once
    expired, a hold is charged what it held (its call may have been served), no longer released."""
    engine = engine_from_config({"budget_store": "budgets.db?reservation_ttl=1"}, root=tmp_path)
    store = engine.budget_store
    assert isinstance(store, SQLiteBudgetStore) and store.reservation_ttl == 1.0
    assert SQLiteBudgetStore(tmp_path / "b.db").reservation_ttl == 600.0
    assert SQLiteBudgetStore(f"{tmp_path / 'b.db'}?reservation_ttl=5", reservation_ttl=7).reservation_ttl == 7.0
    bucket = _bucket("1")
    assert isinstance(store.reserve([bucket], Decimal(1)), Reservation)  # then its process dies: never settled
    survivor = SQLiteBudgetStore(f"{tmp_path / 'budgets.db'}?reservation_ttl=1")
    assert isinstance(survivor.reserve([bucket], Decimal("0.5")), Refusal)
    assert survivor.spent(bucket.key) == (Decimal(0), Decimal(1))
    time.sleep(1.3)
    assert isinstance(survivor.reserve([bucket], Decimal("0.5")), Refusal)  # expired: charged, not released
    assert survivor.spent(bucket.key) == (Decimal(1), Decimal(0))


def test_the_exit_log_says_settles_are_lost_where_their_file_could_not_be_written(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """On a full disk the file of waiting settles stayed empty, and the exit log still said they were kept in it."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    lost = spool.Journal(blocker / "budgets.db")  # its folder is a file: nothing can be written there
    kept = spool.Journal(tmp_path / "budgets.db")
    with caplog.at_level(logging.WARNING, logger="llmbudget"):
        lost.add({"id": "r1", "amount": "0.2"})
        kept.add({"id": "r1", "amount": "0.2"})
        lost.warn_at_exit(1, "to SQLite at x")
        assert "up to 1 of them could not be written to that file either: those are lost" in caplog.text
        caplog.clear()
        kept.warn_at_exit(1, "to SQLite at x")
    assert "kept in" in caplog.text and "lost" not in caplog.text
    assert kept.path is not None and kept.path.read_text().count("\n") == 1
    kept.clear()
    assert kept.path is None and kept.lost == 0


def test_settles_kept_by_an_ended_process_with_this_process_id_are_written(tmp_path: Path) -> None:
    """A container's app runs as process 1 after each restart: the file its previous life kept (named with the
    same pid) was taken for this process's own and never written, the spend never charged."""
    import os

    path = tmp_path / "budgets.db"
    SQLiteBudgetStore(path)
    bucket = _bucket("1")
    row = {"id": "local-before-restart", "keys": [bucket.key], "amount": "0.2", "actual": "0.2"}
    kept = path.parent / f"budgets.db.pending-{os.getpid()}-0cc0c9ea.jsonl"
    kept.write_text(json.dumps(row) + "\n")
    store = SQLiteBudgetStore(f"{path}?on_unavailable=open", retry_interval=0)
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)
    assert store.spent(bucket.key)[0] == Decimal("0.2") and not kept.exists()
    with _holding(path):  # this process's own file, while it waits, is still its own
        held = store.reserve([bucket], Decimal("0.01"))
        assert isinstance(held, Reservation)
        store.settle(held, Decimal("0.01"))
        own = store._journal.own_path
        assert own is not None and own.exists() and not spool._gone(own)


_SERVE_WHEN_NOTHING_CAN_BE_WRITTEN = """
import resource, signal, sys
from decimal import Decimal
from llmbudget.ledger.budgets import Budget, BudgetStoreUnavailable, Reservation, SQLiteBudgetStore
import time
bucket = Budget("1", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())
store = SQLiteBudgetStore(f"{sys.argv[1]}?on_unavailable=open&timeout=0.2", retry_interval=60)
if sys.argv[2] == "full":  # no file grows any more: a full disk, as far as this process can tell
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
try:
    held = store.reserve([bucket], Decimal("0.05"))
except BudgetStoreUnavailable as exc:
    print("refused", exc)
else:
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.05"))
    print("served")
"""


@pytest.mark.parametrize("disk", ["full", "room"])
def test_fail_open_refuses_what_it_cannot_keep_on_disk(lock_holder, disk) -> None:  # type: ignore[no-untyped-def]
    """With the file locked and the disk full, each process served its open_share and lost it at exit: four
    restarts in one outage spent 87% of a limit, a crash loop without bound. What it serves must be kept."""
    path, _holder = lock_holder
    run = subprocess.run([sys.executable, "-c", _SERVE_WHEN_NOTHING_CAN_BE_WRITTEN, str(path), disk],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    if disk == "full":
        assert run.stdout.startswith("refused") and "cannot be kept on disk" in run.stdout
        assert "database is locked" in run.stdout  # the store's own error is named too
    else:
        assert run.stdout.strip() == "served"
        assert len(list(path.parent.glob("budgets.db.pending-*.jsonl"))) == 1  # kept for the next process
