"""Deferred work: llmbudget.defer("batch") through a local Files/Batches server whose lines run on the real
local LLM server (ci/batch_server.py), driven by the real openai SDK; defer("flex") on the real server; Anthropic's
Message Batches through the same server, whose requests run on the real local Messages server (anthropic SDK)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import importlib
import json
import time
from decimal import Decimal

import anthropic
import openai
import pytest
from batch_server import batch_server
from servers import base_url, proxy

import llmbudget
from llmbudget.calls import Usage
from llmbudget.cli import main
from llmbudget.defer import Batcher, BatchError, pending_jobs, resume
from llmbudget.ledger import SQLiteLedger
from llmbudget.pricing import Pricing

defer_module = importlib.import_module("llmbudget.defer")  # llmbudget.defer is also the function
ASK = dict(model="gpt-4o-mini", max_tokens=8, temperature=0)
QUESTIONS = ["What is the capital of France?", "Say hi", "Name a colour"]


def ask(client: openai.OpenAI, question: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(messages=[{"role": "user", "content": question}], **ASK)


def batch_price(usage: Usage) -> Decimal:
    return Pricing().cost(usage.replace(service_tier="batch"), model="gpt-4o-mini").usd


def client_of(server) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0,
                         http_client=llmbudget.http_client())


def together(call, client: openai.OpenAI, questions: list[str]) -> list:  # noqa: ANN001
    """``call(client, question)`` for each question at once from threads, inside defer("batch"): a scope is a
    context variable, so each thread takes it along with copy_context()."""
    with llmbudget.defer("batch"), concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        return [f.result() for f in [pool.submit(contextvars.copy_context().run, call, client, q) for q in questions]]


@pytest.fixture
def batches(engine, tmp_path):
    engine._batcher = Batcher(linger=0.5, poll_interval=0.05, state=tmp_path / "batches")
    return engine._batcher


def test_calls_made_together_become_one_job_and_each_gets_its_answer(llm_server, engine, records, batches, tmp_path):
    with batch_server(llm_server) as server:
        answers = together(ask, client_of(server), QUESTIONS)
        [job] = server.batches.values()
    assert job["status"] == "completed" and job["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert all(answer.choices[0].message.content is not None for answer in answers)
    assert len(records) == 3 and {r.deferred for r in records} == {"batch"}
    for record, answer in zip(sorted(records, key=lambda r: r.usage.input_tokens),
                              sorted(answers, key=lambda a: a.usage.prompt_tokens)):
        assert record.usage.service_tier == "batch" and record.usage.output_tokens == answer.usage.completion_tokens
        assert record.cost_usd == batch_price(record.usage)  # gpt-4o-mini's batch rate: half the standard one
        standard = Pricing().cost(record.usage.replace(service_tier=None), model="gpt-4o-mini").usd
        assert record.deferred_saved_usd == standard - record.cost_usd > 0
    assert pending_jobs(tmp_path / "batches") == []  # the job is forgotten once its answers are in


def test_async_calls_are_batched_too(llm_server, engine, records, batches):
    with batch_server(llm_server) as server:
        async def run() -> list[openai.types.chat.ChatCompletion]:
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0,
                                          http_client=llmbudget.async_http_client()) as client:
                with llmbudget.defer("batch"):
                    return await asyncio.gather(*(client.chat.completions.create(
                        messages=[{"role": "user", "content": q}], **ASK) for q in QUESTIONS[:2]))

        answers = asyncio.run(run())
        assert len(server.batches) == 1
    assert len(answers) == 2 and [r.deferred for r in records] == ["batch", "batch"]


def test_an_expired_line_fails_alone_and_says_why(llm_server, engine, records, batches):
    with batch_server(llm_server, expire_after=1) as server:
        outcomes = together(_outcome, client_of(server), QUESTIONS[:2])
    assert sorted(isinstance(o, openai.APIStatusError) for o in outcomes) == [False, True]
    failure = next(o for o in outcomes if isinstance(o, openai.APIStatusError))
    assert failure.status_code == 504 and "ended 'expired' without running this request" in str(failure)
    assert sorted(r.status for r in records) == [200, 504]
    assert next(r for r in records if r.status == 504).cost_usd == 0


def _outcome(client: openai.OpenAI, question: str) -> object:
    try:
        return ask(client, question)
    except openai.APIStatusError as exc:
        return exc


class _Interrupted(Batcher):
    """A process that stops after creating its job (the callers get an error; the job stays in the state)."""

    def _wait(self, group, job):
        raise BatchError("the process stopped")


def test_a_job_left_by_a_restart_is_resumed_from_the_state_folder(llm_server, engine, tmp_path, capsys,
                                                                   monkeypatch):
    state = tmp_path / "batches"
    engine._batcher = _Interrupted(linger=0.2, poll_interval=0.05, state=state)
    with batch_server(llm_server) as server:
        client = client_of(server)
        with llmbudget.defer("batch"), llmbudget.scope(tenant="acme"):
            with pytest.raises(openai.APIStatusError, match="could not be read"):
                ask(client, "Say hi")
        [job] = pending_jobs(state)
        assert len(job["calls"]) == 1 and job["calls"][0]["tenant"] == "acme"
        assert main(["batches", "--state", str(state)]) == 0
        assert f"{job['id']}  1 call(s)" in capsys.readouterr().out
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        ledger = tmp_path / "ledger.db"
        assert main(["batches", "--state", str(state), "--resume", "--wait", "--ledger", str(ledger), "--json"]) == 0
    [summary] = json.loads(capsys.readouterr().out)
    assert summary == {"id": job["id"], "status": "completed", "calls": 1, "recorded": 1}
    [result] = [json.loads(line) for line in (state / f"{job['id']}.results.jsonl").read_text().splitlines()]
    assert result["status"] == 200 and result["body"]["object"] == "chat.completion"
    [record] = list(SQLiteLedger(ledger).records())
    assert (record.tenant, record.deferred, record.usage.service_tier) == ("acme", "batch", "batch")
    assert record.cost_usd == batch_price(record.usage) > 0
    assert pending_jobs(state) == []


@contextlib.contextmanager
def _left_job(llm_server, engine, state):  # noqa: ANN001
    """A job of three calls left by a process that stopped before its answers came: yields it, its server running."""
    engine._batcher = _Interrupted(linger=0.3, poll_interval=0.05, state=state)
    with batch_server(llm_server) as server:
        outcomes = together(_outcome, client_of(server), QUESTIONS)
        assert all(isinstance(outcome, openai.APIStatusError) for outcome in outcomes)
        [job] = pending_jobs(state)
        assert len(job["calls"]) == 3
        yield job


def test_a_call_whose_spend_cannot_be_read_is_skipped_and_resuming_again_records_nothing_twice(
        llm_server, engine, tmp_path, caplog):
    state = tmp_path / "batches"
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    resumer = llmbudget.Engine(ledger=ledger)
    priced = resumer.pricing.cost
    seen: list[int] = []

    def cost(usage, **kwargs):  # noqa: ANN001, ANN003 - the second call's price cannot be computed
        seen.append(1)
        if len(seen) == 3:
            raise ArithmeticError("a price that cannot be computed")
        return priced(usage, **kwargs)

    resumer.pricing.cost = cost  # type: ignore[method-assign]
    with _left_job(llm_server, engine, state) as job:
        [summary] = resume(state, api_key="sk-test", engine=resumer, wait=True, poll_interval=0.05)
        assert summary["recorded"] == 2 and summary["calls"] == 3
        assert "its spend could not be read (a price that cannot be computed)" in caplog.text
        assert resume(state, api_key="sk-test", engine=resumer, wait=True, poll_interval=0.05) == []
    assert len(list(ledger.records())) == 2  # before, the first call was recorded, then the job stopped and stayed
    lines = (state / f"{job['id']}.results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == [200, 200, 200]  # every answer is kept


def test_a_job_whose_results_cannot_be_written_records_nothing_until_it_is_resumed_again(
        llm_server, engine, tmp_path, monkeypatch):
    state = tmp_path / "batches"
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    resumer = llmbudget.Engine(ledger=ledger)

    def full_disk(src, dst):  # noqa: ANN001
        raise OSError(28, "No space left on device")

    with _left_job(llm_server, engine, state) as job:
        with monkeypatch.context() as patch:
            patch.setattr(defer_module.os, "replace", full_disk)
            with pytest.raises(OSError, match="No space left"):
                resume(state, api_key="sk-test", engine=resumer, wait=True, poll_interval=0.05)
        assert list(ledger.records()) == [] and len(pending_jobs(state)) == 1
        assert sorted(p.name for p in state.iterdir()) == [f"{job['id']}.json"]  # no half-written results left
        [summary] = resume(state, api_key="sk-test", engine=resumer, wait=True, poll_interval=0.05)
    assert summary["recorded"] == 3
    assert len(list(ledger.records())) == 3 and pending_jobs(state) == []


def _answered_as_flex(content: bytes) -> bytes:
    """The local server's real answer with the tier OpenAI echoes for a flex call (the local server names none)."""
    body = json.loads(content)
    return json.dumps({**body, "service_tier": "flex"}).encode()


