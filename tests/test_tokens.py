"""llmbudget.tokens: tiktoken counts by model family, the cookbook overhead, the offline fallback."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import tiktoken
import tiktoken.model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmbudget
from llmbudget import tokens

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

O200K_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "chatgpt-4o-latest", "gpt-4.1", "gpt-4.1-nano",
                "gpt-5", "gpt-5-mini", "o1", "o3-mini", "o4-mini"]
CL100K_MODELS = ["gpt-4", "gpt-4-0613", "gpt-4-turbo", "gpt-4-32k", "gpt-3.5-turbo", "gpt-3.5-turbo-instruct",
                 "gpt-35-turbo", "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]
#: Names tiktoken maps by prefix or exactly that the family check must agree with too.
OTHER_MODELS = ["davinci-002", "babbage-002", "ft:gpt-3.5-turbo-0613:acme::abc123", "ft:gpt-4-0613:acme::abc123",
                "ft:gpt-4o-mini-2024-07-18:acme::abc123"]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)


@pytest.mark.parametrize("model", O200K_MODELS + CL100K_MODELS + OTHER_MODELS)
def test_encoding_name_matches_tiktoken(model: str) -> None:
    assert tokens.encoding_name(model) == tiktoken.model.encoding_name_for_model(model)


def test_encoding_families() -> None:
    assert {tokens.encoding_name(m) for m in O200K_MODELS} == {"o200k_base"}
    assert {tokens.encoding_name(m) for m in CL100K_MODELS} == {"cl100k_base"}
    assert tokens.encoding_name(None) == "o200k_base"
    assert tokens.encoding_name("some-local-gemma") == "o200k_base"


@SETTINGS
@given(text=TEXT, model=st.sampled_from(["gpt-4o-mini", "o3", "gpt-4", "gpt-3.5-turbo", None]))
def test_count_text_equals_tiktoken(text: str, model: str | None) -> None:
    encoding = tiktoken.get_encoding(tokens.encoding_name(model))
    assert tokens.count_text(text, model) == len(encoding.encode_ordinary(text))


def test_count_text_differs_between_the_families() -> None:
    text = "Tokenizers disagree about ünïcödé, emoji 🎉🎉 and    whitespace runs." * 4
    o200k = tokens.count_text(text, "gpt-4o")
    cl100k = tokens.count_text(text, "gpt-4")
    assert o200k == len(tiktoken.get_encoding("o200k_base").encode_ordinary(text))
    assert cl100k == len(tiktoken.get_encoding("cl100k_base").encode_ordinary(text))
    assert o200k != cl100k


def test_special_token_text_is_counted_as_ordinary_text() -> None:
    text = "<|endoftext|> and <|im_start|>"
    assert tokens.count_text(text, "gpt-4o") == len(tiktoken.get_encoding("o200k_base").encode_ordinary(text))


@SETTINGS
@given(texts=st.lists(TEXT, max_size=6), messages=st.integers(0, 20),
       model=st.sampled_from(["gpt-4o-mini", "gpt-4"]))
def test_estimate_input_tokens_adds_the_cookbook_overhead(texts: list[str], messages: int, model: str) -> None:
    encoding = tiktoken.get_encoding(tokens.encoding_name(model))
    content = sum(len(encoding.encode_ordinary(t)) for t in texts)
    overhead = 3 * messages + 3 if messages else 0
    assert tokens.estimate_input_tokens(texts, model=model, messages=messages) == content + overhead
    assert tokens.TOKENS_PER_MESSAGE == 3
    assert tokens.REPLY_PRIMING_TOKENS == 3


def _cookbook(messages: list[dict[str, str]], model: str) -> int:
    """``num_tokens_from_messages`` from the OpenAI cookbook (gpt-4o / gpt-4 family)."""
    encoding = tiktoken.get_encoding(tokens.encoding_name(model))
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode_ordinary(value))
            if key == "name":
                total += 1
    return total + 3


def _chat_estimate(messages: list[dict[str, Any]], model: str) -> int:
    engine = llmbudget.Engine()
    body = json.dumps({"model": model, "messages": messages}).encode()
    attempt = engine.begin(url="http://127.0.0.1:9/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=body)
    assert attempt is not None
    return attempt.estimate_input_tokens()


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4"])
def test_chat_request_estimate_is_the_cookbook_count(model: str) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant."},
        {"role": "user", "content": "New synergies will help drive top-line growth."},
        {"role": "assistant", "content": "Things working well together will increase revenue."},
        {"role": "user", "content": "Let's talk later when we're less busy about how to do better."},
    ]
    assert _chat_estimate(messages, model) == _cookbook(messages, model)


def test_chat_request_estimate_counts_contents_and_overhead() -> None:
    one = [{"role": "user", "content": "hello world"}]
    two = one + [{"role": "user", "content": "hello world"}]
    # One more message of the same content adds its text and exactly the per-message overhead.
    content = tokens.count_text("hello world", "gpt-4o-mini")
    assert _chat_estimate(two, "gpt-4o-mini") - _chat_estimate(one, "gpt-4o-mini") >= content + 3


# -- offline ---------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """tiktoken cannot load any encoding (no files, no network)."""

    def unavailable(name: str) -> Any:
        raise OSError(f"cannot download {name}: network is unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", unavailable)
    monkeypatch.setattr(tokens, "_warned", False)
    monkeypatch.setattr(tokens, "_unavailable", set())
    tokens._encoding.cache_clear()
    try:
        yield
    finally:
        tokens._encoding.cache_clear()


@pytest.mark.usefixtures("offline")
@SETTINGS
@given(text=TEXT, model=st.sampled_from(["gpt-4o-mini", "gpt-4", None]))
def test_offline_counts_fall_back_to_four_chars_per_token(text: str, model: str | None) -> None:
    # four ASCII characters a token, three UTF-8 bytes of other scripts a token
    ascii_chars = sum(c.isascii() for c in text)
    other = len(text.encode("utf-8", "surrogatepass")) - ascii_chars
    assert tokens.count_text(text, model) == math.ceil(ascii_chars / 4) + math.ceil(other / 3)


@pytest.mark.usefixtures("offline")
def test_offline_a_chinese_prompt_is_not_counted_at_a_quarter_of_its_tokens() -> None:
    # 4 characters a token read 386 Chinese characters as 97 tokens (o200k: 257; Claude's tokenizer about one a character)
    text = "请用三句话解释一下机器学习和深度学习之间的区别。" * 16 + "谢谢"
    assert len(text) == 386 and tokens.count_text(text, "gpt-4o") == 386
    assert tokens.count_text("Привет, мир", "gpt-4o") == math.ceil(2 / 4) + math.ceil(18 / 3)  # ", " and 9 letters


@pytest.mark.usefixtures("offline")
def test_offline_warns_exactly_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmbudget.tokens"):
        for i in range(50):
            assert tokens.count_text("abcdefghij" * i, "gpt-4o-mini") == math.ceil(10 * i / 4)
            assert tokens.count_text("abcde", "gpt-4") == 2
            assert tokens.estimate_input_tokens(["abcd", "abcdefgh"], model="o3", messages=2) == 1 + 2 + 9
            assert tokens.estimate_output_tokens("abc", model=None) == 1
        assert _chat_estimate([{"role": "user", "content": "abcdefgh"}], "gpt-4o-mini") >= 2
    warnings = [r for r in caplog.records if r.name == "llmbudget.tokens" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "TIKTOKEN_CACHE_DIR" in warnings[0].getMessage()


def test_encodings_load_again_after_the_offline_test() -> None:
    """The offline fixture leaves no trace: real counts are back."""
    text = "the quick brown fox"
    assert tokens.count_text(text, "gpt-4o") == len(tiktoken.get_encoding("o200k_base").encode_ordinary(text))


# -- remembered input counts -----------------------------------------------------------------------


@SETTINGS
@given(texts=st.lists(st.sampled_from(["user", "system", "Be brief.", "", "héllo  wörld 🎉"]) | TEXT, max_size=6),
       model=st.sampled_from(["gpt-4o-mini", "gpt-4", None]))
def test_remembered_input_counts_equal_fresh_ones(texts: list[str], model: str | None) -> None:
    encoding = tiktoken.get_encoding(tokens.encoding_name(model))
    expected = sum(len(encoding.encode_ordinary(text)) for text in texts)
    assert tokens.estimate_input_tokens(texts, model=model) == expected
    assert tokens.estimate_input_tokens(texts, model=model) == expected  # now from memory


def test_remembered_counts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_REMEMBER_CHARS", 160)
    monkeypatch.setattr(tokens, "_REMEMBER_TEXT_CHARS", 30)
    monkeypatch.setattr(tokens, "_REMEMBER_ENTRY_CHARS", 20)
    monkeypatch.setattr(tokens, "_remembered", type(tokens._remembered)())
    monkeypatch.setattr(tokens, "_remembered_chars", 0)
    texts = [f"message number {i} of many" for i in range(50)]
    for text in texts:
        assert tokens.estimate_input_tokens([text], model="gpt-4o") == tokens.count_text(text, "gpt-4o")
    # each entry is charged its text and 20 for itself: at most 160 / (22 + 20) entries
    assert tokens._remembered_chars == sum(len(text) + 20 for _, text in tokens._remembered) <= 160
    assert len(tokens._remembered) == 3
    assert [text for _, text in tokens._remembered] == texts[-len(tokens._remembered):]  # oldest out first
    long = "x" * 31
    assert tokens.estimate_input_tokens([long], model="gpt-4o") == tokens.count_text(long, "gpt-4o")
    assert all(text != long for _, text in tokens._remembered)


@pytest.mark.usefixtures("offline")
def test_offline_estimates_are_not_remembered() -> None:
    assert tokens.estimate_input_tokens(["an offline text to remember"], model="gpt-4o") == 7
    assert all(text != "an offline text to remember" for _, text in tokens._remembered)


def test_counts_are_exact_again_once_online() -> None:
    """What was estimated offline (the test above) is counted with tiktoken now."""
    text = "an offline text to remember"
    assert tokens.estimate_input_tokens([text], model="gpt-4o") == tokens.count_text(text, "gpt-4o") != 7


def test_an_unavailable_encoding_is_reported_not_silent(tmp_path: Any) -> None:
    """Offline with no cached encoding files: estimates fall back to characters, and reports say so."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    code = ("from llmbudget import tokens\n"
            "assert tokens.unavailable_encodings() == ()\n"
            "print(tokens.count_text('abcdefgh' * 4, 'gpt-4o'))\n"
            "from pytest_llmbudget.report import fallback_note\n"
            "print(tokens.unavailable_encodings()); print(fallback_note())\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, names, note = done.stdout.strip().splitlines()
    assert count == "8" and names == "('o200k_base',)"  # 32 characters at 4 per token
    assert "o200k_base encoding could not be loaded" in note and "TIKTOKEN_CACHE_DIR" in note
    assert "fall back to 4 characters per token" in done.stderr  # the log warning, once
    from pytest_llmbudget.report import fallback_note

    assert tokens.unavailable_encodings() == () and fallback_note() is None  # here the files are found


