"""The semantic tier's hit decision: P(two questions ask the same thing).

A pair is described by WordLlama similarities (pooled cosine, IDF-weighted
cosine, token alignment, unmatched tokens) and cheap lexical checks (numbers,
symbols, negation, capitalised names, question word, overlaps, lengths, word
order). A linear model with per-token weights for unmatched and shared
WordLlama tokens is stacked under gradient-boosted trees; everything runs in
numpy from ``verifier_weights.json`` (written by ``ci/train/train_verifier.py``).
Texts with the same words once case and punctuation are folded always score at
least the threshold.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import logging
import math
import os
import re
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .embedders import _WORDLLAMA_TOKENIZER, WordLlamaEmbedder, _load_wordllama, _wordllama_ids, tokenizable

__all__ = [
    "DEFAULT_THRESHOLD",
    "FEATURE_NAMES",
    "Verifier",
    "default_verifier",
    "score_pair",
]

logger = logging.getLogger("llmbudget.cache")

_WEIGHTS_FILE = "verifier_weights.json"
_FORMAT = "llmbudget-verifier/1"

FEATURE_NAMES: tuple[str, ...] = (
    "cosine",  # pooled WordLlama cosine (the embedder's own vectors)
    "token_sim_mean",  # mean token-token cosine
    "idf_cosine",  # cosine of IDF-weighted token sums
    "alignment",  # IDF-weighted best-match similarity of every token
    "unmatched_max",  # largest IDF x (1 - best match) over both sides
    "unmatched_min",  # the smaller of the two sides' largest
    "idf_jaccard",  # IDF-weighted Jaccard of token ids
    "unmatched_idf_sum",  # IDF mass of tokens with no exact match
    "unmatched_idf_diff",  # |difference| of the two sides' unmatched IDF mass
    "worst_match_min",  # lowest best-match similarity of any token, both sides
    "worst_match_max",  # the higher of the two sides' lowest
    "residual_cosine",  # cosine of the unmatched tokens of A and of B
    "word_jaccard",
    "content_jaccard",  # without stop words
    "bigram_jaccard",
    "trigram_jaccard",  # character 3-grams
    "numbers_differ",  # size of the symmetric difference of number tokens
    "numbers_any",
    "symbols_differ",  # non-ASCII words and symbols (C vs C++, 2+2 vs 2*2, CJK)
    "symbols_any",
    "negation_mismatch",
    "names_differ",  # capitalised words after the first
    "names_jaccard",
    "length_ratio",
    "word_count_log_ratio",
    "question_word_mismatch",
    "first_word_same",
    "last_word_same",
    "same_words",
    "content_unmatched_min",
    "content_unmatched_max",
    "content_words_min",
    "content_words_max",
    "order_discordance",  # share of shared content words in swapped order
)

_SAME_WORDS = FEATURE_NAMES.index("same_words")
_OWN_EMBEDDER = WordLlamaEmbedder().name
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:\+\+|#)?|[^\w\s]")
_HAS_DIGIT = re.compile(r"\d").search
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_][\x00-\x7f]*\Z").match  # else a symbol or non-ASCII
_SKIP = frozenset("?.,!'\"’‘“”:;-()/")
# A text of ASCII letters, digits, "_", spaces and skipped punctuation has no symbol among its words.
_ONLY_PLAIN = re.compile(r"[A-Za-z0-9_\s" + "".join(re.escape(c) for c in sorted(_SKIP)) + r"]*\Z").match
_STOP = frozenset(
    "a an the of to in on for and or is are was were be been being do does did i you he she it "
    "we they me my your his her its our their this that these those what which who whom whose "
    "why how when where can could should would will shall may might must with as at by from "
    "about into than then so if any some there here have has had am get s".split()
)
_NEG = frozenset(
    "not no never none nobody nothing neither nor cannot without t dont doesnt didnt isnt "
    "arent wasnt werent cant wont shouldnt wouldnt couldnt havent hasnt mustnt neednt".split()
)
_QUESTION_WORDS = frozenset(
    "what why how when where who which whom whose is are can do does should will would could "
    "did was".split()
)
_EXACT = np.float32(0.999)
_EMPTY: frozenset[Any] = frozenset()
# Verifier._pack_texts's data: this format's byte, the tokenizer's tag (4 bytes), uint32 count, uint16 token ids,
# word fields. Bump the byte when _word_fields changes: data of another format or tokenizer is not unpacked.
_PACKED = b"\x02"
#: Up to this many texts packed at once are tokenised one by one, through the memo; more in one batch call.
_MEMO_BATCH = 32


@functools.lru_cache(maxsize=4)
def _tokenizer_tag(path: str) -> bytes:
    """4 bytes that differ between tokenizer files (CRC-32 of the file), read once per process."""
    with open(path, "rb") as handle:
        return zlib.crc32(handle.read()).to_bytes(4, "little")


def _word_fields(text: str) -> tuple[tuple[str, ...], frozenset[str], frozenset[str], frozenset[str]]:
    """``text``'s words (lower case, no punctuation), capitalised names, numbers and symbols."""
    raw = _TOKEN_RE.findall(text)
    words = tuple([t.lower() for t in raw if t not in _SKIP])
    wordset = frozenset(words)
    return (
        words,
        frozenset([t.lower() for t in raw[1:] if t[:1].isupper() and t != "I"]) or _EMPTY,
        # Most texts have no digit and only plain ASCII words: one scan of the text says so.
        (frozenset([w.replace(",", "") for w in wordset if _HAS_DIGIT(w)]) or _EMPTY) if _HAS_DIGIT(text) else _EMPTY,
        _EMPTY if _ONLY_PLAIN(text) else frozenset([w for w in wordset if not _PLAIN_WORD(w)]) or _EMPTY,
    )


