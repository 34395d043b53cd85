"""Deferred work at half price: OpenAI's ``flex`` service tier, its Batch API and Anthropic's Message Batches.

``with llmbudget.defer("flex"):`` sends the block's OpenAI chat and Responses calls with
``service_tier: "flex"`` (slower, may answer 429 when capacity is short: the SDK's
retries handle it; give such clients a long timeout).

``with llmbudget.defer("batch"):`` collects the block's non-streamed OpenAI calls into
Batch API jobs instead of sending them: each call waits while the engine's :class:`Batcher`
(``configure(batcher=Batcher(state=...))``; without a ``state`` folder, in memory only) gathers
the calls made within ``linger`` seconds (from threads or asyncio tasks), uploads them as a
JSONL file (``POST /v1/files``, purpose ``batch``), creates the job (``POST /v1/batches``),
polls it, downloads the output and error files and hands every caller its own answer,
matched by ``custom_id``, as if the server had answered it (Anthropic's Messages calls become a
Message Batch instead: ``POST /v1/messages/batches``, polled until ``ended``, results from its
``results_url``). A line the job could not run
(failed, expired, cancelled) gets an error answer saying so; the SDK raises it for that
call alone. Jobs are kept in ``state`` (a folder: the job id and its pending calls) until
their results are in, so after a restart ``llmbudget batches --resume`` fetches them and
records their spend.

Budgets reserve at the batch (or flex) price; records carry ``usage.service_tier`` ``"batch"``
(or the ``"flex"`` the server reports) and are priced at genai-prices' batch and flex rates
where it lists them, else at the standard rate less ``Pricing.deferred_discount`` (50%).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .providers._base import output_as_reported

if TYPE_CHECKING:
    from .scope import Scope

log = logging.getLogger("llmbudget.defer")
_FLUSH_TRIES = 3  # --resume: writes of a job's records to the ledger before it is kept for a later --resume
#: The endpoints a job's lines name, as the path after an API's base URL ("chat/completions" before "completions").
_ENDPOINTS = ("chat/completions", "responses", "embeddings", "completions", "messages")

__all__ = ["DEFER_MODES", "BatchError", "Batcher", "defer", "pending_jobs", "resume"]

DEFER_MODES = ("flex", "batch")
_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_FORWARDED = ("authorization", "openai-organization", "openai-project", "user-agent",
              "x-api-key", "anthropic-version", "anthropic-beta")
#: The forwarded headers that change what a job does or who pays for it (not the SDK's user-agent).
_GROUPING = frozenset(_FORWARDED) - {"user-agent"}
_Key = tuple[str, str, tuple[tuple[str, str], ...], str | None]
#: How many times a finished job's results are fetched again after an error that may pass (a 5xx, a 429, a
#: timeout, a dropped connection) before its callers are failed; polling goes on through such errors.
_RESULT_TRIES = 5
_MAX_BACKOFF_S = 300.0


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is an error that may pass: the API busy or down for a while, a timeout,
    a dropped connection; not a refusal (401, 403, 404, a bad request)."""
    seen = 0
    error: BaseException | None = exc
    while error is not None and seen < 5:
        status = getattr(error, "status_code", None)
        if isinstance(status, int):
            return status in (408, 409, 429) or status >= 500
        if isinstance(error, (OSError, TimeoutError)) or any(
                word in type(error).__name__ for word in ("Connection", "Timeout")):
            return True
        error, seen = error.__cause__, seen + 1
    return False


class BatchError(RuntimeError):
    """A batch job could not be created or read (the message says which step and why)."""


@contextlib.contextmanager
def defer(mode: str = "batch") -> Iterator[Scope]:
    """Defer the block's calls: ``"flex"`` (OpenAI's flex service tier) or ``"batch"`` (OpenAI's Batch API,
    Anthropic's Message Batches)."""
    if mode not in DEFER_MODES:
        raise ValueError(f"defer: mode must be one of {', '.join(DEFER_MODES)}, got {mode!r}")
    from .scope import scope

    with scope(defer=mode) as current:
        yield current


@dataclass
class _Call:
    custom_id: str
    line: dict[str, Any]
    tenant: str | None
    request_id: str | None
    model: str | None
    future: concurrent.futures.Future[tuple[int, bytes]] = field(default_factory=concurrent.futures.Future)


@dataclass
class _Group:
    base_url: str
    path: str
    headers: dict[str, str]
    jobs: _Jobs
    calls: list[_Call] = field(default_factory=list)
    timer: threading.Timer | None = None