def test_flex_sets_the_service_tier_and_prices_at_the_flex_rate(llm_server, engine, records):
    with proxy(llm_server, rewrite=_answered_as_flex) as flex_server, proxy(llm_server) as server:
        client = openai.OpenAI(base_url=base_url(flex_server), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with llmbudget.defer("flex"):
            answer = ask(client, "Say hi")
        assert json.loads(flex_server.received[-1][2])["service_tier"] == "flex"
        ask(client.with_options(base_url=base_url(server)), "Say hi")
        assert "service_tier" not in json.loads(server.received[-1][2])
    flex, standard = records
    assert (flex.deferred, flex.usage.service_tier) == ("flex", "flex") and standard.deferred is None
    # gpt-4o-mini has no flex price in genai-prices: the documented 50% discount
    assert flex.cost_usd == Pricing().cost(flex.usage.replace(service_tier=None), model="gpt-4o-mini").usd / 2
    assert flex.usage.output_tokens == answer.usage.completion_tokens


def test_a_flex_call_a_host_answers_without_a_tier_is_priced_at_the_standard_rate(llm_server, engine, records):
    """Another host than OpenAI's (DeepSeek, vLLM...) ignores service_tier and bills its standard rate: a flex
    call it answers without a tier was recorded at half of it."""
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    with llmbudget.defer("flex"):
        ask(client, "Say hi")
    (record,) = records
    assert record.deferred is None and record.usage.service_tier is None
    assert record.cost_usd == Pricing().cost(record.usage, model="gpt-4o-mini").usd


def test_deferred_calls_reserve_at_their_own_price(engine):
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "Summarise this report."}]}).encode()

    def worst(mode: str | None) -> Decimal:
        with llmbudget.scope(defer=mode):
            attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                                   headers={}, body=body)
            assert attempt is not None
            attempt.plan()
            return attempt.worst_case_usd()

    assert worst("batch") == worst(None) / 2 > 0


