"""Azure OpenAI deployments: the deployment named in the URL answers, whatever model the body names."""

from __future__ import annotations

import importlib
import json
from typing import Any

import openai
import pytest

import llmbudget

# httpx2 with openai >= 3, httpx with openai 2.x: the library of the SDK's own clients
library: Any = importlib.import_module(next(c.__module__ for c in openai.DefaultHttpxClient.__mro__
                                            if c.__module__.startswith("httpx")).split(".")[0])

AZURE = "https://myres.openai.azure.com"
HI = [{"role": "user", "content": "Classify: I love it"}]


class Deployment(library.BaseTransport):  # type: ignore[misc]
    """An Azure resource: every deployment runs gpt-4o, the model its URL names, and says so in its answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def handle_request(self, request: Any) -> Any:
        self.sent.append((str(request.url), json.loads(request.read())))
        return library.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": '{"label": "positive"}'}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
        })


def azure(deployment: Deployment) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(api_key="k", api_version="2024-06-01", azure_endpoint=AZURE, max_retries=0,
                              http_client=llmbudget.http_client(transport=deployment))


def test_a_deployment_is_never_routed_by_rewriting_the_bodys_model(engine: llmbudget.Engine) -> None:
    """Routing rewrote only the body's model: the deployment still ran gpt-4o, the reservation was a nano's,
    and a $0.005 budget let a $0.02 call through (recorded as routed to nano)."""
    engine.routing = llmbudget.Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=0.99)
    upstream = Deployment()
    with llmbudget.scope(budgets=[llmbudget.Budget("0.005")]), pytest.raises(openai.APIStatusError) as refused:
        azure(upstream).chat.completions.create(model="gpt-4o", max_tokens=2000, messages=HI)
    assert refused.value.status_code == 402 and upstream.sent == []
    with llmbudget.scope() as current:
        azure(upstream).chat.completions.create(model="gpt-4o", max_tokens=20, messages=HI)
    (url, body), = upstream.sent
    assert "/openai/deployments/gpt-4o/" in url and body["model"] == "gpt-4o"
    (record,) = current.totals.records
    assert not record.routed and record.model_answered == "gpt-4o-2024-08-06"


def test_a_deployment_gets_none_of_llmbudgets_own_caps(engine: llmbudget.Engine) -> None:
    """A deployment's name says nothing of its model, which may reason (an o3-mini named 'classifier'): a schema's
    cap there was refused (max_tokens) or cut the reasoning, and the answer came back empty."""
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
              "required": ["label"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}}
    upstream = Deployment()
    azure(upstream).chat.completions.create(model="classifier", messages=HI, response_format=fmt)
    (_, body), = upstream.sent
    assert not {"max_tokens", "max_completion_tokens"} & set(body)
    plain = Deployment()  # the same request to OpenAI itself gets the schema's cap
    openai.OpenAI(api_key="k", max_retries=0, http_client=llmbudget.http_client(transport=plain)).chat.completions.create(
        model="gpt-4o-mini", messages=HI, response_format=fmt)
    assert plain.sent[0][1]["max_tokens"] < 100


def test_a_deployments_call_in_a_batch_block_is_sent_as_usual(engine: llmbudget.Engine) -> None:
    """Azure's batch jobs live under another API and key header: a deferred call was posted to a files URL
    under the deployment and failed (502)."""
    upstream = Deployment()
    with llmbudget.defer("batch"):
        answer = azure(upstream).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=20)
    assert answer.choices[0].message.content == '{"label": "positive"}'
    assert "/openai/deployments/gpt-4o/chat/completions" in upstream.sent[0][0]


def test_a_deployment_kept_on_the_strong_tier_is_sent_as_the_app_wrote_it(engine: llmbudget.Engine) -> None:
    """Kept on the strong tier, a deployment's call got that tier's model in its body (o3: temperature dropped,
    max_tokens renamed) and its cap, though the deployment runs its own model whatever the body says."""
    engine.routing = llmbudget.Routing(tiers={"small": "gpt-4.1-nano",
                                              "large": {"model": "o3", "max_output_tokens": 64}}, threshold=0.99)
    upstream = Deployment()
    azure(upstream).chat.completions.create(model="classifier", messages=HI, max_tokens=500, temperature=0.2)
    (_, body), = upstream.sent
    assert body == {"model": "classifier", "messages": HI, "max_tokens": 500, "temperature": 0.2}


def test_azures_v1_api_gets_none_of_llmbudgets_own_caps_and_a_tier_elsewhere_gets_its_own_query(
        engine: llmbudget.Engine) -> None:
    """On Azure's v1 API the body's model is a deployment's name too (an o3-mini named "classifier" got a schema
    cap); a tier on another Azure resource gets the api-version its base_url carries, never the app's query."""
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
              "required": ["label"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}}
    upstream = Deployment()
    v1 = openai.OpenAI(base_url=f"{AZURE}/openai/v1", api_key="k", max_retries=0,
                       http_client=llmbudget.http_client(transport=upstream))
    v1.chat.completions.create(model="classifier", messages=HI, response_format=fmt)
    assert not {"max_tokens", "max_completion_tokens"} & set(upstream.sent[0][1])
    other = "https://other.openai.azure.com/openai/deployments/mini?api-version=2024-10-21"
    engine.routing = llmbudget.Routing(tiers={"small": {"model": "mini", "base_url": other}, "large": None},
                                       threshold=1.0)
    azure(upstream).with_options(default_query={"subscription-key": "apim-secret"}).chat.completions.create(
        model="gpt-4o", messages=HI, max_tokens=20)
    assert upstream.sent[-1][0] == ("https://other.openai.azure.com/openai/deployments/mini/chat/completions"
                                    "?api-version=2024-10-21")


