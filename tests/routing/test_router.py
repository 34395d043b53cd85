from __future__ import annotations

import csv
import json
import re
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmbudget.routing import FEATURE_NAMES, Router, eval_router, extract, feature_dict
from llmbudget.routing import classifier
from llmbudget.routing.classifier import load_weights
from llmbudget.routing.embedding import VECTORS_NAME, PromptVectors
from llmbudget.routing.evaluate import FRACTIONS, apgr, cpt, load_labels, pgr_curve, routing_metrics
from llmbudget.routing.features import request_text, tokens

WEIGHTS = Path(__file__).resolve().parents[2] / "llmbudget" / "routing" / "router_weights.json"
KEYS = {
    "prompts",
    "weak_accuracy",
    "strong_accuracy",
    "apgr",
    "cpt50",
    "random_apgr",
    "oracle_apgr",
    "at_threshold",
    "curve",
    "unlabeled_rows",
}


def user(text: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


EDGE_BODIES: list[Any] = [
    None,
    "just a string",
    42,
    [],
    {},
    {"messages": []},
    {"messages": None},
    {"messages": "not a list"},
    {"messages": [None, 3, "loose string", {"role": None}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": None}]},
    {"messages": [{"role": "user", "content": 123}]},
    {"messages": [{"role": "user", "content": 1.5}]},
    {"messages": [{"role": "user", "content": True}]},
    {"messages": [{"role": "user", "content": {"text": "dict content"}}]},
    {"messages": [{"role": "user", "content": {"unexpected": ["x"]}}]},
    {"messages": [{"role": "user", "content": b"bytes content"}]},
    {"messages": [{"role": "user", "content": [None, 7, {"type": "text"}, {"type": "text", "text": None}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": [{"type": "text", "text": "nested"}]}]}]},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": "\ud800 lone surrogate \udfff"}]},
    {"messages": [{"role": "user", "content": "x" * 200_000}]},
    {"messages": [{"role": "user", "content": "\n\n\n" + "A. \nB. \n" * 50}]},
    {"messages": [{"role": "user", "content": "A.\nB.\n(C)\n("}]},
    {"messages": [{"role": "user", "content": "数学の問題を解いてください。 2x + 3 = 7"}]},
    {"input": "Responses API string input"},
    {"input": ["a", "list", "of", "strings"]},
    {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
    {"input": [{"type": "function_call_output", "call_id": "c1", "output": "42"}, {"weird": object()}]},
    {"input": None, "instructions": 5},
    {"input": [{"type": {"unhashable": 1}, "role": ["x"], "content": "z"}, {"type": ["y"]}]},
    {"messages": [{"role": "user", "content": [{"type": {"a": 1}, "text": "t"}]}]},
    {"prompt": "legacy completions prompt"},
    {"messages": [{"role": "user", "content": "hi"}], "tools": "not a list", "response_format": "json_schema"},
    {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": None}, "reasoning": "high"},
    {"messages": [{"role": "user", "content": "hi"}], "text": {"format": 3}, "reasoning_effort": 1},
]


@pytest.mark.parametrize("body", EDGE_BODIES, ids=range(len(EDGE_BODIES)))
def test_features_never_crash_and_stay_finite(body: Any) -> None:
    x = extract(body)
    assert len(x) == len(FEATURE_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in x)


@pytest.mark.parametrize("body", EDGE_BODIES, ids=range(len(EDGE_BODIES)))
def test_score_is_a_probability_for_any_body(body: Any) -> None:
    router = Router()
    s = router.score(body)
    assert 0.0 <= s <= 1.0
    explanation = router.explain(body, top=3)
    assert len(explanation) <= 3
    assert all(isinstance(name, str) and isinstance(value, float) for name, value in explanation)


def test_empty_request_has_all_zero_text_features() -> None:
    f = feature_dict({"messages": []})
    assert f["log_chars"] == 0.0 and f["mc_options"] == 0.0 and f["tools"] == 0.0


def test_request_shape_features() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
                    {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "reasoning_effort": "high",
    }
    req = request_text(body)
    assert req.query == "What is in this picture?"
    assert req.turns == 2 and req.assistant_turns == 1 and req.has_system
    f = feature_dict(body)
    assert f["images"] == 2.0
    assert f["files_or_audio"] == 1.0
    assert f["tools"] == pytest.approx(math.log1p(2))
    assert f["response_schema"] == 1.0 and f["json_mode"] == 0.0
    assert f["conversation_depth"] == pytest.approx(math.log1p(1))
    assert f["has_system"] == 1.0
    assert f["reasoning_requested"] == 1.0
    assert f["log_context_chars"] > 0.0
    assert f["q_factual"] == 1.0


def test_responses_input_and_json_mode() -> None:
    body = {
        "instructions": "Answer in JSON.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Name a prime."}]},
            {"type": "input_image", "image_url": "https://example.com/x.png"},
        ],
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
    }
    f = feature_dict(body)
    assert f["json_mode"] == 1.0 and f["response_schema"] == 0.0
    assert f["has_system"] == 1.0
    assert f["reasoning_requested"] == pytest.approx(0.33)
    assert request_text(body).query == "Name a prime."
    assert f["images"] == 1.0


def test_bare_parts_join_the_user_turn_before_them_in_order() -> None:
    """Responses input parts placed after a user turn join it, each on a line of its own (an empty turn or part
    adds no line). Each part was added by copying the whole turn: 40,000 parts (5 MB) took 3.9 s of CPU."""
    parts = [{"type": "input_text", "text": f"part {i}"} for i in range(3)]
    body = {"input": [{"role": "user", "content": "Read these:"}, *parts, {"type": "input_text", "text": ""}]}
    assert request_text(body).query == "Read these:\npart 0\npart 1\npart 2"
    body = {"input": [{"role": "user", "content": ""}, *parts]}
    assert request_text(body).query == "part 0\npart 1\npart 2"
    many = [{"type": "input_text", "text": "x" * 100} for _ in range(40_000)]
    query = request_text({"input": [{"role": "user", "content": "q"}, *many]}).query
    assert query == "\n".join(["q", *["x" * 100] * 40_000])


def test_multiple_choice_math_and_code_markers() -> None:
    mc = feature_dict(user("Statement 1 | Every group is abelian. Statement 2 | 7 is prime.\nA. True, True\n"
                           "B. False, False\nC. True, False\nD. False, True\nAnswer:"))
    assert mc["mc_options"] == 4.0
    assert mc["mc_combo_options"] == 1.0 and mc["mc_pair_options"] == 1.0 and mc["paired_items"] == 1.0
    assert 0.0 < mc["mc_stem_share"] < 1.0
    math_f = feature_dict(user("Solve step by step: 3x + 5 = 20, then compute \\frac{x}{2} in kg."))
    assert math_f["equation"] > 0 and math_f["latex"] > 0 and math_f["step_by_step"] > 0
    assert math_f["math_words"] > 0 and math_f["units"] > 0 and math_f["digit_share"] > 0
    code = feature_dict(user("```python\ndef f(x):\n    return x == 1;\n```\nWhy does this function fail?"))
    assert code["code_fence"] == 1.0 and code["code_syntax"] > 0 and code["code_words"] > 0
    assert code["q_explain"] == 1.0
    foreign = feature_dict(user("Объясните, почему небо голубое?"))
    assert foreign["non_ascii_share"] > 0.5 and foreign["non_latin_share"] > 0.3
    assert tokens("Hello, World! It's 3.5") == ["hello", "world", "it's", "3", "5"]


def test_math_and_code_outscore_chit_chat() -> None:
    router = Router()
    chit_chat = [router.score(user(p)) for p in ("hi", "thanks!", "hello, how are you?", "good morning :)")]
    hard = [
        router.score(user(p))
        for p in (
            "Solve for x step by step: 3x^2 + 5x - 20 = 0, and give both roots to 3 decimals.",
            "A train leaves at 3pm at 60 mph and another at 4pm at 80 mph. When does the second catch up?",
            "```python\ndef merge(a, b):\n    return sorted(a + b)\n```\nMake this O(n) and explain why it is correct.",
            "Prove that the square root of 2 is irrational.",
        )
    ]
    assert min(hard) > max(chit_chat)


def test_explain_names_features_sorted_by_size() -> None:
    router = Router()
    parts = router.explain(user("```python\nprint(1)\n```\nWhy?"), top=50)
    names = [n for n, _ in parts]
    assert set(names) <= {*FEATURE_NAMES, "embedding"}
    assert "embedding" in names
    sizes = [abs(v) for _, v in parts]
    assert sizes == sorted(sizes, reverse=True)
    assert router.explain(user("x"), top=0) == []


def test_shipped_weights_load_and_are_small() -> None:
    assert WEIGHTS.stat().st_size < 200 * 1024
    doc = load_weights()
    assert doc["features"] == list(FEATURE_NAMES)
    assert len(doc["coef"]) == len(doc["mean"]) == len(doc["scale"]) == len(FEATURE_NAMES)
    router = Router()
    assert 0.0 < router.threshold < 1.0
    assert Router(WEIGHTS).score(user("hi")) == router.score(user("hi"))
    assert Router(threshold=0.9).threshold == 0.9


def test_weights_with_the_wrong_format_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "w.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="llmbudget-router/1"):
        Router(bad)
    doc = load_weights()
    doc["features"] = [*doc["features"][:-1], "no_such_feature"]
    with pytest.raises(ValueError, match="no_such_feature"):
        Router(doc)


def test_shipped_weights_carry_the_embedding_direction() -> None:
    doc = load_weights()
    assert doc["model"] == "logistic+embedding"
    assert doc["embedding"]["vectors"] == VECTORS_NAME
    assert len(doc["embedding"]["direction"]) == PromptVectors.dim
    assert "embedding=on" in repr(Router())


def test_embedding_term_moves_the_score_and_is_dropped_without_its_block() -> None:
    body = user("Which of the following statements about eigenvalues of a Hermitian matrix is true?")
    doc = load_weights()
    with_emb = Router(doc)
    without = Router({**doc, "embedding": None})
    assert with_emb.score(body) != without.score(body)
    assert "embedding" not in dict(without.explain(body, top=100))
    # the term is centred: 0 for a request with no text
    assert with_emb.score({"messages": []}) == without.score({"messages": []})


def test_weights_for_other_prompt_vectors_are_refused() -> None:
    doc = load_weights()
    with pytest.raises(ValueError, match="prompt vectors"):
        Router({**doc, "embedding": {**doc["embedding"], "vectors": "something-else"}})
    with pytest.raises(ValueError, match="shape"):
        Router({**doc, "embedding": {**doc["embedding"], "direction": [0.0] * 3}})


def test_router_falls_back_to_hand_features_when_wordllama_cannot_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    body = user("Prove that the square root of 2 is irrational.")
    doc = load_weights()
    hand_only = Router({**doc, "embedding": None}).score(body)

    def broken() -> None:
        raise ImportError("no wordllama here")

    monkeypatch.setattr(classifier, "_VECTORS", PromptVectors())
    monkeypatch.setattr(classifier._VECTORS, "load", broken)
    monkeypatch.setattr(classifier, "_VECTORS_BROKEN", [])
    router = Router()
    with caplog.at_level("WARNING", logger="llmbudget.routing"):
        assert router.score(body) == hand_only
        assert router.score(body) == hand_only
    assert sum("could not be loaded" in r.getMessage() for r in caplog.records) == 1
    assert "embedding" not in dict(router.explain(body, top=100))


def test_prompt_vectors() -> None:
    vectors = PromptVectors(cache_words=50)
    v = vectors.vector("What is the capital of France?")
    assert v is not None and v.dtype == np.float32 and v.shape == (PromptVectors.dim,)
    assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-5)
    assert vectors.vector("") is None and vectors.vector(" \n\t ") is None
    assert vectors.vector("\ud800 lone surrogate") is not None
    # word by word: the same words give the same vector wherever the whitespace is
    assert np.allclose(vectors.vector("a  b\nc"), vectors.vector("a b c"))
    # long texts take the counted path; it matches the plain sum
    text = " ".join(["the cat sat on the mat"] * 60)
    ids = vectors.token_ids(text)
    assert len(ids) > 128
    assert vectors._table is not None
    plain = vectors._table[ids].sum(axis=0)
    assert np.allclose(vectors.vector(text), plain / np.linalg.norm(plain), atol=1e-5)
    # the word cache stays bounded
    for i in range(200):
        vectors.vector(f"word{i}")
    assert len(vectors._ids) <= 50
    m = vectors.matrix(["hello world", ""])
    assert m.shape == (2, PromptVectors.dim) and not m[1].any()
    # close to WordLlama's own embedding of the same text
    from llmbudget.cache.embedders import WordLlamaEmbedder

    text = "Explain why the derivative of x squared is two x."
    assert float(WordLlamaEmbedder().embed([text])[0] @ vectors.vector(text)) > 0.9


class TableRouter:
    """A router that looks each prompt's score up in a table."""

    def __init__(self, table: dict[str, float], threshold: float = 0.5) -> None:
        self.table = table
        self.threshold = threshold

    def score(self, body: dict[str, Any]) -> float:
        return self.table[body["messages"][0]["content"]]


def write_labels(path: Path, rows: list[tuple[str, bool, bool]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "weak/model", "strong-model"])
        writer.writerows((p, str(w), str(s)) for p, w, s in rows)


def labeled_rows() -> list[tuple[str, bool, bool]]:
    rows = []
    for i in range(40):
        kind = i % 4  # 0: only strong right, 1: both right, 2: both wrong, 3: only weak right
        rows.append((f"prompt {i}, with a comma", kind in (1, 3), kind in (0, 1)))
    return rows


def test_eval_router_perfect_router_reaches_oracle(tmp_path: Path) -> None:
    rows = labeled_rows()
    write_labels(tmp_path / "labels.csv", rows)
    oracle = {p: float(s) - float(w) for p, w, s in rows}
    result = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model",
                         router=TableRouter(oracle, threshold=0.5))
    assert set(result) == KEYS | {"note"}  # equal accuracies: the note says why APGR is NaN
    assert set(result["at_threshold"]) == {"strong_fraction", "accuracy", "strong_token_share"}
    assert result["prompts"] == 40
    assert result["weak_accuracy"] == 0.5 and result["strong_accuracy"] == 0.5
    # equal accuracies: no gap to recover
    assert math.isnan(result["apgr"])

    # give the strong model one more right answer than the weak one per 4 prompts
    rows = [(p, w, s or i % 4 == 2) for i, (p, w, s) in enumerate(rows)]
    write_labels(tmp_path / "labels.csv", rows)
    oracle = {p: float(s) - float(w) for p, w, s in rows}
    result = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model",
                         router=TableRouter(oracle, threshold=0.5))
    assert result["strong_accuracy"] == 0.75
    assert result["apgr"] == pytest.approx(result["oracle_apgr"])
    assert result["oracle_apgr"] > 1.0
    assert result["cpt50"] <= 0.2
    assert result["random_apgr"] == pytest.approx(0.5)
    # the oracle routes exactly the 20 prompts with a gain: accuracy 0.5 + 20/40
    assert result["at_threshold"] == {"strong_fraction": 0.5, "accuracy": 1.0, "strong_token_share": 0.5}

    inverse = {p: -v for p, v in oracle.items()}
    worst = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model",
                        router=TableRouter(inverse, threshold=2.0))
    assert worst["apgr"] < 0.0 < worst["cpt50"] and worst["cpt50"] > 0.8
    assert worst["at_threshold"] == {"strong_fraction": 0.0, "accuracy": 0.5, "strong_token_share": 0.0}


