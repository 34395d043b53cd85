"""Explicit clients (:func:`http_client`) and global, opt-in interception (:func:`install`)."""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

from ._transport import Transports

__all__ = ["http_client", "async_http_client", "install", "uninstall", "installed"]

_LIBRARIES = ("httpx2", "httpx")
_lock = threading.Lock()
# (client class, original _transport_for_url) for every patch in place.
_patches: list[tuple[type, Any]] = []


def _transports(name: str) -> Transports | None:
    try:
        return importlib.import_module(f"llmbudget.interception.{name}").transports  # type: ignore[no-any-return]
    except ImportError:
        return None


def _library_for_openai() -> str:
    """The HTTP library the installed openai SDK uses (httpx2 for openai >= 3, httpx for 2.x)."""
    try:
        import openai

        default: type | None = openai.DefaultHttpxClient
    except ImportError:
        default = None
    for name in _LIBRARIES:
        transports = _transports(name)
        if transports is not None and (default is None or issubclass(default, transports.module.Client)):
            return name
    raise ImportError("llmbudget needs httpx2 (openai >= 3) or httpx (openai 2.x); neither is installed")


def _wrap_client(client: Any, transports: Transports) -> Any:
    client._transport = transports.wrap(client._transport, explicit=True)
    client._mounts = {
        pattern: (transports.wrap(t, explicit=True) if t is not None else None) for pattern, t in client._mounts.items()
    }
    return client


def _client(async_: bool, kwargs: dict[str, Any]) -> Any:
    transports = _transports(_library_for_openai())
    assert transports is not None
    try:
        import openai

        cls = openai.DefaultAsyncHttpxClient if async_ else openai.DefaultHttpxClient
    except ImportError:
        module: ModuleType = transports.module
        cls = module.AsyncClient if async_ else module.Client
    if "transport" in kwargs:
        kwargs["transport"] = transports.wrap(kwargs["transport"], explicit=True)
        return cls(**kwargs)
    return _wrap_client(cls(**kwargs), transports)


def http_client(**kwargs: Any) -> Any:
    """An HTTP client for ``OpenAI(http_client=...)`` whose LLM calls go through llmbudget.

    Takes the keyword arguments of ``openai.DefaultHttpxClient`` (an ``httpx2.Client``
    with openai >= 3, an ``httpx.Client`` with openai 2.x), ``transport`` included.
    """
    return _client(False, kwargs)


def async_http_client(**kwargs: Any) -> Any:
    """Like :func:`http_client`, for ``AsyncOpenAI(http_client=...)``."""
    return _client(True, kwargs)


def _patch(client_class: type, transports: Transports) -> None:
    original = client_class.__dict__["_transport_for_url"]

    def _transport_for_url(self: Any, url: Any) -> Any:
        return transports.wrap(original(self, url))

    _transport_for_url.__wrapped__ = original  # type: ignore[attr-defined]
    client_class._transport_for_url = _transport_for_url  # type: ignore[attr-defined]
    _patches.append((client_class, original))


def install() -> None:
    """Put every httpx2 and httpx client in this process behind llmbudget (idempotent).

    Clients created before the call are covered too: the transport a client
    picks for each request is wrapped when it is picked. Only LLM calls (see
    :meth:`~llmbudget.pipeline.Engine.wants`) are touched.
    """
    with _lock:
        if _patches:
            return
        for name in _LIBRARIES:
            transports = _transports(name)
            if transports is None:
                continue
            _patch(transports.module.Client, transports)
            _patch(transports.module.AsyncClient, transports)


def uninstall() -> None:
    """Undo :func:`install` exactly (idempotent)."""
    with _lock:
        while _patches:
            client_class, original = _patches.pop()
            client_class._transport_for_url = original  # type: ignore[attr-defined]


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_patches)
