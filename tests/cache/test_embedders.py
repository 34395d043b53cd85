"""Embedders: the bundled WordLlama loads offline; the optional ones fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from llmbudget.cache import embedders
from llmbudget.cache.embedders import (
    Embedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    WordLlamaEmbedder,
    normalize_rows,
)

ROOT = Path(__file__).resolve().parents[2]

_OFFLINE_SCRIPT = """
import socket, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"network access during load: {args!r}")
socket.socket.connect = refuse
socket.create_connection = refuse
from llmbudget.cache.embedders import WordLlamaEmbedder
vectors = WordLlamaEmbedder().embed(["How do I learn Python?", "What is 2+2?"])
assert vectors.shape == (2, 256), vectors.shape
assert "wordllama" not in sys.modules, "the wordllama package was imported"
print("ok")
"""


def test_wordllama_loads_offline_from_the_wheel(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HOME": str(tmp_path),  # no ~/.cache/wordllama to fall back on
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert not (tmp_path / ".cache" / "wordllama").exists()


def test_wordllama_gives_256_d_unit_float32_rows() -> None:
    embedder = WordLlamaEmbedder()
    vectors = embedder.embed(["What is the capital of France?", "How do I cook rice?", "What is 2+2?"])
    assert embedder.dim == 256 and embedder.name == "wordllama-l2_supercat-256"
    assert vectors.dtype == np.float32 and vectors.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert isinstance(embedder, Embedder)


def test_wordllama_edge_cases() -> None:
    embedder = WordLlamaEmbedder()
    assert embedder.embed([]).shape == (0, 256)
    empty = embedder.embed([""])
    assert empty.shape == (1, 256) and not empty.any()
    with pytest.raises(TypeError):
        embedder.embed("a single string")
    small = WordLlamaEmbedder(dim=64).embed(["hello world"])
    assert small.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(small), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="dim"):
        WordLlamaEmbedder(dim=100)


def test_similar_questions_are_closer_than_unrelated_ones() -> None:
    a, b, c = WordLlamaEmbedder().embed(
        ["How can I lose weight fast?", "What is the quickest way to lose weight?", "Which port does SSH use?"]
    )
    assert float(a @ b) > float(a @ c)


def test_wordllama_loads_once_under_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = embedders._read_wordllama

    def counting(folder: Path) -> Any:
        calls.append(folder)
        return real(folder)

    monkeypatch.setattr(embedders, "_WORDLLAMA_MODEL", None)
    monkeypatch.setattr(embedders, "_read_wordllama", counting)
    results: list[np.ndarray] = []
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        results.append(WordLlamaEmbedder().embed(["same text"]))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 6 and all(np.array_equal(r, results[0]) for r in results)


def test_sentence_transformers_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    embedder = SentenceTransformerEmbedder()  # nothing imported yet
    with pytest.raises(ImportError, match=r"llmbudget\[sentence-transformers\]"):
        embedder.embed(["hello"])


class _FakeEmbeddings:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.calls: list[dict[str, Any]] = []

    def create(self, *, model: str, input: list[str], **extra: Any) -> Any:
        self.calls.append({"model": model, "input": list(input), **extra})
        data = [SimpleNamespace(index=i, embedding=[float(len(t)) + 1.0] * self.dim) for i, t in enumerate(input)]
        return SimpleNamespace(data=list(reversed(data)))  # out of order on purpose


def test_openai_embedder_uses_the_client_and_normalizes() -> None:
    fake = _FakeEmbeddings(8)
    embedder = OpenAIEmbedder(SimpleNamespace(embeddings=fake), "text-embedding-3-small", dimensions=8)
    vectors = embedder.embed(["a", "bbb"])
    assert vectors.shape == (2, 8) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert fake.calls == [{"model": "text-embedding-3-small", "input": ["a", "bbb"], "dimensions": 8}]
    assert embedder.name == "openai:text-embedding-3-small:8"
    assert OpenAIEmbedder(SimpleNamespace(embeddings=fake)).dim == 1536
    with pytest.raises(ValueError, match="dimensions"):
        OpenAIEmbedder(SimpleNamespace(embeddings=fake), "my-embedder")
    with pytest.raises(TypeError):
        OpenAIEmbedder(object())


def test_normalize_rows_keeps_zero_rows() -> None:
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    assert out.dtype == np.float32