_max = np.maximum.reduce  # what ndarray.max/min/sum call, without their Python layer
_min = np.minimum.reduce
_sum = np.add.reduce


class _Text:
    """One text, prepared once: WordLlama token ids and vectors, word-level sets."""

    __slots__ = (
        "bigrams",
        "chars",
        "content",
        "content_pos",
        "contentset",
        "diff_weight",
        "grams",
        "idf",
        "idf_sum",
        "ids",
        "idset",
        "names",
        "negated",
        "numbers",
        "pooled",
        "qword",
        "symbols",
        "unit",
        "weighted",
        "weighted_sq",
        "words",
        "wordset",
    )  # fmt: skip

    ids: np.ndarray
    idset: frozenset[int]
    idf: np.ndarray
    idf_sum: float  # float(idf.sum())
    unit: np.ndarray
    pooled: np.ndarray
    weighted: np.ndarray
    weighted_sq: float  # float(weighted @ weighted)
    words: tuple[str, ...]
    wordset: frozenset[str]
    content: tuple[str, ...]
    contentset: frozenset[str]
    content_pos: dict[str, int]  # distinct content words -> first-seen rank, in order
    numbers: frozenset[str]
    symbols: frozenset[str]
    names: frozenset[str]
    negated: bool
    qword: str
    grams: frozenset[str]
    chars: int
    bigrams: frozenset[str]  # "first second"
    diff_weight: float


_UNIT_LOCK = threading.Lock()
_UNIT_TABLES: dict[int, np.ndarray] = {}


def _unit_rows(table: np.ndarray) -> np.ndarray:
    """``table`` with unit-norm rows, computed once per process."""
    with _UNIT_LOCK:
        unit = _UNIT_TABLES.get(id(table))
        if unit is None:
            norms = np.linalg.norm(table, axis=1, keepdims=True)
            unit = _UNIT_TABLES[id(table)] = (table / np.maximum(norms, 1e-6)).astype(np.float32)
        return unit


def _b64_array(value: str, dtype: str, shape: Sequence[int] | None = None) -> np.ndarray:
    array = np.frombuffer(zlib.decompress(base64.b64decode(value)), dtype=np.dtype(dtype))
    return array.reshape(shape) if shape is not None else array


def _jaccard(a: frozenset[Any], b: frozenset[Any]) -> float:
    both = len(a & b)
    union = len(a) + len(b) - both
    return both / union if union else 1.0


def _unit_cos(a: np.ndarray, b: np.ndarray) -> float:
    denominator = math.sqrt(float(a.dot(a)) * float(b.dot(b)))
    return float(a.dot(b)) / denominator if denominator > 0.0 else 0.0


