"""Interception at the HTTP transport of the openai SDK (httpx2 and httpx, sync and async)."""

from __future__ import annotations

from .install import async_http_client, http_client, install, installed, uninstall

__all__ = ["async_http_client", "http_client", "install", "installed", "uninstall"]