def test_defer_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of flex, batch"):
        with llmbudget.defer("later"):
            pass


def test_a_route_defers_its_calls(engine):
    from llmbudget.config import ConfigError, Policy, Route

    policy = Policy(routes=(Route("/nightly/*", defer="batch"),))
    assert policy.for_path("/nightly/summaries").defer == "batch" and policy.for_path("/chat").defer is None
    with pytest.raises(ConfigError, match="defer must be"):
        Route("/x", defer="tomorrow")


def test_a_full_job_is_sent_at_once_and_the_next_calls_start_another(llm_server, engine, records, tmp_path, caplog):
    engine._batcher = Batcher(linger=0.5, max_lines=2, poll_interval=0.05)
    with batch_server(llm_server) as server, caplog.at_level("WARNING", logger="llmbudget.defer"):
        answers = together(ask, client_of(server), QUESTIONS)
        totals = sorted(job["request_counts"]["total"] for job in server.batches.values())
    assert totals == [1, 2] and len(answers) == 3 and len(records) == 3
    # a Batcher without a state folder says, once, that a restart would lose its jobs (it said nothing)
    assert sum("kept in memory only" in r.getMessage() for r in caplog.records) == 1


# --------------------------------------------------------------------------- Anthropic's Message Batches

CLAUDE = "claude-haiku-4-5"
def ask_claude(client: anthropic.Anthropic, question: str) -> anthropic.types.Message:
    return client.messages.create(model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": question}])


def claude_outcome(client: anthropic.Anthropic, question: str) -> object:
    try:
        return ask_claude(client, question)
    except anthropic.APIStatusError as exc:
        return exc


def claude_client_of(server) -> anthropic.Anthropic:  # noqa: ANN001
    return anthropic.Anthropic(base_url=server.base_url.removesuffix("/v1"), api_key="sk-ant-test", max_retries=0,
                               http_client=llmbudget.http_client(sdk="anthropic"))


def test_messages_made_together_become_one_message_batch(messages_server, engine, records, batches, tmp_path):
    with batch_server(f"{messages_server}/v1") as server:
        answers = together(ask_claude, claude_client_of(server), QUESTIONS)
        [job] = server.batches.values()
    assert job["id"].startswith("msgbatch_") and job["processing_status"] == "ended"
    assert job["request_counts"]["succeeded"] == 3
    assert all(isinstance(a, anthropic.types.Message) and a.content for a in answers)
    assert len(records) == 3 and {r.deferred for r in records} == {"batch"}
    for record in records:
        assert record.endpoint == "messages" and record.usage.service_tier == "batch" and record.status == 200
        priced = Pricing().cost(record.usage, model=CLAUDE).usd
        standard = Pricing().cost(record.usage.replace(service_tier=None), model=CLAUDE).usd
        assert record.cost_usd == priced and record.deferred_saved_usd == standard - priced > 0
        assert 0 < priced < standard
    assert pending_jobs(tmp_path / "batches") == []


def test_async_messages_are_batched(messages_server, engine, records, batches):
    with batch_server(f"{messages_server}/v1") as server:
        async def run() -> list[anthropic.types.Message]:
            async with anthropic.AsyncAnthropic(base_url=server.base_url.removesuffix("/v1"), api_key="sk-ant-test",
                                                max_retries=0,
                                                http_client=llmbudget.async_http_client(sdk="anthropic")) as client:
                with llmbudget.defer("batch"):
                    return await asyncio.gather(*(client.messages.create(
                        model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": q}]) for q in QUESTIONS[:2]))

        answers = asyncio.run(run())
        assert len(server.batches) == 1
    assert len(answers) == 2 and [r.deferred for r in records] == ["batch", "batch"]


def test_an_expired_request_fails_alone_in_anthropic_shape(messages_server, engine, records, batches):
    with batch_server(f"{messages_server}/v1", expire_after=1) as server:
        outcomes = together(claude_outcome, claude_client_of(server), QUESTIONS[:2])
    failure = next(o for o in outcomes if isinstance(o, anthropic.APIStatusError))
    assert sum(isinstance(o, anthropic.types.Message) for o in outcomes) == 1
    assert failure.status_code == 504 and "was expired" in str(failure)
    assert failure.body["error"]["type"] == "batch_expired"  # the SDK read Anthropic's error shape
    assert sorted(r.status for r in records) == [200, 504]


def test_a_message_batch_left_by_a_restart_is_resumed(messages_server, engine, tmp_path, capsys, monkeypatch):
    state = tmp_path / "batches"
    engine._batcher = _Interrupted(linger=0.2, poll_interval=0.05, state=state)
    with batch_server(f"{messages_server}/v1") as server:
        with llmbudget.defer("batch"), llmbudget.scope(tenant="acme"):
            with pytest.raises(anthropic.APIStatusError, match="could not be read"):
                ask_claude(claude_client_of(server), "Say hi")
        [job] = pending_jobs(state)
        assert job["endpoint"] == "/v1/messages" and job["calls"][0]["tenant"] == "acme"
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        ledger = tmp_path / "ledger.db"
        assert main(["batches", "--state", str(state), "--resume", "--wait", "--ledger", str(ledger), "--json"]) == 0
    [summary] = json.loads(capsys.readouterr().out)
    assert summary == {"id": job["id"], "status": "ended", "calls": 1, "recorded": 1}
    [result] = [json.loads(line) for line in (state / f"{job['id']}.results.jsonl").read_text().splitlines()]
    assert result["status"] == 200 and result["body"]["type"] == "message"
    [record] = list(SQLiteLedger(ledger).records())
    assert (record.tenant, record.deferred, record.endpoint) == ("acme", "batch", "messages")
    assert record.cost_usd == Pricing().cost(record.usage, model=CLAUDE).usd > 0


@pytest.mark.parametrize("credential", ["api_key", "auth_token"])
def test_a_message_batch_is_made_with_the_calls_own_credential(messages_server, engine, records, batches,
                                                                 credential):
    # The server refuses (401) any request without this key, as the real API does; an SDK of 2.x sends an
    # api_key as "Authorization: Bearer", and the batch was made with a key "none" read from "x-api-key".
    with batch_server(f"{messages_server}/v1", credential="sk-ant-secret") as server:
        client = anthropic.Anthropic(base_url=server.base_url.removesuffix("/v1"), max_retries=0,
                                     http_client=llmbudget.http_client(sdk="anthropic"),
                                     **{credential: "sk-ant-secret"})
        assert ask_claude(client, "Say hi").content  # not deferred: the credential is right
        answers = together(ask_claude, client, QUESTIONS[:2])
        [job] = server.batches.values()
    assert job["request_counts"]["succeeded"] == 2
    assert all(isinstance(a, anthropic.types.Message) and a.content for a in answers)
    assert [r.deferred for r in records] == [None, "batch", "batch"]


def test_an_openai_batch_is_made_with_the_calls_own_key(llm_server, engine, records, batches):
    with batch_server(llm_server, credential="sk-secret") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-secret", max_retries=0,
                               http_client=llmbudget.http_client())
        answers = together(ask, client, QUESTIONS[:2])
        [job] = server.batches.values()
    assert job["request_counts"]["completed"] == 2 and all(a.choices[0].message.content for a in answers)


def test_a_job_whose_state_cannot_be_written_is_still_answered_and_recorded(llm_server, engine, records, tmp_path):
    # The job exists at the provider (and is paid for) once created: a state folder that cannot be written (a
    # full disk, a read-only mount; here its parent is a file) made every call fail as "never created".
    (tmp_path / "file").write_text("x")
    engine._batcher = Batcher(linger=0.1, poll_interval=0.05, state=tmp_path / "file" / "batches")
    with batch_server(llm_server) as server:
        answers = together(ask, client_of(server), QUESTIONS[:1])
        [job] = server.batches.values()
    assert job["request_counts"]["completed"] == 1 and answers[0].choices[0].message.content
    assert [(r.status, r.deferred) for r in records] == [(200, "batch")]


def test_resume_leaves_a_job_that_its_process_still_polls(llm_server, engine, records, tmp_path):
    # Resumed while its process still polled it, a job's calls were recorded twice: once by each.
    state = tmp_path / "batches"
    engine._batcher = Batcher(linger=0.1, poll_interval=0.05, state=state)
    with batch_server(llm_server, delay=1.5) as server, concurrent.futures.ThreadPoolExecutor(1) as pool:
        def call() -> object:
            with llmbudget.defer("batch"):
                return ask(client_of(server), "Say hi")

        answer = pool.submit(contextvars.copy_context().run, call)
        for _ in range(200):
            if pending_jobs(state):
                break
            time.sleep(0.02)
        [job] = pending_jobs(state)
        elsewhere = llmbudget.Engine()
        seen: list = []
        elsewhere.add_observer(seen.append)
        [summary] = resume(state, api_key="sk-test", engine=elsewhere, wait=True, poll_interval=0.05)
        assert summary == {"id": job["id"], "status": "polled by another process", "calls": 1, "recorded": 0}
        assert answer.result().choices[0].message.content
    assert seen == [] and [r.deferred for r in records] == ["batch"]
    assert pending_jobs(state) == [] and list(state.iterdir()) == []  # the lease file went with the job


def test_calls_of_another_project_never_share_a_job(llm_server, engine, records, batches):
    # a job is sent with one set of headers: a call of another OpenAI project (or with another anthropic-beta)
    # joined the first call's job, and was billed to that project
    with batch_server(llm_server) as server:
        ours = client_of(server)
        theirs = openai.OpenAI(base_url=server.base_url, api_key="sk-test", project="proj-other", max_retries=0,
                               http_client=llmbudget.http_client())
        with llmbudget.defer("batch"), concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(contextvars.copy_context().run, ask, client, question)
                       for client, question in ((ours, QUESTIONS[0]), (theirs, QUESTIONS[1]))]
            answers = [future.result() for future in futures]
        assert len(server.batches) == 2
    assert all(answer.choices[0].message.content is not None for answer in answers) and len(records) == 2


class _Down(Exception):
    """What the SDK raises while the API answers 503 (an InternalServerError carries the status)."""

    status_code = 503


def test_polling_goes_on_through_an_outage_and_every_caller_gets_its_answer(llm_server, engine, records, batches,
                                                                            monkeypatch):
    """A few seconds of 503 while a job was polled failed every caller of it (502), and the job, which ran and
    was billed, was recorded at $0."""
    retrieve = defer_module._Jobs.retrieve
    failures = []

    def flaky(self, job):  # noqa: ANN001
        if len(failures) < 3:
            failures.append(job)
            raise _Down("Error code: 503 - the API is down")
        return retrieve(self, job)

    monkeypatch.setattr(defer_module._Jobs, "retrieve", flaky)
    with batch_server(llm_server) as server:
        answers = together(ask, client_of(server), QUESTIONS)
    assert len(failures) == 3 and all(answer.choices[0].message.content is not None for answer in answers)
    assert len(records) == 3 and all(r.status == 200 and r.cost_usd > 0 for r in records)


def test_a_refusal_while_polling_still_fails_the_callers_at_once(llm_server, engine, batches, monkeypatch):
    def gone(self, job):  # noqa: ANN001
        raise BatchError("no such batch") from openai.NotFoundError(
            "gone", response=openai._base_client.httpx.Response(404, request=openai._base_client.httpx.Request(
                "GET", "http://x")), body=None)

    monkeypatch.setattr(defer_module._Jobs, "retrieve", gone)
    with batch_server(llm_server) as server:
        outcomes = together(_outcome, client_of(server), QUESTIONS[:1])
    assert isinstance(outcomes[0], openai.APIStatusError) and outcomes[0].status_code == 502


def test_calls_to_different_models_go_in_jobs_of_their_own(llm_server, engine, records, batches):
    """One job held two models, which OpenAI's Batch API refuses: both calls failed, the reason dropped."""
    def ask_model(client, model):  # noqa: ANN001
        return client.chat.completions.create(messages=[{"role": "user", "content": "Say hi"}], model=model,
                                              max_tokens=8, temperature=0)

    with batch_server(llm_server) as server:
        answers = together(ask_model, client_of(server), ["gpt-4o-mini", "gpt-4.1-nano"])
        jobs = list(server.batches.values())
    assert len(jobs) == 2 and all(job["request_counts"]["total"] == 1 for job in jobs)
    assert all(answer.choices[0].message.content is not None for answer in answers)


def test_a_job_that_fails_says_why(engine):
    jobs = defer_module._Jobs("http://127.0.0.1:9/v1", {}, 1.0)
    done = {"status": "failed", "errors": {"data": [{"message": "A batch may use one model only."}]}}
    status, body = jobs.missing("batch_1", done)
    assert status == 500 and "one model only" in json.loads(body)["error"]["message"]


def test_a_create_whose_answer_is_lost_adopts_the_job_instead_of_making_a_second(llm_server, engine, records,
                                                                                 tmp_path):
    """The SDK sent a create that timed out again: two jobs ran (and were billed) for one call."""
    import batch_server as batch_server_module

    class SlowCreate(batch_server_module._Handler):
        def do_POST(self) -> None:  # noqa: N802
            if self.path.startswith("/v1/batches") and not getattr(self.server, "slowed", False):
                self.server.slowed = True
                self.server.create_batch(json.loads(self._body()))  # made, but its answer comes too late
                time.sleep(1.5)
                with contextlib.suppress(OSError):
                    self._reply(200, {})
                return
            super().do_POST()

    engine._batcher = Batcher(linger=0.1, poll_interval=0.05, timeout=1.0, state=tmp_path / "batches")
    with batch_server(llm_server) as server:
        server.RequestHandlerClass = SlowCreate
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=2,
                               http_client=llmbudget.http_client())
        with llmbudget.defer("batch"):
            answer = ask(client, "Say hi")
        assert answer.choices[0].message.content is not None
        assert len(server.batches) == 1
    assert len(records) == 1 and records[0].status == 200


def test_resume_goes_on_past_a_job_the_api_does_not_know(llm_server, engine, tmp_path, capsys, monkeypatch):
    """One job the API answered 404 for stopped --resume with a traceback: the finished jobs after it waited."""
    state = tmp_path / "batches"
    ledger = tmp_path / "ledger.db"
    with _left_job(llm_server, engine, state) as job:
        gone = {**job, "id": "batch_000gone"}
        (state / "batch_000gone.json").write_text(json.dumps(gone))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        assert main(["batches", "--state", str(state), "--resume", "--wait", "--ledger", str(ledger)]) == 1
        out = capsys.readouterr().out
    assert "batch_000gone: not resumed" in out and f"{job['id']}: completed, 3 of 3 call(s) recorded" in out
    assert [j["id"] for j in pending_jobs(state)] == ["batch_000gone"]  # kept for a later --resume
    assert len(list(SQLiteLedger(ledger).records())) == 3


def test_resume_refuses_to_record_nowhere(llm_server, engine, tmp_path, capsys, monkeypatch):
    """Without --ledger (and no policy with a ledger) --resume recorded into memory and forgot the job."""
    state = tmp_path / "batches"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMBUDGET_POLICY", raising=False)
    with _left_job(llm_server, engine, state) as job:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        assert main(["batches", "--state", str(state), "--resume", "--wait"]) == 2
        assert "give --ledger FILE" in capsys.readouterr().err
        assert [j["id"] for j in pending_jobs(state)] == [job["id"]]
        (tmp_path / "llmbudget.toml").write_text('ledger = "spend.db"\n[prices]\n"gpt-4o-mini" = '
                                                 '{ input = 1, output = 2 }\n')
        assert main(["batches", "--state", str(state), "--resume", "--wait"]) == 0
    records = list(SQLiteLedger(tmp_path / "spend.db").records())
    assert len(records) == 3 and all(r.price_source == "override" for r in records)  # the app's own prices


def test_an_async_caller_that_gives_up_still_has_its_batched_call_recorded(llm_server, engine, records, batches):
    """The line still ran and was billed, but a cancelled caller's call was recorded as an 8-token estimate and the
    job forgotten: its spend reached neither the ledger nor the budget."""
    with batch_server(llm_server) as server:
        async def give_up() -> None:
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0,
                                          http_client=llmbudget.async_http_client()) as client:
                with llmbudget.defer("batch"), pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.chat.completions.create(
                        messages=[{"role": "user", "content": "Say hi"}], **ASK), timeout=0.1)

        asyncio.run(give_up())
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
        [job] = server.batches.values()
    [record] = records
    assert job["status"] == "completed" and record.status == 200 and not record.usage.estimated
    assert record.usage.service_tier == "batch" and record.cost_usd == batch_price(record.usage) > 0