def test_eval_router_constant_router_is_random_and_folders_are_read(tmp_path: Path) -> None:
    rows = [(f"q{i}", i % 3 == 0, i % 3 != 2) for i in range(30)]
    write_labels(tmp_path / "a.csv", rows[:17])
    write_labels(tmp_path / "b.csv", rows[17:])
    constant = TableRouter({p: 0.3 for p, _, _ in rows}, threshold=0.3)
    result = eval_router(tmp_path, weak="weak/model", strong="strong-model", router=constant)
    assert result["prompts"] == 30
    assert result["apgr"] == pytest.approx(result["random_apgr"])
    assert result["random_apgr"] == pytest.approx(0.5)
    assert result["at_threshold"]["strong_fraction"] == 1.0


def test_eval_router_with_the_shipped_router_and_bad_columns(tmp_path: Path) -> None:
    rows = [("hi", True, True), ("Solve 3x + 5 = 20 step by step.", False, True), ("thanks", True, True)]
    write_labels(tmp_path / "labels.csv", rows)
    result = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model")
    assert set(result) == KEYS and result["prompts"] == 3
    assert json.loads(json.dumps(result))["prompts"] == 3
    with pytest.raises(ValueError, match="missing column"):
        eval_router(tmp_path / "labels.csv", weak="nope", strong="strong-model")
    with pytest.raises(FileNotFoundError):
        eval_router(tmp_path / "missing.csv", weak="a", strong="b")


