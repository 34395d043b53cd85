"""Build a blind set of templated near-miss pairs (and a few surface paraphrases) from public data.

The cache must never answer a prompt with the answer stored for a different prompt that only
shares a long template with it: the same passage with another question, the same instructions
and options around another scenario, the same frame with one word or number changed. This
script writes such pairs, from public multiple-choice and reading-comprehension data sets,
formatted the way apps send them (the whole prompt as one user message), so that
``llmbudget eval cache FILE --mode replay`` can count false hits per kind. It was written
without reading the cache's guard rules (``llmbudget/cache/templates.py``,
``llmbudget/cache/verifier.py``) or the other pair builders in ``ci/``, as an independent check.

Every line is ``{"a": str, "b": str, "duplicate": bool, "kind": str}``. Near-miss kinds
(``duplicate`` false; the right answer to ``b`` is not, in general, the answer stored for ``a``):

* ``passage_diff_question``: one passage or dialogue, two different questions about it
  (DREAM, Cosmos QA, QuAIL, SAT reading, LSAT reading comprehension, LSAT analytical reasoning).
* ``passage_same_question_diff_options``: one passage, the same question, another set of options
  (Cosmos QA asks some questions twice with different candidates).
* ``passage_question_one_word``: one dialogue and the same options; the question asks about the
  man instead of the woman or the other way round (DREAM questions, one word swapped).
* ``two_scenario_frame_diff_scenario``: a fixed two-scenario moral frame with fixed options;
  one of the two scenarios replaced by an unrelated one (ETHICS commonsense, short items).
* ``two_scenario_frame_minimal_edit``: the same frame; one scenario replaced by its ETHICS
  minimal-pair partner (a word or two changed, the verdict flipped).
* ``fixed_frame_diff_item``: the same instructions and the same fixed options around another
  item that shares most of its words (ETHICS justice: same situation, another reason;
  ETHICS deontology: same request, another excuse).
* ``fixed_frame_minimal_edit``: the same single-scenario frame around an ETHICS minimal pair.
* ``app_template_diff_question``: an app-style tutor instruction wrapped around two different
  questions of one topic, the second the lexically closest question of the same set
  (AQuA-RAT, LogiQA, LSAT logical reasoning, GSM8K seeds of GSM-Plus).
* ``number_change``: a math problem and the same one with numbers changed (GSM-Plus
  "numerical substitution" against its GSM8K seed, one or two edits; AQuA-RAT with one
  number of the question changed here, options kept).
* ``options_reordered``: the same question and options in another order, so that the letter
  of the right answer changes (the instructions ask for the letter only).

Duplicate kind (``duplicate`` true): ``paraphrase_surface``, the same prompt with changes a
user or an app might make without changing the question: casing, a dropped question mark,
a polite prefix, spacing and blank lines, ``Q:`` for ``Question:``, ``A.`` for ``A)``.

Sources (fetched from GitHub; point ``--data`` at a folder laid out as below; nothing of them
is copied into this file). Each: file(s) under ``--data`` <- repository @ commit : path; licence.

* ``dream/dev.json``, ``dream/test.json`` <- nlpdata/dream @ bb64644c209cb6497bb9e13244fbf220c900a740 :
  ``data/dev.json``, ``data/test.json``; DREAM ``license.txt``: "intended for non-commercial research
  purpose only".
* ``quail/quail_1.3_dev.xml`` <- text-machine-lab/quail @ e2b0705a2099f44b60fad0bad5a947913b181bbd :
  ``quail_v1.3/xml/ordered/quail_1.3_dev.xml``; CC BY-NC-SA 4.0 (``LICENSE.md``).
* ``agieval/{sat-en,lsat-rc,lsat-ar,lsat-lr,aqua-rat,logiqa-en}.jsonl`` <- ruixiangcui/AGIEval @
  5c77d073fda993f1652eaae3cf5d04cc5fd21d40 : ``data/v1/<same name>``; repository MIT, and per
  ``data/v1/LICENSE``: SAT MIT, LSAT (from zhongwanjun/AR-LSAT) MIT, AQuA-RAT (deepmind/AQuA)
  Apache-2.0, LogiQA (lgw863/LogiQA-dataset) CC BY-NC-SA 4.0.
* ``cosmosqa/valid.csv`` <- wilburOne/cosmosqa @ b6eb99cca4e2a51dd28a9a6f562534872d851639 :
  ``data/valid.csv``; no licence file in the repository (Cosmos QA is distributed as CC BY 4.0).
* ``ethics/cm_test.csv``, ``ethics/justice_test.csv``, ``ethics/deontology_test.csv`` <- oughtinc/ice @
  5449543c71c039753603ab57344147a1156bfb46 : ``ethics/commonsense/cm_test.csv``,
  ``ethics/justice/justice_test.csv``, ``ethics/deontology/deontology_test.csv`` (a copy of the
  ETHICS data of hendrycks/ethics); oughtinc/ice ``LICENSE.md`` MIT, ETHICS MIT.
* ``gsmplus/gsmplus_testmini.jsonl`` <- qtli/GSM-Plus @ 3474129ec12fcd3e8ac08cb037aca1928efca98c :
  ``dataset/gsmplus_testmini.jsonl``; no licence file in the repository (its seeds are GSM8K
  test questions, MIT).

Getting the files, e.g. from a bare clone of each repository::

    git -C dream.git show bb64644c:data/test.json > DATA/dream/test.json

Not used, on purpose: MMLU (partly the project's training data, partly held out by the
judge), RouteLLM's data, RouterArena, GPTCache's and MeanCache's pair files, Quora pairs.
Note that ETHICS commonsense scenarios are of the same style as MMLU's moral_scenarios, and
the two-scenario frame here is written after MMLU's wording; the scenarios are ETHICS test
items, not MMLU's.

Usage::

    python ci/build_public_near_misses.py --data DATA --out /tmp/public_near_misses.jsonl

Deterministic: a fixed seed (``--seed``, default 20240611), sorted inputs, no network.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import random
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGH"

# ---------------------------------------------------------------- rendering

def options_block(options: list[str], style: str) -> str:
    """Options as apps print them: ``A) x``, ``A. x`` or ``(A) x``, one a line."""
    fmt = {"paren": "{l}) {o}", "dot": "{l}. {o}", "wrapped": "({l}) {o}"}[style]
    return "\n".join(fmt.format(l=LETTERS[i], o=o.strip()) for i, o in enumerate(options))


def clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def strip_label(option: str) -> str:
    """AGIEval options carry their own label: ``(A)text``."""
    return re.sub(r"^\(?[A-H]\)\s*", "", option.strip())


# Reading-comprehension templates: (name, template with {passage} {question} {options}, option style)
READ_TEMPLATES = [
    ("read_letter", ("Read the passage below and answer the multiple-choice question. "
                    "Reply with the letter of the correct option only.\n\nPassage:\n{passage}\n\n"
                    "Question: {question}\n{options}"), "paren"),
    ("context_choices", ("{passage}\n\nQuestion: {question}\nOptions:\n{options}\n\nAnswer with the letter "
                        "of the best option."), "dot"),
    ("article", "Article: {passage}\n\nQ: {question}\n{options}\nAnswer:", "wrapped"),
]
DIALOGUE_TEMPLATES = [
    ("dialogue", ("Here is a conversation:\n{passage}\n\nQuestion: {question}\n{options}\n\n"
                 "Choose the best answer and reply with its letter only."), "paren"),
    ("listening", ("You are an English listening-test assistant. Read the transcript and answer the "
                  "question.\n\nTranscript:\n{passage}\n\nQuestion: {question}\n{options}"), "dot"),
]
TUTOR_TEMPLATES = [
    ("tutor", ("You are a tutor. Answer the following multiple-choice question with the letter only."
              "\n\nQuestion: {question}\n{options}"), "paren"),
    ("exam", ("The following is a multiple choice question. Answer with the letter of the correct "
             "choice.\n\n{question}\n{options}\nAnswer:"), "dot"),
    ("helper", ("You are a helpful study assistant for test preparation. Pick the single best answer "
               "to the question below and respond with just its letter (A, B, C, D or E).\n\n"
               "Question: {question}\n\n{options}"), "wrapped"),
]
REASONING_TEMPLATES = [
    ("logic_tutor", ("You are an expert in logical reasoning. Read the argument, then pick the best "
                    "option. Respond with just the letter.\n\n{passage}\n\nQuestion: {question}\n"
                    "{options}"), "paren"),
    ("logic_exam", ("Passage: {passage}\nQuestion: {question}\nChoices:\n{options}\nAnswer with the "
                   "letter of the correct choice."), "dot"),
]
MATH_TEMPLATES = [
    "Solve the following math word problem. Reply with the final number only.\n\nProblem: {q}",
    ("You are a math tutor for middle-school students. Work out the answer to this problem and "
    "give only the final numeric answer.\n\nQuestion: {q}"),
    "Question: {q}\nAnswer with a number.",
]
TWO_SCENARIO_TEMPLATES = [
    ("For which of these two scenarios does the main character (who uses I/me/my) do something "
    "clearly morally wrong, according to ordinary moral standards in the US as of 2020? "
    "Scenario 1 | {s1} Scenario 2 | {s2}\nA) Wrong, Wrong\nB) Wrong, Not wrong\n"
    "C) Not wrong, Wrong\nD) Not wrong, Not wrong\nAnswer:"),
    ("You are an ethics tutor. Two short first-person scenarios follow. For each, decide whether the "
    "narrator does something clearly morally wrong by ordinary standards, then answer with one "
    "letter.\n\nScenario 1: {s1}\nScenario 2: {s2}\n\nA. Wrong, Wrong\nB. Wrong, Not wrong\n"
    "C. Not wrong, Wrong\nD. Not wrong, Not wrong"),
]
SINGLE_SCENARIO_TEMPLATE = (
    "Is the narrator's action below clearly morally wrong by ordinary standards?\n\n"
    "Action: {s}\n\nA) Wrong\nB) Not wrong\n\nAnswer with A or B only.")
JUSTICE_TEMPLATE = (
    "Would most people find the justification in the following statement reasonable?\n\n"
    "Statement: \"{s}\"\n\nA) Reasonable\nB) Unreasonable\nAnswer with the letter only.")
DEONTOLOGY_TEMPLATE = (
    "Someone is asked: \"{r}\"\nThey reply: \"{e}\"\n\nIs this a reasonable excuse?\n"
    "A. Yes, it is reasonable\nB. No, it is not reasonable\nAnswer:")


def render(template: tuple[str, str, str], passage: str, question: str, options: list[str]) -> str:
    _, text, style = template
    return text.format(passage=clean(passage), question=clean(question), options=options_block(options, style))


# ---------------------------------------------------------------- loading

def load_dream(data: Path) -> list[dict[str, Any]]:
    out = []
    for split in ("dev", "test"):
        for turns, questions, did in json.loads((data / "dream" / f"{split}.json").read_text(encoding="utf-8")):
            qs = [{"question": q["question"], "options": list(q["choice"]), "answer": q["answer"]} for q in questions]
            out.append({"id": f"{split}:{did}", "passage": "\n".join(t.strip() for t in turns), "questions": qs})
    return out


def load_cosmos(data: Path) -> list[dict[str, Any]]:
    with open(data / "cosmosqa" / "valid.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["context"]].append({"question": r["question"], "options": [r[f"answer{i}"] for i in range(4)],
                                 "label": int(r["label"]), "id": r["id"]})
    return [{"id": qs[0]["id"], "passage": ctx, "questions": qs} for ctx, qs in by.items()]


def load_quail(data: Path) -> list[dict[str, Any]]:
    root = ET.parse(data / "quail" / "quail_1.3_dev.xml").getroot()
    out = []
    for text in root.findall("text"):
        body = (text.findtext("text_body") or "").strip()
        qs = []
        for q in text.find("questions").findall("q"):
            options = [(a.text or "").strip() for a in q.findall("a")]
            qs.append({"question": " ".join((q.text or "").split()), "options": options})
        out.append({"id": text.get("id"), "passage": body, "questions": qs})
    return out


def load_agieval(data: Path, name: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (data / "agieval" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    for r in rows:
        r["options"] = [strip_label(o) for o in r["options"]]
    return rows


def group_by_passage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["passage"]].append({"question": r["question"], "options": r["options"]})
    return [{"id": str(i), "passage": p, "questions": qs} for i, (p, qs) in enumerate(by.items())]


def load_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- helpers

WORD = re.compile(r"[a-z0-9']+")
STOP = {"the", "a", "an", "of", "to", "and", "in", "on", "for", "is", "are", "was", "were", "be", "been", "it", "this", "that", "with", "as", "at", "by", "from", "or", "which", "what", "who", "whom", "whose", "why", "how", "when", "where", "following", "one", "most"}


def words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def word_edits(a: str, b: str) -> int:
    sm = difflib.SequenceMatcher(a=a.split(), b=b.split(), autojunk=False)
    return sum(1 for op in sm.get_opcodes() if op[0] != "equal")


def nearest_partners(items: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[tuple[int, int]]:
    """Greedy disjoint pairs of lexically closest items (each item used once)."""
    bags = [words(key(x)) for x in items]
    cands = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            s = jaccard(bags[i], bags[j])
            if s < 0.999:  # not the same question twice
                cands.append((-s, i, j))
    cands.sort()
    used: set[int] = set()
    out = []
    for _, i, j in cands:
        if i in used or j in used:
            continue
        used.update((i, j))
        out.append((i, j))
    return out


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rows: list[dict[str, Any]] = []
        self.texts: set[str] = set()

    def add(self, a: str, b: str, kind: str, duplicate: bool = False) -> bool:
        if a == b or a in self.texts or b in self.texts:
            return False  # every prompt appears once in the whole file
        self.texts.update((a, b))
        if self.rng.random() < 0.5 and not duplicate:
            a, b = b, a  # which side is stored should not follow the source order
        self.rows.append({"a": a, "b": b, "duplicate": duplicate, "kind": kind})
        return True

    def count(self, kind: str) -> int:
        return sum(1 for r in self.rows if r["kind"] == kind)


# ---------------------------------------------------------------- kinds

def passage_diff_question(bld: Builder, sources: list[tuple[str, list[dict[str, Any]], list, int]],
                          used: set[tuple[str, str]]) -> None:
    """Same passage, two different questions (each passage used for one pair)."""
    for name, passages, templates, want in sources:
        cands = [p for p in passages if len({q["question"] for q in p["questions"]}) >= 2
                 and (name, p["id"]) not in used]
        cands.sort(key=lambda p: (len(p["passage"]), p["id"]))
        # half from the shortest passages (where a semantic tier can still answer), half at random
        short = cands[: want // 2]
        rest = cands[want // 2:]
        bld.rng.shuffle(rest)
        picked = short + rest
        made = 0
        for p in picked:
            if made >= want:
                break
            qs = [q for q in p["questions"]]
            bld.rng.shuffle(qs)
            q1 = qs[0]
            q2 = next((q for q in qs[1:] if q["question"] != q1["question"]), None)
            if q2 is None:
                continue
            tpl = templates[made % len(templates)]
            if bld.add(render(tpl, p["passage"], q1["question"], q1["options"]),
                       render(tpl, p["passage"], q2["question"], q2["options"]), "passage_diff_question"):
                used.add((name, p["id"]))
                made += 1


def _short_passages_first(bld: Builder, cands: list[Any], want: int) -> list[Any]:
    """Candidates (passage first) in the order pairs are made: the ``want // 2`` shortest passages, then the rest
    shuffled."""
    cands.sort(key=lambda c: (len(c[0]["passage"]), c[0]["id"]))
    short, rest = cands[: want // 2], cands[want // 2:]
    bld.rng.shuffle(rest)
    return short + rest


def passage_same_question_diff_options(bld: Builder, cosmos: list[dict[str, Any]], want: int,
                                       used: set[tuple[str, str]]) -> None:
    cands = []
    for p in cosmos:
        if ("cosmos", p["id"]) in used:
            continue
        by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for q in p["questions"]:
            by[q["question"]].append(q)
        for _question, qs in sorted(by.items()):
            if len(qs) >= 2 and sorted(qs[0]["options"]) != sorted(qs[1]["options"]):
                cands.append((p, qs[0], qs[1]))
                break
    made = 0
    for p, q1, q2 in _short_passages_first(bld, cands, want):
        if made >= want:
            break
        tpl = READ_TEMPLATES[made % len(READ_TEMPLATES)]
        if bld.add(render(tpl, p["passage"], q1["question"], q1["options"]),
                   render(tpl, p["passage"], q2["question"], q2["options"]), "passage_same_question_diff_options"):
            used.add(("cosmos", p["id"]))
            made += 1


def passage_question_one_word(bld: Builder, dream: list[dict[str, Any]], want: int,
                              used: set[tuple[str, str]]) -> None:
    """DREAM questions about 'the man' asked about 'the woman' instead (or back)."""
    swap = {"man": "woman", "woman": "man", "Man": "Woman", "Woman": "Man"}
    cands = []
    for p in dream:
        if ("dream", p["id"]) in used:
            continue
        for q in p["questions"]:
            hits = re.findall(r"\b(man|woman|Man|Woman)\b", q["question"])
            if len(hits) == 1:
                other = re.sub(r"\b(man|woman|Man|Woman)\b", lambda m: swap[m.group(1)], q["question"])
                if all(x["question"] != other for x in p["questions"]):
                    cands.append((p, q, other))
                    break
    made = 0
    for p, q, other in _short_passages_first(bld, cands, want):
        if made >= want:
            break
        tpl = DIALOGUE_TEMPLATES[made % len(DIALOGUE_TEMPLATES)]
        if bld.add(render(tpl, p["passage"], q["question"], q["options"]),
                   render(tpl, p["passage"], other, q["options"]), "passage_question_one_word"):
            used.add(("dream", p["id"]))
            made += 1


def ethics_minimal_pairs(cm: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Adjacent short ETHICS commonsense items with opposite labels and nearly the same words."""
    out = []
    i = 0
    while i < len(cm) - 1:
        r1, r2 = cm[i], cm[i + 1]
        if (r1["is_short"] == "True" and r2["is_short"] == "True" and r1["label"] != r2["label"]
                and difflib.SequenceMatcher(a=r1["input"].split(), b=r2["input"].split()).ratio() > 0.7
                and len(r1["input"]) < 160 and len(r2["input"]) < 160):
            out.append((r1["input"].strip(), r2["input"].strip()))
            i += 2
        else:
            i += 1
    return out


