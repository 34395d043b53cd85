"""Configuration from ``llmbudget.toml`` or ``[tool.llmbudget]`` in ``pyproject.toml``.

Keys (all optional)::

    [tool.llmbudget]
    hosts = ["api.openai.com"]          # hosts whose OpenAI-style paths any client may call
    default_max_output_tokens = 4096     # assumed output when reserving for an uncapped request
    ledger = ".llmbudget/ledger.db"      # SQLite ledger file (default: in memory)

    [tool.llmbudget.prices]              # USD per 1M tokens; keys: model glob, base URL, or "URL glob"
    "gemma-3-*" = { input = 0.10, output = 0.40 }
    "http://127.0.0.1:8080/v1" = { input = 0, output = 0 }

    [tool.llmbudget.unknown_model_price] # charged, with a warning, for a model nothing prices
    input = 15
    output = 75
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ledger.records import SQLiteLedger
from .pipeline import Engine
from .pricing import CONSERVATIVE_PRICE, Pricing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "find_config", "load_config", "engine_from_config"]

_KEYS = {"hosts", "default_max_output_tokens", "ledger", "prices", "unknown_model_price"}


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and what was expected."""


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``llmbudget.toml``, or ``pyproject.toml`` with ``[tool.llmbudget]``, from ``start`` up."""
    for folder in (start, *start.parents):
        candidate = folder / "llmbudget.toml"
        if candidate.is_file():
            return candidate, _read(candidate)
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            table = _read(candidate).get("tool", {}).get("llmbudget")
            if isinstance(table, dict):
                return candidate, table
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path) -> dict[str, Any]:
    """The llmbudget table of one file (``llmbudget.toml`` whole, else ``[tool.llmbudget]``)."""
    data = _read(path)
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("llmbudget", {})
    return data


def engine_from_config(config: Mapping[str, Any], *, source: str = "configuration", root: Path | None = None) -> Engine:
    """An Engine from a config table, with errors that name the file and the key."""
    unknown = set(config) - _KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    try:
        pricing = Pricing(
            config.get("prices") or {}, unknown_model_price=config.get("unknown_model_price", CONSERVATIVE_PRICE)
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    hosts = config.get("hosts", ["api.openai.com"])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(f"{source}: hosts must be a list of host names, got {hosts!r}")
    max_output = config.get("default_max_output_tokens", 4096)
    if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output <= 0:
        raise ConfigError(f"{source}: default_max_output_tokens must be a positive integer, got {max_output!r}")
    ledger = config.get("ledger")
    if ledger is not None and not isinstance(ledger, str):
        raise ConfigError(f"{source}: ledger must be a file path, got {ledger!r}")
    ledger_path = (root / ledger if root and not Path(ledger).is_absolute() else Path(ledger)) if ledger else None
    return Engine(
        pricing=pricing,
        hosts=hosts,
        default_max_output_tokens=max_output,
        ledger=SQLiteLedger(ledger_path) if ledger_path else None,
    )
