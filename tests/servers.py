"""Small real HTTP servers for tests: an echo server and a proxy in front of the LLM server."""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # before Python 3.14
    from backports import zstd


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: list[tuple[str, str, bytes, dict[str, str]]]
    held: int
    options: dict[str, Any]


def _serve(handler: type[BaseHTTPRequestHandler], **options: Any) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), handler)
    server.received = []
    server.sent = []  # the bodies (or the parts of them) a proxy sent back
    server.held = 0  # the answers a proxy sent in two parts (``hold``)
    server.options = options
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with its own body, as ``application/octet-stream``."""

    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        self.server.received.append((self.command, self.path, body, dict(self.headers)))
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer


@contextmanager
def echo_server() -> Iterator[_Server]:
    """A server that answers each request with the bytes it received."""
    yield from _serve(_Echo)


class _Proxy(BaseHTTPRequestHandler):
    """Forwards to ``upstream``; can fail the first requests, gzip answers, or cut streams."""

    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        options = self.server.options
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.received.append((self.command, self.path, body or b"", dict(self.headers)))
        refused = options["refuse"](body or b"") if options.get("refuse") is not None else None
        message = "try again"
        if isinstance(refused, tuple):
            refused, message = refused
        if refused == 0:  # no answer: the connection just closes
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if refused is not None or len(self.server.received) <= options.get("fail_first", 0):
            payload = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
            self.send_response(refused or options.get("fail_status", 503))
            self.send_header("content-type", "application/json")
            if options.get("encoding"):  # a content-encoding the body does not have
                self.send_header("content-encoding", options["encoding"])
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = options["upstream"].rstrip("/") + self.path[len("/v1"):]
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
        if body is not None and options.get("forward") is not None:
            body = options["forward"](body)
        request = urllib.request.Request(upstream, data=body, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, content, content_type = response.status, response.read(), response.headers["content-type"]
        except urllib.error.HTTPError as exc:
            status, content, content_type = exc.code, exc.read(), exc.headers["content-type"]
        if options.get("status") is not None and status < 300:  # another success status than the server's
            status = options["status"]
        self.send_response(status)
        self.send_header("content-type", options.get("content_type") or content_type or "application/json")
        compress = options.get("compress")  # one coding, or several applied in turn ("gzip, br")
        codings = [c.strip() for c in compress.split(",")] if compress else []
        accepted = self.headers.get("accept-encoding", "")
        if codings and all(c in accepted or c == "identity" for c in codings):
            for coding in codings:
                if coding == "deflate":  # raw deflate, as some servers send it (httpx reads both kinds)
                    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                    content = packer.compress(content) + packer.flush()
                elif coding == "zstd":  # two frames, as a server that flushes mid-body sends them
                    half = len(content) // 2
                    content = zstd.compress(content[:half]) + zstd.compress(content[half:])
                elif coding != "identity":
                    content = gzip.compress(content) if coding == "gzip" else brotli.compress(content)
            self.send_header("content-encoding", compress)
        if options.get("garble"):  # the server's real bytes, cut in half: not valid JSON any more
            content = content[: len(content) // 2]
        if options.get("rewrite") is not None:  # the server's real bytes, changed by the test
            content = options["rewrite"](content)
        if options.get("encoding"):  # a content-encoding the body does not have
            self.send_header("content-encoding", options["encoding"])
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        if options.get("cut"):  # promise the whole body, send half of it, drop the connection
            self.server.sent.append(content[: len(content) // 2])
            self.wfile.write(content[: len(content) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.server.sent.append(content)
        split = options["hold"](content) if options.get("hold") is not None else None
        if split:  # the answer up to there, then the rest a little later, as a server sends its last events
            self.server.held += 1
            self.wfile.write(content[:split])
            self.wfile.flush()
            time.sleep(options.get("hold_s") or 0.3)
            content = content[split:]
        self.wfile.write(content)

    do_GET = do_POST = _forward


@contextmanager
def proxy(upstream: str, *, fail_first: int = 0, fail_status: int = 503, compress: str | None = None,
          cut: bool = False, garble: bool = False, rewrite: Callable[[bytes], bytes] | None = None,
          encoding: str | None = None, forward: Callable[[bytes], bytes] | None = None,
          refuse: Callable[[bytes], int | tuple[int, str] | None] | None = None, status: int | None = None,
          content_type: str | None = None, hold: Callable[[bytes], int | None] | None = None,
          hold_s: float = 0.3) -> Iterator[_Server]:
    """A proxy to the real LLM server at ``upstream`` (its base URL ``.../v1``).

    ``compress``: "gzip", "br", "zstd" or "deflate" (raw), the answers' content-encoding where the client accepts it; ``refuse``: a function
    of each request's bytes, the error status to answer it with, or (status, error message) (None: forwarded;
    0: the connection closes without an answer);
    ``cut``: send half of each answer's body and drop the connection; ``garble``: send half of it as the whole body;
    ``rewrite``: a function of each answer's bytes; ``encoding``: a content-encoding header sent with the body as
    it is; ``forward``: a function of each request's bytes as sent upstream (``received`` keeps them as they came);
    ``status``, ``content_type``: sent instead of the server's, for its successful answers (the type: for all);
    ``hold``: a function of each answer's bytes, where to stop sending it for ``hold_s`` seconds (None: nowhere).
    """
    yield from _serve(_Proxy, upstream=upstream, fail_first=fail_first, fail_status=fail_status, compress=compress,
                      cut=cut, garble=garble, rewrite=rewrite, encoding=encoding, forward=forward, refuse=refuse,
                      status=status, content_type=content_type, hold=hold, hold_s=hold_s)


def base_url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"
