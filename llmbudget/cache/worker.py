"""The semantic tier in a process of its own (``Cache(worker=True)``, ``[cache] worker = true``).

A missed call's semantic work (embedding the question, the index search, the verifier, and embedding the answer's
question to store it) takes 1-1.5 ms of CPU. On an async server that is the event loop's thread, the one thread
that serves every request of the process. With a worker, async calls look the exact tier up on the event loop,
send the question to a child process over a Unix socket and await its answer; an answer is stored by the app at
once for exact lookups (an exact hit straight away), and the child then gives it its vector (a semantic hit from
then on). The child runs the same :class:`~llmbudget.cache.store.CacheStore` on the same directory.

What it never does is make a call fail or wait long:

- while the child starts (about a second: it loads the embedder and verifier before it listens), after it died,
  in a thread (a sync client, a WSGI app) and under another event loop than asyncio's, the app does the work
  itself, as without a worker;
- a question it has not answered within :attr:`CacheWorker.timeout` is a miss, and so is every question while
  :attr:`CacheWorker.max_waiting` wait on it (a child too slow for the traffic: the app never takes its work on
  then, which would slow every request); the exact tier goes on. The child skips the questions that waited past
  the timeout, and answers to embed beyond a backlog are dropped (they stay exact-only). While a question has
  waited :data:`STALLED_S` seconds unanswered, lookups do not wait for the child (each is a miss at once) until
  it answers again; a child that has left a question unanswered for :data:`HUNG_S` seconds is stopped and started
  again (by a process forked from the one that started it too: it stops the child, where it can tell that
  process id is still the child's, and starts one of its own);
- it runs at a lower CPU priority than the app (:attr:`CacheWorker.nice`): where the cores are busy, requests
  are served first and the semantic tier gets the time left (its questions then wait longer, and are misses past
  the timeout);
- it ends with the process that started it and every process forked from that one (it watches a pipe only they
  hold open), and removes its folder. A child that died is started again, after 5 s and then at most once a
  minute; a forked process whose shared child died starts one of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..ledger.spool import alive

__all__ = ["CacheWorker", "worker_unavailable"]

log = logging.getLogger("llmbudget.cache")

_HEADER = struct.Struct("!I")
_SEARCH, _EMBED = 0, 1
_FIRST_RETRY_S, _MAX_RETRY_S = 5.0, 60.0
_MAX_BUFFERED = 1 << 20  # bytes waiting to be sent to the child: beyond it, answers to embed are dropped
_MAX_FRAME = 1 << 30
_MAX_BACKLOG = 4096  # entries the child has yet to embed: beyond it, new ones are dropped (left exact-only)
#: Seconds a question may wait on the child unanswered before lookups stop waiting for it (a miss at once).
STALLED_S = 2.0
#: Seconds a question may wait on the child unanswered before the child counts as hung: stopped, started again.
HUNG_S = 30.0
# The child's start: sys.path as the app has it (a module of the app's own may be needed to unpickle), then
# the spec, both on stdin; nothing is put on PYTHONPATH.
_BOOTSTRAP = """\
import os, shutil, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a group's SIGTERM (docker stop): the folder still goes
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the app, which ends this
try:
    import pickle
    sys.path[:] = pickle.load(sys.stdin.buffer)
    from llmbudget.cache.worker import main
    main()
finally:
    shutil.rmtree(os.path.dirname(sys.argv[-2]), ignore_errors=True)
