"""Run a real server that speaks Anthropic's Messages API (llama.cpp's HTTP server + Gemma 3 270M).

llama.cpp's own server answers ``POST /v1/messages`` (JSON and SSE, with Anthropic's
usage fields; ``cache_read_input_tokens`` counts the prompt tokens it reused from its
KV cache). It comes from the ``xllamacpp`` wheel (in the test extra: llama.cpp's C++
server in a Python extension, prebuilt for the portable x86-64 baseline, nothing to
compile), run in a child process. Without xllamacpp (a platform it has no wheel for),
``$LLMBUDGET_LLAMA_SERVER`` names a ``llama-server`` binary, or ``--build`` builds one
from the llama.cpp sources vendored in the installed llama-cpp-python's sdist (cmake,
portable baseline, static; about 5-6 minutes on 2 cores) into ``~/.cache/llmbudget``.

    python ci/messages_server.py [--port 8790]  # serve on http://127.0.0.1:8790 (the anthropic SDK's base_url)
    python ci/messages_server.py --build        # without xllamacpp: build llama-server once

The 270M model is a base model: it echoes, so ask with ``stop_sequences=["\\n"]`` to
get answers that end by themselves (``stop_reason: end_turn``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from llama_server import (  # noqa: E402
    _STARTUP_TIMEOUT,
    _cache_dir,
    _stop,
    _tail,
    free_port,
    model_path,
)

__all__ = ["binary", "build", "messages_server"]


def _llama_cpp_python_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise RuntimeError("llama-cpp-python is not installed: pip install -e '.[test]'") from None


def _target() -> pathlib.Path:
    return _cache_dir() / f"llama-server-{_llama_cpp_python_version()}" / "llama-server"


def binary() -> pathlib.Path:
    """The llama-server binary: ``$LLMBUDGET_LLAMA_SERVER``, else the cached build (built now if missing)."""
    configured = os.environ.get("LLMBUDGET_LLAMA_SERVER")
    if configured:
        path = pathlib.Path(configured).expanduser()
        if not path.is_file():
            raise RuntimeError(f"LLMBUDGET_LLAMA_SERVER={configured}: no such file")
        return path
    target = _target()
    if target.is_file():
        return target
    return build()


def _cmake() -> str:
    for candidate in (shutil.which("cmake"), str(pathlib.Path(sys.executable).parent / "cmake")):
        if candidate and pathlib.Path(candidate).is_file():
            return candidate
    raise RuntimeError("building llama-server needs cmake (pip install cmake); or pip install xllamacpp, which "
                       "needs no build")


def build(*, jobs: int | None = None) -> pathlib.Path:
    """Build llama-server from the installed llama-cpp-python's sdist; one build at a time (a file lock)."""
    target = _target()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process (a pytest-xdist worker) may be building it
        if target.is_file():
            return target
        version = _llama_cpp_python_version()
        print(f"building llama-server from llama-cpp-python {version}'s llama.cpp (once; about 5 minutes)",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
            work = pathlib.Path(tmp)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", str(work)], check=True)
            [sdist] = list(work.glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as archive:
                try:
                    archive.extractall(work, filter="data")
                except TypeError:  # Python without extraction filters (< 3.10.12): the sdist is PyPI's
                    archive.extractall(work)  # noqa: S202
            [source] = list(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
            cmake = _cmake()
            options = ["-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                       "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                       "-DCMAKE_BUILD_TYPE=Release"]
            subprocess.run([cmake, "-S", str(source), "-B", str(work / "build"), *options], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([cmake, "--build", str(work / "build"), "--target", "llama-server", "-j",
                            str(jobs or os.cpu_count() or 2)], check=True, stdout=subprocess.DEVNULL)
            built = work / "build" / "bin" / "llama-server"
            partial = target.with_suffix(".tmp")
            shutil.copy2(built, partial)
            os.replace(partial, target)
    return target


def _has_xllamacpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("xllamacpp") is not None and not os.environ.get("LLMBUDGET_LLAMA_SERVER")


def _command(*, port: int, alias: str | None, n_ctx: int, n_threads: int) -> list[str]:
    # The GGUF has no chat template: llama.cpp's built-in "gemma" one, without Jinja (with Jinja on, the
    # name would be read as a template itself).
    if _has_xllamacpp():
        command = [sys.executable, __file__, "--serve", "--port", str(port), "--n-ctx", str(n_ctx),
                   "--threads", str(n_threads)]
        return command + (["--alias", alias] if alias is not None else [])
    command = [str(binary()), "-m", str(model_path()), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(n_ctx), "-t", str(n_threads), "--no-jinja", "--chat-template", "gemma", "--no-webui"]
    if alias is not None:
        command += ["--alias", alias]
    return command


def _serve_xllamacpp(*, port: int, alias: str | None, n_ctx: int, n_threads: int) -> int:
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


def _wait_until_ready(process: subprocess.Popen[bytes], base_url: str, log_path: pathlib.Path,
                      timeout: float) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with code {process.returncode} before answering "
                               f"{base_url}/health; its output ends with:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"llama-server did not answer {base_url}/health within {timeout:.0f} s; "
                               f"its output ends with:\n{_tail(log_path)}")
        time.sleep(0.25)


@contextlib.contextmanager
def messages_server(*, alias: str | None = "claude-haiku-4-5", port: int | None = None, n_ctx: int = 4096,
                    n_threads: int = 1, startup_timeout: float = _STARTUP_TIMEOUT) -> Iterator[str]:
    """Run llama-server on 127.0.0.1 and yield its base URL (no ``/v1``: what ``Anthropic(base_url=...)`` takes)."""
    chosen = free_port(port)
    base_url = f"http://127.0.0.1:{chosen}"
    command = _command(port=chosen, alias=alias, n_ctx=n_ctx, n_threads=n_threads)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log_path = pathlib.Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_until_ready(process, base_url, log_path, startup_timeout)
                yield base_url
            finally:
                _stop(process)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run llama.cpp's llama-server (Messages API) with Gemma 3 270M.")
    parser.add_argument("--build", action="store_true", help="build the binary if it is not built yet, and exit")
    parser.add_argument("--alias", default="claude-haiku-4-5", help="model name the server answers to")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process (xllamacpp)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve_xllamacpp(port=args.port, alias=args.alias, n_ctx=args.n_ctx, n_threads=args.threads)
    if args.build:
        print(binary(), file=sys.stderr)
        return 0
    process = subprocess.Popen(_command(port=args.port, alias=args.alias, n_ctx=args.n_ctx, n_threads=args.threads))
    print(f"serving the Messages API on http://127.0.0.1:{args.port} (Ctrl-C stops)", file=sys.stderr)
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop(process)
        return 130


if __name__ == "__main__":
    raise SystemExit(_main())
