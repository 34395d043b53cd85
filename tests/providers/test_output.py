"""Output boundary control: length directives and JSON-schema caps, on their own and through the pipeline
against the real local server."""

from __future__ import annotations

import json

import openai
import pytest
from servers import base_url, proxy

import llmbudget
from llmbudget.config import ConfigError, Route, engine_from_config
from llmbudget.output import (
    Output,
    apply_directive,
    directive_cap,
    says_length,
    schema_cap,
    wants_json,
)


def chat(*messages: tuple[str, str], **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": r, "content": c} for r, c in messages], **extra}


def test_the_directive_goes_into_the_system_message_and_a_looser_cap_comes_with_it():
    out = Output(max_words=120)
    assert out.text == "Answer in at most 120 words." and out.cap == directive_cap(120) == 290
    body, where = apply_directive("chat.completions", chat(("system", "You help with bikes."), ("user", "Hi")), out)
    assert where == "system"
    assert body["messages"][0]["content"] == "You help with bikes.\n\nAnswer in at most 120 words."
    body, _ = apply_directive("chat.completions", chat(("user", "Hi")), out)
    assert body["messages"][0] == {"role": "system", "content": "Answer in at most 120 words."}
    body, where = apply_directive("chat.completions", chat(("developer", "Be nice."), ("user", "Hi")), out)
    assert where == "developer" and body["messages"][0]["content"].endswith("at most 120 words.")
    # a system prompt in content parts: one part more, never a second system message before the app's own
    parts = [{"type": "text", "text": "You help with bikes."}]
    body, where = apply_directive("chat.completions", {"model": "m", "messages": [
        {"role": "system", "content": parts}, {"role": "user", "content": "Hi"}]}, out)
    assert where == "system" and len(body["messages"]) == 2
    assert body["messages"][0]["content"] == [*parts, {"type": "text", "text": "Answer in at most 120 words."}]
    body, where = apply_directive("responses", {"model": "m", "input": "Hi"}, out)
    assert (where, body["instructions"]) == ("instructions", "Answer in at most 120 words.")
    body, where = apply_directive("messages", {"model": "claude-haiku-4-5", "max_tokens": 900, "system": "Be nice.",
                                               "messages": [{"role": "user", "content": "Hi"}]}, out)
    assert body["system"] == "Be nice.\n\nAnswer in at most 120 words."
    custom = Output(max_words=40, directive="Keep it under {max_words} words, please.")
    assert apply_directive("chat.completions", chat(("user", "Hi")), custom)[0]["messages"][0]["content"] == (
        "Keep it under 40 words, please.")


@pytest.mark.parametrize("body", [
    chat(("user", "Explain photosynthesis in 3 sentences.")),
    chat(("system", "Answer briefly."), ("user", "What is DNS?")),
    chat(("user", "Describe the French revolution in detail.")),
    chat(("user", "Hi"), tools=[{"type": "function", "function": {"name": "f"}}]),
    chat(("user", "Hi"), response_format={"type": "json_object"}),
    chat(("user", "Rename x to count in this file."), prediction={"type": "content", "content": "x = 1\n" * 300}),
])
def test_no_directive_where_the_request_says_how_long_or_wants_tools_or_json(body):
    assert apply_directive("chat.completions", body, Output(max_words=100)) is None


def test_says_length_reads_every_instruction():
    assert says_length("chat.completions", chat(("user", "Give me two paragraphs on tea")))
    assert says_length("messages", {"system": "Reply in one word.", "messages": []})
    assert not says_length("chat.completions", chat(("user", "What is the capital of France?")))


def test_schema_caps_come_from_the_schemas_bounds():
    bounded = {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 60},
        "tags": {"type": "array", "maxItems": 5, "items": {"type": "string", "maxLength": 12}},
        "score": {"type": "integer"}, "kind": {"enum": ["a", "bb", "ccc"]}}, "additionalProperties": False}
    body = chat(("user", "Tag this"), response_format={"type": "json_schema",
                                                        "json_schema": {"name": "t", "schema": bounded}})
    cap = schema_cap(body)
    assert cap is not None and 90 < cap < 1200  # a bound on UTF-8 bytes: loose for English, never too tight
    unbounded = {**bounded, "properties": {**bounded["properties"], "summary": {"type": "string"}}}
    assert schema_cap(chat(("user", "x"), response_format={"type": "json_schema",
                                                           "json_schema": {"name": "t", "schema": unbounded}})) is None
    assert schema_cap(chat(("user", "x"))) is None
    # not strict, properties beyond the listed ones may come ("reason": ...): no bound, or valid JSON was cut
    loose = {key: value for key, value in bounded.items() if key != "additionalProperties"}
    patterned = {**bounded, "patternProperties": {"^x-": {"type": "string", "maxLength": 5}}}
    for schema in (loose, patterned):
        assert schema_cap(chat(("user", "x"), response_format={"type": "json_schema",
                                                               "json_schema": {"name": "t", "schema": schema}})) is None


