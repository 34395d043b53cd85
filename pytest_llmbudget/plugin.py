"""pytest --llm-budget: what every test spent on LLM calls, budgets per test and per run, baselines.

Budgets here judge, they don't refuse: a test runs to its end and then fails
with its spend report (refusing calls is the middleware's job).
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Generator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest

import llmbudget
from llmbudget.calls import SpendRecord
from llmbudget.config import ConfigError, engine_from_config, locate_config
from llmbudget.money import exact_usd, usd
from llmbudget.pipeline import (
    engine_configured,
    next_sequence,
    unwatch_every_engine,
    watch_every_engine,
)
from llmbudget.prefix import unstable_prefixes
from llmbudget.scope import current_scope

from . import report
from .golden import GoldenRouting
from .replays import Stale, watch_replays
from .spend import Counters, TestSpend

_FLAG = "--llm-budget"
_FALLBACK_FLAG = "--llmbudget"
_KEY = pytest.StashKey["LLMBudgetPlugin"]()
#: Engines a plugin made current (not a project's), and the plugins running, the innermost last.
_PLUGIN_ENGINES: weakref.WeakSet[llmbudget.Engine] = weakref.WeakSet()
_ACTIVE: list[LLMBudgetPlugin] = []
_flag_in_use = _FLAG


_HELP = "record what each test spends on LLM calls; with USD, fail the run when its total exceeds it"


def _option_taken(parser: pytest.Parser, name: str) -> bool:
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", ())]
    return any(name in option.names() for group in groups for option in getattr(group, "options", ()))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmbudget", "LLM spend per test (llmbudget)")
    group.addoption(
        _FALLBACK_FLAG, dest="llmbudget_usd", nargs="?", const="", default=None, metavar="USD",
        help=f"the same as {_FLAG} (for when another plugin owns {_FLAG})",
    )
    group.addoption("--llm-budget-json", dest="llm_budget_json", metavar="PATH", help="write the spend report as JSON")
    group.addoption("--llm-budget-save", dest="llm_budget_save", metavar="PATH", help="save this run as a baseline")
    group.addoption(
        "--llm-budget-compare", dest="llm_budget_compare", metavar="PATH",
        help="fail when the total or a test costs more than in this baseline (beyond the tolerance)",
    )
    group.addoption(
        "--llm-budget-tolerance", dest="llm_budget_tolerance", metavar="PCT", default=None,
        help="allowed cost increase over the baseline: 10%% (or the fraction 0.1; a bare number of 1 or more is refused "
             "as ambiguous) (default: ini llm_budget_tolerance or 0%%)",
    )
    parser.addini("llm_budget_usd", "default budget per test in USD (marker values win)", default="")
    parser.addini("llm_budget_tokens", "default budget per test in tokens", default="")
    parser.addini("llm_budget_calls", "default budget per test in calls", default="")
    parser.addini("llm_budget_tolerance", "default tolerance for --llm-budget-compare, e.g. 10%", default="0%")
    parser.addini("llm_budget_cache", "use the policy's [cache] during tests (off: tests stay independent)",
                  type="bool", default=False)


def _is_amount(text: str) -> bool:
    try:
        return Decimal(text.lstrip("$")).is_finite()
    except InvalidOperation:
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Add ``--llm-budget`` once every installed plugin had its say, unless one owns it already.

    Also: ``--llm-budget tests/`` means recording on, not a budget of "tests/": keep the path a path.
    """
    global _flag_in_use
    if _option_taken(parser, _FLAG):
        _flag_in_use = _FALLBACK_FLAG
    else:
        _flag_in_use = _FLAG
        parser.getgroup("llmbudget").addoption(
            _FLAG, dest="llmbudget_usd", nargs="?", const="", default=None, metavar="USD", help=_HELP
        )
    for i, arg in enumerate(args):  # (--llmbudget too: it is always this plugin's)
        if arg in (_flag_in_use, _FALLBACK_FLAG) and i + 1 < len(args) and not _is_amount(args[i + 1]):
            args[i] = f"{arg}="


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm_budget(usd=None, tokens=None, calls=None): fail the test when its LLM calls exceed these limits",
    )
    wanted = config.getoption("llmbudget_usd") is not None or any(
        config.getoption(name) for name in ("llm_budget_json", "llm_budget_save", "llm_budget_compare")
    )
    if not wanted:
        return
    plugin = LLMBudgetPlugin(config)
    config.stash[_KEY] = plugin
    config.pluginmanager.register(plugin, "llmbudget-recorder")
    # a cleanup runs even when another plugin's pytest_unconfigure raises: a run left active (an inner pytester
    # run's) would keep the outer run from counting anything after it
    config.add_cleanup(plugin.close)


