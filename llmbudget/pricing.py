"""Usage -> USD, exactly, from genai-prices plus the user's overrides.

Costs are ``Decimal`` dollars. A model that neither genai-prices nor an
override knows is never priced at $0 silently: :meth:`Pricing.require` raises
at configuration time, and at run time :meth:`Pricing.cost` warns once per
model and charges the conservative ``unknown_model_price``.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import re
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Union

from .calls import Usage
from .caps import reasoning_model
from .money import usd

__all__ = [
    "Price",
    "PriceSnapshot",
    "Priced",
    "Pricing",
    "UnknownModelError",
    "UnpricedModelWarning",
    "CONSERVATIVE_PRICE",
]

log = logging.getLogger("llmbudget.pricing")
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1000)
PriceLike = Union["Price", Mapping[str, Any]]


class UnknownModelError(LookupError):
    """A model has no price: neither genai-prices nor an override knows it."""


class UnpricedModelWarning(UserWarning):
    """A call used a model without a price; it was charged a conservative estimate."""


def _decimal(value: Any, what: str) -> Decimal:
    price = usd(value, what, unit="a number of USD per 1M tokens")
    if price > MAX_PRICE:  # a typo: summing such amounts left Decimal's precision (InvalidOperation)
        raise ValueError(f"{what} must be at most {MAX_PRICE:,} USD per 1M tokens, got {value!r}")
    return price


#: The highest price per 1M tokens a policy may set (today's dearest models charge hundreds).
MAX_PRICE = Decimal(1_000_000)


#: Service tiers priced as deferred work: flex, and the Batch API (``"batch"``, llmbudget's own name for it).
DEFERRED_TIERS = frozenset({"flex", "batch"})
#: Anthropic's fast mode (``speed: "fast"``; ``Usage.service_tier`` "fast") where genai-prices lists no fast price
#: for the model: its standard rate times the most Anthropic charges for it (Opus 4.6's, 6x; others' 2x).
FAST_UNLISTED_MULTIPLIER = Decimal(6)
#: OpenAI's priority processing where no priority price is listed (a price override's model): its standard rate
#: times the most OpenAI charges for it (gpt-5's, 2x; gpt-4o's 1.7x).
PRIORITY_UNLISTED_MULTIPLIER = Decimal(2)
#: The tiers dearer than the standard one: (multiplier where unlisted, the price's name, what calls, whose rule).
_DEARER_TIERS = {"fast": (FAST_UNLISTED_MULTIPLIER, "fast-mode", "fast calls (speed 'fast')", "Anthropic"),
                 "priority": (PRIORITY_UNLISTED_MULTIPLIER, "priority", "priority calls (service_tier 'priority')",
                              "OpenAI")}
#: Anthropic's multipliers of the input price: a 5-minute cache write, and a cache read.
CACHE_WRITE_MULTIPLIER, CACHE_READ_MULTIPLIER = Decimal("1.25"), Decimal("0.1")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens by kind. Cached input defaults to the input price (never less than it costs), a
    5-minute cache write to 1.25 times it (Anthropic's rule; only Anthropic's usage reports writes)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None

    @classmethod
    def of(cls, value: PriceLike, *, what: str = "price") -> Price:
        """A Price from a Price or a mapping such as ``{"input": 0.15, "output": 0.6}``."""
        if isinstance(value, Price):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{what}: expected a mapping with 'input' and 'output', got {value!r}")
        unknown = set(value) - {"input", "output", *_OPTIONAL_PRICES}
        if unknown:
            raise ValueError(
                f"{what}: unknown keys {sorted(unknown)}; expected input, output, {', '.join(_OPTIONAL_PRICES)}"
            )
        if "input" not in value or "output" not in value:
            raise ValueError(f"{what}: both 'input' and 'output' (USD per 1M tokens) are required")
        optional = {key: _decimal(value[key], f"{what}.{key}") for key in _OPTIONAL_PRICES if key in value}
        return cls(_decimal(value["input"], f"{what}.input"), _decimal(value["output"], f"{what}.output"), **optional)

    def cost(self, usage: Usage) -> Decimal:
        """What ``usage`` costs at these prices: one-hour cache writes at twice the input price (Anthropic's
        rule) or the write price if dearer, audio tokens at the audio prices where given (else as text), and
        web searches at $10 per 1,000 (OpenAI's and Anthropic's)."""
        return self.token_cost(usage) + self.search_fees(usage)

    def token_cost(self, usage: Usage, *, long_context: bool = False) -> Decimal:
        """The tokens' part of :meth:`cost` (an override's price holds at any length: ``long_context`` is
        ignored)."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        written_1h = min(usage.cache_write_1h_tokens, written)
        plain = usage.input_tokens - cached - written
        audio_in = min(usage.input_audio_tokens, plain) if self.input_audio is not None else 0
        audio_out = min(usage.output_audio_tokens, usage.output_tokens) if self.output_audio is not None else 0
        write = self.input * CACHE_WRITE_MULTIPLIER if self.cache_write is None else self.cache_write
        total = (
            (plain - audio_in) * self.input
            + audio_in * (self.input_audio or 0)
            + cached * (self.input if self.cached_input is None else self.cached_input)
            + (written - written_1h) * write
            + written_1h * max(write, 2 * self.input)
            + (usage.output_tokens - audio_out) * self.output
            + audio_out * (self.output_audio or 0)
        )
        return total / _MILLION

    def search_fees(self, usage: Usage) -> Decimal:
        """What ``usage``'s web searches cost at this price ($10 per 1,000)."""
        return usage.web_searches * WEB_SEARCH_USD

    def long_context(self, usage: Usage, model: str) -> bool:
        """An override is the price at any length."""
        return False

    def gap(self, usage: Usage, model: str) -> str | None:
        """What of ``usage`` this override cannot price (None: nothing): audio tokens without an audio price."""
        if (usage.input_audio_tokens and self.input_audio is None) or (
                usage.output_audio_tokens and self.output_audio is None):
            return "lists no audio price (its audio tokens are priced at the text rate)"
        return None


