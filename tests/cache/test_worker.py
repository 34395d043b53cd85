"""The cache's semantic tier in a worker process: the real SDK, the real local server behind a counting proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import pytest
from servers import base_url, proxy

import llmbudget
from llmbudget.cache import Cache
from llmbudget.cache.templates import TemplateGuard
from llmbudget.config import ConfigError, engine_from_config
from llmbudget.ledger.spool import alive

ASK = dict(model="gpt-4o-mini", max_tokens=24, temperature=0, stop=["\n"])
FIRST = "How do I learn Python quickly?"
REWORDED = "How can I learn Python fast?"


@pytest.fixture
def worker_cache(engine, tmp_path, llm_server):
    cache = engine.cache = Cache(tmp_path / "cache", worker=True)
    assert cache.worker is not None
    with proxy(llm_server) as server:
        yield cache, server
    cache.close()


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                              http_client=llmbudget.async_http_client())


async def _ask(client: openai.AsyncOpenAI, text: str) -> str:
    answer = await client.chat.completions.create(messages=[{"role": "user", "content": text}], **ASK)
    return answer.choices[0].message.content or ""


async def _until(check, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _embedded(cache: Cache) -> int:
    """Entries with a vector (given by the worker to the answers the app stored)."""
    return cache.store._conn().execute("SELECT count(*) FROM cache_entries WHERE vector IS NOT NULL").fetchone()[0]


def test_the_worker_stores_answers_and_finds_rewordings(worker_cache, records):
    cache, server = worker_cache
    assert cache.worker is not None

    async def main() -> tuple[str, str, int]:
        async with _client(server) as client:
            await _until(lambda: cache.worker.client() is not None)  # the child loads its models, then listens
            first = await _ask(client, FIRST)
            assert await _ask(client, FIRST) == first  # stored by the app for exact lookups at once
            await _until(lambda: _embedded(cache) == 1)  # its vector given by the child, without waiting
            again = await _ask(client, REWORDED)
            connection = cache.worker.client()
            assert connection is not None
            return first, again, connection._next_id

    first, again, asked = asyncio.run(main())
    assert again == first and len(server.received) == 1
    assert [r.cache_tier for r in records] == [None, "exact", "semantic"] and records[2].cache_score >= 0.85
    assert asked == 2  # both misses of the exact tier went to the child, which found the second
    assert records[2].saved_usd == records[0].cost_usd > 0


def test_answers_invalidated_before_the_worker_embeds_them_stay_gone(worker_cache, records):
    cache, server = worker_cache

    async def main() -> None:
        async with _client(server) as client:
            await _until(lambda: cache.worker.client() is not None)
            await _ask(client, FIRST)
            assert cache.invalidate() == 1  # the child may not have embedded it yet
            await asyncio.sleep(0.5)
            await _ask(client, FIRST)

    asyncio.run(main())
    assert len(server.received) == 2 and [r.from_cache for r in records] == [False, False]


def test_sync_calls_look_up_themselves_in_the_same_directory(worker_cache, records):
    cache, server = worker_cache
    client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(),
                           max_retries=0)
    ask = lambda text: client.chat.completions.create(messages=[{"role": "user", "content": text}], **ASK)  # noqa: E731
    ask(FIRST)
    ask(REWORDED)
    ask("How do I learn Java quickly?")
    assert len(server.received) == 2 and [r.cache_tier for r in records] == [None, "semantic", None]


def test_a_worker_that_stops_answering_costs_a_miss_not_a_failed_call(worker_cache, records):
    cache, server = worker_cache
    worker = cache.worker
    assert worker is not None and worker.pid is not None
    worker.timeout = 0.3

    async def main() -> None:
        async with _client(server) as client:
            await _until(lambda: worker.client() is not None)
            await _ask(client, FIRST)
            await _until(lambda: _embedded(cache) == 1)
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                assert await _ask(client, REWORDED)  # asked of the server: the child did not answer in time
                assert time.monotonic() - started < 0.3 + 30
                connection = worker.client()
                assert connection is not None and len(connection.waiting) == 1
                worker.max_waiting = 1  # one question waits: the next is a miss at once, the app takes none on
                started = time.monotonic()
                assert await connection.search("any", "a question") is None
                assert time.monotonic() - started < 0.1 and len(connection.waiting) == 1
                await _ask(client, REWORDED)  # the exact tier goes on: the answer stored by the app
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            await _until(lambda: not connection.waiting)  # the child answers late; the answer is dropped
            await _until(lambda: _embedded(cache) == 2)  # and embeds what the app stored meanwhile

    asyncio.run(main())
    assert len(server.received) == 2 and [r.cache_tier for r in records] == [None, None, "exact"]
    assert all(r.error is None for r in records)


def test_a_worker_that_died_is_started_again_and_the_app_looks_up_itself_meanwhile(worker_cache, records):
    cache, server = worker_cache
    worker = cache.worker
    assert worker is not None and worker.pid is not None
    first_pid = worker.pid

    async def main() -> None:
        async with _client(server) as client:
            await _until(lambda: worker.client() is not None)
            await _ask(client, FIRST)
            await _until(lambda: _embedded(cache) == 1)
            worker._retry_s = 60.0
            os.kill(first_pid, signal.SIGKILL)
            await _until(lambda: worker.client() is None)  # the connection ends with the child
            await _ask(client, REWORDED)  # looked up here, in the same directory: still a hit
            worker._retry_s = 0.0
            worker._next_check = 0.0
            await _until(lambda: worker.client() is not None and worker.pid != first_pid)  # client() starts it
            await _ask(client, REWORDED)  # a hit is not stored: asked again, the new child finds it

        connection = worker.client()
        assert connection is not None and connection._next_id == 1

    asyncio.run(main())
    assert [r.cache_tier for r in records] == [None, "semantic", "semantic"] and len(server.received) == 1
    assert not alive(first_pid) and alive(worker.pid)


_APP = textwrap.dedent("""
    import os, sys, time
    from llmbudget.cache import Cache
    cache = Cache(sys.argv[1], worker=True)
    print(cache.worker.pid, cache.worker.socket_path, flush=True)
    while not os.path.exists(cache.worker.socket_path):
        time.sleep(0.05)
    print("listening", flush=True)
    if sys.argv[2] == "fork":
        child = os.fork()
        if child == 0:
            sys.exit(0)  # a forked process leaves the child and its folder to the process that started it
        os.waitpid(child, 0)
        print(os.path.exists(cache.worker.socket_path), flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("end", ["SIGKILL", "fork then SIGTERM", "SIGTERM to the group"])
def test_the_worker_ends_with_the_app_that_started_it(tmp_path, end):
    app = subprocess.Popen([sys.executable, "-c", _APP, str(tmp_path / "cache"), end.split()[0]],
                           stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                           start_new_session=True)
    try:
        assert app.stdout is not None
        pid, socket_path = app.stdout.readline().split()
        assert app.stdout.readline().strip() == "listening"
        if end.startswith("fork"):
            assert app.stdout.readline().strip() == "True"
            assert alive(int(pid))
        if end.endswith("group"):  # docker stop, systemd, timeout: the child gets it too
            os.killpg(app.pid, signal.SIGTERM)
        else:
            app.send_signal(signal.SIGKILL if end == "SIGKILL" else signal.SIGTERM)
        app.wait(30)
        deadline = time.monotonic() + 30
        while alive(int(pid)) or Path(socket_path).parent.exists():
            assert time.monotonic() < deadline, "the worker outlived the app, or left its folder"
            time.sleep(0.05)
    finally:
        app.kill()
        app.wait()


def test_the_policy_turns_the_worker_on(tmp_path):
    engine = engine_from_config({"cache": {"path": str(tmp_path / "cache"), "worker": True}})
    try:
        assert engine.cache is not None and engine.cache.worker is not None and alive(engine.cache.worker.pid)
    finally:
        engine.cache.worker.close()
    with pytest.raises(ConfigError, match="cache.worker must be true or false"):
        engine_from_config({"cache": {"worker": "yes"}})
    with pytest.raises(ConfigError, match="not with .*a Redis URL"):
        engine_from_config({"cache": {"path": "redis://127.0.0.1:6379/0", "worker": True}})


def test_a_worker_needs_a_local_store_with_the_bundled_embedder(tmp_path):
    from llmbudget.cache.store import CacheStore

    with pytest.raises(ValueError, match="worker=True"):
        Cache(store=CacheStore(tmp_path / "c"), worker=True)
    with pytest.raises(ValueError, match="template guard of your own"):
        Cache(tmp_path / "e", worker=True, template_guard=type("Strict", (TemplateGuard,), {})())
    assert Cache(tmp_path / "d", worker=True, semantic=False).worker is None  # nothing to run elsewhere


def test_connections_of_ended_loops_are_closed_and_a_closed_worker_stays_closed(tmp_path):
    cache = Cache(tmp_path / "cache", worker=True)
    worker = cache.worker
    assert worker is not None

    async def once() -> bool:
        deadline = time.monotonic() + 60
        while worker.client() is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        return True

    for _ in range(12):  # a loop per job, as asgiref's async_to_sync or a task calling asyncio.run makes
        assert asyncio.run(once())
    assert len(worker._clients) <= 2
    pid = worker.pid
    cache.close()

    async def closed() -> bool:
        worker._next_check = 0.0
        return worker.client() is None

    assert asyncio.run(closed()) and worker.pid == pid
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, "the worker outlived close()"
        time.sleep(0.05)
    assert not Path(worker.socket_path).parent.exists()  # the child removed its folder


_PRELOADED = textwrap.dedent("""
    import asyncio, os, signal, sys, time
    from llmbudget.cache import Cache, worker as module
    module.STALLED_S, module.HUNG_S = 0.2, 0.5
    cache = Cache(sys.argv[1], worker=True)  # built before the fork, as gunicorn --preload does
    worker = cache.worker
    worker.timeout = 0.1
    while not os.path.exists(worker.socket_path):
        time.sleep(0.05)
    shared = worker.pid
    child = os.fork()
    if child == 0:
        async def main():
            deadline = time.monotonic() + 60
            while worker.client() is None:  # the shared child answers the fork
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # it dies (SIGKILL) or hangs (SIGSTOP); the master, which serves nothing, never looks
            os.kill(shared, getattr(signal, sys.argv[2]))
            worker._retry_s = 0.0
            while worker.client() is None or worker.pid == shared:
                assert time.monotonic() < deadline
                connection = worker.client()
                if connection is not None:
                    await connection.search("any", "a question")
                await asyncio.sleep(0.05)
            print(shared, worker.pid, flush=True)
        asyncio.run(main())
        cache.close()
        os._exit(0)
    os.waitpid(child, 0)
    os.waitpid(shared, 0)  # ended: killed, or stopped by the forked process, which could tell it was the child
    print("reaped", flush=True)
""")


def _preloaded(tmp_path: Path, signal_name: str) -> tuple[list[str], str]:
    done = subprocess.run([sys.executable, "-c", _PRELOADED, str(tmp_path / "cache"), signal_name],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return done.stdout.split(), done.stderr


def test_a_forked_process_whose_shared_worker_hangs_stops_it_and_starts_its_own(tmp_path):
    # the master (gunicorn --preload) serves nothing, so it never found its child hung: the semantic tier stayed
    # off in every worker for as long as it hung
    (shared, own, reaped), err = _preloaded(tmp_path, "SIGSTOP")
    assert shared != own and reaped == "reaped" and "shared cache worker" in err, err


def test_a_forked_process_whose_shared_worker_died_starts_its_own(tmp_path):
    (shared, own, reaped), err = _preloaded(tmp_path, "SIGKILL")
    assert shared != own and reaped == "reaped" and "no longer listens" in err, err


def test_calls_with_a_long_system_prompt_use_the_worker_too(worker_cache, records):
    # a body over 8 KiB is worked on in threads: its lookup and its answer's embedding still go to the child
    cache, server = worker_cache
    system = {"role": "system", "content": "You answer questions about learning. " * 250}

    async def main() -> int:
        async with _client(server) as client:
            await _until(lambda: cache.worker.client() is not None)
            for text in (FIRST, REWORDED):
                await client.chat.completions.create(messages=[system, {"role": "user", "content": text}], **ASK)
                await _until(lambda: _embedded(cache) == 1)
            connection = cache.worker.client()
            assert connection is not None
            return connection._next_id

    assert asyncio.run(main()) == 2  # both lookups went to the child
    assert [r.cache_tier for r in records] == [None, "semantic"] and len(server.received) == 1


def test_a_loop_closed_while_a_question_waits_fails_no_later_call(tmp_path):
    cache = Cache(tmp_path / "cache", worker=True)
    worker = cache.worker
    assert worker is not None and worker.pid is not None
    loop = asyncio.new_event_loop()

    async def connected():
        while worker.client() is None:
            await asyncio.sleep(0.05)
        return worker.client()

    connection = loop.run_until_complete(asyncio.wait_for(connected(), 60))
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        pending = loop.create_task(connection.search("p", "a question"))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert not pending.done()
        loop.close()  # a background thread's loop, closed with the question waiting

        async def later() -> None:
            worker._next_connect = 0.0
            worker.client()  # closes the ended loop's connection: must not raise

        asyncio.run(later())
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert not connection.open and not connection.waiting
    cache.close()
    assert cache.store._closed


def test_a_hung_worker_is_not_waited_for_then_stopped_and_started_again(tmp_path, monkeypatch, caplog):
    # it was stopped only once max_waiting (256) questions waited on it, minutes of ordinary traffic, each miss
    # waiting the timeout meanwhile
    from llmbudget.cache import worker as module

    monkeypatch.setattr(module, "STALLED_S", 0.3)
    monkeypatch.setattr(module, "HUNG_S", 0.8)
    cache = Cache(tmp_path / "cache", worker=True)
    worker = cache.worker
    assert worker is not None and worker.pid is not None
    hung = worker.pid
    worker.timeout, worker._retry_s = 0.1, 0.0

    async def main() -> None:
        await _until(lambda: worker.client() is not None)
        connection = worker.client()
        os.kill(hung, signal.SIGSTOP)
        assert await connection.search("any", "a question") is None  # timed out; it still waits
        await asyncio.sleep(0.35)
        started = time.monotonic()
        assert await connection.search("any", "another") is None  # stalled: a miss at once, nothing sent
        assert time.monotonic() - started < 0.05 and len(connection.waiting) == 1
        await asyncio.sleep(0.5)
        for _ in range(3):
            assert await connection.search("any", "another") is None  # the oldest waited past HUNG_S: stopped
        await _until(lambda: worker.client() is not None and worker.pid != hung)

    try:
        asyncio.run(main())
    finally:
        cache.close()
    assert not alive(hung)
    assert caplog.text.count("has not answered for") == 1  # said once, though three questions found it


def test_a_child_is_not_taken_for_hung_while_the_apps_own_loop_was_blocked(tmp_path, monkeypatch, caplog):
    # its answer sat unread in the socket while the loop was blocked (a sync call on it, a debugger): the next
    # lookup found the question older than HUNG_S and killed a healthy child
    from llmbudget.cache import worker as module

    monkeypatch.setattr(module, "HUNG_S", 0.5)
    cache = Cache(tmp_path / "cache", worker=True)
    worker = cache.worker
    assert worker is not None and worker.pid is not None
    child = worker.pid

    async def main() -> None:
        await _until(lambda: worker.client() is not None)
        connection = worker.client()
        asked = asyncio.get_running_loop().create_task(connection.search("any", "a question"))
        await asyncio.sleep(0)  # sent at the end of this turn
        await asyncio.sleep(0)
        time.sleep(0.8)  # the loop is blocked; the child answers meanwhile
        await connection.search("any", "another")
        await asyncio.sleep(0.3)
        await asked
        assert not connection.waiting and connection.open

    try:
        asyncio.run(main())
        assert alive(child) and worker.pid == child and "has not answered" not in caplog.text
    finally:
        cache.close()


def test_the_child_finds_the_cache_wherever_the_app_goes_and_whatever_its_folder_holds(tmp_path, monkeypatch):
    # a relative path is the app's folder at the start, not the child's; the folder's own pickle.py is not imported
    (tmp_path / "pickle.py").write_text("raise SystemExit('the working folder was imported')\n")
    (tmp_path / "struct.py").write_text("raise SystemExit('the working folder was imported')\n")
    monkeypatch.chdir(tmp_path)
    cache = Cache("relative-cache", worker=True)
    worker = cache.worker
    assert worker is not None
    try:
        monkeypatch.chdir(tmp_path.parent)
        assert worker._spec["path"] == str(tmp_path / "relative-cache")

        async def listening() -> None:
            await _until(lambda: worker.client() is not None)

        asyncio.run(listening())
        assert worker._state.proc.poll() is None
    finally:
        cache.close()


def test_questions_asked_in_one_turn_of_the_loop_go_to_the_child_in_one_write(tmp_path):
    """Under load many calls ask in the same turn: one system call (one wake of the child) for all of them, and
    the child answers each, by its id, also in as few writes."""
    cache = Cache(tmp_path / "cache", worker=True)
    worker = cache.worker
    assert worker is not None

    async def main() -> tuple[list[object], list[int], int]:
        deadline = time.monotonic() + 60
        while (client := worker.client()) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert client.transport is not None
        writes: list[int] = []
        write = client.transport.write

        def counted(data: bytes) -> None:
            writes.append(len(data))
            write(data)

        client.transport.write = counted  # type: ignore[method-assign]
        found = await asyncio.gather(*(client.search("p", f"question number {i}?") for i in range(8)))
        return list(found), writes, len(client.waiting)

    try:
        found, writes, unanswered = asyncio.run(main())
    finally:
        cache.close()
    assert found == [None] * 8 and unanswered == 0  # each answered (a miss: nothing stored), none timed out
    assert len(writes) == 1


def test_the_child_runs_at_a_lower_cpu_priority_than_the_app(tmp_path):
    """Where the cores are busy, the app's requests come first: the semantic tier gets the time left."""
    cache = Cache(tmp_path / "cache", worker=True)
    try:
        assert cache.worker is not None
        deadline = time.monotonic() + 60
        while not Path(cache.worker.socket_path).exists():  # set before it listens
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        app = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, cache.worker.pid) == min(app + cache.worker.nice, 19)
    finally:
        cache.close()
