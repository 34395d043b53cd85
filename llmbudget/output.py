"""Output boundary control: length directives and structured-output steering.

Output tokens cost four to eight times input tokens, and a hard ``max_tokens`` alone
cuts answers mid-sentence (and llmbudget never caches a cut answer). A *length
directive* asks the model to stay within a number of words, in the request's own
instructions (the system message, Anthropic's ``system``, Responses
``instructions``), together with a looser token cap (``2 x words + 50``) that
only stops an answer that ignores it, so answers end by themselves.

A directive is never added to a request whose own messages already say how long
to answer ("in 3 sentences", "briefly", "one word"...), that has tools, or that
asks for JSON; for a JSON schema, the schema's own bounds (``maxLength``,
``maxItems``, ``enum``...) give the cap instead, when every part of it is bounded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_DIRECTIVE", "Output", "anthropic_format", "apply_directive", "directive_cap", "says_length",
           "schema_cap", "wants_json"]

DEFAULT_DIRECTIVE = "Answer in at most {max_words} words."
_LENGTH = re.compile(
    r"\b(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|a few|a couple of|few)[\s-]+"
    r"(?:words?|sentences?|paragraphs?|pages?|lines?|bullet(?:\s+points?)?|points|characters?|tokens?)\b"
    r"|\b(?:brief(?:ly)?|concise(?:ly)?|succinct(?:ly)?|short answer|keep it short|in short|tl;?dr|one[- ]liner"
    r"|at most|no more than|word limit|in detail|detailed|elaborate|step[- ]by[- ]step|comprehensive"
    r"|thorough(?:ly)?|long-form|essay)\b"
    # other languages: a number of words, characters or pages, and "in detail" / "briefly"
    r"|(?<!\d)\d+\s*(?:слов|страниц|предложени|абзац|mots|pages|phrases|palabras|páginas|frases|parole|pagine"
    r"|wörter|worte|seiten|sätze|palavras|woorden|kelime|字|文字|語|単語|页|頁|句|段|단어|자|글자|문장)"
    r"|(?:подробно|кратко|en détail|en bref|brièvement|en detalle|brevemente|ausführlich|kurz gefasst"
    r"|in dettaglio|详细|詳細|詳しく|简要|簡潔|자세히|간단히)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Output:
    """A length directive: ``max_words`` and the instruction that says it (``{max_words}`` is filled in)."""

    max_words: int
    directive: str = DEFAULT_DIRECTIVE

    def __post_init__(self) -> None:
        if isinstance(self.max_words, bool) or not isinstance(self.max_words, int) or not 1 <= self.max_words <= 10_000:
            raise ValueError(f"output: max_words must be a whole number of words from 1 to 10000, "
                             f"got {self.max_words!r}")
        if not isinstance(self.directive, str) or not self.directive.strip():
            raise ValueError(f"output: directive must be a non-empty instruction, got {self.directive!r}")
        try:
            self.directive.format(max_words=self.max_words)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"output: directive {self.directive!r} is not a valid template "
                             f"(only {{max_words}} may be filled in): {exc}") from None

    @classmethod
    def of(cls, value: Any, what: str = "output") -> Output | None:
        """An Output from an Output, a table ``{max_words, directive}``, or None/False (none)."""
        if value is None or value is False or isinstance(value, Output):
            return value or None
        if not isinstance(value, Mapping):
            raise ValueError(f"{what}: expected a table {{max_words = N, directive = \"...\"}} or false, got {value!r}")
        unknown = set(value) - {"max_words", "directive"}
        if unknown:
            raise ValueError(f"{what}: unknown keys {sorted(unknown)}; expected max_words, directive")
        if "max_words" not in value:
            raise ValueError(f"{what}: max_words is required (the most words an answer should take)")
        try:
            return cls(value["max_words"], value.get("directive", DEFAULT_DIRECTIVE))
        except ValueError as exc:  # named as the caller names the table (the policy file's [output])
            raise ValueError(f"{what}: {str(exc).removeprefix('output: ')}") from None

    @property
    def text(self) -> str:
        return self.directive.format(max_words=self.max_words)

    @property
    def cap(self) -> int:
        return directive_cap(self.max_words)

    def cap_for(self, endpoint: str, body: Mapping[str, Any], model: str | None) -> int:
        """:attr:`cap` for a request in its own language: scaled by the tokens a word of its text takes."""
        return directive_cap(self.max_words, tokens_per_word(endpoint, body, model))


def directive_cap(max_words: int, tokens_per_word: float = 1.3) -> int:
    """The token cap that goes with a directive, with room to finish a sentence: 2 tokens a word where a word
    takes up to 2 (English about 1.3), and 1.5 times what a word takes in a language whose words take more
    (Russian 2.3, Finnish 2.6, Tamil 3.4, Amharic 6.8 on o200k), so the cap only stops an answer that ignores
    the directive."""
    return math.ceil(max_words * (2.0 if tokens_per_word <= 2.0 else 1.5 * tokens_per_word)) + 50


_SAMPLE_CHARS = 2000


def tokens_per_word(endpoint: str, body: Mapping[str, Any], model: str | None) -> float:
    """Tokens per whitespace-separated word in the request's own text (its first 2,000 characters), or in its
    user turns where they take more (a Tamil question under an English system prompt is answered in Tamil), from
    1.3 to 8 (a script without spaces between words, Chinese or Thai, reads as long words: the most)."""
    from .tokens import count_text

    ratio = 1.3
    for text in (" ".join(_texts(endpoint, body)), " ".join(_texts(endpoint, body, ("user", None)))):
        text = text[:_SAMPLE_CHARS]
        if words := len(text.split()):
            ratio = max(ratio, count_text(text, model) / words)
    return min(ratio, 8.0)


def _texts(endpoint: str, body: Mapping[str, Any],
           roles: tuple[str | None, ...] = ("system", "developer", "user", None)) -> list[str]:
    """The request's own text: its instructions (with the system roles) and the turns of ``roles``."""
    out: list[str] = []

    def add(content: Any) -> None:
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif isinstance(part, str):
                    out.append(part)

    if "system" in roles:
        for key in ("system", "instructions"):
            add(body.get(key))
    turns = body.get("messages") if endpoint != "responses" else body.get("input")
    if isinstance(turns, str):
        out.append(turns)
    elif isinstance(turns, list):
        for turn in turns:
            if isinstance(turn, dict) and turn.get("role") in roles:
                add(turn.get("content"))
    return out


