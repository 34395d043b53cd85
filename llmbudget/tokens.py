"""Token estimates before a call (for reservations) and for streams cut short.

Exact counts always come from the provider's usage; these are estimates. They
use tiktoken when its encoding files can be loaded (``TIKTOKEN_CACHE_DIR`` or a
download) and fall back to a character-based estimate, with one warning.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

__all__ = ["FALLBACK_NOTE", "count_text", "estimate_input_tokens", "estimate_output_tokens", "estimate_text",
           "unavailable_encodings"]

log = logging.getLogger("llmbudget.tokens")

#: Per-message overhead from the OpenAI cookbook (gpt-3.5-turbo-0613 and later).
TOKENS_PER_MESSAGE = 3
#: Every reply is primed with ``<|start|>assistant<|message|>``.
REPLY_PRIMING_TOKENS = 3
#: Roughly four characters per token for English text.
_CHARS_PER_TOKEN = 4
#: ... and three UTF-8 bytes per token for other scripts: a CJK character (3 bytes) about one token, as tokenizers
#: count them (4 characters a token counted a quarter of a Chinese prompt); a Cyrillic or Greek one two thirds.
_BYTES_PER_TOKEN = 3


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


_lock = threading.Lock()
_warned = False
_unavailable: set[str] = set()

#: What reports print when an estimate fell back to characters (see :func:`unavailable_encodings`).
FALLBACK_NOTE = (
    "token estimates: tiktoken's {names} encoding could not be loaded (offline, no cached files), so "
    f"estimates count {_CHARS_PER_TOKEN} characters per token ({_BYTES_PER_TOKEN} bytes of other scripts); set "
    "TIKTOKEN_CACHE_DIR to a folder holding the "
    "encoding files for tiktoken's own counts"
)


def unavailable_encodings() -> tuple[str, ...]:
    """The tiktoken encodings this process could not load, so its estimates used characters instead."""
    with _lock:
        return tuple(sorted(_unavailable))

#: Input texts come back call after call (system prompts, role names, a conversation's earlier
#: turns), so their counts are remembered: up to this many characters in all, each entry charged
#: its text plus ``_REMEMBER_ENTRY_CHARS`` for its own memory (about 220 bytes), so that many short
#: texts stay bounded too; least recently used first out, texts longer than ``_REMEMBER_TEXT_CHARS`` never.
_REMEMBER_CHARS = 1 << 21
_REMEMBER_TEXT_CHARS = 1 << 16
_REMEMBER_ENTRY_CHARS = 200
_remembered: OrderedDict[tuple[_Encoding, str], int] = OrderedDict()
_remembered_chars = 0
_remembered_lock = threading.Lock()


_warming: threading.Thread | None = None


_fork_waited = False


def _finish_warming() -> None:
    """Before a fork: let a load under way end, for a few seconds once per process (tiktoken holds its registry
    lock while it loads, and a child forked then waited for that lock forever; gunicorn --preload forks right
    after the app is made). A load that takes longer (a download that hangs) does not hold forks up."""
    global _fork_waited
    thread = _warming
    if thread is not None and thread.is_alive() and not _fork_waited:
        _fork_waited = True
        thread.join(5)


def _fresh_registry_lock() -> None:
    """In a child just forked while the parent's load held tiktoken's registry lock: the lock anew, and the
    registry's table of encodings to be built again (the load may have left it half made)."""
    registry = sys.modules.get("tiktoken.registry")
    lock = getattr(registry, "_lock", None)
    if lock is None:
        return
    if lock.acquire(blocking=False):  # free: nothing was loading
        lock.release()
        return
    setattr(registry, "_lock", threading.RLock())  # noqa: B010 - private names of tiktoken's, where it has them
    if hasattr(registry, "ENCODING_CONSTRUCTORS"):
        setattr(registry, "ENCODING_CONSTRUCTORS", None)  # noqa: B010


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_finish_warming, after_in_child=_fresh_registry_lock)


