"""Text embedders for the semantic cache tier.

The default, :class:`WordLlamaEmbedder`, reads the 256-d WordLlama weights and
tokenizer that ship inside the ``wordllama`` wheel straight from its package
folder: nothing is downloaded and the ``wordllama`` package itself is never
imported (its import configures the root logger and its loader looks for the
tokenizer in the wrong folder, then tries Hugging Face).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "Embedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "WordLlamaEmbedder",
    "normalize_rows",
]

logger = logging.getLogger("llmbudget.cache")

_WORDLLAMA_CONFIG = "l2_supercat"
_WORDLLAMA_FULL_DIM = 256
_WORDLLAMA_DIMS = (64, 128, 256)
_WORDLLAMA_WEIGHTS = f"weights/{_WORDLLAMA_CONFIG}_{_WORDLLAMA_FULL_DIM}.safetensors"
_WORDLLAMA_TOKENIZER = f"tokenizers/{_WORDLLAMA_CONFIG}_tokenizer_config.json"
_WORDLLAMA_TENSOR = "embedding.weight"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into float32 rows of unit L2 norm (an empty text may give a zero row)."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape ``(len(texts), dim)``, dtype float32, rows L2-normalized."""
        ...


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Return ``matrix`` as float32 with unit-norm rows; all-zero rows stay zero."""
    out = np.asarray(matrix, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {out.shape}")
    norms = np.sqrt(np.add.reduce(out * out, axis=1, keepdims=True))  # np.linalg.norm(out, axis=1), less its Python layer
    np.maximum(norms, np.float32(1e-12), out=norms)
    return np.ascontiguousarray(out / norms, dtype=np.float32)


# --------------------------------------------------------------------------- WordLlama


@dataclass(frozen=True)
class _WordLlamaModel:
    table: np.ndarray  # (vocab, 256) float32 token vectors
    tokenizer: Tokenizer
    folder: Path


_WORDLLAMA_LOCK = threading.Lock()
_WORDLLAMA_MODEL: _WordLlamaModel | None = None


def _after_fork_in_child() -> None:
    """A new loading lock in a child just forked: a thread of the parent may have held it, and it is not here."""
    global _WORDLLAMA_LOCK
    _WORDLLAMA_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _package_dir(package: str) -> Path | None:
    """An installed package's folder, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return None


def _wordllama_folder() -> Path:
    folder = _package_dir("wordllama")
    if folder is None:
        raise ImportError(
            "The default embedder needs the 'wordllama' package (its wheel carries the "
            "weights); install it with `pip install wordllama` or pass another Embedder."
        )
    return folder


def _load_wordllama() -> _WordLlamaModel:
    global _WORDLLAMA_MODEL
    model = _WORDLLAMA_MODEL
    if model is not None:
        return model
    with _WORDLLAMA_LOCK:
        if _WORDLLAMA_MODEL is None:
            _WORDLLAMA_MODEL = _read_wordllama(_wordllama_folder())
        return _WORDLLAMA_MODEL


def _read_wordllama(folder: Path) -> _WordLlamaModel:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    weights = folder / _WORDLLAMA_WEIGHTS
    tokenizer_file = folder / _WORDLLAMA_TOKENIZER
    for path in (weights, tokenizer_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"WordLlama file {path} is missing: the installed wordllama wheel should "
                "ship it; reinstall wordllama (`pip install --force-reinstall wordllama`)."
            )
    table = np.ascontiguousarray(load_file(str(weights))[_WORDLLAMA_TENSOR], dtype=np.float32)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    logger.debug("loaded WordLlama %s (%d x %d) from %s", _WORDLLAMA_CONFIG, *table.shape, folder)
    return _WordLlamaModel(table=table, tokenizer=tokenizer, folder=folder)


_SURROGATE = re.compile("[\ud800-\udfff]")