def test_bad_settings_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="max_words must be a whole number"):
        Output(max_words=0)
    with pytest.raises(ValueError, match="not a valid template"):
        Output(max_words=10, directive="Answer in {words} words")
    with pytest.raises(ConfigError, match=r"\[output\]: unknown keys \['words'\]"):
        engine_from_config({"output": {"words": 10}}, source="llmbudget.toml")
    with pytest.raises(ConfigError, match="route '/x': output: max_words is required"):
        Route("/x", output={"directive": "Short."})
    engine = engine_from_config({"output": {"max_words": 80}, "routing": {"tiers": {
        "small": {"model": "gpt-4.1-nano", "max_words": 50}, "large": ""}}}, source="t")
    assert engine.output == Output(80) and engine.routing.tiers["small"].output == Output(50)


ASK = "What is the capital of France?"


def test_a_directive_reaches_the_server_and_the_record_says_so(llm_server, engine, records):
    engine.output = Output(max_words=30)
    with proxy(llm_server) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())

        def sent() -> dict:
            return json.loads(server.received[-1][2])

        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": ASK}],
                                       temperature=0)
        assert sent()["messages"][0] == {"role": "system", "content": "Answer in at most 30 words."}
        assert sent()["max_tokens"] == 110  # 2 x 30 + 50: the app set no limit
        [record] = records
        assert record.capped and record.output == {"directive": "Answer in at most 30 words.", "max_words": 30,
                                                   "cap": 110, "source": "policy", "in": "system"}
        # a scope turns it off; a route's own directive wins over the policy's
        with llmbudget.scope(output=False):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": ASK}],
                                           max_tokens=4, temperature=0)
        assert sent()["messages"] == [{"role": "user", "content": ASK}] and records[-1].output is None
        with llmbudget.scope(output={"max_words": 10}):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": ASK}],
                                           max_tokens=8, temperature=0)
        assert sent()["messages"][0]["content"] == "Answer in at most 10 words."
        assert sent()["max_tokens"] == 8  # a cap never raises the app's own limit
        assert records[-1].output["source"] == "route" and records[-1].output["cap"] is None


def test_the_cache_keys_on_the_request_with_its_directive(llm_server, engine, records, tmp_path):
    engine.cache = llmbudget.Cache(path=str(tmp_path / "cache"))
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())

    def ask(words: int | None) -> None:
        with llmbudget.scope(output={"max_words": words} if words else False):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": ASK}],
                                           max_tokens=24, temperature=0, stop=["\n"])

    ask(20)
    ask(20)
    ask(None)
    ask(40)
    assert [r.from_cache for r in records] == [False, True, False, False]


def test_json_answers_are_judged_valid_cut_or_invalid(llm_server, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}],
                                   response_format={"type": "json_object"}, max_tokens=3, temperature=0)
    assert records[-1].output is not None and records[-1].output["json"] in ("cut", "invalid")


