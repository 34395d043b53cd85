"""Prompts that share a template but carry other data are never semantic hits; rewordings still are."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from llmbudget.cache import Cache
from llmbudget.cache.bench import eval_replay
from llmbudget.cache.evaluate import eval_pairs
from llmbudget.cache.store import CacheStore
from llmbudget.cache.templates import (
    DEFAULT_MAX_SEMANTIC_CHARS,
    SEMANTIC_CHARS_CEILING,
    TemplateGuard,
    same_text,
)
from llmbudget.config import ConfigError, engine_from_config
from llmbudget.providers import adapter_for_endpoint

ROOT = Path(__file__).resolve().parents[2]

PASSAGE = (
    "Read the passage and answer the question that follows.\n"
    "The lighthouse at Port Ellis was built in 1868 by the harbour board after two ships ran aground on the northern "
    "reef. Its first keeper, Thomas Reed, kept the lamp burning for thirty-one years and recorded every storm in a "
    "logbook that is now kept in the town museum. The light was automated in 1962.\n"
    "Question: {q}"
)
LETTER = (
    "Write a short, polite reminder email to a client. The invoice for the kitchen renovation, amount {x}, is now "
    "overdue. Ask them to pay by the end of the week and thank them for their business."
)
REVIEW = (
    "Review this Python function for bugs and suggest a fix:\n```python\ndef total_price(items):\n    total = 0\n"
    "    for item in items:\n        if item.price {c} 0:\n            total += item.price * item.quantity\n"
    "    return total\n```"
)
NEAR_MISSES = {
    "passage, another question": (PASSAGE.format(q="Why was the lighthouse built?"),
                                  PASSAGE.format(q="Who was the first keeper of the lighthouse?")),
    "form letter, another amount": (LETTER.format(x="two hundred dollars"), LETTER.format(x="two thousand dollars")),
    "code review, another comparison": (REVIEW.format(c=">"), REVIEW.format(c=">=")),
}
REWORDING = ("How do I learn Python quickly?", "How can I learn Python fast?")


def _store(**options: Any) -> CacheStore:
    return CacheStore(None, max_entries=None, **options)


def _hit(store: CacheStore, stored: str, asked: str) -> bool:
    store.put(partition="p", exact_key="k", text=stored, response="{}", tenant="t", model="m")
    return store.search("p", asked) is not None


def _never_a_hit(stored: str, asked: str) -> None:
    """The guard refuses the pair both ways, and the store (no length limit) never serves one for the other."""
    guard = TemplateGuard()
    assert guard.conflict(asked, stored) and guard.conflict(stored, asked)
    store = _store(max_semantic_chars=None)
    try:
        assert not _hit(store, stored, asked)
    finally:
        store.close()


class _SureScorer:
    """Takes every candidate for the same question, as an embedding cosine does a long shared template."""

    def score_many(self, query_text: str, query_vec: Any, cand_texts: list[str], cand_vecs: Any = None) -> Any:
        return [1.0] * len(cand_texts)


class _NeverScorer:
    """Takes no candidate for the same question."""

    def score_many(self, query_text: str, query_vec: Any, cand_texts: list[str], cand_vecs: Any = None) -> Any:
        return [0.0] * len(cand_texts)


@pytest.mark.parametrize("stored, asked", NEAR_MISSES.values(), ids=list(NEAR_MISSES))
def test_a_templated_near_miss_is_not_a_semantic_hit(stored: str, asked: str) -> None:
    unguarded = _store(template_guard=None, max_semantic_chars=None, scorer=_SureScorer(), threshold=0.5)
    sure = _store(max_semantic_chars=None, scorer=_SureScorer(), threshold=0.5)
    guarded = _store()
    try:
        assert _hit(unguarded, stored, asked), "a scorer that takes every candidate serves it without the guard"
        assert not _hit(sure, stored, asked)  # the guard alone stops it, whatever the scorer says
        assert not _hit(guarded, stored, asked)
    finally:
        for store in (unguarded, sure, guarded):
            store.close()


def _call(text: str) -> Any:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return adapter_for_endpoint("chat.completions").parse(body, "http://127.0.0.1/v1")


ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "B."}}],
    "usage": {"prompt_tokens": 90, "completion_tokens": 2, "total_tokens": 92},
}


def test_the_cache_serves_a_rewording_but_not_another_templated_question(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    try:
        for text in (REWORDING[0], *(stored for stored, _ in NEAR_MISSES.values())):
            call = _call(text)
            assert cache.save(cache.lookup(call, tenant="t"), call, tenant="t", model="gpt-4o-mini", body=ANSWER)
        reworded = cache.lookup(_call(REWORDING[1]), tenant="t")
        assert reworded.hit and reworded.tier == "semantic"
        for _, asked in NEAR_MISSES.values():
            assert not cache.lookup(_call(asked), tenant="t").hit
    finally:
        cache.store.close()


def test_filler_words_punctuation_and_case_keep_a_template_hit() -> None:
    guard = TemplateGuard()
    stored, _ = NEAR_MISSES["passage, another question"]
    assert not guard.conflict(stored.replace("Read the passage", "Please read the passage").upper(), stored)
    assert not guard.conflict(*REWORDING)  # one line, under 20 shared tokens: the verifier alone decides


def test_swapped_or_changed_data_is_a_conflict() -> None:
    guard = TemplateGuard()
    template = ("For which of these two scenarios does the main character do something clearly morally wrong? "
                "Scenario 1 | {one} Scenario 2 | {two}\nA. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong")
    one, two = "I kept the extra change.", "I paid for a stranger's coffee."
    assert guard.conflict(template.format(one=one, two=two), template.format(one=two, two=one))
    assert guard.conflict(template.format(one=one, two=two), template.format(one=one, two="I lied to my boss."))
    assert guard.conflict(LETTER.format(x="$1,250"), LETTER.format(x="$1,520"))
    assert not guard.conflict(LETTER.format(x="$1,250"), LETTER.format(x="$1250"))


# The same words with another symbol or case, one word of a closed class swapped, or a function word
# changed in a long template's slot: each is another question, whatever the verifier scores it.
SAME_WORDS_OTHER_SYMBOL = [
    ("What is 12 - 5?", "What is 12 / 5?"),
    ("What is -7 squared?", "What is 7 squared?"),
    ("What is log(100)/2?", "What is log(100/2)?"),
    ("Is CO dangerous indoors?", "Is Co dangerous indoors?"),
    ("What does the regex \\s+ match?", "What does the regex \\S+ match?"),
    ("What does .*? do in a regex?", "What does .* do in a regex?"),
    ("What is 2**3 in Python?", "What is 2*3 in Python?"),
    ("Is there a bug here?\n```\ndef tail(xs):\n    return xs[1]\n```",
     "Is there a bug here?\n```\ndef tail(xs):\n    return xs[1:]\n```"),
    ("Review this code and point out any bugs:\nconst user = response.data?.user;\nconsole.log(user.name);",
     "Review this code and point out any bugs:\nconst user = response.data?.user;\nconsole.log(user.Name);"),
    # sentence punctuation is soft only where a space or the end follows its run: "?." is an operator
    ("Explain briefly.\nconst user = response.data.user;\nconsole.log(user.name);",
     "Explain briefly.\nconst user = response.data?.user;\nconsole.log(user.name);"),
    # inside backticks or a fence nothing is prose: no soft punctuation or quotes, no case a user may drop
    ("What does `user?.name` do in JavaScript?", "What does `user.name` do in JavaScript?"),
    ("What does `a, b = b, a` do in Python?", "What does `a. b = b. a` do in Python?"),
    ("Is there a bug in the following snippet?\n```\nfor (int i = 0; i < n; i++) {\n    sum += a[i];\n}\n```",
     "Is there a bug in the following snippet?\n```\nfor (int i = 0; i < n; i++) {\n    sum += A[i];\n}\n```"),
    ("Is there a bug in the following snippet?\n```\nSELECT * FROM user\nWHERE status = active;\n```",
     "Is there a bug in the following snippet?\n```\nSELECT * FROM user\nWHERE status = 'active';\n```"),
    # quoted text is data: its punctuation counts
    ('Is "Let\'s eat, grandma!" punctuated correctly?', 'Is "Let\'s eat grandma!" punctuated correctly?'),
    # a capital that changes the word, past a sentence's start
    ("How do I polish silver?", "How do I Polish silver?"),
    ("Is the US sanctioning Iran?", "Is the us sanctioning Iran?"),
    ("What is 2 ms in seconds?", "What is 2 Ms in seconds?"),
    ("What does Bill mean in Congress?", "What does bill mean in Congress?"),
]
ONE_WORD_OF_A_CLASS = [
    ("Is it legal to record a phone call in California?", "Is it illegal to record a phone call in California?"),
    ("Translate into French: The meeting is on Monday.", "Translate into French: The meeting is on Tuesday."),
    ("Translate this into Spanish: Where is the nearest pharmacy?",
     "Translate this from Spanish: Where is the nearest pharmacy?"),
    ("How long does it take to drive 100 km at 60 mph?", "How long does it take to drive 100 miles at 60 mph?"),
    ("Is 120 mg of caffeine a lot?", "Is 120 g of caffeine a lot?"),
    ("Is Python faster than Java?", "Is Python slower than Java?"),
    ("Why does WHERE a = 1 OR b = 2 return too many rows?", "Why does WHERE a = 1 AND b = 2 return too many rows?"),
    ("What is the max speed of a cheetah?", "What is the min speed of a cheetah?"),
    ("Why does print('name') print the word name?", "Why does print(name) print the word name?"),
    ("Argentina beat France in the final", "France beat Argentina in the final"),
    ("Convert 3 kilometres to miles.", "Convert 3 miles to kilometres. Please."),  # courtesy hides nothing
    ("How much is 1,000 US dollars in Swiss francs?", "Hey, how much is 1,000 Swiss francs in US dollars? Thank you."),
    ("Is the euro used by most EU countries?", "Is the euro used by all EU countries?"),
    ("Sort the orders by date in ascending order", "Sort the orders by date in descending order"),
    ("Convert 100 USD to EUR at today's rate", "Convert 100 EUR to USD at today's rate"),
    ("SQL to count orders per customer", "SQL to count customers per order"),  # a swap that moves a plural
    ("SELECT name FROM users WHERE id = 5; what's wrong?", "SELECT name FROM user WHERE id = 5; what's wrong?"),
]
LOG = ("Based on the log excerpt in my previous message, {w} did the nightly backup job fail, and what should I "
       "change in the cron configuration so that it does not happen again next week?")
FUNCTION_WORD_SLOTS = [(LOG.format(w="why"), LOG.format(w="where")),
                       (LETTER.replace("Ask them", "Ask him"), LETTER.replace("Ask them", "Ask her")),
                       (LETTER.replace("and thank", "or thank"), LETTER)]


@pytest.mark.parametrize("stored, asked", SAME_WORDS_OTHER_SYMBOL + ONE_WORD_OF_A_CLASS + FUNCTION_WORD_SLOTS)
def test_another_symbol_case_class_word_or_slot_word_is_never_a_hit(stored: str, asked: str) -> None:
    _never_a_hit(stored, asked)


@pytest.mark.parametrize("stored, asked", [
    ("How do I learn Python?", "how do i learn python"),
    ("HOW DO I LEARN PYTHON FAST", "How do I learn Python fast?"),
    ("What's the best way to learn Python?", "Whats the best way to learn Python"),
    ("Is \"Python\" hard to learn?", "Is \"python\" hard to learn?"),
    ("How far is 100 km in miles?", "How far is 100 kilometers in miles?"),
    ("What is the difference between a cat and a dog?", "What is the difference between a dog and a cat?"),
    ("How do I learn JavaScript?", "how do i learn javascript?"),
    ("What is India's population?", "what is india's population?"),
    ("How do I learn Python ?", "How do I learn Python..."),
    ('What does "carpe diem" mean?', "What does carpe diem mean??"),
    ("Coca-Cola vs Pepsi?", "coca-cola vs pepsi?"),
    ("How do I learn Python fast?", "How do I learn fast Python?"),
    ("how tall is everest", "everest is how tall"),
    ("Why is forgiving others difficult for some people?", "Why is forgiving others difficult for many people?"),
    ("Please, how do I learn Python?", "How do I learn Python? Thanks"),
    ("Polish silver with what?", "polish silver with what?"),  # a sentence's first word
    ("What is the best book on learning Python?", "What is the best books on learning Python?"),  # prose plural
    ("Is it fast?!", "Is it fast"),
    ("What is the capital of France ? Tell me please", "What is the capital of France? Tell me please"),  # prose
    ("What do the cats eat at night; is it healthy?", "What do the cat eat at night; is it healthy?"),  # not code
    ("What's the  difference between Bob's car and mine?", "What's the difference between Bob's car and mine?"),
    (LETTER.format(x="$1,250").replace("Ask them", "Could you ask them"),
     LETTER.format(x="$1,250").replace("Ask them", "Can you please ask them")),
])
def test_case_sentence_punctuation_spelling_and_politeness_are_no_conflict(stored: str, asked: str) -> None:
    assert not TemplateGuard().conflict(asked, stored)


@pytest.mark.parametrize(("stored", "asked"), [
    ("Are most birds able to fly?", "Can all birds fly?"),
    ("Write a Python function that returns True if all of the numbers in a list are negative.",
     "Python: a function returning True when exactly two of the list's numbers are negative."),
    ("For parsing JSON, is Rust faster than C++?", "Is C++ faster than Rust for parsing JSON"),
    ('Is the following customer review positive, negative or neutral? "The delivery was fast and the blender works '
     'great."', 'Sentiment (positive / negative / neutral) of this review: "The delivery was slow but the blender '
     'works great."'),
    ("In git, how do I undo the last commit but keep the changes?",
     "In git, how do I undo the last commit and discard the changes?"),
    ("Write a SQL query to count orders per customer where the status is 'shipped'.",
     "Write a SQL query to count orders per customer where the status is 'delivered'."),
    # this release's rules, for the near misses the verifier trained on LLM phrasings served
    ('In Excel, which formula sums the values in column B when column A is "Paid"?',
     'What Excel formula averages column B where column A equals "Paid"?'),
    ("Write a Python function that returns True if any of the numbers in a list are negative.",
     "Python: a function returning True when exactly two of the list's numbers are negative."),
    ("What's the cheapest flight Berlin to Rome on 12 May?", "Cheapest Rome to Berlin flight on 12 May, please."),
    ("SQL to list customers that have placed any order in the past 30 days?",
     "Write a SQL query to find customers who have not placed an order in the last 30 days."),
    # another bound on the same number, whatever else is reworded
    ("Python: return True if exactly two of the numbers are negative.",
     "Write a function that returns True when at least two of the list's numbers are negative."),
    ("SQL: which employees earn more than 50,000 a year?", "Write a query listing employees earning at most 50000 per year"),
    ("Is a user who is greater than or equal to 18 allowed?", "Is a user who is less than 18 allowed?"),
    ("Does this need Python 3.8 or later?", "Does it work on Python 3.8 or below?"),
    ("How many people own more than one car?", "How many people own at least one car?"),  # off by one matters at 1
    ("Can I build up to 3 apps on the free tier?", "Can I build over 3 apps on the free tier?"),
    ("Discounts for people 18 years or older", "Discounts for people under 18 years"),
    ("Which scores are higher than 90?", "Which scores are lower than 90?"),
    ("Orders whose total exceeds 500 dollars", "Orders whose total is at most 500 dollars"),
    ("List the products priced over 100 dollars", "Show me products that cost up to $100"),
    ("How many people own at least one car?", "What number of people own exactly one car?"),
    ("Find users with no more than 3 orders", "Find users who placed fewer than 3 orders"),
    ("Show employees older than 40", "Show employees younger than 40"),
    ("Laptops priced over 1k dollars", "Laptops that cost under $1000"),  # "1k" is 1000
])
def test_a_rewording_with_other_quantifiers_a_reversed_comparison_an_opposite_or_another_quotation_is_never_a_hit(
        stored: str, asked: str) -> None:
    """Near misses that are reworded as well, so that no template is shared (from ci/build_fresh_near_misses.py:
    each was served, by the verifier or by the reranker, before these rules)."""
    _never_a_hit(stored, asked)


@pytest.mark.parametrize(("stored", "asked"), [
    ("Who is the most overrated Indian cricketer?", "Who do you think is the most overrated Indian cricketer of all time?"),
    ("What are some good tips to lose weight?", "What are the best tips to lose weight?"),
    ("Is Rust faster than C++?", "Is Rust much faster than C++ these days?"),
    ('Is this review positive or negative? "The delivery was fast and the blender works great."',
     'Positive or negative: "The delivery was fast and the blender works great."'),
    ("Why do all dogs bark?", "Why does every dog bark?"),
    ("In git, how do I undo the last commit but keep the changes?", "git: undo my last commit, keeping the changes"),
    ("Is it 's' or 'z' in 'organise'?", "In 'organise', is it 's' or 'z'?"),
    ("Why is the sky blue in summer?", "Why is the sky blue during summer?"),  # "in" is an inch only after a number
    ("Which Excel formula sums column B if A is Paid?", "In Excel, how do I sum column B where column A equals Paid?"),
    ("Find exactly 2 numbers that add to 10", "Find exactly two numbers that add up to 10"),
    ("How do I fly from Berlin to Rome cheaply?", "What's the cheapest way to get to Rome from Berlin?"),
    ("Why don't cats like water?", "Why do cats not like water?"),
    ("Should healthcare be free for everyone?", "Should healthcare be free for everyone? Why or why not?"),
    ("How do I start a business with no investment?", "How can I start a business without investment?"),
    ("Why cant I sleep at night?", "Why can't I sleep at night?"),
    ("What is a t-test?", "What is the student's t-test used for?"),
    ("How many calories does a 30 min run burn?", "On average, how many calories does a 30 minute run burn?"),
    ("Pick exactly 12 numbers from the list", "Pick exactly twelve numbers from the list"),
    ("How do I convert Celsius to Fahrenheit and Fahrenheit to Celsius?",
     "How do I convert Celsius to Fahrenheit and Fahrenheit to Celsius?"),
    # the same bound in other words, and words that only look like one
    ("Find users with more than 5 orders", "Find users who placed over 5 orders"),
    ("Users with 5 or more orders", "Users with at least 5 orders"),
    ("Which phone is best under Rs 15000?", "Best phone under 15,000 rupees?"),
    ("Find exactly 2 numbers that add to 10", "Find two numbers that add up to exactly 10"),
    ("Find 2 numbers that add to 10", "Find 2 numbers that add up to 10"),
    ("He hands over 66 notes to the teacher. How many are left?", "He gives 66 notes to the teacher. How many are left?"),
    ("Can I run up to 3 containers on the free plan?", "Can I run at most three containers on the free plan?"),
    ("users under 18", "users younger than 18"),
    # strict or not is one direction, and "not" turns a bound round (from a review)
    ("Tickets for people over 18", "Tickets for people aged 18 and over"),
    ("Best laptop under $500?", "Best laptop for $500 or less?"),
    ("Activities for kids under 12", "Activities for kids 12 and under"),
    ("Recipes with more than 4 cups of flour", "Recipes with 4 or more cups of flour"),
    ("The name should not be more than 64 characters", "The name should be no more than 64 characters"),
    ("Can the price be not over $20,000?", "Can the price be no more than $20,000?"),
    ("Users must not be under 18", "Users must be no less than 18"),
    ("How do I scale Postgres up to 10,000 connections?", "How do I scale Postgres to over 10,000 connections?"),
    # a negation that bears on the verb, not on the bound (from a second review)
    ("I can't upload more than 10 photos", "Why can't I upload more than 10 photos?"),
    ("Why don't kids under 12 need a passport?", "Why do kids under 12 not need a passport?"),
    ("No kids under 5 are allowed in the pool", "Kids under 5 are not allowed in the pool"),
    ("The file must not be over 10 MB", "Files over 10 MB are not accepted"),
    ("Houses with 3 bedrooms or more", "Houses with at least 3 bedrooms"),
    ("Which scores are higher than 90?", "Which scores are above 90?"),
    ("Laptops priced over 1k dollars", "Laptops that cost more than $1,000"),
    ("Jobs paying over 2.5k a month", "Jobs paying more than 2500 a month"),
])
def test_the_same_quantifier_comparison_or_quotation_reworded_is_no_conflict(stored: str, asked: str) -> None:
    assert not TemplateGuard().conflict(asked, stored) and not TemplateGuard().conflict(stored, asked)


def test_the_same_content_words_are_a_hit_whatever_the_score() -> None:
    """A long prompt asked again with a courtesy word: no scorer is needed to see it is the same question."""
    long_text = "Summarise this report for the board: " + "Sales rose in every region this quarter. " * 15
    asked = "Please s" + long_text[1:]
    guard = TemplateGuard()
    assert guard.same_question(asked, long_text) and guard.same_question("What is 2+2?", "what is 2+2")
    assert guard.same_question("Hey, what is 2+2? Thanks!", "What is 2+2?")
    assert guard.same_question("Hi! Please convert 3 km to miles, thank you.", "convert 3 km to miles")
    for a, b in [("What is 12 - 5?", "What is 12 / 5?"),  # the same words, another symbol
                 ("How do I learn Python quickly?", "How can I learn Python fast?"),
                 ("How do you say hello in Japanese?", "How do you say thanks in Japanese?"),
                 ("What are the symptoms of hepatitis A?", "What are the symptoms of hepatitis?"),
                 ("Is it just me?", "Is it me?"), ("Is The Economist reliable?", "Is an economist reliable?"),
                 ("Why does `foo(a)` raise TypeError?", "Why does `foo()` raise TypeError?"),
                 ("What does print(1,000) output in Python?", "What does print(1000) output in Python?"),
                 ("", "   "), ("?", "!"),
                 # courtesy words that are the question's own words (from a second review)
                 ("Spanish for please", "Spanish for thanks"), ("Reply with one word: thanks", "Reply with one word: please"),
                 ("synonym for cheers", "synonym for"), ("Who sang thank you", "Who sang"),
                 ("Hello world program in C", "world program in C"), ("Please Please Me lyrics", "Me lyrics"),
                 ("Hey Jude chords", "Jude chords"), ("Kindly Ones plot", "Ones plot"),
                 ("hello.py fails with ImportError", "hi.py fails with ImportError")]:
        assert not guard.same_question(a, b) and not guard.same_question(b, a), (a, b)
    store = _store(max_semantic_chars=None, scorer=_NeverScorer(), threshold=0.5)
    try:
        assert _hit(store, long_text, asked)
        assert not _hit(store, "How do I learn Python quickly?", "How can I learn Python fast?")
    finally:
        store.close()


def test_the_guard_needs_fewer_shared_tokens_for_multiline_texts() -> None:
    guard = TemplateGuard(min_shared_tokens=20, min_shared_tokens_multiline=8)
    one_line = ("Which vitamin helps blood clot? A. Vitamin A B. Vitamin D C. Vitamin E D. Vitamin K",
                "Which vitamin is made in the skin? A. Vitamin A B. Vitamin D C. Vitamin E D. Vitamin K")
    assert not guard.conflict(*one_line)
    assert guard.conflict(*(text.replace(" A.", "\nA.") for text in one_line))
    with pytest.raises(ValueError, match="min_shared_tokens"):
        TemplateGuard(min_shared_tokens=0)


class _CountingEmbedder:
    """The bundled embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        from llmbudget.cache.embedders import WordLlamaEmbedder

        self.inner = WordLlamaEmbedder()
        self.name, self.dim = self.inner.name, self.inner.dim
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> Any:
        self.texts += texts
        return self.inner.embed(texts)


