"""Configuration: the :class:`Policy` the middleware applies, from Python or TOML.

TOML lives in ``llmbudget.toml`` (top level) or ``[tool.llmbudget]`` in
``pyproject.toml``. Every key is optional::

    # the engine: prices, where records and counters go
    hosts = ["api.openai.com", "api.anthropic.com"]  # hosts whose LLM API paths any client may call
    [prefix_cache]
    breakpoints = "off"                  # "auto": Anthropic cache breakpoints on prefixes that repeat
    watch = true                         # note where near-identical prefixes differ (reports)
    default_max_output_tokens = 4096     # assumed output when reserving for an uncapped request
    default_tenant = "default"           # tenant of calls no request names one for
    ledger = ".llmbudget/ledger.db"      # SQLite ledger file (default: in memory)
    budget_store = ".llmbudget/budgets.db"  # SQLite budget counters shared by the host's processes
    # or Redis, shared by every host: "redis://host:6379/0?prefix=myapp:&on_unavailable=open" (rediss:// for TLS)
    [prices]                             # USD per 1M tokens; keys: model glob, base URL, or "URL glob"
    "gemma-3-*" = { input = 0.10, output = 0.40 }
    [unknown_model_price]                # charged, with a warning, for a model nothing prices
    input = 15
    output = 75

    [cache]                              # answer repeated questions (exact, then semantic)
    path = ".llmbudget/cache"            # SQLite store + usearch index files, or "redis://host:6379/0?prefix=myapp:cache:"
    semantic = true
    ttl = 86400                          # seconds; omit for no expiry
    [routing]                            # send each request to the cheapest tier that will do
    threshold = 0.27                     # router score at or above which a request goes to "large"
    never = ["/admin/*"]
    [routing.tiers]
    small = "gpt-4.1-nano"               # a model name, or { model, base_url, api_key_env, max_output_tokens }
    large = ""                           # "": the model the app asked for

    # the middleware: who spends, under which budgets, what it shows
    tenant_header = "x-tenant-id"        # "" to not read the tenant from a header
    trust_tenant_header = false          # true, or the proxies' addresses ["10.0.0.0/8"]: who may set it
    request_id_header = "x-request-id"
    on_budget = "refuse"                 # "refuse" | "downgrade" | "cap"
    headers = false                      # spend headers on responses
    [[budgets]]
    usd = "0.50"
    per = "tenant"                       # "request" | "tenant" | "global"
    period = "day"                       # "minute" | "hour" | "day" | "month" (calendar, UTC)
    [metrics]                            # or: metrics = true
    path = "/metrics"
    max_tenants = 100
    [[routes]]                           # first matching path glob wins
    path = "/admin/*"
    enabled = false

See README ("Middleware") for each key.
"""

from __future__ import annotations

import fnmatch
import inspect
import ipaddress
import logging
import os
import re
import sqlite3
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

from .calls import MAX_TOKENS
from .ledger.budgets import PERIODS, Budget, SQLiteBudgetStore, budget_list, is_outage
from .ledger.records import SQLiteLedger
from .output import Output
from .pipeline import MAX_INPUT_ESTIMATE_MARGIN as _MAX_MARGIN
from .pipeline import Engine
from .pricing import CONSERVATIVE_PRICE, Pricing

log = logging.getLogger("llmbudget")

__all__ = [
    "ConfigError",
    "MetricsPolicy",
    "OnBudget",
    "Policy",
    "Route",
    "RoutePolicy",
    "engine_from_config",
    "find_config",
    "locate_config",
    "load_config",
]

OnBudget = Literal["refuse", "downgrade", "cap"]
ON_BUDGET: tuple[str, ...] = get_args(OnBudget)
#: What a request is given to find its tenant: the ASGI scope or the WSGI environ.
TenantFinder = Callable[[Mapping[str, Any]], "str | None"]

_ENGINE_KEYS = frozenset(
    {"hosts", "default_max_output_tokens", "default_tenant", "ledger", "budget_store", "prices", "unknown_model_price",
     "cache", "routing", "prompt_cache_keys", "input_estimate_margin", "prefix_cache", "output"}
)
_PREFIX_CACHE_KEYS = frozenset({"breakpoints", "watch"})
_CACHE_KEYS = frozenset({"enabled", "path", "semantic", "allow_temperature", "ttl", "max_entries", "threshold",
                         "max_semantic_chars", "reranker", "worker"})
_ROUTING_KEYS = frozenset({"enabled", "tiers", "weak", "strong", "threshold", "never", "route_tools", "route_schemas",
                           "escalate", "min_confidence"})