def warm_up() -> threading.Thread:
    """Load the usual encodings (o200k, cl100k) in a daemon thread, once per process: the first load takes
    0.2-0.5 s of CPU (most of it in one call that holds the GIL), which a server's first LLM calls would
    otherwise spend on its event loop, stalling every other request."""
    global _warming
    with _lock:
        if _warming is None:
            _warming = threading.Thread(target=lambda: [_encoding(name) for name in ("o200k_base", "cl100k_base")],
                                        name="llmbudget-tiktoken", daemon=True)
            _warming.start()
        return _warming


@functools.lru_cache(maxsize=8)
def _encoding(name: str) -> _Encoding | None:
    global _warned
    try:
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception as exc:  # offline, missing package, corrupt cache: estimate instead
        with _lock:
            _unavailable.add(name)
            if not _warned:
                _warned = True
                log.warning(
                    "tiktoken encoding %r is not available (%s); token estimates fall back to "
                    "%d characters per token (%d bytes of other scripts). Set TIKTOKEN_CACHE_DIR to a folder "
                    "holding the encoding files to get exact estimates offline.",
                    name,
                    exc,
                    _CHARS_PER_TOKEN,
                    _BYTES_PER_TOKEN,
                )
        return None


def encoding_name(model: str | None) -> str:
    """The tiktoken encoding tiktoken itself maps ``model`` to (fine-tunes by their base); else o200k_base (also
    for a body's ``model`` that is not a string, sent as it is for the server to refuse)."""
    return _encoding_name(model) if isinstance(model, str) and model else "o200k_base"


@functools.lru_cache(maxsize=512)
def _encoding_name(model: str) -> str:
    name = model.lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    try:
        from tiktoken.model import encoding_name_for_model

        return encoding_name_for_model(name)
    except (ImportError, KeyError):
        return "o200k_base"


def count_text(text: str, model: str | None = None) -> int:
    """Tokens in ``text`` for ``model`` (:func:`estimate_text` when tiktoken can't load)."""
    if not text:
        return 0
    encoding = _encoding(encoding_name(model))
    if encoding is None:
        return estimate_text(text)
    return len(encoding.encode_ordinary(text))


def estimate_text(text: str) -> int:
    """Tokens in ``text`` without a tokenizer: four ASCII characters a token, three UTF-8 bytes of any other
    character a token (a CJK character about one, as tokenizers count them)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text.encode("utf-8", "surrogatepass")) - ascii_chars
    return -(-ascii_chars // _CHARS_PER_TOKEN) - (-other // _BYTES_PER_TOKEN)


def _count_input(text: str, encoding: _Encoding) -> int:
    """``len(encoding.encode_ordinary(text))``, remembered for texts seen before."""
    global _remembered_chars
    key = (encoding, text)
    with _remembered_lock:
        count = _remembered.get(key)
        if count is not None:
            _remembered.move_to_end(key)
            return count
    count = len(encoding.encode_ordinary(text))
    if len(text) <= _REMEMBER_TEXT_CHARS:
        with _remembered_lock:
            if key not in _remembered:
                _remembered[key] = count
                _remembered_chars += len(text) + _REMEMBER_ENTRY_CHARS
                while _remembered_chars > _REMEMBER_CHARS:
                    (_, oldest), _ = _remembered.popitem(last=False)
                    _remembered_chars -= len(oldest) + _REMEMBER_ENTRY_CHARS
    return count


def estimate_input_tokens(texts: Iterable[str], *, model: str | None, messages: int = 0, names: int = 0) -> int:
    """Input tokens of a request: its texts plus the cookbook's per-message (and per-name) overhead."""
    encoding = _encoding(encoding_name(model))
    if encoding is None:
        total = sum(count_text(text, model) for text in texts)
    else:
        total = sum(_count_input(text, encoding) for text in texts if text)
    if messages:
        total += messages * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS + names
    return total


def estimate_output_tokens(text: str, *, model: str | None) -> int:
    """Output tokens of an answer seen only as text (a stream without usage)."""
    return count_text(text, model)

