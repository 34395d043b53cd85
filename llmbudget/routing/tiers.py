"""Routing policy: which tier a request goes to, and where that tier lives."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..calls import Call
from ..config import request_path
from ..output import anthropic_format

__all__ = ["Tier", "Routing", "Decision"]


@dataclass(frozen=True, slots=True)
class Tier:
    """A tier: the model it sends (``None``: as requested), its base URL and its output cap.

    ``model`` serves OpenAI-format requests; Anthropic Messages requests take ``anthropic``
    (or ``model`` when that is a Claude model): a tier never sends a Claude request to an
    OpenAI model or the reverse. ``base_url`` applies to OpenAI-format requests only. A request sent to a
    ``base_url`` on another host never carries the app's credentials (its ``Authorization``, ``api-key``,
    organization and project headers, cookies); ``api_key_env`` names the environment variable whose value
    it sends instead, as ``Authorization: Bearer``.
    """

    name: str
    model: str | None = None
    base_url: str | None = None
    max_output_tokens: int | None = None
    anthropic: str | None = None
    #: A length directive for what this tier is sent (``max_words`` in the table).
    output: Any = None
    #: The environment variable holding the API key sent to ``base_url`` (read when a call is sent).
    api_key_env: str | None = None

    def model_for(self, endpoint: str) -> str | None:
        """The model this tier sends a request of ``endpoint`` to (None: the model the app asked for)."""
        if endpoint == "messages":
            if self.anthropic:
                return self.anthropic
            return self.model if self.model and self.model.lower().startswith("claude") else None
        if self.model and self.model.lower().startswith("claude") and not self.base_url:
            return None  # never an OpenAI request to Anthropic's model on the app's host (a gateway's base_url may)
        return self.model

    def base_url_for(self, endpoint: str) -> str | None:
        return None if endpoint == "messages" else self.base_url

    @classmethod
    def of(cls, name: str, value: Any) -> Tier:
        if isinstance(value, Tier):
            return value
        if value is None or isinstance(value, str):
            return cls(name, value or None)
        if isinstance(value, Mapping):
            unknown = set(value) - {"model", "base_url", "max_output_tokens", "anthropic", "max_words", "directive",
                                    "api_key_env"}
            if unknown:
                raise ValueError(f"tier {name!r}: unknown keys {sorted(unknown)}; expected model, base_url, "
                                 "max_output_tokens, anthropic, max_words, directive, api_key_env")
            for key in ("model", "base_url", "anthropic", "api_key_env"):
                if value.get(key) is not None and not isinstance(value[key], str):
                    raise ValueError(f"tier {name!r}: {key} must be a string, got {value[key]!r}")
            cap = value.get("max_output_tokens")
            if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0):
                raise ValueError(f"tier {name!r}: max_output_tokens must be a positive integer, got {cap!r}")
            base_url = value.get("base_url")
            key_env = value.get("api_key_env") or None
            if key_env is not None and not base_url:
                raise ValueError(f"tier {name!r}: api_key_env is the key sent to the tier's base_url; set base_url too")
            if key_env is not None and not os.environ.get(key_env):
                raise ValueError(f"tier {name!r}: api_key_env names {key_env!r}, which is not set in the environment")
            output = None
            if "max_words" in value or "directive" in value:
                from ..output import Output

                output = Output.of({k: value[k] for k in ("max_words", "directive") if k in value}, f"tier {name!r}")
            return cls(name, value.get("model") or None, base_url.rstrip("/") if base_url else None, cap,
                       value.get("anthropic") or None, output, key_env)
        raise TypeError(f"tier {name!r}: expected a model name or a table, got {value!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request went and why (kept in the ledger record)."""

    tier: str
    score: float | None
    threshold: float | None
    reason: str
    features: tuple[tuple[str, float], ...] = ()


