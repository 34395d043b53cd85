"""OpenAI chat.completions: ``POST .../chat/completions``."""

from __future__ import annotations

from typing import Any

from ..calls import Usage
from ._base import (
    Adapter,
    ResponseState,
    _text_of,
    as_int,
    items,
    json_text,
    openai_audio_tokens,
    openai_media_tokens,
    with_reasoning_beside,
)


def chat_usage(raw: dict[str, Any]) -> Usage:
    """Usage from a chat/completions ``usage`` object (OpenAI and compatible servers)."""
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    if isinstance(prompt_details, dict) and prompt_details:
        cached = as_int(prompt_details.get("cached_tokens"))
        written = as_int(prompt_details.get("cache_write_tokens") or prompt_details.get("cache_creation_tokens"))
        input_audio = as_int(prompt_details.get("audio_tokens"))
    else:
        cached = written = input_audio = 0
    if isinstance(completion_details, dict) and completion_details:
        reasoning = as_int(completion_details.get("reasoning_tokens"))
        output_audio = as_int(completion_details.get("audio_tokens"))
    else:
        reasoning = output_audio = 0
    prompt, output = as_int(raw.get("prompt_tokens")), as_int(raw.get("completion_tokens"))
    return Usage(
        input_tokens=prompt,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=with_reasoning_beside(prompt, output, reasoning, raw.get("total_tokens")),
        reasoning_tokens=reasoning,
        input_audio_tokens=input_audio,
        output_audio_tokens=output_audio,
    )


class ChatAdapter(Adapter):
    endpoint = "chat.completions"
    path = "/chat/completions"
    limit_fields = ("max_completion_tokens", "max_tokens")
    limit_per_choice = True

    def input_text(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict):
                    for key in ("role", "name"):  # the cookbook encodes these too
                        if isinstance(message.get(key), str):
                            out.append(message[key])
                    _text_of(message.get("content"), out)
                    if message.get("tool_calls"):
                        out.append(json_text(message["tool_calls"]))
        for key in ("tools", "functions", "response_format"):
            if body.get(key):
                out.append(json_text(body[key]))
        return out

    def searches_per_call(self, body: dict[str, Any]) -> int:
        """OpenAI's chat search models (``gpt-4o-search-preview``, ``gpt-5-search-api``...) search the web on
        every call, billed per call beside the tokens and reported nowhere in the answer; so does a request with
        ``web_search_options``. One search each (priced as genai-prices lists the model's search fee, else $10 per
        1,000); left out, 40 such calls were recorded at $0.0005."""
        model = body.get("model")
        searching = isinstance(model, str) and ("-search-preview" in model or "-search-api" in model)
        return int(searching or isinstance(body.get("web_search_options"), dict))

    def web_searches(self, body: dict[str, Any]) -> int:
        return super().web_searches(body) + self.searches_per_call(body)

    def preview_searches(self, body: dict[str, Any]) -> bool:
        """A chat search model's searches are the preview tool's (OpenAI prices them so)."""
        return super().preview_searches(body) or bool(self.searches_per_call(body))

    def media_tokens(self, body: dict[str, Any], model: str | None = None) -> int:
        return sum(openai_media_tokens(m.get("content"), model) for m in items(body.get("messages"))
                   if isinstance(m, dict))

    def audio(self, body: dict[str, Any]) -> tuple[int, bool]:
        tokens = sum(openai_audio_tokens(m.get("content")) for m in items(body.get("messages")) if isinstance(m, dict))
        modalities = body.get("modalities")
        return tokens, isinstance(modalities, list) and "audio" in modalities

    def message_count(self, body: dict[str, Any]) -> int:
        messages = body.get("messages")
        return len(messages) if isinstance(messages, list) else 0

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return chat_usage(data)

    def read_json(self, data: Any, state: ResponseState) -> None:
        super().read_json(data, state)
        if not isinstance(data, dict):
            return
        choices = [choice for choice in items(data.get("choices")) if isinstance(choice, dict)]
        if len(choices) > 1:
            state.answers = []
        for choice in choices:
            message = choice.get("message")
            if state.answers is not None:
                state.answers.append(_answer_text(message))
            if isinstance(message, dict):
                _text_of(message.get("content"), state.text_parts)
                if message.get("tool_calls") or message.get("function_call"):
                    state.tool_calls = True
                if message.get("refusal"):
                    state.refused = True
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                state.finish_reasons.append(reason)

    def read_stream(self, events: list[Any], state: ResponseState) -> None:
        """Reads what settling needs in one pass: the model from the first chunk that names it, the usage
        and the finish reasons from the last chunks that carry them, and the text (kept in
        ``state.stream_parts`` for estimates; ``state.text`` is left to :meth:`stream_text`)."""
        first: dict[str, Any] | None = None
        usage_chunk: dict[str, Any] | None = None
        last_reasons: list[str] = []
        parts: list[str] = []
        by_choice: dict[Any, list[str]] = {}
        tool_calls = False
        for chunk in events:
            if not isinstance(chunk, dict):
                continue
            if first is None or (not first.get("model") and chunk.get("model")):
                first = chunk  # the first that names the model (Azure's first chunk, its filter results, has "")
            if isinstance(chunk.get("usage"), dict):
                usage_chunk = chunk
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                continue
            reasons = None
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if isinstance(content, str):
                        parts.append(content)
                        index = choice.get("index", 0)
                        by_choice.setdefault(index if isinstance(index, int) else 0, []).append(content)
                    if delta.get("tool_calls") or delta.get("function_call"):
                        tool_calls = True
                        _hidden_arguments(delta, state.hidden_parts)
                    for key in ("reasoning_content", "reasoning"):  # servers that stream the model's reasoning
                        if isinstance(delta.get(key), str):
                            state.hidden_parts.append(delta[key])
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    if reasons is None:
                        reasons = []
                    reasons.append(reason)
            if reasons:
                last_reasons = reasons
        if first is None:
            return
        self._read_common(first, state)
        if usage_chunk is not None:
            state.usage = self.reported_usage(usage_chunk["usage"])
            tier = usage_chunk.get("service_tier")
            if isinstance(tier, str):
                state.service_tier = tier
        state.finish_reasons.extend(last_reasons)
        state.tool_calls = tool_calls
        state.stream_parts = parts
        if len(by_choice) > 1:  # n > 1: the choices' chunks interleave
            state.answers = ["".join(by_choice[index]) for index in sorted(by_choice)]

    def read_event(self, data: Any, state: ResponseState) -> None:
        super().read_event(data, state)
        if not isinstance(data, dict):
            return
        for choice in items(data.get("choices")):
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    state.text_parts.append(content)
                if delta.get("tool_calls") or delta.get("function_call"):
                    state.tool_calls = True
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                state.finish_reasons.append(reason)


def _hidden_arguments(delta: dict[str, Any], out: list[str]) -> None:
    """The tool-call arguments of a stream chunk's delta (billed output, not the answer's text)."""
    calls = delta.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    functions.append(delta.get("function_call"))
    for function in functions:
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            out.append(function["arguments"])


def _answer_text(message: Any) -> str:
    """One choice's answer text."""
    out: list[str] = []
    if isinstance(message, dict):
        _text_of(message.get("content"), out)
    return "".join(out)
