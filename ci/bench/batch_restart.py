"""500 deferred calls, the process killed mid-job, every answer back after a restart.

    python ci/bench/batch_restart.py [--calls 500]

Starts the local LLM server (llama-cpp-python + Gemma 3 270M) and the local Files and
Batches server (``ci/batch_server.py``) in this process. A child process makes ``--calls``
chat calls inside ``llmbudget.defer("batch")`` (asyncio tasks, one Batch API job) and is
killed with SIGKILL as soon as its job exists and is running. Then ``llmbudget batches
--resume --wait`` (a new process, as after a restart) fetches the job's answers, writes
them to the state folder and records their spend in a SQLite ledger. Prints how many
calls got an answer, how many were recorded, and their cost at gpt-4o-mini's batch price
against the standard one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "data" / "tiktoken"))

CHILD = """
import asyncio, sys, llmbudget, openai
base_url, state, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
llmbudget.configure(batcher=llmbudget.Batcher(state=state, linger=2.0, poll_interval=0.5))

async def main():
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0,
                                  http_client=llmbudget.async_http_client()) as client:
        with llmbudget.defer("batch"):
            await asyncio.gather(*(client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": f"Question {n}: say a number."}]) for n in range(calls)))

asyncio.run(main())
"""


def main(argv: list[str] | None = None) -> int:
    from batch_server import batch_server
    from llama_server import llama_server

    from llmbudget.ledger import SQLiteLedger
    from llmbudget.pricing import Pricing

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmbudget-batch-restart-") as tmp, \
            llama_server(alias="gpt-4o-mini", n_threads=2) as upstream, batch_server(upstream, delay=1.0) as server:
        state, ledger = Path(tmp) / "batches", Path(tmp) / "ledger.db"
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(state), str(args.calls)],
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        while not any(b["status"] == "in_progress" and b["request_counts"]["completed"] > 0
                      for b in server.batches.values()):
            if child.poll() is not None:
                raise SystemExit(f"the client exited ({child.returncode}) before its job ran")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        [job] = server.batches.values()
        killed_at = job["request_counts"]["completed"]
        print(f"client killed after {time.perf_counter() - started:.1f} s, job {job['id']} at "
              f"{killed_at}/{job['request_counts']['total']} lines")
        resumed = subprocess.run([sys.executable, "-m", "llmbudget.cli", "batches", "--state", str(state), "--resume",
                                  "--wait", "--ledger", str(ledger), "--json"], capture_output=True, text=True,
                                 env={**os.environ, "OPENAI_API_KEY": "sk-test", "PYTHONPATH": str(ROOT)}, check=True)
        [summary] = json.loads(resumed.stdout)
        results = [json.loads(line) for line in (state / f"{summary['id']}.results.jsonl").read_text().splitlines()]
        records = list(SQLiteLedger(ledger).records())
        answered = sum(1 for r in results if r["status"] == 200 and r["body"]["choices"])
        cost = sum((r.cost_usd for r in records), Decimal(0))
        standard = sum((Pricing().cost(r.usage.replace(service_tier=None), model=r.model).usd for r in records),
                       Decimal(0))
        print(f"after the restart: {answered}/{args.calls} calls answered, {len(records)} recorded in the ledger, "
              f"job {summary['status']}, {time.perf_counter() - started:.1f} s in all")
        print(f"cost at gpt-4o-mini's batch price ${cost:.6f} (standard ${standard:.6f}, "
              f"{float((standard - cost) / standard * 100) if standard else 0:.0f}% saved)")
        return 0 if answered == args.calls == len(records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