def test_finding_a_lost_create_reads_one_page_of_jobs():
    """Iterating the SDK's list followed every page: 300 requests in an organisation of 30,000 jobs."""
    class Job:
        def __init__(self, i: int) -> None:
            self.id, self.metadata = f"batch_{i}", {"llmbudget_job": f"m{i}"}

    class Page:
        data = [Job(i) for i in range(100)]

        def __iter__(self):  # what the SDK's auto-paging does
            raise AssertionError("walked past the first page")

    class Batches:
        def list(self, limit: int) -> Page:
            assert limit == 100
            return Page()

    class Client:
        batches = Batches()

    assert defer_module._find_created(Client(), "m7") == "batch_7"
    assert defer_module._find_created(Client(), "m500") is None


def test_resume_keeps_a_job_whose_records_the_ledger_could_not_take(llm_server, engine, tmp_path, capsys,
                                                                     monkeypatch):
    """With the ledger's write lock held by another process, --resume said "3 of 3 call(s) recorded", forgot the
    job, and the records stayed in memory only: none reached the file."""
    import sqlite3

    state = tmp_path / "batches"
    ledger = tmp_path / "ledger.db"
    SQLiteLedger(ledger)  # the file and its table
    with _left_job(llm_server, engine, state) as job:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process writing
        try:
            assert main(["batches", "--state", str(state), "--resume", "--wait", "--ledger",
                         f"{ledger}"]) == 1
            out = capsys.readouterr().out
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert f"{job['id']}: not resumed" in out and "could not be written" in out
        assert [j["id"] for j in pending_jobs(state)] == [job["id"]]  # kept for a later --resume
        assert main(["batches", "--state", str(state), "--resume", "--wait", "--ledger", str(ledger)]) == 0
    assert len(list(SQLiteLedger(ledger).records())) == 3  # once: nothing of the first try was written later