def _usd(value: Any, what: str) -> Decimal:
    try:
        return usd(value, what)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _tolerance(value: str, what: str = "--llm-budget-tolerance") -> Decimal:
    """A tolerance as a fraction: ``10%`` is 0.10, and so is a bare ``0.10``; a bare number of 1 or more is refused."""
    text = value.strip()
    try:
        amount = Decimal(text[:-1]) / 100 if text.endswith("%") else Decimal(text)
    except ArithmeticError:  # InvalidOperation, and Overflow for a percentage such as 1e99999999%
        raise pytest.UsageError(f"{what}: expected a percentage such as 10%, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise pytest.UsageError(f"{what} must be a percentage of 0% or more, got {value!r}")
    amount = abs(amount)  # (-0% is 0%)
    if not text.endswith("%") and amount >= 1:  # "1" may mean 1% or 100%: say which
        raise pytest.UsageError(
            f"{what} {value}: a bare number is a fraction (0.1 is 10%), so this would allow a "
            f"{amount * 100:.0f}% cost rise; write {text}% for {text} percent, or {amount * 100:.0f}% if you "
            "really mean that"
        )
    return amount


_LIMITS = frozenset({"usd", "tokens", "calls"})
_RUNNING = pytest.StashKey[bool]()  # the test function is running (a report now is a subtest's)
_JUDGE_TEARDOWN = pytest.StashKey[bool]()  # the test passed its budget: judge it again with its teardown's spend


class _Verdict:
    """A failed budget gate, counted in pytest's final summary line like a report (other plugins read the stats)."""

    count_towards_summary = True
    nodeid = ""
    when = "session"
    outcome = "failed"

    def __init__(self, message: str) -> None:
        self.longrepr = self.message = message


_PROPERTIES = frozenset({"llm_cost_usd", "llm_calls", "llm_input_tokens", "llm_cached_input_tokens",
                         "llm_output_tokens"})


def _limit(key: str, value: Any, what: str) -> Decimal | int:
    """One limit, checked: ``usd`` an amount in dollars, ``tokens`` and ``calls`` whole numbers of 0 or more."""
    if key == "usd":
        return _usd(value, f"{what} usd")
    text = str(value).strip().replace("_", "")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not (text.isascii() and text.isdigit()):
        raise pytest.UsageError(f"{what} {key}={value!r}: expected a whole number of {key} (0 or more)")
    return int(text)


def _check_marker(item: pytest.Item) -> dict[str, Decimal | int] | None:
    """The limits of the item's ``llm_budget`` markers, checked, merged from the farthest (module, class) to the
    nearest (the function), key by key; None when it has none. Positional arguments, unknown keywords and values
    that are not limits are refused."""
    markers = list(item.iter_markers("llm_budget"))
    if not markers:
        return None
    limits: dict[str, Decimal | int] = {}
    for marker in reversed(markers):
        if marker.args:
            raise pytest.UsageError(f"{item.nodeid}: use llm_budget(usd=..., tokens=..., calls=...) keywords")
        unknown = set(marker.kwargs) - _LIMITS
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: llm_budget got unknown limits {sorted(unknown)}; expected usd, tokens or calls"
            )
        limits.update({key: _limit(key, value, f"{item.nodeid}: llm_budget")
                       for key, value in marker.kwargs.items() if value is not None})
    return limits


def _ini_limits(config: pytest.Config) -> dict[str, Decimal | int]:
    """The ini budgets per test, checked (a bad value is a usage error up front, with or without the flag)."""
    return {key: _limit(key, value, f"ini llm_budget_{key}") for key in ("usd", "tokens", "calls")
            if (value := config.getini(f"llm_budget_{key}")) not in ("", None)}