_POLICY_KEYS = frozenset(
    {"budgets", "on_budget", "downgrade_to", "cap_min_output_tokens", "tenant_header", "trust_tenant_header",
     "request_id_header", "headers", "metrics", "routes", "problem_type"}
)
_KEYS = _ENGINE_KEYS | _POLICY_KEYS
_ROUTE_KEYS = frozenset(
    {"path", "enabled", "budgets", "on_budget", "downgrade_to", "cap_min_output_tokens", "headers", "cache", "routing",
     "output", "defer"}
)
_METRICS_KEYS = frozenset({"enabled", "path", "max_tenants", "tenants", "max_models"})
_BUDGET_KEYS = frozenset({"usd", "per", "period", "name", "on_unavailable"})
_PROBLEM_TYPE = "urn:llmbudget:budget-exceeded"


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and what was expected."""


# -- the policy, in Python ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsPolicy:
    """Prometheus metrics: on or off, an optional route, and label cardinality bounds."""

    enabled: bool = True
    _: KW_ONLY
    path: str | None = None
    max_tenants: int = 100
    tenants: Sequence[str] = ()
    max_models: int = 50

    def __post_init__(self) -> None:
        _check_bool(self.enabled, "metrics.enabled")
        if self.path is not None and (not isinstance(self.path, str) or not self.path.startswith("/")):
            raise ConfigError(f"metrics.path must be a URL path starting with '/', got {self.path!r}")
        _check_count(self.max_tenants, "metrics.max_tenants", minimum=0)
        _check_count(self.max_models, "metrics.max_models", minimum=1)
        object.__setattr__(self, "tenants", _strings(self.tenants, "metrics.tenants"))


@dataclass(frozen=True, slots=True)
class Route:
    """Settings for requests whose path matches the glob ``path`` (``*`` matches ``/`` too).

    ``None`` keeps the policy's setting. ``budgets`` replaces the policy's
    budgets for these paths (``[]``: none). ``enabled=False`` turns the
    middleware off for them: no tenant read, no policy budgets, no headers,
    and their calls pass the cache, routing and directives by (with no
    tenant they would all share one cache partition), unless the app opens
    its own ``llmbudget.scope(tenant=...)`` there.
    ``cache=False`` keeps these paths' calls away from the engine's cache;
    ``routing=False`` keeps their model, a tier name forces that tier.
    ``output`` is a length directive for them (``Output(max_words=60)`` or
    ``{"max_words": 60}``); ``False`` turns directives off there. ``defer``
    (``"flex"`` or ``"batch"``) defers their OpenAI calls (see ``llmbudget.defer``).
    """

    path: str
    _: KW_ONLY
    enabled: bool = True
    budgets: Sequence[Budget] | None = None
    on_budget: OnBudget | None = None
    downgrade_to: str | None = None
    cap_min_output_tokens: int | None = None
    headers: bool | None = None
    cache: bool | None = None
    routing: bool | str | None = None
    output: Output | bool | None = None
    defer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"a route's path must be a non-empty path glob such as '/chat/*', got {self.path!r}")
        _check_bool(self.enabled, f"route {self.path!r}: enabled")
        if self.budgets is not None:
            object.__setattr__(self, "budgets", _budgets(self.budgets, f"route {self.path!r}: budgets"))
        _check_on_budget(self.on_budget, self.downgrade_to, self.cap_min_output_tokens, f"route {self.path!r}: ",
                         optional=True)
        for name in ("headers", "cache"):
            if getattr(self, name) is not None:
                _check_bool(getattr(self, name), f"route {self.path!r}: {name}")
        if self.routing is not None and not isinstance(self.routing, bool) and (
            not isinstance(self.routing, str) or not self.routing
        ):
            raise ConfigError(f"route {self.path!r}: routing must be true, false or a tier name, got {self.routing!r}")
        if self.defer not in (None, "flex", "batch"):
            raise ConfigError(f"route {self.path!r}: defer must be \"flex\" or \"batch\", got {self.defer!r}")
        if self.output is not None and self.output is not False:
            try:
                object.__setattr__(self, "output", Output.of(self.output, f"route {self.path!r}: output"))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The settings that apply to one request path (see :meth:`Policy.for_path`)."""

    route: str | None
    enabled: bool
    budgets: tuple[Budget, ...]
    on_budget: OnBudget
    downgrade_to: str | None
    cap_min_output_tokens: int | None
    headers: bool
    cache: bool | None
    routing: bool | str | None
    output: Output | bool | None = None
    defer: str | None = None


