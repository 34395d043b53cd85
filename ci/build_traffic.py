"""Build ``fixtures/traffic/sample.jsonl``: sample traffic for ``llmbudget replay``, answered by a real server.

The lines are what three apps might send to ``gpt-4o`` in a day:

- ``acme`` and ``globex`` run a Q&A site: Quora questions from ``cache/qqp_dev.jsonl``,
  taken only from the pairs the cache verifier was *not* trained on (the validation
  side of ``ci/train/train_verifier.py``'s split by question). Duplicate pairs are
  asked by one tenant and share a group; near-miss non-duplicates (many words in
  common, a different question) are asked by one tenant in different groups; some
  questions are asked again word for word, a few by another tenant.
- ``initech`` and ``umbrella`` run tutoring apps: MMLU questions (``routing/mmlu``)
  and GSM8K problems (``routing/gsm8k_responses.csv``) of mixed difficulty, with
  the datasets' correctness labels: the weak model's column (Mixtral-8x7B) labels
  ``gpt-4.1-nano``, the strong one's (GPT-4) labels ``gpt-4o``; a few are repeated.

Every line's ``responses`` are recorded from llama-cpp-python's server (Gemma 3
270M, ``ci/llama_server.py``) answering once as each model name: real bodies
with real usage, ``stop=["\\n"]`` and ``max_tokens=48`` so answers finish on
their own and can be cached. The data is read by path and never copied whole.
Deterministic selection (fixed seed); the answers depend on the server. Run
from the project root (about 5 minutes on 2 cores)::

    .venv/bin/python ci/build_traffic.py [--out fixtures/traffic/sample.jsonl]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
sys.path.insert(0, str(ROOT / "ci" / "train"))

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "fixtures" / "traffic" / "sample.jsonl"
SEED = 20251127
REQUESTED = "gpt-4o"
MODELS = ("gpt-4o", "gpt-4.1-nano")
WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"  # labels gpt-4.1-nano
STRONG_COLUMN = "gpt-4-1106-preview"  # labels gpt-4o
MAX_TOKENS = 48

QA_SYSTEM = "You are the answer bot of a Q&A site. Answer the question in one short sentence."
MMLU_SYSTEM = "You are a tutor. Answer the multiple-choice question with the letter of the correct option."
GSM8K_SYSTEM = "You are a math tutor. Solve the word problem and give the final answer on one line."

# How much of each kind of traffic.
DUPLICATE_PAIRS = 34
NEAR_MISS_PAIRS = 12
QQP_REPEATS = 14
CROSS_TENANT_REPEATS = 4
MMLU_SUBJECTS = ("astronomy", "high_school_geography", "high_school_psychology", "nutrition", "management",
                 "college_mathematics", "high_school_macroeconomics", "logical_fallacies")
MMLU_PER_SUBJECT = 7
GSM8K_PROBLEMS = 20
LABELED_REPEATS = 6

_WORDS = re.compile(r"[a-z0-9']+")


def _readable(question: str) -> bool:
    return 15 <= len(question) <= 110 and question.isascii() and question.rstrip().endswith("?") and \
        "http" not in question and "\n" not in question


def _words(text: str) -> set[str]:
    return set(_WORDS.findall(text.lower()))


def _overlap(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / max(1, len(wa | wb))


def _chat(system: str, user: str) -> dict[str, Any]:
    return {"model": REQUESTED, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "stop": ["\n"]}


def _line(request: dict[str, Any], *, tenant: str, group: str, meta: dict[str, Any],
          correct: dict[str, bool] | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {"request": request, "endpoint": "chat.completions", "tenant": tenant, "group": group}
    if correct is not None:
        line["correct"] = correct
    line["meta"] = meta
    return line


def qqp_lines(rng: random.Random) -> list[tuple[float, dict[str, Any]]]:
    """Duplicate pairs, near misses and repeats from the verifier's validation side of qqp_dev."""
    from train_verifier import SEED as VERIFIER_SEED  # type: ignore[import-not-found]
    from train_verifier import VALIDATION_SHARE, load_qqp, split_by_question  # type: ignore[import-not-found]

    pairs = load_qqp(DATA / "cache" / "qqp_dev.jsonl")
    held_out = split_by_question(pairs, VERIFIER_SEED, VALIDATION_SHARE)
    val = [p for p, v in zip(pairs, held_out) if v and _readable(p[0]) and _readable(p[1])
           and p[0].strip().lower() != p[1].strip().lower()]
    duplicates = [p for p in val if p[2]]
    near = [p for p in val if not p[2] and _overlap(p[0], p[1]) >= 0.5]
    rng.shuffle(duplicates)
    rng.shuffle(near)
    used: set[str] = set()
    timed: list[tuple[float, dict[str, Any]]] = []
    firsts: list[tuple[float, dict[str, Any]]] = []

    def fresh(*questions: str) -> bool:
        keys = {q.strip().lower() for q in questions}
        if keys & used:
            return False
        used.update(keys)
        return True

    chosen = [p for p in duplicates if fresh(p[0], p[1])][:DUPLICATE_PAIRS]
    for index, (a, b, _) in enumerate(chosen):
        tenant = ("acme", "globex")[index % 2]
        start = rng.random()
        first = _line(_chat(QA_SYSTEM, a), tenant=tenant, group=f"qqp-dup-{index}",
                      meta={"source": "qqp_dev (validation side)", "kind": "duplicate pair, first"})
        timed.append((start, first))
        firsts.append((start, first))
        timed.append((start + rng.uniform(0.02, 0.4),
                      _line(_chat(QA_SYSTEM, b), tenant=tenant, group=f"qqp-dup-{index}",
                            meta={"source": "qqp_dev (validation side)", "kind": "duplicate pair, second"})))
    chosen_near = [p for p in near if fresh(p[0], p[1])][:NEAR_MISS_PAIRS]
    for index, (a, b, _) in enumerate(chosen_near):
        tenant = ("globex", "acme")[index % 2]
        start = rng.random()
        first = _line(_chat(QA_SYSTEM, a), tenant=tenant, group=f"qqp-near-{index}a",
                      meta={"source": "qqp_dev (validation side)", "kind": "near miss, first"})
        timed.append((start, first))
        firsts.append((start, first))
        timed.append((start + rng.uniform(0.02, 0.4),
                      _line(_chat(QA_SYSTEM, b), tenant=tenant, group=f"qqp-near-{index}b",
                            meta={"source": "qqp_dev (validation side)", "kind": "near miss, second"})))
    picks = rng.sample(firsts, QQP_REPEATS + CROSS_TENANT_REPEATS)
    for number, (start, original) in enumerate(picks):
        cross = number >= QQP_REPEATS
        tenant = original["tenant"]
        if cross:
            tenant = "globex" if tenant == "acme" else "acme"
        repeat = _line(json.loads(json.dumps(original["request"])), tenant=tenant, group=original["group"],
                       meta={"source": "qqp_dev (validation side)",
                             "kind": "asked again by another tenant" if cross else "asked again"})
        timed.append((start + rng.uniform(0.05, 0.5), repeat))
    return timed


