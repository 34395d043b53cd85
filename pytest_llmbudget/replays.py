"""Stale replays: a cassette request played for a test whose request has changed since it was recorded.

vcrpy matches requests on their method and URL by default (``match_on`` without ``body``), so a test whose
prompt grew after its cassette was recorded is answered with the old answer, and priced from the old answer's
usage: the pull request that made every call dearer passes the spend check, budget and baseline alike. While
the plugin runs, every request a vcrpy cassette plays is compared with the recorded request it is answered by
(the prompt: the body without what routing and per-run fields change, as :mod:`.golden` compares them); one that
differs is counted for its test, with the input tokens it adds (estimated), and the run's report names the test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmbudget.providers import adapter_for_path

from .golden import _body, _key

__all__ = ["Stale", "watch_replays"]

log = logging.getLogger("llmbudget")
#: Fields of a request that are not its prompt, beside those :func:`.golden._key` leaves out: the service tier
#: (``defer("flex")`` adds it).
_NOT_PROMPT = frozenset({"service_tier"})


@dataclass(frozen=True)
class Stale:
    """A replayed request whose prompt is not the recorded one's: ``input_tokens`` more than it (estimated;
    negative where it shrank)."""

    input_tokens: int


def _recorded_for(cassette: Any, request: Any) -> tuple[Any, Any] | None:
    """``request`` as the cassette records it (its ``before_record_request`` filters: a redacted email, a key) and
    the recorded request vcrpy is about to answer it with (as ``Cassette.play_response`` picks it), or None."""
    from vcr.matchers import requests_match  # type: ignore[import-untyped]

    filtered = cassette._before_record_request(request)
    if filtered is None:
        return None
    for index, (stored, _) in enumerate(cassette.data):
        if requests_match(filtered, stored, cassette._match_on) and (
                cassette.play_counts[index] == 0 or cassette.allow_playback_repeats):
            return filtered, stored
    return None


def compare(request: Any, recorded: Any, directives: tuple[str, ...]) -> Stale | None:
    """How ``request`` differs from the ``recorded`` one it is answered with (None: the same prompt, or not an
    LLM call llmbudget reads)."""
    found = adapter_for_path(request.path)
    body, old = _body(request.body), _body(recorded.body)
    if found is None or body is None or old is None:
        return None
    body, old = ({k: v for k, v in b.items() if k not in _NOT_PROMPT} for b in (body, old))
    if _key(request.method, request.path, body, directives, prompt_only=True) == \
            _key(recorded.method, recorded.path, old, directives, prompt_only=True):
        return None
    adapter = found[0]
    grown = adapter.estimate_input_tokens(body, body.get("model")) - \
        adapter.estimate_input_tokens(old, old.get("model"))
    return Stale(grown)


def watch_replays(on_stale: Callable[[Stale], None], directives: Callable[[], tuple[str, ...]]
                  ) -> Callable[[], None] | None:
    """Call ``on_stale`` for each stale replay of any vcrpy cassette (``directives``: the length directives the
    engine adds, which are not the prompt); returns what undoes it (None without vcrpy)."""
    try:
        from vcr.cassette import Cassette  # type: ignore[import-untyped]
    except ImportError:
        return None
    original = Cassette.play_response

    def play_response(cassette: Any, request: Any) -> Any:
        try:
            found = _recorded_for(cassette, request)
            stale = compare(*found, directives()) if found is not None else None
        except Exception as exc:  # noqa: BLE001 - vcrpy's internals moved: the replay goes on, unjudged
            log.debug("llmbudget: could not compare a replayed request with its recording: %s", exc)
            stale = None
        if stale is not None:
            on_stale(stale)
        return original(cassette, request)

    Cassette.play_response = play_response  # type: ignore[method-assign]

    def restore() -> None:
        if Cassette.play_response is play_response:
            Cassette.play_response = original  # type: ignore[method-assign]

    return restore
