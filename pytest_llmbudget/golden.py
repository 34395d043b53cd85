"""Golden routing decisions: a recorded cassette pins which tier each prompt goes to.

The ``llm_golden_routing`` fixture (see ``plugin.py``) turns interception and the
project's routing policy on, and watches the vcrpy cassette of the test (the one
pytest-recording's ``vcr`` fixture holds, or one handed to :meth:`GoldenRouting.watch`).
vcrpy sits below llmbudget's transport, so it records and matches the *routed*
request. Every request the cassette is asked to play is compared with the recorded
request for the same prompt (the body without the fields routing may change); when
the model differs, the test fails with one line per prompt that moved, naming the
old and new tier and the router's score, whatever the cassette's ``match_on`` is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from llmbudget.providers import adapter_for_path
from llmbudget.routing.features import request_text
from llmbudget.routing.tiers import Routing

# Fields a routing decision may set, change or drop (a reasoning tier takes no sampling parameters, other
# models no reasoning settings; see ``llmbudget.caps.suited``): they are not part of "the same prompt".
_ROUTED_FIELDS = frozenset({"model", "max_tokens", "max_completion_tokens", "max_output_tokens",
                            "logprobs", "top_logprobs", "temperature", "top_p", "presence_penalty",
                            "frequency_penalty", "logit_bias", "reasoning_effort", "reasoning", "prompt_cache_key",
                            "stream_options"})  # (llmbudget asks a reasoning tier's stream for its usage)
_EXCERPT = 60

__all__ = ["GoldenRouting", "Moved"]


@dataclass(frozen=True)
class Moved:
    """One prompt whose request now goes to another model than the recording says."""

    prompt: str
    old_model: str
    new_model: str
    old_tier: str
    new_tier: str
    score: float | None
    threshold: float | None
    reason: str

    def line(self) -> str:
        prompt = self.prompt if len(self.prompt) <= _EXCERPT else self.prompt[: _EXCERPT - 1] + "…"
        if self.score is None or self.threshold is None:
            why = self.reason
        else:
            op = ">=" if self.score >= self.threshold else "<"
            why = f"score {self.score:.4f} {op} threshold {self.threshold:.4f}"
        return (f"golden routing: {prompt!r} moved from {self.old_tier} ({self.old_model}) "
                f"to {self.new_tier} ({self.new_model}): {why}")


def _body(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, str):
        raw = raw.encode()
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _stripped(text: Any, directives: tuple[str, ...]) -> Any:
    """``text`` without a tier's length directive llmbudget added to it (None: it was only that)."""
    if isinstance(text, str):
        for directive in directives:
            if text == directive:
                return None
            if text.endswith("\n\n" + directive):
                return text[: -len(directive) - 2]
    return text


def _unrouted(body: dict[str, Any], directives: tuple[str, ...]) -> dict[str, Any]:
    """``body`` without what routing sets: the fields of :data:`_ROUTED_FIELDS` and a tier's length directive
    (in the first system or developer message, the Responses ``instructions`` or the Messages ``system``)."""
    rest = {name: value for name, value in body.items() if name not in _ROUTED_FIELDS}
    if not directives:
        return rest
    for field in ("instructions", "system"):
        value = rest.get(field)
        if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("text") in directives:
            value = value[:-1]
        value = _stripped(value, directives)
        if value is None:
            rest.pop(field, None)
        else:
            rest[field] = value
    messages = rest.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
            and messages[0].get("role") in ("system", "developer"):
        content = _stripped(messages[0].get("content"), directives)
        rest["messages"] = messages[1:] if content is None else [{**messages[0], "content": content}, *messages[1:]]
    return rest


def _key(method: str, path: str, body: dict[str, Any], directives: tuple[str, ...] = (), *,
         prompt_only: bool = False) -> str:
    rest = _unrouted(body, directives)
    if prompt_only:  # without the fields that may change on every run
        rest = {k: v for k, v in rest.items() if k not in _PER_RUN}
    return json.dumps([method.upper(), path.rstrip("/"), rest], sort_keys=True, default=str)


#: Fields an app may set anew on every run (an end user's id, a request id, a seed); none of them routes a call.
_PER_RUN = frozenset({"user", "metadata", "seed", "safety_identifier", "prompt_cache_key"})


def prompt_of(body: dict[str, Any]) -> str:
    """The last user turn of a request body (what a reader recognises the test by)."""
    return request_text(body).query


class GoldenRouting:
    """Compares the routed requests of a test with the ones its cassette recorded."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        #: The tiers' length directives, which the requests of a tier carry and the others do not.
        self.directives = tuple(tier.output.text for tier in routing.tiers.values() if tier.output is not None)
        self.moved: list[Moved] = []
        self._restore: list[Callable[[], None]] = []

    def watch(self, cassette: Any) -> None:
        """Check every request ``cassette`` (a vcrpy cassette, from ``use_cassette(...)``) is asked for."""
        if getattr(cassette, "_llmbudget_golden", None) is self:
            return
        original = cassette.can_play_response_for

        def can_play_response_for(request: Any) -> bool:
            self.check(request, cassette.requests)
            return bool(original(request))

        cassette.can_play_response_for = can_play_response_for
        cassette._llmbudget_golden = self

        def restore() -> None:
            cassette.__dict__.pop("can_play_response_for", None)
            cassette.__dict__.pop("_llmbudget_golden", None)

        self._restore.append(restore)

    def close(self) -> None:
        while self._restore:
            self._restore.pop()()

    def check(self, request: Any, recorded: Iterable[Any]) -> Moved | None:
        """Record (and return) how ``request`` moved, if a recorded request for its prompt went elsewhere."""
        body = _body(request.body)
        if body is None or not isinstance(body.get("model"), str):
            return None
        olds = [(old, old_body) for old in recorded if (old_body := _body(old.body)) is not None]
        old_models: list[Any] = []
        # the request as recorded; else one with the same prompt (a field such as ``user`` or a request id in
        # ``metadata`` changes on every run: such a request never matched, and its moves passed unseen)
        for prompt_only in (False, True):
            key = _key(request.method, request.path, body, self.directives, prompt_only=prompt_only)
            old_models = [old_body.get("model") for old, old_body in olds
                          if _key(old.method, old.path, old_body, self.directives, prompt_only=prompt_only) == key]
            if old_models:
                break
        if not old_models or body["model"] in old_models:
            return None
        moved = self._moved(request.path, body, str(old_models[0]))
        self.moved.append(moved)
        return moved

    def _tier(self, model: str) -> str:
        for name, tier in self.routing.tiers.items():
            if model in (tier.model, tier.anthropic):
                return name
        as_asked = [name for name, tier in self.routing.tiers.items() if tier.model is None]
        return as_asked[0] if as_asked else "no tier"

    def _moved(self, path: str, body: dict[str, Any], old_model: str) -> Moved:
        score = threshold = None
        reason = "routed"
        found = adapter_for_path(path)
        if found is not None:
            adapter, base = found
            try:
                decision = self.routing.decide(adapter.parse(body, base))
                score, threshold, reason = decision.score, decision.threshold, decision.reason
            except Exception as exc:  # noqa: BLE001  (the score explains; the move is the finding)
                reason = f"score unavailable: {exc}"
        return Moved(prompt=prompt_of(body), old_model=old_model, new_model=body["model"],
                     old_tier=self._tier(old_model), new_tier=self._tier(body["model"]),
                     score=score, threshold=threshold, reason=reason)