def request_path(path: str) -> str:
    """A request's path with repeated slashes as one, as werkzeug reads it (it served ``//limited/chat`` as
    ``/limited/chat``, and the route ``/limited/*``'s budgets were skipped). Starlette and Django do not merge
    them, so routes and routing's ``never`` globs read such a path both ways (:meth:`Policy.for_path`)."""
    return re.sub(r"/{2,}", "/", path) if "//" in path else path


@dataclass(frozen=True, slots=True)
class Policy:
    """What the middleware does with each request: tenant, budgets, routes, headers, metrics.

    Keyword-only options:

    - ``budgets``: held against every LLM call a request makes (see :class:`~llmbudget.Budget`);
      per-tenant and global ones count in the engine's budget store, per calendar period (UTC).
    - ``on_budget``: what a call that would overflow a budget gets: ``"refuse"`` (an
      ``openai.APIStatusError``; uncaught, HTTP 402). ``"downgrade"`` (to ``downgrade_to`` or the
      cheapest tier) and ``"cap"`` (output capped to what is left, refused below
      ``cap_min_output_tokens``).
    - ``tenant``: a callable given the ASGI scope or WSGI environ that returns the tenant; else
      the authenticated user; else the ``tenant_header`` (``None``: no header), read only when
      ``trust_tenant_header`` trusts it.
    - ``trust_tenant_header``: ``False`` (default: the header is ignored), ``True`` (anyone who
      can reach the app may set it) or the addresses / networks of the proxies that set it.
    - ``request_id_header``: where a request id is read from (one is generated otherwise).
    - ``headers``: add ``x-llmbudget-*`` spend headers to responses (off: they can leak information).
    - ``metrics``: ``True`` or a :class:`MetricsPolicy` for Prometheus metrics (needs prometheus-client).
    - ``routes``: per-path :class:`Route` settings; the first matching glob wins.
    - ``engine``: an :class:`~llmbudget.Engine` made current when the middleware starts.
    - ``problem_type``: the ``type`` URI of the 402 problem document.
    """

    _: KW_ONLY
    budgets: Sequence[Budget] = ()
    on_budget: OnBudget = "refuse"
    downgrade_to: str | None = None
    cap_min_output_tokens: int | None = None
    tenant: TenantFinder | None = field(default=None, compare=False)
    tenant_header: str | None = "x-tenant-id"
    trust_tenant_header: bool | Sequence[str] = False
    request_id_header: str | None = "x-request-id"
    headers: bool = False
    metrics: MetricsPolicy | bool = False
    routes: Sequence[Route] = ()
    engine: Engine | None = field(default=None, compare=False, repr=False)
    problem_type: str = _PROBLEM_TYPE

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", _budgets(self.budgets, "budgets"))
        _check_on_budget(self.on_budget, self.downgrade_to, self.cap_min_output_tokens, "", optional=False)
        if self.tenant is not None and not callable(self.tenant):
            raise ConfigError(f"tenant must be a callable given the ASGI scope or WSGI environ, got {self.tenant!r}")
        if self.tenant is not None and (inspect.iscoroutinefunction(self.tenant) or inspect.iscoroutinefunction(
                getattr(self.tenant, "__call__", None))):
            raise ConfigError("tenant must be a plain (not async) callable returning the tenant's name: the "
                              "middleware calls it for every request before the app runs, and never awaits it")
        for name in ("tenant_header", "request_id_header"):
            value = getattr(self, name) or None
            if value is not None and (not isinstance(value, str) or not _is_token(value)):
                raise ConfigError(f"{name} must be an HTTP header name such as 'x-tenant-id' or None, got {value!r}")
            object.__setattr__(self, name, value.lower() if value else None)
        object.__setattr__(self, "trust_tenant_header", _trusted_proxies(self.trust_tenant_header))
        if self.trust_tenant_header and self.tenant_header is None:
            raise ConfigError("trust_tenant_header is set but tenant_header is off: name the header to trust, "
                              "or drop trust_tenant_header")
        _check_bool(self.headers, "headers")
        metrics = self.metrics
        if isinstance(metrics, bool):
            metrics = MetricsPolicy(enabled=metrics)
        elif not isinstance(metrics, MetricsPolicy):
            raise ConfigError(f"metrics must be True, False or a MetricsPolicy, got {metrics!r}")
        object.__setattr__(self, "metrics", metrics)
        routes = tuple(self.routes)
        for route in routes:
            if not isinstance(route, Route):
                raise ConfigError(f"routes must be llmbudget.config.Route instances, got {route!r}")
        object.__setattr__(self, "routes", routes)
        if self.engine is not None and not isinstance(self.engine, Engine):
            raise ConfigError(f"engine must be an llmbudget.Engine, got {self.engine!r}")
        if not isinstance(self.problem_type, str) or not self.problem_type:
            raise ConfigError(f"problem_type must be a URI, got {self.problem_type!r}")

    @property
    def metrics_policy(self) -> MetricsPolicy:
        """The metrics settings (``metrics`` normalised)."""
        return cast(MetricsPolicy, self.metrics)

    def for_path(self, path: str) -> RoutePolicy:
        """The settings for a request path: the first route whose glob matches, over the policy's.

        A path with repeated slashes is read both as it came (Starlette's and Django's routers) and with them
        merged (werkzeug's, :func:`request_path`), as the middleware cannot know which router serves it. When
        the two readings pick different routes, a route that turns the middleware off applies only if both
        pick it (a client sending ``//admin/chat`` reached an app's catch-all route with no budget, read as the
        disabled ``/admin/*``), and otherwise the merged reading's settings apply with the budgets of both."""
        merged = self._for_path(request_path(path))
        if "//" not in path or not self.routes:
            return merged
        raw = self._for_path(path)
        if raw.route == merged.route:
            return merged
        if not merged.enabled or not raw.enabled:
            return raw if raw.enabled else merged
        budgets = merged.budgets + tuple(b for b in raw.budgets if b not in merged.budgets)
        return replace(merged, budgets=budgets)

    def _for_path(self, path: str) -> RoutePolicy:
        for route in self.routes:
            if fnmatch.fnmatchcase(path, route.path):
                return RoutePolicy(
                    route=route.path,
                    enabled=route.enabled,
                    budgets=tuple(self.budgets if route.budgets is None else route.budgets),
                    on_budget=route.on_budget or self.on_budget,
                    downgrade_to=route.downgrade_to if route.downgrade_to is not None else self.downgrade_to,
                    cap_min_output_tokens=(
                        route.cap_min_output_tokens if route.cap_min_output_tokens is not None
                        else self.cap_min_output_tokens
                    ),
                    headers=self.headers if route.headers is None else route.headers,
                    cache=route.cache,
                    routing=route.routing,
                    output=route.output,
                    defer=route.defer,
                )
        return RoutePolicy(
            route=None, enabled=True, budgets=tuple(self.budgets), on_budget=self.on_budget, downgrade_to=self.downgrade_to,
            cap_min_output_tokens=self.cap_min_output_tokens, headers=self.headers, cache=None, routing=None,
        )

    # -- from TOML --------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, source: str = "configuration", root: Path | None = None, **options: Any
    ) -> Policy:
        """A Policy from a config table; ``options`` (such as ``tenant=``) are added to it.

        An engine is built when the table has engine keys (prices, ledger, budget_store...).
        """
        values = _policy_options(config, source)
        if _ENGINE_KEYS & set(config):
            values["engine"] = engine_from_config(config, source=source, root=root)
        values.update(options)
        try:
            policy = cls(**values)
            if policy.engine is not None:
                check_route_tiers(policy, policy.engine.routing)
            return policy
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Policy:
        """A Policy from ``llmbudget.toml`` (whole file) or ``pyproject.toml`` (``[tool.llmbudget]``)."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such file; expected an llmbudget.toml or a pyproject.toml")
        return cls.from_config(load_config(path), source=str(path), root=path.parent, **options)

    @classmethod
    def discover(cls, start: str | Path | None = None, **options: Any) -> Policy:
        """The Policy of the file ``LLMBUDGET_POLICY`` names when it is set (and no ``start`` is given), else of the
        nearest config file from ``start`` (default: the working folder) up; else defaults."""
        found = locate_config(Path.cwd()) if start is None else find_config(Path(start))
        if found is None:
            return cls(**options)
        path, table = found
        return cls.from_config(table, source=str(path), root=path.parent, **options)


def check_route_tiers(policy: Policy, routing: Any) -> None:
    """A ConfigError for a route that forces a routing tier the engine's ``routing`` does not have (else every
    request it serves went out unrouted, with an error in the log)."""
    for index, route in enumerate(policy.routes):
        if isinstance(route.routing, str) and routing is not None and route.routing not in routing.tiers:
            raise ConfigError(f"routes[{index}] ({route.path!r}): routing = {route.routing!r} names no tier; the "
                              f"tiers are {sorted(routing.tiers)}")


# -- validation helpers ---------------------------------------------------------------------------


def _is_token(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name) and name.isascii()


def _trusted_proxies(value: Any) -> bool | tuple[str, ...]:
    """``trust_tenant_header`` normalised: a bool, or the proxies' networks (``[]``: False)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"trust_tenant_header must be true, false or a list of proxy addresses or networks "
                          f"such as [\"10.0.0.5\", \"10.1.0.0/16\"], got {value!r}")
    networks = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise TypeError(item)
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except (TypeError, ValueError):
            raise ConfigError(f"trust_tenant_header: {item!r} is not an IP address or network such as "
                              "\"10.0.0.5\" or \"10.1.0.0/16\"") from None
    return tuple(networks) or False