#: A price override's optional keys (USD per 1M tokens), beside ``input`` and ``output``.
_OPTIONAL_PRICES = ("cached_input", "cache_write", "input_audio", "output_audio")
#: What one web search costs where a price says nothing of them (OpenAI and Anthropic: $10 per 1,000).
WEB_SEARCH_USD = Decimal("0.01")
#: OpenAI's built-in tool fees (its pricing page): a file search call ($2.50 per 1,000), a code interpreter
#: container ($0.03 a GB of its memory: ``Usage.code_containers`` counts GB, 64 for one 64g container).
FILE_SEARCH_USD = Decimal("0.0025")
CODE_CONTAINER_USD = Decimal("0.03")


#: OpenAI's older ``web_search_preview`` tool on a model that does not reason (gpt-4o, gpt-4.1, the chat search
#: models): $25 per 1,000 calls, its search content free (on a reasoning model $10, as the ``web_search`` tool).
PREVIEW_SEARCH_USD = Decimal("0.025")


def _search_fees(rate: Any, usage: Usage, model: str) -> Decimal:
    """What ``usage``'s web searches cost at ``rate``: the ``web_search_preview`` tool's on a model that does
    not reason at :data:`PREVIEW_SEARCH_USD`, the others at the rate's own search price."""
    preview = 0 if reasoning_model(model) else min(usage.preview_searches, usage.web_searches)
    if not preview:
        return Decimal(rate.search_fees(usage))
    return rate.search_fees(usage.replace(web_searches=usage.web_searches - preview)) + preview * PREVIEW_SEARCH_USD


def tool_fees(usage: Usage) -> Decimal:
    """What ``usage``'s built-in tool uses cost beside its tokens (file searches, code interpreter containers)."""
    return usage.file_searches * FILE_SEARCH_USD + usage.code_containers * CODE_CONTAINER_USD

#: Charged (with a warning) for a model nothing knows: above today's frontier list prices.
CONSERVATIVE_PRICE = Price(Decimal(15), Decimal(75))


