"""Train the semantic cache's verifier and write llmbudget/cache/verifier_weights.json.

Data: ../shared/data/cache/qqp_dev.jsonl (64,130 Quora question pairs).  The
pairs are split by question: questions (case and spacing folded) that share a
pair form connected groups, and whole groups go to validation (fixed seed)
until it holds ~20% of the pairs, so no question text is on both sides.  The
shipped weights (since 2026-12-06) also train on LLM-written phrasings,
``--llm``: gpt-3.5-turbo's three phrasings of each two-hop question of MQuAKE
(princeton-nlp/MQuAKE, MIT; Zhong et al. 2023), read from ``dataset/1_2_data.json``
of github.com/Hi-archers/StableKE @ 42107467939fde610aeba22d7e1d3ea97b50973a, as
``train_reranker.load_mquake`` pairs them (positives: two phrasings of a case;
negatives: a phrasing and the nearest one of another case with another answer),
with ``--llm-exclude`` naming ``ci/build_llm_rewordings.py``'s replay so that no
case of its questions or subjects is trained on.  Validation, IDF and the
threshold stay Quora's.

Model (pure numpy, here and at inference), on the features of
``llmbudget.cache.verifier.FEATURE_NAMES``:
1. IDF of every WordLlama token over the training questions (uint8-quantised).
2. A logistic regression on the standardised features plus one weight per
   WordLlama token id for "in one question only" and one for "in both"
   (L2, Adam).  Its out-of-fold logit (5 folds) becomes a feature of
3. gradient-boosted depth-4 trees (histogram splits, logistic loss).
The decision threshold is the lowest score above which validation precision
stays >= 0.90 at every higher threshold with at least 100 hits (so it is not
one lucky cut point).
Every validation figure is computed with ``Verifier.score``, the semantic
tier's hit decision, from the weights as written.  STS-B dev (score >= 4 counts
as duplicate) is a second check on text the model never saw.

Recall at precision 0.9 depends strongly on the share of duplicates among the
pairs (label noise among near-identical "non-duplicates" decides it at QQP's
natural share), so the validation figures are also printed with non-duplicates
reweighted to 37%, 45% and 50% duplicates.  WordLlama cosine alone reaches ~0.12 at
45-50% duplicates, where the verifier reaches 0.44-0.55.

Tried on the same split (recall at P0.9 at the natural share / at 50%), none
better than the +-0.03 that the same model moves between validation seeds:
stacking folds by question group 0.218 / 0.563; transitive-closure augmentation
(+6.5k positives, optionally +2.2k negatives) 0.175 / 0.540 and 0.170 / 0.519;
pooled u*v and |u-v| columns in the linear model 0.162 / 0.547; a learned
diagonal metric on aligned tokens 0.172 / 0.545; 1,000 depth-5 trees 0.221 /
0.549; a bag of 3 tree models 0.208 / 0.560; a decomposable-attention model over
frozen WordLlama token vectors (torch, 4 epochs) alone AUC 0.868, 0.061 / 0.367
(underfit; not stacked).  Shipped: 0.197 / 0.554.

LLM-written rewordings added to training (the pairs of ``ci/build_llm_rewordings.py``'s sources that its
set does not use; measured through ``eval cache --mode replay`` on that set, whose sources the added pairs
are not from where marked "unseen", and on the near-miss sets of ``ci/build_fresh_near_misses.py`` and
``ci/build_near_miss_pairs.py``):
- 780 KEBench ChatGPT paraphrases: MQuAKE (unseen) rewordings found 7 -> 58 of 150, KEBench's own 9 -> 160
  of 220, Quora non-duplicates served 8 -> 6, near misses served 0 -> 1 and 1 -> 1; QQP R@P0.9 0.188.  Not
  usable: KEBench (Hi-archers/StableKE) has no licence.
- 800 MQuAKE gpt-3.5 phrasing pairs (MIT): KEBench (unseen) 9 -> 42 of 220, APTY 43 -> 44, GSM-Plus 13 -> 20,
  Quora non-duplicates served 8 -> 6; but near misses served 0 -> 3 and 1 -> 2 ("which formula averages
  column B" answered with the entry for "... sums column B"), Quora replay precision 0.879 -> 0.868.  With all
  2,648 MQuAKE pairs and 2,080 of its single-hop / two-hop questions as negatives the threshold rose to 0.95
  and QQP recall fell to 0.03.  Not shipped: more rewordings found, at the cost of near misses served, which
  the cache must never do.
- ``--llm`` (2026-12-06; MQuAKE through ``train_reranker.load_mquake`` with ``--llm-exclude`` naming that
  set: 9,077 pairs, 5,358 positive, no case of the set's questions or subjects), against this script's own
  weights without it (threshold 0.852, QQP R@P0.9 0.203; the shipped file, trained on 2026-11-27's features,
  has 0.858): rewordings found 71 -> 220 of 650 (measured against the previously shipped weights; KEBench
  9 -> 43, its subjects left out; MQuAKE's other subjects 7 -> 111; unseen APTY 42 -> 47, GSM-Plus
  13 -> 19), Quora non-duplicates served 8 -> 5,
  meaning-changing rewrites served 12 -> 11, the Quora replay 0.844 / 0.261 -> 0.843 / 0.236, QQP R@P0.9
  0.183 (threshold 0.879), templates 0 -> 0, ``build_near_miss_pairs`` 1 -> 1, the bundled sample's replay
  27.4% -> 28.0% saved at 101.4% kept; but ``build_fresh_near_misses`` served 0 -> 3 ("which formula sums
  column B" answered with "... averages column B", twice, and "True if any of the numbers are negative"
  with "... exactly two of them"): tolerating LLM rewording, the WordLlama features cannot tell a
  rephrased frame from one swapped content word.  ``--rules 6000`` (the reranker's rule rewordings and
  near-misses) on top raised the threshold to 0.970 (QQP recall 0.026); ``--rules-negatives-only`` with
  2,000 / 6,000 questions found 222 / 201 rewordings and still served 4 fresh near misses (``--rules`` draws
  on every rule family and near-miss kind, the reranker's validation ones too: an experiment, not for shipped
  weights).  Each run: about a minute here; ``eval cache --mode replay`` on each set, a few seconds.
  Shipped all the same (``--llm`` alone), once four rules of the template guard that hold whatever else is
  reworded took those near misses away: another aggregate ("sums" / "averages"), an exact count the other
  text never names, the same two things the other way round ("Berlin to Rome" / "Rome to Berlin") and one
  text negating where the other does not; and two texts with the same words but for courtesy are taken as
  the same question whatever the score.  With them (``eval cache --mode replay``, before -> after): the fresh set's
  false hits 0 -> 0 and its paraphrases found 14 -> 18 of 100; ``build_near_miss_pairs`` 1 -> 1; templates
  0 -> 0; the LLM rewordings 71 -> 220 of 650 found, precision 0.899 -> 0.969 (without the 140 rewrites
  that change the meaning); the rule rewordings 0.971 / 0.237 -> 0.983 / 0.235; Quora 0.879 / 0.200 ->
  0.876 / 0.173; MRPC 0.927 / 0.152 -> 0.956 / 0.172 (the sets of ``train_reranker.py export``).

Run from the project root (deterministic; about a minute on 2 cores; LLM_DIR: the files
``ci/build_llm_rewordings.py`` reads, /tmp/llm_rewordings.jsonl: what it writes)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python ci/train/train_verifier.py --llm LLM_DIR/1_2_data.json \
        --llm-exclude /tmp/llm_rewordings.jsonl              # writes the shipped weights, bit for bit
                                                             # (more BLAS threads move the linear part by 1e-12)
    .venv/bin/python ci/train/train_verifier.py --no-write  # validation only (Quora alone)
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llmbudget.cache.embedders import _load_wordllama
from llmbudget.cache.evaluate import DUPLICATE_SHARES, pair_metrics
from llmbudget.cache.verifier import _FORMAT, FEATURE_NAMES, Verifier

DATA = ROOT.parent / "shared" / "data" / "cache"
DEFAULT_OUT = ROOT / "llmbudget" / "cache" / "verifier_weights.json"
SEED = 20240607
VALIDATION_SHARE = 0.2
TARGET_PRECISION = 0.90
MIN_HITS = 100  # smallest number of hits a precision is judged on
EMBEDDER = "wordllama-l2_supercat-256"

# stacked logistic regression
SPARSE_L2 = 3e-4
DENSE_L2 = 1e-4
LR_EPOCHS = 30
LR_BATCH = 512
LR_RATE = 0.05
FOLDS = 5
# boosted trees
TREES = 500
DEPTH = 4
SHRINKAGE = 0.05
MIN_LEAF = 20
L2_LEAF = 1.0
SUBSAMPLE = 0.8
BINS = 32

Pair = tuple[str, str, bool]


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 9)).decode("ascii")


def load_qqp(path: Path) -> list[Pair]:
    with path.open(encoding="utf-8") as handle:
        return [(r["a"], r["b"], bool(r["duplicate"])) for r in map(json.loads, handle) if r]


def load_stsb(path: Path) -> list[Pair]:
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append((row[5], row[6], float(row[4]) >= 4.0))
    return pairs


def split_by_question(pairs: Sequence[Pair], seed: int, share: float) -> np.ndarray:
    """Boolean mask of validation pairs: whole groups of linked questions, ~``share`` of the pairs."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def key(text: str) -> str:
        return " ".join(text.casefold().split())

    for a, b, _ in pairs:
        parent[find(key(a))] = find(key(b))
    group = [find(key(a)) for a, _, _ in pairs]
    sizes = Counter(group)
    roots = sorted(sizes)
    np.random.default_rng(seed).shuffle(roots)
    chosen: set[str] = set()
    taken = 0
    for root in roots:
        if taken >= share * len(pairs):
            break
        chosen.add(root)
        taken += sizes[root]
    return np.array([g in chosen for g in group])