def test_a_result_line_that_does_not_read_fails_its_own_call_alone(llm_server, engine, records, batches,
                                                                   monkeypatch, caplog):
    """One truncated line in the output file failed every call of the job (502, $0), and `--resume` failed on
    it for good: the calls that ran and were billed never reached the ledger. The call whose line did not read
    (it may have run, and the job is forgotten) was then recorded at $0 although its budget was charged what it
    held: it is recorded at that, estimated, as a batched call."""
    from batch_server import BatchServer

    add_file = BatchServer.add_file

    def with_a_bad_line(self, content, filename, purpose):  # noqa: ANN001
        if purpose == "batch_output":
            lines = content.splitlines(keepends=True)
            content = b"".join(lines[1:]) + lines[0][:40] + b"\n" + b'{"custom_id": 5}\n'  # the first cut short
        return add_file(self, content, filename, purpose)

    monkeypatch.setattr(BatchServer, "add_file", with_a_bad_line)
    with batch_server(llm_server) as server:
        outcomes = together(_outcome, client_of(server), QUESTIONS)
    failed = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert len(failed) == 1 and failed[0].status_code == 502 and "did not read" in str(failed[0])
    assert sorted(r.status for r in records) == [200, 200, 502]
    assert all(r.cost_usd > 0 for r in records if r.status == 200)
    [lost] = [r for r in records if r.status == 502]
    read = [r for r in records if r.status == 200]
    assert lost.estimated and lost.deferred == "batch" and lost.cost_usd > max(r.cost_usd for r in read)
    assert caplog.text.count("does not read") == 2