def test_requests_whose_limit_also_bounds_reasoning_are_told_apart():
    from llmbudget.caps import thinks

    assert thinks("messages", {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "claude-sonnet-4-5")
    assert not thinks("messages", {"thinking": {"type": "disabled"}}, "claude-sonnet-4-5")
    assert not thinks("messages", {}, "claude-sonnet-4-5")
    assert thinks("chat.completions", {}, "o3-mini") and thinks("responses", {}, "openai/gpt-5-mini")
    assert thinks("chat.completions", {"reasoning_effort": "low"}, "my-local-model")
    assert thinks("responses", {"reasoning": {"effort": "high"}}, "my-local-model")
    assert not thinks("chat.completions", {"reasoning_effort": "none"}, "gpt-4o-mini")
    assert not thinks("chat.completions", {}, "gpt-4o-mini") and not thinks("completions", {}, "o3")
    # open and other providers' reasoners, and spoken answers, whose limit holds their reasoning or audio too
    for model in ("gpt-oss-120b", "openai/gpt-oss-20b", "deepseek-reasoner", "deepseek-r1-distill-qwen-7b",
                  "qwq-32b", "qwen3-235b-a22b-thinking-2507"):
        assert thinks("chat.completions", {}, model), model
    assert thinks("chat.completions", {"modalities": ["text", "audio"]}, "gpt-4o-audio-preview")
    assert not thinks("chat.completions", {"modalities": ["text"]}, "gpt-4o-audio-preview")
    # reasoning asked for the ways other APIs take it, and models that think by default (from a red-team pass:
    # each got a directive's 290-token cap, which Anthropic's OpenAI-compatible API refuses below budget_tokens)
    assert thinks("chat.completions", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, "claude-sonnet-4-5")
    assert not thinks("chat.completions", {"thinking": {"type": "disabled"}}, "claude-sonnet-4-5")
    assert thinks("chat.completions", {"reasoning": {"max_tokens": 2000}}, "anthropic/claude-sonnet-4")
    assert thinks("chat.completions", {"chat_template_kwargs": {"enable_thinking": True}}, "my-local-model")
    assert not thinks("chat.completions", {"chat_template_kwargs": {"enable_thinking": False}}, "my-local-model")
    for model in ("gemini-2.5-pro", "google/gemini-2.5-flash", "codex-mini-latest", "qwen3-32b", "grok-4"):
        assert thinks("chat.completions", {}, model), model
    assert not thinks("chat.completions", {}, "qwen3-235b-a22b-instruct-2507")


def test_a_stored_prompt_template_gets_no_directive():
    # its own instructions live in the template: the directive went into `instructions` beside (or over) them
    body = {"model": "gpt-4.1", "prompt": {"id": "pmpt_1", "variables": {"city": "Paris"}}, "input": "Go."}
    assert apply_directive("responses", body, Output(120)) is None
    assert apply_directive("responses", {k: v for k, v in body.items() if k != "prompt"}, Output(120)) is not None


@pytest.mark.parametrize("endpoint", ["messages", "chat.completions"])
def test_an_answer_the_app_started_itself_gets_no_directive(endpoint):
    # an Anthropic prefill ("{" for JSON): the directive's cap cut a long JSON answer at 290 tokens
    body = {"model": "claude-sonnet-4-5", "max_tokens": 2000, "messages": [
        {"role": "user", "content": "List the catalogue as JSON."}, {"role": "assistant", "content": "{"}]}
    assert apply_directive(endpoint, body, Output(120)) is None
    asked = {**body, "messages": body["messages"][:1]}
    assert apply_directive(endpoint, asked, Output(120)) is not None


def test_a_schema_cap_leaves_room_for_strings_of_a_token_per_character():
    # maxLength counts characters: Chinese, Japanese or emoji take about a token each (some more), so a cap at
    # three characters a token cut valid answers in half.
    import tiktoken

    schema = {"type": "object", "required": ["summary", "tags"], "properties": {
        "summary": {"type": "string", "maxLength": 120},
        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 8}},
        "year": {"type": "integer"}}, "additionalProperties": False}
    body = chat(("user", "总结"), response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    cap = schema_cap(body)
    longest = {"summary": "这是一个非常长的中文摘要，用来测试输出上限是否足够。" * 5, "tags": ["机器学习与人工智能"[:8]] * 3,
               "year": -123456789012345}
    longest["summary"] = longest["summary"][:120]
    text = json.dumps(longest, ensure_ascii=False)
    for name in ("o200k_base", "cl100k_base"):
        assert cap is not None and len(tiktoken.get_encoding(name).encode(text)) <= cap


def test_a_routed_body_loses_what_its_new_model_refuses():
    from llmbudget.caps import suited

    body = {"model": "o4-mini", "messages": [], "max_tokens": 50, "temperature": 0, "top_p": 1, "logprobs": True}
    assert suited("chat.completions", body, "o4-mini") == {"model": "o4-mini", "messages": [],
                                                           "max_completion_tokens": 50}
    assert suited("responses", {"model": "gpt-5-mini", "input": "x", "temperature": 0.3}, "gpt-5-mini") == \
        {"model": "gpt-5-mini", "input": "x"}
    assert suited("chat.completions", {"model": "gpt-4.1-nano", "reasoning_effort": "low"}, "gpt-4.1-nano") == \
        {"model": "gpt-4.1-nano"}
    assert suited("responses", {"model": "gpt-4o", "reasoning": {"effort": "low"}}, "gpt-4o") == {"model": "gpt-4o"}
    # a reasoning model's request asking for its encrypted reasoning, routed to one that does not reason
    asked = {"model": "gpt-4.1-nano", "reasoning": {"effort": "low"},
             "include": ["reasoning.encrypted_content", "file_search_call.results"]}
    assert suited("responses", asked, "gpt-4.1-nano") == {"model": "gpt-4.1-nano",
                                                          "include": ["file_search_call.results"]}
    assert "include" not in suited("responses", {"model": "gpt-4o", "include": ["reasoning.encrypted_content"]},
                                   "gpt-4o")
    kept = {"model": "llama-3.1-8b", "max_tokens": 5, "temperature": 0.1, "reasoning_effort": "low"}
    assert suited("chat.completions", kept, "llama-3.1-8b") is kept  # what another server refuses is unknown
    assert suited("messages", {"model": "claude-haiku-4-5", "temperature": 0}, "claude-haiku-4-5") == \
        {"model": "claude-haiku-4-5", "temperature": 0}


def test_anthropic_structured_outputs_as_the_sdk_sends_them_get_no_directive():
    # anthropic 2.x sends a schema (messages.parse too) as output_config.format, not output_format: such a
    # request got "Answer in at most 40 words." and a 130-token cap, and its JSON came back cut
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}},
              "additionalProperties": False}
    body = {"model": "claude-haiku-4-5", "max_tokens": 4000, "messages": [{"role": "user", "content": "Classify"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}}}
    assert wants_json(body) and apply_directive("messages", body, Output(max_words=40)) is None
    assert schema_cap(body) is not None and schema_cap(body) < 100