@dataclass(frozen=True, slots=True)
class PriceSnapshot:
    """Where prices came from and the date they were in force for."""

    source: str
    as_of: str


@dataclass(frozen=True, slots=True)
class Priced:
    """A cost and how it was found: ``genai-prices``, ``override`` or ``unknown``."""

    usd: Decimal
    source: str
    model: str

    @property
    def known(self) -> bool:
        return self.source != "unknown"


# Units the fast path prices itself; any other unit in a model's price uses genai-prices' own calc.
_FAST_KEYS = frozenset(
    {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok", "input_audio_mtok",
     "output_audio_mtok", "requests_kcount", "web_searches_kcount"}
)
# Units llmbudget never reports, so they cannot change a cost.
_UNREPORTED_KEYS = frozenset(
    {"input_image_mtok", "cache_image_read_mtok", "input_video_mtok", "output_image_mtok", "output_video_mtok",
     "storage_searches_kcount", "input_mchars", "audio_hours", "input_audio_hours",
     "input_document_kpages", "input_annotated_document_kpages", "input_text_messages_kcount",
     "output_citation_mtok"}
)


#: Claude models with a 1M-token context, which Anthropic prices higher past 200,000 input tokens (Sonnet 4, dated
#: or not; not Sonnet 4.5, whose tiers genai-prices lists, nor 4.6, priced alike at any length).
_LONG_CONTEXT = frozenset({"claude-sonnet-4", "claude-sonnet-4-0"})


class _ModelRate:
    """A genai-prices ModelPrice, with a fast exact path for the plain per-token units."""

    __slots__ = ("model_price", "fast")

    def __init__(self, model_price: Any) -> None:
        self.model_price = model_price
        keys = {k: v for k, v in model_price.__dict__.items() if v is not None and not k.startswith("_")}
        simple = all(isinstance(v, Decimal) for v in keys.values())
        self.fast = keys if simple and set(keys) <= _FAST_KEYS | _UNREPORTED_KEYS else None

    def gap(self, usage: Usage, model: str) -> str | None:
        """What of ``usage`` this price cannot say, priced lower than it costs (None: nothing): audio tokens
        without an audio price (priced as text)."""
        price = self.model_price
        if (usage.input_audio_tokens and getattr(price, "input_audio_mtok", None) is None) or (
                usage.output_audio_tokens and getattr(price, "output_audio_mtok", None) is None):
            return "lists no audio price (its audio tokens are priced at the text rate)"
        return None

    def long_context(self, usage: Usage, model: str) -> bool:
        """Whether ``usage`` is a 1M-context Claude model's (Sonnet 4) call above 200,000 input tokens, which
        genai-prices prices at the base rate: Anthropic charges twice the input rates (cache reads and writes
        too) and 1.5 times the output rate there, which :meth:`cost` applies when told."""
        return usage.input_tokens > 200_000 and self.fast is not None and _bare_model(model) in _LONG_CONTEXT

    def search_fees(self, usage: Usage) -> Decimal:
        """What ``usage``'s web searches cost: the model's listed search price, else $10 per 1,000 (OpenAI's
        and Anthropic's tool price, as for an override)."""
        if not usage.web_searches:
            return Decimal(0)
        listed = getattr(self.model_price, "web_searches_kcount", None)
        return usage.web_searches * (listed / _THOUSAND if isinstance(listed, Decimal) else WEB_SEARCH_USD)

    def token_cost(self, usage: Usage, *, long_context: bool = False) -> Decimal:
        """The tokens' cost (and a per-request fee if listed), without web searches (:meth:`search_fees`)."""
        if usage.web_searches:
            usage = usage.replace(web_searches=0)
        fast = self.fast
        if fast is None or usage.input_audio_tokens or usage.output_audio_tokens:
            return _genai_cost(self.model_price, usage)  # tiers, audio and other units: genai-prices itself
        zero = Decimal(0)
        longer = (Decimal(2), Decimal("1.5")) if long_context else (Decimal(1), Decimal(1))
        input_rate = fast.get("input_mtok", zero)
        output_rate = fast.get("output_mtok", zero)
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        written_1h = min(usage.cache_write_1h_tokens, written)
        write_rate = fast.get("cache_write_mtok", input_rate)
        total = (
            ((usage.input_tokens - cached - written) * input_rate
             + cached * fast.get("cache_read_mtok", input_rate)
             + (written - written_1h) * write_rate
             + written_1h * fast.get("cache_write_1h_mtok", write_rate)) * longer[0]
            + usage.output_tokens * output_rate * longer[1]
        ) / _MILLION
        if "requests_kcount" in fast:
            total += fast["requests_kcount"] / _THOUSAND
        return total