def test_a_message_batch_result_line_that_does_not_read_fails_its_own_call_alone(messages_server, engine, records,
                                                                                 batches, monkeypatch):
    from batch_server import BatchServer

    run = BatchServer._run_messages

    def with_a_bad_line(self, batch_id, requests):  # noqa: ANN001
        run(self, batch_id, requests)
        self.batches[batch_id]["_results"] += (b'{"custom_id": "x", "result": {"type": "succ\n'  # cut short
                                               b'{"custom_id": "y", "result": {"type": "succeeded"}}\n'  # no message
                                               b'{"custom_id": "z", "result": {"type": "errored", "error": "busy"}}\n')

    monkeypatch.setattr(BatchServer, "_run_messages", with_a_bad_line)
    with batch_server(f"{messages_server}/v1") as server:
        answers = together(claude_outcome, claude_client_of(server), QUESTIONS[:2])
    assert all(isinstance(a, anthropic.types.Message) for a in answers)
    assert [r.status for r in records] == [200, 200]


def test_a_job_that_counts_calls_run_without_their_results_charges_and_records_what_they_held(
        llm_server, engine, records, batches, monkeypatch):
    """A job that ended ``completed`` with 3 requests run but no output file gave its callers "ended without
    running this request", at $0, its holds released and the job forgotten: billed calls charged nothing."""
    from batch_server import BatchServer

    run = BatchServer._run

    def without_its_output(self, batch_id, lines):  # noqa: ANN001
        run(self, batch_id, lines)
        self.batches[batch_id]["output_file_id"] = None

    monkeypatch.setattr(BatchServer, "_run", without_its_output)
    with batch_server(llm_server) as server:
        outcomes = together(_outcome, client_of(server), QUESTIONS)
    assert all(isinstance(o, openai.APIStatusError) and o.status_code == 502 and "results are missing" in str(o)
               for o in outcomes)
    assert [r.status for r in records] == [502] * 3
    assert all(r.estimated and r.deferred == "batch" and r.cost_usd > 0 for r in records)
    assert not pending_jobs(batches.state)  # (no --resume could read them either)


