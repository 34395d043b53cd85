"""Extra routing training rows from public GitHub repositories (read in place, never copied).

``load_extra_rows(root)`` returns rows ``{"prompt", "task", "weak", "strong"}``
(``weak`` / ``strong`` in [0, 1]) for domains the main routing data (29 MMLU
subjects, GSM8K, MT-Bench) lacks.  The data stays in the repository snapshots
that the session's ``fetch`` tool puts under ``/work/.mirror/<owner>+<name>/repo``
(bare git directories); every file is read with ``git show <commit>:<path>`` at
the pinned commit below, so the rows are the same whenever the snapshot holds
that commit.  Nothing here is written anywhere.

Fetch names: ``github:shuhao02/RouterDC`` and ``github:tatsu-lab/alpaca_eval``.

Sources
-------
1. RouterBench (withmartian, MIT) as re-shared by RouterDC
   repository shuhao02/RouterDC @ 0e63989c5bf4363330b8a4616386e3f7f116d9f8
   paths datasets/routerbench_zs/{arc_challenge,mbpp,winograde}_{train,test}.csv
   License: RouterDC has no LICENSE file and states none.  The rows are
   RouterBench's (same 11 model columns and sample ids; withmartian/routerbench's
   code is MIT, the data's terms are on its hub card, not reachable here); the
   underlying benchmarks are ARC (CC BY-SA 4.0), MBPP (CC BY 4.0) and
   WinoGrande (as their cards say; not re-checked here).  Treat as
   research/internal training data until a license is confirmed.  One column
   per model, 0/1 correctness.
   Models: weak ``mistralai/mixtral-8x7b-chat``, strong ``gpt-4-1106-preview``,
   the same pair as the main data (Mixtral-8x7B-Instruct vs GPT-4-1106), so the
   labels mean the same thing; the gap is clear on every task.
   (``mistralai/mistral-7b-chat`` is in the same files, ``WEAK_ALT`` below: a
   larger gap, but a different weak model from the one the router ships for.)
   The few-shot context is cut: the prompt is the last question block, its
   options written "A. ..." and ending "Answer:" like the main MMLU prompts.
   Rows with an empty score for either model are dropped (14 of 1,484 ARC
   rows: 445 test + 1,039 train files; MBPP 128 + 299, WinoGrande 380 + 887).
   The RouterBench hellaswag, gsm8k and mmlu files are not in the snapshot
   (too large); mmlu would be dropped anyway.

   task                  n     weak (Mixtral)  strong (GPT-4-1106)  [Mistral-7B]
   routerbench/arc_challenge  1470  0.854    0.954                 0.670
   routerbench/mbpp            427  0.541    0.686                 0.344
   routerbench/winogrande     1267  0.679    0.859                 0.566

2. AlpacaEval 1 annotations (tatsu-lab; repository LICENSE Apache-2.0, the
   805-instruction evaluation set's hub card says CC BY-NC 4.0, not re-checked)
   repository tatsu-lab/alpaca_eval @ cd543a149df89434d8a54582c0151c0b945c3d20
   paths results/llama-2-7b-chat-hf/alpaca_eval_gpt4/annotations.json and
   results/gpt4_1106_preview/alpaca_eval_gpt4/annotations.json
   805 open-ended instructions (self-instruct, OASST, Koala, Anthropic
   helpful-base, Vicuna); the GPT-4 annotator compared each model's answer with
   text-davinci-003's.  Score = 1 if the model's answer was preferred, 0 if
   davinci-003's was, 0.5 on a tie (preference 0); rows with no preference are
   dropped.  Models: weak ``llama-2-7b-chat-hf`` (a 7B chat model),
   strong ``gpt4_1106_preview``.  Mixtral's annotations in the snapshot
   (alpaca_eval_gpt4_turbo_fn) compare it with GPT-4-1106 itself, not with
   davinci-003, so they give no separate strong score; the weighted files are
   not in the snapshot (too large).  Hence a 7B weak model here
   (``llama-2-70b-chat-hf`` is also there: 0.93 against davinci-003).

   task                  n     weak (Llama-2-7B-chat)  strong (GPT-4-1106)
   alpaca_eval            804   0.713                   0.977

   The strong model wins almost everywhere: this source mostly teaches which
   chat prompts a small model already handles.

MMLU: no MMLU file is read, and any row whose task, sample id or source name
mentions MMLU is dropped (``_is_mmlu``).

Rejected (and why): EmbedLLM, RouterBench (withmartian), LLMRouterBench,
AutoMix, RouterEval: data only on the HuggingFace hub, not in the repository;
tinyBenchmarks: its per-item leaderboard pickle is not in the snapshot;
arena-hard-auto: questions and answers only, the judgments are not in the
snapshot (nor in its history); FrugalGPT: only aggregate summaries and
prompts; RouterDC split2_model7: seven ~7B models (no clear weak/strong gap)
and lm-eval likelihoods; BIG-Bench-Hard: one model (code-davinci-002) with and
without chain of thought, not two models; GraphRouter, IRT-Router,
chain-of-thought-hub: no snapshot available.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import subprocess
from pathlib import Path

DEFAULT_ROOT = Path("/work/.mirror")

ROUTERDC = "shuhao02+RouterDC"
ROUTERDC_COMMIT = "0e63989c5bf4363330b8a4616386e3f7f116d9f8"
ROUTERDC_FILES = {
    "routerbench/arc_challenge": ["arc_challenge_train", "arc_challenge_test"],
    "routerbench/mbpp": ["mbpp_train", "mbpp_test"],
    "routerbench/winogrande": ["winograde_train", "winograde_test"],
}
WEAK = "mistralai/mixtral-8x7b-chat"
WEAK_ALT = "mistralai/mistral-7b-chat"
STRONG = "gpt-4-1106-preview"

ALPACA = "tatsu-lab+alpaca_eval"
ALPACA_COMMIT = "cd543a149df89434d8a54582c0151c0b945c3d20"
ALPACA_WEAK = "llama-2-7b-chat-hf"
ALPACA_STRONG = "gpt4_1106_preview"


def _git_dir(root: Path, name: str, fetch_name: str) -> Path:
    git_dir = Path(root) / name / "repo"
    if not git_dir.is_dir():
        raise FileNotFoundError(
            f"{git_dir} not found: bring the snapshot with the fetch tool "
            f"(fetch github:{fetch_name}) or pass the mirror root that holds it"
        )
    return git_dir


def _show(git_dir: Path, commit: str, path: str) -> str:
    proc = subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise FileNotFoundError(
            f"{git_dir}: cannot read {path} at {commit}: {proc.stderr.strip()} "
            "(the snapshot lacks that commit or file; fetch it again)"
        )
    return proc.stdout


def _is_mmlu(*texts: str) -> bool:
    return any("mmlu" in t.lower() for t in texts)


_OPTION = re.compile(r"^([A-E])\) ", re.M)
_INSTRUCTION = re.compile(r"\s*Print only a single choice.*$", re.S)


def _last_question(raw: str) -> str:
    """The final (unanswered) question of a RouterBench few-shot prompt."""
    try:
        value = ast.literal_eval(raw)
        text = value[0] if isinstance(value, list) else str(value)
    except (ValueError, SyntaxError):
        text = raw
    block = text.strip().split("\n\n")[-1].strip()
    block = _INSTRUCTION.sub("", block).rstrip()
    block = _OPTION.sub(r"\1. ", block)
    if re.search(r"^[A-E]\. ", block, re.M):
        block += "\nAnswer:"
    return block


def _score(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if 0.0 <= x <= 1.0 else None


def _routerdc_rows(root: Path, weak: str) -> list[dict]:
    git_dir = _git_dir(root, ROUTERDC, "shuhao02/RouterDC")
    csv.field_size_limit(1 << 30)
    rows: list[dict] = []
    for task, stems in ROUTERDC_FILES.items():
        seen: set[str] = set()
        for stem in stems:
            text = _show(git_dir, ROUTERDC_COMMIT, f"datasets/routerbench_zs/{stem}.csv")
            for rec in csv.DictReader(io.StringIO(text)):
                sid = rec.get("sample_id", "")
                if _is_mmlu(task, sid, rec.get("eval_name", "")) or sid in seen:
                    continue
                w, s = _score(rec.get(weak)), _score(rec.get(STRONG))
                if w is None or s is None:
                    continue
                seen.add(sid)
                prompt = _last_question(rec["prompt"])
                if prompt:
                    rows.append({"prompt": prompt, "task": task, "weak": w, "strong": s})
    return rows


def _preference_scores(git_dir: Path, model: str) -> dict[str, float]:
    path = f"results/{model}/alpaca_eval_gpt4/annotations.json"
    out: dict[str, float] = {}
    for rec in json.loads(_show(git_dir, ALPACA_COMMIT, path)):
        if rec.get("generator_1") != "text_davinci_003":
            continue
        try:
            pref = float(rec.get("preference"))
        except (TypeError, ValueError):
            continue
        score = 0.5 if pref == 0 else min(1.0, max(0.0, pref - 1.0))
        out[rec["instruction"]] = score
    return out


def _alpaca_rows(root: Path) -> list[dict]:
    git_dir = _git_dir(root, ALPACA, "tatsu-lab/alpaca_eval")
    weak = _preference_scores(git_dir, ALPACA_WEAK)
    strong = _preference_scores(git_dir, ALPACA_STRONG)
    return [
        {"prompt": p, "task": "alpaca_eval", "weak": weak[p], "strong": strong[p]}
        for p in weak
        if p in strong and p.strip()
    ]


def load_extra_rows(root: Path = DEFAULT_ROOT, *, weak: str = WEAK) -> list[dict]:
    """All extra rows; ``root`` is the folder holding the fetched snapshots.

    ``weak`` picks the RouterBench weak column (``WEAK`` = Mixtral, the shipped
    pair; ``WEAK_ALT`` = Mistral-7B).  Raises FileNotFoundError naming the
    missing snapshot and its fetch name when one is absent.
    """
    root = Path(root)
    rows = _routerdc_rows(root, weak) + _alpaca_rows(root)
    return [r for r in rows if not _is_mmlu(r["task"])]


if __name__ == "__main__":
    import sys
    from collections import defaultdict

    rows = load_extra_rows(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROOT)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, rs in sorted(by_task.items()):
        n = len(rs)
        print(
            f"{task:28s} n={n:5d} weak={sum(r['weak'] for r in rs) / n:.3f} "
            f"strong={sum(r['strong'] for r in rs) / n:.3f}"
        )
    print("total", len(rows))