def test_azure_hosts_are_known_however_their_url_is_spelt() -> None:
    from llmbudget.pipeline import _unknown_model

    for url in ("https://res.openai.azure.com/openai/v1", "https://RES.OPENAI.AZURE.COM/openai/v1",
                "https://res.openai.azure.com:443/openai/v1", "https://res.openai.azure.com./openai/v1",
                "https://res.cognitiveservices.azure.com/openai/v1", "https://res.services.ai.azure.com/openai/v1",
                "https://gateway.example.com/openai/deployments/chat"):
        assert _unknown_model(url), url
    for url in ("https://api.openai.com/v1", "https://openai.azure.com.evil.example/v1", "not a url"):
        assert not _unknown_model(url), url
    assert _unknown_model("https://[bad/openai/deployments/x")  # a deployment's path, whatever the host


def test_a_tier_on_the_same_host_keeps_its_own_query_and_its_directive_follows_its_host(
        engine: llmbudget.Engine) -> None:
    """A tier on the app's Azure resource lost its api-version (Azure refused every routed call); a tier's
    directive was judged by the app's host, so a tier on Azure got a cap its unknown model may not take."""
    upstream = Deployment()
    mini = f"{AZURE}/openai/deployments/mini?api-version=2024-10-21"
    engine.routing = llmbudget.Routing(tiers={"small": {"model": "mini", "base_url": mini,
                                                        "max_words": 50}, "large": None}, threshold=1.0)
    client = openai.OpenAI(base_url=f"{AZURE}/openai/v1", api_key="k", max_retries=0,
                           http_client=llmbudget.http_client(transport=upstream))
    client.chat.completions.create(model="gpt-4o", messages=HI)
    url, body = upstream.sent[-1]
    assert url == f"{AZURE}/openai/deployments/mini/chat/completions?api-version=2024-10-21"
    # the app's own query as it wrote it (repeated keys, raw characters), less what the tier sets
    client.with_options(default_query={"sig": "a/b:c", "api-version": "old"}).chat.completions.create(
        model="gpt-4o", messages=HI, extra_query={"a": ["1", "2"]})
    url = upstream.sent[-1][0]
    assert url.endswith("&api-version=2024-10-21") and "old" not in url and url.count("a%5B%5D=") == 2
    assert "50 words" in json.dumps(body["messages"]) and "max_tokens" not in body


def test_the_api_version_is_part_of_the_cache_keys_and_a_credential_in_the_query_is_not(tmp_path) -> None:
    """Two calls to one deployment on different api-versions shared their answers (the cache named the base URL
    alone); a key in the query (``?api-key=``, ``?subscription-key=``) must never be part of a key either."""
    engine = llmbudget.Engine(cache=llmbudget.Cache(str(tmp_path / "cache")))
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 0}).encode()
    base = "https://res.openai.azure.com/openai/deployments/dep1/chat/completions"

    def attempt(query: str) -> Any:
        found = engine.begin(url=f"{base}?{query}", path="/chat/completions", headers={}, body=body)
        assert found is not None
        return found

    old, new = attempt("api-version=2024-02-01"), attempt("api-version=2025-04-01-preview")
    assert old.answer_variant == "api-version=2024-02-01" != new.answer_variant
    keyed = attempt("subscription-key=s3cret&api-version=2024-02-01&api-key=k3y")
    assert keyed.answer_variant == old.answer_variant and "s3cret" not in keyed.answer_variant
    # a signed URL's fields (Azure SAS, Google's, S3's) and any parameter named as a credential
    signed = attempt("api-version=2024-02-01&sv=2022-11-02&se=2026-12-08T10%3A00Z&sp=r&sig=abc&X-Goog-Signature=def"
                     "&X-Goog-Date=20261208T100000Z&X-Amz-Credential=ghi&access_key=jkl&auth_token=mno&jwt=pqr")
    assert signed.answer_variant == old.answer_variant
    # a parameter whose name only contains such a word is the request's own ("author", "keywords", "design")
    assert attempt("api-version=2024-02-01&author=alice").answer_variant != \
        attempt("api-version=2024-02-01&author=bob").answer_variant
    from llmbudget.cache.keys import cache_keys

    assert cache_keys(old.call, tenant="t", variant=old.answer_variant).exact != \
        cache_keys(new.call, tenant="t", variant=new.answer_variant).exact
