"""A second-stage hit decision that catches rewordings: the verifier's features plus MiniLM.

The verifier (WordLlama + lexical features, trained on Quora pairs) keeps
precision but misses most rewordings. :class:`RewordReranker` scores the few
candidates the store found above its WordLlama cosine floor with boosted trees
over the verifier's 34 features and the all-MiniLM-L6-v2 cosine of the two
texts (``llmbudget.cache.minilm``, numpy; the weights say how many layers and
tokens MiniLM runs: the shipped ones read a text's first 32 tokens). The query is embedded by MiniLM once
per lookup; a stored entry's MiniLM vector is computed when it is stored and
kept in the entry's scorer data (``_pack_texts`` / ``_score_packed``, the hooks
the cache stores already call), so a lookup runs one MiniLM forward pass.

Weights: ``reranker_weights.json`` beside this file (written by
``ci/train/train_reranker.py --out``). When they name a ``minilm_adapter``
(the shipped ones do: ``minilm_adapter.npz``, a low-rank adapter fine-tuned by
``ci/train/tune_minilm.py``), MiniLM runs with it merged into its weights, and
entries packed without it (another tag) are re-embedded when scored.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .embedders import WordLlamaEmbedder
from .minilm import MiniLMEmbedder
from .verifier import Verifier

__all__ = ["RewordReranker"]

_WEIGHTS_FILE = "reranker_weights.json"
_FORMAT = "llmbudget-reranker/1"
_TAG = b"R\x01"  # packed data: tag, uint32 length of the verifier's part, that part, 384 float16 MiniLM values

_DIM = 384
_EXTRA = ("minilm_cosine", "minilm_minus_wordllama")  # after the verifier's 34 features


def _tag(layers: int, tokens: int, adapter: bytes | None = None) -> bytes:
    """The packed data's tag: vectors of a MiniLM cut to fewer layers or tokens are another format, and so
    are those of a MiniLM with an adapter (``adapter``: the adapter file's bytes; the tag then carries their
    CRC-32, so the vectors of another adapter are never read as this one's)."""
    if (layers, tokens, adapter) == (6, 256, None):
        return _TAG
    shape = bytes([layers * 16 + min(tokens // 32, 8) + 2])
    return b"R" + shape if adapter is None else b"A" + shape + zlib.crc32(adapter).to_bytes(4, "little")


def _b64(value: str, dtype: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(value)), dtype=np.dtype(dtype))


class _Trees:
    """Boosted depth-d trees (the arrays ``train_verifier.fit_trees`` writes), evaluated row by row."""

    def __init__(self, g: dict[str, Any]) -> None:
        self.depth, trees = int(g["depth"]), int(g["trees"])
        inner = 2**self.depth - 1
        self.base = float(g["base"])
        self.feature = _b64(g["feature"], "uint8").reshape(trees, inner).astype(np.intp)
        self.threshold = _b64(g["threshold"], "float32").reshape(trees, inner).astype(np.float64)
        self.leaf = _b64(g["leaf"], "float32").reshape(trees, inner + 1).astype(np.float64)
        self._rows = np.arange(trees)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Every row's trees walked at once, level by level: (rows, features) -> (rows,) logits."""
        trees = self._rows
        node = np.zeros((x.shape[0], trees.shape[0]), dtype=np.intp)
        picked = np.arange(x.shape[0])[:, None]
        for level in range(self.depth):
            slot = (1 << level) - 1 + node
            node = 2 * node + (x[picked, self.feature[trees, slot]] >= self.threshold[trees, slot])
        return self.base + self.leaf[trees, node].sum(axis=1)


class RewordReranker:
    """Scores (query, stored question) pairs in [0, 1] from the verifier's features and MiniLM's cosine.

    A scorer for :class:`~llmbudget.cache.store.CacheStore`: pass it as ``scorer=``
    with a lower WordLlama floor than the verifier's (``min_cosine=0.5, candidates=1``, the figures it was
    validated with: scoring four candidates found no more rewordings and added wrong hits).
    """

    def __init__(self, weights: dict[str, Any] | None = None, *, minilm: MiniLMEmbedder | None = None,
                 verifier: Verifier | None = None, cache_size: int = 1024) -> None:
        data = weights if weights is not None else json.loads(
            importlib.resources.files("llmbudget.cache").joinpath(_WEIGHTS_FILE).read_text(encoding="utf-8"))
        if data.get("format") != _FORMAT:
            raise ValueError(f"reranker weights have format {data.get('format')!r}, expected {_FORMAT!r}: "
                             "regenerate them with ci/train/train_reranker.py --out")
        if list(data.get("features", ())) != list(_EXTRA):
            raise ValueError(f"reranker weights use features {data.get('features')!r}, this code computes {_EXTRA!r}")
        self.threshold: float = float(data["threshold"])
        self.min_cosine: float = float(data.get("floor", 0.5))
        self.candidates: int = int(data.get("candidates", 1))
        layers, tokens = int(data.get("minilm_layers", 6)), int(data.get("minilm_tokens", 256))
        adapter = Path(__file__).with_name(data["minilm_adapter"]) if data.get("minilm_adapter") else None
        self.embedder = WordLlamaEmbedder()
        self.embedder_name: str = self.embedder.name
        self.verifier = verifier if verifier is not None else Verifier()
        self.minilm = minilm if minilm is not None else MiniLMEmbedder(layers=layers, max_tokens=tokens,
                                                                         adapter=adapter)
        self.minilm.check()
        if (self.minilm.layers, self.minilm.max_tokens) != (layers, tokens):
            raise ValueError(f"these reranker weights were trained on MiniLM's first {layers} layers and "
                             f"{tokens} tokens, the embedder given runs {self.minilm.layers} and "
                             f"{self.minilm.max_tokens}")
        if (self.minilm.adapter and self.minilm.adapter.name) != (adapter and adapter.name):
            raise ValueError(f"these reranker weights were trained on MiniLM with the adapter "
                             f"{data.get('minilm_adapter')!r}, the embedder given has {self.minilm.adapter!r}")
        self._tag = _tag(layers, tokens, None if self.minilm.adapter is None else self.minilm.adapter.read_bytes())
        self._trees = _Trees(data["gbdt"])
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        _RERANKERS.add(self)  # its lock is new in a forked child

    # ------------------------------------------------------------------ Scorer

    def score(self, query_text: str, query_vec: np.ndarray | None, cand_text: str,
              cand_vec: np.ndarray | None) -> float:
        """P(same question) of one candidate (see :meth:`score_many`)."""
        vecs = None if cand_vec is None else np.asarray(cand_vec)[None, :]
        return float(self.score_many(query_text, query_vec, [cand_text], vecs)[0])

    def score_many(self, query_text: str, query_vec: np.ndarray | None, cand_texts: Sequence[str],
                   cand_vecs: np.ndarray | None = None) -> np.ndarray:
        """One probability per candidate; MiniLM embeds the texts it has not seen lately."""
        return self._score(query_text, query_vec, cand_texts, cand_vecs, self._minilm(list(cand_texts)),
                           [None] * len(cand_texts))

    def _pack_texts(self, texts: Sequence[str]) -> list[bytes | None]:
        """Per text: the verifier's packed tokens and the text's MiniLM vector (float16), kept by the store."""
        return self._pack(texts, self.minilm.embed(list(texts)))

    def _pack(self, texts: Sequence[str], vectors: np.ndarray) -> list[bytes | None]:
        """The scorer data of ``texts`` whose MiniLM vectors are ``vectors``."""
        inner = self.verifier._pack_texts(texts)
        return [self._tag + len(part or b"").to_bytes(4, "little") + (part or b"") + vector.tobytes()
                for part, vector in zip(inner, vectors.astype("<f2"))]

    def _score_packed(self, query_text: str, query_vec: np.ndarray | None, cand_texts: Sequence[str],
                      cand_vecs: np.ndarray | None, cand_data: Sequence[bytes | None]) -> np.ndarray:
        """:meth:`score_many` from :meth:`_pack_texts`' data: no MiniLM pass for the candidates."""
        inner: list[bytes | None] = []
        vectors = np.empty((len(cand_texts), _DIM), dtype=np.float32)
        missing = []
        t = len(self._tag)
        for i, data in enumerate(cand_data):
            if data is not None and data[:t] == self._tag and len(data) >= t + 4 + 2 * _DIM:
                n = int.from_bytes(data[t : t + 4], "little")
                inner.append(data[t + 4 : t + 4 + n] or None)
                vectors[i] = np.frombuffer(data, dtype="<f2", count=_DIM, offset=t + 4 + n)
            else:
                inner.append(None)
                missing.append(i)
        if missing:
            vectors[missing] = self._minilm([cand_texts[i] for i in missing])
        return self._score(query_text, query_vec, cand_texts, cand_vecs, vectors, inner)

    def store_options(self) -> dict[str, Any]:
        """The cache store's arguments that put this reranker in charge: ``CacheStore(path, **r.store_options())``."""
        return {"scorer": self, "min_cosine": self.min_cosine, "candidates": self.candidates}

    def clear_cache(self) -> None:
        """Forget the texts prepared and embedded lately (the verifier's and MiniLM's)."""
        self.verifier.clear_cache()
        with self._lock:
            self._vectors.clear()

    # ------------------------------------------------------------------ internals

    def _minilm(self, texts: list[str]) -> np.ndarray:
        """MiniLM vectors of ``texts``, from a small LRU (a lookup's query is embedded once)."""
        out = np.empty((len(texts), _DIM), dtype=np.float32)
        todo = []
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._vectors.get(text)
                if hit is None:
                    todo.append(i)
                else:
                    self._vectors.move_to_end(text)
                    out[i] = hit
        if todo:
            fresh = self.minilm.embed([texts[i] for i in todo])
            with self._lock:
                for row, i in enumerate(todo):
                    out[i] = fresh[row]
                    self._vectors[texts[i]] = fresh[row]
                while len(self._vectors) > self._cache_size:
                    self._vectors.popitem(last=False)
        return out

    def _score(self, query_text: str, query_vec: np.ndarray | None, cand_texts: Sequence[str],
               cand_vecs: np.ndarray | None, minilm: np.ndarray, packed: Sequence[bytes | None]) -> np.ndarray:
        if not cand_texts:
            return np.zeros(0)
        v = self.verifier
        q = v._unpack(query_text, None)
        query_minilm = self._minilm([query_text])[0]
        rows = []
        for i, (text, data) in enumerate(zip(cand_texts, packed)):
            c = q if text == query_text else v._unpack(text, data)
            cosine = None if cand_vecs is None else v._vector_cosine(query_vec, cand_vecs[i])
            base = v._features(q, c, cosine)
            mc = float(query_minilm @ minilm[i])
            rows.append(base + [mc, mc - base[0]])
        x = np.asarray(rows, dtype=np.float64)
        p = 1.0 / (1.0 + np.exp(-np.clip(self._trees.logits(x), -500.0, 500.0)))
        same = x[:, 28] > 0.0  # FEATURE_NAMES' same_words: texts with the same words are the same question
        return np.where(same, np.maximum(p, self.threshold), p)


_RERANKERS: weakref.WeakSet[RewordReranker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """New locks in a child just forked: a thread of the parent may have held one, and it is not here."""
    for reranker in list(_RERANKERS):
        reranker._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