def _ini_tolerance(config: pytest.Config) -> Decimal:
    """The tolerance: the flag's, else the ini's (each named as what it is in an error)."""
    flag = config.getoption("llm_budget_tolerance")
    if flag:
        return _tolerance(flag)
    return _tolerance(config.getini("llm_budget_tolerance"), "ini llm_budget_tolerance")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every ``llm_budget`` marker (and the ini limits), and warn once when markers are present but
    nothing checks them."""
    limits: dict[str, Decimal | int] = {}
    if config.stash.get(_KEY, None) is None:  # with the flag, the plugin checked them when it started
        limits = _ini_limits(config)
        _ini_tolerance(config)
    marked = [item for item in items if _check_marker(item) is not None]
    if marked and config.stash.get(_KEY, None) is None:
        _warn(config, pytest.PytestConfigWarning(
            f"{len(marked)} test(s) carry @pytest.mark.llm_budget but {_flag_in_use} is off: their LLM budgets are "
            f"not checked. Run pytest with {_flag_in_use} (or add it to addopts) to enforce them."
        ))
    elif limits and items:  # (a budget for every test, in the ini, as unchecked as a marker's)
        _warn(config, pytest.PytestConfigWarning(
            f"the ini sets {', '.join(f'llm_budget_{key}' for key in limits)} but {_flag_in_use} is off: no test's "
            f"LLM budget is checked. Run pytest with {_flag_in_use} (or add it to addopts) to enforce them."
        ))


def _warn(config: pytest.Config, warning: Warning) -> None:
    """Warn; where a filter makes warnings errors (``filterwarnings = error``), say it on the terminal instead:
    a notice from this plugin never stops or fails a run."""
    try:
        warnings.warn(warning, stacklevel=2)
    except Warning:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.ensure_newline()
            terminal.write_line(f"{type(warning).__name__}: {warning}", yellow=True)


def _project_engine(config: pytest.Config) -> llmbudget.Engine | None:
    """An engine from the project's ``llmbudget.toml`` / ``[tool.llmbudget]`` (no cache unless
    ``llm_budget_cache`` is set); None when the project has no policy."""
    try:
        found = locate_config(Path(str(config.rootpath)))  # the file LLMBUDGET_POLICY names, as the app reads
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if found is None:
        return None
    path, table = found
    try:  # [cache] is checked whether or not the tests use it: a typo there is one in the app's policy
        return engine_from_config(table, source=str(path), root=path.parent, cache=config.getini("llm_budget_cache"))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


class LLMBudgetPlugin:
    """Records every LLM call the session makes and reports it per test."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        raw = config.getoption("llmbudget_usd")
        given = config.invocation_params.args
        flag = _FALLBACK_FLAG if any(str(a).split("=")[0] == _FALLBACK_FLAG for a in given) else _flag_in_use
        self.run_budget = _usd(raw, flag) if raw else None
        self.tolerance = _ini_tolerance(config)
        compare = config.getoption("llm_budget_compare")
        # read (and checked) before any test runs: a baseline that cannot be compared is a usage error up front
        self.baseline = _load_baseline(compare) if compare and not self.is_worker else None
        self.defaults = _ini_limits(config)  # checked up front: a usage error, not a crash after the first test
        self.flag = _flag_in_use
        # An engine the project configured already (conftest.py's configure()) is the one its calls go through:
        # measured as it is, not replaced (routing, caches and prices as the app has them)
        # (an engine an outer run's plugin made, a pytester run inside a measured test, is no project's)
        current = llmbudget.get_engine()
        self.owns_engine = (not engine_configured() or current in _PLUGIN_ENGINES
                            or bool(_ACTIVE) and current is _ACTIVE[-1].engine)
        self.engine: llmbudget.Engine = (_project_engine(config) or llmbudget.Engine()) if self.owns_engine else current
        self.tests: dict[str, TestSpend] = {}
        self.outcomes: dict[str, str] = {}
        self.outside = TestSpend()
        self.workers = 1  # xdist's (pytest_xdist_setupnodes)
        self._current: TestSpend | None = None
        self._current_id: str | None = None
        self._current_started = 0  # the call sequence number the running test started at
        self._strays: dict[str, int] = {}  # calls that ended in a test they did not start in, by that test
        self._saved: list[tuple[TestSpend | None, str | None]] = []  # tests set aside by wider fixtures' work
        self._lock = threading.Lock()
        self.verdicts: list[str] = []
        self.notes: list[str] = []  # said at the end, failing nothing
        self.new_tests: list[str] = []
        self.gone_tests: list[str] = []  # the baseline's tests that did not run
        self.failed = False
        self._previous_engine = llmbudget.set_engine(self.engine) if self.owns_engine else None
        if self.owns_engine:  # an inner run (pytester) reads its own project's policy, not this
            _PLUGIN_ENGINES.add(self.engine)
        self._was_installed = llmbudget.installed()
        llmbudget.install()
        # every engine's records: a test (or the app it tests) may configure() one of its own at any time; only
        # the innermost run's plugin counts them (a pytester run inside a measured test is not the outer test's)
        _ACTIVE.append(self)
        watch_every_engine(self._on_record)
        self._unwatch_replays = watch_replays(self._on_stale, self._directives)

    def close(self) -> None:
        if self not in _ACTIVE:  # closed already
            return
        _ACTIVE.remove(self)
        unwatch_every_engine(self._on_record)
        if self._unwatch_replays is not None:
            self._unwatch_replays()
        if self._previous_engine is not None:
            llmbudget.set_engine(self._previous_engine)
        if not self._was_installed:
            llmbudget.uninstall()

    # -- recording -----------------------------------------------------------------------------

    def _on_record(self, record: SpendRecord) -> None:
        if _ACTIVE and _ACTIVE[-1] is not self:
            return
        with self._lock:
            spend, test_id, started = self._current, self._current_id, self._current_started
            if spend is not None and 0 < record.sequence < started:
                # started before this test did (a thread or task an earlier test left running): not this
                # test's spend, whose budget it would fail; counted outside tests, and said at the end
                self._strays[test_id or ""] = self._strays.get(test_id or "", 0) + 1
                spend = test_id = None
        if test_id is not None and record.test_id is None:
            record.test_id = test_id
        (spend if spend is not None else self.outside).add(record)

    def _on_stale(self, stale: Stale) -> None:
        if _ACTIVE and _ACTIVE[-1] is not self:
            return
        spend = self.current()
        with spend._lock:
            spend.stale_replays += 1
            spend.stale_input_tokens += stale.input_tokens

    @staticmethod
    def _directives() -> tuple[str, ...]:
        """The length directives the current engine and scope add (not part of a test's prompt)."""
        engine, scope = llmbudget.get_engine(), current_scope()
        outputs = [engine.output, scope.output if scope is not None else None]
        outputs += [tier.output for tier in engine.routing.tiers.values()] if engine.routing is not None else []
        return tuple(output.text for output in outputs if output)

    def current(self) -> TestSpend:
        with self._lock:
            return self._current if self._current is not None else self.outside

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        spend = TestSpend()
        with self._lock:
            self._current, self._current_id, self._current_started = spend, item.nodeid, next_sequence()
        try:
            return (yield)
        finally:
            with self._lock:
                self._current, self._current_id = None, None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
                             ) -> Generator[None, Any, Any]:
        """A class-, module-, package- or session-scoped fixture's setup and teardown run inside whichever test
        first or last needs it; what they spend is not that test's but ``outside_tests``'s (or a per-test
        budget would fail, and a baseline regress, by the order tests run in)."""
        if fixturedef.scope == "function":
            return (yield)
        # Its finalizers run last-in first-out: this one last, after the fixture's own teardown code ...
        fixturedef.addfinalizer(self._leave_outside)
        self._enter_outside()
        try:
            return (yield)
        finally:
            self._leave_outside()
            fixturedef.addfinalizer(self._enter_outside)  # ... and this one first, before it

    def _enter_outside(self) -> None:
        with self._lock:
            self._saved.append((self._current, self._current_id))
            self._current, self._current_id = None, None

    def _leave_outside(self) -> None:
        with self._lock:
            if self._saved:
                self._current, self._current_id = self._saved.pop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        # A report made while the test function runs is a subtest's (pytest's subtests fixture): not judged, or
        # one overspend would fail every subtest after it as well as the test
        item.stash[_RUNNING] = True
        try:
            return (yield)
        finally:
            item.stash[_RUNNING] = False

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
        spend = self.current()
        if call.when == "teardown":  # (each rerun's teardown replaces the last one's: the spend so far, once)
            item.user_properties[:] = [p for p in item.user_properties if p[0] not in _PROPERTIES]
            item.user_properties.extend(
                [("llm_cost_usd", f"{spend.cost_usd:f}"), ("llm_calls", spend.calls),
                 ("llm_input_tokens", spend.input_tokens), ("llm_cached_input_tokens", spend.cached_input_tokens),
                 ("llm_output_tokens", spend.output_tokens)]
            )
        rep: pytest.TestReport = yield
        if call.when == "call" and not item.stash.get(_RUNNING, False):
            item.stash[_JUDGE_TEARDOWN] = rep.passed
            if rep.passed:
                self._judge(item, spend, rep)
            else:  # failed, skipped or xfailed on its own: its overspend is said, not judged
                problems = self._over_budget(item, spend)
                if problems:
                    text = f"exceeded its LLM budget: {'; '.join(problems)}"
                    rep.sections.append(("llmbudget", text))
                    if not rep.failed:
                        kind = "xfailed" if hasattr(rep, "wasxfail") else "skipped"
                        rep.llm_budget_note = f"{item.nodeid} {kind} after it {text}"  # type: ignore[attr-defined]
        elif call.when == "teardown" and rep.passed and item.stash.get(_JUDGE_TEARDOWN, False):
            self._judge(item, spend, rep)  # what fixtures spent after the test (their teardown) counts too
        if call.when == "teardown":
            rep.llm_budget = spend.to_wire()  # type: ignore[attr-defined]
        return rep

    def _judge(self, item: pytest.Item, spend: TestSpend, rep: pytest.TestReport) -> None:
        problems = self._over_budget(item, spend)
        if problems:
            item.stash[_JUDGE_TEARDOWN] = False  # failed once: its teardown is not failed for it again
            rep.outcome = "failed"
            rep.longrepr = report.budget_failure(item.nodeid, problems, spend)

    def _over_budget(self, item: pytest.Item, spend: TestSpend) -> list[str]:
        limits: dict[str, Any] = {**self.defaults, **(_check_marker(item) or {})}
        problems = []
        if "usd" in limits and spend.cost_usd > limits["usd"]:
            problems.append(f"cost {exact_usd(spend.cost_usd)} > budget {exact_usd(limits['usd'])}")
        if "tokens" in limits and spend.tokens > limits["tokens"]:
            problems.append(f"tokens {spend.tokens} > budget {limits['tokens']}")
        if "calls" in limits and spend.calls - spend.refused > limits["calls"]:  # not a 429 the SDK retried
            problems.append(f"calls {spend.calls - spend.refused} > budget {limits['calls']}")
        return problems

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        xfail = hasattr(report, "wasxfail")
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped and report.nodeid not in self.outcomes:
            self.outcomes[report.nodeid] = "xfailed" if xfail else "skipped"
        elif report.when == "call" and report.passed:
            self.outcomes.setdefault(report.nodeid, "xpassed" if xfail else "passed")
        note = getattr(report, "llm_budget_note", None)
        if isinstance(note, str):  # (from an xdist worker too: the report carries it)
            self.notes.append(note)
        payload = getattr(report, "llm_budget", None)
        if report.when == "teardown" and isinstance(payload, dict):
            spend = TestSpend.from_wire(payload)
            earlier = self.tests.get(report.nodeid)
            if earlier is None:
                self.tests[report.nodeid] = spend
            else:  # the same test run again (a rerun, --keep-duplicates): each run spent
                earlier.merge_spend(spend)

    # -- the end of the run --------------------------------------------------------------------

    def summary(self) -> report.Summary:
        models: dict[str, Counters] = {}
        total = Counters()
        unpriced: set[str] = set()
        rows = [row for spend in (*self.tests.values(), self.outside) for row in spend.prefixes]
        for spend in (*self.tests.values(), self.outside):
            total.merge(spend)
            unpriced |= spend.unpriced
            for model, counters in spend.models.items():
                models.setdefault(model, Counters()).merge(counters)
        return report.Summary(
            tests=self.tests, outcomes=self.outcomes, models=models, total=total,
            outside=self.outside, snapshot=self.engine.pricing.snapshot, unpriced=sorted(unpriced),
            prefixes=unstable_prefixes(rows, self.engine.pricing), workers=self.workers,
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: list[Any]) -> None:
        """pytest-xdist: how many workers run (each runs the session's fixtures once); a worker that crashes and
        is replaced is not counted twice."""
        self.workers = max(1, len(specs))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """pytest-xdist: a worker's spend outside tests (at import, in session fixtures) joins the run's."""
        output = getattr(node, "workeroutput", {})
        payload = output.get("llm_budget_outside")
        if isinstance(payload, dict):
            self.outside.merge_spend(TestSpend.from_wire(payload))
        for test, count in (output.get("llm_budget_strays") or {}).items():
            self._strays[test] = self._strays.get(test, 0) + int(count)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:  # xdist sends this to the controller with the worker's other output
            self.config.workeroutput["llm_budget_outside"] = self.outside.to_wire()  # type: ignore[attr-defined]
            self.config.workeroutput["llm_budget_strays"] = dict(self._strays)  # type: ignore[attr-defined]
            return
        if self._strays:
            self.notes.append(
                f"{sum(self._strays.values())} LLM call(s) ended during a test they had not started in (a thread or "
                f"task an earlier test left running), counted outside tests, not against it: during "
                + ", ".join(f"{test} ({count})" for test, count in sorted(self._strays.items())))
        summary = self.summary()
        if self.run_budget is not None and summary.total.cost_usd > self.run_budget:
            self.verdicts.append(
                f"LLM spend {exact_usd(summary.total.cost_usd)} exceeds the run budget {exact_usd(self.run_budget)} "
                f"({self.flag})"
            )
        if self.baseline is not None:
            regressions, self.new_tests = report.compare(summary, self.baseline, self.tolerance)
            self.gone_tests = report.gone(summary, self.baseline)
            self.verdicts.extend(regressions)
        doc = report.json_document(summary)
        for option in ("llm_budget_json", "llm_budget_save"):
            path = self.config.getoption(option)
            if path and option == "llm_budget_save" and not self._ran_tests(session, exitstatus):
                # --co, an interrupted run or one that ran no test: the baseline keeps what it had
                self.notes.append(f"--llm-budget-save: {path} not written: no test ran to the end in this run")
                continue
            if path:
                try:
                    report.write_json(Path(path), doc)
                except OSError as exc:  # a run asked for a report it did not get: say so, and fail it
                    flag = "--" + option.replace("_", "-")
                    self.verdicts.append(f"{flag}: could not write {path} ({exc})")
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            try:
                with open(step_summary, "a", encoding="utf-8") as handle:
                    handle.write(report.markdown(summary, self.verdicts, self.new_tests, self.gone_tests))
            except OSError as exc:
                _warn(self.config, UserWarning(f"llmbudget: could not write GITHUB_STEP_SUMMARY: {exc}"))
        if self.verdicts:
            self.failed = True
            if session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _ran_tests(self, session: pytest.Session, exitstatus: int) -> bool:
        return (not self.config.option.collectonly and exitstatus != pytest.ExitCode.INTERRUPTED
                and not session.shouldstop and bool(self.outcomes))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        summary = self.summary()
        if self.flag == _FALLBACK_FLAG:
            terminalreporter.write_line(
                f"llmbudget: {_FLAG} belongs to another installed plugin; use {_FALLBACK_FLAG} for llmbudget.",
                yellow=True,
            )
        report.terminal(terminalreporter, summary, self.verdicts, self.new_tests, self.gone_tests)
        for note in self.notes:
            terminalreporter.write_line(f"llmbudget: {note}", yellow=True)
        if self.verdicts:
            # pytest's last line ("3 passed, 1 LLM budget failed in 0.98s") counts the stats' keys: the verdict joins it
            terminalreporter.stats.setdefault("LLM budget failed", []).extend(_Verdict(v) for v in self.verdicts)


