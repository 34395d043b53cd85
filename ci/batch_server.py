"""A small local server for OpenAI's Files and Batches endpoints, whose answers come from a real LLM server.

The Batch API has no open-source server. This one implements what the openai SDK's
``files`` and ``batches`` resources send and read (their types define the shapes):
``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files/{id}`` and
``/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST
/v1/batches/{id}/cancel``; any other ``POST /v1/...`` goes to ``upstream`` as it is. A job runs its lines in a background thread by sending each
one to ``upstream`` (the real local LLM server, e.g. llama-cpp-python's), and writes the
output file (answers, ``response.status_code`` 200) and the error file (the upstream's
4xx/5xx answers) as the Batch API does.

Anthropic's Message Batches too, as the anthropic SDK's ``messages.batches`` resource
sends and reads them: ``POST /v1/messages/batches`` (the requests inline, each with its
``params``), ``GET /v1/messages/batches/{id}`` and its ``results_url``
(``/v1/messages/batches/{id}/results``, one JSONL line per request: ``succeeded`` with the
message, ``errored``, or ``expired``); each request goes to ``upstream``'s ``/messages``.

Options for tests: ``delay`` (seconds before a job starts), ``expire_after`` (run that
many lines, then end the job ``expired``: the rest are not run).

    python ci/batch_server.py --upstream http://127.0.0.1:8765/v1 [--port 8767]
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["BatchServer", "batch_server"]


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class BatchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream: str, *, delay: float = 0.0, expire_after: int | None = None,
                 credential: str | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream = upstream.rstrip("/")
        self.delay, self.expire_after = delay, expire_after
        self.credential = credential
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed",
                "expires_at": None, "status_details": None}
        with self.lock:
            self.files[file["id"]] = {**file, "_content": content}
        return file

    def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        source = self.files.get(str(body.get("input_file_id")))
        if source is None:
            raise LookupError(f"no file {body.get('input_file_id')!r}")
        lines = [json.loads(raw) for raw in source["_content"].decode().splitlines() if raw.strip()]
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": body.get("endpoint"),
                 "errors": None, "input_file_id": body["input_file_id"],
                 "completion_window": body.get("completion_window", "24h"), "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "metadata": body.get("metadata")}
        return self._start(batch, self._run, lines)

    def _start(self, batch: dict[str, Any], run: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Keep ``batch`` and answer its ``items`` in a thread (``run(batch id, items)``)."""
        with self.lock:
            self.batches[batch["id"]] = batch
        threading.Thread(target=run, args=(batch["id"], items), daemon=True).start()
        return batch

    def _run(self, batch_id: str, lines: list[dict[str, Any]]) -> None:
        time.sleep(self.delay)
        batch = self.batches[batch_id]
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        outputs, errors = [], []
        ended = "completed"
        for index, line in enumerate(lines):
            if batch["status"] == "cancelling":
                ended = "cancelled"
                break
            if self.expire_after is not None and index >= self.expire_after:
                ended = "expired"
                break
            status, body = self._send(line)
            result = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line.get("custom_id"),
                      "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body},
                      "error": None}
            (outputs if status < 400 else errors).append(result)
            batch["request_counts"]["completed" if status < 400 else "failed"] += 1
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                content = "".join(json.dumps(row) + "\n" for row in rows).encode()
                batch[kind] = self.add_file(content, f"{batch_id}_{kind}.jsonl", "batch_output")["id"]
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[ended]
        batch.update({"status": ended, stamp: int(time.time())})

    def create_message_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ValueError("requests: a non-empty list is required")
        now = time.time()
        batch = {"id": f"msgbatch_{uuid.uuid4().hex[:24]}", "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                    "expired": 0},
                 "created_at": _iso(now), "expires_at": _iso(now + 86400), "ended_at": None, "archived_at": None,
                 "cancel_initiated_at": None, "results_url": None}
        return self._start(batch, self._run_messages, requests)

    def _run_messages(self, batch_id: str, requests: list[dict[str, Any]]) -> None:
        time.sleep(self.delay)
        batch = self.batches[batch_id]
        counts, results = batch["request_counts"], []
        for index, request in enumerate(requests):
            counts["processing"] -= 1
            if self.expire_after is not None and index >= self.expire_after:
                results.append({"custom_id": request.get("custom_id"), "result": {"type": "expired"}})
                counts["expired"] += 1
                continue
            status, body = self._send({"url": "/v1/messages", "body": request.get("params")})
            if status < 400:
                results.append({"custom_id": request.get("custom_id"), "result": {"type": "succeeded", "message": body}})
                counts["succeeded"] += 1
            else:
                error = body.get("error") if isinstance(body.get("error"), dict) else {"type": "api_error",
                                                                                        "message": str(body)}
                results.append({"custom_id": request.get("custom_id"),
                                "result": {"type": "errored", "error": {"type": "error", "error": error}}})
                counts["errored"] += 1
        batch["_results"] = "".join(json.dumps(row) + "\n" for row in results).encode()
        batch.update(processing_status="ended", ended_at=_iso(time.time()),
                     results_url=f"http://127.0.0.1:{self.server_address[1]}/v1/messages/batches/{batch_id}/results")

    def _send(self, line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        url = self.upstream + str(line.get("url", "")).removeprefix("/v1")
        request = urllib.request.Request(url, data=json.dumps(line.get("body")).encode(), method="POST",
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, {"error": {"message": str(exc), "type": "upstream_error"}}


class _Handler(BaseHTTPRequestHandler):
    server: BatchServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _missing(self) -> None:
        self._reply(404, {"error": {"message": f"no such object: {self.path}", "type": "invalid_request_error"}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _refused(self) -> bool:
        """With a ``credential``, a request that carries it neither as a bearer token nor as ``x-api-key`` is
        answered 401, as the real APIs answer it."""
        credential = self.server.credential
        if credential is None or credential in (self.headers.get("x-api-key"),
                                                (self.headers.get("authorization") or "").removeprefix("Bearer ")):
            return False
        if self.command == "POST":
            self._body()
        self._reply(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        return True

    def do_POST(self) -> None:
        if self._refused():
            return
        path = self.path.split("?", 1)[0]
        if path == "/v1/files":
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"content-type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + self._body())
            fields: dict[str, Any] = {}
            for part in message.iter_parts():
                fields[part.get_param("name", header="content-disposition")] = part
            upload = fields.get("file")
            purpose = fields.get("purpose")
            if upload is None or purpose is None:
                self._reply(400, {"error": {"message": "file and purpose are required", "type": "invalid_request_error"}})
                return
            self._reply(200, self.server.add_file(upload.get_payload(decode=True), upload.get_filename() or "upload",
                                                  purpose.get_content().strip()))
        elif path == "/v1/messages/batches":
            try:
                self._reply(200, self.server.create_message_batch(json.loads(self._body())))
            except (LookupError, ValueError) as exc:
                self._reply(400, {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}})
        elif path == "/v1/batches":
            try:
                self._reply(200, self.server.create_batch(json.loads(self._body())))
            except (LookupError, ValueError) as exc:
                self._reply(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
        elif path.startswith("/v1/batches/") and path.endswith("/cancel"):
            batch = self.server.batches.get(path.split("/")[3])
            if batch is None:
                self._missing()
                return
            if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                batch.update(status="cancelling", cancelling_at=int(time.time()))
            self._reply(200, batch)
        elif path.startswith("/v1/"):  # everything else goes to the real server, as it is
            status, body = self.server._send({"url": path, "body": json.loads(self._body() or b"null")})
            self._reply(status, body)
        else:
            self._missing()

    def do_GET(self) -> None:
        if self._refused():
            return
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts[:3] == ["v1", "messages", "batches"] and len(parts) >= 4 and parts[3] in self.server.batches:
            batch = self.server.batches[parts[3]]
            if len(parts) == 5 and parts[4] == "results" and "_results" in batch:
                self._reply(200, batch["_results"], "application/binary")
            elif len(parts) == 4:
                self._reply(200, {k: v for k, v in batch.items() if not k.startswith("_")})
            else:
                self._missing()
        elif parts == ["v1", "batches"]:  # the list, newest first (one page)
            newest = sorted(self.server.batches.values(), key=lambda b: b["created_at"], reverse=True)
            self._reply(200, {"object": "list", "data": [b for b in newest if b.get("object") == "batch"],
                              "has_more": False})
        elif parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in self.server.batches:
            self._reply(200, self.server.batches[parts[2]])
        elif parts[:2] == ["v1", "files"] and len(parts) >= 3 and parts[2] in self.server.files:
            file = self.server.files[parts[2]]
            if len(parts) == 4 and parts[3] == "content":
                self._reply(200, file["_content"], "application/octet-stream")
            else:
                self._reply(200, {k: v for k, v in file.items() if not k.startswith("_")})
        else:
            self._missing()


@contextlib.contextmanager
def batch_server(upstream: str, *, port: int = 0, delay: float = 0.0, expire_after: int | None = None,
                 credential: str | None = None) -> Iterator[BatchServer]:
    """Run a :class:`BatchServer` on 127.0.0.1 in a thread; yields it (its ``base_url`` ends in ``/v1``).
    ``credential``: every request must carry it (as a bearer token or ``x-api-key``), else 401."""
    server = BatchServer(port, upstream, delay=delay, expire_after=expire_after, credential=credential)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the real LLM server's base URL (ending in /v1)")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args()
    server = BatchServer(args.port, args.upstream)
    print(f"Files and Batches on {server.base_url} (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