def test_a_message_batch_result_listed_again_as_an_error_keeps_its_answer(messages_server, engine, records, batches,
                                                                           monkeypatch):
    """A custom_id answered and then listed again as errored lost the billed answer: the caller got an error and
    the call was charged $0."""
    from batch_server import BatchServer

    run = BatchServer._run_messages

    def listed_twice(self, batch_id, requests):  # noqa: ANN001
        run(self, batch_id, requests)
        batch = self.batches[batch_id]
        first = json.loads(batch["_results"].splitlines()[0])
        again = {"custom_id": first["custom_id"], "result": {
            "type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "listed again"}}}}
        batch["_results"] += json.dumps(again).encode() + b"\n"

    monkeypatch.setattr(BatchServer, "_run_messages", listed_twice)
    with batch_server(f"{messages_server}/v1") as server:
        answers = together(claude_outcome, claude_client_of(server), QUESTIONS[:2])
    assert all(isinstance(a, anthropic.types.Message) for a in answers)
    assert [r.status for r in records] == [200, 200] and all(r.cost_usd > 0 for r in records)


def test_a_job_whose_results_cannot_be_read_charges_what_its_calls_held(llm_server, engine, records, batches,
                                                                        monkeypatch):
    """The job ran and is billed, but its calls' holds were released at $0: a budget that fits three calls let
    six run (the first three recorded only by `--resume`, in the ledger)."""
    body = {"messages": [{"role": "user", "content": "Say hi"}], **ASK}

    def held() -> Decimal:
        with llmbudget.scope(defer="batch"):
            attempt = engine.begin(url=f"{llm_server}/chat/completions", path="/v1/chat/completions", headers={},
                                   body=json.dumps(body).encode())
            assert attempt is not None
            attempt.plan()
            return attempt.worst_case_usd()

    budget = llmbudget.Budget(str(3 * held()), per="tenant", period="month")
    results = defer_module._Jobs.results
    unreadable = [True]

    def gone(self, done):  # noqa: ANN001
        if unreadable[0]:
            raise BatchError("downloading output_file_id: 404 the file is gone")
        return results(self, done)

    monkeypatch.setattr(defer_module._Jobs, "results", gone)
    with batch_server(llm_server) as server, llmbudget.scope(tenant="acme", budgets=[budget]):
        first = together(lambda client, q: _outcome(client, "Say hi"), client_of(server), QUESTIONS)
        assert [o.status_code for o in first] == [502] * 3  # type: ignore[union-attr]
        unreadable[0] = False
        second = together(lambda client, q: _outcome(client, "Say hi"), client_of(server), QUESTIONS[:1])
    assert isinstance(second[0], openai.APIStatusError) and second[0].status_code == 402  # the budget is spent
    assert len(server.batches) == 1


def test_a_flex_call_to_a_host_without_flex_reserves_at_the_standard_price(engine):
    """Booked at half price, a call a host answers at its standard rate spent twice what its budget allowed."""
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "Summarise this report."}]}).encode()

    def worst(mode: str | None, base_url: str) -> Decimal:
        with llmbudget.scope(defer=mode):
            attempt = engine.begin(url=f"{base_url}/chat/completions", path="/v1/chat/completions", headers={},
                                   body=body)
            assert attempt is not None
            attempt.plan()
            return attempt.worst_case_usd()

    assert worst("flex", "https://api.openai.com/v1") == worst(None, "https://api.openai.com/v1") / 2 > 0
    assert worst("flex", "http://vllm.internal:8000/v1") == worst(None, "http://vllm.internal:8000/v1") > 0


