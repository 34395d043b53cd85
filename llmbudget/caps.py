"""Output caps: bound what a call may write, in the field its API and model read.

A cap never raises a limit the app set; it only lowers it or adds one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["cap_field", "apply_cap", "has_limit", "thinks", "suited", "reasoning_model", "plain_model",
           "REASONING_PREFIXES"]

#: Models that take ``max_completion_tokens`` and reject ``max_tokens`` on chat completions.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5", "codex-mini")
#: OpenAI models that do not reason, and refuse ``reasoning_effort`` / ``reasoning``.
_PLAIN_PREFIXES = ("gpt-4", "gpt-3.5", "chatgpt-")
#: Sampling parameters OpenAI's reasoning models refuse (with HTTP 400).
_SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias")


def cap_field(endpoint: str, body: Mapping[str, Any], model: str | None) -> str | None:
    """The output-limit field of a request: the one it uses, else the one its API and model read."""
    if endpoint == "responses":
        return "max_output_tokens"
    if endpoint in ("completions", "messages"):
        return "max_tokens"
    if endpoint != "chat.completions":
        return None
    for key in ("max_completion_tokens", "max_tokens"):
        if key in body:
            return key
    return "max_completion_tokens" if reasoning_model(model) else "max_tokens"


def has_limit(endpoint: str, body: Mapping[str, Any], model: str | None) -> bool:
    """Whether the request sets its own output limit (a cap then only lowers it)."""
    field = cap_field(endpoint, body, model)
    return field is not None and body.get(field) is not None


def apply_cap(endpoint: str, body: dict[str, Any], model: str | None, cap: int) -> tuple[dict[str, Any], bool]:
    """``body`` with its output limit at most ``cap``; True when that changed anything."""
    field = cap_field(endpoint, body, model)
    if field is None or cap <= 0:
        return body, False
    current = body.get(field)
    if current is not None and (isinstance(current, bool) or not isinstance(current, int) or current <= 0):
        # the app's own limit, wrong for OpenAI ("20", 0, -5, true): the API's to refuse, as without llmbudget (a lax
        # server takes "500" as 500: the reservation holds that much, see providers._base._count; no cap replaces it)
        return body, False
    if current is not None and current <= cap:
        return body, False
    return {**body, field: cap}, True


def thinks(endpoint: str, body: Mapping[str, Any], model: str | None) -> bool:
    """Whether the request's output limit also bounds hidden reasoning: Anthropic ``thinking`` (which needs
    ``max_tokens`` above its ``budget_tokens``), OpenAI's reasoning models and reasoning settings. A cap that
    llmbudget adds by itself (a schema's bounds, a length directive's, a budget's) would leave such a call no
    room to answer, or make the API refuse it, so none is added to it."""
    if endpoint == "messages":
        thinking = body.get("thinking")
        return isinstance(thinking, Mapping) and thinking.get("type") not in (None, "disabled")
    if endpoint not in ("chat.completions", "responses"):
        return False
    reasoning, thinking, template = body.get("reasoning"), body.get("thinking"), body.get("chat_template_kwargs")
    if body.get("reasoning_effort") not in (None, "none") or (isinstance(reasoning, Mapping) and (
            reasoning.get("effort") not in (None, "none") or reasoning.get("max_tokens")  # OpenRouter's
            or reasoning.get("enabled") is True)) \
            or (isinstance(thinking, Mapping) and thinking.get("type") not in (None, "disabled")) \
            or (isinstance(template, Mapping) and template.get("enable_thinking") is True):  # vLLM's, Qwen3's
        return True  # (Anthropic's and Gemini's OpenAI-compatible APIs take "thinking" in a chat request too)
    return reasoning_model(model) or other_reasoner(model) or _speaks(body)


#: Open and other providers' models whose output limit also bounds their reasoning (gpt-oss, DeepSeek's
#: reasoner and R1, QwQ, Magistral, Gemini 2.5 and 3, which think by default, Qwen3 but its instruct models, Grok 4
#: and Grok 3 mini, and any "-thinking" or "reasoner" model name).
OTHER_REASONER_PREFIXES = ("gpt-oss", "deepseek-reasoner", "deepseek-r1", "qwq", "magistral", "gemini-2.5",
                           "gemini-3", "qwen3", "grok-4", "grok-3-mini")


#: Model families known to answer without reasoning unless a request asks them to (which :func:`thinks` reads):
#: OpenAI's and Anthropic's non-reasoning models, Gemini before 2.5, and open families served as they come.
PLAIN_PREFIXES = ("gpt-4", "gpt-3.5", "chatgpt-", "gpt-5-chat", "claude", "gemini-1", "gemini-2.0", "gemma",
                  "llama", "meta-llama", "codellama", "mistral", "mixtral", "ministral", "codestral", "open-mistral",
                  "open-mixtral", "pixtral", "phi-3", "phi3", "phi-4", "phi4", "qwen2", "qwen-", "smollm2",
                  "smollm-", "command", "granite", "deepseek-chat", "deepseek-coder", "deepseek-v2", "deepseek-v3",
                  "kimi-k2", "falcon", "olmo", "yi-")
#: A cloud catalogue's prefix before the model's own name (Bedrock's ``us.anthropic.claude-...``,
#: ``meta.llama3-...``, ``cohere.command-r-...``).
_CATALOGUE = re.compile(r"^(?:(?:us|eu|apac|global)\.)?(?:anthropic|meta|cohere|mistral|amazon|ai21)\.")
#: Marks of a reasoning variant inside a plain family's name (Phi-4-reasoning, Llama Nemotron Super, R1
#: distills of Llama and Qwen, Gemini 2.0 Flash Thinking).
_REASONING_MARKS = ("reason", "think", "-r1", "r1-", "nemotron", "qwq", "magistral")


def plain_model(model: str | None) -> bool:
    """Whether ``model`` is known to answer without reasoning (see :data:`PLAIN_PREFIXES`). Any other model may
    reason within its output limit (a self-hosted or gateway name no list can know: Phi-4-reasoning, Sonar
    Reasoning, GLM-4.6, MiniMax-M2 all do), so an output cap of llmbudget's own (a schema's bounds, a length
    directive's) is only added to a model this says is plain."""
    name = _CATALOGUE.sub("", _family(model))
    return name.startswith(PLAIN_PREFIXES) and not any(mark in name for mark in _REASONING_MARKS)


def other_reasoner(model: str | None) -> bool:
    """Whether ``model`` reasons before it answers, within its output limit, though not one of OpenAI's."""
    name = _family(model)
    if name.startswith("qwen3") and "instruct" in name:  # Qwen3's instruct models do not think
        return False
    return name.startswith(OTHER_REASONER_PREFIXES) or "-thinking" in name or "reasoner" in name


def _speaks(body: Mapping[str, Any]) -> bool:
    """A chat request for a spoken answer: its audio tokens count against the output limit too."""
    modalities = body.get("modalities")
    return isinstance(modalities, list) and "audio" in modalities


def _family(model: str | None) -> str:
    """The model's name without its provider's prefix; "" for none, or a body's ``model`` that is not a string
    (the request goes as it is, for the server to refuse)."""
    return model.lower().split("/")[-1] if isinstance(model, str) else ""


def reasoning_model(model: str | None) -> bool:
    """Whether ``model`` is one of OpenAI's reasoning models (o-series, gpt-5; not gpt-5-chat, which does not
    reason), whose output limit is ``max_completion_tokens`` and also bounds the hidden reasoning."""
    name = _family(model)
    return name.startswith(REASONING_PREFIXES) and not name.startswith("gpt-5-chat")


def suited(endpoint: str, body: dict[str, Any], model: str | None) -> dict[str, Any]:
    """``body``, which routing sends to ``model`` instead of the model the app wrote it for, without the
    parameters ``model`` refuses: an OpenAI reasoning model (o-series, gpt-5) takes ``max_completion_tokens``
    instead of ``max_tokens`` and no sampling parameters (``temperature``, ``logprobs``...); a model that does
    not reason (gpt-4o, gpt-4.1...) takes no ``reasoning_effort`` or ``reasoning`` (nor an ``include`` of
    ``reasoning.encrypted_content``). Other models' requests are
    left as they are (what they refuse is unknown: a refusal sends the call to the strong tier)."""
    if endpoint not in ("chat.completions", "responses"):
        return body
    if reasoning_model(model):
        out = {k: v for k, v in body.items() if k not in _SAMPLING}
        if endpoint == "chat.completions" and "max_tokens" in out:
            limit = out.pop("max_tokens")
            out.setdefault("max_completion_tokens", limit)
        return out if out != body else body
    if _family(model).startswith(_PLAIN_PREFIXES):
        drop = ("reasoning_effort",) if endpoint == "chat.completions" else ("reasoning",)
        out = {k: v for k, v in body.items() if k not in drop}
        include = out.get("include")
        if isinstance(include, list) and "reasoning.encrypted_content" in include:  # nothing to include there
            kept = [item for item in include if item != "reasoning.encrypted_content"]
            out = {k: v for k, v in out.items() if k != "include"} | ({"include": kept} if kept else {})
        return out if out != body else body
    return body