class Routing:
    """Send each request to the cheapest tier that will do.

    - ``tiers``: ``{"small": "gpt-4.1-nano", "large": None}`` (``None``: the model
      the app asked for); a tier may be a table ``{model, base_url, max_output_tokens}``
      to live on another server (a self-hosted model) or to cap its output.
    - ``weak`` / ``strong``: the tier names the router chooses between.
    - ``threshold``: router score at or above which a request goes to the strong tier
      (default: the shipped router's, chosen to keep 97% of the all-strong accuracy on
      prompts it never trained on; calibrate it on your own labeled traffic with
      ``llmbudget calibrate router --keep-quality``).
    - ``never``: path globs of requests never routed (they keep their model);
      ``route_tools`` / ``route_schemas``: also route requests with tools or a
      response schema (off: those keep their model).
    - ``escalate``: retry once on the strong tier when the weak tier's (non-streamed)
      answer fails a check: cut by an output cap llmbudget set, invalid JSON where
      JSON was asked for, or an explicit refusal. The ledger keeps both attempts.
    - ``min_confidence``: a cascade. Non-streamed chat requests sent to the weak tier
      ask for the answer's token log-probabilities (free with the answer; stripped
      before the app sees it unless it asked for them), and an answer whose
      geometric-mean token probability is below this is retried once on the strong
      tier. Needs a weak-tier model that returns log-probabilities (OpenAI's
      non-reasoning chat models, llama.cpp, vLLM); without them nothing is escalated.
    """

    def __init__(
        self,
        *,
        tiers: Mapping[str, Any],
        weak: str = "small",
        strong: str = "large",
        threshold: float | None = None,
        router: Any = None,
        never: Sequence[str] = (),
        route_tools: bool = False,
        route_schemas: bool = False,
        escalate: bool = False,
        min_confidence: float | None = None,
    ) -> None:
        self.tiers = {name: Tier.of(name, value) for name, value in tiers.items()}
        for name in (weak, strong):
            if name not in self.tiers:
                raise ValueError(f"routing: tier {name!r} is not defined; tiers are {sorted(self.tiers)}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0.0 <= threshold <= 1.0):
            raise ValueError(f"routing: threshold must be a number within [0, 1] (a router score), got {threshold!r}")
        self.weak, self.strong = weak, strong
        if router is None:
            from .classifier import Router

            router = Router(threshold=threshold)
        self.router = router
        self.threshold = threshold if threshold is not None else float(router.threshold)
        self.never = tuple(never)
        self.route_tools = route_tools
        self.route_schemas = route_schemas
        self.escalate = escalate
        if min_confidence is not None and (isinstance(min_confidence, bool) or
                                           not isinstance(min_confidence, (int, float)) or
                                           not 0.0 < min_confidence < 1.0):
            raise ValueError(f"routing: min_confidence must be a probability between 0 and 1 (exclusive), "
                             f"got {min_confidence!r}")
        self.min_confidence = None if min_confidence is None else float(min_confidence)

    def _stays(self, call: Call, tier: str) -> bool:
        """Whether ``call`` must not go to ``tier``: a call the provider keeps (a Responses call's store or chain,
        a chat completion's ``store: true``), whose id is only known where it is kept, and a tier on another host."""
        return keeps_state(call.body, call.endpoint) and \
            elsewhere(self.tiers[tier].base_url_for(call.endpoint), call.base_url)

    def decide(self, call: Call, *, path: str = "", forced: str | None = None) -> Decision:
        """The tier for ``call``; ``forced`` (a tier name from the scope) wins over the router."""
        if forced is not None:
            if forced not in self.tiers:
                raise ValueError(f"tier {forced!r} forced by the scope is not defined; tiers are {sorted(self.tiers)}")
            if forced != self.strong and self._stays(call, forced):
                return Decision(self.strong, None, None, f"forced to {forced!r}, but {_KEPT_ON_HOST}")
            return Decision(forced, None, None, "forced")
        if call.endpoint not in ("chat.completions", "responses", "messages"):
            return Decision(self.strong, None, None, f"{call.endpoint} is not routed")
        if any(fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(request_path(path), pattern)
               for pattern in self.never):  # either reading of repeated slashes (werkzeug's, Starlette's)
            return Decision(self.strong, None, None, "path is never routed")
        body = chat_view(call.body) if call.endpoint == "messages" else call.body
        kept = never_routed(body, route_tools=self.route_tools, route_schemas=self.route_schemas)
        if kept is not None:
            return Decision(self.strong, None, None, kept)
        score = float(self.router.score(body))
        tier = self.strong if score >= self.threshold else self.weak
        if tier != self.strong and self._stays(call, tier):
            return Decision(self.strong, score, self.threshold, _KEPT_ON_HOST)
        if tier != self.strong:
            refused = _reasoning_refuses(call.endpoint, body, self.tiers[tier].model_for(call.endpoint))
            if refused is not None:
                return Decision(self.strong, score, self.threshold, f"tier {tier!r} reasons: {refused}")
        try:
            features = tuple((name, float(value)) for name, value in self.router.explain(body, top=3))
        except Exception:
            features = ()
        return Decision(tier, score, self.threshold, "router", features)


_KEPT_ON_HOST = "a call kept on its host (store or previous_response_id)"


def _reasoning_refuses(endpoint: str, body: Mapping[str, Any], model: str | None) -> str | None:
    """What of ``body`` a reasoning tier (o-series, gpt-5) would drop, so that the call must not go there, or
    None: log probabilities and logit biases (the app's code reads them, or relies on them: dropped, the app got
    ``logprobs=None``)."""
    from ..caps import reasoning_model

    if endpoint not in ("chat.completions", "responses") or not reasoning_model(model):
        return None
    asked = [name for name in ("logprobs", "top_logprobs", "logit_bias") if body.get(name) not in (None, False)]
    return f"it refuses {', '.join(asked)}" if asked else None


def fine_tuned(model: str | None) -> bool:
    """Whether ``model`` is a fine-tune (``ft:gpt-4o-mini-...:org::id``; legacy ``curie:ft-org-...``): no tier
    stands in for it."""
    return isinstance(model, str) and (model.startswith("ft:") or ":ft-" in model)


def keeps_state(body: Mapping[str, Any], endpoint: str = "responses") -> bool:
    """A request whose answer the provider stores or that continues one it stored, which ties it to the host
    that holds it: a Responses request (``store`` unless false, ``previous_response_id``, ``conversation``), or a
    chat completion with ``store: true`` (which ``chat.completions.retrieve`` and stored-completion evals read
    back)."""
    if endpoint == "chat.completions":
        return body.get("store") is True
    if endpoint != "responses":
        return False
    return body.get("store") is not False or bool(body.get("previous_response_id") or body.get("conversation"))


def elsewhere(tier_url: str | None, base_url: str) -> bool:
    return tier_url is not None and tier_url.rstrip("/") != base_url.rstrip("/")


def chat_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages body as the router reads chat: its ``system`` as the first message."""
    system = body.get("system")
    raw = body.get("messages")
    messages: list[Any] = raw if isinstance(raw, list) else []
    if isinstance(system, list):
        system = "\n".join(b.get("text", "") for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
    view = {key: value for key, value in body.items() if key not in ("system", "messages")}
    view["messages"] = ([{"role": "system", "content": system}] if isinstance(system, str) and system else []) + [
        *messages]
    output_format = anthropic_format(body)
    if output_format is not None:
        view["response_format"] = output_format
    return view



def never_routed(body: Mapping[str, Any], *, route_tools: bool = False, route_schemas: bool = False) -> str | None:
    """Why routing keeps ``body`` (as :func:`chat_view` shows a Messages one) on the strong tier whatever its
    score (its tools, its response schema), or None when its score decides."""
    if not route_tools and (body.get("tools") or body.get("functions")):
        return "request has tools"
    if isinstance(body.get("prompt"), Mapping):  # a Responses stored prompt: its model and tools are not seen here
        return "request uses a stored prompt"
    model = body.get("model")
    if isinstance(body.get("web_search_options"), Mapping) or (isinstance(model, str) and (
            "-search-preview" in model or "-search-api" in model)):
        return "request searches the web"  # (another model would answer without searching)
    if not route_schemas and _has_schema(body):
        return "request has a response schema"
    return None


def _has_schema(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        return True
    text = body.get("text")
    return isinstance(text, Mapping) and isinstance(text.get("format"), Mapping) and \
        text["format"].get("type") == "json_schema"