"""


def worker_unavailable() -> str | None:
    """Why this process cannot run a cache worker (no Unix sockets, no Python interpreter to start), or None."""
    if sys.platform == "win32":
        return "it talks to its child process over a Unix socket (Linux and macOS only)"
    if getattr(sys, "frozen", False):
        return "this is a frozen app (sys.executable is the app, not a Python interpreter)"
    name = os.path.basename(sys.executable or "").lower()
    if not name.startswith(("python", "pypy")) or not os.access(sys.executable, os.X_OK):
        return f"sys.executable ({sys.executable!r}) is not a Python interpreter it can start"
    return None


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
    """The child process that runs a cache directory's semantic tier, and this process's connections to it.

    Made by :class:`~llmbudget.cache.Cache` (``worker=True``), which gives it what it built its own store with:
    ``path`` (the directory or SQLite file, absolute), ``options`` (the store's keyword arguments, all of them
    picklable) and ``reranker``. The child is started at once."""

    #: Seconds a lookup waits for the child's answer before it is a miss.
    timeout: float = 0.5
    #: Questions waiting on the child (per event loop) beyond which the semantic tier is a miss.
    max_waiting: int = 256
    #: How much lower the child's CPU priority is than the app's (``os.nice``; 0: the same). Where the cores are
    #: busy, the app's requests run first and the semantic tier takes what is left: its questions then wait
    #: longer, and one unanswered within :attr:`timeout` is a miss. With cores to spare it changes nothing.
    nice: int = 10

    def __init__(self, path: str, options: Mapping[str, Any], *, reranker: bool = False) -> None:
        self._spec = {"path": path, "options": dict(options), "reranker": reranker, "timeout": self.timeout,
                      "nice": self.nice}
        pickle.dumps(self._spec)  # fails here, in the app's start, rather than in the child
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._clients: dict[int, _Client] = {}  # id(loop): its connection (this process's loops only)
        self._connecting: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_check = self._next_connect = 0.0
        self._retry_s = _FIRST_RETRY_S
        self._refused = False  # the last connection attempt found no child listening
        self._warned = False
        self._closed = False
        self._start()

    # -- the child ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._state.proc.pid

    @property
    def socket_path(self) -> str:
        return self._state.socket_path

    def _start(self) -> None:
        folder = tempfile.mkdtemp(prefix="llmbudget-w-")  # short: a Unix socket's path has ~100 bytes
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                # -I: the working directory's own pickle.py or struct.py is not imported before sys.path is set
                [sys.executable, "-I", "-c", _BOOTSTRAP, os.path.join(folder, "s"), str(read_end)],
                stdin=subprocess.PIPE, pass_fds=(read_end,), close_fds=True,
            )
            assert proc.stdin is not None
            try:
                proc.stdin.write(pickle.dumps(list(sys.path)) + pickle.dumps(self._spec))
                proc.stdin.close()
            except OSError:  # it ended already; _check sees it
                pass
        except BaseException:
            os.close(write_end)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            os.close(read_end)
        self._state = _State(proc, write_end, folder)
        self._started = time.monotonic()
        self._refused = False
        self._finalizer = weakref.finalize(self, _stop, self._state)

    def _check(self) -> None:
        """Start the child again if it died; in a forked process, start one of its own when the shared one no
        longer listens."""
        now = time.monotonic()
        if now < self._next_check or self._closed:
            return
        with self._lock:
            if now < self._next_check or self._closed:
                return
            self._next_check = now + 0.5
            state = self._state
            if os.getpid() == state.owner:
                if state.proc.poll() is None:
                    return
                why = f"ended with status {state.proc.returncode}"
            elif self._refused:
                why = "no longer listens"
            else:
                return
            if not self._warned:
                log.warning("llmbudget: the cache worker (pid %d) %s; the app looks up and stores itself until "
                            "it is started again", state.proc.pid, why)
                self._warned = True
            if now - self._started < self._retry_s:
                return
            # a child that had lived long was working: the next one waits the shortest time again
            lived = now - self._started
            self._retry_s = _FIRST_RETRY_S if lived > 10 * _MAX_RETRY_S else min(self._retry_s * 2, _MAX_RETRY_S)
            self._finalizer()
            try:
                self._start()
            except Exception:  # noqa: BLE001 - without a worker, the app does the work itself
                log.exception("llmbudget: starting the cache worker again failed")
                self._started = now
                return
            self._warned = False

    # -- the app's side ----------------------------------------------------------------------------

    def client(self) -> _Client | None:
        """The running event loop's connection to the child, or None (no asyncio loop running in this thread,
        the child not listening yet, or gone): the caller then does the work itself. Starts connecting when
        there is no connection. Never raises: whatever goes wrong here, the caller does the work itself."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        try:
            return self._client(loop)
        except Exception:  # noqa: BLE001 - without the worker, the app works as without one
            log.exception("llmbudget: the cache worker could not be reached")
            return None

    def _client(self, loop: asyncio.AbstractEventLoop) -> _Client | None:
        if self._pid != os.getpid():  # forked: the parent's connections, lock and findings are not this process's
            self._pid, self._clients, self._connecting = os.getpid(), {}, set()
            self._lock, self._refused, self._warned, self._next_check = threading.Lock(), False, False, 0.0
        key = id(loop)
        client = self._clients.get(key)
        if client is not None and client.loop is loop:
            return client if client.open else None
        if self._closed:
            return None
        self._check()
        now = time.monotonic()
        if key not in self._connecting and now >= self._next_connect:
            self._next_connect = now + 0.1
            for other in list(self._clients.values()):  # connections of loops that ended (asyncio.run returned)
                if other.loop.is_closed():
                    other.close()
            self._connecting.add(key)
            task = loop.create_task(self._connect(loop, key))
            self._tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._tasks.discard)
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: int) -> None:
        state = self._state
        try:
            if not os.path.exists(state.socket_path):
                if os.getpid() != state.owner and not alive(state.proc.pid):
                    self._refused = True
                return  # not listening yet
            await loop.create_unix_connection(lambda: _Client(self, loop, key), state.socket_path)
            self._refused = False
        except (ConnectionRefusedError, FileNotFoundError) as exc:  # nothing listens there
            log.debug("llmbudget: connecting to the cache worker failed: %s", exc)
            self._refused = True
            self._next_check = 0.0
        except OSError as exc:  # too many open files, a full backlog: the child may be well; tried again later
            log.debug("llmbudget: connecting to the cache worker failed: %s", exc)
        finally:
            self._connecting.discard(key)

    def _hung(self) -> None:
        """The child has left a question unanswered for :data:`HUNG_S` seconds: stopped (SIGKILL), then started
        again by :meth:`_check`. A process forked from the one that started it (gunicorn ``--preload``: that one
        serves nothing, and would never find it hung) cannot wait for it: it stops it where ``/proc`` shows the
        process id is still the child's (never another process that took the id), and starts one of its own."""
        state = self._state
        if state.stopped:
            return
        state.stopped = True  # (said once: the questions after this one find it too, until it is gone)
        pid = state.proc.pid
        if os.getpid() == state.owner:
            if state.proc.poll() is not None:
                return
            log.warning("llmbudget: the cache worker (pid %d) has not answered for %.0f s; stopping it", pid, HUNG_S)
            state.proc.kill()
            self._next_check = 0.0
            return
        log.warning("llmbudget: the shared cache worker (pid %d) has not answered for %.0f s; this process stops "
                    "it where it can and starts its own", pid, HUNG_S)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if os.fsencode(state.socket_path) in cmdline.read().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
        except OSError:  # no /proc (not Linux), gone already, or not ours to stop: this process's own child still
            pass
        self._refused, self._next_check = True, 0.0  # _check starts this process's own
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for client in list(self._clients.values()):  # each closed on its own loop (a transport is not thread-safe)
            if client.loop is running or client.loop.is_closed():
                client.close()
            else:
                try:
                    client.loop.call_soon_threadsafe(client.close)
                except RuntimeError:  # closed meanwhile
                    client.close()

    def caller(self) -> _Client | None:
        """The connection of the async call this thread works for (set by the transport before it hands work to
        a worker thread; see :func:`set_caller`), while open: to hand the child an answer to embed from there."""
        client = _CALLER.get()
        if client is None or client.worker is not self or not client.open or client.loop.is_closed():
            return None
        return client

    def close(self) -> None:
        """Stop the child and close this process's connections; for good (also done when the Cache is
        collected, and at exit)."""
        self._closed = True
        for client in list(self._clients.values()):
            client.close()
        self._finalizer()


