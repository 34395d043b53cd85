"""The Batcher's grouping under concurrent submissions: a job never holds more than ``max_lines`` calls."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import llmbudget
from llmbudget.defer import Batcher, _job_records


class _Recording(Batcher):
    """A Batcher that records the groups it would send instead of sending them."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sent: list[int] = []
        self._sent_lock = threading.Lock()

    def _run(self, group) -> None:  # noqa: ANN001 - the group as Batcher sends it
        with self._sent_lock:
            self.sent.append(len(group.calls))


def test_concurrent_calls_never_make_a_job_larger_than_max_lines() -> None:
    for _ in range(5):
        batcher = _Recording(linger=60.0, max_lines=2, poll_interval=1.0)
        start = threading.Barrier(8)

        def submit_many(batcher: _Recording = batcher, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(100):
                batcher.submit(url="http://127.0.0.1:9/v1/chat/completions", path="/v1/chat/completions",
                               headers={"authorization": "Bearer k"}, body={"model": "m", "messages": []},
                               tenant=None, request_id=None)

        threads = [threading.Thread(target=submit_many) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for thread in threading.enumerate():
            if thread.name == "llmbudget-batch":
                thread.join(timeout=10)
        with batcher._lock:  # a last group of one may still wait for its linger
            left = [len(g.calls) for g in batcher._groups.values()]
            for g in batcher._groups.values():
                if g.timer is not None:
                    g.timer.cancel()
        assert max(batcher.sent) <= 2, sorted(batcher.sent)[-5:]
        assert sum(batcher.sent) + sum(left) == 800


def test_a_resumed_batch_line_is_charged_its_tool_fees_as_a_live_answer_is() -> None:
    """`llmbudget batches --resume` read only a line's usage: an o3 line with two web searches and a file search
    was recorded at $0.0046 (its tokens) instead of $0.0271 (plus $0.01 per search and $0.0025 per file search)."""
    answer = {"id": "resp_1", "object": "response", "status": "completed", "model": "o3-2025-04-16",
              "output": [{"type": "web_search_call", "id": "ws1", "status": "completed"},
                         {"type": "web_search_call", "id": "ws2", "status": "completed"},
                         {"type": "file_search_call", "id": "fs1", "status": "completed", "queries": ["q"]},
                         {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
              "usage": {"input_tokens": 3000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 400,
                        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 3400}}

    class Results:
        def results(self, done: Any) -> dict[str, tuple[int, bytes]]:
            return {"c1": (200, json.dumps(answer).encode())}

    job = {"id": "batch_1", "endpoint": "/v1/responses", "base_url": "https://api.openai.com/v1",
           "calls": [{"custom_id": "c1", "model": "o3", "tenant": None, "request_id": "r"}]}
    _, records = _job_records(job, Results(), {}, llmbudget.Engine())  # type: ignore[arg-type]
    (record,) = records
    assert (record.usage.web_searches, record.usage.file_searches) == (2, 1)
    tokens = (Decimal(3000) * 1 + Decimal(400) * 4) / 10**6  # o3 at the batch price: $1 / $4 per 1M
    assert record.cost_usd == tokens + Decimal("0.02") + Decimal("0.0025")


def test_a_batch_answer_whose_usage_leaves_counts_out_is_charged_their_estimates() -> None:
    """A batch line with ``usage: {}`` was recorded at $0, not even flagged estimated; a live answer so made is
    charged its estimates. The job keeps each call's input estimate for it (an older job file has none: its
    output is estimated all the same)."""
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
              "choices": [{"index": 0, "finish_reason": "tool_calls",
                           "message": {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "t1", "type": "function",
                                "function": {"name": "lookup", "arguments": '{"city": "Paris", "days": 3}'}}]}}],
              "usage": {}}

    class Results:
        def results(self, done: Any) -> dict[str, tuple[int, bytes]]:
            return {"c1": (200, json.dumps(answer).encode()), "c2": (200, json.dumps(answer).encode())}

    job = {"id": "batch_1", "endpoint": "/v1/chat/completions", "base_url": "https://api.openai.com/v1",
           "calls": [{"custom_id": "c1", "model": "gpt-4o-mini", "tenant": None, "request_id": "r",
                      "input_estimate": 120},
                     {"custom_id": "c2", "model": "gpt-4o-mini", "tenant": None, "request_id": "r"}]}
    _, (with_estimate, older) = _job_records(job, Results(), {}, llmbudget.Engine())  # type: ignore[arg-type]
    assert with_estimate.estimated and older.estimated
    assert with_estimate.usage.input_tokens == 120 and older.usage.input_tokens == 0
    assert with_estimate.usage.output_tokens == older.usage.output_tokens > 5  # the tool call's arguments
    assert with_estimate.cost_usd > older.cost_usd > 0


def test_a_batch_line_that_allows_no_output_keeps_its_reported_zero() -> None:
    """An echoed prompt scored with max_tokens 0 answers with the prompt as its text: its 0 output was estimated
    from that text, the prompt charged twice (a live call keeps it)."""
    from llmbudget.defer import _Call, _output_as_reported

    prompt = "The quick brown fox jumps over the lazy dog. " * 10
    answer = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
              "choices": [{"index": 0, "finish_reason": "length", "text": prompt, "logprobs": None}],
              "usage": {"prompt_tokens": 101, "completion_tokens": 0, "total_tokens": 101}}
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "echo": True, "max_tokens": 0}
    line = {"custom_id": "c1", "method": "POST", "url": "/v1/completions", "body": body}
    assert _output_as_reported(_Call("c1", line, None, "r", body["model"]))
    assert not _output_as_reported(_Call("c1", {**line, "body": {**body, "echo": False, "max_tokens": 5}}, None, "r",
                                         body["model"]))

    class Results:
        def results(self, done: Any) -> dict[str, tuple[int, bytes]]:
            return {"c1": (200, json.dumps(answer).encode())}

    job = {"id": "batch_1", "endpoint": "/v1/completions", "base_url": "https://api.openai.com/v1",
           "calls": [{"custom_id": "c1", "model": body["model"], "tenant": None, "request_id": "r",
                      "input_estimate": 100, "output_as_reported": True}]}
    _, (record,) = _job_records(job, Results(), {}, llmbudget.Engine())  # type: ignore[arg-type]
    assert (record.usage.input_tokens, record.usage.output_tokens, record.estimated) == (101, 0, False)


