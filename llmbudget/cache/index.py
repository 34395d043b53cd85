"""Vector search inside one cache partition, kept in step with the SQLite store.

Design: **one index per partition**, loaded lazily, never one global index.

- A partition with at most ``exact_max`` vectors (default 2,048) is searched by
  brute force: a float32 matrix and one matrix-vector product (tens of
  microseconds at 2k x 256). Results are exact, and thousands of tiny partitions
  cost one small array each, only in the processes that search them. A partition
  without entries is not held (it is remembered as empty, in a bounded list,
  until an entry is added to it).
- A bigger partition gets its own usearch HNSW index (cosine, f16 or i8). Its
  graph holds only that partition's vectors, so the search explores no foreign
  entries, the top-k are all candidates, and the cost is that of one index of the
  partition's size whatever the number of other partitions.

A global index filtered by partition would do neither: with thousands of
partitions the k nearest neighbours are nearly all foreign, and a filtered HNSW
walk over a graph where the partition is rare can miss its entries.

Persistence and sharing. The SQLite store is the truth; indexes are caches of it.
Entry ids increase (AUTOINCREMENT) and every deletion is logged with its own
increasing sequence number, so ``(max id, max deletion seq)`` is the store's
*head*. Each process keeps its own indexes and, before a search, compares the
head with the one it last applied (one tiny query); if the head moved it reads
the new rows and the logged deletions of the partitions it holds, inside one read
transaction (a WAL snapshot). HNSW indexes are saved, atomically (temp file +
``os.replace``, under a file lock), as ``index/p<partition id>-*.usearch`` with a
JSON manifest naming the file, the store id and the head it reflects. On load the
manifest is checked (store id, dimensions, dtype), the index caught up from its
head, and its size compared with the store's count for the partition; a missing or
corrupt file is rebuilt from the store and a count that disagrees is reconciled id
by id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..ledger.budgets import _NO_WAIT, WouldWait

try:  # POSIX; elsewhere saves go without the cross-process lock (still atomic)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["IndexDType", "SourceView", "VectorIndex", "VectorSource"]

logger = logging.getLogger("llmbudget.cache")

IndexDType = Literal["f16", "i8"]

EXACT_MAX = 2048
SAVE_EVERY = 10_000
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 32
_MANIFEST_VERSION = 1
_LOAD_BATCH = 50_000
_EMPTY_KEEP = 4096  # partitions remembered as holding no entry (so their searches skip the load)
#: Partitions held in memory at most (the least recently searched let go beyond: they load again on use). A
#: partition is tenant x system prompt x earlier turns: a long-running multi-tenant or chat app meets new ones
#: for ever, and each held ~25 KB for good.
_PARTS_KEEP = 1024

Head = tuple[int, int]  # (max entry id ever assigned, max deletion seq ever assigned)
#: Inside ``no_wait()`` a search catches up with at most this many insertions (and deletions).
_QUICK_CHANGES = 64
#: ... and holds at most this many partitions (catching up looks at each).
_QUICK_PARTS = 256


class SourceView(Protocol):
    """Reads of the store inside one snapshot (vectors as float32 rows)."""

    def head(self) -> Head: ...

    def oldest_deletion(self) -> int:
        """The lowest deletion seq still logged (head's seq + 1 when the log is empty)."""
        ...

    def added(self, after_id: int, upto_id: int, partitions: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, partition ids, vectors)`` of live entries with a vector, ``after_id < id <= upto_id``."""
        ...

    def deleted(self, after_seq: int, upto_seq: int, partition: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(entry ids, partition ids)`` deleted with ``after_seq < seq <= upto_seq``."""
        ...

    def partition_count(self, partition: int, upto_id: int) -> int: ...

    def partition_rows(
        self, partition: int, after_id: int, upto_id: int, limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of the partition's live entries with a vector in the id range, by id, at most ``limit``."""
        ...

    def partition_ids(self, partition: int, upto_id: int) -> np.ndarray: ...

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of those of ``ids`` that are live and have a vector."""
        ...


class VectorSource(Protocol):
    """The store as the index sees it."""

    store_id: str

    def head(self) -> Head:
        """The current head, read outside any transaction (cheap)."""
        ...

    def view(self) -> AbstractContextManager[SourceView]: ...


# --------------------------------------------------------------------------- partitions


class _Exact:
    """Brute-force search over a float32 matrix (exact)."""

    kind = "exact"

    def __init__(self, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> None:
        n = 0 if ids is None else len(ids)
        cap = max(8, n)
        self._ids = np.zeros(cap, dtype=np.int64)
        self._vecs = np.zeros((cap, dim), dtype=np.float32)
        self._pos: dict[int, int] = {}
        self._n = 0
        if ids is not None and vectors is not None and n:
            self.add(ids, vectors)

    def __len__(self) -> int:
        return self._n

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for key, vec in zip(ids.tolist(), vectors):
            if key in self._pos:
                continue
            if self._n == len(self._ids):
                cap = 2 * len(self._ids)
                self._ids = np.resize(self._ids, cap)
                grown = np.zeros((cap, self._vecs.shape[1]), dtype=np.float32)
                grown[: self._n] = self._vecs[: self._n]
                self._vecs = grown
            self._ids[self._n] = key
            self._vecs[self._n] = vec
            self._pos[key] = self._n
            self._n += 1

    def remove(self, ids: np.ndarray) -> None:
        for key in ids.tolist():
            row = self._pos.pop(key, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:
                moved = int(self._ids[last])
                self._ids[row] = moved
                self._vecs[row] = self._vecs[last]
                self._pos[moved] = row
            self._n = last

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        return self._ids[: self._n].copy(), self._vecs[: self._n].copy()

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        n = self._n
        if n == 0:
            return []
        # On the calling thread: ``matrix @ vector`` goes to BLAS, which splits a product of this size over
        # threads; when the cores are busy (a loaded web server) waking them costs milliseconds
        # (2,048 x 256 on the loaded 2-core development machine: up to 8 ms, against 0.08 ms here).
        sims = np.einsum("ij,j->i", self._vecs[:n], vector)
        if n > k:
            top = np.argpartition(-sims, k - 1)[:k]
            top = top[np.argsort(-sims[top])]
        else:
            top = np.argsort(-sims)
        return [(int(self._ids[i]), float(sims[i])) for i in top]


class _Hnsw:
    """A usearch HNSW index over one partition."""

    kind = "hnsw"

    def __init__(self, index: Any, *, dirty: int = 0) -> None:
        self.index = index
        self.dirty = dirty  # changes since the last save or load
        self.built = False  # built from the store and never saved

    @classmethod
    def new(cls, dim: int, dtype: IndexDType) -> _Hnsw:
        from usearch.index import Index

        index = Index(
            ndim=dim,
            metric="cos",
            dtype=dtype,
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        return cls(index)

    def __len__(self) -> int:
        return len(self.index)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        keys = ids.astype(np.uint64)
        fresh = np.logical_not(self.index.contains(keys))
        if not fresh.all():
            keys, vectors = keys[fresh], vectors[fresh]
        if len(keys):
            threads = 0 if len(keys) > 256 else 1
            self.index.add(keys, np.ascontiguousarray(vectors, dtype=np.float32), threads=threads)
            self.dirty += len(keys)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.dirty += int(self.index.remove(ids.astype(np.uint64)))

    def keys(self) -> np.ndarray:
        return np.asarray(self.index.keys[:], dtype=np.int64)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if len(self) == 0:
            return []
        found = self.index.search(vector, k, threads=1)
        return [(int(key), 1.0 - float(dist)) for key, dist in zip(found.keys, found.distances)]


_Partition = _Exact | _Hnsw


# --------------------------------------------------------------------------- the index


_INDEXES: weakref.WeakSet[VectorIndex] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for index in list(_INDEXES):
        index._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class VectorIndex:
    """This process's vectors, one index per partition, caught up with the store before each search."""

    def __init__(
        self,
        source: VectorSource,
        *,
        dim: int,
        directory: str | os.PathLike[str] | None,
        dtype: IndexDType = "i8",
        exact_max: int = EXACT_MAX,
        save_every: int = SAVE_EVERY,
    ) -> None:
        if dtype not in ("f16", "i8"):
            raise ValueError(f"index dtype must be 'f16' or 'i8', got {dtype!r}")
        if exact_max < 0:
            raise ValueError(f"exact_max must be >= 0, got {exact_max}")
        self._source = source
        self.dim = dim
        self.dtype: IndexDType = dtype
        self.exact_max = exact_max
        self.save_every = save_every
        self.directory = Path(directory) if directory is not None else None
        self._parts: OrderedDict[int, _Partition] = OrderedDict()  # the most recently searched last
        # Partitions emptied here (entries evicted or expired) whose saved index files are to be removed
        self._emptied: set[int] = set()
        # Partitions found without entries, as of ``_head`` (the most recent last): not held, since searches
        # meet many (earlier turns are part of the partition); an entry added to one makes it load on use.
        self._empty: OrderedDict[int, None] = OrderedDict()
        self._head: Head = (0, 0)
        self._lock = threading.RLock()
        _INDEXES.add(self)  # its lock is new in a forked child

    def _forked(self) -> None:
        """In a child just forked: a new lock (a thread of the parent may have held it, and it is not here)."""
        held = not self._lock.acquire(blocking=False)
        self._lock = threading.RLock()
        if held:  # perhaps caught mid-change: the partitions reload on use
            self._parts.clear()
            self._empty.clear()

    # ---------------------------------------------------------------- search

    def search(self, partition: int, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest entries of ``partition``: ``[(entry id, approximate cosine)]``, best first.

        Inside :func:`~llmbudget.ledger.budgets.no_wait`, :class:`~llmbudget.ledger.budgets.WouldWait`
        instead of waiting for another thread's search or catching up with more than a few changes
        (loading a partition, building or saving an HNSW index): the caller searches where it may wait.
        """
        quick = _NO_WAIT.get()
        if not self._lock.acquire(blocking=not quick):
            raise WouldWait("the cache index is in use by another thread")
        try:
            head = None
            if quick and (head := self._quick_head(partition)) is None:
                raise WouldWait("the cache index has more to do than a quick search")
            part = self._ready(partition, head)
            return [] if part is None else part.search(np.ascontiguousarray(vector, dtype=np.float32), k)
        finally:
            self._lock.release()

    def _quick_head(self, pid: int) -> Head | None:
        """The store's head when a search of ``pid`` now only catches up with a few changes (no load,
        build or save), else None."""
        part = self._parts.get(pid)
        if part is None and pid not in self._empty:
            return None  # not loaded yet
        head = self._source.head()
        (max_id, del_seq), (old_id, old_seq) = head, self._head
        if head == self._head:
            return head  # nothing to catch up with
        if max_id - old_id > _QUICK_CHANGES or del_seq - old_seq > _QUICK_CHANGES or len(self._parts) > _QUICK_PARTS:
            return None  # catching up goes over every partition held (and their saves)
        return None if self._due() else head

    def _due(self) -> bool:
        """True when a few more insertions may make a partition's save or HNSW build due."""
        if self.directory is not None and any(
            isinstance(p, _Hnsw) and (p.built or p.dirty + _QUICK_CHANGES >= max(self.save_every, len(p) // 10))
            for p in self._parts.values()
        ):
            return True  # a save may be due
        return any(isinstance(p, _Exact) and len(p) + _QUICK_CHANGES > self.exact_max for p in self._parts.values())

    def added_here(self, first_id: int, last_id: int, added: list[tuple[int, int, np.ndarray]]) -> None:
        """Apply the entries this process just committed in one transaction (ids ``first_id`` to ``last_id``;
        ``added``: ``(id, partition id, vector)`` of those with a vector, the vector as the store reads it back)
        without reading them back, when the index has applied everything inserted before them.

        Ids are handed out in order under the write lock, so ``first_id`` right after the applied head means
        no other writer inserted in between. Deletions (a replaced key, evictions, other writers') are left
        to the next search's catch-up: the head keeps its deletion seq. Done only for a store inside
        ``no_wait()`` (on the event loop, where reading them back costs the most), within the limits of a
        quick search's catch-up (see :meth:`_quick_head`), so this never loads, builds or saves, and only when
        no other thread holds the index: else the next search catches up from the store as before.
        """
        if not _NO_WAIT.get() or not self._lock.acquire(blocking=False):
            return
        try:
            old_id, old_seq = self._head
            if (first_id != old_id + 1 or last_id - old_id > _QUICK_CHANGES or len(self._parts) > _QUICK_PARTS
                    or self._due()):
                return
            for entry_id, pid, vector in added:  # as _apply would, one entry at a time
                part = self._parts.get(pid)
                if part is None:
                    self._empty.pop(pid, None)  # an entry arrived: the partition loads on its next search
                else:
                    part.add(np.array([entry_id], dtype=np.int64), vector[None])
            self._head = (last_id, old_seq)
        finally:
            self._lock.release()

    def sync(self) -> None:
        """Apply what other writers (threads or processes) changed since the last call."""
        with self._lock:
            if self._source.head() != self._head:
                with self._source.view() as view:
                    self._catch_up(view, view.head())
                self._save_dirty()

    def loaded(self) -> dict[int, tuple[str, int]]:
        """``{partition id: (kind, size)}`` of the partitions this process holds."""
        with self._lock:
            return {pid: (part.kind, len(part)) for pid, part in self._parts.items()}

    def drop(self) -> None:
        """Forget every loaded partition (they reload on their next search)."""
        with self._lock:
            self._parts.clear()
            self._empty.clear()

    def _ready(self, pid: int, head: Head | None = None) -> _Partition | None:
        """The partition's index, caught up with the store; None when it has no entry (then it is not held).

        ``head``: the store's head, when the caller just read it."""
        part = self._parts.get(pid)
        if (part is not None or pid in self._empty) and (head or self._source.head()) == self._head:
            if part is None:
                self._empty.move_to_end(pid)
            else:
                self._parts.move_to_end(pid)
            return part
        quick = _NO_WAIT.get()
        with self._source.view() as view:
            seen = view.head()
            if quick and seen != head:  # another writer since the quick check: perhaps much more to catch up
                raise WouldWait("the cache store changed since the index looked")
            head = seen
            self._catch_up(view, head)
            part = self._parts.get(pid)
            if part is None and pid not in self._empty:
                if quick:  # caught up (nothing half done): the partition loads where it may take long
                    raise WouldWait("a cache partition to load")
                part = self._load(view, pid, head)
                if part is None:
                    self._note_empty(pid)
                else:
                    self._parts[pid] = part
                    self._let_go()
            elif part is not None:
                self._parts.move_to_end(pid)
        self._save_dirty()
        return part

    def _let_go(self) -> None:
        """Hold at most ``_PARTS_KEEP`` partitions: the least recently searched go (an unsaved HNSW index is
        saved first, so it loads from its file again rather than being rebuilt)."""
        while len(self._parts) > _PARTS_KEEP:
            pid, part = self._parts.popitem(last=False)
            if isinstance(part, _Hnsw) and (part.dirty or part.built):
                self._save(pid, part)

    def _note_empty(self, pid: int) -> None:
        self._empty[pid] = None
        self._empty.move_to_end(pid)
        if len(self._empty) > _EMPTY_KEEP:
            self._empty.popitem(last=False)  # forgotten: it loads again on its next search
        if self.directory is not None and (self.directory / f"p{pid}.json").exists():
            self._emptied.add(pid)  # a saved index of entries now gone: removed (see _save_dirty)

    def _catch_up(self, view: SourceView, head: Head) -> None:
        max_id, del_seq = head
        old_id, old_seq = self._head
        if del_seq > old_seq and self._parts:
            if view.oldest_deletion() > old_seq + 1:
                logger.info("cache index: deletion log trimmed past this process; reloading partitions")
                self._parts.clear()
            else:
                ids, pids = view.deleted(old_seq, del_seq)
                self._apply(ids, pids, None)
        if max_id > old_id and (self._parts or self._empty):
            ids, pids, vecs = view.added(old_id, max_id, [*self._parts, *self._empty])
            self._apply(ids, pids, vecs)
        self._head = head

    def _apply(self, ids: np.ndarray, pids: np.ndarray, vectors: np.ndarray | None) -> None:
        if not len(ids):
            return
        for pid in np.unique(pids).tolist():
            part = self._parts.get(pid)
            if part is None:
                if vectors is not None:
                    self._empty.pop(pid, None)  # an entry arrived: the partition loads on its next search
                continue
            mask = pids == pid
            if vectors is None:
                part.remove(ids[mask])
                if not len(part):  # let go, and its saved index file, if any, with it (see _save_dirty)
                    del self._parts[pid]
                    self._note_empty(pid)
                continue
            part.add(ids[mask], vectors[mask])
            if isinstance(part, _Exact) and len(part) > self.exact_max:
                self._parts[pid] = self._build(pid, *part.items())

    # ---------------------------------------------------------------- loading

    def _load(self, view: SourceView, pid: int, head: Head) -> _Partition | None:
        count = view.partition_count(pid, head[0])
        if not count:
            return None
        if count <= self.exact_max:
            return _Exact(self.dim, *view.partition_rows(pid, 0, head[0]))
        part = self._open(view, pid, head, count)
        if part is None:
            logger.info("cache index: building the HNSW index of partition %d (%d vectors)", pid, count)
            part = _Hnsw.new(self.dim, self.dtype)
            self._add_rows(view, pid, part, 0, head[0])
            part.built = True
        return part

    @staticmethod
    def _add_rows(view: SourceView, pid: int, part: _Hnsw, after_id: int, upto_id: int) -> None:
        """Add the partition's rows in the id range, in batches (bounded memory)."""
        while True:
            ids, vecs = view.partition_rows(pid, after_id, upto_id, _LOAD_BATCH)
            if not len(ids):
                return
            part.add(ids, vecs)
            after_id = int(ids[-1])

    def _build(self, pid: int, ids: np.ndarray, vectors: np.ndarray) -> _Hnsw:
        logger.info("cache index: building the HNSW index of partition %d (%d vectors)", pid, len(ids))
        part = _Hnsw.new(self.dim, self.dtype)
        part.add(ids, vectors)
        part.built = True
        return part

    def _open(self, view: SourceView, pid: int, head: Head, count: int) -> _Hnsw | None:
        if self.directory is None:
            return None
        manifest_path = self.directory / f"p{pid}.json"
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("cache index: manifest %s unreadable (%s); rebuilding from the store", manifest_path, exc)
            return None
        expected = {"version": _MANIFEST_VERSION, "store_id": self._source.store_id, "partition": pid,
                    "dim": self.dim, "dtype": self.dtype}
        if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in expected.items()):
            logger.info("cache index: %s belongs to another store or configuration; rebuilding", manifest_path)
            return None
        try:
            from usearch.index import Index

            index = Index.restore(os.fspath(self.directory / str(manifest["file"])))
            if index is None or index.ndim != self.dim:
                raise ValueError("not an index of the expected dimensions")
        except Exception as exc:  # noqa: BLE001 - usearch raises RuntimeError, ValueError... on a bad file
            logger.warning("cache index: %s unusable (%s); rebuilding from the store", manifest.get("file"), exc)
            return None
        index.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # settable; typed read-only
        part = _Hnsw(index)
        m_id, m_seq = int(manifest["max_id"]), int(manifest["del_seq"])
        reconcile = False
        if m_seq < head[1]:
            if view.oldest_deletion() > m_seq + 1:
                reconcile = True
            else:
                part.remove(view.deleted(m_seq, head[1], pid)[0])
        if m_id < head[0]:
            self._add_rows(view, pid, part, m_id, head[0])
        if reconcile or m_id > head[0] or m_seq > head[1] or len(part) != count:
            self._reconcile(view, pid, part, head)
        return part

    def _reconcile(self, view: SourceView, pid: int, part: _Hnsw, head: Head) -> None:
        truth = view.partition_ids(pid, head[0])
        have = part.keys()
        extra = np.setdiff1d(have, truth, assume_unique=True)
        missing = np.setdiff1d(truth, have, assume_unique=True)
        logger.info("cache index: partition %d out of step (%d extra, %d missing); reconciling",
                    pid, len(extra), len(missing))
        part.remove(extra)
        if len(missing):
            part.add(*view.rows(missing))

    # ---------------------------------------------------------------- saving

    def _save_dirty(self) -> None:
        if self.directory is None:
            return
        if self._emptied and not _NO_WAIT.get():  # (removing files takes the file lock, which may wait)
            # only partitions still without entries as of the store's head (entries may have come back since)
            self._remove_files(self._emptied & self._empty.keys())
            self._emptied.clear()
        for pid, part in list(self._parts.items()):
            if isinstance(part, _Hnsw) and (part.built or part.dirty >= max(self.save_every, len(part) // 10)):
                self._save(pid, part)

    def save(self) -> int:
        """Write every changed HNSW index to disk now; returns how many were written."""
        with self._lock:
            written = 0
            for pid, part in list(self._parts.items()):
                if isinstance(part, _Hnsw) and (part.dirty or part.built):
                    written += self._save(pid, part)
            return written

    def _save(self, pid: int, part: _Hnsw) -> int:
        if self.directory is None:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        max_id, del_seq = self._head
        name = f"p{pid}-{max_id}-{del_seq}-{uuid.uuid4().hex[:12]}.usearch"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        manifest = {"version": _MANIFEST_VERSION, "store_id": self._source.store_id, "partition": pid,
                    "dim": self.dim, "dtype": self.dtype, "file": name, "max_id": max_id,
                    "del_seq": del_seq, "count": len(part)}
        try:
            with self._file_lock():
                part.index.save(os.fspath(tmp))
                os.replace(tmp, final)
                _write_atomic(self.directory / f"p{pid}.json", json.dumps(manifest).encode("utf-8"))
                for old in self.directory.glob(f"p{pid}-*.usearch"):
                    if old.name != name:
                        with contextlib.suppress(OSError):
                            old.unlink()
        except OSError as exc:
            logger.warning("cache index: could not save partition %d to %s (%s)", pid, self.directory, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return 0
        part.dirty, part.built = 0, False
        logger.debug("cache index: saved partition %d (%d vectors) as %s", pid, len(part), name)
        return 1

    def _remove_files(self, pids: Iterable[int]) -> None:
        """Remove the saved index files of partitions left without entries (they were kept for good)."""
        assert self.directory is not None
        try:
            with self._file_lock():
                for pid in pids:
                    for old in [*self.directory.glob(f"p{pid}-*.usearch"), self.directory / f"p{pid}.json"]:
                        with contextlib.suppress(OSError):
                            old.unlink()
        except OSError as exc:
            logger.debug("cache index: could not remove emptied partitions' files (%s)", exc)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        assert self.directory is not None
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.directory / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