def test_long_texts_use_the_exact_tier_only_unless_configured() -> None:
    long_text = "Summarise this report for the board: " + "Sales rose in every region this quarter. " * 15
    assert len(long_text) > DEFAULT_MAX_SEMANTIC_CHARS
    asked = "Please s" + long_text[1:]
    embedder = _CountingEmbedder()
    store = _store(embedder=embedder)
    try:
        assert not _hit(store, long_text, asked)
        assert embedder.texts == []  # neither stored with a vector nor embedded to search
        assert store.get_exact("p", "k") is not None
    finally:
        store.close()
    unlimited = _store(max_semantic_chars=None)
    try:
        assert _hit(unlimited, long_text, asked)
    finally:
        unlimited.close()
    with pytest.raises(ValueError, match="max_semantic_chars"):
        _store(max_semantic_chars=0)


def test_no_text_over_the_ceiling_is_embedded_even_without_a_limit() -> None:
    """``max_semantic_chars=None`` embedded a message of any size: 10 MB took half a minute of CPU (and memory
    in proportion), on the worker thread of a lookup that held the GIL throughout."""
    huge = "Summarise this report for the board: " + "Sales rose in every region this quarter. " * 2500
    assert len(huge) > SEMANTIC_CHARS_CEILING
    for limit in (None, 10 * SEMANTIC_CHARS_CEILING):
        embedder = _CountingEmbedder()
        store = _store(embedder=embedder, max_semantic_chars=limit)
        try:
            assert store.query_vector(huge) is None and store.search("p", huge) is None
            store.put(partition="p", exact_key="k", text=huge, response="r", tenant="t", model="m")
            assert embedder.texts == []  # neither embedded to search nor stored with a vector
            assert store.get_exact("p", "k") is not None  # the exact tier still serves it
            assert store.query_vector(huge[:SEMANTIC_CHARS_CEILING]) is not None
        finally:
            store.close()