def test_the_encodings_load_at_start_up_in_a_thread_not_in_the_first_calls(monkeypatch) -> None:
    """The first load of an encoding takes 0.2-0.5 s of CPU: in a server's first LLM call, on its event loop,
    it stalled every other request. The middleware and llmbudget's clients start it in a thread, once."""
    import sys

    import llmbudget
    from llmbudget import tokens
    from llmbudget.middleware import LLMBudgetMiddleware

    thread = tokens.warm_up()
    assert tokens.warm_up() is thread and thread.daemon  # once per process
    # a fork while it loads waits for the load (tiktoken holds its registry lock meanwhile: a child forked then
    # waited for it forever, as gunicorn --preload's workers may)
    import threading
    import time

    slow = threading.Thread(target=time.sleep, args=(0.3,), daemon=True)
    slow.start()
    monkeypatch.setattr(tokens, "_warming", slow)
    monkeypatch.setattr(tokens, "_fork_waited", False)
    tokens._finish_warming()
    assert not slow.is_alive()
    monkeypatch.setattr(tokens, "_warming", thread)
    registry = sys.modules["tiktoken.registry"]
    free = registry._lock
    tokens._fresh_registry_lock()  # a lock nobody held: left as it is
    assert registry._lock is free
    held = threading.RLock()
    taker = threading.Thread(target=held.acquire)  # held by a thread that is not there (as in a forked child)
    taker.start()
    taker.join()
    monkeypatch.setattr(registry, "_lock", held)
    monkeypatch.setattr(registry, "ENCODING_CONSTRUCTORS", registry.ENCODING_CONSTRUCTORS)
    tokens._fresh_registry_lock()  # the lock anew, and the half-made table of encodings built again
    assert registry._lock is not held and registry.ENCODING_CONSTRUCTORS is None
    monkeypatch.setattr(registry, "_lock", free)
    thread.join(60)
    assert tokens._encoding("o200k_base") is not None and tokens._encoding("cl100k_base") is not None
    started: list[str] = []
    monkeypatch.setattr(tokens, "warm_up", lambda: started.append("middleware"))
    monkeypatch.setattr(sys.modules["llmbudget.interception.install"], "warm_up", lambda: started.append("client"))
    LLMBudgetMiddleware(lambda scope, receive, send: None, install=False)
    llmbudget.http_client().close()
    assert started == ["middleware", "client"]