class Verifier:
    """Scores (query, candidate) question pairs in [0, 1]; a hit is ``score >= threshold``.

    ``weights``: a weights mapping (default: the shipped ``verifier_weights.json``).
    ``vectors_from``: the name of the embedder whose vectors :meth:`score` gets;
    they feed the cosine feature only when it is the verifier's own
    (``WordLlamaEmbedder().name``, the default), else the cosine is computed
    from the texts. ``cache_size``: prepared texts kept for reuse (LRU).
    """

    def __init__(
        self,
        weights: dict[str, Any] | None = None,
        *,
        vectors_from: str | None = _OWN_EMBEDDER,
        cache_size: int = 4096,
    ) -> None:
        data = weights if weights is not None else _shipped_weights()
        if data.get("format") != _FORMAT:
            raise ValueError(
                f"verifier weights have format {data.get('format')!r}, expected {_FORMAT!r}: "
                "regenerate them with ci/train/train_verifier.py"
            )
        if list(data["features"]) != list(FEATURE_NAMES):
            raise ValueError("verifier weights were trained on other features; retrain them")
        self.embedder = WordLlamaEmbedder()
        if data["embedder"] != self.embedder.name:
            raise ValueError(f"weights are for embedder {data['embedder']!r}, not {self.embedder.name!r}")
        self.embedder_name: str = self.embedder.name
        self.dim: int = self.embedder.dim
        self._trust_vectors = vectors_from == self.embedder_name
        self.threshold: float = float(data.get("threshold", 0.5))
        self.metadata: dict[str, Any] = {k: data[k] for k in ("validation", "training") if k in data}

        idf = data["idf"]
        self._idf = (_b64_array(idf["q"], "uint8").astype(np.float32) * np.float32(idf["scale"]))
        self._stack: dict[str, Any] | None = None
        self._trees: tuple[float, np.ndarray, np.ndarray, np.ndarray, int] | None = None
        if "linear" in data:
            linear = data["linear"]
            sparse = data["sparse"]
            self._stack = {
                "mean": np.asarray(linear["mean"], dtype=np.float64),
                "std": np.asarray(linear["std"], dtype=np.float64),
                "w": np.asarray(linear["w"], dtype=np.float64),
                "b": float(linear["b"]),
                "diff": _b64_array(sparse["diff"], "int8").astype(np.float64) * float(sparse["scale"]),
                "common": _b64_array(sparse["common"], "int8").astype(np.float64) * float(sparse["scale"]),
            }
        if "gbdt" in data:
            g = data["gbdt"]
            depth, trees = int(g["depth"]), int(g["trees"])
            inner = 2**depth - 1
            self._trees = (  # flat arrays: tree t's node i is at t * inner + i, its leaf j at t * (inner + 1) + j
                float(g["base"]),
                _b64_array(g["feature"], "uint8", (trees * inner,)).astype(np.intp),
                _b64_array(g["threshold"], "float32", (trees * inner,)).astype(np.float64),
                _b64_array(g["leaf"], "float32", (trees * (inner + 1),)).astype(np.float64),
                depth,
            )
            self._tree_index = (np.arange(trees) * inner, np.arange(trees) * (inner + 1))
            self._tree_plans: dict[tuple[int, int], tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]] = {}
        model = _load_wordllama()
        self._table = model.table
        self._tokenizer = model.tokenizer
        try:
            self._pack_tag: bytes | None = _PACKED + _tokenizer_tag(str(model.folder / _WORDLLAMA_TOKENIZER))
        except OSError:  # pragma: no cover - the file was just read: stored texts are prepared when scored
            self._pack_tag = None
        self._unit_table = _unit_rows(model.table)
        self._cache: OrderedDict[str, _Text] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        _VERIFIERS.add(self)  # its lock is new in a forked child

    # ------------------------------------------------------------------ public

    def score_pair(self, a: str, b: str) -> float:
        """Return P(``a`` and ``b`` ask the same thing), embedding both texts here."""
        pa, pb = self._prepare(a), self._prepare(b)
        return self._probability(self._features(pa, pb), pa, pb)

    def score(
        self,
        query_text: str,
        query_vec: np.ndarray | None,
        cand_text: str,
        cand_vec: np.ndarray | None,
    ) -> float:
        """Return P(same question) for a query and a stored candidate, reusing their vectors.

        The vectors are the unit embeddings of the texts from ``vectors_from``
        (WordLlama 256-d by default); ``None`` (or untrusted vectors) means the
        cosine is computed from the texts.
        """
        q, c = self._prepare(query_text), self._prepare(cand_text)
        cosine = self._vector_cosine(query_vec, cand_vec)
        return self._probability(self._features(q, c, cosine), q, c)

    def score_many(
        self,
        query_text: str,
        query_vec: np.ndarray | None,
        cand_texts: Sequence[str],
        cand_vecs: np.ndarray | None = None,
    ) -> np.ndarray:
        """Return one probability per candidate (float64 array), as :meth:`score` would."""
        q = self._prepare(query_text)
        return self._score_prepared(q, query_vec, [self._prepare(text) for text in cand_texts], cand_vecs)

    def features(self, a: str, b: str) -> np.ndarray:
        """Return the pair's feature vector, in :data:`FEATURE_NAMES` order."""
        return np.asarray(self._features(self._prepare(a), self._prepare(b)), dtype=np.float64)

    def clear_cache(self) -> None:
        """Forget the prepared texts (token ids, word sets) kept for reuse."""
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------ internals

    def _vector_cosine(self, u: np.ndarray | None, v: np.ndarray | None) -> float | None:
        if not self._trust_vectors or u is None or v is None:
            return None
        if u.shape != (self.dim,) or v.shape != (self.dim,):
            return None
        return float(np.dot(u, v))

    def _prepare(self, text: str) -> _Text:
        with self._lock:
            prepared = self._cache.get(text)
            if prepared is not None:
                self._cache.move_to_end(text)
                return prepared
        prepared = self._prepare_uncached(text)
        with self._lock:
            self._cache[text] = prepared
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return prepared

    def _prepare_uncached(self, text: str, token_ids: Sequence[int] | None = None) -> _Text:
        """Prepare ``text``; ``token_ids``: its WordLlama ids when already known (else tokenised here)."""
        p = _Text()
        self._fill_tokens(p, (_wordllama_ids(text) if token_ids is None else token_ids) or (0,))
        self._fill_words(p, text, *_word_fields(text))
        return p

    def _fill_tokens(self, p: _Text, all_ids: Sequence[int]) -> None:
        unique = dict.fromkeys(all_ids)
        ids = np.array(list(unique), dtype=np.intp)
        rows = self._table.take(ids, axis=0)
        p.ids = ids
        p.idset = frozenset(unique)
        p.idf = idf = self._idf.take(ids)
        p.idf_sum = float(_sum(idf))  # ndarray.sum's own reduction, as everywhere here
        p.unit = self._unit_table.take(ids, axis=0)
        p.pooled = _sum(rows if len(unique) == len(all_ids) else self._table[list(all_ids)], 0)
        p.weighted = weighted = idf.dot(rows)
        p.weighted_sq = float(weighted.dot(weighted))
        p.diff_weight = 0.0
        if self._stack is not None:
            p.diff_weight = float(_sum(self._stack["diff"].take(ids)))

    @staticmethod
    def _fill_words(
        p: _Text, text: str, words: tuple[str, ...], names: frozenset[str], numbers: frozenset[str],
        symbols: frozenset[str],
    ) -> None:
        # What a prepared text keeps is mostly tuples, strings and numbers: objects the garbage
        # collector stops tracking, so a lookup adds few tracked survivors and collections stay rare.
        p.words = words
        p.wordset = wordset = frozenset(words)
        p.content = content = tuple([w for w in words if w not in _STOP])
        p.contentset = frozenset(content) or _EMPTY
        p.content_pos = {w: i for i, w in enumerate(dict.fromkeys(content))}
        p.numbers, p.symbols, p.names = numbers, symbols, names
        p.negated = not wordset.isdisjoint(_NEG)
        p.qword = next((w for w in words[:4] if w in _QUESTION_WORDS), "")
        joined = " " + " ".join(words) + " "
        p.grams = frozenset({joined[i : i + 3] for i in range(len(joined) - 2)})  # character 3-grams
        p.bigrams = frozenset([f"{a} {b}" for a, b in zip(words, words[1:])]) or _EMPTY  # words hold no spaces
        p.chars = len(text)

    # ------------------------------------------------------------------ per-entry data (for stores)

    def _pack_texts(self, texts: Sequence[str]) -> list[bytes | None]:
        """Per text, the tokenizer's and the word pass's output, for a store to keep beside the entry.

        :meth:`_score_packed` rebuilds the prepared candidate from it without tokenising or
        parsing the text again (the bulk of preparing a text); ``None`` where it cannot be packed.
        """
        if not texts:
            return []
        tag = self._pack_tag
        if tag is None or self._table.shape[0] > 1 << 16:  # pragma: no cover - ids are packed as uint16
            return [None] * len(texts)
        try:  # a few answers stored after their lookups: the ids of their queries are in the memo
            batch = ([_wordllama_ids(text) for text in texts] if len(texts) <= _MEMO_BATCH
                     else [e.ids for e in self._tokenizer.encode_batch([tokenizable(t) for t in texts],
                                                                    add_special_tokens=False)])
        except Exception:  # noqa: BLE001 - a text the tokenizer refuses anyway is prepared when scored
            return [None] * len(texts)
        out: list[bytes | None] = []
        for text, ids in zip(texts, batch):
            words, names, numbers, symbols = _word_fields(text)
            fields = "\t".join(["\n".join(words), "\n".join(names), "\n".join(numbers), "\n".join(symbols)])
            out.append(b"".join([tag, len(ids).to_bytes(4, "little"), np.asarray(ids, dtype="<u2").tobytes(),
                                 fields.encode("utf-8", "surrogatepass")]))
        return out

    def _unpack(self, text: str, data: bytes | None) -> _Text:
        """The prepared ``text``: from the LRU, else from ``data`` (made by :meth:`_pack_texts`), else from scratch.

        What is built here is not added to the LRU: a lookup leaves no prepared text behind, so lookups
        at scale neither evict the texts that recur nor feed the garbage collector survivors to trace.
        Data of another format or tokenizer, or that does not unpack, is ignored: the text is prepared.
        """
        with self._lock:
            prepared = self._cache.get(text)
            if prepared is not None:
                self._cache.move_to_end(text)
                return prepared
        if data is not None and self._pack_tag is not None and data[:5] == self._pack_tag:
            try:
                count = int.from_bytes(data[5:9], "little")
                fields = data[9 + 2 * count :].decode("utf-8", "surrogatepass").split("\t")
                if len(fields) == 4:
                    prepared = _Text()
                    self._fill_tokens(prepared,
                                      np.frombuffer(data, dtype="<u2", count=count, offset=9).tolist() or (0,))
                    words, names, numbers, symbols = (f.split("\n") if f else () for f in fields)
                    self._fill_words(prepared, text, tuple(words), frozenset(names) or _EMPTY,
                                     frozenset(numbers) or _EMPTY, frozenset(symbols) or _EMPTY)
                    return prepared
            except (ValueError, IndexError):  # truncated, or token ids beyond the table: damaged data
                pass
        return self._prepare_uncached(text)

    def _score_packed(
        self,
        query_text: str,
        query_vec: np.ndarray | None,
        cand_texts: Sequence[str],
        cand_vecs: np.ndarray | None,
        cand_data: Sequence[bytes | None],
    ) -> np.ndarray:
        """:meth:`score_many` for a store: candidates rebuilt from their :meth:`_pack_texts` data where given."""
        q = self._unpack(query_text, None)
        # A candidate with the query's very text shares its prepared form, as the LRU made it do: numpy
        # multiplies ``x @ x.T`` another way (syrk), a last-bit difference the trees would pass on.
        cands = [q if t == query_text else self._unpack(t, d) for t, d in zip(cand_texts, cand_data)]
        return self._score_prepared(q, query_vec, cands, cand_vecs)

    def _score_prepared(
        self, q: _Text, query_vec: np.ndarray | None, cands: list[_Text], cand_vecs: np.ndarray | None
    ) -> np.ndarray:
        if not cands:
            return np.zeros(0, dtype=np.float64)
        rows = []
        for i, c in enumerate(cands):
            cosine = None if cand_vecs is None else self._vector_cosine(query_vec, cand_vecs[i])
            rows.append(self._features(q, c, cosine))
        return self._probabilities(np.asarray(rows, dtype=np.float64), q, cands)

    def _features(self, a: _Text, b: _Text, cosine: float | None = None) -> list[float]:
        # Every float comes from the same numpy operations, in the same order, as when the weights
        # were trained (ufunc reductions are what ndarray.max/sum/mean call, minus their Python
        # layer): a last-bit difference could move a pair across one of the trees' splits.
        sim = a.unit.dot(b.unit.T)  # ndarray.dot: the same BLAS call as @, with less dispatch
        best_a = _max(sim, 1)
        best_b = _max(sim, 0)
        wa, wb = a.idf, b.idf
        sum_a, sum_b = a.idf_sum, b.idf_sum
        alignment = float(wa.dot(best_a) + wb.dot(best_b)) / (sum_a + sum_b + 1e-9)
        un_a = float(_max(wa * (1.0 - best_a)))
        un_b = float(_max(wb * (1.0 - best_b)))
        exact_a = best_a > _EXACT
        exact_b = best_b > _EXACT
        n_exact_a, n_exact_b = int(np.count_nonzero(exact_a)), int(np.count_nonzero(exact_b))
        all_a, all_b = n_exact_a == exact_a.shape[0], n_exact_b == exact_b.shape[0]
        shared = float(_sum(wa[exact_a])) if n_exact_a else 0.0
        unmatched_a = sum_a - shared
        unmatched_b = sum_b - (float(_sum(wb[exact_b])) if n_exact_b else 0.0)
        if not all_a and not all_b:
            loose_a, loose_b = ~exact_a, ~exact_b
            residual = _unit_cos(wa.compress(loose_a).dot(a.unit.compress(loose_a, axis=0)),
                                 wb.compress(loose_b).dot(b.unit.compress(loose_b, axis=0)))
        else:
            residual = 1.0 if all_a and all_b else 0.0
        if cosine is None:
            cosine = _unit_cos(a.pooled, b.pooled)
        norms = a.weighted_sq * b.weighted_sq
        idf_cosine = float(a.weighted.dot(b.weighted)) / math.sqrt(norms) if norms > 0.0 else 0.0
        # ndarray.mean: a float32 sum divided, in float64, by the count, rounded back to float32
        mean = float(np.float32(float(_sum(sim, None)) / sim.size))
        ca, cb = a.contentset, b.contentset
        both = len(ca & cb)
        only_a, only_b = len(ca) - both, len(cb) - both
        discordance = 0.0
        if both > 1:
            where = b.content_pos
            seq = [where[w] for w in a.content_pos if w in where]
            n = len(seq)
            swapped = sum(seq[i] > seq[j] for i in range(n) for j in range(i + 1, n))
            discordance = swapped / (n * (n - 1) / 2)
        na, nb = len(a.words), len(b.words)
        worst_a, worst_b = float(_min(best_a)), float(_min(best_b))
        return [
            cosine,
            mean,
            idf_cosine,
            alignment,
            max(un_a, un_b),
            min(un_a, un_b),
            shared / (sum_a + sum_b - shared + 1e-9),
            unmatched_a + unmatched_b,
            abs(unmatched_a - unmatched_b),
            min(worst_a, worst_b),
            max(worst_a, worst_b),
            residual,
            _jaccard(a.wordset, b.wordset),
            both / (len(ca) + len(cb) - both) if ca or cb else 1.0,
            _jaccard(a.bigrams, b.bigrams),
            _jaccard(a.grams, b.grams),
            float(len(a.numbers ^ b.numbers)),
            float(bool(a.numbers or b.numbers)),
            float(len(a.symbols ^ b.symbols)),
            float(bool(a.symbols or b.symbols)),
            float(a.negated != b.negated),
            float(len(a.names ^ b.names)),
            _jaccard(a.names, b.names),
            min(a.chars, b.chars) / max(a.chars, b.chars, 1),
            abs(math.log((na + 1) / (nb + 1))),
            float(a.qword != b.qword),
            float(a.words[:1] == b.words[:1]),
            float(a.words[-1:] == b.words[-1:]),
            float(a.words == b.words),
            float(min(only_a, only_b)),
            float(max(only_a, only_b)),
            float(min(len(ca), len(cb))),
            float(max(len(ca), len(cb))),
            discordance,
        ]

    def _stack_score(self, x: np.ndarray, a: _Text, cands: Sequence[_Text]) -> np.ndarray:
        """The linear + per-token model's logit for each row of ``x`` (query ``a`` against ``cands``)."""
        st = self._stack
        assert st is not None
        out = ((x - st["mean"]) / st["std"]) @ st["w"] + st["b"]
        diff, common = st["diff"], st["common"]
        for i, b in enumerate(cands):
            both = a.idset & b.idset
            if both:
                shared = np.fromiter(both, dtype=np.intp, count=len(both))
                out[i] += float(_sum(common.take(shared))) - 2.0 * float(_sum(diff.take(shared)))
            out[i] += a.diff_weight + b.diff_weight
        return out

    def _tree_logits(self, x: np.ndarray) -> np.ndarray:
        """The trees' summed logit for each row of ``x``: every row's trees walked at once, level by level."""
        assert self._trees is not None
        base, _, _, leaf, depth = self._trees
        levels, feature, threshold, leaf_starts = self._tree_plan(x.shape[0], x.shape[1])
        flat = np.ascontiguousarray(x, dtype=np.float64).ravel()
        at = np.zeros(leaf_starts.shape[0], dtype=np.intp)
        for level in range(depth):
            slot = levels[level] + at
            at = (at << 1) + (flat.take(feature.take(slot)) >= threshold.take(slot))
        return base + _sum(leaf.take(leaf_starts + at).reshape(x.shape[0], -1), 1)

    def _tree_plan(self, rows: int, width: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Flat node and leaf indexes for ``rows`` rows of ``width`` features (cached for a few row counts)."""
        plan = self._tree_plans.get((rows, width))
        if plan is None:
            assert self._trees is not None
            _, feature, threshold, _, depth = self._trees
            roots, leaf_starts = self._tree_index
            trees, inner = roots.shape[0], feature.shape[0] // roots.shape[0]
            row = np.arange(rows)
            plan = (
                [(roots + (2**level - 1) + (row * trees * inner)[:, None]).ravel() for level in range(depth)],
                (feature + (row * width)[:, None]).ravel(),
                np.tile(threshold, rows),
                np.tile(leaf_starts, rows),
            )
            if rows <= 16:
                self._tree_plans[rows, width] = plan
        return plan

    def _logits(self, x: np.ndarray, a: _Text, cands: Sequence[_Text]) -> np.ndarray:
        if self._stack is None:
            raise RuntimeError("these verifier weights hold no model (only the IDF table)")
        stacked = self._stack_score(x, a, cands)
        if self._trees is None:
            return stacked
        return self._tree_logits(np.concatenate([x, stacked[:, None]], axis=1))

    def _probability(self, features: list[float], a: _Text, b: _Text) -> float:
        return float(self._probabilities(np.asarray([features], dtype=np.float64), a, [b])[0])

    def _probabilities(self, x: np.ndarray, a: _Text, cands: Sequence[_Text]) -> np.ndarray:
        """Model probabilities; texts with the same words (case and punctuation folded) are hits."""
        p = 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(self._logits(x, a, cands), -500.0), 500.0)))
        return np.where(x[:, _SAME_WORDS] > 0.0, np.maximum(p, self.threshold), p)


@functools.lru_cache(maxsize=1)
def _shipped_weights() -> dict[str, Any]:
    text = importlib.resources.files("llmbudget.cache").joinpath(_WEIGHTS_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _shipped_threshold() -> float:
    try:
        return float(_shipped_weights()["threshold"])
    except (FileNotFoundError, KeyError) as exc:  # pragma: no cover - broken install
        logger.warning("verifier weights unavailable (%s); DEFAULT_THRESHOLD falls back to 0.5", exc)
        return 0.5


DEFAULT_THRESHOLD: float = _shipped_threshold()
"""Score at or above which the semantic tier counts a hit (precision >= 0.90 on validation)."""

_DEFAULT: Verifier | None = None
_DEFAULT_LOCK = threading.Lock()


def default_verifier() -> Verifier:
    """Return the process-wide verifier built from the shipped weights (created once)."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = Verifier()
    return _DEFAULT


def score_pair(a: str, b: str) -> float:
    """Return P(``a`` and ``b`` ask the same thing) with the shipped verifier."""
    return default_verifier().score_pair(a, b)


_VERIFIERS: weakref.WeakSet[Verifier] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """New locks in a child just forked: a thread of the parent may have held one, and it is not here."""
    global _UNIT_LOCK, _DEFAULT_LOCK
    _UNIT_LOCK, _DEFAULT_LOCK = threading.Lock(), threading.Lock()
    for verifier in list(_VERIFIERS):
        verifier._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