def _genai_usage(usage: Usage) -> Any:
    from genai_prices import Usage as GenaiUsage

    values = {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "web_searches": usage.web_searches,
    }
    present = {key: value for key, value in values.items() if value}
    if usage.cached_input_tokens and usage.input_audio_tokens:
        # OpenAI reports cached tokens without saying how many were audio: as text, but for those beyond the text
        # tokens (the fewest cached audio tokens the counts allow, the dearest reading, as audio costs more)
        text = usage.input_tokens - usage.input_audio_tokens
        present["cache_audio_read_tokens"] = min(usage.input_audio_tokens, max(0, usage.cached_input_tokens - text))
    return GenaiUsage(**present)


def _genai_cost(model_price: Any, usage: Usage) -> Decimal:
    return Decimal(model_price.calc_price(_genai_usage(usage))["total_price"])


def _genai_version() -> str:
    try:
        return version("genai-prices")
    except PackageNotFoundError:  # pragma: no cover - a dependency of the package
        return "unknown"


# A snapshot's date at the end of a model name: "-2024-08-06" (OpenAI), "-20250514" (Anthropic), "@20240620"
# (Vertex), "-0613" (OpenAI's older month-day form).
_DATE_SUFFIX = re.compile(r"[-@](?:20\d\d-[01]\d-[0-3]\d|20\d\d[01]\d[0-3]\d|(?:0[1-9]|1[0-2])[0-3]\d)\Z")


# Bedrock's ids around a model's name: a region's inference profile ("us.", "eu.", "apac.", "us-gov.") and the
# vendor ("anthropic."), a version after it ("-v1:0").
_BEDROCK_PREFIX = re.compile(r"\A(?:[a-z]{2,6}(?:-gov)?\.)?anthropic\.")
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?\Z")


def _bare_model(model: str) -> str:
    """The model's name without a provider's path (``anthropic/``), Bedrock's prefixes and version, or a
    snapshot's date: ``us.anthropic.claude-sonnet-4-20250514-v1:0`` is ``claude-sonnet-4``."""
    name = _BEDROCK_VERSION.sub("", _BEDROCK_PREFIX.sub("", model.lower().rsplit("/", 1)[-1]))
    return _DATE_SUFFIX.sub("", name)


def _is_url(key: str) -> bool:
    return key.startswith(("http://", "https://"))


