"""Real servers for the middleware tests: the example apps under uvicorn and gunicorn, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from llama_server import free_port

import llmbudget

APPS = Path(__file__).resolve().parents[2] / "fixtures" / "apps"
STARTUP_TIMEOUT = 90.0


@dataclass(frozen=True)
class Server:
    """One running example app: its URL and the files its policy writes."""

    name: str
    url: str
    ledger: Path
    budgets: Path
    limit: Decimal
    log: Path

    def records(self, tenant: str) -> list[llmbudget.SpendRecord]:
        """The ledger's records of one tenant, in the order they were written."""
        return [r for r in llmbudget.SQLiteLedger(self.ledger).records() if r.tenant == tenant]


def write_policy(folder: Path, name: str, *, limit: str, extra: str = "") -> Path:
    """An llmbudget.toml for one server: SQLite ledger and counters, a tenant day budget."""
    policy = folder / f"{name}.toml"
    policy.write_text(
        f'ledger = "{folder / (name + "-ledger.db")}"\n'
        f'budget_store = "{folder / (name + "-budgets.db")}"\n'
        f"{extra}\n"
        "[[budgets]]\n"
        f'usd = "{limit}"\n'
        'per = "tenant"\n'
        'period = "day"\n'
    )
    return policy


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/scope", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@contextmanager
def serve(name: str, command: list[str], *, port: int, policy: Path, llm_server: str, folder: Path,
          limit: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Run ``command`` (a server of an app in fixtures/apps) until the block ends."""
    log_path = folder / f"{name}.log"
    environment = {
        **os.environ,
        "OPENAI_BASE_URL": llm_server,
        "OPENAI_API_KEY": "sk-test",
        "LLMBUDGET_POLICY": str(policy),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=APPS, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _ready(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start ({command}); its log:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield Server(name, url, folder / f"{name}-ledger.db", folder / f"{name}-budgets.db", Decimal(limit),
                         log_path)
        finally:
            process.send_signal(signal.SIGINT)  # quick shutdown for gunicorn and uvicorn alike
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# Real prices; a tenant may spend $0.00003 a day (about seven calls of "Say hi" with max_tokens=4).
REAL_PRICES_LIMIT = "0.00003"
# Input free, so a call's worst case (max_tokens of output) is exact: 8 calls of 4 tokens fit $0.00002.
EXACT_LIMIT = "0.00002"
EXACT_PRICES = '[prices]\n"gpt-4o-mini" = { input = 0, output = 0.6 }\n'


@pytest.fixture(scope="session")
def fastapi_server(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The FastAPI app under uvicorn (one process)."""
    folder = tmp_path_factory.mktemp("fastapi")
    extra = (
        "[metrics]\npath = \"/metrics\"\n"
        "[[routes]]\npath = \"/admin/*\"\nenabled = false\n"
        "[[routes]]\npath = \"/limited/*\"\nbudgets = [{ usd = \"0.000001\", per = \"request\" }]\n"
        "[[routes]]\npath = \"/chat/sync\"\nheaders = true\n"
    )
    # Top-level keys must come before the tables: put the budget last by hand.
    policy = folder / "fastapi.toml"
    policy.write_text(
        f'ledger = "{folder / "fastapi-ledger.db"}"\nbudget_store = "{folder / "fastapi-budgets.db"}"\n'
        f'[[budgets]]\nusd = "{REAL_PRICES_LIMIT}"\nper = "tenant"\nperiod = "day"\n{extra}'
    )
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    with serve("fastapi", command, port=port, policy=policy, llm_server=llm_server, folder=folder,
               limit=REAL_PRICES_LIMIT) as server:
        yield server


def _gunicorn(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--preload", "--graceful-timeout", "2",
            "--log-level", "warning", *options, "flask_app:app"]


@pytest.fixture(scope="session")
def flask_sync_server(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The Flask app under gunicorn, two sync workers (two processes sharing the SQLite files)."""
    folder = tmp_path_factory.mktemp("flask-sync")
    policy = write_policy(folder, "flask-sync", limit=REAL_PRICES_LIMIT)
    port = free_port()
    with serve("flask-sync", _gunicorn(port, "--workers", "2", "--worker-class", "sync"), port=port, policy=policy,
               llm_server=llm_server, folder=folder, limit=REAL_PRICES_LIMIT) as server:
        yield server


@pytest.fixture(scope="session")
def flask_gthread_server(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The Flask app under gunicorn, two gthread workers of four threads, metrics across workers."""
    folder = tmp_path_factory.mktemp("flask-gthread")
    prometheus = folder / "prometheus"
    prometheus.mkdir()
    policy = write_policy(folder, "flask-gthread", limit=EXACT_LIMIT,
                          extra='metrics = { path = "/metrics" }\n' + EXACT_PRICES)
    # [prices] opens a table: keep the budget array after it, as write_policy does.
    port = free_port()
    with serve("flask-gthread", _gunicorn(port, "--workers", "2", "--worker-class", "gthread", "--threads", "4"),
               port=port, policy=policy, llm_server=llm_server, folder=folder, limit=EXACT_LIMIT,
               env={"PROMETHEUS_MULTIPROC_DIR": str(prometheus)}) as server:
        yield server