def test_a_long_text_is_tokenised_without_holding_the_gil_nor_kept_in_the_memo() -> None:
    """``tokenizers``' ``encode`` holds the GIL, about a second per megabyte: an async app's lookup in its
    worker thread stopped the event loop for as long. And the memo of the last 256 texts kept them all."""
    import threading
    import time

    from llmbudget.cache import embedders

    text = "the quick brown fox asks about invoice 1234 and the garden kernel " * 30_000  # 2 MB
    before = embedders._short_ids.cache_info().currsize
    done = threading.Event()
    ids: list[tuple[int, ...]] = []
    worker = threading.Thread(target=lambda: (ids.append(embedders._wordllama_ids(text)), done.set()))
    worker.start()
    worst, last = 0.0, time.perf_counter()
    while not done.is_set():
        time.sleep(0.002)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    worker.join()
    assert worst < 0.5  # encode held it about 2 s
    assert len(ids[0]) > 100_000
    assert ids[0] == tuple(embedders._load_wordllama().tokenizer.encode(text, add_special_tokens=False).ids)
    assert embedders._short_ids.cache_info().currsize == before


def test_the_length_rule_is_read_from_the_policy(tmp_path: Path) -> None:
    def limit(**table: Any) -> int | None:
        engine = engine_from_config({"cache": {"path": str(tmp_path / "cache"), **table}})
        return engine.cache.store.max_semantic_chars

    assert limit() == DEFAULT_MAX_SEMANTIC_CHARS
    assert limit(max_semantic_chars=1200) == 1200
    assert limit(max_semantic_chars=0) is None
    with pytest.raises(ConfigError, match="max_semantic_chars"):
        limit(max_semantic_chars="long")


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_template_pairs", ROOT / "ci" / "build_template_pairs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _mmlu(folder: Path) -> Path:
    """A small MMLU-shaped folder written here: a shared passage, statement stems, shared options and stems."""
    passage = "This question refers to the following information.\n" + PASSAGE.split("\n")[1]
    options = "A. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer:"
    prompts = [
        f"{passage}\nWhy was the lighthouse built?\nA. Wrecks\nB. Trade\nC. War\nD. Tourism\nAnswer:",
        f"{passage}\nWho was its first keeper?\nA. Thomas Reed\nB. The board\nC. A captain\nD. Nobody\nAnswer:",
        f"Statement 1 | Every group of order 4 is cyclic. Statement 2 | Every field is a ring.\n{options}",
        f"Statement 1 | Every subgroup of an abelian group is normal. Statement 2 | Z is a field.\n{options}",
        "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:",
        "Which planet is largest?\nA. Saturn\nB. Neptune\nC. Mercury\nD. Uranus\nAnswer:",
        "Which planet has rings?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:",
        "Which gas do plants take in?\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Neon\nAnswer:",
        "Which gas do plants take in?\nA. Argon\nB. Nitrogen\nC. Hydrogen\nD. Ozone\nAnswer:",
    ]
    folder.mkdir()
    with (folder / "mmlu_sample.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "weak", "strong"])
        writer.writerows([prompt, True, True] for prompt in prompts)
    return folder


def test_the_near_miss_builder_is_deterministic_and_replay_reports_false_hits(tmp_path: Path) -> None:
    builder = _builder()
    mmlu = _mmlu(tmp_path / "mmlu")
    pairs = builder.build(mmlu, seed=3, per_kind=4)
    assert pairs == builder.build(mmlu, seed=3, per_kind=4)
    kinds = {pair["kind"] for pair in pairs}
    assert {"passage", "statements", "same_stem", "same_options", "form_letter", "code_review", "support",
            "scenario", "instruction"} <= kinds
    assert all(pair["duplicate"] is False and pair["a"] != pair["b"] for pair in pairs)
    texts = [text for pair in pairs for text in (pair["a"], pair["b"])]
    assert len(texts) == len(set(texts))
    extra = [{"a": a, "b": b, "duplicate": True, "kind": "rewording"} for a, b in [REWORDING]]
    extra += [{"a": a, "b": b, "duplicate": False, "kind": "handwritten"} for a, b in NEAR_MISSES.values()]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in [*pairs, *extra]), encoding="utf-8")

    before = eval_replay(path, template_guard=None, max_semantic_chars=None)
    assert before["false_hits"] > 0 and before["by_kind"]["handwritten"]["false_hits"] >= 1  # the verifier alone
    after = eval_replay(path)
    assert after["false_hits"] == 0 and after["false_hit_rate"] == 0.0
    assert after["by_kind"]["rewording"] == {"pairs": 1, "false_hits": 0, "false_hit_rate": 0.0,
                                             "correct_hits": 1, "hit_recall": 1.0}
    assert set(after["by_kind"]) == kinds | {"rewording", "handwritten"}
    negatives = len(pairs) + len(NEAR_MISSES)
    assert before["false_hit_rate"] == round(before["false_hits"] / negatives, 4)
    for key in ("stored", "queries", "correct_hits", "wrong_hits", "misses", "same_text_hits",
                "hit_precision", "hit_recall", "lookup_p50_ms", "lookup_p99_ms"):
        assert key in after