def _load_baseline(path: str) -> dict[str, Any]:
    try:
        return report.read_json(Path(path))
    except FileNotFoundError:
        raise pytest.UsageError(
            f"--llm-budget-compare: no baseline at {path}; create one with --llm-budget-save {path}"
        ) from None
    except ValueError as exc:
        raise pytest.UsageError(f"--llm-budget-compare: {path} is not a llmbudget baseline: {exc}") from None
    except OSError as exc:  # a folder, a file it may not read
        raise pytest.UsageError(f"--llm-budget-compare: cannot read {path}: {exc}") from None


@pytest.fixture
def llm_spend(request: pytest.FixtureRequest) -> Generator[TestSpend, None, None]:
    """What the current test has spent on LLM calls so far (live)."""
    plugin = request.config.stash.get(_KEY, None)
    if plugin is not None:
        yield plugin.current()
        return
    spend = TestSpend()
    started = next_sequence()

    def add(record: SpendRecord) -> None:  # every engine's (the app may configure one), calls begun from here on
        if not 0 < record.sequence < started:
            spend.add(record)

    was_installed = llmbudget.installed()
    llmbudget.install()
    watch_every_engine(add)
    try:
        yield spend
    finally:
        unwatch_every_engine(add)
        if not was_installed:
            llmbudget.uninstall()


