"""OpenAI embeddings: ``POST .../embeddings``."""

from __future__ import annotations

from typing import Any

from ..calls import Usage
from ._base import Adapter, _text_of, as_int, token_ids


class EmbeddingsAdapter(Adapter):
    endpoint = "embeddings"
    path = "/embeddings"

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        return 0

    def input_text(self, body: dict[str, Any]) -> list[str]:
        out: list[str] = []
        _text_of(body.get("input"), out)
        return out

    def media_tokens(self, body: dict[str, Any], model: str | None = None) -> int:
        return token_ids(body.get("input"))

    def usage(self, data: dict[str, Any]) -> Usage | None:
        return Usage(input_tokens=as_int(data.get("prompt_tokens") or data.get("input_tokens")))
