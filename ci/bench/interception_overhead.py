"""How much time llmbudget adds to an OpenAI SDK call (interception + parsing + pricing + ledger).

Two servers, both local:
- a replay server answering with responses recorded from the real LLM server
  (fixtures/cassettes), so that a call takes ~1 ms and the microseconds llmbudget
  adds are measurable;
- optionally (--llama) the real llama-cpp-python server, for the ratio on real calls.

Plain SDK calls and llmbudget calls alternate, so machine noise hits both alike.
Prints p50 and p99 per mode and the microseconds added (difference of the p50s and of the p99s).
Every call asks the same question unless --fresh-prompts (then no prompt text repeats, so
token counts of earlier prompts cannot be reused).

    python ci/bench/interception_overhead.py [--calls 2000] [--modes sync,stream,async] [--fresh-prompts] [--llama]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "data" / "tiktoken"))

import openai  # noqa: E402
import yaml  # noqa: E402

import llmbudget  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
_fresh = [False]
_asked = [0]


def question() -> list[dict[str, str]]:
    """The messages of the next call: the same question, or with --fresh-prompts one never asked before."""
    if not _fresh[0]:
        return QUESTION
    _asked[0] += 1
    return [{"role": "user", "content": f"What is the capital of France? (question {_asked[0]})"}]


def _recorded(name: str) -> tuple[bytes, str]:
    data = yaml.safe_load((ROOT / "fixtures" / "cassettes" / name).read_text())
    response = data["interactions"][0]["response"]
    return response["body"]["string"].encode(), response["headers"]["content-type"][0]


class _Replay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: dict[bool, tuple[bytes, str]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        content, content_type = self.answers[b'"stream":true' in body]
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


def replay_server() -> str:
    _Replay.answers = {False: _recorded("chat.yaml"), True: _recorded("chat_stream.yaml")}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_sync(base_url: str, calls: int, *, stream: bool, max_tokens: int) -> dict[str, list[float]]:
    plain = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    wrapped = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0, http_client=llmbudget.http_client())
    times: dict[str, list[float]] = {"plain": [], "llmbudget": []}

    def one(client: openai.OpenAI) -> float:
        start = time.perf_counter()
        if stream:
            for _ in client.chat.completions.create(
                model="gpt-4o-mini", messages=question(), max_tokens=max_tokens, stream=True
            ):
                pass
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=question(), max_tokens=max_tokens)
        return time.perf_counter() - start

    for client in (plain, wrapped):  # warm up connections, imports, caches
        for _ in range(20):
            one(client)
    for i in range(calls):
        order = (("plain", plain), ("llmbudget", wrapped)) if i % 2 else (("llmbudget", wrapped), ("plain", plain))
        for name, client in order:
            times[name].append(one(client))
    return times


def measure_async(base_url: str, calls: int, *, max_tokens: int) -> dict[str, list[float]]:
    async def run() -> dict[str, list[float]]:
        plain = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        wrapped = openai.AsyncOpenAI(
            base_url=base_url, api_key="sk-bench", max_retries=0, http_client=llmbudget.async_http_client()
        )
        times: dict[str, list[float]] = {"plain": [], "llmbudget": []}

        async def one(client: openai.AsyncOpenAI) -> float:
            start = time.perf_counter()
            await client.chat.completions.create(model="gpt-4o-mini", messages=question(), max_tokens=max_tokens)
            return time.perf_counter() - start

        for client in (plain, wrapped):
            for _ in range(20):
                await one(client)
        for i in range(calls):
            order = (("plain", plain), ("llmbudget", wrapped)) if i % 2 else (("llmbudget", wrapped), ("plain", plain))
            for name, client in order:
                times[name].append(await one(client))
        return times

    return asyncio.run(run())


def report(label: str, times: dict[str, list[float]]) -> dict[str, float]:
    plain, wrapped = times["plain"], times["llmbudget"]
    row = {
        "calls": len(plain),
        "plain_p50_us": statistics.median(plain) * 1e6,
        "plain_p99_us": pct(plain, 0.99) * 1e6,
        "llmbudget_p50_us": statistics.median(wrapped) * 1e6,
        "llmbudget_p99_us": pct(wrapped, 0.99) * 1e6,
    }
    row["added_p50_us"] = row["llmbudget_p50_us"] - row["plain_p50_us"]
    row["added_p99_us"] = row["llmbudget_p99_us"] - row["plain_p99_us"]
    row["ratio_p50"] = row["llmbudget_p50_us"] / row["plain_p50_us"]
    print(
        f"{label:<28} plain p50 {row['plain_p50_us']:9.0f} us  p99 {row['plain_p99_us']:9.0f} us | "
        f"llmbudget p50 {row['llmbudget_p50_us']:9.0f} us  p99 {row['llmbudget_p99_us']:9.0f} us | "
        f"added p50 {row['added_p50_us']:7.0f} us  p99 {row['added_p99_us']:7.0f} us  ratio {row['ratio_p50']:.3f}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per mode against the replay server")
    parser.add_argument("--modes", default="sync,stream,async", help="which of sync, stream, async to measure")
    parser.add_argument("--fresh-prompts", action="store_true", help="a question never asked before in every call")
    parser.add_argument("--llama", action="store_true", help="also measure against the real llama-cpp server")
    parser.add_argument("--llama-calls", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = set(modes) - {"sync", "stream", "async"}
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; expected sync, stream, async")
    _fresh[0] = args.fresh_prompts
    llmbudget.configure()
    results = {}
    base = replay_server()
    if "sync" in modes:
        results["sync"] = report("sync (replay server)", measure_sync(base, args.calls, stream=False, max_tokens=16))
    if "stream" in modes:
        results["stream"] = report("stream (replay server)", measure_sync(base, args.calls, stream=True,
                                                                          max_tokens=12))
    if "async" in modes:
        results["async"] = report("async (replay server)", measure_async(base, args.calls, max_tokens=16))
    if args.llama:
        sys.path.insert(0, str(ROOT / "ci"))
        from llama_server import llama_server

        with llama_server(alias="gpt-4o-mini") as url:
            results["llama_sync"] = report("sync (llama server)", measure_sync(url, args.llama_calls, stream=False,
                                                                              max_tokens=4))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
