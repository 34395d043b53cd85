"""A length directive on a real instruction-following model (SmolLM2-135M-Instruct on the local server): under the
directive's cap alone the answers are cut; with the directive they end by themselves, shorter, and the cache keeps
them. The prompts are open questions whose plain answers run past the cap."""

from __future__ import annotations

import openai

import llmbudget
from llmbudget.cache import Cache

PROMPTS = ["Why do cats purr?", "How can I sleep better?", "What makes a good cup of coffee?",
           "What is machine learning?"]


def _ask(client: openai.OpenAI, prompt: str, *, max_tokens: int, output: llmbudget.Output | bool) -> str:
    with llmbudget.scope(output=output):
        answer = client.chat.completions.create(model="gpt-4o-mini", max_tokens=max_tokens, temperature=0,
                                                messages=[{"role": "user", "content": prompt}])
    return answer.choices[0].finish_reason


def test_a_directive_lets_the_answers_end_where_its_cap_alone_cuts_them(instruct_server, engine, records, tmp_path):
    engine.cache = Cache(tmp_path / "cache")
    directive = llmbudget.Output(max_words=40)
    client = openai.OpenAI(base_url=instruct_server, api_key="sk-test", max_retries=0,
                           http_client=llmbudget.http_client())

    capped = [_ask(client, prompt, max_tokens=directive.cap, output=False) for prompt in PROMPTS]
    capped_tokens = sum(record.usage.output_tokens for record in records)
    records.clear()
    directed = [_ask(client, prompt, max_tokens=300, output=directive) for prompt in PROMPTS]
    directed_tokens = sum(record.usage.output_tokens for record in records)

    assert capped.count("length") >= 3, capped  # the plain answers run past the cap
    assert directed.count("stop") >= 3, directed  # the instruction lets them finish
    assert directed_tokens < 0.8 * capped_tokens, (directed_tokens, capped_tokens)
    assert all(record.output and record.output["max_words"] == 40 and record.output["cap"] == directive.cap
               for record in records), [record.output for record in records]

    records.clear()
    again = [_ask(client, prompt, max_tokens=300, output=directive) for prompt in PROMPTS]
    served = [record.from_cache for record in records]
    assert served == [reason == "stop" for reason in directed], (served, directed)  # answers that ended are kept
    assert again == directed
