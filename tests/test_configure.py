"""llmbudget.configure / Engine: a part of the wrong kind is an error at once, never a call that fails open."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import llmbudget
from llmbudget.config import ConfigError, Policy
from llmbudget.ledger import SQLiteBudgetStore, SQLiteLedger


@pytest.mark.parametrize(("key", "value"), [
    ("budget_store", "redis://127.0.0.1:6379/0"), ("budget_store", Path("budgets.db")), ("ledger", "ledger.db"),
    ("cache", ".llmbudget/cache"), ("routing", {"small": "gpt-4.1-nano"}), ("pricing", {"gpt-4o": {}}),
])
def test_a_path_or_url_where_an_object_goes_is_a_type_error_at_once(key: str, value: object) -> None:
    # configure(budget_store="redis://...") was accepted, then every call went ahead unbudgeted ("'str' object has
    # no attribute 'reserve'"), spending $3.75 against a $0.01 budget
    previous = llmbudget.get_engine()
    with pytest.raises(TypeError, match=f"Engine\\({key}=...\\) must be"):
        llmbudget.configure(**{key: value})  # type: ignore[arg-type]
    assert llmbudget.get_engine() is previous  # nothing made current
    if isinstance(value, (str, Path)):
        with pytest.raises(TypeError, match="what a policy file takes; in Python, build the object"):
            llmbudget.Engine(**{key: value})  # type: ignore[arg-type]


def test_a_part_is_judged_by_what_the_engine_calls_and_must_be_an_object() -> None:
    class WriteOnlyLedger:  # records go elsewhere: the engine only adds
        def add(self, record: object) -> None: ...

    class StoreWithoutSpent:
        def reserve(self, *args: object, **kwargs: object) -> None: ...

        def settle(self, *args: object) -> None: ...

    llmbudget.Engine(ledger=WriteOnlyLedger(), budget_store=StoreWithoutSpent())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a Ledger"):
        llmbudget.Engine(ledger=SQLiteLedger)  # type: ignore[arg-type]  # the class, not a ledger


def test_configure_says_its_keywords_to_help_and_pickles() -> None:
    import inspect
    import pickle

    assert inspect.signature(llmbudget.configure).parameters.keys() == inspect.signature(llmbudget.Engine).parameters.keys()
    assert "budget_store" in str(inspect.signature(llmbudget.configure))
    assert pickle.loads(pickle.dumps(llmbudget.configure)) is llmbudget.configure


def test_the_objects_themselves_are_taken(tmp_path: Path) -> None:
    previous = llmbudget.get_engine()
    try:
        engine = llmbudget.configure(ledger=SQLiteLedger(tmp_path / "ledger.db"),
                                     budget_store=SQLiteBudgetStore(tmp_path / "budgets.db"),
                                     cache=llmbudget.Cache(None))
        assert llmbudget.get_engine() is engine and isinstance(engine.budget_store, SQLiteBudgetStore)
    finally:
        llmbudget.set_engine(previous)


def test_a_redis_url_without_redis_py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cache("redis://...") and RedisBudgetStore(url) raised a bare "No module named 'redis'", and a policy's
    # Redis cache path blamed "cache.reranker = true", a key the file did not hold
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis: ImportError
    from llmbudget.ledger.redis import RedisBudgetStore

    with pytest.raises(ImportError, match=r"needs redis-py: pip install 'llmbudget\[redis\]'") as raised:
        RedisBudgetStore("redis://:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(ImportError, match=r"pip install 'llmbudget\[redis\]'"):
        llmbudget.Cache("redis://127.0.0.1:6379/0")
    for policy in ('[cache]\npath = "redis://127.0.0.1:6379/0"\n', 'budget_store = "redis://127.0.0.1:6379/0"\n'):
        (tmp_path / "llmbudget.toml").write_text(policy)
        with pytest.raises(ConfigError) as error:
            Policy.from_file(tmp_path / "llmbudget.toml")
        assert "reranker" not in str(error.value) and "pip install 'llmbudget[redis]'" in str(error.value)
        assert ("cache.path" if "[cache]" in policy else "budget_store") in str(error.value)


def test_a_second_configure_says_what_it_drops(tmp_path: Path) -> None:
    """configure(budgets=...) then configure(cache=...), as two README sections read, silently dropped the budgets
    and the ledger: calls went ahead unbudgeted and unrecorded."""
    import warnings

    previous = llmbudget.get_engine()
    try:
        llmbudget.configure(budgets=[llmbudget.Budget("0.000001", per="tenant", period="day")],
                            ledger=SQLiteLedger(tmp_path / "ledger.db"))
        with pytest.warns(UserWarning, match=r"its budgets, ledger no longer apply .*pass every option in one call"):
            engine = llmbudget.configure(cache=llmbudget.Cache(None))
        assert not engine.budgets  # replaced, as documented: the warning says so
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            llmbudget.configure(cache=llmbudget.Cache(None), default_tenant="app")  # nothing dropped
            llmbudget.set_engine(llmbudget.Engine(budgets=[llmbudget.Budget("1", per="global")]))
            llmbudget.configure(default_tenant="app")  # the engine it replaces is not the last configure()'s
    finally:
        llmbudget.set_engine(previous)
