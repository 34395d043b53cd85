"""What a cached answer may be reused for: exact keys, partitions, and the never-cache rules.

- The **exact key** hashes the whole request as it will be sent (minus transport-only
  fields such as ``stream``): a byte-for-byte repeat.
- The **partition** hashes everything that must be equal for an earlier answer to
  be valid at all: tenant, upstream (base URL: another server, an Azure deployment),
  endpoint, requested model, system/developer messages,
  tools and tool choice, response format, every sampling parameter and all earlier
  turns. Semantic matching compares only the last user turn, only inside one partition.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..breakpoints import without_cache_control
from ..calls import Call
from ..providers._base import items

__all__ = ["CacheKeys", "cache_keys", "canonical", "without_cache_control"]

# Fields that change how the answer travels, not what it says.
_TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "prompt_cache_key", "safety_identifier",
                               "service_tier", "store", "background"})
_MEDIA_PARTS = frozenset({"image_url", "input_image", "input_audio", "file", "input_file", "audio", "image", "document"})


def canonical(value: Any) -> str:
    """Stable JSON: sorted keys, no spaces, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def model_key(exact: str, model: str) -> str:
    """The exact key under which ``model``'s answer is kept when ``exact`` holds another model's: a call kept to
    its model or forced to a tier, asked beside routed calls of the same request (each replaced the other's
    answer, and every one of them missed)."""
    return _digest(exact, "answered by", model)


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """The keys of one request, or why it must not be cached (``reason``)."""

    exact: str | None
    partition: str | None
    text: str | None  # the last user turn, for the semantic tier (None: exact tier only)
    reason: str | None = None

    @property
    def cacheable(self) -> bool:
        return self.reason is None


def _never(reason: str) -> CacheKeys:
    return CacheKeys(None, None, None, reason)


def _has_media(content: Any) -> bool:
    if isinstance(content, list):
        return any(isinstance(part, dict) and part.get("type") in _MEDIA_PARTS for part in content)
    return False


def _has_tool_blocks(content: Any) -> bool:
    """Anthropic content blocks of a tool call or its result: ``tool_use``, ``tool_result`` and every kind named
    after them (``server_tool_use``, ``mcp_tool_use``, ``mcp_tool_result``, ``web_search_tool_result``, ...)."""
    return isinstance(content, list) and any(
        isinstance(block, dict) and isinstance(kind := block.get("type"), str)
        and ("tool_use" in kind or "tool_result" in kind)
        for block in content)


def _plain_text(content: Any) -> str | None:
    """The text of a content made only of text parts, else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "\n".join(texts)
    return None


def _keeps_state(endpoint: str, body: dict[str, Any]) -> bool:
    """A call run in a container that keeps its files and state between calls: Anthropic's ``container``, a
    Responses code interpreter given a container's id (not ``{"type": "auto"}``, made afresh)."""
    if endpoint == "messages":
        return bool(body.get("container"))
    if endpoint == "responses":
        return any(isinstance(tool, dict) and tool.get("type") == "code_interpreter"
                   and isinstance(tool.get("container"), str) for tool in items(body.get("tools")))
    return False


def _includes_logprobs(include: Any) -> bool:
    """The Responses API's ``include`` asking for the answer's token log-probabilities
    (``message.output_text.logprobs``)."""
    return isinstance(include, list) and any(isinstance(item, str) and "logprobs" in item for item in include)