class _Grouping(_Recording):
    """A Batcher that keeps the groups it would send."""

    def _run(self, group) -> None:  # noqa: ANN001 - the group as Batcher sends it
        with self._sent_lock:
            self.groups.append(group)


def test_a_gateways_base_url_keeps_its_own_path() -> None:
    # behind a gateway whose path holds "/v1/" (Cloudflare AI Gateway), files and batches went to the gateway's
    # root and each line named "/v1/ACCT/GW/openai/chat/completions": every deferred call failed
    batcher = _Grouping(linger=60.0, max_lines=1, poll_interval=1.0)
    batcher.groups = []
    for url in ("https://gateway.ai.cloudflare.com/v1/acct/gw/openai/chat/completions",
                "https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/responses",
                "https://api.anthropic.com/v1/messages"):
        batcher.submit(url=url, path="/v1/chat/completions", headers={"authorization": "Bearer k"},
                       body={"model": "m", "messages": []}, tenant=None, request_id=None)
    sent = [(group.base_url, group.calls[0].line["url"]) for group in batcher.groups]
    assert sent == [("https://gateway.ai.cloudflare.com/v1/acct/gw/openai", "/v1/chat/completions"),
                    ("https://api.openai.com/v1", "/v1/chat/completions"), ("https://api.openai.com/v1", "/v1/responses"),
                    ("https://api.anthropic.com/v1", "/v1/messages")]
