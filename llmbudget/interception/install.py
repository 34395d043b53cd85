"""Explicit clients (:func:`http_client`) and global, opt-in interception (:func:`install`)."""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

from ..tokens import warm_up
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


_SDKS = ("openai", "anthropic")


def _sdk_module(sdk: str) -> ModuleType | None:
    if sdk not in _SDKS:
        raise ValueError(f"sdk must be one of {', '.join(_SDKS)}, got {sdk!r}")
    try:
        return importlib.import_module(sdk)
    except ImportError:
        return None


def _library_for(sdk: str = "openai") -> str:
    """The HTTP library the installed SDK uses (httpx2 for openai >= 3 and anthropic >= 2, else httpx)."""
    module = _sdk_module(sdk)
    default: type | None = getattr(module, "DefaultHttpxClient", None) if module is not None else None
    for name in _LIBRARIES:
        transports = _transports(name)
        if transports is not None and (default is None or issubclass(default, transports.module.Client)):
            return name
    raise ImportError(f"llmbudget needs the HTTP library the {sdk} SDK uses (httpx2 or httpx); neither is installed")


def _wrap_client(client: Any, transports: Transports) -> Any:
    async_ = isinstance(client, transports.module.AsyncClient)
    client._transport = transports.wrap(client._transport, explicit=True, async_=async_)
    client._mounts = {
        pattern: (transports.wrap(t, explicit=True, async_=async_) if t is not None else None)
        for pattern, t in client._mounts.items()
    }
    return client


def _client(async_: bool, kwargs: dict[str, Any], sdk: str) -> Any:
    warm_up()  # token counts' encodings load now, in a thread, not in the first calls (on an event loop)
    transports = _transports(_library_for(sdk))
    assert transports is not None
    module = _sdk_module(sdk)
    if module is not None:
        cls = module.DefaultAsyncHttpxClient if async_ else module.DefaultHttpxClient
    else:
        library: ModuleType = transports.module
        cls = library.AsyncClient if async_ else library.Client
    return _wrap_client(cls(**kwargs), transports)  # its transport, given or made, and its mounts alike


def http_client(*, sdk: str = "openai", **kwargs: Any) -> Any:
    """An HTTP client for ``OpenAI(http_client=...)`` whose LLM calls go through llmbudget.

    Takes the keyword arguments of ``openai.DefaultHttpxClient`` (an ``httpx2.Client``
    with openai >= 3, an ``httpx.Client`` with openai 2.x), ``transport`` included.
    ``sdk="anthropic"``: the same for ``Anthropic(http_client=...)`` (the HTTP library
    of the installed anthropic SDK, which may differ from openai's).
    """
    return _client(False, kwargs, sdk)


def async_http_client(*, sdk: str = "openai", **kwargs: Any) -> Any:
    """Like :func:`http_client`, for ``AsyncOpenAI(http_client=...)`` (or ``AsyncAnthropic``)."""
    return _client(True, kwargs, sdk)


def _patch(client_class: type, transports: Transports) -> None:
    original = client_class.__dict__["_transport_for_url"]
    async_ = issubclass(client_class, transports.module.AsyncClient)

    def _transport_for_url(self: Any, url: Any) -> Any:
        return transports.wrap(original(self, url), async_=async_)

    _transport_for_url.__wrapped__ = original  # type: ignore[attr-defined]
    client_class._transport_for_url = _transport_for_url  # type: ignore[attr-defined]
    _patches.append((client_class, original))


def install() -> None:
    """Put every httpx2 and httpx client in this process behind llmbudget (idempotent).

    Clients created before the call are covered too: the transport a client
    picks for each request is wrapped when it is picked. Only LLM calls (see
    :meth:`~llmbudget.pipeline.Engine.wants`) are touched.
    """
    warm_up()
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
