"""The two servers of ci/bench/throughput.py, each run under uvicorn.

``upstream``: an OpenAI-compatible server that answers every chat completion at
once with a response recorded from the real LLM server (fixtures/cassettes/chat_instruct.yaml:
a complete answer, which the cache stores), so the app and llmbudget are the only work
being measured.

``app()``: a Starlette app that answers ``POST /ask {"prompt": ...}`` with one
call through the openai SDK's ``AsyncOpenAI`` client, the way a web app does.
``BENCH_POLICY`` names an llmbudget.toml: with it the app runs behind
``LLMBudgetMiddleware``; without it, plain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _recorded() -> bytes:
    data = yaml.safe_load((ROOT / "fixtures" / "cassettes" / "chat_instruct.yaml").read_text())
    return str(data["interactions"][0]["response"]["body"]["string"]).encode()


_ANSWER = _recorded()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})


def app() -> Any:
    from openai import AsyncOpenAI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    client = AsyncOpenAI(base_url=os.environ["BENCH_UPSTREAM"], api_key="sk-bench", max_retries=0)

    async def ask(request: Request) -> JSONResponse:
        prompt = json.loads(await request.body())["prompt"]
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0
        )
        return JSONResponse({"text": completion.choices[0].message.content})

    starlette = Starlette(routes=[Route("/ask", ask, methods=["POST"])])
    policy_file = os.environ.get("BENCH_POLICY")
    if not policy_file:
        return starlette
    from llmbudget.middleware import LLMBudgetMiddleware, Policy

    return LLMBudgetMiddleware(starlette, policy=Policy.from_file(policy_file))
