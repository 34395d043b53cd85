"""Redis for tests: the test database and clean-up of a test's own keys."""

from __future__ import annotations

import redis

#: Tests use database 15 of the machine's Redis, each under a key prefix of its own.
URL = "redis://127.0.0.1:6379/15"


def drop(prefix: str, url: str = URL) -> None:
    """Delete every key under ``prefix``."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