def _mmlu_rows(subject: str) -> list[dict[str, str]]:
    with (DATA / "routing" / "mmlu" / f"mmlu_{subject}.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _label(row: dict[str, str]) -> dict[str, bool]:
    return {"gpt-4o": row[STRONG_COLUMN] == "True", "gpt-4.1-nano": row[WEAK_COLUMN] == "True"}


def labeled_lines(rng: random.Random) -> list[tuple[float, dict[str, Any]]]:
    """MMLU and GSM8K prompts with the datasets' correctness labels, a few asked twice."""
    timed: list[tuple[float, dict[str, Any]]] = []
    for number, subject in enumerate(MMLU_SUBJECTS):
        rows = [(i, r) for i, r in enumerate(_mmlu_rows(subject)) if len(r["prompt"]) <= 700]
        tenant = ("initech", "umbrella")[number % 2]
        for index, row in rng.sample(rows, MMLU_PER_SUBJECT):
            timed.append((rng.random(), _line(_chat(MMLU_SYSTEM, row["prompt"]), tenant=tenant,
                                              group=f"mmlu-{subject}-{index}", correct=_label(row),
                                              meta={"source": f"routing/mmlu/mmlu_{subject}.csv", "row": index})))
    with (DATA / "routing" / "gsm8k_responses.csv").open(encoding="utf-8", newline="") as handle:
        gsm = [(i, r) for i, r in enumerate(csv.DictReader(handle)) if len(r["prompt"]) <= 400]
    for index, row in rng.sample(gsm, GSM8K_PROBLEMS):
        timed.append((rng.random(), _line(_chat(GSM8K_SYSTEM, row["prompt"]), tenant="initech",
                                          group=f"gsm8k-{index}", correct=_label(row),
                                          meta={"source": "routing/gsm8k_responses.csv", "row": index})))
    for start, original in rng.sample(timed, LABELED_REPEATS):
        repeat = json.loads(json.dumps(original))
        repeat["meta"] = {**repeat["meta"], "kind": "asked again"}
        timed.append((start + rng.uniform(0.05, 0.5), repeat))
    return timed


def build(rng: random.Random) -> list[dict[str, Any]]:
    """Every line, in the order the apps send them (no answers yet)."""
    timed = qqp_lines(rng) + labeled_lines(rng)
    timed.sort(key=lambda item: item[0])
    return [line for _, line in timed]


def record(lines: Sequence[dict[str, Any]], base_url: str) -> Iterator[dict[str, Any]]:
    """Each line with ``responses``: the server's answer to it under each model name."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=120) as client:
        for line in lines:
            responses = {}
            for model in MODELS:
                reply = client.post("/chat/completions", json={**line["request"], "model": model})
                reply.raise_for_status()
                responses[model] = reply.json()
            ordered = {key: line[key] for key in ("request", "endpoint", "tenant", "group")}
            ordered["responses"] = responses
            ordered.update({key: line[key] for key in ("correct", "meta") if key in line})
            yield ordered


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--limit", type=int, help="record only the first N lines (a quick try)")
    args = parser.parse_args(argv)
    from llama_server import llama_server

    lines = build(random.Random(SEED))[: args.limit]
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_suffix(".jsonl.tmp")
    unfinished = 0
    # One thread: llama.cpp's threads spin-wait, and two of them on two busy cores crawl.
    with llama_server(alias=REQUESTED, n_threads=1) as base_url, temp.open("w", encoding="utf-8") as out:
        for number, line in enumerate(record(lines, base_url), 1):
            unfinished += sum(r["choices"][0]["finish_reason"] != "stop" for r in line["responses"].values())
            out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
            if number % 20 == 0:
                print(f"{number}/{len(lines)} lines, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    temp.replace(args.out)
    print(f"wrote {len(lines)} lines to {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in "
          f"{time.perf_counter() - started:.0f} s; {unfinished} answers stopped at max_tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
