"""Requests per second of a web app under uvicorn, plain and behind llmbudget's middleware.

Three processes on loopback: an OpenAI-compatible upstream that answers at once
with a recorded response (ci/bench/throughput_apps.py), and one uvicorn app per
mode, each answering ``POST /ask`` with one ``AsyncOpenAI`` chat completion:

- ``plain``: no middleware;
- ``budgets``: the middleware with SQLite budgets (a tenant budget per day and a
  request budget) and a SQLite ledger;
- ``full``: the same plus the semantic cache (SQLite + usearch files), every
  prompt unique, so every call looks up, misses, calls upstream and stores;
- ``exact`` (not run by default): ``full`` with the cache's ``semantic = false``
  (exact repeats only: nothing embedded, no verifier);
- ``worker``: ``full`` with the cache's ``worker = true`` (its semantic tier in a
  process of its own; its CPU is reported apart);
- ``batched``: ``budgets`` with SQLite settles batched (``settle_delay=0.02``).

A load generator with ``--concurrency`` clients sends ``--requests`` requests to
one mode, then the next; modes alternate for ``--rounds`` rounds (the order
rotates), so machine noise hits every mode alike. Each run is bounded in time by
``--max-seconds``. Prints per mode the median requests per second over rounds,
the p50 and p99 latency over all requests, and the median of the per-round ratio
to ``plain``.

    python ci/bench/throughput.py [--requests 2000] [--concurrency 32] [--rounds 3] [--modes plain,budgets,batched,full,exact,worker]
        [--against OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TIKTOKEN = ROOT.parent / "shared" / "data" / "tiktoken"

POLICIES = {
    "budgets": """
ledger = "ledger.db"
budget_store = "budgets.db"

[[budgets]]
usd = "1000"
per = "tenant"
period = "day"

[[budgets]]
usd = "1"
per = "request"
""",
}
# settles batched into the next reservation's transaction (SQLiteBudgetStore settle_delay)
POLICIES["batched"] = POLICIES["budgets"].replace('"budgets.db"', '"budgets.db?settle_delay=0.02"')
POLICIES["full"] = POLICIES["budgets"] + """
[cache]
path = "cache"
"""
# the same cache, exact repeats only: no embedding, no verifier
POLICIES["exact"] = POLICIES["full"] + "semantic = false\n"
# the same cache, its semantic tier in a worker process
POLICIES["worker"] = POLICIES["full"] + "worker = true\n"

WORDS = (
    "invoice refund shipping warranty password router printer kernel garden recipe bicycle lease mortgage "
    "vaccine sonnet glacier volcano tariff pension violin enzyme satellite harbor thermostat ledger budget "
    "compiler database tenant ticket schedule airline hotel museum chemistry poetry battery orbit protein "
    "contract lawsuit audit payroll insulin antenna bridge tunnel canal quartz marble falcon salmon tomato "
    "espresso cheddar sourdough hiking kayak chess violin piano trumpet novel opera ballet cinema camera"
).split()
STEMS = (
    "How do I fix a {0} problem with my {1} when the {2} is late?",
    "Explain the difference between a {0} and a {1} for someone who owns a {2}.",
    "Write two sentences about {0}, {1} and {2}.",
    "What should I check first if my {0} affects the {1} of the {2}?",
    "Summarise the history of the {0} and its link to the {1} and the {2}.",
)


def prompts(count: int, seed: int) -> list[str]:
    """``count`` prompts, none repeated, in the words of users with a question each."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        text = rng.choice(STEMS).format(*rng.sample(WORDS, 3)) + f" (order {rng.randrange(10**6)})"
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat(path: Path) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used so far: user + system) from a /proc ``stat`` file; None when it is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, stat: str = "stat") -> float:
    """CPU time (user + system) the process has used so far (``stat="task/<pid>/stat"``: its main thread,
    uvicorn's event loop); 0 where /proc is missing."""
    found = _stat(Path(f"/proc/{pid}/{stat}"))
    return 0.0 if found is None else found[1]


def children_cpu_seconds(pid: int) -> float:
    """CPU time the process's running children have used so far (the cache's worker process)."""
    found = (_stat(path) for path in Path("/proc").glob("[0-9]*/stat"))
    return sum(used for parent, used in filter(None, found) if parent == pid)


@contextmanager
def uvicorn(target: str, *, env: dict[str, str], factory: bool = False) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", target, "--app-dir", str(HERE), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log",
               # Connections idle while other modes run stay open: closed after uvicorn's default 5 s, the
               # app's pooled connection to the upstream could be reused as it closed (a ReadError, a 500).
               "--timeout-keep-alive", "3600"]
    if factory:
        command.append("--factory")
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=env.get("BENCH_CWD", str(HERE)))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{target} did not start") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