def _number(value: Any) -> float | None:
    """``value`` as a number where a server may read it as one: an int or a float, or a string of one (vLLM and
    llama.cpp take ``"temperature": "0.7"`` and sample); None otherwise."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def _sampling_rules(body: dict[str, Any], allow_temperature: bool) -> str | None:
    n = _number(body.get("n"))
    if n is not None and n > 1:
        return "n > 1"
    if body.get("logprobs") or body.get("top_logprobs") or _includes_logprobs(body.get("include")):
        return "logprobs requested"
    temperature = _number(body.get("temperature"))
    if not allow_temperature and temperature is not None and temperature > 0:
        return "temperature > 0 (set allow_temperature to cache sampled answers)"
    return None


def cache_keys(call: Call, *, tenant: str, allow_temperature: bool = False, variant: str = "") -> CacheKeys:
    """The keys of ``call`` for ``tenant``, or the rule that keeps it out of the cache.

    Both keys name the tenant and the upstream the call is sent to (its base URL, which holds an Azure
    deployment's name): another server's model of the same name is another model; and ``variant``, where there
    is one, what the request's headers change of the answer (Anthropic's ``anthropic-beta`` features)."""
    tenant = canonical([tenant, call.base_url, variant] if variant else [tenant, call.base_url])
    body = call.body
    rest = {key: value for key, value in body.items() if key not in _TRANSPORT_FIELDS}
    if call.endpoint == "messages":  # a cache breakpoint changes what the provider caches, never the answer
        rest = without_cache_control(rest)
    if call.endpoint == "chat.completions" and body.get("store") is True:
        # the app asked OpenAI to keep this completion (evals, distillation): a hit would keep nothing, under an
        # id OpenAI does not know
        return _never("stored chat completion (store=true)")
    if _keeps_state(call.endpoint, body):
        return _never("a code execution container (its files and state last from call to call)")
    if call.endpoint in ("chat.completions", "messages"):
        return _chat_keys(call, rest, tenant, allow_temperature)
    if call.endpoint == "responses":
        return _responses_keys(call, rest, tenant, allow_temperature)
    if call.endpoint in ("embeddings", "completions"):
        if call.endpoint == "completions":
            if call.stream:  # its answer is kept as the JSON body it came in, which a stream cannot be sent
                return _never("streamed completions are not cached")
            reason = _sampling_rules(body, allow_temperature)
            if reason:
                return _never(reason)
        exact = _digest(tenant, call.endpoint, canonical(rest))
        return CacheKeys(exact, _digest(tenant, call.endpoint, str(call.model)), None)
    return _never(f"endpoint {call.endpoint} is not cached")


def _chat_keys(call: Call, rest: dict[str, Any], tenant: str, allow_temperature: bool) -> CacheKeys:
    messages = rest.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return _never("no messages")
    reason = _sampling_rules(rest, allow_temperature)
    if reason:
        return _never(reason)
    for message in messages:
        if (message.get("role") in ("tool", "function") or message.get("tool_calls") or message.get("function_call")
                or _has_tool_blocks(message.get("content"))):
            return _never("the conversation carries tool calls or tool results")
    if rest.get("audio") or "audio" in (rest.get("modalities") or ()):
        return _never("audio output")
    last = messages[-1]
    exact = _digest(tenant, call.endpoint, canonical(rest))
    if last.get("role") != "user":
        return CacheKeys(exact, None, None)
    earlier = messages[:-1]
    context = {key: value for key, value in rest.items() if key != "messages"}
    partition = _digest(tenant, call.endpoint, str(call.model), canonical(context), canonical(earlier),
                        canonical({k: v for k, v in last.items() if k != "content"}))
    if any(_has_media(m.get("content")) for m in messages):
        return CacheKeys(exact, partition, None)  # exact tier at most
    return CacheKeys(exact, partition, _plain_text(last.get("content")))


def _responses_keys(call: Call, rest: dict[str, Any], tenant: str, allow_temperature: bool) -> CacheKeys:
    body = call.body
    if body.get("previous_response_id") or body.get("conversation"):
        return _never("stateful Responses call (previous_response_id / conversation)")
    if body.get("store") is not False:
        return _never("stored Responses call (store defaults to true; set store=false to allow caching)")
    if body.get("background"):
        return _never("background Responses call")
    reason = _sampling_rules(rest, allow_temperature)
    if reason:
        return _never(reason)
    items = rest.get("input")
    exact = _digest(tenant, call.endpoint, canonical(rest))
    context = {key: value for key, value in rest.items() if key != "input"}
    if isinstance(items, str):
        return CacheKeys(exact, _digest(tenant, call.endpoint, str(call.model), canonical(context), "[]"), items)
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return _never("no input")
    for item in items:
        # messages only: any other item is a tool's call or output (function, custom, computer, shell, MCP,
        # web search...), a reasoning item or a reference to stored state
        if item.get("type", "message") != "message":
            return _never(f"the input carries a tool call, tool result or state item ({str(item.get('type'))[:40]!r}); "
                          "only messages are cached")
    last = items[-1]
    if last.get("role") != "user":
        return CacheKeys(exact, None, None)
    partition = _digest(tenant, call.endpoint, str(call.model), canonical(context), canonical(items[:-1]))
    if any(_has_media(i.get("content")) for i in items):
        return CacheKeys(exact, partition, None)
    return CacheKeys(exact, partition, _plain_text(last.get("content")))
