"""llmbudget.providers: usage from every wire format, and the pipeline reading real response bytes."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion, CompletionChoice, CreateEmbeddingResponse, Embedding
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCall, Function
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails
from openai.types.create_embedding_response import Usage as EmbeddingUsage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

import llmbudget
from llmbudget import tokens
from llmbudget.calls import Usage
from llmbudget.pipeline import Attempt
from llmbudget.pricing import Pricing
from llmbudget.providers import ADAPTERS, ResponseState, adapter_for_endpoint, adapter_for_path
from llmbudget.providers._base import BadUsage, as_int
from llmbudget.providers.chat import ChatAdapter, chat_usage
from llmbudget.providers.completions import CompletionsAdapter
from llmbudget.providers.embeddings import EmbeddingsAdapter
from llmbudget.providers.responses import ResponsesAdapter, responses_usage

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = "http://127.0.0.1:9/v1"


def _dump(model: Any) -> dict[str, Any]:
    return json.loads(model.model_dump_json(exclude_unset=True))


@st.composite
def chat_usages(draw: st.DrawFn) -> CompletionUsage:
    prompt = draw(st.integers(0, 2_000_000))
    completion = draw(st.integers(0, 200_000))
    cached = draw(st.integers(0, prompt))
    written = draw(st.integers(0, prompt - cached))
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=cached, cache_write_tokens=written, audio_tokens=draw(st.integers(0, prompt - cached))
        ),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=draw(st.integers(0, completion)), audio_tokens=draw(st.integers(0, completion))
        ),
    )


def _expected_chat(usage: CompletionUsage, tier: str | None = None) -> Usage:
    prompt_details = usage.prompt_tokens_details or PromptTokensDetails()
    completion_details = usage.completion_tokens_details or CompletionTokensDetails()
    return Usage(
        input_tokens=usage.prompt_tokens,
        cached_input_tokens=prompt_details.cached_tokens or 0,
        cache_write_tokens=prompt_details.cache_write_tokens or 0,
        output_tokens=usage.completion_tokens,
        reasoning_tokens=completion_details.reasoning_tokens or 0,
        input_audio_tokens=prompt_details.audio_tokens or 0,
        output_audio_tokens=completion_details.audio_tokens or 0,
        service_tier=tier,
    )


@st.composite
def responses_usages(draw: st.DrawFn) -> ResponseUsage:
    inp = draw(st.integers(0, 2_000_000))
    out = draw(st.integers(0, 200_000))
    cached = draw(st.integers(0, inp))
    return ResponseUsage(
        input_tokens=inp,
        input_tokens_details=InputTokensDetails(cached_tokens=cached,
                                                cache_write_tokens=draw(st.integers(0, inp - cached))),
        output_tokens=out,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=draw(st.integers(0, out))),
        total_tokens=inp + out,
    )


def _response(usage: ResponseUsage | None, *, status: str = "completed", tier: str | None = None,
              text: str = "") -> Response:
    output = []
    if text:
        output.append(ResponseOutputMessage(
            id="msg_1", type="message", role="assistant", status="completed",
            content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
        ))
    return Response(
        id="resp_1", created_at=1_700_000_000.0, model="gpt-5-mini-2025-08-07", object="response", output=output,
        parallel_tool_calls=True, tool_choice="auto", tools=[], status=status, usage=usage, service_tier=tier,
    )


# -- usage from JSON responses -------------------------------------------------------------------


@SETTINGS
@given(usage=chat_usages(), tier=st.sampled_from([None, "default", "flex", "priority"]))
def test_chat_completion_json_usage(usage: CompletionUsage, tier: str | None) -> None:
    completion = ChatCompletion(
        id="chatcmpl-1", created=1, model="gpt-4o-mini-2024-07-18", object="chat.completion", service_tier=tier,
        choices=[ChatChoice(index=0, finish_reason="stop",
                            message=ChatCompletionMessage(role="assistant", content="Hi there"))],
        usage=usage,
    )
    state = ResponseState()
    ChatAdapter().read_json(_dump(completion), state)
    expected = _expected_chat(usage)
    assert state.usage == expected
    assert chat_usage(_dump(usage)) == expected
    assert state.model == "gpt-4o-mini-2024-07-18"
    assert state.service_tier == tier
    assert state.text == "Hi there"
    assert state.finish_reasons == ["stop"]
    assert state.done


@SETTINGS
@given(usage=responses_usages(), tier=st.sampled_from([None, "default", "flex", "priority"]))
def test_responses_json_usage_and_service_tier(usage: ResponseUsage, tier: str | None) -> None:
    state = ResponseState()
    ResponsesAdapter().read_json(_dump(_response(usage, tier=tier, text="Hello")), state)
    expected = Usage(
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.input_tokens_details.cached_tokens,
        cache_write_tokens=usage.input_tokens_details.cache_write_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.output_tokens_details.reasoning_tokens,
    )
    assert state.usage == expected
    assert responses_usage(_dump(usage)) == expected
    assert state.service_tier == tier
    assert state.model == "gpt-5-mini-2025-08-07"
    assert state.text == "Hello"
    assert state.done


@SETTINGS
@given(prompt=st.integers(0, 10**7))
def test_embeddings_usage(prompt: int) -> None:
    response = CreateEmbeddingResponse(
        data=[Embedding(embedding=[0.1, 0.2], index=0, object="embedding")], model="text-embedding-3-small",
        object="list", usage=EmbeddingUsage(prompt_tokens=prompt, total_tokens=prompt),
    )
    state = ResponseState()
    EmbeddingsAdapter().read_json(_dump(response), state)
    assert state.usage == Usage(input_tokens=prompt)
    assert state.model == "text-embedding-3-small"


@SETTINGS
@given(usage=chat_usages())
def test_legacy_completions_usage(usage: CompletionUsage) -> None:
    completion = Completion(
        id="cmpl-1", created=1, model="gpt-3.5-turbo-instruct", object="text_completion", usage=usage,
        choices=[CompletionChoice(index=0, finish_reason="length", text="once upon", logprobs=None)],
    )
    state = ResponseState()
    CompletionsAdapter().read_json(_dump(completion), state)
    assert state.usage == _expected_chat(usage)
    assert state.text == "once upon"
    assert state.finish_reasons == ["length"]


def test_requests_parse_into_calls() -> None:
    chat = ChatAdapter().parse(
        {"model": "gpt-4o", "messages": [], "max_completion_tokens": 100, "n": 3, "stream": True}, BASE
    )
    assert (chat.endpoint, chat.model, chat.stream, chat.max_output_tokens, chat.base_url) == (
        "chat.completions", "gpt-4o", True, 300, BASE)
    legacy_cap = ChatAdapter().parse({"model": "gpt-4o", "max_tokens": 50}, BASE)
    assert legacy_cap.max_output_tokens == 50 and legacy_cap.stream is False
    responses = ResponsesAdapter().parse({"model": "o3", "input": "hi", "max_output_tokens": 70}, BASE)
    assert (responses.endpoint, responses.max_output_tokens) == ("responses", 70)
    embeddings = EmbeddingsAdapter().parse({"model": "text-embedding-3-small", "input": "x"}, BASE)
    assert (embeddings.endpoint, embeddings.max_output_tokens) == ("embeddings", 0)
    completions = CompletionsAdapter().parse({"model": "davinci-002", "prompt": "x", "max_tokens": 9}, BASE)
    assert (completions.endpoint, completions.max_output_tokens) == ("completions", 9)
    assert ChatAdapter().parse({"model": 42, "stream": "yes"}, BASE).model is None
    assert ChatAdapter().parse({"model": 42, "stream": "yes"}, BASE).stream is False


# -- which adapter for which path ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint", "prefix"),
    [
        ("/v1/chat/completions", "chat.completions", "/v1"),
        ("/v1/chat/completions/", "chat.completions", "/v1"),
        ("/openai/deployments/x/chat/completions", "chat.completions", "/openai/deployments/x"),
        ("/v1/responses", "responses", "/v1"),
        ("/v1/embeddings", "embeddings", "/v1"),
        ("/v1/completions", "completions", "/v1"),
        ("/completions", "completions", ""),
    ],
)
def test_adapter_for_path(path: str, endpoint: str, prefix: str) -> None:
    found = adapter_for_path(path)
    assert found is not None
    adapter, before = found
    assert adapter.endpoint == endpoint
    assert before == prefix
    assert adapter_for_endpoint(endpoint) is adapter


@pytest.mark.parametrize(
    "path",
    ["/v1/responses/abc", "/responses/abc", "/v1/responses/resp_1/cancel", "/v1/responses/resp_1/input_items",
     "/v1/chat/completions/chatcmpl-1", "/v1/models", "/v1/files", "/", "", "/v1/chat"],
)
def test_paths_that_are_not_llm_calls(path: str) -> None:
    assert adapter_for_path(path) is None


def test_chat_path_is_never_taken_for_completions() -> None:
    found = adapter_for_path("/v1/chat/completions")
    assert found is not None
    assert isinstance(found[0], ChatAdapter)
    assert {a.endpoint for a in ADAPTERS} == {"chat.completions", "responses", "responses.compact", "embeddings",
                                             "completions", "messages"}
    assert adapter_for_path("/v1/responses/compact")[0].endpoint == "responses.compact"  # type: ignore[index]
    assert adapter_for_path("/v1/threads/thread_1/messages") is None  # Assistants: not an LLM call
    with pytest.raises(ValueError, match="unknown endpoint 'images'"):
        adapter_for_endpoint("images")


# -- malformed values ----------------------------------------------------------------------------

MALFORMED = st.one_of(
    st.text(max_size=8),
    st.integers(max_value=-1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not (f == f and f >= 0 and f.is_integer())),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(value=MALFORMED)
def test_as_int_refuses_malformed_counts(value: Any) -> None:
    """A count that is there but not a whole number from 0 to a billion is malformed (it was read as 0, so the
    call cost $0); an absent one (None) is 0."""
    if value is None:
        assert as_int(value) == 0
    else:
        with pytest.raises(BadUsage):
            as_int(value)


def test_as_int_takes_counts() -> None:
    assert as_int(7) == 7
    assert as_int(7.0) == 7
    assert as_int(0) == 0
    assert as_int(10**9) == 10**9
    for bad in (True, "7", 10**9 + 1, 1e308, 10**30, -1, 7.5, float("nan")):
        with pytest.raises(BadUsage):
            as_int(bad)


def _missing_or_malformed(read: Any) -> None:
    """``read()`` finds no tokens (every count absent) or says the usage is malformed; never a made-up 0."""
    try:
        assert read() == Usage()
    except BadUsage:
        pass


@SETTINGS
@given(values=st.lists(MALFORMED, min_size=8, max_size=8))
def test_malformed_usage_values_are_refused_and_the_adapters_estimate_instead(values: list[Any]) -> None:
    chat = {
        "prompt_tokens": values[0], "completion_tokens": values[1],
        "prompt_tokens_details": {"cached_tokens": values[2], "audio_tokens": values[3]},
        "completion_tokens_details": {"reasoning_tokens": values[4], "audio_tokens": values[5]},
    }
    _missing_or_malformed(lambda: chat_usage(chat))
    assert ChatAdapter().reported_usage(chat) in (None, Usage())  # None: the call's tokens are estimated
    responses = {
        "input_tokens": values[0], "output_tokens": values[1],
        "input_tokens_details": {"cached_tokens": values[2]},
        "output_tokens_details": {"reasoning_tokens": values[3]},
    }
    _missing_or_malformed(lambda: responses_usage(responses))
    _missing_or_malformed(lambda: EmbeddingsAdapter().usage({"prompt_tokens": values[6], "input_tokens": values[7]}))
    assert chat_usage({"prompt_tokens": 5, "prompt_tokens_details": values[2],
                       "completion_tokens_details": values[3]}) == Usage(input_tokens=5)  # not objects: no details


@SETTINGS
@given(data=JSON, usage_value=JSON, field=st.sampled_from(["choices", "output", "usage", "model", "service_tier"]))
def test_adapters_never_raise_on_any_json(data: Any, usage_value: Any, field: str) -> None:
    bodies = [data, {field: usage_value}, {field: data, "usage": usage_value}]
    for adapter in ADAPTERS:
        for body in bodies:
            adapter.read_json(body, ResponseState())
            adapter.read_event(body, ResponseState())
            adapter.read_stream([body, data], ResponseState())
            assert isinstance(adapter.stream_text([body]), str)
            state = ResponseState()
            adapter.read_json(body, state)
            if state.usage is not None:
                assert all(isinstance(v, int) and v >= 0 for v in (
                    state.usage.input_tokens, state.usage.cached_input_tokens, state.usage.output_tokens,
                    state.usage.reasoning_tokens))


# -- the pipeline reading response bytes ---------------------------------------------------------

CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the world"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_completion_tokens": 64,
}
WORDS = ["Hello", ",", " world", "!", " How", " are", " you", "?"]


def _with_estimates(attempt: Attempt, reported: Usage, model: str) -> Usage:
    """What a complete answer is charged for ``reported``: a count the server gave as 0 (or left out) is the
    estimate (the request's input; the answer's text, ``WORDS``), never a silent $0."""
    if reported.input_tokens and reported.output_tokens:
        return reported
    return reported.replace(input_tokens=reported.input_tokens or attempt.estimate_input_tokens(),
                            output_tokens=reported.output_tokens or tokens.count_text("".join(WORDS), model),
                            estimated=True)


def _begin(engine: llmbudget.Engine, body: dict[str, Any], path: str = "/v1/chat/completions") -> Attempt:
    attempt = engine.begin(url=BASE.rsplit("/v1", 1)[0] + path, path=path, headers={}, body=json.dumps(body).encode())
    assert attempt is not None
    return attempt


def _chunks(usage: CompletionUsage | None, tier: str | None = None) -> list[ChatCompletionChunk]:
    def chunk(**fields: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id="chatcmpl-1", created=1, model="gpt-4o-mini-2024-07-18",
                                   object="chat.completion.chunk", service_tier=tier, **fields)

    out = [chunk(choices=[ChunkChoice(index=0, delta=ChoiceDelta(role="assistant", content=""))])]
    out += [chunk(choices=[ChunkChoice(index=0, delta=ChoiceDelta(content=word))]) for word in WORDS]
    out.append(chunk(choices=[ChunkChoice(index=0, delta=ChoiceDelta(), finish_reason="stop")]))
    if usage is not None:
        out.append(chunk(choices=[], usage=usage))
    return out


def _sse(chunks: list[ChatCompletionChunk], *, done: bool = True) -> bytes:
    text = "".join(f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n" for chunk in chunks)
    return (text + ("data: [DONE]\n\n" if done else "")).encode()


def _splits(data: st.DataObject, payload: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=20), label="cuts"))
    bounds = [0, *cuts, len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:])]


def _collect(engine: llmbudget.Engine) -> list[llmbudget.SpendRecord]:
    seen: list[llmbudget.SpendRecord] = []
    engine.add_observer(seen.append)
    return seen


@SETTINGS
@given(usage=chat_usages(), tier=st.sampled_from([None, "default", "priority"]), gzipped=st.booleans(),
       eol=st.sampled_from([b"\n", b"\r\n", b"\r"]), data=st.data())
def test_streamed_chat_usage_comes_from_the_final_chunk(
    usage: CompletionUsage, tier: str | None, gzipped: bool, eol: bytes, data: st.DataObject
) -> None:
    """Every line ending SSE allows (a lone CR too: the stream was read as one cut event, its output as 0)."""
    engine = llmbudget.Engine()
    seen = _collect(engine)
    attempt = _begin(engine, CHAT_BODY)
    payload = _sse(_chunks(usage, tier)).replace(b"\n", eol)
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    if gzipped:
        payload = gzip.compress(payload)
        headers["content-encoding"] = "gzip"
    attempt.start_response(200, headers)
    for piece in _splits(data, payload):
        attempt.feed(piece)
    record = attempt.finish(complete=True)
    assert record is not None
    expected = _with_estimates(attempt, _expected_chat(usage, tier), "gpt-4o-mini")
    assert record.usage == expected
    assert record.estimated == record.usage.estimated == (not usage.prompt_tokens or not usage.completion_tokens)
    assert record.error is None
    assert record.model_answered == "gpt-4o-mini-2024-07-18"
    assert record.cost_usd == Pricing().cost(expected, model="gpt-4o-mini-2024-07-18").usd
    assert seen == [record]
    assert attempt.finish(complete=True) is record  # settles once
    assert seen == [record]


@SETTINGS
@given(usage=responses_usages(), tier=st.sampled_from([None, "default", "flex"]), gzipped=st.booleans(),
       data=st.data())
def test_streamed_responses_usage_comes_from_response_completed(
    usage: ResponseUsage, tier: str | None, gzipped: bool, data: st.DataObject
) -> None:
    engine = llmbudget.Engine()
    attempt = _begin(engine, {"model": "gpt-5-mini", "input": "Say hello", "stream": True}, "/v1/responses")
    events = [
        ResponseCreatedEvent(type="response.created", sequence_number=0,
                             response=_response(None, status="in_progress", tier=tier)),
        *[ResponseTextDeltaEvent(type="response.output_text.delta", sequence_number=i + 1, item_id="msg_1",
                                 output_index=0, content_index=0, delta=word, logprobs=[])
          for i, word in enumerate(WORDS)],
        ResponseCompletedEvent(type="response.completed", sequence_number=len(WORDS) + 1,
                               response=_response(usage, tier=tier, text="".join(WORDS))),
    ]
    payload = "".join(f"event: {e.type}\ndata: {e.model_dump_json(exclude_unset=True)}\n\n" for e in events).encode()
    headers = {"content-type": "text/event-stream"}
    if gzipped:
        payload = gzip.compress(payload)
        headers["content-encoding"] = "gzip"
    attempt.start_response(200, headers)
    for piece in _splits(data, payload):
        attempt.feed(piece)
    record = attempt.finish(complete=True)
    assert record is not None
    expected = _with_estimates(attempt, Usage(
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.input_tokens_details.cached_tokens,
        cache_write_tokens=usage.input_tokens_details.cache_write_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.output_tokens_details.reasoning_tokens,
        service_tier=tier,
    ), "gpt-5-mini")
    assert record.usage == expected
    assert record.estimated == (not usage.input_tokens or not usage.output_tokens)
    assert record.endpoint == "responses"
    assert record.cost_usd == Pricing().cost(expected, model="gpt-5-mini-2025-08-07").usd


def test_flex_tier_of_a_responses_call_is_priced_as_flex() -> None:
    engine = llmbudget.Engine()
    attempt = _begin(engine, {"model": "gpt-5-mini", "input": "x"}, "/v1/responses")
    usage = ResponseUsage(input_tokens=100_000, output_tokens=10_000, total_tokens=110_000,
                          input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                          output_tokens_details=OutputTokensDetails(reasoning_tokens=0))
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(_response(usage, tier="flex").model_dump_json().encode())
    record = attempt.finish(complete=True)
    assert record is not None
    standard = Pricing().cost(Usage(input_tokens=100_000, output_tokens=10_000), model="gpt-5-mini").usd
    assert record.usage.service_tier == "flex"
    assert record.cost_usd == standard / 2


def _chat_answer(usage: dict[str, Any], tier: str | None = None) -> bytes:
    completion = ChatCompletion(
        id="chatcmpl-1", created=1, model="gpt-4o-mini-2024-07-18", object="chat.completion", service_tier=tier,
        choices=[ChatChoice(index=0, finish_reason="stop",
                            message=ChatCompletionMessage(role="assistant", content="".join(WORDS)))],
    )
    return json.dumps({**_dump(completion), "usage": usage}).encode()


@pytest.mark.parametrize("usage", [{}, {"total_tokens": 130}, {"prompt_tokens": None, "completion_tokens": 9},
                                   {"prompt_tokens": 20, "completion_tokens": None},
                                   {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}])
def test_an_answer_whose_usage_leaves_counts_out_is_charged_their_estimates(
        engine: llmbudget.Engine, usage: dict[str, Any]) -> None:
    # a usage object without token counts was recorded at $0 ("none"), silently, and a missing side at 0 tokens
    attempt = _begin(engine, {**CHAT_BODY, "stream": False})
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(_chat_answer(usage))
    record = attempt.finish(complete=True)
    assert record is not None and record.estimated and record.price_source == "genai-prices"
    given_in, given_out = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    assert record.usage.input_tokens == (given_in or attempt.estimate_input_tokens()) > 0
    assert record.usage.output_tokens == (given_out or tokens.count_text("".join(WORDS), "gpt-4o-mini")) > 0
    assert record.cost_usd == Pricing().cost(record.usage, model="gpt-4o-mini-2024-07-18").usd > 0


@pytest.mark.parametrize(("completion", "reasoning", "total", "billed"), [
    (5, 80, 135, 85),  # more reasoning than output: beside it
    (100, 50, 200, 150),  # total_tokens adds all three: beside it
    (100, 50, 150, 100),  # total_tokens adds prompt and completion: inside it, as OpenAI counts it
    (80, 80, None, 80),  # all of the output is reasoning
    (100, 50, 200.0, 150),  # a total written as a float, as some servers write counts
    (198, 0, 623, 573),  # no reasoning count, and a total above prompt + output: the rest is hidden output
    (100, 0, 140, 100),  # a total below prompt + output: the counts stand
])
def test_reasoning_tokens_counted_beside_the_output_are_charged(
        engine: llmbudget.Engine, completion: int, reasoning: int, total: int | None, billed: int) -> None:
    # some gateways keep thinking tokens out of completion_tokens: 80 of them were free
    attempt = _begin(engine, {**CHAT_BODY, "stream": False})
    attempt.start_response(200, {"content-type": "application/json"})
    usage = {"prompt_tokens": 50, "completion_tokens": completion, "total_tokens": total,
             "completion_tokens_details": {"reasoning_tokens": reasoning}}
    attempt.feed(_chat_answer(usage))
    record = attempt.finish(complete=True)
    assert record is not None and not record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (50, billed)
    assert record.cost_usd == (50 * Decimal("0.15") + billed * Decimal("0.6")) / 10**6
    assert chat_usage(usage).output_tokens == billed  # as replay's baseline and batch results read it
    assert responses_usage({"input_tokens": 50, "output_tokens": completion, "total_tokens": total,
                            "output_tokens_details": {"reasoning_tokens": reasoning}}).output_tokens == billed


def test_an_echoed_prompt_scored_with_no_output_is_charged_its_input_alone(engine: llmbudget.Engine) -> None:
    # echo with max_tokens 0 (scoring a prompt's logprobs) answers with the prompt as its text and 0 completion
    # tokens: the 0 was taken for a missing count and the prompt charged twice, flagged estimated
    prompt = "The quick brown fox jumps over the lazy dog. " * 10
    attempt = _begin(engine, {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "echo": True, "max_tokens": 0,
                              "logprobs": 1}, "/v1/completions")
    completion = Completion(
        id="cmpl-1", created=1, model="gpt-3.5-turbo-instruct", object="text_completion",
        usage=CompletionUsage(prompt_tokens=101, completion_tokens=0, total_tokens=101),
        choices=[CompletionChoice(index=0, finish_reason="length", text=prompt, logprobs=None)])
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(completion.model_dump_json().encode())
    record = attempt.finish(complete=True)
    assert record is not None and not record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (101, 0)


def test_a_tool_call_answer_without_an_output_count_is_charged_its_arguments(engine: llmbudget.Engine) -> None:
    # a JSON answer's text is empty for a tool call: its output was left at 0, not flagged estimated
    attempt = _begin(engine, {**CHAT_BODY, "stream": False})
    completion = ChatCompletion(
        id="chatcmpl-1", created=1, model="gpt-4o-mini-2024-07-18", object="chat.completion",
        choices=[ChatChoice(index=0, finish_reason="tool_calls", message=ChatCompletionMessage(
            role="assistant", content=None, tool_calls=[ChatCompletionMessageToolCall(
                id="t1", type="function", function=Function(name="lookup", arguments='{"city": "Paris", "days": 3}'))]))])
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps({**_dump(completion), "usage": {"prompt_tokens": 40, "completion_tokens": None}}).encode())
    record = attempt.finish(complete=True)
    assert record is not None and record.estimated
    assert record.usage.output_tokens == tokens.count_text('{"city": "Paris", "days": 3}', "gpt-4o-mini") > 5


def test_a_project_billed_at_priority_by_default_has_its_next_calls_reserved_at_priority() -> None:
    # a call that names no tier may be billed at the project's default, priority: its reservation, at the
    # standard price, was below the charge. Once an answer says so, calls to that host are reserved at priority.
    engine = llmbudget.Engine()
    body = {**CHAT_BODY, "stream": False, "model": "gpt-5"}
    first = _begin(engine, body)
    standard = first.worst_case_usd()
    first.start_response(200, {"content-type": "application/json"})
    first.feed(_chat_answer({"prompt_tokens": 20, "completion_tokens": 9}, tier="priority"))
    assert first.finish(complete=True) is not None
    later = _begin(engine, body)
    assert later.worst_case_usd() == Pricing().cost(later.worst_usage(), model="gpt-5").usd > standard
    assert later.worst_usage().service_tier == "priority"
    assert _begin(engine, {**body, "service_tier": "default"}).worst_case_usd() == standard  # pinned: as asked
    assert _begin(llmbudget.Engine(), body).worst_case_usd() == standard  # per engine


@pytest.mark.parametrize("keep", [0, 1, 4, 9])
def test_cut_stream_is_estimated(engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], keep: int) -> None:
    attempt = _begin(engine, CHAT_BODY)
    attempt.start_response(200, {"content-type": "text/event-stream"})
    chunks = _chunks(CompletionUsage(prompt_tokens=20, completion_tokens=9, total_tokens=29))[:keep]
    attempt.feed(_sse(chunks, done=False))
    record = attempt.finish(complete=False)
    assert record is not None
    assert record.estimated and record.usage.estimated
    streamed = "".join(WORDS[: max(keep - 1, 0)])
    assert record.usage.output_tokens == tokens.count_text(streamed, "gpt-4o-mini")
    assert record.usage.input_tokens == attempt.estimate_input_tokens() > 0
    assert record.cost_usd == Pricing().cost(record.usage, model="gpt-4o-mini").usd > 0
    assert records == [record]


@pytest.mark.parametrize(("model", "extra", "hidden"), [
    ("o4-mini", {}, True),
    ("gpt-5-mini", {"reasoning_effort": "high"}, True),
    ("gpt-5.1", {"reasoning_effort": "none"}, False),  # no reasoning at all
    ("gpt-4o-mini", {}, False),
])
def test_a_cut_stream_of_a_model_that_reasons_out_of_sight_is_charged_its_worst_case(
        engine: llmbudget.Engine, model: str, extra: dict[str, Any], hidden: bool) -> None:
    """What a reasoning model reasoned before its reader went is billed and was never streamed: estimated from the
    text streamed, an o4-mini stream cut while it reasoned (max_completion_tokens 30,000) was charged its input
    alone."""
    body = {**CHAT_BODY, "model": model, "max_completion_tokens": 30_000, **extra}
    attempt = _begin(engine, body)
    attempt.start_response(200, {"content-type": "text/event-stream"})
    attempt.feed(_sse(_chunks(None)[:1], done=False))  # the role's chunk, then nothing: it reasons
    record = attempt.finish(complete=False)
    assert record is not None and record.estimated
    if hidden:
        assert record.usage == attempt.worst_usage().replace(estimated=True)
        assert record.usage.output_tokens == 30_000
    else:
        assert record.usage.output_tokens == 0


def test_a_complete_stream_without_usage_is_estimated_from_its_text(engine: llmbudget.Engine) -> None:
    attempt = _begin(engine, CHAT_BODY)
    attempt.start_response(200, {"content-type": "text/event-stream"})
    attempt.feed(_sse(_chunks(None)))
    record = attempt.finish(complete=True)
    assert record is not None and record.estimated
    assert record.usage.output_tokens == tokens.count_text("".join(WORDS), "gpt-4o-mini")


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_http_errors_cost_nothing(engine: llmbudget.Engine, records: list[llmbudget.SpendRecord],
                                  status: int) -> None:
    attempt = _begin(engine, CHAT_BODY)
    attempt.start_response(status, {"content-type": "application/json"})
    attempt.feed(b'{"error": {"message": "nope", "type": "server_error"}, '
                 b'"usage": {"prompt_tokens": 100, "completion_tokens": 100}}')
    record = attempt.finish(complete=True)
    assert record is not None
    assert record.cost_usd == 0
    assert record.usage.total_tokens == 0
    assert record.error == f"HTTP {status}"
    assert record.status == status
    assert records == [record]


def test_connection_error_costs_nothing(engine: llmbudget.Engine) -> None:
    attempt = _begin(engine, CHAT_BODY)
    record = attempt.finish(complete=False, error=httpx2.ConnectError("x"))
    assert record is not None
    assert record.cost_usd == 0
    assert record.usage.total_tokens == 0
    assert record.error is not None and "ConnectError" in record.error


def test_a_read_timeout_is_charged_its_worst_case(engine: llmbudget.Engine) -> None:
    """Sent whole and unanswered within the client's timeout, the call still runs and is billed upstream: charged
    what its reservation held (its input alone let 60 timed-out calls spend 4x a tenant budget). A stream is not:
    it stops generating when its reader goes."""
    streamed = _begin(engine, CHAT_BODY)
    record = streamed.finish(complete=False, error=httpx2.ReadTimeout("x"))
    assert record is not None and record.usage.output_tokens == 0 and record.usage.input_tokens > 0
    # a Responses job run in the background goes on whoever reads it
    background = _begin(engine, {"model": "gpt-4o-mini", "input": "Write an essay", "stream": True,
                                 "background": True, "max_output_tokens": 4000}, "/v1/responses")
    record = background.finish(complete=False, error=httpx2.ReadTimeout("x"))
    assert record is not None and record.usage.output_tokens == 4000
    started = _begin(engine, {"model": "gpt-4o-mini", "input": "Write an essay", "stream": True,
                              "background": True, "max_output_tokens": 4000}, "/v1/responses")
    started.start_response(200, {"content-type": "text/event-stream"})  # cut once its stream had begun
    started.feed(b'data: {"type": "response.created", "response": {"id": "resp_1", "status": "queued"}}\n\n')
    record = started.finish(complete=False, error=httpx2.ReadTimeout("x"))
    assert record is not None and record.usage.output_tokens == 4000
    stray = _begin(engine, {**{k: v for k, v in CHAT_BODY.items() if k != "max_completion_tokens"},
                            "background": True, "max_tokens": 4000})  # not a Responses job
    stray.start_response(200, {"content-type": "text/event-stream"})
    stray.feed(b'data: {"choices": [{"delta": {"content": "Paris is"}}]}\n\n')
    record = stray.finish(complete=False)
    assert record is not None and 0 < record.usage.output_tokens < 4000
    attempt = _begin(engine, {**CHAT_BODY, "stream": False})
    worst = attempt.worst_usage()
    record = attempt.finish(complete=False, error=httpx2.ReadTimeout("x"))
    assert record is not None
    assert worst.output_tokens > 0 and worst.input_tokens >= attempt.estimate_input_tokens() > 0
    assert record.usage == worst.replace(estimated=True)
    assert record.estimated
    assert record.cost_usd == Pricing().cost(worst, model="gpt-4o-mini").usd == attempt.worst_case_usd()


@pytest.mark.parametrize("sse", [False, True])
def test_an_answer_left_unread_is_charged_its_worst_case_unless_streamed(engine: llmbudget.Engine, sse: bool) -> None:
    """A whole (non-streamed) answer is generated and billed before its first byte is sent: one the app cancelled
    or dropped mid-body is charged what its reservation held. A stream stops when its reader goes: the output
    seen so far."""
    attempt = _begin(engine, {**CHAT_BODY, "stream": sse})
    attempt.start_response(200, {"content-type": "text/event-stream" if sse else "application/json"})
    attempt.feed(b'data: {"choices": [{"delta": {"content": "Paris is"}}]}\n\n' if sse else b'{"id": "chatcmpl-1", "cho')
    record = attempt.finish(complete=False)
    assert record is not None and record.estimated
    worst = attempt.worst_usage()
    assert (record.usage.output_tokens == worst.output_tokens) is not sse
    assert 0 < record.usage.output_tokens if sse else record.cost_usd == attempt.worst_case_usd()


@pytest.mark.parametrize(("case", "path", "body", "content_type", "start"), [
    ("a stream labelled JSON", "/v1/chat/completions", {**CHAT_BODY, "stream": True}, "application/json",
     b'data: {"choices": [{"delta": {"content": "Paris is"}}]}\n\n'),
    ("a proxy's HTML page", "/v1/chat/completions", {**CHAT_BODY, "stream": False}, "text/html", b"<html><body>Sign"),
    ("an error object", "/v1/chat/completions", {**CHAT_BODY, "stream": False}, "application/json",
     b'{"error": {"message": "over'),
    ("an error object, spaced", "/v1/chat/completions", {**CHAT_BODY, "stream": False}, "application/json",
     b'{\n  "error" : {"message": "over'),
    ("Anthropic's error object", "/v1/messages",  # charged its worst case before: only OpenAI's shape was known
     {"model": "claude-haiku-4-5", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]},
     "application/json", b'{"type":"error","error":{"type":"overloaded_error","mess'),
    ("an embedding", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello"}, "application/json",
     b'{"object": "list", "data": [{"embedding": [0.1,'),
])
def test_only_a_whole_generated_answer_cut_short_is_charged_its_worst_case(
        engine: llmbudget.Engine, case: str, path: str, body: dict[str, Any], content_type: str, start: bytes) -> None:
    """A cut 200 is charged its worst case only when it is a whole answer under way: not a stream (whatever its
    content-type), a page that is no answer, an error object, or an embedding (its input is all it bills)."""
    attempt = _begin(engine, body, path)
    attempt.start_response(200, {"content-type": content_type})
    attempt.feed(start)
    record = attempt.finish(complete=False)
    assert record is not None and record.estimated
    assert record.cost_usd < attempt.worst_case_usd(), case


def test_a_read_timeout_after_an_error_status_is_not_charged_the_worst_case(engine: llmbudget.Engine) -> None:
    """A 429 whose body timed out is the provider's refusal, answered: charged as failed calls are (its input
    estimate), not the worst case of an answer it never produced."""
    attempt = _begin(engine, CHAT_BODY)
    attempt.status = 429
    record = attempt.finish(complete=False, error=httpx2.ReadTimeout("x"))
    assert record is not None
    assert record.usage.output_tokens == 0 and record.cost_usd < attempt.worst_case_usd()
    assert "ReadTimeout" in (record.error or "")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "choices": 5, "usage": {"prompt_tokens": 1000,
                                                                                   "completion_tokens": 100}}),
        ("/v1/responses", {"model": "gpt-4o-mini", "output": 5, "status": "completed",
                           "usage": {"input_tokens": 1000, "output_tokens": 100}}),
    ],
)
def test_malformed_response_fields_do_not_lose_the_reported_usage(
    engine: llmbudget.Engine, path: str, body: dict[str, Any]
) -> None:
    """A response whose usage is fine but another field is odd is still priced from its usage."""
    attempt = _begin(engine, {"model": "gpt-4o-mini", "messages": [], "input": "x"}, path)
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps(body).encode())
    record = attempt.finish(complete=True)
    assert record is not None
    assert record.usage == Usage(input_tokens=1000, output_tokens=100)
    assert record.cost_usd == Pricing().cost(Usage(input_tokens=1000, output_tokens=100), model="gpt-4o-mini").usd
    assert record.cost_usd > Decimal(0)


def test_an_azure_stream_is_priced_by_the_model_its_chunks_name_not_its_filter_results(
        engine: llmbudget.Engine) -> None:
    """Azure's first chunk holds the prompt filter results with ``"model": ""``: read from it, the call was
    priced as the deployment's name (unknown: the fallback price, 7x gpt-4o's)."""
    attempt = _begin(engine, {**CHAT_BODY, "model": "prod-chat"})
    attempt.start_response(200, {"content-type": "text/event-stream"})
    chunks = [
        {"choices": [], "created": 0, "id": "", "model": "", "object": "",
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}],
         "created": 1, "id": "chatcmpl-1", "model": "gpt-4o-2024-08-06", "object": "chat.completion.chunk"},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "created": 1, "id": "chatcmpl-1",
         "model": "gpt-4o-2024-08-06", "object": "chat.completion.chunk",
         "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}},
    ]
    attempt.feed("".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n")
    record = attempt.finish(complete=True)
    assert record is not None and record.model_answered == "gpt-4o-2024-08-06" and not record.estimated
    assert record.cost_usd == Pricing().cost(Usage(input_tokens=100, output_tokens=10), model="gpt-4o").usd


@pytest.mark.parametrize(("limits", "floats"), [
    ({"max_tokens": 100_000}, {"max_tokens": 100_000.0}),
    ({"max_tokens": 5000, "n": 10}, {"max_tokens": 5000, "n": 10.0}),
    ({"max_completion_tokens": 64}, {"max_completion_tokens": 64.0}),
    ({"max_tokens": 1000, "n": 4}, {"max_tokens": 1000, "n": "4"}),
    ({"max_tokens": 100_000}, {"max_tokens": " 100000 "}),
    ({"max_tokens": 5000, "n": 10}, {"max_tokens": "5000.0", "n": "10"}),
])
def test_a_limit_written_as_a_whole_float_holds_what_its_integer_holds(limits, floats):
    """Lax servers take 100000.0 (and "100000", "4" for n) as 100000: read as no limit, the call was held at a
    default far below it and a $0.10 request budget let a $1 call through."""
    import json

    import llmbudget

    def worst(extra):  # type: ignore[no-untyped-def]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}
        attempt = llmbudget.Engine().begin(url="https://api.openai.com/v1/chat/completions",
                                           path="/v1/chat/completions", headers={}, body=json.dumps(body).encode())
        assert attempt is not None
        return attempt.worst_usage().output_tokens

    assert worst(floats) == worst(limits) and worst({"max_tokens": 12.5}) == worst({})  # (not whole: no limit)
    assert worst({"max_tokens": "lots"}) == worst({"max_tokens": "12.5"}) == worst({"max_tokens": "nan"}) == worst({})


def _answered(engine: llmbudget.Engine, body: dict[str, Any], name: str, prompt: int, completion: int
              ) -> llmbudget.SpendRecord:
    """The record of a chat call ``body`` answered whole, by the model ``name``, with the usage given."""
    attempt = _begin(engine, body)
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}}).encode())
    record = attempt.finish(complete=True)
    assert record is not None and record.model_answered == name
    return record


def test_a_call_answered_under_an_unpriced_name_is_priced_as_the_model_it_was_sent_to() -> None:
    """llama.cpp answers with its alias or the GGUF's path, a gateway with its upstream's name: priced by that
    name alone, such a call got the unknown-model fallback (430 times the override set for the model sent to)."""
    engine = llmbudget.Engine(pricing=Pricing(overrides={"gemma-3-270m": {"input": "0.1", "output": "0.3"}}))

    record = _answered(engine, {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}]},
                       "/models/gemma-3-270m-it-Q4_K_M.gguf", 1000, 300)
    assert record.price_source == "override"
    assert record.cost_usd == Decimal("0.0001") + Decimal("0.00009")
    # a name the server answered with that has a price of its own is still what is priced
    record = _answered(engine, {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
                       "gpt-4o-mini-2024-07-18", 1000, 300)
    assert record.cost_usd == Pricing().cost(Usage(input_tokens=1000, output_tokens=300), model="gpt-4o-mini").usd


@pytest.mark.parametrize("prompt", ["def add(a, b):\n", ["def add(a, b):\n", "def sub(a, b):\n"]])
def test_a_completions_suffix_is_reserved_as_the_prompt_it_is_billed_as(prompt: Any) -> None:
    """The text after an insertion (``suffix``) is billed as prompt tokens, with every prompt: left out, a 43,000
    token suffix went through a budget of $0.02 and spent 3.2x it."""
    engine = llmbudget.Engine()
    suffix = "    return result\n" * 400
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 16}
    plain = _begin(engine, body, "/v1/completions").estimate_input_tokens()
    with_suffix = _begin(engine, {**body, "suffix": suffix}, "/v1/completions").estimate_input_tokens()
    prompts = len(prompt) if isinstance(prompt, list) else 1
    assert with_suffix - plain >= prompts * tokens.count_text(suffix, "gpt-3.5-turbo-instruct") > 1000


@pytest.mark.parametrize(("model", "extra"), [("gpt-4o-mini-search-preview", {}),
                                              ("gpt-4o-mini", {"web_search_options": {}})])
def test_a_chat_search_models_search_is_reserved_and_charged_on_every_call(model: str, extra: dict[str, Any]) -> None:
    """Chat search models search on every call, billed per call and reported nowhere in the answer: 40 calls
    went through a $0.10 budget recorded at $0.0005."""
    engine = llmbudget.Engine()
    body = {"model": model, "messages": [{"role": "user", "content": "News today?"}], "max_tokens": 50, **extra}
    assert _begin(engine, body).worst_usage().web_searches == 1
    record = _answered(engine, body, model, 10, 3)
    assert record.usage.web_searches == 1 and not record.estimated
    assert record.cost_usd >= Decimal("0.01")  # the search's fee ($10 per 1,000) beside the tokens
    plain = _begin(engine, {"model": "gpt-4o-mini", "messages": body["messages"], "max_tokens": 50})
    assert plain.worst_usage().web_searches == 0
