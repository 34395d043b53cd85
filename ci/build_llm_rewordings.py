"""Build a replay set of REAL LLM-written rewordings for `llmbudget eval cache --mode replay`.

Every duplicate pair is an original question or sentence ("a") and a rewording of it written by an LLM ("b"),
taken from public data; none is written by rules here. Non-duplicates are Quora non-duplicate pairs (as many as
the duplicates, as in the judge's rewording replay) plus, where the source labels them, LLM rewrites that do NOT
keep the meaning (kind "<source>_not_equivalent": the dangerous ones, a near miss of a stored question).

Sources (the script reads the files, it holds no data; fetch them with `git show COMMIT:PATH > DIR/NAME`):

  kebench_chatgpt   Hi-archers/StableKE @ 42107467939fde610aeba22d7e1d3ea97b50973a  dataset/edited_knowledge.json
                    KEBench (Wei et al. 2024, "Stable Knowledge Editing in LLMs"): a Wikidata template question
                    ("What is the country of citizenship of X?") and its ChatGPT paraphrase, made "while preserving
                    semantic equivalence" (README; not checked by people). No licence file; built on MQuAKE (MIT).
  mquake_gpt35      the same repository and commit, dataset/1_2_data.json: MQuAKE's (princeton-nlp/MQuAKE, MIT)
                    three gpt-3.5-turbo phrasings of one two-hop question ("Who is the spouse of the creator of
                    Long John Silver?"); a = the first phrasing, b = the second or third. Not checked by people.
  apty_chatgpt      worta/apty @ 734727506f3987933dc6e54e2cc0c5a1747f4f63  apty_base.csv (CC BY 4.0)
                    APTY (Meier et al. 2024): ChatGPT paraphrases of ETPC/MRPC news sentences, each asked for one
                    atomic paraphrase type, with human labels; duplicate = every annotator said `paraphrase`
                    (semantically equivalent), apty_chatgpt_not_equivalent = every annotator said not. The hand-written
                    golden examples and paraphrases identical to their sentence are left out.
  gsmplus_gpt4      qtli/GSM-Plus @ 3474129ec12fcd3e8ac08cb037aca1928efca98c  dataset/gsmplus_testmini.jsonl
                    (CC BY-SA 4.0 on its Hugging Face card; no licence file on GitHub): GSM8K word problems rewritten
                    by GPT-4 and checked by people. Duplicate = "problem understanding" (a rephrasing, same answer);
                    gsmplus_gpt4_not_equivalent = numerical substitution, digit expansion, integer-decimal-fraction
                    conversion, adding or reversing an operation, or critical thinking (a fact removed), kept only
                    where the gold answer differs from the seed's. Pairs with a text over 500 characters are left
                    out (the cache's default --max-semantic-chars sends those to the exact tier only).
  quora             --qqp (qqp_dev.jsonl, lines {"a", "b", "duplicate"}): non-duplicate pairs only.

    python ci/build_llm_rewordings.py --data DIR --qqp ../shared/data/cache/qqp_dev.jsonl --out FILE

Deterministic (fixed seed, inputs read in file order). Lines: {"a", "b", "duplicate", "kind"}.
"""
import argparse
import csv
import json
import os
import random
import re
from collections import Counter

SEED = 20250716
MAX_CHARS = 500  # the cache's default max_semantic_chars
#: duplicate pairs per source (about 650 in all), then as many Quora non-duplicates
DUPLICATES = {"kebench_chatgpt": 220, "mquake_gpt35": 150, "apty_chatgpt": 160, "gsmplus_gpt4": 120}
#: LLM rewrites labelled not equivalent, at most this many per source
NOT_EQUIVALENT = {"apty_chatgpt": 100, "gsmplus_gpt4": 100}
GSM_CHANGED = ("numerical substitution", "digit expansion", "integer-decimal-fraction conversion",
               "adding operation", "reversing operation", "critical thinking")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _pair(a: str, b: str, duplicate: bool, kind: str) -> dict:
    return {"a": re.sub(r"\s+", " ", a).strip(), "b": re.sub(r"\s+", " ", b).strip(), "duplicate": duplicate,
            "kind": kind}


def _usable(a: str, b: str) -> bool:
    return bool(a.strip()) and bool(b.strip()) and _norm(a) != _norm(b) and max(len(a), len(b)) <= MAX_CHARS


def kebench(data: str) -> list[dict]:
    with open(os.path.join(data, "edited_knowledge.json"), encoding="utf-8") as f:
        rows = json.load(f)
    out, seen = [], set()
    for r in rows:
        a, b = r["first_question"], r["paraphrased_question"]
        if _usable(a, b) and _norm(a) not in seen:
            seen.add(_norm(a))
            out.append(_pair(a, b, True, "kebench_chatgpt"))
    return out