def test_pairs_mode_scores_a_refused_pair_zero(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"a": a, "b": b, "duplicate": False} for a, b in NEAR_MISSES.values()]
    rows.append({"a": REWORDING[0], "b": REWORDING[1], "duplicate": True})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert eval_pairs(path)["default"] == {"threshold": pytest.approx(eval_pairs(path)["default"]["threshold"]),
                                           "precision": 1.0, "recall": 1.0}
    assert eval_pairs(path, template_guard=None, max_semantic_chars=None)["default"]["precision"] < 1.0


def test_an_answer_is_stored_with_the_vector_its_lookup_made(tmp_path: Path) -> None:
    embedder = _CountingEmbedder()
    cache = Cache(tmp_path / "cache", embedder=embedder)
    long_text = "Summarise this report for the board: " + "Sales rose in every region this quarter. " * 15
    try:
        for text in (REWORDING[0], long_text):
            call = _call(text)
            lookup = cache.lookup(call, tenant="t")
            assert (lookup.vector is None) == (text == long_text)
            assert cache.save(lookup, call, tenant="t", model="gpt-4o-mini", body=ANSWER)
        assert embedder.texts == [REWORDING[0]]  # embedded once, to look up; a long text not at all
        assert cache.lookup(_call(REWORDING[1]), tenant="t").tier == "semantic"
        assert cache.lookup(_call(long_text), tenant="t").tier == "exact"
    finally:
        cache.store.close()