def test_a_resumed_message_batch_keeps_what_the_prompt_cache_saved(engine):
    """The record a live call makes has it; the one `--resume` made had $0."""
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE, "stop_reason": "end_turn",
              "content": [{"type": "text", "text": "hi"}],
              "usage": {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 3000}}

    class Jobs(defer_module._MessageBatches):
        def results(self, done):  # noqa: ANN001
            return {"c1": (200, json.dumps(answer).encode())}

    job = {"id": "msgbatch_1", "endpoint": "/v1/messages", "base_url": "https://api.anthropic.com/v1",
           "calls": [{"custom_id": "c1", "tenant": "acme", "request_id": None, "model": CLAUDE, "input_estimate": 20,
                      "output_as_reported": False}]}
    _, [record] = defer_module._job_records(job, Jobs("https://api.anthropic.com/v1", {}, 5.0),
                                            {"id": "msgbatch_1"}, engine)
    assert record.prompt_cache_saved_usd > 0
    assert record.prompt_cache_saved_usd == engine.pricing.prompt_cache_saving(
        record.usage, model=CLAUDE, base_url="https://api.anthropic.com/v1")


def test_a_sync_caller_interrupted_while_its_line_waits_still_has_its_call_recorded(llm_server, engine, records,
                                                                                    batches, monkeypatch):
    """KeyboardInterrupt (or a worker's SystemExit) in a caller waiting on its job: the hold was released and
    nothing recorded, though the line ran and was billed (the async caller that gives up was handled)."""
    submit = Batcher.submit

    def interrupted(self, **kwargs):  # noqa: ANN001, ANN003
        future = submit(self, **kwargs)
        waited = future.result

        def result(timeout=None):  # noqa: ANN001 - the caller's wait is interrupted; later reads are not
            future.result = waited  # type: ignore[method-assign]
            raise KeyboardInterrupt

        future.result = result  # type: ignore[method-assign]
        return future

    monkeypatch.setattr(Batcher, "submit", interrupted)
    with batch_server(llm_server) as server:
        with llmbudget.defer("batch"), pytest.raises(KeyboardInterrupt):
            ask(client_of(server), "Say hi")
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
    [record] = records
    assert record.status == 200 and record.cost_usd == batch_price(record.usage) > 0