def test_a_schema_cap_never_bounds_a_tool_call():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "additionalProperties": False}
    body = chat(("user", "Write the file, then say ok"), response_format={
        "type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        tools=[{"type": "function", "function": {"name": "write_file", "parameters": {"type": "object"}}}])
    assert schema_cap(body) is None
    assert schema_cap({k: v for k, v in body.items() if k != "tools"}) is not None


def test_an_enum_of_ids_is_bounded_by_its_bytes():
    import uuid

    import tiktoken

    ids = [str(uuid.UUID(int=i * 7919 + 10**30)) for i in range(40)]
    schema = {"type": "object", "properties": {"ids": {"type": "array", "maxItems": 10,
                                                       "items": {"type": "string", "enum": ids}}},
              "additionalProperties": False}
    body = chat(("user", "Pick ten"), response_format={"type": "json_schema", "json_schema": {"name": "p",
                                                                                               "schema": schema}})
    longest = json.dumps({"ids": ids[:10]}, indent=2)
    assert len(tiktoken.get_encoding("o200k_base").encode(longest)) <= schema_cap(body)


@pytest.mark.parametrize("prompt", [
    "Write a 500-word story about a dragon.", "Give me a 3-paragraph summary of the French Revolution.",
    "Write a two-page cover letter for a nursing job.", "Напиши рассказ на 500 слов о драконе.",
    "Explique en détail la Révolution française.", "用500字写一个关于龙的故事。",
])
def test_a_length_the_request_states_in_any_form_or_language_is_left_alone(prompt):
    assert says_length("chat.completions", chat(("user", prompt)))


def test_the_directives_cap_follows_what_a_word_takes_in_the_requests_language():
    out = Output(max_words=120)
    english = chat(("user", "Describe the history of the Byzantine Empire in plain words."))
    assert out.cap_for("chat.completions", english, "gpt-4o") == out.cap == 290
    amharic = chat(("user", "ስለ ባይዛንታይን ግዛት ታሪክ በቀላል ቃላት ግለጽልኝ። ፈጣኑ ቡናማ ቀበሮ ሰነፍ ውሻ ላይ በወንዙ ዳርቻ ዛሬ ዘለለ።"))
    import tiktoken

    obeying = " ".join(("ፈጣኑ ቡናማ ቀበሮ ሰነፍ ውሻ ላይ በወንዙ ዳርቻ ዛሬ ዘለለ።".split() * 20)[:120])  # 120 words
    assert len(tiktoken.get_encoding("o200k_base").encode(obeying)) <= out.cap_for("chat.completions", amharic,
                                                                                    "gpt-4o")


def test_a_schemas_refs_are_bounded_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three properties per level, each a $ref to the next level: walked without memory, 3^12 nodes (1.6 s on
    the event loop for a 2 KB response_format). Each $ref name is bounded once, within a visit budget."""
    from llmbudget import output

    levels = 12
    defs = {f"d{i}": {"type": "object", "additionalProperties": False, "required": ["a", "b", "c"],
                      "properties": {k: {"$ref": f"#/$defs/d{i + 1}"} for k in "abc"}} for i in range(levels)}
    defs[f"d{levels}"] = {"type": "boolean"}
    schema = {"$ref": "#/$defs/d0", "$defs": defs}
    monkeypatch.setattr(output, "_MAX_VISITS", 200)  # far below 3^12: met only by bounding each name once
    body = chat(("user", "x"), response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert schema_cap(body) is not None
    monkeypatch.setattr(output, "_MAX_VISITS", 10)  # a walk past its budget is unbounded: no cap, never a wrong one
    assert schema_cap(body) is None


def test_a_stated_length_is_found_after_a_long_run_of_digits() -> None:
    # the digits branch was tried at every digit of a run (quadratic: 4 KB of digits stalled the loop 1.3 s)
    assert says_length("chat.completions", chat(("user", "7" * 20_000 + " and then 500 слов, please")))
    assert not says_length("chat.completions", chat(("user", "7" * 20_000)))


def test_a_schema_cap_is_added_to_a_request_without_a_limit_only_below_what_it_would_reserve(llm_server, records):
    """A schema with long strings gave a cap of 38,446 tokens, written into a request that set none: over
    gpt-4o-mini's 16,384, so OpenAI refused a call the plain SDK sent fine."""
    def schema(length: int) -> dict:
        return {"type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "object", "required": ["summary"], "additionalProperties": False,
            "properties": {"summary": {"type": "string", "maxLength": length}}}}}

    def short(raw: bytes) -> bytes:  # the local model answers in a few tokens (its server takes no json_schema)
        body = {**json.loads(raw), "max_tokens": 4}
        body.pop("response_format")
        return json.dumps(body).encode()

    with proxy(llm_server, forward=short) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        for length, limit in ((5000, None), (40, None), (5000, 20_000)):
            extra = {} if limit is None else {"max_tokens": limit}
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": ASK}],
                                           temperature=0, response_format=schema(length), **extra)
            sent = json.loads(server.received[-1][2])
            body = chat(("user", ASK), response_format=schema(length))
            if length == 5000:
                assert schema_cap(body) > 4096 and sent.get("max_tokens") == limit  # none added; the app's kept
            else:
                assert sent["max_tokens"] == schema_cap(body) < 4096  # a small schema's cap still goes in
    assert [bool(r.output and "schema_cap" in r.output) for r in records] == [False, True, False]
