"""What llmbudget adds to a request by itself never makes it fail (from a red-team pass on request rewriting).

Caps of its own go only to models known not to reason; a directive's system message or the flex tier that a
server refuses (HTTP 400 naming it) is taken out and the call sent again, as the cascade's probe and a stream's
usage option already were.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
import pytest
from servers import base_url, proxy

import llmbudget
from llmbudget.output import Output
from llmbudget.pipeline import Attempt

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
    "type": "object", "additionalProperties": False, "required": ["sentiment", "confident"],
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                   "confident": {"type": "boolean"}}}}}

#: Models that reason within their output limit though no list of reasoning models names them (a cap of
#: llmbudget's own left them no room to answer: a schema's 64 tokens spent on <think>, no JSON at all).
MAY_REASON = ["sonar-reasoning-pro", "microsoft/Phi-4-reasoning", "zai-org/GLM-4.6", "MiniMaxAI/MiniMax-M2",
              "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
              "my-company-model"]
PLAIN = ["gpt-4o-mini", "gpt-4.1", "gemma-3-270m-it", "meta-llama/Llama-3.1-8B-Instruct", "claude-sonnet-4-5",
         "mistral-small-latest", "qwen2.5-7b-instruct"]


def _planned(engine: llmbudget.Engine, body: dict[str, Any], host: str = "https://api.openai.com/v1") -> Attempt:
    attempt = engine.begin(url=f"{host}/chat/completions", path="/v1/chat/completions", headers={},
                           body=json.dumps(body).encode())
    assert isinstance(attempt, Attempt)
    attempt.shape_output()
    attempt.plan()
    return attempt


@pytest.mark.parametrize("model", MAY_REASON + PLAIN)
def test_a_cap_of_llmbudgets_own_goes_only_to_a_model_known_not_to_reason(model: str) -> None:
    plain = model in PLAIN
    schema = _planned(llmbudget.Engine(), {"model": model, "messages": QUESTION, "response_format": SCHEMA})
    assert ("max_tokens" in schema.call.body) is plain and schema.capped is plain
    engine = llmbudget.Engine()
    engine.output = Output(max_words=60)
    directed = _planned(engine, {"model": model, "messages": QUESTION})
    assert directed.call.body["messages"][0] == {"role": "system", "content": "Answer in at most 60 words."}
    assert ("max_tokens" in directed.call.body) is plain  # the directive goes, its cap only where it is safe
    assert directed.output is not None and (directed.output["cap"] is not None) is plain


def _refusing(words: bytes, message: str):  # type: ignore[no-untyped-def]
    def refuse(body: bytes) -> tuple[int, str] | None:
        return (400, message) if words in body else None
    return refuse


def test_a_directive_whose_system_message_is_refused_is_taken_out_and_the_call_sent_again(
        llm_server: str, engine: llmbudget.Engine, records: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    """o1-mini (and chat templates without a system role) refuse a system message: the directive llmbudget put
    there made the app's call fail with HTTP 400."""
    engine.output = Output(max_words=30)
    refuse = _refusing(b'"role":"system"', "Unsupported value: 'messages[0].role' does not support 'system' with "
                                            "this model.")
    with caplog.at_level(logging.WARNING, logger="llmbudget"), proxy(llm_server, refuse=refuse) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        for _ in range(2):
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
            assert answer.choices[0].message.content
        sent = [json.loads(received[2]) for received in server.received]
        # the app's own system message is the app's: refused as it would be without llmbudget
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=8,
                                           messages=[{"role": "system", "content": "Be brief."}, *QUESTION])
    assert [body["messages"][0]["role"] for body in sent] == ["system", "user", "user"]
    assert [record.status for record in records] == [400, 200, 200, 400]
    assert records[1].output is None and records[2].output is None
    assert sum("refuses the length directive" in message for message in caplog.messages) == 1


def test_the_flex_tier_a_model_does_not_offer_is_taken_out_and_the_call_sent_at_the_standard_tier(
        llm_server: str, engine: llmbudget.Engine, records: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    """OpenAI offers flex on some models only: ``defer("flex")`` made a gpt-4o-mini call fail with HTTP 400."""
    refuse = _refusing(b'"service_tier":"flex"', "Flex is not available for this model.")
    with caplog.at_level(logging.WARNING, logger="llmbudget"), proxy(llm_server, refuse=refuse) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with llmbudget.defer("flex"):
            for _ in range(2):
                answer = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
                assert answer.choices[0].message.content
            # the app's own flex request is the app's: refused as it would be without llmbudget
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8,
                                               service_tier="flex")
        sent = [json.loads(received[2]) for received in server.received]
    assert [body.get("service_tier") for body in sent] == ["flex", None, None, "flex"]
    assert [record.status for record in records] == [400, 200, 200, 400]
    assert records[1].deferred is None and records[1].usage.service_tier is None
    assert sum("refuses the flex service tier" in message for message in caplog.messages) == 1


def test_a_refusal_that_names_none_of_it_is_not_sent_again(engine: llmbudget.Engine) -> None:
    """A safety refusal ("... our safety system") was sent again without the directive, and a success then would
    have turned the directive off for that model for good."""
    import httpx2

    sent: list[dict[str, Any]] = []

    def refuse(request: Any) -> Any:
        sent.append(json.loads(request.content))
        return httpx2.Response(400, json={"error": {
            "message": "Your request was rejected as a result of our safety system.", "type": "invalid_request_error",
            "param": None, "code": "content_policy_violation"}})

    engine.output = Output(max_words=30)
    client = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-test", max_retries=0,
                           http_client=llmbudget.http_client(transport=httpx2.MockTransport(refuse)))
    with pytest.raises(openai.BadRequestError), llmbudget.defer("flex"):
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert len(sent) == 1 and sent[0]["messages"][0]["role"] == "system" and sent[0]["service_tier"] == "flex"


@pytest.mark.parametrize("model", ["deepseek-v3", "kimi-k2-instruct", "my-company-model"])
def test_a_cap_the_policy_sets_goes_to_any_model_that_does_not_reason_by_name(model: str) -> None:
    """The rule for llmbudget's own caps dropped the ones a user set too: a tier's max_output_tokens was not sent
    to a model outside the list, and on_budget="cap" refused such a call (402) instead of capping it."""
    from llmbudget.routing.tiers import Routing

    engine = llmbudget.Engine()
    engine.routing = Routing(tiers={"small": {"model": model, "max_output_tokens": 3}, "large": None}, threshold=1.0)
    tiered = _planned(engine, {"model": "gpt-4o", "messages": QUESTION, "max_tokens": 40})
    assert tiered.call.body["model"] == model and tiered.call.body["max_tokens"] == 3