_GOLDEN = pytest.StashKey[GoldenRouting]()


@pytest.fixture
def llm_golden_routing(request: pytest.FixtureRequest) -> Generator[GoldenRouting, None, None]:
    """Pin this test's routing decisions to its vcrpy cassette.

    Turns interception and the project's routing policy on for the test and
    watches its cassette: pytest-recording's (``@pytest.mark.vcr``) by itself,
    or a plain vcrpy one passed to ``llm_golden_routing.watch(cassette)``. A
    request whose prompt the cassette recorded for another model fails the test
    with one line: the prompt, the old and new tier and model, and the score.
    """
    plugin = request.config.stash.get(_KEY, None)
    engine = plugin.engine if plugin is not None else _project_engine(request.config)
    if engine is None:
        engine = llmbudget.get_engine()
    if engine.routing is None:
        pytest.fail("llm_golden_routing: no routing policy to pin; add a [routing] table with tiers to "
                    "llmbudget.toml (or [tool.llmbudget.routing] to pyproject.toml)", pytrace=False)
    previous = llmbudget.set_engine(engine)
    was_installed = llmbudget.installed()
    llmbudget.install()
    golden = GoldenRouting(engine.routing)
    request.node.stash[_GOLDEN] = golden
    if "vcr" in request.fixturenames:
        cassette = request.getfixturevalue("vcr")
        if hasattr(cassette, "can_play_response_for") and hasattr(cassette, "requests"):
            golden.watch(cassette)
    try:
        yield golden
    finally:
        golden.close()
        llmbudget.set_engine(previous)
        if not was_installed:
            llmbudget.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    rep: pytest.TestReport = yield
    golden = item.stash.get(_GOLDEN, None)
    if call.when == "call" and golden is not None and golden.moved:
        moved = "\n".join(moved.line() for moved in golden.moved)
        if rep.failed and not _refused_by_cassette(call.excinfo):
            # a failure of the test's own stays as it is; the routing moves are said after it
            rep.sections.append(("llmbudget golden routing", moved))
        else:
            rep.outcome = "failed"
            rep.longrepr = moved
    return rep


def _refused_by_cassette(excinfo: pytest.ExceptionInfo[BaseException] | None) -> bool:
    """Whether the test failed because its cassette refused a request (vcrpy's
    ``CannotOverwriteExistingCassetteException``, raised as the cause of the SDK's error): with body matching,
    what a routing move looks like; the move is then the failure."""
    seen: set[int] = set()
    error = excinfo.value if excinfo is not None else None
    while error is not None and id(error) not in seen:
        if type(error).__name__ == "CannotOverwriteExistingCassetteException":
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