def ethics_kinds(bld: Builder, cm: list[dict[str, str]], justice: list[dict[str, str]],
                 deontology: list[dict[str, str]], want: dict[str, int]) -> list[str]:
    minimal = ethics_minimal_pairs(cm)
    bld.rng.shuffle(minimal)
    in_pairs = {s for pair in minimal for s in pair}
    singles = sorted({r["input"].strip() for r in cm if r["is_short"] == "True" and len(r["input"]) < 160}
                     - in_pairs)
    bld.rng.shuffle(singles)
    singles_iter = iter(singles)
    minimal_iter = iter(minimal)

    # two-scenario frame, one scenario replaced by its minimal-pair partner
    made = 0
    while made < want["two_scenario_frame_minimal_edit"]:
        x, x2 = next(minimal_iter)
        other = next(singles_iter)
        tpl = TWO_SCENARIO_TEMPLATES[made % 2]
        if made % 4 < 2:  # the edited scenario is scenario 1 or scenario 2
            a, b = tpl.format(s1=x, s2=other), tpl.format(s1=x2, s2=other)
        else:
            a, b = tpl.format(s1=other, s2=x), tpl.format(s1=other, s2=x2)
        made += bld.add(a, b, "two_scenario_frame_minimal_edit")

    # two-scenario frame, one scenario replaced by an unrelated one
    made = 0
    while made < want["two_scenario_frame_diff_scenario"]:
        kept, s, s2 = next(singles_iter), next(singles_iter), next(singles_iter)
        tpl = TWO_SCENARIO_TEMPLATES[made % 2]
        if made % 4 < 2:
            a, b = tpl.format(s1=kept, s2=s), tpl.format(s1=kept, s2=s2)
        else:
            a, b = tpl.format(s1=s, s2=kept), tpl.format(s1=s2, s2=kept)
        made += bld.add(a, b, "two_scenario_frame_diff_scenario")

    # single-scenario frame around a minimal pair
    made = 0
    while made < want["fixed_frame_minimal_edit"]:
        x, x2 = next(minimal_iter)
        made += bld.add(SINGLE_SCENARIO_TEMPLATE.format(s=x), SINGLE_SCENARIO_TEMPLATE.format(s=x2),
                        "fixed_frame_minimal_edit")

    # fixed frame, another item sharing most words: justice (same situation, another reason)
    groups: dict[str, list[str]] = defaultdict(list)
    for r in justice:
        s = r["scenario"].strip()
        head = s.split(" because ")[0] if " because " in s else s[: max(1, len(s) // 2)]
        groups[head].append(s)
    heads = sorted(h for h, v in groups.items() if len(v) >= 2)
    bld.rng.shuffle(heads)
    made = 0
    for h in heads:
        if made >= want["fixed_frame_diff_item"] // 2:
            break
        s1, s2 = bld.rng.sample(groups[h], 2)
        made += bld.add(JUSTICE_TEMPLATE.format(s=s1), JUSTICE_TEMPLATE.format(s=s2), "fixed_frame_diff_item")
    # deontology (same request, another excuse)
    dgroups: dict[str, list[str]] = defaultdict(list)
    for r in deontology:
        dgroups[r["scenario"].strip()].append(r["excuse"].strip())
    reqs = sorted(r for r, v in dgroups.items() if len(set(v)) >= 2)
    bld.rng.shuffle(reqs)
    for r in reqs:
        if made >= want["fixed_frame_diff_item"]:
            break
        e1, e2 = bld.rng.sample(sorted(set(dgroups[r])), 2)
        made += bld.add(DEONTOLOGY_TEMPLATE.format(r=r, e=e1), DEONTOLOGY_TEMPLATE.format(r=r, e=e2),
                        "fixed_frame_diff_item")
    return list(singles_iter)  # unused scenarios, for paraphrases


def app_template_diff_question(bld: Builder, aqua: list[dict[str, Any]], logiqa: list[dict[str, Any]],
                               lsat_lr: list[dict[str, Any]], gsm_seeds: list[str], want: dict[str, int],
                               used_q: set[str]) -> None:
    kind = "app_template_diff_question"
    # AQuA-RAT: the question alone in a tutor template
    items = [x for x in aqua if x["question"] not in used_q]
    made = 0
    for i, j in nearest_partners(items, lambda x: x["question"]):
        if made >= want["aqua"]:
            break
        tpl = TUTOR_TEMPLATES[made % len(TUTOR_TEMPLATES)]
        if bld.add(render(tpl, "", items[i]["question"], items[i]["options"]),
                   render(tpl, "", items[j]["question"], items[j]["options"]), kind):
            used_q.update((items[i]["question"], items[j]["question"]))
            made += 1
    # LogiQA and LSAT-LR: passage + question in a reasoning template; closest passages
    for rows, n in ((logiqa, want["logiqa"]), (lsat_lr, want["lsat_lr"])):
        items = [x for x in rows if x["passage"] and x["question"] not in used_q]
        made = 0
        for i, j in nearest_partners(items, lambda x: x["passage"] + " " + x["question"]):
            if made >= n:
                break
            tpl = REASONING_TEMPLATES[made % len(REASONING_TEMPLATES)]
            if bld.add(render(tpl, items[i]["passage"], items[i]["question"], items[i]["options"]),
                       render(tpl, items[j]["passage"], items[j]["question"], items[j]["options"]), kind):
                made += 1
    # GSM8K seeds: two different word problems in a math template
    seeds = [s for s in gsm_seeds if s not in used_q]
    made = 0
    for i, j in nearest_partners([{"q": s} for s in seeds], lambda x: x["q"]):
        if made >= want["gsm"]:
            break
        tpl = MATH_TEMPLATES[made % len(MATH_TEMPLATES)]
        if bld.add(tpl.format(q=seeds[i]), tpl.format(q=seeds[j]), kind):
            used_q.update((seeds[i], seeds[j]))
            made += 1


NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])")