class Pricing:
    """Prices calls: user overrides first, then genai-prices, else a loud conservative estimate.

    ``overrides`` maps a key to a :class:`Price` (or a mapping like
    ``{"input": 0.1, "output": 0.4}``, USD per 1M tokens). A key is a model
    name or glob (``"gemma-3-*"``), a base URL (``"http://127.0.0.1:8080/v1"``:
    every model served there), or both separated by a space
    (``"http://127.0.0.1:8080/v1 gemma-*"``). The most specific key wins.

    Flex and batch calls (``usage.service_tier`` ``"flex"`` / ``"batch"``) are priced at
    genai-prices' flex and batch rates where it lists them, else at the standard rate
    less ``deferred_discount`` (default 0.5, OpenAI's and Anthropic's published discount).
    """

    def __init__(
        self,
        overrides: Mapping[str, PriceLike] | None = None,
        *,
        unknown_model_price: PriceLike = CONSERVATIVE_PRICE,
        deferred_discount: Decimal | float | str = Decimal("0.5"),
    ) -> None:
        self._by_model: list[tuple[str, Price]] = []
        self._by_url: list[tuple[str, Price]] = []
        self._by_both: list[tuple[str, str, Price]] = []
        for key, value in (overrides or {}).items():
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"price override keys must be model names or base URLs, got {key!r}")
            price = Price.of(value, what=f"prices[{key!r}]")
            url, _, model = key.strip().partition(" ")
            if _is_url(url) and model.strip():
                self._by_both.append((url.rstrip("/"), model.strip().lower(), price))
            elif _is_url(url):
                self._by_url.append((url.rstrip("/"), price))
            else:
                self._by_model.append((key.strip().lower(), price))
        self.unknown_model_price = Price.of(unknown_model_price, what="unknown_model_price")
        discount = Decimal(repr(deferred_discount)) if isinstance(deferred_discount, float) else Decimal(
            str(deferred_discount))
        if not discount.is_finite() or not 0 <= discount < 1:
            raise ValueError(f"deferred_discount must be a fraction from 0 to below 1, got {deferred_discount!r}")
        #: Taken off flex and batch calls of models genai-prices lists no flex / batch price for (and overrides).
        self.deferred_discount = discount
        self._warned: set[Any] = set()  # model names, and (model, gap) pairs
        self._lock = threading.Lock()
        # (model, base_url, service_tier) -> (day, rate): rate() runs on every call.
        self._rates: dict[tuple[str, str, str | None], tuple[date, Price | _ModelRate | None]] = {}

    @property
    def snapshot(self) -> PriceSnapshot:
        """The price source and today's date (genai-prices applies prices by date)."""
        return PriceSnapshot(f"genai-prices {_genai_version()}", date.today().isoformat())

    def _override(self, model: str, base_url: str) -> Price | None:
        base_url = base_url.rstrip("/")
        lowered = model.lower()
        # an override of "gpt-4o" covers the dated snapshot the provider answers with ("gpt-4o-2024-08-06"), after
        # every key that names the full name (the most specific key wins)
        undated = _DATE_SUFFIX.sub("", lowered)
        for name in (lowered, undated) if undated != lowered else (lowered,):
            for url, pattern, price in self._by_both:
                if base_url == url and fnmatch.fnmatchcase(name, pattern):
                    return price
            for pattern, price in self._by_model:
                if fnmatch.fnmatchcase(name, pattern):
                    return price
        for url, price in self._by_url:
            if base_url == url:
                return price
        return None

    def rate(self, model: str, base_url: str = "", *, service_tier: str | None = None) -> Price | _ModelRate | None:
        """The price that applies to ``model`` at ``base_url`` today, or None when unknown."""
        day = _today()
        key = (model, base_url, service_tier)
        known = self._rates.get(key)
        if known is not None and known[0] == day:
            return known[1]
        found: Price | _ModelRate | None = self._override(model, base_url)
        if found is None:
            found = _genai_rate(model, _provider_url(base_url), service_tier, day)
        if len(self._rates) >= 1024:
            self._rates.clear()
        self._rates[key] = (day, found)
        return found

    def answering_model(self, answered: Any, sent: str | None, base_url: str = "") -> str | None:
        """The model a call is priced as: the one the server answered with, or the one it was sent to where only
        that one has a price (a llama.cpp alias or GGUF path, a gateway's name for its upstream: priced at the
        unknown-model fallback, one such call cost 430 times its override)."""
        if not isinstance(answered, str) or not answered:
            return sent
        if sent and answered != sent and self.rate(answered, base_url) is None and self.rate(sent, base_url):
            return sent
        return answered

    def require(self, model: str, base_url: str = "") -> None:
        """Raise :class:`UnknownModelError` unless ``model`` has a price (use at configuration time)."""
        if self.rate(model, base_url) is None:
            raise UnknownModelError(
                f"no price for model {model!r}"
                + (f" at {base_url}" if base_url else "")
                + ": genai-prices does not list it and no override matches. Add one, e.g. "
                f"{model!r} = {{input = 0.15, output = 0.60}} (USD per 1M tokens) under [prices] in llmbudget.toml "
                "([tool.llmbudget.prices] in pyproject.toml), or Pricing(overrides=...)."
            )

    def prompt_cache_saving(self, usage: Usage, *, model: str | None, base_url: str = "") -> Decimal:
        """What the provider's prompt cache took off ``usage``: its reads at the input rate minus what they cost,
        and the writes' premium (Anthropic's) taken back, so the net may be < 0; for ``model`` and each other model
        the call ran on (an advisor's), each part whose price is known."""
        saving = Decimal(0)
        for name, part in ((model, usage), *usage.others):
            if not (part.cached_input_tokens or part.cache_write_tokens):
                continue
            if part.others:  # the call's own model alone
                part = part.replace(others=())
            paid = self.cost(part, model=name, base_url=base_url)
            uncached = self.cost(part.replace(cached_input_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0),
                                 model=name, base_url=base_url)
            if paid.known and uncached.known:
                saving += uncached.usd - paid.usd
        return saving

    def cost(self, usage: Usage, *, model: str | None, base_url: str = "") -> Priced:
        """What ``usage`` cost on ``model``, with its inferences on other models (``usage.others``) each at its
        own model's price; unknown models warn once and get ``unknown_model_price`` (the cost's source is then
        ``unknown``, for any part)."""
        own = self._cost(usage, model=model, base_url=base_url)
        if not usage.others:
            return own
        parts = [self._cost(sub, model=name, base_url=base_url) for name, sub in usage.others]
        known = own.known and all(part.known for part in parts)
        return Priced(own.usd + sum((part.usd for part in parts), Decimal(0)), own.source if known else "unknown",
                      own.model)

    def _cost(self, usage: Usage, *, model: str | None, base_url: str = "") -> Priced:
        """:meth:`cost` of ``usage``'s own model alone."""
        name = model or "unknown"
        rate = self.rate(name, base_url, service_tier=usage.service_tier) if model else None
        if rate is not None:
            source = "override" if isinstance(rate, Price) else "genai-prices"
            fees = _search_fees(rate, usage, name) + tool_fees(usage)
            cost = rate.token_cost(usage, long_context=rate.long_context(usage, name))
            gap = rate.gap(usage, name)
            if gap is not None:
                self._warn_once((name, gap), (
                    f"llmbudget: genai-prices {gap} for model {name!r}; add its prices, with input_audio and "
                    "output_audio, under [prices] in llmbudget.toml to price such calls exactly."
                ) if source == "genai-prices" else (
                    f"llmbudget: the price override for model {name!r} {gap}; add input_audio and output_audio "
                    "(USD per 1M tokens) to it to price such calls exactly."))
            if usage.service_tier in DEFERRED_TIERS and not self._has_own_rate(rate, name, base_url):
                cost *= 1 - self.deferred_discount  # no flex / batch price listed: the tokens at the documented discount
            elif usage.service_tier in _DEARER_TIERS and not self._has_own_rate(rate, name, base_url) and not (
                    usage.service_tier == "priority" and "claude" in name.lower()):
                # (Anthropic's Priority Tier, which its answers name as "priority", is billed at the standard rates)
                multiplier, price, calls, whose = _DEARER_TIERS[usage.service_tier]
                cost *= multiplier
                self._warn_once((usage.service_tier, name), (
                    f"llmbudget: no {price} price is listed for model {name!r}"
                    f"{' (a price override has none)' if source == 'override' else ''}; its {calls} are priced at "
                    f"{multiplier}x its standard rate, the most {whose} charges for them"))
            return Priced(cost + fees, source, name)
        self._warn_unknown(name, base_url)
        return Priced(self.unknown_model_price.cost(usage) + tool_fees(usage), "unknown", name)

    def _has_own_rate(self, rate: Price | _ModelRate, model: str, base_url: str) -> bool:
        """Whether genai-prices lists a flex or batch price for the model (different from its standard one)."""
        if isinstance(rate, Price):
            return False
        standard = self.rate(model, base_url)
        return not isinstance(standard, _ModelRate) or standard.model_price != rate.model_price

    def _warn_once(self, key: Any, message: str, *, stacklevel: int = 2) -> None:
        """Say ``message`` once per ``key`` (an :class:`UnpricedModelWarning`, and a log line where the app
        configured logging). The warning points into :meth:`cost`, one place, so Python's default filter also
        prints it once per process whatever the number of ``Pricing`` objects."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logged = log.hasHandlers()
        if logged:  # an app that configured logging reads it there; otherwise the warning alone prints it
            log.warning(message)
        try:
            warnings.warn(message, UnpricedModelWarning, stacklevel=stacklevel)
        except Warning:  # a filter made it an error (pytest's ``filterwarnings = error``): the call is still
            if not logged:  # priced, and the log says what the warning would have (never a silent $0)
                log.warning(message)

    def warn_unpriced_endpoint(self, endpoint: str) -> None:
        """Say once that calls to ``endpoint`` (images, audio, an app's own batches...) cost money that llmbudget
        does not record, price or budget: they pass through untouched, never silently."""
        self._warn_once(("endpoint", endpoint), f"llmbudget does not price {endpoint} calls: they pass through "
                        "unrecorded and outside every budget (see README, \"The library\": what is priced)", stacklevel=4)

    def _warn_unknown(self, model: str, base_url: str) -> None:
        if model in self._warned:  # said already (the message is not even built: this runs on every such call)
            return
        self._warn_once(model, (
            f"llmbudget: no price for model {model!r}"
            + (f" at {base_url}" if base_url else "")
            + f"; charging a conservative ${self.unknown_model_price.input}/"
            f"${self.unknown_model_price.output} per 1M input/output tokens. Add its price under [prices] in the "
            "policy the app uses (llmbudget.toml, [tool.llmbudget.prices] in pyproject.toml), or "
            "llmbudget.configure(prices={...}) for an app without one, to price it exactly."
        ), stacklevel=3)


def _provider_url(base_url: str) -> str | None:
    """Only real provider hosts select a genai-prices provider; other URLs match by model name."""
    if "://" not in base_url:
        return None
    host = base_url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0].lower()
    if host in ("localhost", "127.0.0.1", "::1", "[::1]") or host.startswith("127."):
        return None
    return base_url


_day: tuple[float, float, date, tuple[str, str]] = (0.0, 0.0, date.min, ("", ""))


def _today() -> date:
    """``date.today()``, worked out again only once the local day is over or the time zone changed
    (``time.tzset``); prices are looked up per call."""
    global _day
    start, end, today, zone = _day
    now = time.time()
    if start <= now < end and zone == time.tzname:
        return today
    zone = time.tzname
    today = date.today()
    start = datetime.combine(today, datetime.min.time()).timestamp()
    end = datetime.combine(today + timedelta(days=1), datetime.min.time()).timestamp()
    _day = (start, end, today, zone)
    return today


@functools.lru_cache(maxsize=1024)
def _genai_rate(model: str, provider_url: str | None, service_tier: str | None, day: date) -> _ModelRate | None:
    try:
        from genai_prices.data_snapshot import get_snapshot
    except ImportError:  # pragma: no cover - a dependency of the package
        return None
    snapshot = get_snapshot()
    found = None
    # The provider at a real URL first; then any provider that claims the model name; then
    # OpenAI's own list (every call here speaks OpenAI's wire format).
    attempts: list[tuple[str | None, str | None]] = [(None, provider_url)] if provider_url else []
    attempts += [(None, None), ("openai", None)]
    for provider_id, url in attempts:
        try:
            found = snapshot.find_provider_model(model, None, provider_id, url)
            break
        except LookupError:
            continue
    if found is None:
        return None
    _, info = found
    when = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    # (Anthropic's fast mode is a "speed"; the tier is named "fast" here)
    context = ({"processing": "batch"} if service_tier == "batch" else {"service_tier": service_tier, "speed": "fast"}
               if service_tier == "fast" else {"service_tier": service_tier}) if service_tier else None
    try:
        return _ModelRate(info.get_prices(when, context))
    except Exception:  # a price entry genai-prices itself cannot resolve
        log.debug("genai-prices could not resolve prices for %r", model, exc_info=True)
        return None
