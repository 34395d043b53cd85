"""Real servers for the middleware tests: the example apps under uvicorn and gunicorn, on free ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from app_servers import EXACT_LIMIT, EXACT_PRICES, REAL_PRICES_LIMIT, Server, serve, write_policy
from llama_server import free_port


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
    policy = write_policy(folder, "fastapi", limit=REAL_PRICES_LIMIT, extra=extra)
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
    port = free_port()
    with serve("flask-gthread", _gunicorn(port, "--workers", "2", "--worker-class", "gthread", "--threads", "4"),
               port=port, policy=policy, llm_server=llm_server, folder=folder, limit=EXACT_LIMIT,
               env={"PROMETHEUS_MULTIPROC_DIR": str(prometheus)}) as server:
        yield server