_CALLER: contextvars.ContextVar[_Client | None] = contextvars.ContextVar("llmbudget_cache_worker", default=None)


def set_caller(client: _Client | None) -> None:
    """The connection the current async call uses (its context, copied into the worker threads it hands work to)."""
    _CALLER.set(client)


class _State:
    """What stopping a child needs (for its finalizer, without the worker object)."""

    def __init__(self, proc: subprocess.Popen[bytes], parent_end: int, folder: str) -> None:
        self.proc, self.parent_end, self.folder = proc, parent_end, folder
        self.socket_path = os.path.join(folder, "s")
        self.owner = os.getpid()
        self.stopped = False  # found hung (see CacheWorker._hung)


def _stop(state: _State) -> None:
    """Close this process's end of the child's pipe: the child ends once no process holds it, and removes its
    folder. The process that started it removes the folder of a child that died without doing so. Nothing
    here waits for the child (a forked process may still use it)."""
    if state.parent_end >= 0:
        try:
            os.close(state.parent_end)
        except OSError:
            pass
        state.parent_end = -1
    if os.getpid() == state.owner:
        try:
            ended = state.proc.poll() is not None
        except Exception:  # noqa: BLE001 - at exit, nothing to report to
            ended = False
        if ended:
            shutil.rmtree(state.folder, ignore_errors=True)