@pytest.mark.parametrize(("tail", "message"), [
    ("q30\n", "labels.csv:10: a row with 1 field(s); the header has 3"),  # read as both models wrong
    ("q30,True,True,extra\n", "labels.csv:10: a row with 4 field(s)"),
    ("False,True\n", "labels.csv:10: a row with 2 field(s)"),  # the prompt missing (it read as '')
    ('"Q\nA. x\nB. y",maybe,True\n', "labels.csv:10: column 'weak' holds 'maybe'"),  # the row's first line
])
def test_a_label_row_cut_short_or_bad_names_the_line_it_starts_on(tmp_path: Path, tail: str, message: str) -> None:
    rows = "".join(f'"Question {i}\nA. x",True,False\n' for i in range(4))  # two lines a row
    (tmp_path / "labels.csv").write_text("prompt,weak,strong\n" + rows + tail, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        eval_router(tmp_path / "labels.csv", weak="weak", strong="strong")


def test_no_gap_to_recover_gives_no_apgr_and_says_why(tmp_path: Path) -> None:
    # one subject where the strong model is the less accurate (two of ../shared's MMLU subjects are so)
    rows = [(f"q{i}", i % 2 == 0, i % 3 == 0) for i in range(30)]
    write_labels(tmp_path / "labels.csv", rows)
    result = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model", baselines=True)
    assert result["strong_accuracy"] < result["weak_accuracy"]
    for figure in (result["apgr"], result["cpt50"], result["oracle_apgr"], result["baselines"]["length"]["apgr"]):
        assert math.isnan(figure)
    assert "no gap for routing to recover" in result["note"] and result["by_file"]["summary"]["groups"] == 0
    assert result["curve"][0]["accuracy"] == pytest.approx(result["weak_accuracy"])  # the curve itself stays


def test_empty_label_cells_are_left_out_and_graded_scores_read(tmp_path: Path) -> None:
    text = ("\ufeffprompt,weak,strong,notes\r\n"
            "a,True,1,x\r\n"
            "b,,True,not judged\r\n"
            "c,0,,\r\n"
            '"d\nmore",FALSE,0.75,\r\n'
            "e,1.0,TRUE,\r\n")
    (tmp_path / "labels.csv").write_text(text, encoding="utf-8")
    prompts, weak, strong = load_labels(tmp_path / "labels.csv", weak="weak", strong="strong")
    assert prompts == ["a", "d\nmore", "e"]
    assert weak.tolist() == [1.0, 0.0, 1.0] and strong.tolist() == [1.0, 0.75, 1.0]
    assert eval_router(tmp_path / "labels.csv", weak="weak", strong="strong")["unlabeled_rows"] == 2
    (tmp_path / "labels.csv").write_text("prompt,weak,strong\na,1.5,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("labels.csv:2: column 'weak' holds '1.5'")):
        load_labels(tmp_path / "labels.csv", weak="weak", strong="strong")


def test_label_files_the_loader_cannot_read_are_named(tmp_path: Path) -> None:
    (tmp_path / "old_mac.csv").write_bytes(b"prompt,weak,strong\ra,True,False\rb,False,True\r")
    with pytest.raises(ValueError, match=r"old_mac\.csv:1: new-line character seen in unquoted field"):
        load_labels(tmp_path / "old_mac.csv", weak="weak", strong="strong")
    (tmp_path / "judgements.jsonl").write_text('{"question_id": 81, "model": "gpt-4", "score": 9}\n')
    with pytest.raises(ValueError, match="eval router reads label CSVs"):
        eval_router(tmp_path / "judgements.jsonl", weak="weak", strong="strong")


def test_a_folder_names_each_file_by_its_path(tmp_path: Path) -> None:
    for folder, name in (("run1", "test.csv"), ("run2", "test.csv"), (".", "MANAGEMENT.CSV")):
        (tmp_path / folder).mkdir(exist_ok=True)
        write_labels(tmp_path / folder / name, [(f"{folder} q{i}", i % 2 == 0, True) for i in range(10)])
    result = eval_router(tmp_path, weak="weak/model", strong="strong-model", baselines=True)
    assert result["prompts"] == 30
    assert sorted(result["by_file"]["groups"]) == ["MANAGEMENT", "run1/test", "run2/test"]


def test_eval_router_curve_spans_weak_to_strong_and_gives_the_apgr(tmp_path: Path) -> None:
    rows = [(f"q{i}", i % 3 == 0, i % 5 != 4) for i in range(37)]
    write_labels(tmp_path / "labels.csv", rows)
    noisy = TableRouter({p: float((i * 7) % 11) for i, (p, _, _) in enumerate(rows)}, threshold=5.0)
    result = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model", router=noisy)
    curve = result["curve"]
    assert [round(c["strong_fraction"], 6) for c in curve] == [round(f, 6) for f in FRACTIONS]
    assert set(curve[0]) == {"strong_fraction", "accuracy", "strong_token_share"}
    assert curve[0]["accuracy"] == pytest.approx(result["weak_accuracy"])
    assert curve[-1]["accuracy"] == pytest.approx(result["strong_accuracy"])
    # APGR is the trapezoid area under the curve's gap recovered
    gap = result["strong_accuracy"] - result["weak_accuracy"]
    pgr = [(c["accuracy"] - result["weak_accuracy"]) / gap for c in curve]
    assert apgr(pgr) == pytest.approx(result["apgr"])
    # on an evenly spaced grid that is the mean of the interior points plus half the endpoints
    assert (sum(pgr[1:-1]) + (pgr[0] + pgr[-1]) / 2) / 10 == pytest.approx(result["apgr"])
    assert json.loads(json.dumps(result))["curve"] == curve


def test_eval_router_reports_the_share_of_input_tokens_sent_strong(tmp_path: Path) -> None:
    from llmbudget.routing.calibrate import input_tokens

    # one long prompt scored highest, then short ones: 10% of calls carry far more than 10% of the tokens
    rows = [("Explain, in detail, " + "why the sky is blue and sunsets are red. " * 30, False, True)]
    rows += [(f"q{i}", i % 2 == 0, True) for i in range(9)]
    write_labels(tmp_path / "labels.csv", rows)
    router = TableRouter({p: 1.0 if i == 0 else 0.1 * (i % 3) for i, (p, _, _) in enumerate(rows)}, threshold=0.5)
    result = eval_router(tmp_path / "labels.csv", weak="weak/model", strong="strong-model", router=router)
    tokens = [input_tokens({"messages": [{"role": "user", "content": p}]}) for p, _, _ in rows]
    first = result["curve"][1]
    assert first["strong_fraction"] == 0.1
    assert first["strong_token_share"] == pytest.approx(tokens[0] / sum(tokens)) and first["strong_token_share"] > 0.5
    assert result["at_threshold"]["strong_token_share"] == pytest.approx(tokens[0] / sum(tokens))
    assert result["curve"][0]["strong_token_share"] == 0.0
    assert result["curve"][-1]["strong_token_share"] == pytest.approx(1.0)
    shares = [c["strong_token_share"] for c in result["curve"]]
    assert shares == sorted(shares)


def test_eval_router_cli_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmbudget.cli import main

    write_labels(tmp_path / "labels.csv", labeled_rows())
    assert main(["eval", "router", str(tmp_path / "labels.csv"), "--weak", "weak/model", "--strong",
                 "strong-model", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == KEYS | {"note"} and len(doc["curve"]) == 11  # (no gap in these labels)
    assert doc["apgr"] is None and "no gap" in doc["note"]
    assert main(["eval", "router", str(tmp_path / "labels.csv"), "--weak", "weak/model", "--strong",
                 "strong-model"]) == 0
    out = capsys.readouterr().out
    assert "cost/quality curve" in out and "100%" in out and "input tokens strong" in out


def test_curve_helpers() -> None:
    assert apgr([0.0] * 11) == 0.0
    assert apgr([i / 10 for i in range(11)]) == pytest.approx(0.5)
    assert cpt([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert cpt([0.7] * 10 + [1.0]) == 0.0
    weak = np.array([0, 1, 0, 0], dtype=float)
    strong = np.array([1, 1, 0, 1], dtype=float)
    curve = pgr_curve(np.array([3.0, 2.0, 1.0, 0.0]), weak, strong)
    assert curve[0] == 0.0 and curve[-1] == pytest.approx(1.0)
    ties = routing_metrics(np.zeros(4), weak, strong)
    assert ties["apgr"] == pytest.approx(ties["random_apgr"])
    prompts, w, s = load_labels_from_rows([("p", True, False)])
    assert prompts == ["p"] and w.tolist() == [1.0] and s.tolist() == [0.0]


def load_labels_from_rows(rows: list[tuple[str, bool, bool]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.csv"
        write_labels(path, rows)
        return load_labels(path, weak="weak/model", strong="strong-model")


def test_eval_router_cli_uses_the_policy_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmbudget.cli import main

    rows = [(f"question {i}: " + "why? " * i, i % 2 == 0, True) for i in range(20)]
    write_labels(tmp_path / "labels.csv", rows)
    router = Router()
    scores = sorted(router.score({"messages": [{"role": "user", "content": p}]}) for p, _, _ in rows)
    threshold = (scores[14] + scores[15]) / 2  # the 5 highest go strong
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(f'[routing]\nthreshold = {threshold}\n[routing.tiers]\nsmall = "gpt-4.1-nano"\nlarge = ""\n')
    args = ["eval", "router", str(tmp_path / "labels.csv"), "--weak", "weak/model", "--strong", "strong-model", "--json"]
    assert main([*args, "--policy", str(policy)]) == 0
    assert json.loads(capsys.readouterr().out)["at_threshold"]["strong_fraction"] == 0.25
    assert main(args) == 0  # without the policy: the shipped router's own threshold
    assert json.loads(capsys.readouterr().out)["at_threshold"]["strong_fraction"] == pytest.approx(
        sum(s >= router.threshold for s in scores) / 20)
    policy.write_text("[cache]\nsemantic = false\n")
    assert main([*args, "--policy", str(policy)]) != 0
    assert "no [routing] table" in capsys.readouterr().err