def _check_bool(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")


def _check_count(value: Any, what: str, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _strings(values: Any, what: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ConfigError(f"{what} must be a list of strings, got {values!r}")
    result = tuple(values)
    if not all(isinstance(v, str) for v in result):
        raise ConfigError(f"{what} must be a list of strings, got {values!r}")
    return result


def _check_on_budget(on_budget: Any, downgrade_to: Any, cap_min: Any, where: str, *, optional: bool) -> None:
    if not (optional and on_budget is None) and on_budget not in ON_BUDGET:
        raise ConfigError(f"{where}on_budget must be one of {', '.join(map(repr, ON_BUDGET))}, got {on_budget!r}")
    if downgrade_to is not None and (not isinstance(downgrade_to, str) or not downgrade_to):
        raise ConfigError(f"{where}downgrade_to must be a model name, got {downgrade_to!r}")
    if cap_min is not None:
        _check_count(cap_min, f"{where}cap_min_output_tokens", minimum=1)


def _budgets(budgets: Any, what: str) -> tuple[Budget, ...]:
    try:
        result = budget_list(budgets, what)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    seen: dict[tuple[str, str | None], Budget] = {}
    for budget in result:
        key = (budget.per, budget.period)
        if key in seen:
            per = f"per {budget.per}" + (f" per {budget.period}" if budget.period else "")
            raise ConfigError(
                f"{what}: two budgets {per} ({seen[key].name!r} and {budget.name!r}) would share one counter; keep one"
            )
        seen[key] = budget
    return result


def _budget_from_table(table: Any, what: str) -> Budget:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{what} must be a table such as {{usd = 0.5, per = \"tenant\", period = \"day\"}}, "
                          f"got {table!r}")
    unknown = set(table) - _BUDGET_KEYS
    if unknown:
        raise ConfigError(f"{what}: unknown keys {sorted(unknown)}; expected some of {sorted(_BUDGET_KEYS)}")
    if "usd" not in table:
        raise ConfigError(f"{what}: usd is required (the limit in USD, e.g. usd = \"0.50\")")
    usd = table["usd"]
    if isinstance(usd, bool) or not isinstance(usd, (int, float, str)):
        raise ConfigError(f"{what}: usd must be a number or a decimal string, got {usd!r}")
    period = table.get("period")
    if period is not None and period not in PERIODS:
        raise ConfigError(f"{what}: period must be one of {', '.join(map(repr, PERIODS))}, got {period!r}")
    name = table.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"{what}: name must be a string, got {name!r}")
    try:
        return Budget(usd, per=table.get("per", "request"), period=period, name=name,
                      on_unavailable=table.get("on_unavailable"))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _budgets_from_config(value: Any, what: str) -> list[Budget]:
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be an array of tables ([[budgets]] or budgets = [{{usd = ...}}]), got {value!r}")
    return [_budget_from_table(item, f"{what}[{i}]") for i, item in enumerate(value)]


def _metrics_from_config(value: Any) -> MetricsPolicy:
    if isinstance(value, bool):
        return MetricsPolicy(enabled=value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"metrics must be true, false or a table ([metrics]), got {value!r}")
    unknown = set(value) - _METRICS_KEYS
    if unknown:
        raise ConfigError(f"metrics: unknown keys {sorted(unknown)}; expected some of {sorted(_METRICS_KEYS)}")
    tenants = value.get("tenants", [])
    return MetricsPolicy(
        value.get("enabled", True),
        path=value.get("path"),
        max_tenants=value.get("max_tenants", 100),
        tenants=_strings(tenants, "metrics.tenants"),
        max_models=value.get("max_models", 50),
    )


def _route_from_config(value: Any, what: str) -> Route:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a table ([[routes]] with path = \"/chat/*\"), got {value!r}")
    unknown = set(value) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(f"{what}: unknown keys {sorted(unknown)}; expected some of {sorted(_ROUTE_KEYS)}")
    if "path" not in value:
        raise ConfigError(f"{what}: path is required (a path glob such as \"/admin/*\")")
    options = {k: v for k, v in value.items() if k not in ("path", "budgets")}
    if "budgets" in value:
        options["budgets"] = _budgets_from_config(value["budgets"], f"{what}.budgets")
    try:
        return Route(value["path"], **options)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def check_keys(config: Mapping[str, Any], source: str) -> None:
    """A ConfigError naming the file for a key no policy has, or a middleware key of the wrong kind."""
    _policy_options(config, source)


def _policy_options(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Keyword options for :class:`Policy` from a config table (engine keys are left out)."""
    unknown = set(config) - _KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    values: dict[str, Any] = {}
    try:
        for key in ("on_budget", "downgrade_to", "cap_min_output_tokens", "headers", "problem_type",
                    "trust_tenant_header"):
            if key in config:
                values[key] = config[key]
        for key in ("tenant_header", "request_id_header"):
            if key in config:
                values[key] = config[key] or None  # "" turns the header off
        if "budgets" in config:
            values["budgets"] = _budgets_from_config(config["budgets"], "budgets")
        if "metrics" in config:
            values["metrics"] = _metrics_from_config(config["metrics"])
        if "routes" in config:
            routes = config["routes"]
            if not isinstance(routes, list):
                raise ConfigError(f"routes must be an array of tables ([[routes]]), got {routes!r}")
            values["routes"] = [_route_from_config(r, f"routes[{i}]") for i, r in enumerate(routes)]
        Policy(**values)  # validate the whole thing now, with the file named
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return values


# -- files ----------------------------------------------------------------------------------------


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``llmbudget.toml``, or ``pyproject.toml`` with ``[tool.llmbudget]``, from ``start`` up."""
    for folder in (start, *start.parents):
        candidate = folder / "llmbudget.toml"
        if candidate.is_file():
            return candidate, _read(candidate)
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            table = _tool_table(_read(candidate), candidate)
            if table is not None:
                return candidate, table
    return None


def locate_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The policy file ``LLMBUDGET_POLICY`` names when it is set, else :func:`find_config` from ``start``."""
    named = os.environ.get("LLMBUDGET_POLICY")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"{path}: no such file (named by LLMBUDGET_POLICY); expected an llmbudget.toml or "
                              "a pyproject.toml")
        return path, load_config(path)
    return find_config(start)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
        # a UTF-8 byte-order mark (Windows editors write one), which TOML does not allow, is dropped, as the traffic
        # and label files' is: tomllib called it "Invalid statement (at line 1, column 1)"
        return tomllib.loads(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a policy file; expected an llmbudget.toml or a pyproject.toml") \
            from None
    except OSError as exc:  # unreadable (permissions), a symlink loop...
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a policy file (arrays or tables nested too deeply to read)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save the policy file as UTF-8") \
            from None


def load_config(path: Path) -> dict[str, Any]:
    """The llmbudget table of one file (``llmbudget.toml`` whole, else ``[tool.llmbudget]``)."""
    data = _read(path)
    if path.name == "pyproject.toml":
        return _tool_table(data, path) or {}
    return data


def _tool_table(data: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """A pyproject's ``[tool.llmbudget]`` table, None when it has none; ConfigError when it is not a table."""
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: tool must be a table ([tool.llmbudget] holds the policy), got {tool!r}")
    table = tool.get("llmbudget")
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.llmbudget must be a table ([tool.llmbudget]), got {table!r}")
    return table


def _path(value: Any, key: str, source: str, root: Path | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} must be a file path, got {value!r}")
    path = Path(value).expanduser()
    return root / path if root is not None and not path.is_absolute() else path


def _redis_url(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith(("redis://", "rediss://")) else None


def _redis_backend(key: str, url: str, source: str) -> Any:
    try:
        from .ledger.redis import RedisBudgetStore, RedisLedger

        return RedisLedger(url) if key == "ledger" else RedisBudgetStore(url)
    except ImportError as exc:  # names the URL without its password
        raise ConfigError(f"{source}: {key}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None


def pricing_from_config(config: Mapping[str, Any], *, source: str = "configuration") -> Pricing:
    """The prices of a config table (``[prices]``, ``[unknown_model_price]``), with errors naming the file."""
    for key in ("prices", "unknown_model_price"):
        if key in config and not isinstance(config[key], Mapping):
            raise ConfigError(f"{source}: [{key}] must be a table, got {config[key]!r}")
    try:
        return Pricing(config.get("prices") or {},
                       unknown_model_price=config.get("unknown_model_price", CONSERVATIVE_PRICE))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def engine_from_config(config: Mapping[str, Any], *, source: str = "configuration", root: Path | None = None,
                       cache: bool = True) -> Engine:
    """An Engine from a config table, with errors that name the file and the key.

    Middleware keys (budgets, routes, ...) are validated too, but only a
    :class:`Policy` applies them: the engine's own budgets stay empty.
    ``cache=False``: the [cache] table is checked but not opened (the engine has no cache).
    """
    _policy_options(config, source)
    pricing = pricing_from_config(config, source=source)
    hosts = config.get("hosts", ["api.openai.com", "api.anthropic.com"])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(f"{source}: hosts must be a list of host names, got {hosts!r}")
    max_output = config.get("default_max_output_tokens", 4096)
    if not isinstance(max_output, int) or isinstance(max_output, bool) or not 0 < max_output <= MAX_TOKENS:
        raise ConfigError(f"{source}: default_max_output_tokens must be a whole number of tokens from 1 to "
                          f"{MAX_TOKENS:,}, got {max_output!r}")
    default_tenant = config.get("default_tenant", "default")
    if not isinstance(default_tenant, str) or not default_tenant:
        raise ConfigError(f"{source}: default_tenant must be a non-empty string, got {default_tenant!r}")
    ledger_url = _redis_url(config.get("ledger"))
    store_url = _redis_url(config.get("budget_store"))
    ledger_path = None if ledger_url else _path(config.get("ledger"), "ledger", source, root)
    if ledger_path is not None and "?" in str(config.get("ledger")):  # it would be part of the file's name
        raise ConfigError(f"{source}: ledger = {config.get('ledger')!r}: a SQLite ledger takes no ?options "
                          "(only budget_store and Redis URLs do)")
    store_path = None if store_url else _path(config.get("budget_store"), "budget_store", source, root)
    margin = config.get("input_estimate_margin", 1.25)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 1 <= margin <= _MAX_MARGIN:
        raise ConfigError(f"{source}: input_estimate_margin must be a number from 1 to {_MAX_MARGIN}, got {margin!r}")
    prompt_cache_keys = config.get("prompt_cache_keys", True)
    if not isinstance(prompt_cache_keys, bool):
        raise ConfigError(f"{source}: prompt_cache_keys must be true or false, got {prompt_cache_keys!r}")
    prefix_cache = config.get("prefix_cache", {})
    if not isinstance(prefix_cache, Mapping):
        raise ConfigError(f"{source}: [prefix_cache] must be a table, got {prefix_cache!r}")
    unknown = set(prefix_cache) - _PREFIX_CACHE_KEYS
    if unknown:
        raise ConfigError(f"{source}: [prefix_cache] has unknown keys {sorted(unknown)}; expected "
                          f"{', '.join(sorted(_PREFIX_CACHE_KEYS))}")
    breakpoints = prefix_cache.get("breakpoints", "off")
    if breakpoints not in ("off", "auto"):
        raise ConfigError(f"{source}: [prefix_cache] breakpoints must be \"off\" or \"auto\", got {breakpoints!r}")
    watch = prefix_cache.get("watch", True)
    if not isinstance(watch, bool):
        raise ConfigError(f"{source}: [prefix_cache] watch must be true or false, got {watch!r}")
    try:
        output = Output.of(config.get("output"), f"{source}: [output]")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Engine(
        output=output,
        breakpoints=breakpoints,
        prefix_watch=watch,
        cache=_cache_from_config(config.get("cache"), source, root, opened=cache),
        routing=_routing_from_config(config.get("routing"), source),
        prompt_cache_keys=prompt_cache_keys,
        input_estimate_margin=float(margin),
        pricing=pricing,
        hosts=hosts,
        default_max_output_tokens=max_output,
        default_tenant=default_tenant,
        ledger=_redis_backend("ledger", ledger_url, source) if ledger_url
        else _open_file("ledger", SQLiteLedger, ledger_path, source) if ledger_path else None,
        budget_store=_redis_backend("budget_store", store_url, source) if store_url
        else _open_file("budget_store", SQLiteBudgetStore, store_path, source) if store_path else None,
    )


def _open_file(key: str, opener: Any, path: Any, source: str) -> Any:
    """``opener(path)``, or a ConfigError naming the key and the file when it cannot be opened there."""
    try:
        return opener(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"{source}: {key} = {str(path)!r} cannot be opened ({exc}); expected a writable path "
                          "to a file (its folder is created if missing)") from None
    except ValueError as exc:  # a bad ``?option`` of the path (a typo, a value that is not one)
        raise ConfigError(f"{source}: {key}: {exc}") from None


def _table(value: Any, name: str, keys: frozenset[str], source: str) -> Mapping[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {name} must be a table ([{name}]) or true/false, got {value!r}")
    unknown = set(value) - keys
    if unknown:
        raise ConfigError(f"{source}: {name}: unknown keys {sorted(unknown)}; expected some of {sorted(keys)}")
    enabled = value.get("enabled", True)
    _check_bool(enabled, f"{source}: {name}.enabled")  # "false" or 0 left the feature on
    if enabled is False:
        return None
    return value


def _cache_from_config(value: Any, source: str, root: Path | None, *, opened: bool = True) -> Any:
    """The [cache] table's Cache, its keys and values checked; ``opened=False``: checked only (None)."""
    table = _table(value, "cache", _CACHE_KEYS, source)
    if table is None:
        return None
    for key in ("semantic", "allow_temperature", "reranker", "worker"):
        if key in table and not isinstance(table[key], bool):
            raise ConfigError(f"{source}: cache.{key} must be true or false, got {table[key]!r}")
    if "ttl" in table:  # the stores' own bound, said as the policy's error
        from .cache.store import check_ttl

        try:
            check_ttl(table["ttl"])
        except ValueError:
            raise ConfigError(f"{source}: cache.ttl must be a positive number of seconds up to 1e9, "
                              f"got {table['ttl']!r}") from None
    if "max_entries" in table:  # 1.5 was cut to 1 without a word
        _check_count(table["max_entries"], f"{source}: cache.max_entries", minimum=1)
    threshold = table.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise ConfigError(f"{source}: cache.threshold must be a number within [0, 1], got {threshold!r}")
    limit = table.get("max_semantic_chars")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"{source}: cache.max_semantic_chars must be a whole number of characters "
                          f"(0: no limit), got {limit!r}")
    # absent: the Cache's default limit; 0: no limit
    semantic_chars: dict[str, Any] = {} if limit is None else {"max_semantic_chars": limit or None}
    where = _redis_url(table.get("path")) or _path(table.get("path"), "cache.path", source, root)
    if not opened:
        return None
    from .cache import Cache

    try:
        return _open_file("cache.path", lambda path: _started(path, source, lambda: Cache(
            path,
            semantic=table.get("semantic", True),
            allow_temperature=table.get("allow_temperature", False),
            ttl=table.get("ttl"),
            max_entries=int(table.get("max_entries", 100_000)),
            threshold=threshold,
            reranker=table.get("reranker", False),
            worker=table.get("worker", False),
            **semantic_chars,
        )), where, source)
    except ImportError as exc:  # redis-py for a Redis path, MiniLM's weights for the reranker
        key = "cache.path" if _redis_url(table.get("path")) and "redis" in str(exc) else "cache.reranker = true"
        raise ConfigError(f"{source}: {key}: {exc}") from None


def _started(path: Any, source: str, make: Callable[[], Any]) -> Any:
    """``make()`` (the cache at ``path``), or None where its existing SQLite file cannot be opened for a while (its
    disk full, an exclusive lock, an I/O error): the app starts without its cache, said in the log, rather than
    not at all (the budget store and the ledger start as unavailable and come back; the cache comes back when
    the app restarts). A path that is wrong for good still fails at start-up."""
    try:
        return make()
    except sqlite3.Error as exc:
        from .cache.store import database_path

        if (isinstance(path, str) and _redis_url(path)) or not is_outage(exc, database_path(path)):
            raise
        log.warning("llmbudget: %s: the cache at %s cannot be opened now (%s: %s); the app runs without it until it "
                    "restarts", source, path, type(exc).__name__, exc)
        return None


def _routing_from_config(value: Any, source: str) -> Any:
    table = _table(value, "routing", _ROUTING_KEYS, source)
    if table is None:
        return None
    from .routing.tiers import Routing

    tiers = table.get("tiers")
    if not isinstance(tiers, Mapping) or not tiers:
        raise ConfigError(f"{source}: routing.tiers must be a table such as "
                          "{small = \"gpt-4.1-nano\", large = \"\"}, got " + repr(tiers))
    for key in ("route_tools", "route_schemas", "escalate"):
        if key in table and not isinstance(table[key], bool):
            raise ConfigError(f"{source}: routing.{key} must be true or false, got {table[key]!r}")
    try:
        return Routing(
            tiers=dict(tiers),
            weak=table.get("weak", "small"),
            strong=table.get("strong", "large"),
            threshold=table.get("threshold"),
            never=_strings(table.get("never", []), "routing.never"),
            route_tools=table.get("route_tools", False),
            route_schemas=table.get("route_schemas", False),
            escalate=table.get("escalate", False),
            min_confidence=table.get("min_confidence"),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