def says_length(endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether the request's own instructions or question already say how long to answer."""
    return any(_LENGTH.search(text) for text in _texts(endpoint, body))


def anthropic_format(body: Mapping[str, Any]) -> Any:
    """A Messages request's structured-output format: ``output_config.format`` (how the anthropic SDK sends
    it, ``messages.parse`` included) or the older top-level ``output_format``; None without one."""
    config = body.get("output_config")
    if isinstance(config, Mapping) and config.get("format") is not None:
        return config["format"]
    return body.get("output_format")


def wants_json(body: Mapping[str, Any]) -> bool:
    """Whether the request asks for JSON (``response_format``, Responses ``text.format``, Anthropic ``output_format``)."""
    fmt = body.get("response_format")
    text = body.get("text")
    if isinstance(text, Mapping):  # Responses: text.format
        fmt = text.get("format") or fmt
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
        return True
    return bool(anthropic_format(body))  # Anthropic structured outputs (output_config.format, output_format)


def apply_directive(endpoint: str, body: dict[str, Any], output: Output) -> tuple[dict[str, Any], str] | None:
    """``body`` with the directive added, and why; None when it must not get one (tools, JSON, a length
    the request states itself, a predicted output, an answer the app started itself, an endpoint without
    instructions)."""
    if endpoint not in ("chat.completions", "responses", "messages"):
        return None
    if body.get("tools") or body.get("functions") or wants_json(body) or says_length(endpoint, body) \
            or body.get("prediction"):  # a predicted output: the answer is a whole rewritten document
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and \
            messages[-1].get("role") == "assistant":
        return None  # a prefill: the answer continues text the app wrote (an opening "{" for JSON, a format)
    text = output.text
    if endpoint == "responses":
        instructions = body.get("instructions")
        if (instructions is not None and not isinstance(instructions, str)) or body.get("prompt"):
            return None  # (a stored prompt template holds its own instructions: never written over)
        return {**body, "instructions": f"{instructions}\n\n{text}" if instructions else text}, "instructions"
    if endpoint == "messages":
        system = body.get("system")
        if system is None or system == "":
            return {**body, "system": text}, "system"
        if isinstance(system, str):
            return {**body, "system": f"{system}\n\n{text}"}, "system"
        if isinstance(system, list):
            return {**body, "system": [*system, {"type": "text", "text": text}]}, "system"
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    first = messages[0]
    if isinstance(first, dict) and first.get("role") in ("system", "developer"):
        content = first.get("content")
        if isinstance(content, str):
            return {**body, "messages": [{**first, "content": f"{content}\n\n{text}"}, *messages[1:]]}, \
                first["role"]
        if isinstance(content, list):  # content parts: one more (a second system message first broke templates)
            return {**body, "messages": [{**first, "content": [*content, {"type": "text", "text": text}]},
                                         *messages[1:]]}, first["role"]
        return None
    return {**body, "messages": [{"role": "system", "content": text}, *messages]}, "system"


def _schema_of(body: Mapping[str, Any]) -> Any:
    fmt = body.get("response_format")
    if isinstance(body.get("text"), Mapping):
        fmt = body["text"].get("format") or fmt
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        inner: Mapping[str, Any] = fmt["json_schema"] if isinstance(fmt.get("json_schema"), Mapping) else fmt
        return inner.get("schema")
    output_format = anthropic_format(body)
    if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
        return output_format.get("schema")
    return None


_MAX_VISITS = 10_000  # schema nodes one bound may visit: past it, unbounded (a $ref fan-out is exponential)


@dataclass(slots=True)
class _Walk:
    """One bound's walk: the nodes visited, and the bound of each ``$ref`` name met (computed once)."""

    visits: int = 0
    refs: dict[str, int | None] = field(default_factory=dict)


def _bound(schema: Any, defs: Mapping[str, Any], depth: int = 0, walk: _Walk | None = None) -> int | None:
    """The most tokens a JSON value of ``schema`` can take, or None if unbounded. A byte-level tokenizer (OpenAI's,
    Anthropic's) never makes a token of less than a byte, so a value's UTF-8 bytes bound its tokens: an enum or
    a name takes at most its bytes (ids and hashes come close), and a string of ``maxLength`` characters at most
    6 a character: 4 UTF-8 bytes (emoji, Amharic or Tibetan take 2-4 tokens a character), 6 when the model
    writes a character as a ``\\uXXXX`` escape."""
    walk = walk if walk is not None else _Walk()
    walk.visits += 1
    if depth > 32 or walk.visits > _MAX_VISITS or not isinstance(schema, Mapping):
        return None
    if isinstance(schema.get("$ref"), str):
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in walk.refs:
            walk.refs[name] = _bound(defs.get(name), defs, depth + 1, walk)
        return walk.refs[name]
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return max(_bytes(v) for v in schema["enum"])
    if "const" in schema:
        return _bytes(schema["const"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            bounds = [_bound(option, defs, depth + 1, walk) for option in schema[key]]
            return None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)
    kind = schema.get("type")
    if isinstance(kind, list):
        bounds = [_bound({**schema, "type": k}, defs, depth + 1, walk) for k in kind]
        return None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)
    if kind == "string":
        length = schema.get("maxLength")
        return 6 * length + 2 if isinstance(length, int) and not isinstance(length, bool) else None
    if kind in ("integer", "number"):
        return 12  # a long or exponent-form number: digits go about 3 to a token
    if kind in ("boolean", "null"):
        return 2
    if kind == "array":
        count = schema.get("maxItems")
        item = _bound(schema.get("items"), defs, depth + 1, walk)
        if not isinstance(count, int) or isinstance(count, bool) or item is None:
            return None
        return count * (item + 1) + 2
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or schema.get("additionalProperties") is not False \
                or schema.get("patternProperties") or schema.get("unevaluatedProperties", False) is not False:
            return None  # properties beyond those listed may come (a schema that is not strict): unbounded
        total = 2
        for name, sub in properties.items():
            bound = _bound(sub, defs, depth + 1, walk)
            if bound is None:
                return None
            total += bound + _bytes(str(name)) + 1
        return total
    return None


def _bytes(value: Any) -> int:
    """The UTF-8 bytes of ``value`` as JSON (its quotes included): at most that many tokens."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def schema_cap(body: Mapping[str, Any]) -> int | None:
    """A token cap from the JSON schema's own bounds (with a quarter more room), or None when any part of it
    is unbounded (a string without ``maxLength``, an array without ``maxItems``)."""
    schema = _schema_of(body)
    if not isinstance(schema, Mapping) or body.get("tools") or body.get("functions"):
        return None  # the schema bounds the final answer, not a tool call's arguments
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    bound = _bound(schema, defs)
    return None if bound is None else math.ceil(bound * 1.25) + 16