class Batcher:
    """Gathers deferred calls into Batch API jobs (Message Batches for Anthropic's) and hands their answers back.

    - ``linger``: seconds a job waits for more calls after its first (default 1).
    - ``max_lines``: a job is sent as soon as it has this many calls (the API allows 50,000).
    - ``poll_interval``: seconds between status checks (default 10; the API's jobs take minutes to hours).
    - ``completion_window``: the job's window (``"24h"``, the only one the API offers).
    - ``state``: a folder keeping each job until its results are in (None: in memory only).
    - ``timeout``: seconds an HTTP request to the API may take.
    """

    def __init__(self, *, linger: float = 1.0, max_lines: int = 50_000, poll_interval: float = 10.0,
                 completion_window: str = "24h", state: str | os.PathLike[str] | None = None,
                 timeout: float = 120.0) -> None:
        if linger < 0 or poll_interval <= 0 or not 1 <= max_lines <= 50_000:
            raise ValueError("Batcher: linger >= 0, poll_interval > 0 and 1 <= max_lines <= 50,000 are required")
        self.linger, self.max_lines, self.poll_interval = linger, max_lines, poll_interval
        self.completion_window, self.timeout = completion_window, timeout
        self.state = Path(state) if state is not None else None
        self._warned_stateless = False
        self._groups: dict[_Key, _Group] = {}
        self._leases: dict[str, int] = {}  # job id -> the file descriptor of its locked lease file
        self._lock = threading.Lock()

    @property
    def hold_seconds(self) -> float:
        """How long a batched call's budget hold must last: the job's window (``"24h"``; hours, minutes or
        seconds as ``"90m"``, ``"3600s"``) and an hour to poll and fetch the results. A shorter hold would lapse
        while the job runs and let other calls spend what the job will."""
        window = self.completion_window.strip().lower()
        unit = {"h": 3600.0, "m": 60.0, "s": 1.0}.get(window[-1:], 0.0)
        try:
            seconds = float(window[:-1]) * unit
        except ValueError:
            seconds = 0.0
        return (seconds if seconds > 0 else 86_400.0) + 3600.0

    # -- the calls ---------------------------------------------------------------------------------

    def submit(self, *, url: str, path: str, headers: dict[str, str], body: dict[str, Any], tenant: str | None,
               request_id: str | None) -> concurrent.futures.Future[tuple[int, bytes]]:
        """Queue one call; its future gets (status, JSON body) once the job is done."""
        plain = url.split("?", 1)[0]
        known = next((s for s in _ENDPOINTS if plain.endswith("/" + s)), None)
        if known is not None:  # the API's own path after the base URL, whatever the base holds (a gateway's "/v1/")
            base_url, endpoint = plain[: -len(known) - 1], "/v1/" + known
        else:
            root, _, rest = url.partition("/v1/")
            base_url = root + "/v1" if rest else url.rsplit("/", 1)[0]
            endpoint = "/v1/" + rest if rest else path
        call = _Call(custom_id=f"llmbudget-{uuid.uuid4().hex}", tenant=tenant, request_id=request_id,
                     model=body.get("model") if isinstance(body.get("model"), str) else None,
                     line={"method": "POST", "url": endpoint, "body": body})
        call.line["custom_id"] = call.custom_id
        kept = {k: v for k, v in headers.items() if k.lower() in _FORWARDED}
        # calls share a job only when every header the job is sent with is theirs too: a beta, an API version,
        # an organisation or project (billed there) apply to the whole batch
        # and, at OpenAI's Batch API, share a model: a job's input file may name one model only
        model = None if _jobs_for(endpoint).anthropic else call.model
        key = (base_url, endpoint, tuple(sorted((k.lower(), v) for k, v in kept.items() if k.lower() in _GROUPING)),
               model)
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                jobs = _jobs_for(endpoint)(base_url, kept, self.timeout)
                group = self._groups[key] = _Group(base_url, endpoint, kept, jobs)
                group.timer = threading.Timer(self.linger, self._flush, args=(key, group))
                group.timer.daemon = True
                group.timer.start()
            group.calls.append(call)
            full = len(group.calls) >= self.max_lines
            if full:  # taken out under the lock: a call arriving next starts a new group, never joins this one
                del self._groups[key]
        if full:
            self._send(group)
        return call.future

    def _flush(self, key: _Key, group: _Group) -> None:
        """Send ``group`` as a job when its linger ends, unless it was sent already (full)."""
        with self._lock:
            if self._groups.get(key) is not group:
                return  # sent already; a newer group under the same key has its own timer
            del self._groups[key]
        self._send(group)

    def _send(self, group: _Group) -> None:
        """Send ``group`` (already taken out of ``_groups``) as a job in a thread of its own."""
        if not group.calls:
            return
        if group.timer is not None:
            group.timer.cancel()
        thread = threading.Thread(target=self._run, args=(group,), name="llmbudget-batch", daemon=True)
        thread.start()

    def _run(self, group: _Group) -> None:
        jobs = group.jobs
        try:
            job = self._create(group)
        except Exception as exc:
            log.warning("llmbudget: a batch of %d call(s) could not be created: %s", len(group.calls), exc)
            _fail_all(group.calls, jobs.error(502, f"llmbudget: the batch job could not be created: {exc}",
                                              "batch_failed"))
            return
        try:
            done = self._wait(group, job)
            answers = self._results(group, done)
        except Exception as exc:
            log.warning("llmbudget: batch %s could not be read: %s; `llmbudget batches --resume` fetches it later",
                        job, exc)
            self._unlease(job)  # this process no longer polls it: --resume may take it
            for call in group.calls:  # it ran and is billed: each call is charged what it held, not released
                call.future.job_ran = JOB_RESUMABLE  # type: ignore[attr-defined]
            _fail_all(group.calls, jobs.error(502, f"llmbudget: batch {job} could not be read: {exc}",
                                              "batch_unreadable"))
            return
        ran = jobs.ran(done)  # what the job says ran and is billed, against the answers its results give
        unaccounted = ran - sum(200 <= status < 300 for status, _ in answers.values()) if ran is not None else 0
        if unaccounted > 0:  # (completed with no output file, a result line left out): they ran, and are billed
            done[_UNACCOUNTED] = unaccounted
            log.warning("llmbudget: batch %s counts %d request(s) run with no answer in its results: the calls "
                        "without one are charged and recorded at what they held", job, unaccounted)
        for call in group.calls:
            answer = answers.get(call.custom_id)
            if answer is None and (done.get(_UNREADABLE) or unaccounted > 0):  # it may have run
                # (and the job is forgotten: no --resume can read that line either, so it is recorded now)
                call.future.job_ran = LINE_UNREAD  # type: ignore[attr-defined]
            status, body = answer or jobs.missing(job, done)
            if not call.future.done():
                call.future.set_result((status, body))
        self._forget(job)

    # -- the API: OpenAI's Batch API (openai SDK) or Anthropic's Message Batches (anthropic SDK) -----------

    def _create(self, group: _Group) -> str:
        try:
            job = group.jobs.create(group.path, [call.line for call in group.calls], self.completion_window)
        except Exception as exc:
            raise BatchError(f"creating the batch: {exc}") from exc
        log.info("llmbudget: batch %s created with %d call(s)", job, len(group.calls))
        try:
            self._keep(job, group)
        except OSError as exc:  # the job exists and is paid for: poll it all the same
            self._unlease(job)
            log.error("llmbudget: batch %s was created, but its state could not be written to %s (%s): this "
                      "process polls it, and a restart before it ends loses its calls' answers and spend",
                      job, self.state, exc)
        return job

    def _wait(self, group: _Group, job: str) -> dict[str, Any]:
        """Poll ``job`` until it ends. An error that may pass (the API down for a while) is polled through, with a
        growing pause, until the job's window is over: the job runs (and is billed) whatever this process saw."""
        deadline = time.monotonic() + self.hold_seconds
        failures = 0
        while True:
            try:
                status = group.jobs.retrieve(job)
            except Exception as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                failures += 1
                if failures == 1:
                    log.warning("llmbudget: batch %s could not be polled (%s); polling on", job, exc)
                time.sleep(min(self.poll_interval * 2 ** min(failures, 10), _MAX_BACKOFF_S))
                continue
            if failures:
                log.info("llmbudget: batch %s answers again after %d failed poll(s)", job, failures)
                failures = 0
            if group.jobs.final(status):
                return status
            time.sleep(self.poll_interval)

    def _results(self, group: _Group, done: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
        for attempt in range(_RESULT_TRIES):
            try:
                return group.jobs.results(done)
            except Exception as exc:
                if not _transient(exc) or attempt == _RESULT_TRIES - 1:
                    raise
                log.warning("llmbudget: the results of batch %s could not be read (%s); trying again",
                            done.get("id"), exc)
                time.sleep(min(self.poll_interval * 2 ** attempt, _MAX_BACKOFF_S))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the state folder ------------------------------------------------------------------------------

    def _keep(self, job: str, group: _Group) -> None:
        if self.state is None:
            if not self._warned_stateless:
                self._warned_stateless = True
                log.warning("llmbudget: batch job %s is kept in memory only (a Batcher without state=): if this "
                            "process ends before it is answered, its answers and spend are lost and `llmbudget "
                            "batches --resume` cannot find it; configure(batcher=Batcher(state=\".llmbudget/"
                            "batches\")) keeps jobs on disk", job)
            return
        self.state.mkdir(parents=True, exist_ok=True)
        lease = _take_lease(self.state, job)  # held while this process polls: --resume leaves the job alone
        if lease is not None:
            self._leases[job] = lease
        record = {"id": job, "base_url": group.base_url, "endpoint": group.path, "created": time.time(),
                  "calls": [{"custom_id": c.custom_id, "tenant": c.tenant, "request_id": c.request_id,
                             "model": c.model, "input_estimate": _input_estimate(group.path, c),
                             "output_as_reported": _output_as_reported(c)}
                            for c in group.calls]}
        partial = self.state / f".{job}.json.tmp"
        partial.write_text(json.dumps(record), encoding="utf-8")
        os.replace(partial, self.state / f"{job}.json")

    def _forget(self, job: str) -> None:
        if self.state is not None:
            try:
                (self.state / f"{job}.json").unlink(missing_ok=True)
            except OSError as exc:
                log.error("llmbudget: batch %s is done and recorded, but its state file could not be removed (%s): "
                          "remove %s, or `llmbudget batches --resume` records its calls again", job, exc,
                          self.state / f"{job}.json")
        self._unlease(job)

    def _unlease(self, job: str) -> None:
        lease = self._leases.pop(job, None)
        if lease is not None and self.state is not None:
            _give_lease(self.state, job, lease)


@contextlib.contextmanager
def _sdk_client(base_url: str, headers: dict[str, str], timeout: float) -> Iterator[Any]:
    """An OpenAI client for the batcher's own requests (files, batches): not the app's calls, never warned about
    as unpriced endpoints."""
    from .pipeline import internal_requests

    with internal_requests(), _openai_client(base_url, headers, timeout) as client:
        yield client


@contextlib.contextmanager
def _anthropic_client(base_url: str, headers: dict[str, str], timeout: float) -> Iterator[Any]:
    """The same for Anthropic's Message Batches."""
    from .pipeline import internal_requests

    with internal_requests(), _anthropic_sdk_client(base_url, headers, timeout) as client:
        yield client


def _openai_client(base_url: str, headers: dict[str, str], timeout: float) -> Any:
    try:
        import openai
    except ImportError:
        raise BatchError("deferring calls to the Batch API needs the openai SDK: pip install openai") from None
    auth = headers.get("authorization", "")
    key = auth[len("Bearer "):] if auth.startswith("Bearer ") else "none"
    extra = {k: v for k, v in headers.items() if k.lower() in ("openai-organization", "openai-project")}
    return openai.OpenAI(base_url=base_url, api_key=key, default_headers=extra, timeout=timeout, max_retries=2)


def _anthropic_sdk_client(base_url: str, headers: dict[str, str], timeout: float) -> Any:
    try:
        import anthropic
    except ImportError:
        raise BatchError("deferring Messages calls needs the anthropic SDK: pip install anthropic") from None
    extra = {k: v for k, v in headers.items() if k.lower() in ("anthropic-version", "anthropic-beta")}
    # The calls' own credential, sent as they sent it: an SDK of 2.x sends an api_key as "Authorization: Bearer",
    # as it does an auth_token (a gateway's); older ones send "X-Api-Key". The header names are spelled as the
    # SDK spells its own, so that these replace its headers instead of going beside them.
    key = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    token = auth[len("Bearer "):] if auth[:len("Bearer ")].lower() == "bearer " else ""
    if key:
        extra["X-Api-Key"] = key
    if auth:
        extra["Authorization"] = auth
    return anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=key or token or "none",
                               default_headers=extra, timeout=timeout, max_retries=2)


