"""What every wire-format adapter provides, and the SSE/JSON readers they share."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import tokens
from ..calls import MAX_TOKENS, Call, Usage

__all__ = ["Adapter", "BadUsage", "ResponseState", "as_int"]

log = logging.getLogger("llmbudget")



class BadUsage(ValueError):
    """A usage object whose token counts are not whole numbers from 0 to :data:`MAX_TOKENS`."""


def as_int(value: Any, most: int = MAX_TOKENS, what: str = "token count") -> int:
    """A token count from a JSON value: absent (``None``) is 0; else a whole number from 0 to ``most``
    (:data:`MAX_TOKENS`; ``12.0`` too, as some servers write it), or :class:`BadUsage`."""
    if value is None:
        return 0
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer()) or not 0 <= value <= most):
        raise BadUsage(f"{what} {value!r} is not a whole number from 0 to {most:,}")
    return int(value)


def with_reasoning_beside(prompt: int, output: int, reasoning: int, total: Any) -> int:
    """The output tokens billed: ``output``, plus ``reasoning`` where the usage counts it beside the output rather
    than in it (some gateways' Gemini thinking): more reasoning than output, or a ``total`` that adds all three;
    with no reasoning count, a ``total`` above ``prompt + output`` less the prompt."""
    counted = isinstance(total, (int, float)) and not isinstance(total, bool)
    if reasoning and (reasoning > output or (counted and total == prompt + output + reasoning)):
        return output + reasoning
    if counted and not reasoning and prompt and output:  # (a count left out is estimated: see filled_usage)
        try:
            whole = as_int(total)
        except BadUsage:
            return output
        if whole > prompt + output:  # hidden output counted in the total alone (a gateway's Gemini thinking, with
            return whole - prompt  # no completion_tokens_details): left out, 603 billed output tokens counted 198
    return output


def output_as_reported(body: Mapping[str, Any]) -> bool:
    """Whether a 0 output count is the truth for a request: one that allows no output (a limit of 0) or echoes
    its prompt (legacy completions' ``echo``, whose text is the prompt, not output)."""
    return bool(body.get("echo")) or any(body.get(key) == 0 for key in ("max_tokens", "max_completion_tokens",
                                                                        "max_output_tokens"))


def filled_usage(usage: Usage, *, input_estimate: Callable[[], int], output_text: Callable[[], str],
                 model: str | None, reported_output_stands: bool) -> Usage:
    """A usage a server reported, with what it left out filled in (``estimated``): no input count (``{}``, a null
    ``prompt_tokens``, a gateway's stream without Anthropic's ``message_start``) is ``input_estimate()``, and no
    output count for an answer that has output, the estimate of ``output_text()`` (its text, and its tool calls'
    arguments, :func:`tool_arguments`), unless the request says 0 is right (``reported_output_stands``: see
    :func:`output_as_reported`). Never
    a silent $0 for an answered call: live (:class:`~llmbudget.pipeline.Attempt`) or in a batch's results."""
    changes: dict[str, Any] = {}
    if not usage.input_tokens:
        guess = input_estimate()
        if guess > 0:
            changes["input_tokens"] = guess
    if not usage.output_tokens and not reported_output_stands:
        seen = tokens.estimate_output_tokens(output_text(), model=model)
        if seen > 0:
            changes["output_tokens"] = seen
    return usage.replace(**changes, estimated=True) if changes else usage


def tool_arguments(answer: Any, depth: int = 0) -> str:
    """The tool calls' arguments a JSON answer holds (chat ``tool_calls``, Responses ``function_call`` items,
    Anthropic ``tool_use`` blocks): billed as output, and not in the answer's text."""
    if depth > 8:
        return ""
    if isinstance(answer, list):
        return "".join(tool_arguments(item, depth + 1) for item in answer)
    if not isinstance(answer, dict):
        return ""
    parts = []
    for key, value in answer.items():
        if key == "arguments" and isinstance(value, str):
            parts.append(value)
        elif key == "input" and answer.get("type") in ("tool_use", "server_tool_use"):
            parts.append(json.dumps(value))
        elif isinstance(value, (dict, list)):
            parts.append(tool_arguments(value, depth + 1))
    return "".join(parts)


#: The most web searches one call is believed to make (each costs a cent: a count of a billion was $10M).
MAX_SEARCHES = 10_000


@dataclass(slots=True)
class ResponseState:
    """What a response revealed so far (filled by JSON or by stream events)."""

    usage: Usage | None = None
    model: str | None = None
    service_tier: str | None = None
    text_parts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    done: bool = False
    tool_calls: bool = False
    #: A stream's generated text, when the adapter collected it while reading the stream
    #: (None: ask :meth:`Adapter.stream_text`).
    stream_parts: list[str] | None = None
    #: Each answer's text where a response holds several (chat ``n`` > 1), in choice order; None: one answer.
    answers: list[str] | None = None
    #: Billed output a stream carried beside the answer's text (reasoning, thinking, tool-call arguments): only
    #: for estimates of a stream that was cut or reported no usage.
    hidden_parts: list[str] = field(default_factory=list)
    #: The usage seen is the stream's final count (False: Anthropic's ``message_start`` placeholder only, which
    #: reports 1 output token, with no ``message_delta`` output count after it).
    usage_final: bool = True
    #: The model refused to answer (chat ``message.refusal``, a Responses ``refusal`` part, Anthropic's
    #: ``stop_reason: "refusal"``).
    refused: bool = False
    #: Server-side advisor consultations the answer began (Anthropic's ``server_tool_use`` blocks named by an
    #: advisor tool): what an answer cut before its final usage may have billed on the advisor's model.
    advisor_uses: int = 0

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def _count(value: Any) -> int | None:
    """A positive whole number from a request; else None. Written as a whole float (``100000.0``) or as a string
    (``"4"``, ``" 4 "``, ``"4.0"``) too, which lax servers (pydantic's, as vLLM and llama.cpp's Python server use)
    take as the number it names: read as none, the call was held at a default far below what it could spend."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class Adapter:
    """One OpenAI wire format: request body -> Call, response -> usage."""

    endpoint: str = ""
    path: str = ""
    #: The request fields that limit output, in order of precedence.
    limit_fields: tuple[str, ...] = ()
    #: Whether ``n`` answers multiply the limit.
    limit_per_choice: bool = False

    def parse(self, body: dict[str, Any], base_url: str) -> Call:
        model = body.get("model")
        return Call(
            endpoint=self.endpoint,
            model=model if isinstance(model, str) else None,
            body=body,
            stream=body.get("stream") is True,
            base_url=base_url,
            max_output_tokens=self.max_output_tokens(body),
        )

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        """The most output tokens the request allows (all choices together), or None when uncapped."""
        for key in self.limit_fields:
            value = _count(body.get(key))
            if value is not None:
                return value * self.answers(body)
        return None

    def answers(self, body: dict[str, Any]) -> int:
        """How many answers the request has generated (``n`` where the limit is per choice): an uncapped
        request's default output limit counts once per answer too."""
        return (_count(body.get("n")) or 1) if self.limit_per_choice else 1

    def preview_searches(self, body: dict[str, Any]) -> bool:
        """Whether the request's web searches are OpenAI's older ``web_search_preview`` tool's (priced higher
        on a model that does not reason: ``pricing.PREVIEW_SEARCH_USD``)."""
        return any(isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_preview")
                   for tool in items(body.get("tools")))

    def web_searches(self, body: dict[str, Any]) -> int:
        """The most server-side web searches the request may make (each billed per call, its results as input):
        each web search tool's ``max_uses`` (Anthropic's ``web_search_20250305``, Responses' ``web_search``),
        else :data:`DEFAULT_WEB_SEARCHES`."""
        return sum(_count(tool.get("max_uses")) or DEFAULT_WEB_SEARCHES for tool in items(body.get("tools"))
                   if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"))

    def searches_per_call(self, body: dict[str, Any]) -> int:
        """Web searches billed with every answer, whatever it reports: none for most APIs (see the chat
        adapter's search models)."""
        return 0

    def tool_uses(self, body: dict[str, Any]) -> tuple[int, int]:
        """The most file searches and code interpreter containers the request's built-in tools may bill (each
        billed per use beside the tokens): OpenAI's Responses API only."""
        return 0, 0

    def fetched_tokens(self, body: dict[str, Any]) -> int:
        """The most tokens server-side tools may add to the input (Anthropic's web fetch, OpenAI's file search):
        none for most APIs."""
        return 0

    def advisors(self, body: dict[str, Any], input_tokens: int, uses: int | None = None
                 ) -> tuple[tuple[str, Usage], ...]:
        """The most the request's server-side inferences on other models may bill, as (model, usage) pairs
        (Anthropic's advisor tool), for a transcript of ``input_tokens`` and at most ``uses`` inferences each:
        none for most APIs."""
        return ()

    def audio(self, body: dict[str, Any]) -> tuple[int, bool]:
        """Estimated tokens of the audio the input carries, and whether the answer may be audio (priced at the
        model's audio rates, higher than its text ones)."""
        return 0, False

    def input_text(self, body: dict[str, Any]) -> list[str]:
        """The texts that make up the input, for token estimates."""
        return []

    def estimate_input_tokens(self, body: dict[str, Any], model: str | None) -> int:
        """Estimated input tokens of ``body``: its texts plus the cookbook's per-message and per-name overhead."""
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        names = sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("name"), str))
        return (tokens.estimate_input_tokens(self.input_text(body), model=model, messages=len(messages), names=names)
                + self.media_tokens(body, model))

    def media_tokens(self, body: dict[str, Any], model: str | None = None) -> int:
        """Estimated tokens of what the input carries beside text: images and files (see :data:`IMAGE_TOKENS`),
        token ids, input the server keeps."""
        return 0

    def usage(self, data: dict[str, Any]) -> Usage | None:
        """Usage from the response's ``usage`` object (each adapter reads its own shape); :class:`BadUsage`
        when a count in it is malformed."""
        return None

    def reported_usage(self, data: dict[str, Any]) -> Usage | None:
        """:meth:`usage`, or None (as if the response had reported none: estimated) when it is malformed."""
        try:
            return self.usage(data)
        except BadUsage as exc:
            log.warning("llmbudget: the %s response reports a malformed usage (%s); its tokens are estimated",
                        self.endpoint, exc)
            return None

    def read_json(self, data: Any, state: ResponseState) -> None:
        """Fill ``state`` from a complete (non-streamed) response body."""
        if not isinstance(data, dict):
            return
        self._read_common(data, state)
        state.done = True

    def read_event(self, data: Any, state: ResponseState) -> None:
        """Fill ``state`` from one decoded SSE ``data:`` payload."""
        if isinstance(data, dict):
            self._read_common(data, state)

    def read_stream(self, events: list[Any], state: ResponseState) -> None:
        """Fill ``state`` from a whole stream's decoded events (text too)."""
        for event in events:
            self.read_event(event, state)

    def stream_text(self, events: list[Any]) -> str:
        """The generated text of a stream (for estimates when it carried no usage)."""
        state = ResponseState()
        self.read_stream(events, state)
        return "".join(state.stream_parts) if state.stream_parts is not None else state.text

    def _read_common(self, data: dict[str, Any], state: ResponseState) -> None:
        model = data.get("model")
        if isinstance(model, str):
            state.model = model
        tier = data.get("service_tier")
        if isinstance(tier, str):
            state.service_tier = tier
        raw = data.get("usage")
        if isinstance(raw, dict):
            state.usage = self.reported_usage(raw)


def items(value: Any) -> list[Any] | tuple[()]:
    """A JSON array as a list; anything else (a malformed field) as nothing."""
    return value if isinstance(value, list) else ()


#: Token estimates of what an input carries beside text, which the provider counts and llmbudget cannot read:
#: an image at the largest size the APIs take before scaling it down (Anthropic about 1,600 tokens; OpenAI's
#: gpt-4o at high detail up to 1,445), a low-detail one at OpenAI's 85, and a PDF page at the top of
#: Anthropic's 1,500-3,000 range (its text plus an image of the page).
IMAGE_TOKENS = 1_600
LOW_DETAIL_IMAGE_TOKENS = 85
#: Models that count an image as many more tokens (their price per token is lower), from OpenAI's vision guide:
#: (high detail at the most tiles or patches, low detail). gpt-4o-mini: 2,833 + 5,667 per 512-px tile, up to 8
#: tiles; the patch-based ones: up to 1,536 patches times their multiplier (no cheaper low detail).
_MODEL_IMAGE_TOKENS = (
    ("gpt-4o-mini", (2_833 + 8 * 5_667, 2_833)),
    ("gpt-4.1-nano", (3_780, 3_780)),
    ("gpt-5-nano", (3_780, 3_780)),
    ("gpt-4.1-mini", (2_490, 2_490)),
    ("gpt-5-mini", (2_490, 2_490)),
    ("o4-mini", (2_642, 2_642)),
)
PDF_PAGE_TOKENS = 3_000
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_PDF_COUNT = re.compile(rb"/Count\s+(\d{1,6})")


def pdf_tokens(data: Any) -> int:
    """:data:`PDF_PAGE_TOKENS` per page of a base64 PDF (or a ``data:`` URL of one): the pages it declares or
    holds, one when neither can be read (a PDF given by URL or file id, or whose page tree is compressed)."""
    return PDF_PAGE_TOKENS * max(_pdf_pages(data) if isinstance(data, str) and data else 0, 1)


# Page counts of the last few PDFs, by (hash, length) of their text: a call's body is estimated more than once
# (reserve, cap, settle), and the PDFs themselves (megabytes) are not kept alive for it.
_PAGES: dict[tuple[int, int], int] = {}


def _pdf_pages(data: str) -> int:
    key = (hash(data), len(data))
    pages = _PAGES.get(key)
    if pages is None:
        encoded = data.partition(",")[2] if data.startswith("data:") else data
        try:
            raw = base64.b64decode(encoded)
        except (ValueError, binascii.Error):
            raw = b""
        pages = max([len(_PDF_PAGE.findall(raw))] + [int(n) for n in _PDF_COUNT.findall(raw)])
        if len(_PAGES) >= 64:
            _PAGES.clear()
        _PAGES[key] = pages
    return pages


#: A server-side web search a request allows, reserved as this many searches when it sets no ``max_uses``, each
#: with this many tokens of results billed as input (both providers bill the results beside the per-search fee).
DEFAULT_WEB_SEARCHES = 5
WEB_SEARCH_RESULT_TOKENS = 10_000
#: A web fetch tool without ``max_content_tokens``: each fetch reserved at this many tokens of content (a page
#: or a PDF; Anthropic sets no limit of its own), ``max_uses`` fetches (:data:`DEFAULT_WEB_SEARCHES` without one).
WEB_FETCH_TOKENS = 100_000


def image_tokens(model: str | None) -> tuple[int, int]:
    """The tokens an image may count for ``model``: (high detail, low detail)."""
    name = (model or "").lower().rpartition("/")[2]
    for prefix, counts in _MODEL_IMAGE_TOKENS:
        if name.startswith(prefix):
            return counts
    return IMAGE_TOKENS, LOW_DETAIL_IMAGE_TOKENS


#: Audio input tokens per second (OpenAI counts user audio at about one token per 100 ms), and the lowest bit
#: rate of a compressed recording whose length cannot be read (8 kbit/s, MPEG-2.5's least: never shorter than it is).
AUDIO_TOKENS_PER_SECOND = 10
_COMPRESSED_BYTES_PER_SECOND = 1_000

# MPEG audio frame headers: bit rates (kbit/s) by (MPEG-1, layer) and (MPEG-2/2.5, layer), sample rates by version
_MP3_RATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_FRAMES_CHECKED = 24


def _decoded(data: str, start: int, size: int) -> bytes:
    """``size`` bytes of a base64 text's bytes from ``start`` (decoded from there alone)."""
    first = start // 3 * 4
    try:
        chunk = base64.b64decode(data[first:first + (size // 3 + 2) * 4])
    except (ValueError, binascii.Error):
        return b""
    return chunk[start % 3:start % 3 + size]


def _mp3_frame(head: bytes, at: int) -> tuple[int, int, int, int, bool] | None:
    """The MPEG audio frame header at ``at``: (bit rate in bit/s, sample rate, samples per frame, frame length,
    mono); None where there is none."""
    if at + 4 > len(head) or head[at] != 0xFF or head[at + 1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (head[at + 1] >> 3) & 3, (head[at + 1] >> 1) & 3
    rate_index, sample_index = head[at + 2] >> 4, (head[at + 2] >> 2) & 3
    if version == 1 or layer_bits == 0 or rate_index in (0, 15) or sample_index == 3:
        return None
    layer, mpeg1 = 4 - layer_bits, version == 3
    bit_rate = _MP3_RATES[(mpeg1, layer)][rate_index] * 1000
    sample_rate = _MP3_SAMPLE_RATES[version][sample_index]
    samples = 384 if layer == 1 else 1152 if layer == 2 or mpeg1 else 576
    padding = (head[at + 2] >> 1) & 1
    length = (12 * bit_rate // sample_rate + padding) * 4 if layer == 1 else samples // 8 * bit_rate // sample_rate + padding
    return bit_rate, sample_rate, samples, length, head[at + 3] >> 6 == 3


def _mp3_seconds(data: str, size: int) -> float | None:
    """An MP3's length: from its Xing, Info or VBRI header's frame count, else from a constant bit rate its first
    frames all share; None where neither can be read (a variable rate with no such header)."""
    head = _decoded(data, 0, 10)
    start = 0
    if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first (its size in 7-bit bytes; a cover image...)
        start = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(head[6:10]))
    head = _decoded(data, start, 1 << 16)
    at = next((i for i in range(min(len(head), 4096)) if _mp3_frame(head, i) is not None), None)
    if at is None:
        return None
    first = _mp3_frame(head, at)
    assert first is not None
    bit_rate, sample_rate, samples, _, mono = first
    side = (17 if mono else 32) if sample_rate >= 32000 else (9 if mono else 17)
    most = size / _COMPRESSED_BYTES_PER_SECOND  # as long as its bytes can be, at MPEG audio's least bit rate
    for tag, offset, count_at in ((b"Xing", side, 8), (b"Info", side, 8), (b"VBRI", 32, 14)):
        found = at + 4 + offset
        if head[found:found + 4] == tag:
            count = head[found + count_at:found + count_at + 4]
            if len(count) < 4 or (tag != b"VBRI" and not head[found + 7] & 1):  # cut short, or no frame count
                return None
            frames = int.from_bytes(count, "big")
            return min(frames * samples / sample_rate, most) if frames else None
    frames, here, end = 0, at, min(len(head), size - start)
    while frames < _MP3_FRAMES_CHECKED and here < end:  # a constant bit rate, or a variable one with no header
        frame = _mp3_frame(head, here)
        if frame is None and frames and (head[here:here + 3] == b"TAG" or head[here:here + 8] == b"APETAGEX"
                                         or end - here < 4):
            break  # a short file's end: its ID3v1 or APE tag, or a last partial frame
        if frame is None or frame[0] != bit_rate:
            return None  # (a rate that varies, or bytes that are no frame: a false sync)
        frames, here = frames + 1, here + frame[3]
    return min(max(size - start - at, 0) * 8 / bit_rate, most)


def _wav_byte_rate(head: bytes) -> int:
    """A WAV header's bytes per second: the least of its byte rate field and, for PCM, of what its sample rate,
    channels and sample size make (a header whose byte rate field says more read as a shorter clip); 0 where it
    is no WAV header."""
    if len(head) < 36 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    stated = int.from_bytes(head[28:32], "little")
    tag, channels = int.from_bytes(head[20:22], "little"), int.from_bytes(head[22:24], "little")
    sample_rate, bits = int.from_bytes(head[24:28], "little"), int.from_bytes(head[34:36], "little")
    made = sample_rate * channels * bits // 8
    if tag in (1, 3, 0xFFFE) and made > 0:  # PCM (integer or float), or its extensible form
        return min(stated, made) if stated > 0 else made
    return min(stated, _COMPRESSED_BYTES_PER_SECOND) if stated > 0 else 0


def audio_seconds(data: Any, fmt: Any) -> float:
    """The length of a base64 recording: a WAV's from its header, an MP3's from its frames (an MPEG header's
    frame count, else a constant bit rate), else at the lowest bit rate of compressed audio (so never less
    than it is)."""
    if not isinstance(data, str) or not data:
        return 0.0
    size = len(data) * 3 // 4
    if fmt == "wav":
        byte_rate = _wav_byte_rate(_decoded(data, 0, 48))
        if byte_rate > 0:
            return size / byte_rate
    elif fmt == "mp3":
        try:
            seconds = _mp3_seconds(data, size)
        except Exception:  # noqa: BLE001 - whatever it holds: read at the least bit rate
            seconds = None
        if seconds is not None:
            return seconds
    return size / _COMPRESSED_BYTES_PER_SECOND


def openai_audio_tokens(content: Any) -> int:
    """Estimated tokens of the ``input_audio`` parts of an OpenAI message content."""
    total = 0.0
    for part in items(content):
        if isinstance(part, dict) and part.get("type") == "input_audio":
            audio = part.get("input_audio")
            if isinstance(audio, dict):
                total += audio_seconds(audio.get("data"), audio.get("format")) * AUDIO_TOKENS_PER_SECOND
    return int(total) + (1 if total else 0)


def token_ids(value: Any) -> int:
    """How many token ids an input given as ids holds (a list of ints, or a list of such lists); 0 for text."""
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return len(value)
    if isinstance(value, list):
        return sum(token_ids(v) for v in value if isinstance(v, list))
    return 0


def openai_media_tokens(content: Any, model: str | None = None) -> int:
    """Estimated tokens of the images and files in an OpenAI message content (chat's ``image_url`` and ``file``
    parts, Responses' ``input_image`` and ``input_file``), as ``model`` counts images."""
    total = 0
    high, low = image_tokens(model)
    for part in items(content):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("image_url", "input_image"):
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
            total += low if detail == "low" else high
        elif kind in ("file", "input_file"):
            file = part.get("file")
            total += pdf_tokens((file if isinstance(file, dict) else part).get("file_data"))
    return total


def _text_of(content: Any, out: list[str]) -> None:
    """Collect the text of a message content (string or list of parts)."""
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)


def json_text(value: Any) -> str:
    """Compact JSON for token estimates of structured fields (tools, schemas)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return ""
