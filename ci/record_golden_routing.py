"""Record the golden routing cassette: each prompt of fixtures/golden_routing/routing.json sent
through llmbudget with routing on, to the real local server, as vcrpy sees it (the routed request).

    python ci/record_golden_routing.py

tests/routing/test_golden.py replays it: a router or policy change that moves a
prompt to another tier changes the request body, and the test names the prompt.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ci"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "data" / "tiktoken"))

import openai  # noqa: E402
import vcr  # noqa: E402
from llama_server import llama_server  # noqa: E402
from record_cassettes import FIXED_BASE_URL, _rewrite_to_fixed_base  # noqa: E402

import llmbudget  # noqa: E402

GOLDEN = ROOT / "fixtures" / "golden_routing"
CASSETTE = GOLDEN / "routing.yaml"


def main() -> int:
    spec = json.loads((GOLDEN / "routing.json").read_text())
    CASSETTE.unlink(missing_ok=True)
    with llama_server(alias=spec["model"], port=8765) as url:
        recorder = vcr.VCR(serializer="yaml", record_mode="all", decode_compressed_response=False,
                           filter_headers=["authorization"],
                           match_on=("method", "scheme", "host", "port", "path", "query", "body"),
                           before_record_request=_rewrite_to_fixed_base(url))
        llmbudget.configure(routing=llmbudget.Routing(tiers=spec["tiers"], threshold=spec["threshold"]))
        client = openai.OpenAI(base_url=url, api_key="sk-test", http_client=llmbudget.http_client(), max_retries=0)
        with recorder.use_cassette(str(CASSETTE)):
            for prompt in spec["prompts"]:
                client.chat.completions.create(model=spec["model"], max_tokens=spec["max_tokens"], temperature=0,
                                               messages=[{"role": "user", "content": prompt}])
    print(f"recorded {len(spec['prompts'])} routed requests into {CASSETTE} (replayed at {FIXED_BASE_URL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