async def load(url: str, texts: list[str], concurrency: int, max_seconds: float) -> tuple[float, list[float], list[str]]:
    """Send every text once with ``concurrency`` clients; requests per second, latencies, and what failed
    (a status other than 200, or a connection error), one line each."""
    latencies: list[float] = []
    failures: list[str] = []
    queue = iter(texts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            for text in queue:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    response = await client.post("/ask", json={"prompt": text})
                except httpx.TransportError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, failures


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per mode per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200, help="requests per mode before measuring")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit of one run")
    parser.add_argument("--modes", default="plain,budgets,batched,full")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also run every mode but plain with llmbudget from another checkout (named MODE@base), "
                             "alternating with this one's: two versions compared within one run")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"plain", *POLICIES}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.against is not None:
        if not (args.against / "llmbudget" / "__init__.py").is_file():
            parser.error(f"--against {args.against}: no llmbudget package there")
        modes += [f"{m}@base" for m in modes if m != "plain"]

    env = {"TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", str(TIKTOKEN)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rps: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}  # app CPU seconds per request, per run
    loop_cpu: dict[str, list[float]] = {m: [] for m in modes}  # of it, its event loop's thread
    child_cpu: dict[str, list[float]] = {m: [] for m in modes}  # its children's (the cache worker)
    lat: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        upstream, _ = stack.enter_context(uvicorn("throughput_apps:upstream", env=env))
        apps: dict[str, tuple[str, int]] = {}
        for mode in modes:
            mode_env = {**env, "BENCH_UPSTREAM": upstream + "/v1"}
            if mode.endswith("@base"):
                mode_env["PYTHONPATH"] = os.pathsep.join([str(args.against.resolve()), env["PYTHONPATH"]])
            if mode != "plain":
                folder = Path(tmp) / mode
                folder.mkdir()
                (folder / "llmbudget.toml").write_text(POLICIES[mode.removesuffix("@base")])
                mode_env["BENCH_POLICY"] = str(folder / "llmbudget.toml")
            apps[mode] = stack.enter_context(uvicorn("throughput_apps:app", env=mode_env, factory=True))
        texts = prompts(args.rounds * args.requests * len(modes) + args.warmup * len(modes), seed=7)

        def run(mode: str, count: int) -> tuple[float, list[float], tuple[float, float, float]]:
            url, pid = apps[mode]
            loop = f"task/{pid}/stat"
            before = cpu_seconds(pid), cpu_seconds(pid, loop), children_cpu_seconds(pid)
            rate, latencies, failed = asyncio.run(load(url, [texts.pop() for _ in range(count)],
                                                       args.concurrency, args.max_seconds))
            if failed:
                raise SystemExit(f"{mode}: {len(failed)} of {count} requests failed; the first: {failed[0]}")
            after = cpu_seconds(pid), cpu_seconds(pid, loop), children_cpu_seconds(pid)
            used = tuple((b - a) / max(1, len(latencies)) for a, b in zip(before, after, strict=True))
            return rate, latencies, used  # type: ignore[return-value]

        for mode in modes:
            run(mode, args.warmup)
        for r in range(args.rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                rate, latencies, (per_request, on_loop, in_child) = run(mode, args.requests)
                rps[mode].append(rate)
                cpu[mode].append(per_request)
                loop_cpu[mode].append(on_loop)
                child_cpu[mode].append(in_child)
                lat[mode].extend(latencies)
                print(f"round {r + 1} {mode:12} {rate:7.1f} req/s {per_request * 1000:6.2f} ms app CPU per request "
                      f"({on_loop * 1000:.2f} on its event loop, {in_child * 1000:.2f} in its worker)", flush=True)

    def ratio(figures: dict[str, list[float]], mode: str, invert: bool = False) -> str:
        if "plain" not in figures or mode == "plain":
            return ""
        pairs = zip(figures[mode], figures["plain"], strict=True)
        return f"{statistics.median((b / a) if invert else (a / b) for a, b in pairs):.2f}x"

    print(f"\n{args.requests} unique prompts per run, {args.concurrency} concurrent clients, {args.rounds} rounds")
    print(f"{'mode':12} {'req/s':>8} {'x plain':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} {'x plain (CPU)':>14}"
          f" {'loop ms/req':>12} {'x plain (loop)':>15} {'worker ms/req':>14}")
    for mode in modes:
        print(f"{mode:12} {statistics.median(rps[mode]):8.1f} {ratio(rps, mode):>8} "
              f"{_pct(lat[mode], 0.5) * 1000:8.1f} {_pct(lat[mode], 0.99) * 1000:8.1f} "
              f"{statistics.median(cpu[mode]) * 1000:11.2f} {ratio(cpu, mode, invert=True):>14} "
              f"{statistics.median(loop_cpu[mode]) * 1000:12.2f} {ratio(loop_cpu, mode, invert=True):>15} "
              f"{statistics.median(child_cpu[mode]) * 1000:14.2f}")
    print("req/s and latency: medians over rounds; x plain: the median of the per-round ratios; x plain (CPU):\n"
          "plain's app CPU per request over this mode's; x plain (loop): the same of the event loop's thread alone,\n"
          "the throughput ratio when that thread's core is the limit (a machine with cores to spare); worker: the\n"
          "CPU of the app's child processes (the cache worker), not in the app's.")

if __name__ == "__main__":
    main()