def mquake(data: str, rng: random.Random) -> list[dict]:
    with open(os.path.join(data, "1_2_data.json"), encoding="utf-8") as f:
        rows = json.load(f)
    out, seen = [], set()
    for r in rows:
        qs = r["two_hop_questions"]
        if len(qs) < 2 or _norm(qs[0]) in seen:
            continue
        seen.add(_norm(qs[0]))
        b = rng.choice(qs[1:])
        if _usable(qs[0], b):
            out.append(_pair(qs[0], b, True, "mquake_gpt35"))
    return out


def apty(data: str) -> tuple[list[dict], list[dict]]:
    labels: dict[tuple[str, str], list[str]] = {}
    with open(os.path.join(data, "apty_base.csv"), encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f, delimiter=";"):
            if r["golden_example"] == "True":  # written by hand, not by ChatGPT
                continue
            labels.setdefault((r["original"], r["paraphrase_fixed"]), []).append(r["paraphrase"])
    same, changed = [], []
    for (a, b), votes in labels.items():
        if not _usable(a, b) or len(set(votes)) != 1:  # annotators disagree: neither
            continue
        if votes[0] == "True":
            same.append(_pair(a, b, True, "apty_chatgpt"))
        elif votes[0] == "False":
            changed.append(_pair(a, b, False, "apty_chatgpt_not_equivalent"))
    return same, changed


def _number(text: str) -> float | None:
    try:
        return float(str(text).replace(",", "").strip())
    except ValueError:
        return None


def gsmplus(data: str) -> tuple[list[dict], list[dict]]:
    same, changed = [], []
    with open(os.path.join(data, "gsmplus_testmini.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            a, b, kind = r["seed_question"], r["question"], r["perturbation_type"]
            if not _usable(a, b):
                continue
            if kind == "problem understanding":
                same.append(_pair(a, b, True, "gsmplus_gpt4"))
            elif kind in GSM_CHANGED:
                x, y = _number(r["answer"]), _number(r["seed_answer"])
                if x is not None and y is not None and abs(x - y) < 1e-9:
                    continue  # same gold answer: not clearly another question
                if str(r["answer"]).strip() == str(r["seed_answer"]).strip():
                    continue
                changed.append({**_pair(a, b, False, "gsmplus_gpt4_not_equivalent"), "_type": kind})
    return same, changed


def _sample(rng: random.Random, rows: list[dict], n: int) -> list[dict]:
    return rows if len(rows) <= n else rng.sample(rows, n)


def _spread(rng: random.Random, rows: list[dict], n: int, key) -> list[dict]:
    """``n`` rows, as even as may be over ``key`` (GSM-Plus perturbation types)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    for g in groups.values():
        rng.shuffle(g)
    out: list[dict] = []
    while len(out) < n and any(groups.values()):
        for k in sorted(groups):
            if groups[k] and len(out) < n:
                out.append(groups[k].pop())
    return out


def quora(path: str, rng: random.Random, n: int, taken: set[str]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if not r["duplicate"] and _norm(r["a"]) != _norm(r["b"]):
                    rows.append(r)
    rng.shuffle(rows)
    out = []
    for r in rows:
        if len(out) == n:
            break
        if _norm(r["a"]) in taken or _norm(r["b"]) in taken:
            continue
        taken.update((_norm(r["a"]), _norm(r["b"])))
        out.append(_pair(r["a"], r["b"], False, "quora_non_duplicate"))
    if len(out) < n:
        raise SystemExit(f"{path}: only {len(out)} Quora non-duplicates, {n} needed")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="replay pairs of LLM-written rewordings and Quora non-duplicates")
    parser.add_argument("--data", required=True, help="folder with edited_knowledge.json, 1_2_data.json, "
                        "apty_base.csv and gsmplus_testmini.jsonl")
    parser.add_argument("--qqp", required=True, help="qqp_dev.jsonl")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    ns = parser.parse_args()
    rng = random.Random(SEED)

    apty_same, apty_changed = apty(ns.data)
    gsm_same, gsm_changed = gsmplus(ns.data)
    sources = {"kebench_chatgpt": kebench(ns.data), "mquake_gpt35": mquake(ns.data, rng),
               "apty_chatgpt": apty_same, "gsmplus_gpt4": gsm_same}
    pairs: list[dict] = []
    for name, n in DUPLICATES.items():
        pairs += _sample(rng, sources[name], n)
    duplicates = len(pairs)
    pairs += _sample(rng, apty_changed, NOT_EQUIVALENT["apty_chatgpt"])
    for p in _spread(rng, gsm_changed, NOT_EQUIVALENT["gsmplus_gpt4"], key=lambda p: p["_type"]):
        del p["_type"]
        pairs.append(p)
    taken = {_norm(p[k]) for p in pairs for k in ("a", "b")}
    pairs += quora(ns.qqp, rng, duplicates, taken)
    rng.shuffle(pairs)
    with open(ns.out, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    counts = Counter((p["kind"], p["duplicate"]) for p in pairs)
    for (kind, dup), n in sorted(counts.items()):
        print(f"{kind:32s} duplicate={dup!s:5} {n}")
    print(f"{len(pairs)} pairs -> {ns.out}")


if __name__ == "__main__":
    main()
