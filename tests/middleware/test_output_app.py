"""An unchanged FastAPI app (fixtures/apps/fastapi_app.py) gets length directives and caps from its policy file:
the policy's for every route, a route's own where it sets one; the real local server answers."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

from servers import base_url, proxy
from starlette.testclient import TestClient

import llmbudget

APPS = Path(__file__).resolve().parents[2] / "fixtures" / "apps"


def test_directives_and_caps_come_from_the_policy_file(tmp_path, monkeypatch, llm_server, engine):
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(textwrap.dedent("""\
        headers = true
        [output]
        max_words = 25
        [[routes]]
        path = "/limited/*"
        output = { max_words = 10 }
        """))
    with proxy(llm_server) as server:
        monkeypatch.setenv("LLMBUDGET_POLICY", str(policy))
        monkeypatch.setenv("OPENAI_BASE_URL", base_url(server))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.syspath_prepend(str(APPS))
        sys.modules.pop("fastapi_app", None)
        try:
            with TestClient(importlib.import_module("fastapi_app").app) as client:  # one event loop
                first = client.post("/chat", json={"prompt": "What is the capital of France?", "max_tokens": 200})
                sent = json.loads(server.received[-1][2])
                assert first.status_code == 200
                assert sent["messages"][0] == {"role": "system", "content": "Answer in at most 25 words."}
                assert sent["max_tokens"] == 100 and first.headers["x-llmbudget-capped"] == "1"  # 2 x 25 + 50 < 200
                client.post("/limited/chat", json={"prompt": "What is the capital of France?", "max_tokens": 200})
                sent = json.loads(server.received[-1][2])
                assert sent["messages"][0]["content"] == "Answer in at most 10 words." and sent["max_tokens"] == 70
                client.post("/chat", json={"prompt": "Explain tides in detail.", "max_tokens": 200})
                sent = json.loads(server.received[-1][2])  # the question says how long: no directive, no cap
                assert sent["messages"] == [{"role": "user", "content": "Explain tides in detail."}]
                assert sent["max_tokens"] == 200
        finally:
            sys.modules.pop("fastapi_app", None)
            llmbudget.uninstall()