def test_an_exact_only_cache_embeds_nothing(tmp_path: Path) -> None:
    embedder = _CountingEmbedder()
    cache = Cache(tmp_path / "cache", embedder=embedder, semantic=False)
    try:
        call = _call(REWORDING[0])
        assert cache.save(cache.lookup(call, tenant="t"), call, tenant="t", model="gpt-4o-mini", body=ANSWER)
        assert cache.lookup(_call(REWORDING[0]), tenant="t").tier == "exact"
        assert not cache.lookup(_call(REWORDING[1]), tenant="t").hit
        assert embedder.texts == []
    finally:
        cache.store.close()


def test_a_nul_in_a_text_is_a_symbol_not_the_guards_marker() -> None:
    # The guard marks a capital word beside code with a NUL; a NUL the user typed raised IndexError before.
    guard = TemplateGuard()
    assert guard.conflict("a\x00b", "a\x01b")  # the same words, another symbol
    assert not guard.conflict("\x00", "\x00")
    assert not guard.conflict("What does a \x00 byte end in C?", "What does a \x00 byte end in C?")


# Code, a layout or a string whose spacing, line breaks or ``:`` / ``,`` are what differs: another question.
SPACING_AND_CODE_PUNCTUATION = [
    ('What does this Python code print?\n```python\ntotal = 0\nfor i in range(3):\n    total += i\n    print(total)\n```',
     'What does this Python code print?\n```python\ntotal = 0\nfor i in range(3):\n    total += i\nprint(total)\n```'),
    ('What does this Python code print?\ntotal = 0\nfor i in range(3):\n    total += i\n    print(total)',
     'What does this Python code print?\ntotal = 0\nfor i in range(3):\n    total += i\nprint(total)'),
    ('What does this print?\nx = []\nfor i in range(3):\n    x.append(i)\n    if i == 1:\n        break\nprint(x)',
     'What does this print?\nx = []\nfor i in range(3):\n    x.append(i)\nif i == 1:\n    break\nprint(x)'),
    ('Is this YAML valid?\nserver:\n  port: 80\n  host: example.com',
     'Is this YAML valid?\nserver:\nport: 80\n  host: example.com'),
    ("What is len('a b') in Python?",
     "What is len('a  b') in Python?"),
    ('What does `len("a b")` return in Python?',
     'What does `len("a  b")` return in Python?'),
    ('Why does this give a SyntaxError in Python: def double(x) return x * 2',
     'Why does this give a SyntaxError in Python: def double(x): return x * 2'),
    ("Fix the bug in this Python function:\ndef is_even(n):\n    return n % 2 == 0\n    print('checked')",
     "Fix the bug in this Python function:\ndef is_even(n):\n    return n % 2 == 0\nprint('checked')"),
    ('What is type({1: 2}) in Python?',
     'What is type({1, 2}) in Python?'),
    ('What does let y = x ? a : b do in JavaScript?',
     'What does let y = x, a, b do in JavaScript?'),
    ('How many lines does this poem have?\nRoses are red\nviolets are blue\nsugar is sweet',
     'How many lines does this poem have?\nRoses are red violets are blue\nsugar is sweet'),
    ("Count the spaces in this string: 'a b c'",
     "Count the spaces in this string: 'a  b  c'"),
    ('Is this Makefile correct?\n```make\nall:\n\tgcc main.c\n```',
     'Is this Makefile correct?\n```make\nall:\n    gcc main.c\n```'),
    ("What is printed?\n```python\nif x > 1:\n    print('a')\nprint('b')\n```",
     "What is printed?\n```python\nif x > 1:\n    print('a')\n    print('b')\n```"),
]


