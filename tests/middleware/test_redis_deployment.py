"""The README's Redis deployment: the Flask example app under gunicorn -w 4, budgets, ledger and cache in Redis.

A small proxy stands between the app and the real LLM server: it counts the
requests that reach the server and adds ``stop: ["\\n"]`` so the tiny model's
answers finish with ``"stop"`` (only those are cached). The app's cache key is
computed before the proxy, so the cache sees the app's request unchanged.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from app_servers import EXACT_PRICES, serve
from llama_server import free_port

import llmbudget
from llmbudget.ledger import RedisLedger

redis = pytest.importorskip("redis")

REDIS = "redis://127.0.0.1:6379/15"
LIMIT = Decimal("0.00002")  # input free, output $0.6/1M: eight calls' worst case (4 tokens) fit
WORST = Decimal(4) * Decimal("0.6") / 1_000_000
STATE: dict[str, Any] = {}  # the running deployment's proxy and Redis ledger


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail("no Redis on 127.0.0.1:6379: .ci/run starts one; start it with redis-server --port 6379")
    prefix = f"llmbudget-test-deploy-{uuid.uuid4().hex[:10]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class CountingProxy:
    """Forwards POSTs to the LLM server, adding stop=["\\n"], and counts them by their last user message."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                body["stop"] = ["\n"]
                proxy.seen[body["messages"][-1]["content"]] += 1
                path = self.path.removeprefix("/v1")
                request = urllib.request.Request(proxy.upstream + path, data=json.dumps(body).encode(),
                                                 headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as answer:
                    data, status = answer.read(), answer.status
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def deployment(llm_server: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Flask app under gunicorn -w 4 (sync), every store in Redis; yields its URL."""
    folder: Path = tmp_path_factory.mktemp("flask-redis")
    url = f"{REDIS}?prefix={redis_prefix}"
    policy = folder / "llmbudget.toml"
    policy.write_text(
        f'budget_store = "{url}"\n'
        f'ledger = "{url}"\n'
        "trust_tenant_header = true\n"
        f"{EXACT_PRICES}\n"
        "[cache]\n"
        f'path = "{REDIS}?prefix={redis_prefix}cache:"\n\n'
        "[[budgets]]\n"
        f'usd = "{LIMIT}"\n'
        'per = "tenant"\n'
        'period = "day"\n'
    )
    proxy = CountingProxy(llm_server)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--preload", "--graceful-timeout",
               "2", "--log-level", "warning", "-w", "4", "--worker-class", "sync", "flask_app:app"]
    try:
        with serve("flask-redis", command, port=port, policy=policy, llm_server=proxy.url, folder=folder,
                   limit=str(LIMIT)) as server:
            STATE["proxy"], STATE["ledger"] = proxy, RedisLedger(url)
            yield server.url
            STATE.pop("ledger").close()
    finally:
        proxy.close()


def _records(tenant: str, count: int) -> list[llmbudget.SpendRecord]:
    """The tenant's records in the Redis ledger, once ``count`` of them are there (or after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in STATE["ledger"].records() if r.tenant == tenant]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_four_workers_never_overspend_one_tenant_budget(deployment: str) -> None:
    who = f"t-{uuid.uuid4().hex[:12]}"

    def ask(number: int) -> httpx2.Response:
        return httpx2.post(deployment + "/chat", json={"prompt": f"Write the number {number} in words",
                                                       "max_tokens": 4},
                           headers={"x-tenant-id": who}, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(ask, range(24)))
    pids = {httpx2.get(deployment + "/scope", timeout=10).json()["pid"] for _ in range(40)}

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 402}, statuses
    assert statuses[402] > 0, "24 calls never exhausted a budget that fits eight"
    for refused in (r for r in responses if r.status_code == 402):
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert (problem["type"], problem["budget"], problem["tenant"]) == (
            "urn:llmbudget:budget-exceeded", "tenant/day", who)
        assert problem["limit_usd"] == float(LIMIT)
        assert Decimal(repr(problem["spent_usd"])) <= LIMIT
    records = _records(who, statuses[200])
    assert len(records) == statuses[200]
    spent = sum((r.cost_usd for r in records), Decimal(0))
    assert spent <= LIMIT
    # A refusal needs the others' spend plus holds above limit - worst case: at least eight calls were served.
    assert sum(not r.from_cache for r in records) >= int(LIMIT / WORST)
    assert len(pids) > 1, "gunicorn served everything from one worker"


def test_an_answer_from_one_worker_is_a_cache_hit_on_the_others(deployment: str) -> None:
    who = f"t-{uuid.uuid4().hex[:12]}"
    question = "Say hi"  # the tiny model echoes it and a newline: a "stop" answer within 12 tokens
    body = {"prompt": question, "max_tokens": 12}

    def ask(_: int) -> httpx2.Response:
        return httpx2.post(deployment + "/chat", json=body, headers={"x-tenant-id": who}, timeout=60)

    first = ask(0)
    assert first.status_code == 200, first.text
    # Concurrent repeats: the sync workers take one request at a time, so they spread over the four.
    with ThreadPoolExecutor(8) as pool:
        repeats = list(pool.map(ask, range(16)))
    assert [r.status_code for r in repeats] == [200] * 16, repeats[0].text
    assert {r.json()["text"] for r in repeats} == {first.json()["text"]}
    records = _records(who, 17)
    assert len(records) == 17
    assert records[0].usage.output_tokens < 12  # it ended at the stop sequence, so it could be cached
    assert [r.from_cache for r in records].count(False) == 1
    assert STATE["proxy"].seen[question] == 1  # the LLM server was reached once for it
