"""OpenAI chat.completions: ``POST .../chat/completions``."""

from __future__ import annotations

from typing import Any

from ..calls import Usage
from ._base import Adapter, ResponseState, _text_of, items, as_int, json_text


def chat_usage(raw: dict[str, Any]) -> Usage:
    """Usage from a chat/completions ``usage`` object (OpenAI and compatible servers)."""
    prompt_details = raw.get("prompt_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    completion_details = raw.get("completion_tokens_details")
    completion_details = completion_details if isinstance(completion_details, dict) else {}
    return Usage(
        input_tokens=as_int(raw.get("prompt_tokens")),
        cached_input_tokens=as_int(prompt_details.get("cached_tokens")),
        cache_write_tokens=as_int(
            prompt_details.get("cache_write_tokens") or prompt_details.get("cache_creation_tokens")
        ),
        output_tokens=as_int(raw.get("completion_tokens")),
        reasoning_tokens=as_int(completion_details.get("reasoning_tokens")),
        input_audio_tokens=as_int(prompt_details.get("audio_tokens")),
        output_audio_tokens=as_int(completion_details.get("audio_tokens")),
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

    def message_count(self, body: dict[str, Any]) -> int:
        messages = body.get("messages")
        return len(messages) if isinstance(messages, list) else 0

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return chat_usage(data)

    def read_json(self, data: Any, state: ResponseState) -> None:
        super().read_json(data, state)
        if not isinstance(data, dict):
            return
        for choice in items(data.get("choices")):
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                _text_of(message.get("content"), state.text_parts)
                if message.get("tool_calls") or message.get("function_call"):
                    state.tool_calls = True
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                state.finish_reasons.append(reason)

    def read_stream(self, events: list[Any], state: ResponseState) -> None:
        """Reads only what settling needs: usage sits in the last chunks, the model in the first.

        The text is left to :meth:`stream_text` (needed only when there is no usage).
        """
        chunks = [event for event in events if isinstance(event, dict)]
        if not chunks:
            return
        self._read_common(chunks[0], state)
        for chunk in reversed(chunks):
            raw = chunk.get("usage")
            if isinstance(raw, dict):
                state.usage = self.usage(raw)
                tier = chunk.get("service_tier")
                if isinstance(tier, str):
                    state.service_tier = tier
                break
        for chunk in reversed(chunks):
            reasons = [c.get("finish_reason") for c in items(chunk.get("choices")) if isinstance(c, dict)]
            reasons = [reason for reason in reasons if isinstance(reason, str)]
            if reasons:
                state.finish_reasons.extend(reasons)
                break
        state.tool_calls = any(
            isinstance(c, dict) and isinstance(c.get("delta"), dict)
            and (c["delta"].get("tool_calls") or c["delta"].get("function_call"))
            for chunk in chunks for c in items(chunk.get("choices"))
        )

    def stream_text(self, events: list[Any]) -> str:
        return "".join(
            content
            for event in events if isinstance(event, dict)
            for c in items(event.get("choices")) if isinstance(c, dict) and isinstance(c.get("delta"), dict)
            for content in (c["delta"].get("content"),) if isinstance(content, str)
        )

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
