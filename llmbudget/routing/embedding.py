"""Prompt vectors for the router: WordLlama token vectors summed over the words of a text.

The vector of a text is the unit-normalised sum of the WordLlama ``l2_supercat``
token vectors of its whitespace-separated words, each word tokenized on its
own as ``"▁" + word`` (how the Llama tokenizer sees a word after a space).  Token
ids are memoised per word, so a request costs a dictionary lookup per word and
one gather-and-sum over the token table; running the tokenizer over a whole
prompt is several times slower (it has no pre-tokenizer, so BPE works on the
whole string).  Nothing is downloaded: the table and the tokenizer come from
the ``wordllama`` wheel through :mod:`llmbudget.cache.embedders`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from itertools import chain
from typing import Any, cast

import numpy as np

__all__ = ["VECTORS_NAME", "PromptVectors"]

logger = logging.getLogger("llmbudget.routing")

#: The name router weights give the vectors they were trained on.
VECTORS_NAME = "wordllama-l2_supercat-256/words"

_DIM = 256
_CACHE_WORDS = 200_000
_MAX_WORD_CHARS = 64
_GATHER_MAX = 128


class PromptVectors:
    """Text -> unit-norm 256-d vector (``None`` when the text has no words); the model loads on first use."""

    name: str = VECTORS_NAME
    dim: int = _DIM

    def __init__(self, *, cache_words: int = _CACHE_WORDS) -> None:
        self._cache_words = cache_words
        self._ids: dict[str, tuple[int, ...]] = {}
        self._table: np.ndarray | None = None
        self._tokenize: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the WordLlama table and tokenizer now (raises ImportError/FileNotFoundError if missing)."""
        if self._table is not None:
            return
        with self._lock:
            if self._table is None:
                # the loader is private to the cache package; it reads the wheel's files offline, once per process
                from llmbudget.cache.embedders import _load_wordllama

                model = _load_wordllama()
                if model.table.shape[1] < _DIM:
                    raise ValueError(f"WordLlama table has {model.table.shape[1]} dimensions, expected {_DIM}")
                self._tokenize = model.tokenizer.model.tokenize
                self._table = model.table[:, :_DIM]

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._ids.get(word)
        if ids is None:
            piece = word if len(word) <= _MAX_WORD_CHARS else word[:_MAX_WORD_CHARS]
            try:
                ids = tuple(t.id for t in self._tokenize("\u2581" + piece))
            except Exception:  # e.g. a lone surrogate the tokenizer cannot encode
                ids = ()
            if len(self._ids) >= self._cache_words:
                self._ids = {}
            self._ids[word] = ids
        return ids

    def token_ids(self, text: str) -> np.ndarray:
        """The WordLlama token ids of ``text``, word by word, as an integer array."""
        self.load()
        words = text.split()
        found = list(map(self._ids.get, words))
        if None in found:
            found = list(map(self._word_ids, words))
        return np.fromiter(chain.from_iterable(cast("list[tuple[int, ...]]", found)), dtype=np.intp)

    def vector(self, text: str) -> np.ndarray | None:
        """The unit-norm float32 vector of ``text``, or ``None`` when it has no tokens."""
        ids = self.token_ids(text)
        table = self._table
        assert table is not None
        if len(ids) > _GATHER_MAX:  # long texts repeat tokens: sum each distinct row once, weighted
            rows, counts = np.unique(ids, return_counts=True)
            v = counts.astype(np.float32) @ table[rows]
        elif len(ids):
            v = table[ids].sum(axis=0)
        else:
            return None
        norm = float(np.sqrt(v @ v))
        if not norm > 0.0:
            return None
        v /= norm
        return v

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` as rows, float32; a text without tokens gives a zero row."""
        out = np.zeros((len(texts), _DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            v = self.vector(text)
            if v is not None:
                out[i] = v
        return out

    def __repr__(self) -> str:
        return f"PromptVectors({self.name!r}, cached_words={len(self._ids)})"