class _Client(asyncio.Protocol):
    """One event loop's connection to the child: questions out, answers back by their ids."""

    def __init__(self, worker: CacheWorker, loop: asyncio.AbstractEventLoop, key: int) -> None:
        self.worker, self.loop, self.key = worker, loop, key
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._buffer = bytearray()
        #: Questions sent and not answered yet (those that timed out included: a child that stopped
        #: answering fills it, and the app then looks up itself).
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self._sent: dict[int, float] = {}  # when each waiting question was sent
        self._next_id = 0
        self._thread = threading.get_ident()  # the loop's
        #: Frames to send at the end of this turn of the loop, in one write: a write is a system call that
        #: wakes the child, and under load many calls ask in the same turn.
        self._out: list[bytes] = []
        self._hung_check: asyncio.TimerHandle | None = None

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
            self._sent.pop(ident, None)
            future = self.waiting.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(found)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.worker._clients.get(self.key) is self:
            del self.worker._clients[self.key]
        for future in self.waiting.values():
            if not future.done():
                future.set_result(None)
        self.waiting.clear()
        self._sent.clear()

    def close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self.loop.is_closed():
            transport.close()
            return
        # its loop ended with the connection open: the transport cannot close itself there, nor its futures
        # take a result
        self.open = False
        self.waiting.clear()
        self._sent.clear()
        if self.worker._clients.get(self.key) is self:
            del self.worker._clients[self.key]
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            sock.close()
            transport._sock = None  # type: ignore[attr-defined]

    async def search(self, partition: str, text: str) -> Any:
        """The child's :meth:`CacheStore.search` of ``text`` in ``partition`` (a ``Hit``), or None: no hit, no
        answer in time, or too many questions waiting on the child."""
        if not self.open or self.transport is None:
            return None
        if self.waiting:  # the oldest question unanswered: a child stalled is not waited for, one hung is stopped
            now = time.monotonic()
            waited = now - self._sent.get(next(iter(self.waiting)), now)
            if waited > HUNG_S and self._hung_check is None:
                # stopped only if still unanswered once the loop has read what the socket holds: a loop blocked
                # itself (a sync call on it, a debugger) finds the child's answers waiting there, unread
                self._hung_check = self.loop.call_later(0.1, self._still_hung, next(iter(self.waiting)))
            if waited > STALLED_S or len(self.waiting) >= self.worker.max_waiting:
                return None
        self._next_id += 1
        ident = self._next_id
        future = self.loop.create_future()
        self.waiting[ident] = future
        self._sent[ident] = time.monotonic()
        self._send(_frame((_SEARCH, ident, (partition, text))))
        timer = self.loop.call_later(self.worker.timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _still_hung(self, ident: int) -> None:
        self._hung_check = None
        if ident in self.waiting:
            self.worker._hung()

    def embed(self, entry_id: int) -> None:
        """Hand the child an entry the app just stored for exact lookups only, to give it its vector (from a
        worker thread too: it is then handed to the connection's loop)."""
        if threading.get_ident() != self._thread:
            try:
                self.loop.call_soon_threadsafe(self.embed, entry_id)
            except RuntimeError:  # the loop is closed: the answer stays an exact-only one
                pass
            return
        if self.transport is None or self.transport.get_write_buffer_size() > _MAX_BUFFERED:
            return  # the child cannot keep up: this answer stays an exact-only one
        self._send(_frame((_EMBED, entry_id, None)))

    def _send(self, frame: bytes) -> None:
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        frames, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(frames))


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


