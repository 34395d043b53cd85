"""Run the example apps (fixtures/apps) as real servers on free ports, and read what they recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

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
        """The ledger's records of one tenant, in the order they were written.

        The servers write records from a background thread within milliseconds of each call:
        read until two reads 0.2 s apart agree (at most 5 s)."""
        ledger = llmbudget.SQLiteLedger(self.ledger)
        deadline = time.monotonic() + 5
        seen = [r for r in ledger.records() if r.tenant == tenant]
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = [r for r in ledger.records() if r.tenant == tenant]
            if len(again) == len(seen):
                break
            seen = again
        return seen


def write_policy(folder: Path, name: str, *, limit: str, extra: str = "") -> Path:
    """An llmbudget.toml for one server: SQLite ledger and counters, a tenant day budget.

    The tests name tenants with ``x-tenant-id`` from 127.0.0.1, the one proxy trusted to set it.
    """
    policy = folder / f"{name}.toml"
    policy.write_text(
        f'ledger = "{folder / (name + "-ledger.db")}"\n'
        f'budget_store = "{folder / (name + "-budgets.db")}"\n'
        'trust_tenant_header = ["127.0.0.1"]\n'
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
