"""The verifier: shipped weights, sensible decisions, safety flips, metrics and eval_pairs."""

from __future__ import annotations

import importlib.resources
import json
import time
from pathlib import Path

import numpy as np
import pytest

import llmbudget.cache.verifier as verifier_module
from llmbudget.cache.embedders import WordLlamaEmbedder
from llmbudget.cache.evaluate import auc, eval_pairs, pair_metrics, recall_at_precision
from llmbudget.cache.verifier import (
    DEFAULT_THRESHOLD,
    FEATURE_NAMES,
    Verifier,
    default_verifier,
    score_pair,
)


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    """The shipped verifier (built once per process)."""
    return default_verifier()


def test_weights_file_is_small_and_loads() -> None:
    resource = importlib.resources.files("llmbudget.cache").joinpath("verifier_weights.json")
    raw = resource.read_bytes()
    assert len(raw) < 200 * 1024
    weights = json.loads(raw)
    assert weights["format"] == "llmbudget-verifier/1"
    assert weights["features"] == list(FEATURE_NAMES)
    assert weights["threshold"] == DEFAULT_THRESHOLD
    assert 0.0 < DEFAULT_THRESHOLD < 1.0
    assert weights["validation"]["qqp"]["default"]["precision"] >= 0.9
    assert Verifier(weights).threshold == DEFAULT_THRESHOLD


def test_scores_are_probabilities(verifier: Verifier) -> None:
    for a, b in [("What is 2+2?", "What is 2+2?"), ("", ""), ("hi", "How do I learn to fly a plane?")]:
        assert 0.0 <= verifier.score_pair(a, b) <= 1.0
    assert verifier.features("a b", "a c").shape == (len(FEATURE_NAMES),)


def test_paraphrases_score_higher_than_unrelated_questions() -> None:
    pairs = [
        ("How can I lose weight quickly?", "What is the fastest way to lose weight?", "How do I fix a flat bike tyre?"),
        ("How do I learn Python fast?", "What is the quickest way to learn Python?", "What is the capital of Peru?"),
        ("What are the best books on economics?", "Which economics books are the best?", "Why is the sky blue?"),
    ]
    for query, paraphrase, unrelated in pairs:
        assert score_pair(query, paraphrase) > score_pair(query, unrelated) + 0.3
        assert score_pair(query, unrelated) < DEFAULT_THRESHOLD


def test_near_identical_questions_are_hits() -> None:
    assert score_pair("How do I learn Python fast?", "How do I learn Python fast?") >= DEFAULT_THRESHOLD
    assert score_pair("What is the best way to learn French?", "What's the best way to learn French?") >= DEFAULT_THRESHOLD


def test_different_numbers_are_not_the_same_question() -> None:
    assert score_pair("What is 2+2?", "What is 2+3?") < DEFAULT_THRESHOLD
    same = score_pair("Who won the World Cup in 2018?", "Who was the winner of the 2018 World Cup?")
    other = score_pair("Who won the World Cup in 2018?", "Who was the winner of the 2014 World Cup?")
    assert other < DEFAULT_THRESHOLD
    assert other < same - 0.2


def test_negation_is_not_the_same_question() -> None:
    for query in ("Is it safe to drink tap water in Paris?", "Should I learn Java before Python?"):
        negated = query.replace("Is it safe", "Is it not safe").replace("Should I", "Should I not")
        assert score_pair(query, negated) < DEFAULT_THRESHOLD
        assert score_pair(query, negated) < score_pair(query, query)


def test_vector_form_matches_the_text_form(verifier: Verifier) -> None:
    a, b = "How do I become a data scientist?", "What should I do to become a data scientist?"
    va, vb = WordLlamaEmbedder().embed([a, b])
    assert verifier.score(a, va, b, vb) == pytest.approx(verifier.score_pair(a, b), abs=1e-3)
    untrusted = Verifier(vectors_from=None)
    garbage = np.ones(256, dtype=np.float32)
    assert untrusted.score(a, garbage, b, -garbage) == pytest.approx(verifier.score_pair(a, b), abs=1e-9)
    assert verifier.score(a, None, b, None) == pytest.approx(verifier.score_pair(a, b), abs=1e-9)


def test_score_many_matches_single_scores(verifier: Verifier) -> None:
    query = "How can I improve my English speaking?"
    candidates = ["How do I improve my spoken English?", "How can I improve my French?", "What is 2+2?"]
    vectors = WordLlamaEmbedder().embed([query, *candidates])
    many = verifier.score_many(query, vectors[0], candidates, vectors[1:])
    single = [verifier.score(query, vectors[0], c, v) for c, v in zip(candidates, vectors[1:])]
    np.testing.assert_allclose(many, single, atol=1e-9)
    assert verifier.score_many(query, vectors[0], [], vectors[:0]).shape == (0,)


def test_scoring_is_fast(verifier: Verifier) -> None:
    query, cand = "What are the health benefits of green tea?", "Is green tea good for your health?"
    verifier.score_pair(query, cand)
    runs = []
    for i in range(50):
        start = time.perf_counter()
        verifier.score_pair(f"{query} {i}", cand)  # a new query each time, the candidate cached
        runs.append(time.perf_counter() - start)
    assert float(np.median(runs)) < 0.005  # about 0.3 ms on an idle core; generous for busy CI