def change_number(text: str, rng: random.Random) -> str | None:
    """The text with one of its numbers changed (to another plausible value)."""
    found = list(NUMBER.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    value = m.group(1)
    if "." in value:
        whole, frac = value.split(".")
        new = f"{int(whole) + rng.choice([1, 2, 3])}.{frac}"
    else:
        n = int(value)
        new = str(n + rng.choice([1, 2, 3, 5])) if n < 10 else str(n + rng.choice([2, 5, 10, n // 2 or 1]))
    return text[: m.start(1)] + new + text[m.end(1):]


def number_change(bld: Builder, gsm: list[dict[str, Any]], aqua: list[dict[str, Any]], want: dict[str, int],
                  used_q: set[str]) -> None:
    kind = "number_change"
    subs = [x for x in gsm if x["perturbation_type"] == "numerical substitution"
            and word_edits(x["seed_question"], x["question"]) <= 2 and x["seed_question"] not in used_q]
    subs.sort(key=lambda x: x["seed_question"])
    bld.rng.shuffle(subs)
    made = 0
    for x in subs:
        if made >= want["gsm"]:
            break
        tpl = MATH_TEMPLATES[made % len(MATH_TEMPLATES)]
        if bld.add(tpl.format(q=x["seed_question"].strip()), tpl.format(q=x["question"].strip()), kind):
            used_q.add(x["seed_question"])
            made += 1
    items = [x for x in aqua if x["question"] not in used_q and NUMBER.search(x["question"])]
    bld.rng.shuffle(items)
    made = 0
    for x in items:
        if made >= want["aqua"]:
            break
        changed = change_number(x["question"], bld.rng)
        if changed is None:
            continue
        tpl = TUTOR_TEMPLATES[made % len(TUTOR_TEMPLATES)]
        if bld.add(render(tpl, "", x["question"], x["options"]), render(tpl, "", changed, x["options"]), kind):
            used_q.add(x["question"])
            made += 1


def options_reordered(bld: Builder, logiqa: list[dict[str, Any]], aqua: list[dict[str, Any]], want: int,
                      used_q: set[str]) -> None:
    """Same question and options, the right option under another letter."""
    kind = "options_reordered"
    pool = [("aqua", x) for x in aqua if x["question"] not in used_q] + \
           [("logiqa", x) for x in logiqa if x["question"] + x["passage"] not in used_q and len(x["passage"]) < 350]
    pool.sort(key=lambda t: (t[0], t[1]["question"], t[1].get("passage") or ""))
    bld.rng.shuffle(pool)
    made = 0
    for name, x in pool:
        if made >= want:
            break
        options = x["options"]
        if "label" not in x or x["label"] not in LETTERS[: len(options)]:
            continue
        right = LETTERS.index(x["label"])
        order = list(range(len(options)))
        for _ in range(20):
            bld.rng.shuffle(order)
            if order.index(right) != right:
                break
        reordered = [options[k] for k in order]
        if name == "aqua" and any("none of" in o.lower() for o in options):
            continue
        if name == "aqua":
            tpl = TUTOR_TEMPLATES[made % len(TUTOR_TEMPLATES)]
            a = render(tpl, "", x["question"], options)
            b = render(tpl, "", x["question"], reordered)
            used_q.add(x["question"])
        else:
            tpl = REASONING_TEMPLATES[made % len(REASONING_TEMPLATES)]
            a = render(tpl, x["passage"], x["question"], options)
            b = render(tpl, x["passage"], x["question"], reordered)
            used_q.add(x["question"] + x["passage"])
        made += bld.add(a, b, kind)


# ---------------------------------------------------------------- paraphrases

def surface_variants(prompt: str, question: str, rng: random.Random) -> str:
    """One or two surface changes a user or app might make, the question unchanged in meaning."""
    changes: list[Callable[[str], str]] = []
    q = clean(question)
    if q and q in prompt:
        changes.append(lambda p: p.replace(q, q.lower(), 1))
        if q.rstrip().endswith("?"):
            changes.append(lambda p: p.replace(q, q.rstrip()[:-1].rstrip(), 1))
        changes.append(lambda p: p.replace(q, "  " + q + "  ", 1))
        if q[:1].isupper():
            changes.append(lambda p: p.replace(q, "Please answer this: " + q[0].lower() + q[1:], 1))
        changes.append(lambda p: p.replace(q, q.upper(), 1))
    changes.append(lambda p: "Hi! Could you help me with this?\n\n" + p)
    changes.append(lambda p: p + "\n\nThanks!")
    changes.append(lambda p: re.sub(r"\n\n", "\n", p))
    changes.append(lambda p: p.replace("\n\n", "\n \n"))
    if "Question:" in prompt:
        changes.append(lambda p: p.replace("Question:", "Q:"))
    if re.search(r"(?m)^A\) ", prompt):
        changes.append(lambda p: re.sub(r"(?m)^([A-H])\) ", r"\1. ", p))
    k = 1 if rng.random() < 0.5 else 2
    out = prompt
    for change in rng.sample(changes, min(k, len(changes))):
        out = change(out)
    return out


def paraphrases(bld: Builder, bases: list[tuple[str, str]], want: int) -> None:
    made = 0
    for prompt, question in bases:
        if made >= want:
            break
        variant = surface_variants(prompt, question, bld.rng)
        if variant != prompt:
            made += bld.add(prompt, variant, "paraphrase_surface", duplicate=True)


# ---------------------------------------------------------------- main

def build(data: Path, seed: int) -> list[dict[str, Any]]:
    bld = Builder(seed)
    dream = sorted(load_dream(data), key=lambda p: p["id"])
    cosmos = sorted(load_cosmos(data), key=lambda p: p["id"])
    quail = sorted(load_quail(data), key=lambda p: p["id"])
    sat = group_by_passage(load_agieval(data, "sat-en"))
    lsat_rc = group_by_passage(load_agieval(data, "lsat-rc"))
    lsat_ar = group_by_passage(load_agieval(data, "lsat-ar"))
    lsat_lr = load_agieval(data, "lsat-lr")
    aqua = load_agieval(data, "aqua-rat")
    logiqa = load_agieval(data, "logiqa-en")
    cm = load_csv(data / "ethics" / "cm_test.csv")
    justice = load_csv(data / "ethics" / "justice_test.csv")
    deontology = load_csv(data / "ethics" / "deontology_test.csv")
    gsm = [json.loads(line) for line in (data / "gsmplus" / "gsmplus_testmini.jsonl").read_text(encoding="utf-8")
           .splitlines() if line.strip()]
    gsm_seeds = sorted({x["seed_question"].strip() for x in gsm})

    used_passages: set[tuple[str, str]] = set()
    used_q: set[str] = set()

    # reserve bases for the paraphrase pairs first, so that near-miss pairs never share their passage
    paraphrase_bases: list[tuple[str, str]] = []
    rng = bld.rng
    for name, passages, templates, n in (("dream", dream, DIALOGUE_TEMPLATES, 20), ("cosmos", cosmos, READ_TEMPLATES, 20)):
        pool = sorted(passages, key=lambda p: (len(p["passage"]), p["id"]))[:400]
        rng.shuffle(pool)
        for k, p in enumerate(pool[:n]):
            q = p["questions"][0]
            paraphrase_bases.append((render(templates[k % len(templates)], p["passage"], q["question"], q["options"]),
                                     q["question"]))
            used_passages.add((name, p["id"]))
    for k, p in enumerate(rng.sample(quail, 4)):
        q = p["questions"][0]
        paraphrase_bases.append((render(READ_TEMPLATES[k % 3], p["passage"], q["question"], q["options"]), q["question"]))
        used_passages.add(("quail", p["id"]))
    for k, x in enumerate(rng.sample(aqua, 18)):
        paraphrase_bases.append((render(TUTOR_TEMPLATES[k % 3], "", x["question"], x["options"]), x["question"]))
        used_q.add(x["question"])
    for k, x in enumerate(rng.sample([x for x in logiqa if len(x["passage"]) < 400], 8)):
        paraphrase_bases.append((render(REASONING_TEMPLATES[k % 2], x["passage"], x["question"], x["options"]),
                                 x["question"]))
        used_q.add(x["question"] + x["passage"])
    for k, s in enumerate(rng.sample(gsm_seeds, 12)):
        paraphrase_bases.append((MATH_TEMPLATES[k % 3].format(q=s), s))
        used_q.add(s)

    passage_diff_question(bld, [
        ("dream", dream, DIALOGUE_TEMPLATES, 50),
        ("cosmos", cosmos, READ_TEMPLATES, 50),
        ("quail", quail, READ_TEMPLATES, 20),
        ("sat", sat, READ_TEMPLATES, 10),
        ("lsat_rc", lsat_rc, READ_TEMPLATES, 10),
        ("lsat_ar", lsat_ar, REASONING_TEMPLATES, 10),
    ], used_passages)
    passage_same_question_diff_options(bld, cosmos, 60, used_passages)
    passage_question_one_word(bld, dream, 40, used_passages)
    leftover = ethics_kinds(bld, cm, justice, deontology, {
        "two_scenario_frame_minimal_edit": 50, "two_scenario_frame_diff_scenario": 80,
        "fixed_frame_minimal_edit": 40, "fixed_frame_diff_item": 60})
    number_change(bld, gsm, aqua, {"gsm": 40, "aqua": 25}, used_q)
    app_template_diff_question(bld, aqua, logiqa, lsat_lr, gsm_seeds,
                               {"aqua": 35, "logiqa": 25, "lsat_lr": 20, "gsm": 20}, used_q)
    options_reordered(bld, logiqa, aqua, 30, used_q)

    # ETHICS frames for the paraphrases, from scenarios no near-miss pair used
    for k in range(12):
        s1, s2 = leftover[2 * k], leftover[2 * k + 1]
        paraphrase_bases.append((TWO_SCENARIO_TEMPLATES[k % 2].format(s1=s1, s2=s2), s1))
    for k in range(6):
        s = leftover[24 + k]
        paraphrase_bases.append((SINGLE_SCENARIO_TEMPLATE.format(s=s), s))
    rng.shuffle(paraphrase_bases)
    paraphrases(bld, paraphrase_bases, 100)
    return bld.rows


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with the fetched public files (see the docstring)")
    parser.add_argument("--out", required=True, type=Path, help="JSONL to write")
    parser.add_argument("--seed", type=int, default=20240611)
    ns = parser.parse_args(list(argv) if argv is not None else None)
    rows = build(ns.data, ns.seed)
    with open(ns.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    kinds: dict[str, int] = defaultdict(int)
    for r in rows:
        kinds[r["kind"]] += 1
    print(f"{len(rows)} pairs -> {ns.out}", file=sys.stderr)
    for k in sorted(kinds):
        print(f"  {k}: {kinds[k]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
