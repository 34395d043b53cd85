"""OpenAI legacy completions: ``POST .../completions``."""

from __future__ import annotations

from typing import Any

from ..calls import Usage
from ._base import Adapter, ResponseState, _count, _text_of, items, token_ids
from .chat import chat_usage


def _prompts(prompt: Any) -> int:
    """How many prompts a request's ``prompt`` holds: a text, a list of texts, one prompt's token ids, or a list
    of such lists."""
    many = isinstance(prompt, list) and bool(prompt) and all(isinstance(p, (str, list)) for p in prompt)
    return len(prompt) if many and isinstance(prompt, list) else 1


class CompletionsAdapter(Adapter):
    endpoint = "completions"
    path = "/completions"
    limit_fields = ("max_tokens",)
    limit_per_choice = True

    def input_text(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        _text_of(body.get("prompt"), out)
        suffix = body.get("suffix")  # the text after the insertion, billed as prompt tokens with every prompt
        if isinstance(suffix, str) and suffix:
            out.extend([suffix] * _prompts(body.get("prompt")))
        return out

    def media_tokens(self, body: dict[str, Any], model: str | None = None) -> int:
        return token_ids(body.get("prompt"))

    def answers(self, body: dict[str, Any]) -> int:
        """Every prompt of a list gets ``max(n, best_of)`` completions, each billed (``best_of``'s too)."""
        return _prompts(body.get("prompt")) * max(_count(body.get("n")) or 1, _count(body.get("best_of")) or 1)

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return chat_usage(data)

    def _read_choices(self, data: Any, state: ResponseState) -> None:
        if not isinstance(data, dict):
            return
        for choice in items(data.get("choices")):
            if isinstance(choice, dict):
                text = choice.get("text")
                if isinstance(text, str):
                    state.text_parts.append(text)
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    state.finish_reasons.append(reason)

    def read_json(self, data: Any, state: ResponseState) -> None:
        super().read_json(data, state)
        self._read_choices(data, state)

    def read_event(self, data: Any, state: ResponseState) -> None:
        super().read_event(data, state)
        self._read_choices(data, state)