@pytest.mark.parametrize("stored, asked", SPACING_AND_CODE_PUNCTUATION)
def test_spacing_line_breaks_and_code_punctuation_are_data(stored: str, asked: str) -> None:
    _never_a_hit(stored, asked)


@pytest.mark.parametrize("stored, asked", [
    ("What is the capital of France?\n", "What is the capital of France?"),  # the text's own ends
    ("  How do I learn Python?", "How do I learn Python?"),
    ("What is Christian mission(s)?", "What is Christian mission(s) ?"),  # "(s)" is prose, not a call
])
def test_spacing_at_the_ends_is_no_conflict(stored: str, asked: str) -> None:
    assert not TemplateGuard().conflict(asked, stored)


def test_a_long_pair_is_judged_in_bounded_time() -> None:
    import time

    # every split of the span matches at its ends, and "and" between them is symmetric: the swap search was cubic
    a, b = " ".join(["and"] * 3000 + ["zebra"]), " ".join(["zebra"] + ["and"] * 3000)
    started = time.perf_counter()
    TemplateGuard().conflict(a, b)
    assert time.perf_counter() - started < 5  # about 17 s before on a quiet machine; milliseconds now


def test_pairs_the_store_never_scores_are_no_hit_at_any_threshold(tmp_path: Path) -> None:
    # scored 0.0, they all "hit" at threshold 0: recall 1.0 at every precision target where nothing can ever hit
    path = tmp_path / "pairs.jsonl"
    rows = [{"a": f"{REWORDING[0]} ({i})", "b": f"{REWORDING[1]} ({i})", "duplicate": True} for i in range(9)]
    rows.append({"a": "How do I bake bread at home today?", "b": "How do I bake a cake at home today?",
                 "duplicate": False})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = eval_pairs(path, max_semantic_chars=20)  # every text is longer: none is ever a candidate
    assert result["recall_at_precision"] == {"0.8": 0.0, "0.9": 0.0, "0.95": 0.0}
    assert result["default"]["recall"] == 0.0


def test_texts_of_few_distinct_tokens_are_compared_by_their_content_not_aligned(monkeypatch) -> None:
    """difflib's alignment grows to cubic time on long texts of few distinct tokens ("a+b+c+..." against
    "n+o+p+...": 0.4 s of the event loop for 500 characters); such pairs are compared by content words."""
    from llmbudget.cache import templates

    def never(*args, **kwargs):
        raise AssertionError("aligned")

    monkeypatch.setattr(templates, "SequenceMatcher", never)
    first, second = "abcdefghijklm", "nopqrstuvwxyz"
    guard = TemplateGuard()
    assert guard.conflict("+".join(first[i % 13] for i in range(250)), "+".join(second[i % 13] for i in range(250)))
    same = "+".join(first[i % 13] for i in range(250))
    assert not guard.conflict(same, same + " ")


@pytest.mark.parametrize(("stored", "asked"), [
    # an instruction's payload: its punctuation, capitals, courtesy and every word are data (from a red-team pass:
    # each was served with score 1.0, and counted as a correct "same text" hit by eval cache)
    ("Is this a comma splice: I went home, I slept.", "Is this a comma splice: I went home. I slept."),
    ("Does this sentence need a semicolon: I like cats; dogs are fine.",
     "Does this sentence need a semicolon: I like cats, dogs are fine."),
    ("Proofread: The students' essays are due Friday.", "Proofread: The students essays are due Friday."),
    ("Is this capitalized correctly: i moved to paris in june.", "Is this capitalized correctly: I moved to Paris in June."),
    ("Translate to French: Sit down, please.", "Translate to French: Sit down."),
    ("Rate the politeness of this email from 1 to 5: Fix the bug today, thanks!",
     "Rate the politeness of this email from 1 to 5: Fix the bug today!"),
    ("Translate to French: I saw a dog in the garden.", "Translate to French: I saw the dog in the garden."),
    ("Rate the sentiment from 1 to 5: The food was very good.", "Rate the sentiment from 1 to 5: The food was good."),
    ("Translate into Portuguese: I would buy the car.", "Translate into Portuguese: I will buy the car."),
    # symbols named in prose, a factorial, a quoted letter, a unit's case, a negating prefix, a tens word
    ("In regex, what does . match?", "In regex, what does ? match?"),
    ("What does ?? mean in C#?", "What does ?. mean in C#?"),
    ("What is 20! divided by 18!?", "What is 20 divided by 18?"),
    ("Is the comma needed in 'However, it rained all day'?", "Is the comma needed in 'However it rained all day'?"),
    ("What does ord('A') return in Python?", "What does ord('a') return in Python?"),
    ("Is a 2 mw laser pointer dangerous to the eyes?", "Is a 2 MW laser pointer dangerous to the eyes?"),
    ("How can I compress all the cells in Excel?", "How can I decompress all the cells in Excel?"),
    ("Is it safe to leave a forty year old boiler running?", "Is it safe to leave a fifty year old boiler running?"),
    # from a review of the first version of these rules: a payload's case in a text typed in lower case, symbols
    # named after other words, a factorial at the end, instructions in other words and languages, a payload that
    # opens like a question, a label in bold
    ("count the uppercase letters: hello world", "count the uppercase letters: Hello World"),
    ("Split a string on , in Python", "Split a string on ; in Python"),
    ("How many trailing zeros in 100!", "How many trailing zeros in 100?"),
    ("Solve: 2x + 3 = 7", "Solve: 2x + 3 = 9"),
    ("Traduce al inglés: Vi un perro.", "Traduce al inglés: Vi el perro."),
    ("Translate to German: How are you", "Translate to German: How old are you"),
    ("**Translate to French:** I saw a dog.", "**Translate to French:** I saw the dog."),
    ("Translate (to French): I saw a dog.", "Translate (to French): I saw the dog."),
    # a time of day, a letter named as one, a task asked as a question before its input (the red team's leftovers:
    # each was served, "5 am" / "5 pm" at 0.88, "the letter A" / "the letter a" at 1.0)
    ("Set an alarm for 5 am tomorrow", "Set an alarm for 5 pm tomorrow"),
    ("Set an alarm for 5am tomorrow", "Set an alarm for 5pm tomorrow"),
    ("Remind me at 7:30 a.m. to call mom", "Remind me at 7:30 p.m. to call mom"),
    ("What is the ASCII code of the letter A?", "What is the ASCII code of the letter a?"),
    ("Which option is right, a or b?", "Which option is right, a or c?"),
    ("Is this sentence correct? I went home.", "Is this sentence correct? I go home."),
    ("Is this grammatical? She don't like it.", "Is this grammatical? She doesn't like it."),
    ("Sentiment? Great value for the price.", "Sentiment? Poor value for the price."),
    ("Is this message polite or rude? Send me the file, please.", "Is this message polite or rude? Send me the file."),
    # from a review of those rules: a letter's case where codes are asked about, a judgement asked without "this"
    ("What's the ASCII value of A", "What's the ASCII value of a"),
    ("Convert A to binary", "Convert a to binary"),
    ("Positive or negative? Great value for the price.", "Positive or negative? Poor value for the price."),
    ("Fact or opinion? Paris is the best city.", "Fact or opinion? Paris is the capital."),
    # ... and there the input's punctuation and capitals, as a colon's payload's
    ("Is this punctuated correctly? Its a nice day, isn't it?", "Is this punctuated correctly? Its a nice day isn't it?"),
    ("Is this sentence capitalized correctly? i moved to paris.", "Is this sentence capitalized correctly? I moved to Paris."),
])
def test_a_payloads_form_a_named_symbol_and_a_units_case_are_data(stored: str, asked: str) -> None:
    _never_a_hit(stored, asked)