# -- the child process --------------------------------------------------------------------------------------

class _Serve(asyncio.Protocol):
    """The child's side of one connection: questions answered as they come, entries to embed in batches."""

    def __init__(self, store: Any, vectors: OrderedDict[str, Any], timeout: float) -> None:
        self.store, self.vectors, self.timeout = store, vectors, timeout
        self._buffer = bytearray()
        self._embed: list[int] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self._buffer += data
        try:
            messages = _frames(self._buffer)
        except Exception:  # noqa: BLE001
            log.exception("a message could not be read; closing the connection")
            self.transport.close()
            return
        arrived = time.monotonic()
        for kind, ident, payload in messages:
            if self.transport.is_closing():  # the app went: nobody waits for the rest
                return
            if kind == _SEARCH:
                # a question the app stopped waiting for (the ones before it took long) is not worked on; each
                # answer is written as soon as it is found (held for the next search, one could miss its timeout)
                late = time.monotonic() - arrived > self.timeout
                self.transport.write(_frame((ident, None if late else self._search(*payload))))
            elif kind == _EMBED:
                if not self._embed:
                    asyncio.get_running_loop().call_soon(self._store)
                if len(self._embed) < _MAX_BACKLOG:  # beyond it, the answer stays an exact-only one
                    self._embed.append(ident)

    def _search(self, partition: str, text: str) -> Any:
        try:
            vector = self.store.query_vector(text)
            if vector is None:
                return None
            self.vectors[text] = vector  # the answer to this question, stored, is embedded with it
            if len(self.vectors) > 4096:
                self.vectors.popitem(last=False)
            return self.store.search(partition, text, vector)
        except Exception:  # noqa: BLE001 - a lookup that failed is a miss
            log.exception("a lookup failed")
            return None

    def _store(self) -> None:
        ids, self._embed = self._embed, []
        try:
            self.store.add_vectors(ids, self.vectors)
        except Exception:  # noqa: BLE001 - an answer left exact-only is a later semantic miss
            log.exception("embedding %d stored answers failed", len(ids))


def _serve(socket_path: str, parent_fd: int, spec: Mapping[str, Any]) -> None:
    from .store import CacheStore

    folder = os.path.dirname(socket_path)
    store = None
    loop = asyncio.new_event_loop()
    try:
        options = dict(spec["options"])
        if spec.get("reranker"):
            from .reranker import RewordReranker

            options.update(RewordReranker().store_options())
        store = CacheStore(spec["path"], **options)
        store.query_vector("a question to load the embedder")  # loaded before the app may connect
        store._scoring()
        vectors: OrderedDict[str, Any] = OrderedDict()
        listening = socket_path + ".new"
        timeout = float(spec.get("timeout", CacheWorker.timeout))
        server = loop.run_until_complete(loop.create_unix_server(lambda: _Serve(store, vectors, timeout), listening))
        os.replace(listening, socket_path)  # the app connects only once this is here: the models are loaded
        loop.add_reader(parent_fd, loop.stop)  # readable (at its end) once every process holding it has ended
        loop.run_forever()
        server.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if store is not None:
            store.close()
        loop.close()


def main() -> None:
    """The child's start (see ``_BOOTSTRAP``, which also handles SIGTERM and SIGINT)."""
    logging.basicConfig(level=logging.WARNING, format="llmbudget cache worker: %(levelname)s %(message)s")
    socket_path, parent_fd = sys.argv[-2], int(sys.argv[-1])
    spec = pickle.load(sys.stdin.buffer)
    if spec.get("nice"):
        try:
            os.nice(int(spec["nice"]))
        except OSError as exc:  # a sandbox that forbids it: the child runs at the app's priority
            log.warning("the cache worker's priority could not be lowered (%s)", exc)
    _serve(socket_path, parent_fd, spec)