def test_metrics_on_known_scores() -> None:
    labels = [True, True, False, True, False, False]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    assert auc(labels, scores) == pytest.approx(8 / 9)
    assert auc([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert recall_at_precision(labels, scores, 0.9) == pytest.approx(2 / 3)
    assert recall_at_precision(labels, scores, 0.75) == pytest.approx(1.0)
    metrics = pair_metrics(labels, scores, 0.75)
    assert metrics["default"] == {"threshold": 0.75, "precision": 1.0, "recall": pytest.approx(2 / 3)}


def test_precision_at_another_duplicate_share_reweights_the_non_duplicates() -> None:
    labels = [True, False, True, False, False, False]  # 2 duplicates in 6 pairs
    scores = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    assert recall_at_precision(labels, scores, 0.8) == pytest.approx(0.5)  # above 0.7, precision is 2/3
    # Half duplicates: each non-duplicate weighs 2 * 0.5 / (0.5 * 4) = 0.5, so precision at 0.7 is 2 / 2.5.
    assert recall_at_precision(labels, scores, 0.8, duplicate_share=0.5) == pytest.approx(1.0)
    assert recall_at_precision(labels, scores, 0.8, duplicate_share=1 / 3) == pytest.approx(0.5)  # its own share
    balanced = pair_metrics(labels, scores, 0.7, duplicate_share=0.5)
    assert balanced["default"]["precision"] == pytest.approx(0.8)
    assert balanced["default"]["recall"] == pytest.approx(1.0) and balanced["auc"] == pair_metrics(labels, scores, 0.7)["auc"]
    with pytest.raises(ValueError, match="duplicate_share"):
        pair_metrics(labels, scores, 0.7, duplicate_share=1.0)


def test_eval_pairs_returns_exactly_the_documented_keys(tmp_path: Path) -> None:
    rows = [
        ("How do I learn Python fast?", "What is the quickest way to learn Python?", True),
        ("What is 2+2?", "What is 2+3?", False),
        ("How can I lose weight?", "What is the best way to lose weight?", True),
        ("Why is the sky blue?", "How do I cook rice?", False),
        ("What is the capital of France?", "What's the capital of France?", True),
        ("Is it safe to drink tap water?", "Is it not safe to drink tap water?", False),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": a, "b": b, "duplicate": d}) + "\n" for a, b, d in rows) + "\n")
    result = eval_pairs(path)
    assert set(result) == {"pairs", "auc", "recall_at_precision", "default", "score_p50_ms", "score_p99_ms",
                           "by_duplicate_share"}
    assert set(result["by_duplicate_share"]) == {"0.37", "0.45", "0.5"}
    assert result["by_duplicate_share"]["0.5"]["default"]["recall"] == result["default"]["recall"]
    assert set(result["recall_at_precision"]) == {"0.8", "0.9", "0.95"}
    assert set(result["default"]) == {"threshold", "precision", "recall"}
    assert result["pairs"] == 6 and isinstance(result["pairs"], int)
    assert result["default"]["threshold"] == DEFAULT_THRESHOLD
    assert result["auc"] > 0.8
    assert 0.0 < result["score_p50_ms"] <= result["score_p99_ms"]
    json.dumps(result)  # plain JSON types only


def test_eval_pairs_rejects_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        eval_pairs(path)


def test_packed_data_of_another_tokenizer_or_damaged_is_not_unpacked(verifier: Verifier) -> None:
    text, query = "How do I reset my password?", "How can I reset my password?"
    data = verifier._pack_texts([text])[0]
    assert data is not None and data[:5] == verifier._pack_tag
    verifier.clear_cache()
    expected = verifier.score_many(query, None, [text])
    tag = verifier._pack_tag
    for bad in (data, data[:9], tag + (3).to_bytes(4, "little") + b"\xff\xff\xfe\xff\x00\x01" + b"a\tb\tc\td",
                tag + (1 << 30).to_bytes(4, "little") + b"\x00\x01", b"\x01" + data[5:], b"\x02\x00\x00\x00\x00" + data[5:]):
        verifier.clear_cache()
        assert verifier._score_packed(query, None, [text], None, [bad]).tolist() == expected.tolist()


def test_one_text_packs_as_it_does_in_a_batch(verifier: Verifier, monkeypatch: pytest.MonkeyPatch) -> None:
    # A few answers stored after their lookups read the memoised token ids; a large batch tokenises anew.
    texts = ["Wie setze ich mein Passwort zurück? (Bestellung 12)", "How do I reset my password?"]
    alone = [verifier._pack_texts([t])[0] for t in texts]
    assert alone == verifier._pack_texts(texts) and all(alone)
    lone = "lone \ud800 surrogate"
    packed = verifier._pack_texts([lone])
    assert packed == verifier._pack_texts([lone, texts[0]])[:1] and packed[0] is not None
    monkeypatch.setattr(verifier_module, "_MEMO_BATCH", 1)  # the batch call, as for a bulk store
    assert verifier._pack_texts(texts) == alone and verifier._pack_texts([lone, texts[0]])[:1] == packed
    # A lone surrogate (a JSON "\ud800" escape) is tokenised as U+FFFD: it packs alone and in a batch alike,
    # and its packed form scores as the text does from scratch.
    verifier.clear_cache()
    expected = verifier.score_many("lone surrogate", None, [lone]).tolist()
    verifier.clear_cache()
    assert verifier._score_packed("lone surrogate", None, [lone], None, packed).tolist() == expected
