"""SQLite locks other processes hold, for tests of stores and ledgers whose file cannot be used."""

from __future__ import annotations

#: ``python -c HOLD_EXCLUSIVE PATH``: holds PATH's exclusive lock (no other connection reads or writes it, as on a
#: failing disk) from printing "locked" until a line arrives on its stdin.
HOLD_EXCLUSIVE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
"""
