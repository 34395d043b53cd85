"""Build a near-miss test set for the semantic cache: prompts that share a long template but ask something else.

Every pair written is ``{"a", "b", "duplicate": false, "kind"}``: ``a`` and ``b``
share most of their text (instructions, a passage, options, a letter, a code
review request) and differ in the part that carries the question (a scenario,
a question, a number, a name, a date, an option list, a code block). A cache
that serves ``a``'s answer to ``b`` serves another question's answer.

Kinds read from MMLU prompts (CSV files with a ``prompt`` column, read by path):

- ``passage``: the same passage ("This question refers to the following information.") with another question;
- ``statements``: "Statement 1 | ... Statement 2 | ..." stems with the same options;
- ``same_options``: the same option list under another stem;
- ``same_stem``: the same stem with other options;
- ``instruction``: one instruction template wrapped around two questions of one subject.

Kinds generated here: ``form_letter`` (another name, amount or date),
``code_review`` (another code block, often one token apart), ``support`` (another
order number), ``scenario`` (a two-scenario moral judgement template with another scenario).

The output is deterministic for a given ``--seed`` and input. Run::

    python ci/build_template_pairs.py --out /tmp/template_pairs.jsonl
    llmbudget eval cache /tmp/template_pairs.jsonl --mode replay --json   # false_hit_rate, by kind

Do not commit the output: it is generated, and partly copied from the data folder.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MMLU = ROOT.parent / "shared" / "data" / "routing" / "mmlu"
SEED = 11
PER_KIND = 120

Pair = dict[str, object]

_OPTIONS = re.compile(r"\nA\. ")


# --------------------------------------------------------------------------- MMLU


def read_mmlu(folder: Path) -> dict[str, list[str]]:
    """Prompts by subject (the file name without ``mmlu_`` and ``.csv``), in file order, without repeats."""
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {folder}: pass --mmlu FOLDER (files with a 'prompt' column)")
    subjects: dict[str, list[str]] = {}
    for path in files:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = [row["prompt"] for row in csv.DictReader(handle) if row.get("prompt")]
        subjects[path.stem.removeprefix("mmlu_")] = list(dict.fromkeys(rows))
    return subjects


def split_prompt(prompt: str) -> tuple[str, str] | None:
    """``(stem, options)`` of a multiple-choice prompt (options from "A. " to the end), or None."""
    match = _OPTIONS.search(prompt)
    if match is None:
        return None
    return prompt[: match.start()], prompt[match.start() + 1 :]


def _pairs_within(groups: Iterable[Sequence[str]], rng: random.Random) -> list[tuple[str, str]]:
    """Every unordered pair of distinct prompts inside each group, shuffled (each pair in a random order)."""
    out: list[tuple[str, str]] = []
    for group in groups:
        for a, b in itertools.combinations(sorted(set(group)), 2):
            out.append((a, b) if rng.random() < 0.5 else (b, a))
    rng.shuffle(out)
    return out


def _spread(pairs: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """Up to ``count`` pairs in which no text appears twice."""
    used: set[str] = set()
    out = []
    for a, b in pairs:
        if a not in used and b not in used:
            out.append((a, b))
            used.update((a, b))
    return out[:count]


def passage_pairs(subjects: dict[str, list[str]], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """The same passage (every stem line but the last) with another question."""
    groups: dict[str, list[str]] = defaultdict(list)
    for prompts in subjects.values():
        for prompt in prompts:
            parts = split_prompt(prompt)
            if parts is None:
                continue
            lines = parts[0].split("\n")
            passage = "\n".join(lines[:-1])
            if len(lines) > 1 and len(passage) >= 40:
                groups[passage].append(prompt)
    return _spread(_pairs_within(groups.values(), rng), count)


def _grouped_pairs(subjects: dict[str, list[str]], rng: random.Random, count: int, *, part: int,
                   keep: Callable[[str, tuple[str, str]], bool]) -> list[tuple[str, str]]:
    """Pairs of prompts sharing ``split_prompt(prompt)[part]`` (0: the stem, 1: the options), among those ``keep``s."""
    groups: dict[str, list[str]] = defaultdict(list)
    for prompts in subjects.values():
        for prompt in prompts:
            parts = split_prompt(prompt)
            if parts is not None and keep(prompt, parts):
                groups[parts[part]].append(prompt)
    return _spread(_pairs_within(groups.values(), rng), count)


def statement_pairs(subjects: dict[str, list[str]], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """Two "Statement 1 | ... Statement 2 | ..." prompts with the same options."""
    return _grouped_pairs(subjects, rng, count, part=1, keep=lambda prompt, _: prompt.startswith("Statement 1"))


def same_option_pairs(subjects: dict[str, list[str]], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """Another stem over the same option list (statement stems left to ``statement_pairs``)."""
    return _grouped_pairs(subjects, rng, count, part=1,
                          keep=lambda prompt, _: not prompt.startswith("Statement 1"))


def same_stem_pairs(subjects: dict[str, list[str]], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """The same stem with another option list."""
    return _grouped_pairs(subjects, rng, count, part=0, keep=lambda _, parts: len(parts[0]) >= 20)


_INSTRUCTIONS: tuple[str, ...] = (
    "You are a careful exam tutor. Read the multiple-choice question below, think about each option, and reply "
    "with the letter of the single best answer followed by one sentence explaining why.\n\nQuestion:\n{q}\n\n"
    "Reply in the format 'Answer: <letter>. <reason>'.",
    "The following is a multiple choice question (with answers) about {subject}. Answer it as an expert would, "
    "and say how confident you are on a scale from 1 to 5.\n\n{q}",
    "### Instruction\nAnswer the question. Output only the letter (A, B, C or D), nothing else.\n\n"
    "### Question\n{q}\n\n### Response",
)


def instruction_pairs(subjects: dict[str, list[str]], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """One instruction template wrapped around two questions of the same subject."""
    out: list[tuple[str, str]] = []
    names = sorted(subjects)
    while len(out) < count:
        subject = rng.choice(names)
        prompts = [p.removesuffix("\nAnswer:") for p in subjects[subject] if len(p) <= 400]
        if len(prompts) < 2:
            continue
        first, second = rng.sample(prompts, 2)
        template = rng.choice(_INSTRUCTIONS)
        name = subject.replace("_", " ")
        out.append((template.format(q=first, subject=name), template.format(q=second, subject=name)))
    return out


# --------------------------------------------------------------------------- generated templates

_FIRST = ("Maria", "James", "Aisha", "Chen", "Olivia", "Mateo", "Priya", "Lukas", "Fatima", "Noah", "Sofia", "Kenji")
_LAST = ("Garcia", "Smith", "Khan", "Wei", "Johnson", "Rossi", "Patel", "Schmidt", "Haddad", "Brown", "Silva", "Tanaka")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_LETTERS: tuple[str, ...] = (
    "Write a polite but firm payment reminder to {name}. Their invoice of ${amount} for the website redesign "
    "was due on {date} and has not been paid. Mention that a late fee of 2% per month applies after 30 days, "
    "offer a payment plan, and sign off as the accounts team of Brightline Studio.",
    "Draft a formal letter to {name} confirming their job offer as Senior Data Analyst with a starting salary "
    "of ${amount} per year and a start date of {date}. Include the benefits summary, the probation period "
    "of three months, and ask them to sign and return the letter within five business days.",
    "Compose a short email to our tenant {name} informing them that from {date} the monthly rent for "
    "apartment 4B will be ${amount}, in line with the lease terms. Keep a friendly tone, explain that the "
    "increase covers building maintenance, and invite questions before the change takes effect.",
    "Write a donation thank-you letter to {name}, who gave ${amount} to the Riverside Food Bank on {date}. "
    "Say what the gift will fund, include the tax receipt sentence required for donations over $250, and "
    "keep it under 200 words.",
)


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _amount(rng: random.Random) -> str:
    return f"{rng.randrange(120, 98_000):,}"


def _date(rng: random.Random) -> str:
    return f"{rng.choice(_MONTHS)} {rng.randrange(1, 29)}, {rng.choice((2024, 2025, 2026))}"


def form_letter_pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """One letter template, one field changed (name, amount or date)."""
    makers: dict[str, Callable[[random.Random], str]] = {"name": _name, "amount": _amount, "date": _date}
    out: list[tuple[str, str]] = []
    while len(out) < count:
        template = rng.choice(_LETTERS)
        fields = {key: make(rng) for key, make in makers.items()}
        changed = rng.choice(sorted(makers))
        other = dict(fields)
        while other[changed] == fields[changed]:
            other[changed] = makers[changed](rng)
        out.append((template.format(**fields), template.format(**other)))
    return out


_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("def {f}(items):\n    total = 0\n    for item in items:\n        if item {cmp} {k}:\n            total {op}= item\n"
     "    return total", "python"),
    ("def {f}(values, {v}):\n    result = []\n    for i in range(len(values) {op} {k}):\n"
     "        if values[i] {cmp} {v}:\n            result.append(values[i])\n    return result", "python"),
    ("function {f}(list, {v}) {{\n  let count = 0;\n  for (let i = 0; i {cmp} list.length; i++) {{\n"
     "    if (list[i] % {k} === 0) count {op}= {v};\n  }}\n  return count;\n}}", "javascript"),
    ("int {f}(const int *a, int n) {{\n    int best = a[0];\n    for (int i = {k}; i {cmp} n; i++)\n"
     "        if (a[i] > best) best {op}= a[i];\n    return best;\n}}", "c"),
)
_REVIEWS: tuple[str, ...] = (
    "Review the following {lang} code. Point out bugs, edge cases it mishandles, and style problems, then "
    "suggest a corrected version. Be concise.\n\n```{lang}\n{code}\n```",
    "You are a senior engineer doing a code review for a pull request. For the {lang} function below, list "
    "every correctness issue with a severity (high, medium, low) and propose a fix for each.\n\n"
    "```{lang}\n{code}\n```\n\nDo not rewrite unrelated parts.",
)


def _code(rng: random.Random, body: str) -> str:
    return body.format(
        f=rng.choice(("sum_large", "collect", "count_hits", "best_value", "process", "scan", "tally")),
        v=rng.choice(("limit", "target", "step", "weight")),
        cmp=rng.choice(("<", "<=", ">", ">=", "!=")),
        op=rng.choice(("+", "-", "*")),
        k=rng.randrange(0, 12),
    )


def code_review_pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """One review request around two code blocks (mostly the same function, a token or a few apart)."""
    out: list[tuple[str, str]] = []
    while len(out) < count:
        review = rng.choice(_REVIEWS)
        body, lang = rng.choice(_FUNCTIONS)
        if rng.random() < 0.25:
            other_body, other_lang = rng.choice(_FUNCTIONS)
            if other_lang != lang:
                continue
        else:
            other_body = body
        first, second = _code(rng, body), _code(rng, other_body)
        if first != second:
            out.append((review.format(lang=lang, code=first), review.format(lang=lang, code=second)))
    return out


_PRODUCTS = ("wireless headphones", "standing desk", "espresso machine", "running shoes", "air purifier",
             "phone case", "backpack", "monitor arm", "electric kettle", "yoga mat")
_SUPPORT: tuple[str, ...] = (
    "You are the customer support assistant of ShopRight. A customer writes: 'Hi, my order #{order} "
    "({product}) was supposed to arrive three days ago but the tracking page has not updated since it left the "
    "warehouse. Can you tell me where it is and when it will arrive?' Look up the order status and reply politely.",
    "Customer message: 'I want to return the {product} from order {order}. It arrived damaged and the box was "
    "open.' Using our returns policy (30 days, free return label for damaged items, refund within 5 business "
    "days), write the reply to the customer and state the next steps.",
)


def support_pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """One support prompt with another order number (and, sometimes, another product)."""
    out: list[tuple[str, str]] = []
    while len(out) < count:
        template, product = rng.choice(_SUPPORT), rng.choice(_PRODUCTS)
        first = f"{rng.randrange(10_000, 99_999)}"
        second = str(int(first) + rng.choice((1, -1, 10, 100, rng.randrange(2, 9_000))))
        other = rng.choice(_PRODUCTS) if rng.random() < 0.3 else product
        out.append((template.format(order=first, product=product), template.format(order=second, product=other)))
    return out


_ACTS = (
    "returned the extra change the cashier gave me by mistake", "kept the extra change the cashier gave me by mistake",
    "read my sister's diary while she was out", "helped an elderly man carry his groceries to his car",
    "parked in a disabled spot because I was in a hurry", "told my friend her haircut looked nice",
    "copied a classmate's answers during the final exam", "donated blood at the community centre",
    "left my dog alone in a hot car for an hour", "reported a coworker's safety violation to the supervisor",
    "took office supplies home for my own use", "lied to my boss about being sick to go to a concert",
    "shared a stranger's private photos online", "stayed late to help a colleague finish a deadline",
    "ate the last slice of cake that was labelled with my roommate's name", "paid for a stranger's coffee",
)
_SCENARIO = (
    "For which of these two scenarios does the main character (who uses I/me/my) do something clearly morally "
    "wrong, according to ordinary moral standards in the US as of 2020? Scenario 1 | {one} Scenario 2 | {two}\n"
    "A. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:"
)


def scenario_pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """The moral-scenarios template (instructions and options fixed) with one or both scenarios changed."""
    def line(act: str) -> str:
        return f"I {act}."

    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for _ in range(50 * count):
        if len(out) >= count:
            break
        one, two, three, four = rng.sample(_ACTS, 4)
        first = _SCENARIO.format(one=line(one), two=line(two))
        second = _SCENARIO.format(one=line(one if rng.random() < 0.5 else three), two=line(four))
        if first not in used and second not in used:
            used.update((first, second))
            out.append((first, second))
    return out


# --------------------------------------------------------------------------- output


def build(mmlu: Path, *, seed: int = SEED, per_kind: int = PER_KIND) -> list[Pair]:
    """Every kind's near-miss pairs (at most ``per_kind`` each), in kind order; no text is in two pairs."""
    subjects = read_mmlu(mmlu)
    kinds: dict[str, Callable[[random.Random, int], list[tuple[str, str]]]] = {
        "passage": lambda rng, n: passage_pairs(subjects, rng, n),
        "statements": lambda rng, n: statement_pairs(subjects, rng, n),
        "same_options": lambda rng, n: same_option_pairs(subjects, rng, n),
        "same_stem": lambda rng, n: same_stem_pairs(subjects, rng, n),
        "instruction": lambda rng, n: instruction_pairs(subjects, rng, n),
        "form_letter": form_letter_pairs,
        "code_review": code_review_pairs,
        "support": support_pairs,
        "scenario": scenario_pairs,
    }
    pairs: list[Pair] = []
    used: set[str] = set()  # no text in two pairs: a lookup can only hit its own pair's entry by chance
    for number, (kind, make) in enumerate(kinds.items()):
        for a, b in make(random.Random(seed * 1000 + number), per_kind):
            if _letters(a) != _letters(b) and a not in used and b not in used:
                used.update((a, b))
                pairs.append({"a": a, "b": b, "duplicate": False, "kind": kind})
    return pairs


def _letters(text: str) -> str:
    """``text`` without case, spacing or soft punctuation: MMLU repeats some questions with only a full stop changed."""
    return re.sub(r"[\s?.,!'\"’‘“”:;]+", "", text.casefold())


def _lines(pairs: Iterable[Pair]) -> Iterator[str]:
    for pair in pairs:
        yield json.dumps(pair, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSONL file to write (not in the repository)")
    parser.add_argument("--mmlu", type=Path, default=DEFAULT_MMLU, help=f"folder of MMLU CSVs (default {DEFAULT_MMLU})")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--per-kind", type=int, default=PER_KIND, help="at most this many pairs of each kind")
    args = parser.parse_args(argv)
    pairs = build(args.mmlu, seed=args.seed, per_kind=args.per_kind)
    args.out.write_text("".join(_lines(pairs)), encoding="utf-8")
    counts: dict[str, int] = defaultdict(int)
    for pair in pairs:
        counts[str(pair["kind"])] += 1
    print(f"{len(pairs)} pairs to {args.out}: " + ", ".join(f"{k} {n}" for k, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