def _once(client: Any) -> Any:
    """``client`` without retries, for a create: one whose answer is lost may have made the job, and a second
    would run (and bill) the same requests again."""
    return client.with_options(max_retries=0)


def _error(status: int, message: str, kind: str, *, anthropic: bool = False) -> tuple[int, bytes]:
    """An error answer in the API's own shape (OpenAI's, or Anthropic's with ``anthropic``)."""
    if anthropic:
        return status, json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    return status, json.dumps({"error": {"message": message, "type": kind, "param": None, "code": kind}}).encode()


class _Jobs:
    """One batch API at one host, called with the deferred calls' own headers."""

    anthropic = False  # errors in Anthropic's shape

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        self.base_url, self.headers, self.timeout = base_url, headers, timeout

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def error(self, status: int, message: str, kind: str) -> tuple[int, bytes]:
        """An error answer in the API's own shape."""
        return _error(status, message, kind, anthropic=self.anthropic)

    def missing(self, job: str, done: dict[str, Any]) -> tuple[int, bytes]:
        """The answer of a call the finished job has no result for (with the job's own errors, where it says)."""
        ended = self.ended(done)
        errors = done.get("errors")
        data = errors.get("data") if isinstance(errors, dict) else None
        reasons = [str(e.get("message")) for e in (data if isinstance(data, list) else [])
                   if isinstance(e, dict) and e.get("message")]
        why = f": {'; '.join(reasons[:3])}" if reasons else ""
        unreadable = done.get(_UNREADABLE)
        if unreadable:  # (a line that did not read may be this request's: it may have run, and be billed)
            return self.error(502, f"batch {job} ended {ended!r}; this request's result is missing, and {unreadable} "
                              "result line(s) of the job did not read", "batch_line_unreadable")
        unaccounted = done.get(_UNACCOUNTED)
        if unaccounted:  # (it may be one of those: it may have run, and be billed)
            return self.error(502, f"batch {job} ended {ended!r}; this request's result is missing, and the job "
                              f"counts {unaccounted} request(s) run whose results are missing", "batch_result_missing")
        return self.error(504 if ended == "expired" else 500,
                          f"batch {job} ended {ended!r} without running this request{why}", f"batch_{ended}")

    def ended(self, status: dict[str, Any]) -> str:
        return str(status.get("status"))

    def ran(self, status: dict[str, Any]) -> int | None:
        """How many of a finished job's requests it says ran (and are billed), if it says."""
        return _count_of(status, "completed")

    def final(self, status: dict[str, Any]) -> bool:
        return status.get("status") in _FINAL

    def create(self, path: str, lines: list[dict[str, Any]], window: str) -> str:
        content = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        mark = uuid.uuid4().hex  # finds the job again when its creation's answer is lost
        with _sdk_client(self.base_url, self.headers, self.timeout) as client:
            uploaded = client.files.create(file=("llmbudget-batch.jsonl", content), purpose="batch")
            try:  # never sent twice: a create that timed out may have made the job, and a second would run it again
                return str(_once(client).batches.create(
                    input_file_id=uploaded.id, endpoint=path, completion_window=window,
                    metadata={"created_by": "llmbudget", "llmbudget_job": mark}).id)
            except Exception as exc:
                made = _find_created(client, mark) if _transient(exc) else None  # a refusal made no job
                if made is None:
                    raise
                log.info("llmbudget: batch %s was created though its answer was lost", made)
                return made

    def retrieve(self, job: str) -> dict[str, Any]:
        with _sdk_client(self.base_url, self.headers, self.timeout) as client:
            return dict(client.batches.retrieve(job).model_dump())

    def results(self, done: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
        with _sdk_client(self.base_url, self.headers, self.timeout) as client:
            return read_results(client, done)


class _MessageBatches(_Jobs):
    """Anthropic's Message Batches: ``/v1/messages/batches`` with the requests inline, a results JSONL."""

    anthropic = True

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def ended(self, status: dict[str, Any]) -> str:
        return str(status.get("processing_status"))

    def ran(self, status: dict[str, Any]) -> int | None:
        return _count_of(status, "succeeded")

    def final(self, status: dict[str, Any]) -> bool:
        return status.get("processing_status") == "ended"

    def create(self, path: str, lines: list[dict[str, Any]], window: str) -> str:
        with _anthropic_client(self.base_url, self.headers, self.timeout) as client:
            requests = [{"custom_id": line["custom_id"], "params": line["body"]} for line in lines]
            return str(_once(client).messages.batches.create(requests=requests).id)

    def retrieve(self, job: str) -> dict[str, Any]:
        with _anthropic_client(self.base_url, self.headers, self.timeout) as client:
            return dict(client.messages.batches.retrieve(job).model_dump())

    def results(self, done: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
        with _anthropic_client(self.base_url, self.headers, self.timeout) as client:
            try:  # read line by line here: the SDK's decoder stops at a line that does not read, losing the rest
                with client.messages.batches.with_streaming_response.results(done["id"]) as response:
                    raw = list(response.iter_lines())
            except Exception as exc:
                raise BatchError(f"downloading the results of {done.get('id')}: {exc}") from exc
        answers: dict[str, tuple[int, bytes]] = {}
        for number, text in enumerate(raw, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                custom_id, result = line["custom_id"], line["result"]
                if not isinstance(custom_id, str) or not isinstance(result, dict):
                    raise TypeError("its custom_id is not a string or its result not an object")
                _keep(answers, custom_id, self._answer(result, done))
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
                _unreadable_line(done, "results", number, exc)
        return answers

    def _answer(self, result: dict[str, Any], done: dict[str, Any]) -> tuple[int, bytes]:
        """One result line's answer, as its server would have sent it (raises where the line's shape is not one)."""
        kind = result.get("type")
        if kind == "succeeded":
            if not isinstance(result["message"], dict):
                raise TypeError("its message is not an object")
            return 200, json.dumps(result["message"]).encode()
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or {}
            return self.error(400 if error.get("type") == "invalid_request_error" else 500,
                              str(error.get("message") or "the batch request failed"),
                              str(error.get("type") or "api_error"))
        return self.error(504 if kind == "expired" else 500,  # canceled, expired
                          f"batch {done.get('id')}: this request was {kind}", f"batch_{kind}")


def _find_created(client: Any, mark: str) -> str | None:
    """The id of the job created with ``metadata.llmbudget_job == mark`` among the 100 newest, or None (one page:
    iterating the list itself would walk every job the organisation ever made)."""
    try:
        for job in client.batches.list(limit=100).data:
            if (getattr(job, "metadata", None) or {}).get("llmbudget_job") == mark:
                return str(job.id)
    except Exception as exc:  # noqa: BLE001 - the create's own error is the one to report
        log.warning("llmbudget: the batch jobs could not be listed to find one whose creation failed: %s", exc)
    return None


def _jobs_for(path: str) -> type[_Jobs]:
    """The batch API that serves calls to ``path`` (an endpoint path such as ``/v1/messages``)."""
    return _MessageBatches if path.rstrip("/").endswith("/messages") else _Jobs


def _fail_all(calls: list[_Call], answer: tuple[int, bytes]) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_result(answer)


def read_results(client: Any, done: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
    """custom_id -> (status, body) from a finished job's output and error files (``client``: an openai SDK client)."""
    answers: dict[str, tuple[int, bytes]] = {}
    for key in ("output_file_id", "error_file_id"):
        file_id = done.get(key)
        if not file_id:
            continue
        try:
            text = client.files.content(file_id).text
        except Exception as exc:
            raise BatchError(f"downloading {key} {file_id}: {exc}") from exc
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                custom_id = line["custom_id"]
                if not isinstance(custom_id, str):
                    raise TypeError(f"its custom_id is {type(custom_id).__name__}")
                response = line.get("response") or {}
                if isinstance(response.get("body"), dict) and response.get("status_code"):
                    _keep(answers, custom_id, (int(response["status_code"]), json.dumps(response["body"]).encode()))
                else:
                    error = line.get("error") or {}
                    _keep(answers, custom_id, _error(500, str(error.get("message") or "the batch line failed"),
                                                     str(error.get("code") or "batch_line_failed")))
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
                _unreadable_line(done, key, number, exc)
    return answers


def _keep(answers: dict[str, tuple[int, bytes]], custom_id: str, answer: tuple[int, bytes]) -> None:
    """Keep ``answer`` for ``custom_id``, unless it has an answer already that ran (2xx): a result listed twice,
    answered and then errored, lost the billed answer, and the call was charged $0."""
    earlier = answers.get(custom_id)
    if earlier is None or not 200 <= earlier[0] < 300:
        answers[custom_id] = answer


#: Where a finished job's status counts its result lines that did not read (see :func:`_unreadable_line`).
_UNREADABLE = "llmbudget_unreadable_lines"
#: Where it counts the requests it says it ran (``request_counts``) that have no answer among its results.
_UNACCOUNTED = "llmbudget_unaccounted_results"
#: How a batched call failed after its job ran (``Future.job_ran``; absent where the job did not run): its job's
#: results could not be read, and the job is kept for ``llmbudget batches --resume`` to record; or its own result
#: line did not read, and the job is done: charged and recorded at what it held.
JOB_RESUMABLE = "resumable"
LINE_UNREAD = "line_unread"


def _count_of(status: dict[str, Any], name: str) -> int | None:
    """A job status's ``request_counts[name]``, if it is a count."""
    counts = status.get("request_counts")
    value = counts.get(name) if isinstance(counts, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _unreadable_line(done: dict[str, Any], where: str, number: int, exc: BaseException) -> None:
    """Log a result line of job ``done`` that does not read: one line fails its own call alone (whose answer is
    then the job's "missing" one), never the job's other calls, which ran and are billed."""
    done[_UNREADABLE] = int(done.get(_UNREADABLE) or 0) + 1
    log.warning("llmbudget: batch %s: line %d of its %s does not read (%s: %s); its call gets an error, the "
                "others their answers", done.get("id"), number, where, type(exc).__name__, exc)


def _take_lease(folder: Path, job: str) -> int | None:
    """Lock ``<job>.lock`` in ``folder`` for this process (released when it exits, however it exits): the file
    descriptor, -1 where the platform has no such locks, None when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    fd = os.open(folder / f"{job}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _give_lease(folder: Path, job: str, fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            (folder / f"{job}.lock").unlink()
        os.close(fd)


def pending_jobs(state: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The jobs a state folder still holds (created, results not yet fetched)."""
    folder = Path(state)
    if not folder.is_dir():
        return []
    jobs = []
    for path in sorted(folder.glob("*.json")):
        try:
            job = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError, RecursionError) as exc:
            log.warning("llmbudget: batch state file %s cannot be read (%s); skipped", path, exc)
            continue
        if not _is_job(job):
            log.warning("llmbudget: batch state file %s is not a batch job (expected an object with id, base_url, "
                        "endpoint, created and calls); skipped", path)
            continue
        jobs.append(job)
    return jobs


def _is_job(job: Any) -> bool:
    """Whether ``job`` has the shape this module writes (a state file damaged or written by hand may not)."""
    return (isinstance(job, dict) and all(isinstance(job.get(k), str) for k in ("id", "base_url", "endpoint"))
            and isinstance(job.get("created"), (int, float)) and isinstance(job.get("calls"), list)
            and all(isinstance(call, dict) and isinstance(call.get("custom_id"), str)
                    and all(isinstance(call.get(k), (str, type(None))) for k in ("tenant", "request_id", "model"))
                    for call in job["calls"]))


def _job_records(job: dict[str, Any], jobs: _Jobs, done: dict[str, Any], engine: Any) -> tuple[list[str], list[Any]]:
    """A finished job's result lines (JSON, one per call) and the spend records of its answered calls.

    A call whose answer or usage cannot be read is written as it came, logged, and not recorded: one odd
    answer neither stops the job nor leaves the calls before it recorded for a second resume to record again.
    """
    from .calls import SpendRecord, Usage
    from .providers import ResponseState, adapter_for_path

    answers = jobs.results(done)
    found = adapter_for_path(job["endpoint"])
    lines: list[str] = []
    records: list[SpendRecord] = []
    for call in job["calls"]:
        status, body = answers.get(call["custom_id"]) or jobs.missing(job["id"], done)
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):
            data = body.decode("utf-8", "replace")
        lines.append(json.dumps({"custom_id": call["custom_id"], "status": status, "body": data}))
        if status >= 400 or found is None:
            continue
        try:
            if not isinstance(data, dict):
                raise ValueError("the answer is not a JSON object")
            # read as a live answer is (its web and file searches, containers: tool fees beside the tokens); a
            # malformed usage is logged by the adapter and recorded as estimated (the batch ran: it is not dropped)
            answer = ResponseState()
            found[0].read_json(data, answer)
            usage = _filled(answer.usage or Usage(), answer, call, data).replace(service_tier="batch")
            model = engine.pricing.answering_model(data.get("model"), call["model"], job["base_url"])
            priced = engine.pricing.cost(usage, model=model, base_url=job["base_url"])
            standard = engine.pricing.cost(usage.replace(service_tier=None), model=model, base_url=job["base_url"])
            records.append(SpendRecord(
                time=time.time(), endpoint=found[0].endpoint, base_url=job["base_url"],
                model_requested=call["model"], model_sent=call["model"], model_answered=model, usage=usage,
                cost_usd=priced.usd, latency_s=0.0, tenant=call["tenant"], request_id=call["request_id"],
                status=status, price_source=priced.source, deferred="batch", estimated=usage.estimated,
                deferred_saved_usd=max(standard.usd - priced.usd, Decimal(0)) if priced.known else Decimal(0),
                prompt_cache_saved_usd=engine.pricing.prompt_cache_saving(usage, model=model,
                                                                         base_url=job["base_url"])))
        except Exception as exc:  # noqa: BLE001 - one unreadable answer must not lose the others
            log.warning("llmbudget: batch %s, call %s: its spend could not be read (%s); not recorded",
                        job["id"], call["custom_id"], exc)
    return lines, records


def _body_of(call: _Call) -> dict[str, Any]:
    """The request a batch line carries (OpenAI's ``body``, Anthropic's ``params``)."""
    body = call.line.get("body") or call.line.get("params")
    return body if isinstance(body, dict) else {}


def _output_as_reported(call: _Call) -> bool:
    """Whether the line's 0 output count is the truth (:func:`~llmbudget.providers._base.output_as_reported`)."""
    return output_as_reported(_body_of(call))


def _input_estimate(path: str, call: _Call) -> int:
    """The call's estimated input tokens, kept with the job: what its record is charged if the answer's usage
    leaves the input out."""
    from .providers import adapter_for_path

    found = adapter_for_path(path)
    try:
        return found[0].estimate_input_tokens(_body_of(call), call.model) if found else 0
    except Exception:  # noqa: BLE001 - an estimate only
        return 0


def _filled(usage: Any, answer: Any, call: dict[str, Any], data: Any) -> Any:
    """A batch answer's usage with the counts it leaves out estimated, as a live answer's are
    (:func:`~llmbudget.providers._base.filled_usage`; the job keeps what the request said of them)."""
    from .providers._base import filled_usage, tool_arguments

    estimate = call.get("input_estimate")
    filled = filled_usage(usage, input_estimate=lambda: estimate if isinstance(estimate, int) else 0,
                          output_text=lambda: answer.text + "".join(answer.hidden_parts) or tool_arguments(data),
                          model=call.get("model"), reported_output_stands=bool(call.get("output_as_reported")))
    return filled.replace(estimated=True) if not (filled.input_tokens or filled.output_tokens) else filled


def resume(state: str | os.PathLike[str], *, api_key: str | None, engine: Any, wait: bool = False,
           poll_interval: float = 10.0, anthropic_api_key: str | None = None) -> list[dict[str, Any]]:
    """Fetch the results of the jobs in ``state``: record each call's spend (batch-priced) in ``engine``'s
    ledger, write ``<job>.results.jsonl`` (custom_id, status, body) beside it and forget the job. A job not
    finished yet is left (``wait``: poll until it is). ``api_key`` reads OpenAI jobs, ``anthropic_api_key``
    Anthropic's Message Batches. Returns one summary per job (``status``: the API's own, e.g. ``completed``
    or ``ended``)."""
    folder = Path(state)
    summaries = []
    for job in pending_jobs(folder):
        lease = _take_lease(folder, job["id"])
        if lease is None:  # the process that made it still polls it, and records its calls itself
            summaries.append({"id": job["id"], "status": "polled by another process", "calls": len(job["calls"]),
                              "recorded": 0})
            continue
        try:
            if (folder / f"{job['id']}.json").exists():  # not forgotten by its process just before the lock
                summaries.append(_resume_job(folder, job, api_key=api_key, anthropic_api_key=anthropic_api_key,
                                             engine=engine, wait=wait, poll_interval=poll_interval))
        except OSError:  # this machine's own trouble (a full disk): every other job would meet it too
            raise
        except Exception as exc:  # noqa: BLE001 - one job the API will not show (another key, gone) stops no other
            log.warning("llmbudget: batch %s could not be resumed: %s; it is kept for a later --resume", job["id"], exc)
            summaries.append({"id": job["id"], "status": "error", "error": str(exc), "calls": len(job["calls"]),
                              "recorded": 0})
        finally:
            _give_lease(folder, job["id"], lease)
    return summaries


def _resume_job(folder: Path, job: dict[str, Any], *, api_key: str | None, anthropic_api_key: str | None,
                engine: Any, wait: bool, poll_interval: float) -> dict[str, Any]:
    kind = _jobs_for(job["endpoint"])
    key = anthropic_api_key if kind.anthropic else api_key
    jobs = kind(job["base_url"], kind.auth(key) if key else {}, 120.0)
    while True:
        done = jobs.retrieve(job["id"])
        if jobs.final(done) or not wait:
            break
        time.sleep(poll_interval)
    if not jobs.final(done):
        return {"id": job["id"], "status": jobs.ended(done), "calls": len(job["calls"]), "recorded": 0}
    lines, records = _job_records(job, jobs, done, engine)
    # Nothing is recorded until every answer is read and written: a job whose results cannot be written
    # (a full disk) stays whole in the state folder and is resumed later with none of its calls recorded.
    results = folder / f"{job['id']}.results.jsonl"
    partial = results.with_suffix(".jsonl.tmp")
    try:
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(partial, results)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    for record in records:
        engine.record(record, None)
    flush = getattr(engine.ledger, "flush", None) or (lambda: None)
    for attempt in range(_FLUSH_TRIES):
        if attempt:
            time.sleep(1.0)
        flush()  # written before the job is forgotten: a crash in between is the only way to record it twice
        if not getattr(engine.ledger, "pending", 0):
            break  # (tried again: a Redis reply lost after the write is sent again under the same ids, kept once)
    else:
        withdraw = getattr(engine.ledger, "withdraw", None)
        if withdraw is not None and withdraw():  # the ledger could not be written (locked, full, down): the job
            # stays, and none of its records is written later, which a later --resume would repeat
            return {"id": job["id"], "status": "error", "calls": len(job["calls"]), "recorded": 0,
                    "error": f"the ledger {getattr(engine.ledger, 'path', '')} could not be written (see the log); "
                             "none of the job's calls recorded"}
    recorded = len(records)
    (folder / f"{job['id']}.json").unlink(missing_ok=True)
    return {"id": job["id"], "status": jobs.ended(done), "calls": len(job["calls"]), "recorded": recorded}
