"""The semantic tier in a process of its own (``Cache(worker=True)``, ``[cache] worker = true``).

A missed call's semantic work (embedding the question, the index search, the verifier, and storing the answer
with its vector) takes 1-1.5 ms of CPU. On an async server that is the event loop's thread, the one thread that
serves every request of the process: a busy uvicorn worker spends a third of its time there. With a worker, the
app's event loop sends the question to a child process over a Unix socket and awaits its answer, and hands it the
answers to store without waiting; the child runs the same :class:`~llmbudget.cache.store.CacheStore` on the same
directory. The exact tier, a hit's reading and recording stay in the app (tens of microseconds).

What it never does is make a call fail or wait long:

- while the child starts (about a second: it loads the embedder and verifier before it listens), after it died,
  in a thread (a sync client, a WSGI app) or under another event loop than asyncio's, the app does the work
  itself, as without a worker;
- a question it has not answered within :attr:`CacheWorker.timeout` is a miss, and while
  :attr:`CacheWorker.max_waiting` questions wait on it (a child too slow for the traffic) further ones are misses
  at once; answers to store are dropped while a megabyte of them waits to be sent;
- it dies with the process that started it (and every process forked from that one): it watches a pipe only they
  hold open. A child that died is started again, after 5 s and then at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CacheWorker"]

log = logging.getLogger("llmbudget.cache")

_HEADER = struct.Struct("!I")
_SEARCH, _PUT = 0, 1
_FIRST_RETRY_S, _MAX_RETRY_S = 5.0, 60.0
_MAX_BUFFERED = 1 << 20  # bytes of answers to store waiting to be sent: beyond it, answers are dropped
_MAX_FRAME = 1 << 30


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _frames(buffer: bytearray) -> list[Any]:
    """The whole messages at the start of ``buffer``, removed from it."""
    messages, at = [], 0
    while len(buffer) - at >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer, at)
        if size > _MAX_FRAME:
            raise ValueError(f"a message of {size} bytes")
        if len(buffer) - at - _HEADER.size < size:
            break
        at += _HEADER.size
        messages.append(pickle.loads(buffer[at : at + size]))
        at += size
    del buffer[:at]
    return messages


class CacheWorker:
    """The child process that runs a cache directory's semantic tier, and the app's connections to it.

    Made by :class:`~llmbudget.cache.Cache` (``worker=True``), which gives it what it gave its own store:
    ``path`` (the directory or SQLite file), ``options`` (the store's keyword arguments, all of them
    picklable) and ``reranker``. The child is started at once."""

    #: Seconds a lookup waits for the child's answer before it is a miss.
    timeout: float = 0.5
    #: Questions waiting on the child (per event loop) beyond which further ones are misses at once.
    max_waiting: int = 64

    def __init__(self, path: str, options: Mapping[str, Any], *, reranker: bool = False) -> None:
        self._spec = {"path": path, "options": dict(options), "reranker": reranker}
        pickle.dumps(self._spec)  # fails here, in the app's start, rather than in the child
        self._lock = threading.Lock()
        self._owner = self._pid = os.getpid()
        self._clients: dict[int, _Client] = {}  # id(loop): its connection (this process's loops only)
        self._connecting: set[int] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._parent_end: int | None = None  # the pipe the child watches: it ends when no process holds this end
        self._folder = tempfile.mkdtemp(prefix="llmbudget-w-")  # short: a Unix socket's path has ~100 bytes
        self.socket_path = os.path.join(self._folder, "s")
        self._next_check = 0.0
        self._retry_s = _FIRST_RETRY_S
        self._warned = False
        self._start()
        self._finalizer = weakref.finalize(self, _stop, self._state)

    # -- the child ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id (None: not running)."""
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        read_end, write_end = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmbudget.cache.worker", self.socket_path, str(read_end)],
                stdin=subprocess.PIPE, pass_fds=(read_end,), env=env, close_fds=True,
            )
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(self._spec))
            proc.stdin.close()
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._proc, self._parent_end = proc, write_end
        self._state = _State(proc, write_end, self._folder)
        self._started = time.monotonic()

    def _check(self) -> None:
        """Start the child again if it died (not in a forked process: the child is its parent's)."""
        now = time.monotonic()
        if now < self._next_check or os.getpid() != self._owner:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + 0.5
            proc = self._proc
            if proc is None or proc.poll() is None:
                return
            if not self._warned:
                log.warning("llmbudget: the cache worker (pid %d) ended with status %s; lookups are made in the "
                            "app until it is started again", proc.pid, proc.returncode)
                self._warned = True
            if now - self._started < self._retry_s:
                return
            # a child that lived long had been working: the next one waits the shortest time again
            self._retry_s = _FIRST_RETRY_S if now - self._started > 10 * _MAX_RETRY_S else min(
                self._retry_s * 2, _MAX_RETRY_S)
            self._state.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
            try:
                self._start()
            except Exception:  # noqa: BLE001 - without a worker, the app does the work itself
                log.exception("llmbudget: starting the cache worker again failed")
                self._started = now
                return
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _stop, self._state)
            self._warned = False

    # -- the app's side ----------------------------------------------------------------------------

    def client(self) -> _Client | None:
        """The running event loop's connection to the child, or None (no asyncio loop running in this thread,
        the child not listening yet, or gone): the caller then does the work itself. Starts connecting when
        there is none."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._pid != os.getpid():  # forked: the parent's connections are not this process's
            self._pid, self._clients, self._connecting = os.getpid(), {}, set()
        key = id(loop)
        client = self._clients.get(key)
        if client is not None and client.loop is loop and client.pid == os.getpid():
            return client if client.open else None
        self._check()
        if client is not None:  # another loop's, now closed, whose id this loop got
            client.close()
        if key not in self._connecting and os.path.exists(self.socket_path):
            self._connecting.add(key)
            loop.create_task(self._connect(loop, key))
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: int) -> None:
        try:
            await loop.create_unix_connection(lambda: _Client(self, loop, key), self.socket_path)
        except OSError as exc:
            log.debug("llmbudget: connecting to the cache worker failed: %s", exc)
            self._next_check = 0.0
        finally:
            self._connecting.discard(key)

    def put(self, item: Mapping[str, Any]) -> bool:
        """Hand ``item`` (:meth:`CacheStore.put`'s arguments) to the child to store; False when the caller must
        store it itself (no connection from this event loop)."""
        client = self.client()
        if client is None:
            return False
        client.put(item)
        return True

    def close(self) -> None:
        """Stop the child and close the connections (also done when the Cache is collected, and at exit)."""
        for client in list(self._clients.values()):
            client.close()
        self._finalizer()


class _State:
    """What stopping the child needs, apart from the worker object (for its finalizer)."""

    def __init__(self, proc: subprocess.Popen[bytes], parent_end: int, folder: str) -> None:
        self.proc, self.parent_end, self.folder = proc, parent_end, folder
        self.owner = os.getpid()

    def close(self) -> None:
        if self.parent_end >= 0:
            try:
                os.close(self.parent_end)  # the child sees the pipe end and stops
            except OSError:
                pass
            self.parent_end = -1


def _stop(state: _State) -> None:
    """Close this process's end of the child's pipe; the process that started the child also waits for it to
    end (it saves its indexes) and removes its folder. A forked process leaves both to that one."""
    state.close()
    if os.getpid() != state.owner:
        return
    try:
        state.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        state.proc.kill()
    except Exception:  # noqa: BLE001 - at exit, nothing to report to
        pass
    shutil.rmtree(state.folder, ignore_errors=True)


class _Client(asyncio.Protocol):
    """One event loop's connection to the child: questions out, answers back in order of their ids."""

    def __init__(self, worker: CacheWorker, loop: asyncio.AbstractEventLoop, key: int) -> None:
        self.worker, self.loop, self.key, self.pid = worker, loop, key, os.getpid()
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._buffer = bytearray()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.open = transport, True
        self.worker._clients[self.key] = self

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            answers = _frames(self._buffer)
        except Exception:  # noqa: BLE001 - a child that says nonsense is one the app stops listening to
            log.exception("llmbudget: the cache worker sent what could not be read; the app looks up itself")
            self.close()
            return
        for ident, found in answers:
            future = self._waiting.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(found)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.worker._clients.get(self.key) is self:
            del self.worker._clients[self.key]
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)
        self._waiting.clear()

    def close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self.loop.is_closed():
            transport.close()
            return
        # its loop ended (asyncio.run returned) with the connection open: the transport cannot close itself there
        self.connection_lost(None)
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            sock.close()
            transport._sock = None  # type: ignore[attr-defined]

    async def search(self, partition: str, text: str) -> Any:
        """The child's :meth:`CacheStore.search` of ``text`` in ``partition`` (a ``Hit``), or None: no hit, or no
        answer in time."""
        if not self.open or len(self._waiting) >= self.worker.max_waiting:
            return None
        assert self.transport is not None
        self._next_id += 1
        ident = self._next_id
        future = self.loop.create_future()
        self._waiting[ident] = future  # kept until answered: a child that stopped answering fills the queue
        self.transport.write(_frame((_SEARCH, ident, (partition, text))))
        timer = self.loop.call_later(self.worker.timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def put(self, item: Mapping[str, Any]) -> None:
        assert self.transport is not None
        if self.transport.get_write_buffer_size() > _MAX_BUFFERED:
            self.dropped += 1  # the child cannot keep up: this answer is not kept
            return
        self.transport.write(_frame((_PUT, 0, dict(item))))


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


# -- the child process --------------------------------------------------------------------------------------

class _Serve(asyncio.Protocol):
    """The child's side of one connection: questions answered as they come, answers to store in batches."""

    def __init__(self, store: Any, vectors: OrderedDict[str, Any]) -> None:
        self.store, self.vectors = store, vectors
        self._buffer = bytearray()
        self._puts: list[dict[str, Any]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            messages = _frames(self._buffer)
        except Exception:  # noqa: BLE001
            log.exception("a message could not be read; closing the connection")
            assert self.transport is not None
            self.transport.close()
            return
        for kind, ident, payload in messages:
            if kind == _SEARCH:
                assert self.transport is not None
                self.transport.write(_frame((ident, self._search(*payload))))
            elif kind == _PUT:
                if not self._puts:
                    asyncio.get_running_loop().call_soon(self._store)
                self._puts.append(payload)

    def _search(self, partition: str, text: str) -> Any:
        try:
            vector = self.store.query_vector(text)
            if vector is None:
                return None
            self.vectors[text] = vector  # storing the answer to this question reuses it
            if len(self.vectors) > 4096:
                self.vectors.popitem(last=False)
            return self.store.search(partition, text, vector)
        except Exception:  # noqa: BLE001 - a lookup that failed is a miss
            log.exception("a lookup failed")
            return None

    def _store(self) -> None:
        puts, self._puts = self._puts, []
        for item in puts:
            vector = self.vectors.pop(item.get("text", ""), None)
            if vector is not None and item.get("semantic", True):
                item["vector"] = vector
        try:
            self.store.put_many(puts)
        except Exception:  # noqa: BLE001 - an answer not kept is a later miss
            log.exception("storing %d answers failed", len(puts))


def _serve(socket_path: str, parent_fd: int, spec: Mapping[str, Any]) -> None:
    from .store import CacheStore

    options = dict(spec["options"])
    if spec.get("reranker"):
        from .reranker import RewordReranker

        options.update(RewordReranker().store_options())
    store = CacheStore(spec["path"], **options)
    store.query_vector("a question to load the embedder")  # loaded before the app may connect
    store._scoring()
    loop = asyncio.new_event_loop()
    vectors: OrderedDict[str, Any] = OrderedDict()
    loop.add_reader(parent_fd, loop.stop)  # every process holding the other end has ended
    listening = socket_path + ".new"
    server = loop.run_until_complete(loop.create_unix_server(lambda: _Serve(store, vectors), listening))
    os.replace(listening, socket_path)  # the app connects only once this is here: the models are loaded
    try:
        loop.run_forever()
    finally:
        server.close()
        try:
            os.unlink(socket_path)
        except OSError:
            pass
        store.close()


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the app, which ends this
    logging.basicConfig(level=logging.WARNING, format="llmbudget cache worker: %(levelname)s %(message)s")
    socket_path, parent_fd = sys.argv[1], int(sys.argv[2])
    spec = pickle.load(sys.stdin.buffer)
    _serve(socket_path, parent_fd, spec)


if __name__ == "__main__":
    main()