def tokenizable(text: str) -> str:
    """``text`` as the Rust tokenizers take it: a lone surrogate (from a JSON ``"\\ud800"`` escape; not Unicode
    text, and the tokenizers refuse the whole string) becomes U+FFFD. Any other text is returned as it is."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


#: Texts longer than this are tokenised without the memo, and by ``encode_batch``, which lets go of the GIL.
_LONG_TEXT = 8192


def _wordllama_ids(text: str) -> tuple[int, ...]:
    """The WordLlama token ids of ``text`` (no special tokens), memoised for the last short texts seen.

    A semantic lookup tokenises its query twice, to embed it and in the verifier;
    the second time is a cache hit. A long text is not memoised (256 prompts of a
    megabyte kept 3 GB), and is tokenised without holding the GIL: ``encode`` held it
    for about a second per megabyte, and an app's event loop stopped for as long.
    """
    if len(text) > _LONG_TEXT:
        return tuple(_load_wordllama().tokenizer.encode_batch([tokenizable(text)], add_special_tokens=False)[0].ids)
    return _short_ids(text)


@functools.lru_cache(maxsize=256)
def _short_ids(text: str) -> tuple[int, ...]:
    return tuple(_load_wordllama().tokenizer.encode(tokenizable(text), add_special_tokens=False).ids)


class WordLlamaEmbedder:
    """WordLlama ``l2_supercat`` embeddings (mean of token vectors), loaded offline from the wheel.

    The weights load lazily on first use, once per process, and are shared by all
    instances; ``dim`` may truncate the Matryoshka vectors to 64 or 128.
    """

    def __init__(self, *, dim: int = _WORDLLAMA_FULL_DIM) -> None:
        if dim not in _WORDLLAMA_DIMS:
            raise ValueError(f"WordLlama dim must be one of {_WORDLLAMA_DIMS}, got {dim}")
        self.dim: int = dim
        self.name: str = f"wordllama-{_WORDLLAMA_CONFIG}-{dim}"

    def load(self) -> None:
        """Load the weights now instead of on first use."""
        _load_wordllama()

    def token_ids(self, text: str) -> list[int]:
        """Return the WordLlama token ids of ``text`` (no special tokens)."""
        return list(_wordllama_ids(text))

    def token_vectors(self, text: str) -> np.ndarray:
        """Return the un-pooled token vectors of ``text``, shape ``(tokens, dim)``."""
        return _load_wordllama().table[list(_wordllama_ids(text)), : self.dim]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit-norm mean-pooled vectors, shape ``(len(texts), dim)``; empty text gives zeros."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        model = _load_wordllama()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        batch: Sequence[Sequence[int]]
        if len(texts) == 1:  # a lookup's query: the verifier reads the same ids next, from the memo
            batch = [_wordllama_ids(texts[0])]
        else:
            batch = [e.ids for e in model.tokenizer.encode_batch([tokenizable(t) for t in texts],
                                                                 add_special_tokens=False)]
        table = model.table
        for row, ids in enumerate(batch):
            if ids:
                out[row] = table[list(ids), : self.dim].sum(axis=0)
        return normalize_rows(out)

    def __repr__(self) -> str:
        return f"WordLlamaEmbedder(dim={self.dim})"


# --------------------------------------------------------------------------- sentence-transformers


class SentenceTransformerEmbedder:
    """A sentence-transformers model (optional extra ``llmbudget[sentence-transformers]``).

    The library and the model load lazily on first use; the model comes from the
    local Hugging Face cache or a path, as sentence-transformers resolves it.
    """

    def __init__(
        self,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        *,
        device: str | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model_name = model_name
        self.name: str = f"sentence-transformers:{model_name}"
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    try:
                        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
                    except ImportError as exc:
                        raise ImportError(
                            "SentenceTransformerEmbedder needs sentence-transformers; install "
                            "it with `pip install 'llmbudget[sentence-transformers]'`."
                        ) from exc
                    self._model = SentenceTransformer(self.model_name, device=self._device)
        return self._model

    @property
    def dim(self) -> int:
        """The model's embedding size (loads the model)."""
        return int(self._load().get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit-norm float32 vectors, shape ``(len(texts), dim)``."""
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalize_rows(vectors)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.model_name!r})"


# --------------------------------------------------------------------------- OpenAI

_OPENAI_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_OPENAI_MAX_INPUTS = 2048


class OpenAIEmbedder:
    """OpenAI embeddings through an ``openai.OpenAI`` client (its calls go through llmbudget like any other)."""

    def __init__(
        self,
        client: Any,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int | None = None,
    ) -> None:
        if not hasattr(client, "embeddings"):
            raise TypeError(
                f"OpenAIEmbedder expects an openai.OpenAI client, got {type(client).__name__}"
            )
        if dimensions is None and model not in _OPENAI_DIMS:
            raise ValueError(
                f"unknown embedding size for model {model!r}; pass dimensions=... "
                f"(known models: {', '.join(sorted(_OPENAI_DIMS))})"
            )
        self.client = client
        self.model = model
        self.dimensions = dimensions
        self.dim: int = dimensions if dimensions is not None else _OPENAI_DIMS[model]
        self.name: str = f"openai:{model}:{self.dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit-norm float32 vectors, shape ``(len(texts), dim)``, in input order."""
        items = list(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        extra: dict[str, Any] = {}
        if self.dimensions is not None:
            extra["dimensions"] = self.dimensions
        for start in range(0, len(items), _OPENAI_MAX_INPUTS):
            chunk = items[start : start + _OPENAI_MAX_INPUTS]
            response = self.client.embeddings.create(model=self.model, input=chunk, **extra)
            for item in response.data:
                vector = np.asarray(item.embedding, dtype=np.float32)
                if vector.shape != (self.dim,):
                    raise ValueError(
                        f"{self.model} returned a {vector.shape[0]}-d vector, expected {self.dim}"
                    )
                out[start + item.index] = vector
        return normalize_rows(out)

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, dim={self.dim})"