@pytest.mark.parametrize(("stored", "asked"), [
    ("Music: What's your favourite song at the moment?", "Music: What is your favorite song right now?"),
    ("Summarise this report: Sales rose in every region.", "summarise this report: Sales rose in every region"),
    ("Quick question: how do I learn Python?", "Quick question: How do I learn Python?"),  # a sentence's first capital
    ("What is the capital of France ? Tell me please", "What is the capital of France? Tell me please"),
    ("TRANSLATE TO FRENCH: I SAW A DOG IN THE GARDEN", "Translate to French: I saw a dog in the garden"),
    # from a review of the payload rules: a time's or a URL's colon starts no payload, French spacing names no
    # symbol, a text typed in lower case says nothing by its case, a user's own words after a topic are reworded
    ("What is 10:30 pm in tokyo time", "What is 10:30 PM in Tokyo time"),
    ("Set an alarm for 10:30 tomorrow morning", "Set an alarm for 10:30 tomorrow morning, please"),
    ("Explain std::vector in C++ briefly", "Explain std::vector in C++ briefly, please"),
    ("Quelle est la capitale de la France ? réponds en une phrase",
     "Quelle est la capitale de la France? réponds en une phrase"),
    ("Compare apples , oranges and pears", "Compare apples, oranges and pears"),
    ("Translate to French: I saw a dog", "Translate to French I saw a dog"),
    ("Quick question: how do I learn Python", "Quick question: how can I learn Python"),
    ("iphone 15 pro max price", "iPhone 15 Pro Max price"),
    ("What does x = 5 do if I run it", "what does x = 5 do if i run it"),
    ("Which films from the '80s, if any, won an Oscar?", "Which films from the '80s if any won an Oscar?"),
    # a question and a remark after it, with no task on an input, is reworded as any other; "I am" is no time
    ("What's the capital of France? I need it for homework.", "What is the capital of France? I need it for my homework."),
    ("Can you help? My printer won't print.", "Can you help? My printer will not print."),
    ("Meet me at 5 pm tomorrow", "meet me at 5 PM tomorrow"),
    ("Why am I always tired?", "Why am i always tired?"),
    ("Is this sentence correct? I went home.", "is this sentence correct?  I went home"),
    # from a review of the rules above: a question about the user's own situation and a remark after it, a texter's
    # "u" for "i", a letter whose case no code or case is asked about
    ("How do I fix this? My printer won't print.", "How do I fix this? My printer will not print."),
    ("Can you check this? I think my code has a bug.", "Can you check this? I believe my code has a bug."),
    ("Is this normal? My cat sleeps all day.", "Is this normal? My cat sleeps the whole day."),
    ("How do I improve my credit score? I have a lot of debt.", "How do I improve my credit score? I have lots of debt."),
    ("What's the best email client? I use a Mac.", "What's the best email client? I'm on a Mac."),
    ("How do u reset a password", "How do I reset a password"),
    ("What words start with the letter A?", "What words start with the letter a?"),
])
def test_a_payload_read_as_the_user_types_it_is_no_conflict(stored: str, asked: str) -> None:
    assert not TemplateGuard().conflict(asked, stored) and not TemplateGuard().conflict(stored, asked)


@pytest.mark.parametrize(("stored", "asked"), [
    # a red team's: punctuation and capitals that are the data, set off by no colon (the guard read both texts as
    # one question and the store served them at score 1.0, with either scorer)
    ("Does the sentence Let's eat Grandma need a comma, and if so where should it go?",
     "Does the sentence Let's eat, Grandma need a comma, and if so where should it go?"),
    ("Add the missing punctuation to this sentence and return only the corrected sentence - woman without her man "
     "is nothing", "Add the missing punctuation to this sentence and return only the corrected sentence - woman, "
     "without her, man is nothing"),
    ("Does this sentence end with a question mark or a period, answer with one word - Are you coming?",
     "Does this sentence end with a question mark or a period, answer with one word - Are you coming."),
    ("Fix the capitalization in the sentence below and return the corrected sentence only\ni met john in new york",
     "Fix the capitalization in the sentence below and return the corrected sentence only\nI met John in New York"),
    ("Check the following username against our rule (must contain an uppercase letter)\nalice_2024",
     "Check the following username against our rule (must contain an uppercase letter)\nAlice_2024"),
    ("Sort these numbers in ascending order and reply with the sorted list only - 10, 2, 33, 4",
     "Sort these numbers in ascending order and reply with the sorted list only - 10, 2, 33 4"),
    ("Classify each line below as question or statement\nYou are coming tomorrow.\nShe left the keys at home?",
     "Classify each line below as question or statement\nYou are coming tomorrow?\nShe left the keys at home."),
    # negation in other languages and scripts
    ("Welche Kunden haben eine Bestellung aufgegeben?", "Welche Kunden haben keine Bestellung aufgegeben?"),
    ("Quais clientes fizeram um pedido este mês?", "Quais clientes não fizeram um pedido este mês?"),
    ("Почему мой код работает на Linux?", "Почему мой код не работает на Linux?"),
    ("Est-ce que le chocolat est toxique pour les chats ?", "Est-ce que le chocolat n'est pas toxique pour les chats ?"),
    ("为什么我的代码在Linux上能运行？", "为什么我的代码在Linux上不能运行？"),
    ("哪些员工有经理？", "哪些员工没有经理？"),
    ("このコードはなぜ動くのですか？", "このコードはなぜ動かないのですか？"),
    ("支払い済みの注文を一覧表示するSQLを書いて", "未払いの注文を一覧表示するSQLを書いて"),
    ("Write a pandas snippet to sum each row of a DataFrame", "Write a pandas snippet to sum each column of a DataFrame"),
    ("Drop rows with NaN in pandas", "Drop cols with NaN in pandas"),
    ("请在这里吸烟", "请勿在这里吸烟"),
    ("我同意这个观点吗？", "我不同意这个观点吗？"),  # 不同意 ("disagree") is no 不同 ("different")
])
def test_punctuation_or_capitals_that_are_data_and_negations_of_other_languages_are_never_a_hit(
        stored: str, asked: str) -> None:
    _never_a_hit(stored, asked)


