"""Measure the cache: lookup latency at scale (:func:`bench_cache`) and hit quality on labeled pairs (:func:`eval_replay`).

Both go through :class:`~llmbudget.cache.store.CacheStore` exactly as the
pipeline does: embed the text, search the partition, score the candidates.

Run ``python -m llmbudget.cache.bench bench 100000`` or
``python -m llmbudget.cache.bench replay PAIRS.jsonl [--sample 5000]``.
``replay PAIRS.jsonl --cosine 0.95 --embedder minilm`` is the GPTCache-style baseline
(:func:`gptcache_baseline`), as ``llmbudget eval cache PAIRS.jsonl --mode replay --gptcache 0.95``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np

from .embedders import Embedder
from .evaluate import read_pair_rows
from .reranker import _DIM, RewordReranker
from .store import CacheStore, CosineScorer, Scorer
from .templates import DEFAULT_MAX_SEMANTIC_CHARS, TemplateGuard, same_text

__all__ = ["bench_cache", "default_pairs_path", "eval_replay"]

logger = logging.getLogger("llmbudget.cache")

DATA_ENV = "LLMBUDGET_CACHE_BENCH_DATA"  # a PAIRS.jsonl whose questions fill the bench cache
DIR_ENV = "LLMBUDGET_CACHE_BENCH_DIR"  # where the bench cache is built (default: a temporary directory)
_PARTITION = "bench"
_WARMUP = 50
_FILLERS = (
    "today", "please", "exactly", "again", "now", "really", "briefly", "simply", "first", "quickly",
    "honestly", "actually", "online", "here", "ever", "still", "usually", "mostly", "also", "alone",
)


def default_pairs_path() -> Path | None:
    """The QQP pairs shipped beside the repository (``../shared/data/cache/qqp_dev.jsonl``), if present."""
    env = os.environ.get(DATA_ENV)
    candidates = [Path(env)] if env else []
    rel = Path("shared") / "data" / "cache" / "qqp_dev.jsonl"
    candidates += [Path.cwd().parent / rel, Path(__file__).resolve().parents[3] / rel]
    return next((p for p in candidates if p.is_file()), None)


def _synthetic_pairs(count: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    subjects = ["python", "the moon", "tax returns", "a resume", "tea", "the stock market", "guitar", "a visa",
                "machine learning", "sleep", "bread", "a startup", "chess", "the ocean", "cars", "rent"]
    asks = ["How do I learn about", "What is the best way to understand", "Why do people care about",
            "Where can I read about", "Is it hard to get into", "What should I know about"]
    out = []
    for _ in range(count):
        a = f"{rng.choice(asks)} {rng.choice(subjects)} {rng.choice(_FILLERS)}?"
        out.append({"a": a, "b": f"{rng.choice(asks)} {rng.choice(subjects)}?", "duplicate": False})
    return out


def _texts(
    pairs: list[dict[str, Any]], count: int, *, first: Sequence[str] = (), exclude: AbstractSet[str] = frozenset()
) -> Iterator[str]:
    """``count`` distinct questions: ``first``, the pairs' own, then perturbed copies (filler words appended).

    Texts in ``exclude`` are never produced (perturbed copies of them may be).
    """
    unique = list(dict.fromkeys([*first, *(t for p in pairs for t in (p["a"], p["b"]))]))
    produced, seen = 0, set(exclude)
    for round_ in range(count // max(len(unique), 1) + 2):
        suffix = "" if round_ == 0 else " " + " ".join(
            _FILLERS[(round_ // len(_FILLERS) ** i) % len(_FILLERS)] for i in range(1 + round_ // len(_FILLERS))
        )
        for text in unique:
            candidate = text + suffix
            if candidate in seen:
                continue
            seen.add(candidate)
            yield candidate
            produced += 1
            if produced >= count:
                return


def _percentiles(samples: list[float]) -> tuple[float, float]:
    if not samples:
        return 0.0, 0.0
    ms = np.asarray(samples) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def bench_cache(
    entries: int,
    *,
    queries: int = 2000,
    embedder: Embedder | None = None,
    scorer: Scorer | None = None,
    threshold: float | None = None,
    reranker: bool = False,
) -> dict[str, Any]:
    """Build a cache of ``entries`` questions in one partition and time ``queries`` lookups, embedding included.

    A lookup is what :meth:`Cache.lookup <llmbudget.cache.cache.Cache.lookup>` asks the store:
    the exact tier (a miss) then the semantic search (embed, index, candidates, verifier);
    ``_WARMUP`` lookups run first, untimed. ``build_s`` covers embedding, the verifier's
    per-entry data, SQLite inserts, the index build and its save; ``bytes_per_entry`` is the
    directory's size on disk (store + index) per entry. ``scorer``/``threshold`` default to
    the store's (the verifier). ``miss_path`` and ``candidate_path`` split the lookups (count,
    p50, p99 ms) by whether the scorer ran (the first stage found a candidate at or above the
    store's ``min_cosine`` that the template guard let through).

    ``reranker``: the store as ``Cache(reranker=True)`` builds it. The stored entries get
    random unit MiniLM vectors instead of their own (embedding 100,000 texts with MiniLM takes
    about 20 minutes on two cores; a lookup's cost does not depend on the values, so hit
    figures mean nothing here); each query is embedded by MiniLM for real, every time.
    """
    if entries < 1 or queries < 1:
        raise ValueError(f"entries and queries must be >= 1, got {entries} and {queries}")
    if reranker:
        scorer = _BenchReranker()
    source = default_pairs_path()
    if source is None:
        logger.warning("cache bench: no QQP pairs found (set %s); using synthetic questions", DATA_ENV)
        pairs = _synthetic_pairs(max(entries, 2 * queries))
    else:
        pairs = read_pair_rows(source)
    # The queries are the second questions of sampled pairs: their first questions are
    # stored, they are not, so lookups mix paraphrases (duplicates) and near misses.
    rng = random.Random(1)
    asked = [rng.choice(pairs) for _ in range(queries + _WARMUP)]
    originals = list(dict.fromkeys(p["a"] for p in asked))[: entries]
    held_out = {p["b"] for p in asked} - set(originals)
    texts = list(_texts(pairs, entries, first=originals, exclude=held_out))
    with tempfile.TemporaryDirectory(prefix="llmbudget-bench-", dir=os.environ.get(DIR_ENV)) as folder:
        options = scorer.store_options() if isinstance(scorer, _BenchReranker) else {"scorer": scorer}
        store = CacheStore(folder, embedder=embedder, threshold=threshold, max_entries=None, **options)
        try:
            store.threshold  # noqa: B018 - loads the scorer now: fail before a long build
            started = time.perf_counter()
            batch = 20_000
            for start in range(0, len(texts), batch):
                store.put_many(
                    {"partition": _PARTITION, "exact_key": f"e{start + i}", "text": text,
                     "response": json.dumps({"n": start + i}), "tenant": "bench", "model": "bench"}
                    for i, text in enumerate(texts[start : start + batch])
                )
                logger.info("cache bench: stored %d/%d", min(start + batch, len(texts)), len(texts))
            store.search(_PARTITION, texts[0])  # loads (builds) the partition's index
            store.save_index()
            build_s = time.perf_counter() - started
            store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = _disk_bytes(Path(folder))

            gc.collect()  # the build's garbage: not a lookup's cost
            timings, cpu = [], []
            paths: dict[str, list[float]] = {"miss_path": [], "candidate_path": []}
            scored = _count_scoring(store)
            for number, text in enumerate(p["b"] for p in asked):
                before = scored[0]
                if isinstance(scorer, _BenchReranker):
                    scorer.clear_cache()  # MiniLM runs on the query, as for a new question
                t0, c0 = time.perf_counter(), time.thread_time()
                # As Cache.lookup does: the exact tier (a miss: the query was never stored), then the semantic one.
                if store.get_exact(_PARTITION, f"q{number}") is None:
                    store.search(_PARTITION, text)
                if number >= _WARMUP:
                    timings.append(time.perf_counter() - t0)
                    cpu.append(time.thread_time() - c0)
                    paths["candidate_path" if scored[0] > before else "miss_path"].append(timings[-1])
        finally:
            store.close()
    p50, p99 = _percentiles(timings)
    cpu50, cpu99 = _percentiles(cpu)
    logger.info("cache bench: lookup CPU time p50 %.3f ms, p99 %.3f ms (wall p50 %.3f, p99 %.3f; load average %.2f)",
                cpu50, cpu99, p50, p99, os.getloadavg()[0])
    split = {path: {"lookups": len(ms), **dict(zip(("p50_ms", "p99_ms"), (round(v, 4) for v in _percentiles(ms))))}
             for path, ms in paths.items()}
    return {"entries": len(texts), "build_s": round(build_s, 3), "lookup_p50_ms": round(p50, 4),
            "lookup_p99_ms": round(p99, 4), "bytes_per_entry": round(size / len(texts), 1), **split}


def _count_scoring(store: CacheStore) -> list[int]:
    """Count the store's scorer calls from now on (a one-item list): a lookup that scored a candidate took
    the candidate path."""
    calls = [0]
    score = store._score

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return score(*args, **kwargs)

    store._score = counted  # type: ignore[method-assign]
    return calls


class _BenchReranker(RewordReranker):
    """The reranker with random MiniLM vectors in the stored entries' data (see :func:`bench_cache`)."""

    def _pack_texts(self, texts: Sequence[str]) -> list[bytes | None]:
        vectors = np.random.default_rng(len(texts)).standard_normal((len(texts), _DIM)).astype(np.float32)
        return self._pack(texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def gptcache_baseline(threshold: float) -> CacheStore:
    """A store that decides hits as GPTCache does by default, for :func:`eval_replay` to compare with.

    all-MiniLM-L6-v2 vectors (the whole model, 256 tokens; needs ``llmbudget[reranker]``), the best
    stored question by cosine, a hit at or above ``threshold``; no verifier, template guard or length limit.
    """
    from .minilm import MiniLMEmbedder

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the baseline's cosine threshold must be in (0, 1], not {threshold!r}")
    embedder = MiniLMEmbedder()
    embedder.check()
    return CacheStore(None, max_entries=None, embedder=embedder, scorer=CosineScorer(), threshold=threshold,
                      candidates=1, max_semantic_chars=None, template_guard=None, index_dtype="f16")


def eval_replay(pairs_path: str | os.PathLike[str], *, store: CacheStore | None = None,
                max_semantic_chars: int | None = DEFAULT_MAX_SEMANTIC_CHARS,
                template_guard: TemplateGuard | None = TemplateGuard(), reranker: bool = False,
                curve: Sequence[float] = ()) -> dict[str, Any]:
    """Store every ``a`` of a PAIRS.jsonl (one tenant, one partition), then look every ``b`` up.

    ``max_semantic_chars``, ``template_guard`` and ``reranker`` configure the store made here
    (as :class:`~llmbudget.cache.cache.Cache`'s); a ``store`` given is used as it was built.

    A correct hit returns the pair's own question and the pair is a duplicate, or
    returns a question with exactly the query's words: that entry's answer is the
    answer to this very question, and in real traffic such a repeat is the same
    request, an exact hit. The pair's own question is its entry or any other entry
    with the same words (a question stored by several pairs: no cache can tell
    them apart, so which one a search returns decides nothing); words are compared
    as the template guard compares them (:func:`templates.same_text`: "USA" is "usa",
    but "CO" is not "Co", "12 - 5" not "12 / 5"). Every other hit is wrong. ``same_text_hits``
    counts the correct hits that are not the pair's own question, only the query's
    words, so a strict precision that counts them wrong is
    ``(correct_hits - same_text_hits) / (correct_hits + wrong_hits)``.
    ``hit_recall`` is the duplicate pairs whose lookup hit correctly, over the
    duplicate pairs.

    ``false_hits`` counts the lookups of non-duplicate pairs that hit anything
    but their own words, and ``false_hit_rate`` divides it by the non-duplicate
    lookups (0.0 when there are none): on a near-miss set
    (``ci/build_template_pairs.py``) every such hit serves another question's answer. Pairs with a ``"kind"`` field are
    also counted per kind in ``by_kind`` (``pairs``, ``false_hits``,
    ``false_hit_rate``, and ``correct_hits`` and ``hit_recall`` where the kind
    has duplicates).

    ``curve``: hit thresholds to score the same replay at, in one pass (each lookup's best
    candidate does not depend on the threshold, only whether it is a hit): ``"curve"`` lists
    per threshold ``threshold``, ``hit_precision``, ``hit_recall``, ``correct_hits``,
    ``wrong_hits``, ``same_text_hits`` and ``false_hits``. The other figures stay at the
    store's own threshold.
    """
    pairs = read_pair_rows(pairs_path)
    thresholds = sorted({float(t) for t in curve})
    if any(not math.isfinite(t) for t in thresholds):
        raise ValueError(f"curve thresholds must be finite numbers, not {list(curve)!r}")
    made_here = store is None
    if store is None:
        store = CacheStore(None, max_entries=None, max_semantic_chars=max_semantic_chars,
                           template_guard=template_guard, **(RewordReranker().store_options() if reranker else {}))
    cache = store
    partition = "replay"
    try:
        threshold = cache.threshold  # loads the scorer now: fail before storing
        if thresholds and not hasattr(cache, "_threshold"):
            raise ValueError(f"a curve needs a store whose threshold can be lowered, not {type(cache).__name__}")
        ids = cache.put_many(
            {"partition": partition, "exact_key": f"pair:{i}", "text": str(p["a"]),
             "response": json.dumps({"pair": i}), "tenant": "eval", "model": "eval"}
            for i, p in enumerate(pairs)
        )
        timings = []
        found: list[tuple[float, str] | None] = []  # per pair: the hit's score and its outcome, or None
        own = cache._threshold if thresholds else None
        if thresholds:
            cache._threshold = min(thresholds[0], threshold)
        try:
            for i, pair in enumerate(pairs):
                t0 = time.perf_counter()
                hit = cache.search(partition, str(pair["b"]))
                timings.append(time.perf_counter() - t0)
                found.append(None if hit is None else (hit.score, _outcome(i, pair, hit.entry)))
        finally:
            if thresholds:
                cache._threshold = own
    finally:
        if made_here:
            cache.close()
    p50, p99 = _percentiles(timings)
    outcomes = _outcomes(found, threshold)
    result: dict[str, Any] = {"stored": len(ids), "queries": len(pairs), **_replay_figures(pairs, outcomes),
                              "lookup_p50_ms": round(p50, 4), "lookup_p99_ms": round(p99, 4)}
    result.update(_false_hits(pairs, outcomes))
    if thresholds:
        result["curve"] = []
        for t in thresholds:
            at = _outcomes(found, t)
            figures = _replay_figures(pairs, at)
            del figures["misses"]
            result["curve"].append({"threshold": t, **figures, "false_hits": _false_hits(pairs, at)["false_hits"]})
    return result


def _outcome(i: int, pair: dict[str, Any], entry: Any) -> str:
    """A hit's outcome for pair ``i``: ``correct``, ``same_text`` (correct: the query's own words) or ``wrong``."""
    if bool(pair["duplicate"]) and (json.loads(entry.response).get("pair") == i
                                    or same_text(entry.text, str(pair["a"]))):
        return "correct"
    if same_text(entry.text, str(pair["b"])):
        return "same_text"
    return "wrong"


def _outcomes(found: Sequence[tuple[float, str] | None], threshold: float) -> list[str]:
    """Per pair at ``threshold``: ``miss``, or the hit's outcome (``correct``, ``same_text`` or ``wrong``)."""
    return ["miss" if f is None or not f[0] >= threshold else f[1] for f in found]


def _replay_figures(pairs: Sequence[dict[str, Any]], outcomes: Sequence[str]) -> dict[str, Any]:
    """Hits, misses, precision and recall of a replay's outcomes (a same-text hit is correct)."""
    correct = sum(outcome in ("correct", "same_text") for outcome in outcomes)
    wrong = sum(outcome == "wrong" for outcome in outcomes)
    duplicates = sum(1 for p in pairs if p["duplicate"])
    recalled = sum(1 for p, outcome in zip(pairs, outcomes, strict=True)
                   if p["duplicate"] and outcome in ("correct", "same_text"))
    return {"correct_hits": correct, "wrong_hits": wrong, "misses": len(outcomes) - correct - wrong,
            "same_text_hits": sum(outcome == "same_text" for outcome in outcomes),
            "hit_precision": round(correct / (correct + wrong), 4) if correct + wrong else None,  # no hit: none
            "hit_recall": round(recalled / duplicates, 4) if duplicates else 0.0}


def _false_hits(pairs: Sequence[dict[str, Any]], outcomes: Sequence[str]) -> dict[str, Any]:
    """``false_hits`` and ``false_hit_rate`` over the non-duplicate pairs, and ``by_kind`` when pairs name one."""
    def figures(rows: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
        negatives = [outcome for pair, outcome in rows if not pair["duplicate"]]
        positives = [outcome for pair, outcome in rows if pair["duplicate"]]
        false = sum(outcome == "wrong" for outcome in negatives)
        out: dict[str, Any] = {"pairs": len(rows), "false_hits": false,
                               "false_hit_rate": round(false / len(negatives), 4) if negatives else 0.0}
        if positives:
            hits = sum(outcome in ("correct", "same_text") for outcome in positives)
            out.update(correct_hits=hits, hit_recall=round(hits / len(positives), 4))
        return out

    rows = list(zip(pairs, outcomes))
    total = figures(rows)
    result: dict[str, Any] = {"false_hits": total["false_hits"], "false_hit_rate": total["false_hit_rate"]}
    kinds: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for pair, outcome in rows:
        if pair.get("kind") is not None:
            kinds.setdefault(str(pair["kind"]), []).append((pair, outcome))
    if kinds:
        result["by_kind"] = {kind: figures(group) for kind, group in kinds.items()}
    return result


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmbudget.cache.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="lookup latency at N entries")
    bench.add_argument("entries", type=int)
    bench.add_argument("--queries", type=int, default=2000)
    replay = sub.add_parser("replay", help="hit precision and recall on labeled pairs")
    replay.add_argument("pairs")
    replay.add_argument("--sample", type=int, default=0, help="a seeded random sample of this many pairs")
    for command in (bench, replay):
        command.add_argument("--cosine", type=float, metavar="THRESHOLD",
                             help="decide hits by raw cosine >= THRESHOLD instead of the verifier")
    replay.add_argument("--embedder", choices=("wordllama", "minilm"), default="wordllama",
                        help="with --cosine: the vectors compared (minilm: the GPTCache-style baseline; needs "
                             "llmbudget[reranker])")
    args = parser.parse_args(argv)
    if args.command == "replay" and args.embedder != "wordllama" and args.cosine is None:
        parser.error("--embedder needs --cosine THRESHOLD")
    scorer = CosineScorer() if args.cosine is not None else None
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.perf_counter()
    if args.command == "bench":
        result = bench_cache(args.entries, queries=args.queries, scorer=scorer, threshold=args.cosine)
    else:
        path = args.pairs
        if args.sample:
            lines = [line for line in Path(path).read_text("utf-8").splitlines() if line.strip()]
            random.Random(0).shuffle(lines)
            with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as handle:
                handle.write("\n".join(lines[: args.sample]) + "\n")
            path = handle.name
        try:
            store = None
            if args.cosine is not None and args.embedder == "minilm":
                store = gptcache_baseline(args.cosine)
            elif scorer is not None:
                store = CacheStore(None, max_entries=None, scorer=scorer, threshold=args.cosine)
            result = eval_replay(path, store=store)
            if store is not None:
                store.close()
        finally:
            if args.sample:
                os.unlink(path)
    print(json.dumps(result))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall {time.perf_counter() - started:.1f} s, peak RSS {peak_mib:.0f} MiB, "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