# --------------------------------------------------------------------------- features


def base_weights(idf_q: np.ndarray, idf_scale: float) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "embedder": EMBEDDER,
        "features": list(FEATURE_NAMES),
        "idf": {"scale": idf_scale, "q": _b64(idf_q)},
    }


def token_idf(verifier_vocab: int, texts: Sequence[str], tokenizer: Any) -> tuple[np.ndarray, float]:
    df = np.zeros(verifier_vocab, dtype=np.int64)
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        df[np.unique(np.asarray(encoding.ids, dtype=np.int64))] += 1
    idf = np.log((len(texts) + 1) / (df + 1))
    scale = float(idf.max()) / 255.0
    return np.round(idf / scale).astype(np.uint8), scale


def pair_rows(verifier: Verifier, pairs: Sequence[Pair]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dense features and, per pair, the sparse columns (token id, or vocab + id when shared)."""
    vocab = verifier._table.shape[0]
    dense, sparse = [], []
    for a, b, _ in pairs:
        pa, pb = verifier._prepare(a), verifier._prepare(b)
        dense.append(verifier._features(pa, pb))
        shared = pa.idset & pb.idset
        only = pa.idset ^ pb.idset
        sparse.append(np.fromiter(list(only) + [vocab + t for t in shared], dtype=np.int64))
    return np.asarray(dense, dtype=np.float64), sparse


# --------------------------------------------------------------------------- stacked logistic regression


class SparseLogit:
    """Logistic regression on standardised dense features plus binary sparse columns."""

    def __init__(self, dense: np.ndarray, n_sparse: int) -> None:
        self.mean = dense.mean(axis=0)
        self.std = dense.std(axis=0) + 1e-6
        self.w = np.zeros(dense.shape[1])
        self.b = 0.0
        self.ws = np.zeros(n_sparse)

    def fit(self, dense: np.ndarray, sparse: list[np.ndarray], y: np.ndarray, seed: int) -> SparseLogit:
        rng = np.random.default_rng(seed)
        z = (dense - self.mean) / self.std
        params = [self.w, np.zeros(1), self.ws]
        m1 = [np.zeros_like(p) for p in params]
        m2 = [np.zeros_like(p) for p in params]
        step, rate = 0, LR_RATE
        for _ in range(LR_EPOCHS):
            order = rng.permutation(len(y))
            for start in range(0, len(order), LR_BATCH):
                batch = order[start : start + LR_BATCH]
                cols = np.concatenate([sparse[i] for i in batch])
                owner = np.repeat(np.arange(len(batch)), [len(sparse[i]) for i in batch])
                logit = z[batch] @ self.w + params[1][0] + np.bincount(owner, self.ws[cols], minlength=len(batch))
                g = (1.0 / (1.0 + np.exp(-logit)) - y[batch]) / len(batch)
                grads = [
                    z[batch].T @ g + DENSE_L2 * self.w,
                    np.array([g.sum()]),
                    np.bincount(cols, g[owner], minlength=len(self.ws)) + SPARSE_L2 * self.ws,
                ]
                step += 1
                for p, grad, a, v in zip(params, grads, m1, m2):
                    a *= 0.9
                    a += 0.1 * grad
                    v *= 0.999
                    v += 0.001 * grad * grad
                    p -= rate * (a / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
            rate *= 0.9
        self.b = float(params[1][0])
        return self

    def logit(self, dense: np.ndarray, sparse: list[np.ndarray]) -> np.ndarray:
        z = (dense - self.mean) / self.std
        return z @ self.w + self.b + np.array([self.ws[c].sum() for c in sparse])


# --------------------------------------------------------------------------- boosted trees


def fit_trees(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Histogram gradient boosting (logistic loss): arrays of split features, thresholds and leaves."""
    rng = np.random.default_rng(seed)
    n, k = x.shape
    quantiles = np.linspace(0, 1, BINS + 1)[1:-1]
    edges = [np.unique(np.quantile(x[:, j], quantiles)) for j in range(k)]
    bins = np.empty((n, k), dtype=np.int64)
    for j, e in enumerate(edges):
        bins[:, j] = np.searchsorted(e, x[:, j], side="right")
    flat = bins + np.arange(k) * BINS  # one histogram call for all features
    prior = float(y.mean())
    base = float(np.log(prior / (1 - prior)))
    f = np.full(n, base)
    inner = 2**DEPTH - 1
    features = np.zeros((TREES, inner), dtype=np.uint8)
    thresholds = np.full((TREES, inner), np.inf, dtype=np.float32)
    leaves = np.zeros((TREES, inner + 1), dtype=np.float32)
    for t in range(TREES):
        p = 1.0 / (1.0 + np.exp(-f))
        g, h = p - y, p * (1 - p)
        sample = rng.random(n) < SUBSAMPLE
        node = np.zeros(n, dtype=np.int64)
        for level in range(DEPTH):
            for q in range(2**level):
                slot = 2**level - 1 + q
                rows = np.nonzero(sample & (node == q))[0]
                if len(rows) < 2 * MIN_LEAF:
                    continue
                fl = flat[rows].ravel()
                gh = np.bincount(fl, np.repeat(g[rows], k), minlength=k * BINS).reshape(k, BINS)
                hh = np.bincount(fl, np.repeat(h[rows], k), minlength=k * BINS).reshape(k, BINS)
                cnt = np.bincount(fl, minlength=k * BINS).reshape(k, BINS)
                gl, hl, cl = gh.cumsum(1)[:, :-1], hh.cumsum(1)[:, :-1], cnt.cumsum(1)[:, :-1]
                gt, ht = gh.sum(1, keepdims=True), hh.sum(1, keepdims=True)
                gain = gl**2 / (hl + L2_LEAF) + (gt - gl) ** 2 / (ht - hl + L2_LEAF) - gt**2 / (ht + L2_LEAF)
                gain[(cl < MIN_LEAF) | (len(rows) - cl < MIN_LEAF)] = -np.inf
                for feature, e in enumerate(edges):  # bins past the last edge are empty
                    gain[feature, len(e) :] = -np.inf
                best, split = divmod(int(np.argmax(gain)), BINS - 1)
                if gain[best, split] > 0:
                    features[t, slot], thresholds[t, slot] = best, edges[best][split]
            slot_of = 2**level - 1 + node
            go = x[np.arange(n), features[t, slot_of]] >= thresholds[t, slot_of]
            node = 2 * node + go
        for q in range(inner + 1):
            rows = sample & (node == q)
            leaves[t, q] = -SHRINKAGE * g[rows].sum() / (h[rows].sum() + L2_LEAF)
        f += leaves[t, node]
    return {
        "depth": DEPTH,
        "trees": TREES,
        "base": base,
        "feature": _b64(features),
        "threshold": _b64(thresholds),
        "leaf": _b64(leaves),
    }


# --------------------------------------------------------------------------- threshold and report


def stable_threshold(labels: np.ndarray, scores: np.ndarray, target: float, min_hits: int = MIN_HITS) -> float:
    """Lowest score t such that ``score >= t'`` has precision >= target for every t' >= t.

    Cut points with fewer than ``min_hits`` pairs above them are too small to
    judge and are not checked.
    """
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(np.float64)
    cut = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    precision = np.cumsum(y)[cut] / (cut + 1)
    bad = np.nonzero((precision < target) & (cut + 1 >= min_hits))[0]
    ok = np.nonzero(precision[: int(bad[0]) if len(bad) else len(cut)] >= target)[0]
    if not len(ok):
        raise SystemExit(f"no threshold reaches precision {target} on validation")
    return float(s[cut[ok[-1]]])


def precision_at_recall(labels: np.ndarray, scores: np.ndarray, recalls: Sequence[float]) -> list[tuple[float, float]]:
    order = np.argsort(-scores, kind="mergesort")
    hits = np.cumsum(labels[order])
    recall = hits / max(int(labels.sum()), 1)
    return [(r, float(hits[i] / (i + 1))) for r in recalls for i in [int(np.searchsorted(recall, r))]]


def describe(name: str, metrics: dict[str, Any]) -> str:
    rap = metrics["recall_at_precision"]
    d = metrics["default"]
    return (
        f"{name:<26} pairs={metrics['pairs']:>6}  AUC={metrics['auc']:.4f}  "
        f"R@P0.8={rap['0.8']:.3f}  R@P0.9={rap['0.9']:.3f}  R@P0.95={rap['0.95']:.3f}  "
        f"@threshold {d['threshold']:.3f}: P={d['precision']:.3f} R={d['recall']:.3f}"
    )


def score_all(verifier: Verifier, pairs: Sequence[Pair]) -> np.ndarray:
    """Scores through ``Verifier.score`` with the embedder's vectors, as the cache calls it."""
    out = np.empty(len(pairs))
    for i, (a, b, _) in enumerate(pairs):
        vectors = verifier.embedder.embed([a, b])
        out[i] = verifier.score(a, vectors[0], b, vectors[1])
    return out


def extra_pairs(train: Sequence[Pair], llm: Path | None, llm_exclude: Path | None, rules: int,
                rules_positives: bool = True) -> list[Pair]:
    """Training pairs beside QQP's: MQuAKE's LLM phrasings (``--llm``) and rule rewordings and near-misses of
    training-split questions (``--rules``; the near-misses alone with ``rules_positives=False``), as
    ``train_reranker.py`` builds them."""
    if llm is None and not rules:
        return []
    import train_reranker as tr  # beside this script (its folder is on sys.path); it imports this module

    out: list[Pair] = []
    if llm is not None:
        rows = [json.loads(line) for line in llm_exclude.read_text(encoding="utf-8").splitlines()
                if line.strip()] if llm_exclude else []
        out += tr.load_mquake(llm, [text for row in rows for text in (row["a"], row["b"])])
    if rules:
        questions = list(dict.fromkeys(q for a, b, _ in train for q in (a, b)))
        rng = random.Random(SEED + 11)
        rng.shuffle(questions)
        made = tr._generated(questions[:rules], tr.TRAIN_FAMILIES + tr.VAL_FAMILIES,
                             tr.TRAIN_MISSES + tr.VAL_MISSES, rng)
        out += made if rules_positives else [pair for pair in made if not pair[2]]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "qqp_dev.jsonl")
    parser.add_argument("--stsb", type=Path, default=DATA / "stsb_dev.tsv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-write", action="store_true", help="report only, leave the weights file alone")
    parser.add_argument("--write-validation", type=Path, metavar="PATH",
                        help="also write the validation pairs as JSONL (for `llmbudget eval cache PATH`)")
    parser.add_argument("--llm", type=Path, metavar="1_2_DATA_JSON",
                        help="also train on MQuAKE's LLM phrasings (train_reranker.load_mquake)")
    parser.add_argument("--llm-exclude", type=Path, metavar="PAIRS",
                        help="with --llm: leave out the cases of this replay's texts (ci/build_llm_rewordings.py)")
    parser.add_argument("--rules", type=int, default=0, metavar="N",
                        help="also train on rule rewordings and near-misses of N training-split questions")
    parser.add_argument("--rules-negatives-only", action="store_true", help="with --rules: the near-misses alone")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    pairs = load_qqp(args.data)
    is_val = split_by_question(pairs, SEED, VALIDATION_SHARE)
    train = [p for p, v in zip(pairs, is_val) if not v]
    val = [p for p, v in zip(pairs, is_val) if v]
    extra = extra_pairs(train, args.llm, args.llm_exclude, args.rules, not args.rules_negatives_only)
    qqp_train = train
    train = train + extra
    y = np.array([p[2] for p in train], dtype=np.float64)
    print(f"pairs: {len(train)} train ({len(extra)} of them --llm / --rules), {len(val)} validation (split by question, seed {SEED})")
    if args.write_validation:
        args.write_validation.write_text(
            "".join(json.dumps({"a": a, "b": b, "duplicate": d}) + "\n" for a, b, d in val), encoding="utf-8"
        )

    model = _load_wordllama()
    questions = list(dict.fromkeys(q for a, b, _ in qqp_train for q in (a, b)))
    idf_q, idf_scale = token_idf(model.table.shape[0], questions, model.tokenizer)
    weights = base_weights(idf_q, idf_scale)
    featurizer = Verifier(weights)
    dense, sparse = pair_rows(featurizer, train)
    vocab = model.table.shape[0]
    print(f"features: {dense.shape[1]} dense + per-token weights  [{time.perf_counter() - started:.0f}s]")

    folds = np.random.default_rng(SEED).integers(0, FOLDS, len(train))
    stacked = np.empty(len(train))
    for fold in range(FOLDS):
        fit_rows = np.nonzero(folds != fold)[0]
        out_rows = np.nonzero(folds == fold)[0]
        lr = SparseLogit(dense[fit_rows], 2 * vocab).fit(dense[fit_rows], [sparse[i] for i in fit_rows], y[fit_rows], SEED + fold)
        stacked[out_rows] = lr.logit(dense[out_rows], [sparse[i] for i in out_rows])
    full = SparseLogit(dense, 2 * vocab).fit(dense, sparse, y, SEED)
    scale = float(np.abs(full.ws).max()) / 127.0
    quantised = np.clip(np.round(full.ws / scale), -127, 127).astype(np.int8)
    weights["linear"] = {"mean": full.mean.tolist(), "std": full.std.tolist(), "w": full.w.tolist(), "b": full.b}
    weights["sparse"] = {"scale": scale, "diff": _b64(quantised[:vocab]), "common": _b64(quantised[vocab:])}
    print(f"stacked logistic regression: {FOLDS} folds + full  [{time.perf_counter() - started:.0f}s]")

    weights["gbdt"] = fit_trees(np.column_stack([dense, stacked]), y, SEED)
    print(f"boosted trees: {TREES} x depth {DEPTH}  [{time.perf_counter() - started:.0f}s]")

    weights["threshold"] = 0.0  # no same-words floor while the threshold is chosen
    val_labels = np.array([p[2] for p in val])
    threshold = stable_threshold(val_labels, score_all(Verifier(weights), val), TARGET_PRECISION)
    weights["threshold"] = threshold
    verifier = Verifier(weights)
    val_scores = score_all(verifier, val)
    validation = pair_metrics(val_labels, val_scores, threshold)
    cosine = np.array([float(v[0] @ v[1]) for v in (verifier.embedder.embed([a, b]) for a, b, _ in val)])
    cosine_metrics = pair_metrics(val_labels, cosine, 1.0)

    stsb = load_stsb(args.stsb) if args.stsb.exists() else []
    stsb_metrics = None
    if stsb:
        stsb_labels = np.array([p[2] for p in stsb])
        stsb_metrics = pair_metrics(stsb_labels, score_all(verifier, stsb), threshold)
        stsb_cos = np.array([float(v[0] @ v[1]) for v in (verifier.embedder.embed([a, b]) for a, b, _ in stsb)])
        stsb_cos_metrics = pair_metrics(stsb_labels, stsb_cos, 1.0)

    weights["validation"] = {"qqp": validation, **({"stsb_ge4": stsb_metrics} if stsb_metrics else {})}
    weights["training"] = {
        "data": args.data.name,
        "seed": SEED,
        "train_pairs": len(train),
        "llm": args.llm.name if args.llm else None,
        "extra_pairs": len(extra),  # --llm and --rules
        "validation_pairs": len(val),
        "model": f"logistic regression (dense + per-token) stacked under {TREES} depth-{DEPTH} boosted trees",
    }

    print()
    print(describe("QQP validation: verifier", validation))
    print(describe("QQP validation: cosine", cosine_metrics))
    for share in DUPLICATE_SHARES:  # recall at a fixed precision depends strongly on the duplicate share
        print(describe(f"QQP validation at {share:.0%} duplicates: verifier",
                       pair_metrics(val_labels, val_scores, threshold, duplicate_share=share)))
        print(describe(f"QQP validation at {share:.0%} duplicates: cosine",
                       pair_metrics(val_labels, cosine, 1.0, duplicate_share=share)))
    print("QQP validation: verifier precision at recall " + "  ".join(
        f"{r}: {p:.3f}" for r, p in precision_at_recall(val_labels, val_scores, (0.2, 0.3, 0.4, 0.5))))
    if stsb_metrics:
        print(describe("STS-B >= 4: verifier", stsb_metrics))
        print(describe("STS-B >= 4: cosine", stsb_cos_metrics))
    print(f"DEFAULT_THRESHOLD = {threshold:.4f} (validation precision >= {TARGET_PRECISION} above it)")
    if not args.no_write:
        args.out.write_text(json.dumps(weights, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