@pytest.mark.parametrize(("stored", "asked"), [
    ("What is the capital of France?", "what is the capital of france"),  # "capital" asks about no form
    ("Is this sentence correct? I went home.", "is this sentence correct?  I went home"),
    ("Hi!\nWhat is the capital of France?", "Hi!\nwhat is the capital of France"),  # a greeting's line: no data
    ("这个问题非常难吗？", "这个问题很难吗？"),  # 非常 ("very") negates nothing
    ("未来会下雨吗？", "将来会下雨吗？"),  # nor 未来 ("future")
    # a review of the first version of these rules: casual typing where no form is asked about, and words that
    # hold a negation sign or another language's negation without negating
    ("How do I read a CSV file in Python?", "how do i read a csv file in python"),
    ("Summarize the French Revolution in one sentence", "summarize the french revolution in one sentence"),
    ("How to convert a string to uppercase in Python", "how to convert a string to uppercase in python"),
    ("When should I use a comma before and?", "when should i use a comma before and?"),
    ("What's the difference between a comma and a semicolon?", "What’s the difference between a comma and a semicolon?"),
    ("What is a comma splice?", "What is a comma splice ?"),
    ("I get this error when I run pip install\nHow do I fix it", "I get this error when I run pip install\nhow do i fix it"),
    ("How do I start a nonprofit organization?", "How do I start a non-profit organization?"),
    ("Give me a short history of rock and roll", "Give me a short history of rock n roll"),
    ("What is the derivative of sine x?", "What is the derivative of sin x?"),
    ("Python和Java有什么不同？", "Python和Java有什么区别？"),
    ("有办法加快这个SQL查询吗？", "有没有办法加快这个SQL查询？"),
    ("请问怎么重置密码？", "不好意思，请问怎么重置密码？"),
])
def test_case_or_a_final_mark_outside_data_and_words_holding_a_negation_sign_are_no_conflict(
        stored: str, asked: str) -> None:
    guard = TemplateGuard()
    assert not guard.conflict(asked, stored) and not guard.conflict(stored, asked)


def test_digits_of_other_scripts_beside_a_k_are_no_crash() -> None:
    # "⁵".isdigit() is true and int("⁵") raises: every lookup compared with such a stored text raised
    text = "Find plots of land over 10 ⁵ k square metres"
    assert not TemplateGuard().conflict(text, text) and not TemplateGuard().conflict(text, text.replace("10", "12"))


@pytest.mark.parametrize(("stored", "asked"), [
    # the case of a case-sensitive operation's input (a hash, an encoding, a reversal, a count of capitals)
    ('What is the SHA-256 hash of "password"?', 'What is the SHA-256 hash of "PASSWORD"?'),
    ('Reverse the string "London Bridge"', 'Reverse the string "london bridge"'),
    ("base64 encode hello world", "base64 encode Hello World"),
    ('Count the uppercase letters in "hello world"', 'Count the uppercase letters in "HELLO WORLD"'),
    ('Is "python code" all lowercase?', 'Is "Python Code" all lowercase?'),
    ('Sort the characters of "blue sky" by ASCII value', 'Sort the characters of "Blue Sky" by ASCII value'),
    # an acronym and the word, a flag's letter and the article or pronoun
    ("What is it?", "What is IT?"), ("What is and?", "What is AND?"), ("Explain who", "Explain WHO"),
    ("What is ram?", "What is RAM?"), ("What is grep -I for?", "What is grep -i for?"),
    ("Explain the ls -A flag", "Explain the ls -a flag"),
    # an article in a text whose grammar is judged; a filler traded for one of another kind
    ('Is "I have a apple" grammatically correct?', 'Is "I have an apple" grammatically correct?'),
    ("Is I have a apple correct English?", "Is I have an apple correct English?"),
    ("Use the word really in a sentence", "Use the word very in a sentence"),
    ("How do you spell very backwards?", "How do you spell actually backwards?"),
    ("What is the md5 of the string blue sky", "What is the md5 of the string Blue Sky"),
])
def test_what_a_red_team_found_served_for_another_question_is_not_the_same_question(stored: str, asked: str) -> None:
    """Each pair was a semantic hit (most scored 1.0, as the same question): 42 of 50 case-sensitive tasks, 36 of
    50 acronyms, 22 of 50 grammar checks. (Left: a courtesy word traded for another where it is the data,
    "Translate please to German" and "... thanks ...", as users trade them everywhere else.)"""
    guard = TemplateGuard()
    assert not guard.same_question(asked, stored) and not guard.same_question(stored, asked)
    assert guard.conflict(asked, stored) or guard.conflict(stored, asked) or not same_text(asked, stored)


@pytest.mark.parametrize(("stored", "asked"), [
    ("Meet me at 5 pm", "meet me at 5 PM"), ("How do I read a CSV file in Python?", "how do i read a csv file in python"),
    ("Hi, what is the capital of France?", "Hello, what is the capital of France?"),
    ("Please translate 'good morning' to French", "Translate 'good morning' to French"),
    # (a review of the rules above found each of these refused)
    ("What does the USA export most?", "what does the usa export most?"), ("What is GDP?", "what is gdp"),
    ("What is NASA's budget?", "what is nasa's budget?"), ("What are the symptoms of COVID?", "what are the symptoms of covid?"),
    ("What is the capital of France, thanks", "What is the capital of France please"),
    ("Hi, what is the capital of France?", "Thanks, what is the capital of France?"),
    ("Can you please tell me how to boil an egg", "Can you just tell me how to boil an egg"),
    ("What is the correct way to boil an egg?", "What is a correct way to boil an egg?"),
    ("How do I reverse a list in Python?", "how do i reverse a list in python?"),
    ("How do I hash a password in Node.js?", "how do i hash a password in node.js?"),
    # (and a second review's: a text typed all in lower case says nothing by its case; "article" asks no grammar)
    ("How much RAM do I need for gaming?", "how much ram do i need for gaming?"),
    ("How do I use SQL JOIN?", "how do i use sql join?"), ("What does SPAM stand for?", "what does spam stand for?"),
    ("Write a short article about climate change", "Write the short article about climate change"),
    ("Summarize the article in three sentences", "Summarize an article in three sentences"),
])
def test_a_users_typing_is_still_the_same_question(stored: str, asked: str) -> None:
    guard = TemplateGuard()
    assert not guard.conflict(asked, stored) and not guard.conflict(stored, asked)
