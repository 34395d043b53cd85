"""The cache worker's child, its work alone: CPU per missed call, looking the question up then storing its answer.

The child of ``Cache(worker=True)`` does, per missed async call: embed the question, search the partition (the
verifier on candidates above the floor), and, in a batch with the other answers that came meanwhile, give the
answer the app stored for exact lookups its vector and verifier data (``CacheStore.add_vectors``). This replays that
on one ``CacheStore``, in batches of ``--batch``, on the throughput bench's prompts (``throughput.prompts``), after
``--entries`` stored ones, and compares how a batch's questions are tokenised to pack their verifier data: through
the memo the lookups just filled (``memo``, what the verifier does for up to ``_MEMO_BATCH`` texts) or in one batch
call (``batch``, what it did before for more than one text). The two alternate over ``--rounds`` rounds; prints the
process CPU per call (median, then each round).

    python ci/bench/worker_child.py [--entries 2000] [--calls 500] [--batch 4] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from throughput import prompts  # noqa: E402

import llmbudget.cache.verifier as verifier  # noqa: E402
from llmbudget.cache.store import CacheStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000, help="answers stored before the timed calls")
    parser.add_argument("--calls", type=int, default=500, help="missed calls per round and mode")
    parser.add_argument("--batch", type=int, default=4, help="answers the child stores at once")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    memo_batch = verifier._MEMO_BATCH
    texts = prompts(args.entries + 2 * args.rounds * args.calls + args.batch, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        store = CacheStore(folder)
        for start in range(0, args.entries, 100):
            store.put_many([dict(partition="p", exact_key=f"w{i}", text=texts[i], response="{}", tenant="t",
                                 model="m") for i in range(start, min(start + 100, args.entries))])
        at = args.entries
        cpu: dict[str, list[float]] = {"memo": [], "batch": []}
        for round_ in range(args.rounds):
            for mode in (["batch", "memo"] if round_ % 2 == 0 else ["memo", "batch"]):
                verifier._MEMO_BATCH = memo_batch if mode == "memo" else 1
                vectors: OrderedDict[str, Any] = OrderedDict()
                used = 0.0
                for _ in range(0, args.calls, args.batch):
                    batch, at = texts[at : at + args.batch], at + args.batch
                    ids = store.put_many([dict(partition="p", exact_key=f"k{at}-{i}", text=text, response="{}",
                                               tenant="t", model="m", semantic=False)
                                          for i, text in enumerate(batch)])  # the app's part: not timed
                    t0 = time.process_time()
                    for text in batch:
                        vectors[text] = vector = store.query_vector(text)
                        store.search("p", text, vector)
                    store.add_vectors(ids, vectors)
                    used += time.process_time() - t0
                cpu[mode].append(used / args.calls * 1e3)
        verifier._MEMO_BATCH = memo_batch
        store.close()
    print(f"the child's CPU per missed call ({args.calls} calls x {args.rounds} rounds, batches of {args.batch}, "
          f"{args.entries} entries before)")
    for mode, values in cpu.items():
        print(f"  {mode:<6} median {statistics.median(values):.3f} ms   rounds {' '.join(f'{v:.3f}' for v in values)}")


if __name__ == "__main__":
    main()
