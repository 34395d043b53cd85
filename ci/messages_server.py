"""Run a real server that speaks Anthropic's Messages API (llama.cpp's HTTP server + Gemma 3 270M).

llama.cpp's own server answers ``POST /v1/messages`` (JSON and SSE, with Anthropic's
usage fields; ``cache_read_input_tokens`` counts the prompt tokens it reused from its
KV cache). It comes from the ``xllamacpp`` wheel (in the test extra: llama.cpp's C++
server in a Python extension, prebuilt for the portable x86-64 baseline, nothing to
compile), run in a child process.

    python ci/messages_server.py [--port 8790]  # serve on http://127.0.0.1:8790 (the anthropic SDK's base_url)

The 270M model is a base model: it echoes, so ask with ``stop_sequences=["\\n"]`` to
get answers that end by themselves (``stop_reason: end_turn``).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Iterator

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from llama_server import _STARTUP_TIMEOUT, foreground, free_port, model_path, run_server  # noqa: E402

__all__ = ["messages_server"]


def _command(*, port: int, alias: str | None, n_ctx: int, n_threads: int) -> list[str]:
    command = [sys.executable, __file__, "--serve", "--port", str(port), "--n-ctx", str(n_ctx),
               "--threads", str(n_threads)]
    return command + (["--alias", alias] if alias is not None else [])


def _serve(*, port: int, alias: str | None, n_ctx: int, n_threads: int) -> int:
    """Serve in this process with xllamacpp until SIGTERM or SIGINT."""
    import signal
    import threading

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path())
    params.n_ctx = n_ctx
    params.port = port
    params.n_parallel = 1
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    # The GGUF has no chat template: llama.cpp's built-in "gemma" one, without Jinja (with Jinja on, the
    # name would be read as a template itself).
    params.use_jinja = False
    params.chat_template = "gemma"
    if alias is not None:
        params.model_alias = {alias}  # a set of names
    server = xllamacpp.Server(params)  # listens from here on, in its own threads
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


@contextlib.contextmanager
def messages_server(*, alias: str | None = "claude-haiku-4-5", port: int | None = None, n_ctx: int = 4096,
                    n_threads: int = 1, startup_timeout: float = _STARTUP_TIMEOUT) -> Iterator[str]:
    """Run the server on 127.0.0.1 and yield its base URL (no ``/v1``: what ``Anthropic(base_url=...)`` takes)."""
    chosen = free_port(port)
    base_url = f"http://127.0.0.1:{chosen}"
    command = _command(port=chosen, alias=alias, n_ctx=n_ctx, n_threads=n_threads)
    with run_server(command, probe=f"{base_url}/health", name="llama.cpp's server (xllamacpp)",
                    startup_timeout=startup_timeout):
        yield base_url


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run llama.cpp's server (Messages API) with Gemma 3 270M.")
    parser.add_argument("--alias", default="claude-haiku-4-5", help="model name the server answers to")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    options = {"port": args.port, "alias": args.alias, "n_ctx": args.n_ctx, "n_threads": args.threads}
    if args.serve:
        return _serve(**options)
    return foreground(_command(**options),
                      f"serving the Messages API on http://127.0.0.1:{args.port} (Ctrl-C stops)")


if __name__ == "__main__":
    raise SystemExit(_main())
