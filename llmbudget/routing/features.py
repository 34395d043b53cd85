"""Cheap request features for the complexity router.

Pure Python over the request body: no tokenizer, no network and (almost) no
regular expressions, only ``str``/``bytes`` methods that run in C, so a request
costs microseconds.  ``extract`` returns the vector in ``FEATURE_NAMES`` order;
the classifier and the training script both call it, so what is trained is
exactly what runs.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "FEATURE_NAMES",
    "PRIOR_FEATURES",
    "RequestText",
    "extract",
    "extract_with_text",
    "extract_with_words",
    "feature_dict",
    "request_text",
    "tokens",
    "window",
]

#: Names of the features, in the order ``extract`` returns them.
FEATURE_NAMES: tuple[str, ...] = (
    # size and vocabulary of the last user turn
    "log_chars",
    "log_est_tokens",
    "log_context_chars",
    "log_lines",
    "avg_word_len",
    "long_word_share",
    "capitalized_share",
    # math
    "digit_share",
    "log_numbers",
    "math_operators",
    "equation",
    "latex",
    "math_symbols",
    "math_words",
    "units",
    # code
    "code_fence",
    "code_syntax",
    "code_words",
    # reasoning and task shape
    "reasoning_words",
    "step_by_step",
    "negation",
    "logic_words",
    "hypothetical",
    "narrative",
    "paired_items",
    "quoted_passage",
    "creative_words",
    "chitchat",
    "format_words",
    # question type
    "q_factual",
    "q_explain",
    "q_imperative",
    "q_yes_no",
    "question_marks",
    "fill_blank",
    # multiple choice
    "mc_options",
    "mc_log_option_chars",
    "mc_numeric_options",
    "mc_combo_options",
    "mc_pair_options",
    "mc_stem_share",
    # language
    "non_ascii_share",
    "non_latin_share",
    # request shape
    "conversation_depth",
    "has_system",
    "tools",
    "response_schema",
    "json_mode",
    "images",
    "files_or_audio",
    "reasoning_requested",
)

#: Features the training data never varies: their weights are priors set by hand.
PRIOR_FEATURES: tuple[str, ...] = (
    "conversation_depth",
    "has_system",
    "tools",
    "response_schema",
    "json_mode",
    "images",
    "files_or_audio",
    "reasoning_requested",
)

_N = len(FEATURE_NAMES)
_N_TEXT = FEATURE_NAMES.index("conversation_depth")
_NO_WORDS: frozenset[bytes] = frozenset()
#: Text beyond this many characters is sampled (head and tail) for the text features.
_WINDOW = 2500

_MATH_WORDS = frozenset(
    "calculate calculated calculating compute computed solve solved equation equations integral "
    "derivative probability sum product percent percentage ratio average total simplify matrix "
    "polynomial factor factors prime divisible remainder approximately estimate minimum maximum "
    "rate velocity acceleration mass energy force speed distance area volume radius fraction mean "
    "median variance twice half times sqrt log ln sin cos tan mod gcd lcm modulo integer integers "
    "real rational irrational function functions vector vectors eigenvalue determinant degree "
    "angle triangle circle square cube root roots theorem formula value values number numbers".encode().split()
)
_CODE_WORDS = frozenset(
    "python javascript java typescript rust golang sql regex code function program programming "
    "algorithm compile compiler bug debug implement implementation api array arrays recursion recursive "
    "runtime complexity variable variables loop pointer stack queue binary bit bits byte bytes string "
    "strings boolean script class method database query def return import print const void null "
    "output input execute executed".encode().split()
)
_REASONING_WORDS = frozenset(
    "prove proof derive justify compare contrast analyze analyse evaluate reason reasoning "
    "implication implications infer inferred deduce conclude conclusion argue argument arguments "
    "critique tradeoff consequence consequences valid invalid validity strongest weakest assumption "
    "assumptions premise premises therefore implies entail entails counterexample explain why "
    "because best likely unlikely".encode().split()
)
_STEP_PHRASES = (
    "step by step", "step-by-step", "think carefully", "show your work", "chain of thought",
    "walk me through", "in detail", "think through", "reason through", "explain your reasoning",
)
_STEP_GATE = frozenset(b"step carefully work thought through detail reasoning".split())
_SHOUTED = (" NOT ", " EXCEPT", " LEAST ", " FALSE")
_NEGATION_WORDS = frozenset(b"not except least false incorrect never untrue cannot".split())
_LOGIC_WORDS = frozenset(
    "neither both nor necessarily sufficient iff only statement statements true false".encode().split()
)
_HYPOTHETICAL_WORDS = frozenset(
    "suppose supposing assume assuming imagine hypothetical scenario consider given if would".encode().split()
)
_CREATIVE_WORDS = frozenset(
    "poem story essay email blog haiku joke slogan lyrics rewrite rephrase paraphrase summarize "
    "summarise translate draft compose roleplay pretend tweet post letter tagline title creative "
    "fun describe write song speech".encode().split()
)
_CHITCHAT_WORDS = frozenset(b"hello hi hey thanks thank howdy morning evening lol please nice cool bye".split())
_FORMAT_WORDS = frozenset(b"json yaml csv table bullet bullets markdown list format outline schema xml html".split())
_UNIT_WORDS = frozenset(
    "kg mg km cm mm nm ms hz khz mhz ghz kj ev mev kw mv ma ohm ohms pa kpa atm mol mole moles "
    "dollars dollar cents hours minutes seconds mph joules watts volts newtons kelvin celsius "
    "fahrenheit meters metres liters litres grams miles feet inches pounds".encode().split()
)
_FACTUAL = frozenset("what which who whom whose when where".split())
_EXPLAIN = frozenset("why how".split())
_YES_NO = frozenset("is are was were do does did can could should would will has have".split())
_IMPERATIVE = frozenset(
    "write explain describe list give create generate make tell summarize summarise translate "
    "draft compose find solve compute calculate prove show implement design suggest provide help "
    "imagine pretend act rewrite evaluate analyze analyse compare construct identify determine "
    "classify extract name define discuss develop please".split()
)

_PUNCT = string.punctuation.replace("'", "").encode()
_TO_SPACE = bytes.maketrans(_PUNCT, b" " * len(_PUNCT))
_UNICODE_PUNCT = {"“": '"', "”": '"', "«": '"', "»": '"', "‘": "'", "’": "'", "–": " ", "—": " ", "…": "..."}
_SPECIAL = b'\n?%"{}\\$;=~`|+*/^<>'
_NOT_SPECIAL = bytes(b for b in range(256) if b not in _SPECIAL)
_DIGITS = b"0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTERS = _UPPER + _UPPER.lower()
_OPERATORS = b"+*/^=<>"
# bytes -> a "shape" string: digits 0, letters a, operators +, spaces ' ', the rest '.'
_SHAPE = bytes(
    48 if b in _DIGITS else 97 if b in _LETTERS else 43 if b in _OPERATORS else 32 if b in b" \t" else 46
    for b in range(256)
)
_DIGIT_RUNS = bytes(48 if b in _DIGITS else 32 for b in range(256))
_NOT_DIGIT = bytes(b for b in range(256) if b not in _DIGITS)
# lead bytes of UTF-8 sequences for non-Latin scripts: Greek and beyond (2-byte) and 3/4-byte scripts
_NON_LATIN_LEADS = bytes(range(0xCD, 0xE0)) + bytes(range(0xE3, 0xF5))
_MATH_UTF8 = (b"\xe2\x88", b"\xe2\x89", b"\xe2\x8a", b"\xe2\x8b", b"\xe2\x86", b"\xe2\x87", b"\xc3\x97", b"\xc3\xb7")
_LATEX_MARKERS = ("\\frac", "\\sqrt", "\\sum", "\\int", "\\cdot", "\\times", "\\alpha", "\\theta", "\\pi",
                  "\\lim", "\\infty", "\\begin", "\\mathbb", "^{", "_{", "$$")
_CODE_MARKERS = ("{", ";\n", "==", "!=", "->", "=>", "()", "):", "\n    ", "\n\t", "def ", "return ", "import ",
                 "#include", "print(", "console.", "</")
_CODE_GATE = frozenset(b"def return import include print console function class var const int void".split())
_EQUATION_SHAPES = (b"0+0", b"0 + 0", b"a+0", b"a + 0", b"0+a", b"0 + a", b"a+a", b"a + a", b".+", b". +")


_NINE_LT = (9).__lt__
_has_digit = re.compile(r"\d").search
_STRIP = "\"'“”‘’()[]{},.;:!?"
_PAIRED_MARKERS = ("1 |", "1|", "Statement 1", "Scenario 1", "Statement I", "Claim 1", "Case 1", "Premise 1",
                   "Sentence 1", "Passage 1", "Option 1")
_is_pair = re.compile(r"[A-Za-z][A-Za-z ]{0,14}, [A-Za-z][A-Za-z ]{0,14}").fullmatch
_NARRATIVE_WORDS = frozenset(
    b"he she his her him hers they them their i me my we our man woman boy girl person friend "
    b"mother father wife husband son daughter neighbor owner buyer seller company".split()
)
_COMBO_MARKERS = ("i and ii", "ii and iii", "i and iii", "i, ii", "only", "both", "neither", "of the above",
                  "true, true", "false, false", "true, false", "false, true")


def _has_combo(option: str) -> bool:
    return any(map(option.lower().__contains__, _COMBO_MARKERS))


_FAMILIES: tuple[frozenset[bytes], ...] = (
    _MATH_WORDS,
    _UNIT_WORDS,
    _CODE_WORDS,
    _REASONING_WORDS,
    _NEGATION_WORDS,
    _LOGIC_WORDS,
    _HYPOTHETICAL_WORDS,
    _NARRATIVE_WORDS,
    _CREATIVE_WORDS,
    _CHITCHAT_WORDS,
    _FORMAT_WORDS,
    _CODE_GATE,
    _STEP_GATE,
)
_KEYWORDS = frozenset().union(*_FAMILIES)
_FAMILY_OF: dict[bytes, tuple[int, ...]] = {
    w: tuple(i for i, family in enumerate(_FAMILIES) if w in family) for w in _KEYWORDS
}
_MATH, _UNIT, _CODE, _REASON, _NEG, _LOGIC, _HYPO, _NARR, _CREATIVE, _CHAT, _FORMAT, _CODE_HINT, _STEP_HINT = range(
    len(_FAMILIES)
)


_PART_TYPES = frozenset(
    {"input_text", "text", "input_image", "image_url", "image", "input_file", "file", "input_audio", "audio"}
)


class RequestText:
    """The text and shape of one request: its last user turn, the rest, and counters."""

    __slots__ = ("query", "context", "turns", "assistant_turns", "has_system", "images", "files_or_audio")

    def __init__(self) -> None:
        self.query = ""
        self.context: list[str] = []
        self.turns = 0
        self.assistant_turns = 0
        self.has_system = False
        self.images = 0
        self.files_or_audio = 0


def _part_text(part: Any, out: RequestText) -> str:
    """Text of one content part; counts images, files and audio on ``out``."""
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        kind = part.get("type")
        if kind in ("image_url", "input_image", "image"):
            out.images += 1
            return ""
        if kind in ("input_audio", "audio", "file", "input_file"):
            out.files_or_audio += 1
            return ""
        text = part.get("text", part.get("output", part.get("content")))
        if isinstance(text, str):
            return text
        if isinstance(text, (list, tuple)):
            return _content_text(text, out)
        return ""
    if isinstance(part, (int, float)) and not isinstance(part, bool):
        return str(part)
    return ""


def _content_text(content: Any, out: RequestText) -> str:
    """Text of a message ``content``: a string, a list of parts, or anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = [_part_text(part, out) for part in content]
        return "\n".join(t for t in texts if t)
    return _part_text(content, out)


def _messages(body: Mapping[str, Any]) -> Sequence[Any]:
    """The turns of a request: chat ``messages``, Responses ``input`` or completions ``prompt``."""
    messages = body.get("messages")
    if isinstance(messages, (list, tuple)):
        return messages
    for key in ("input", "prompt"):
        value = body.get(key)
        if isinstance(value, str):
            return ({"role": "user", "content": value},)
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, str) for v in value):
                return ({"role": "user", "content": "\n".join(value)},)
            return value
    return ()


def request_text(body: Any) -> RequestText:
    """Split a request body into its last user turn, its other text and its counters."""
    out = RequestText()
    if not isinstance(body, Mapping):
        return out
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.has_system = True
        out.context.append(instructions)
    last_user = -1
    texts: list[list[str]] = []  # each turn's pieces: a user turn's bare parts join it at the end (in one go)
    role: Any
    for message in _messages(body):
        if isinstance(message, str):
            role, text = "user", message
        elif isinstance(message, Mapping):
            role = message.get("role")
            kind = message.get("type")
            if not isinstance(kind, str):
                kind = None
            if not isinstance(role, str):
                role = "user" if kind in (None, "message") or kind in _PART_TYPES else "tool"
            if kind in _PART_TYPES:  # a bare content part (Responses input): joins the user turn before it
                text = _part_text(message, out)
                if last_user >= 0 and last_user == len(texts) - 1:
                    if text:
                        texts[-1].append(text)
                    continue
            else:
                text = _content_text(message.get("content", message.get("output", message.get("text"))), out)
        else:
            continue
        if role in ("system", "developer"):
            out.has_system = True
        elif role == "assistant":
            out.assistant_turns += 1
        elif role == "user":
            out.turns += 1
            last_user = len(texts)
        texts.append([text])
    for i, pieces in enumerate(texts):
        text = "\n".join(piece for piece in pieces if piece) if len(pieces) > 1 else pieces[0]
        if i == last_user:
            out.query = text
        elif text:
            out.context.append(text)
    return out


def _clean(text: str) -> bytes:
    """UTF-8 of ``text`` with typographic quotes and dashes made ASCII."""
    raw = text.encode("utf-8", "ignore")
    if len(raw) > len(text):
        for mark, plain in _UNICODE_PUNCT.items():
            if mark in text:
                text = text.replace(mark, plain)
        raw = text.encode("utf-8", "ignore")
    return raw


def _tokens(raw: bytes) -> list[bytes]:
    return raw.lower().translate(_TO_SPACE).split()


def tokens(text: str) -> list[str]:
    """Lower-cased tokens of ``text`` split on whitespace and punctuation, as the router sees them."""
    return [t.decode("utf-8", "replace") for t in _tokens(_clean(text))]


def _lg(x: float) -> float:
    return math.log1p(x) if x > 0 else 0.0


def _count_any(text: Any, needles: Sequence[Any]) -> int:
    return sum(map(text.count, needles))


def _options(text: str) -> tuple[str, list[str]]:
    """Split a multiple-choice prompt into its stem and its options (``A. ...`` lines, in order)."""
    at = max(text.rfind("\nA. "), text.rfind("\nA) "), text.rfind("\n(A) "), text.rfind("\n(a) "), text.rfind("\na) "))
    if at < 0:
        return text, []
    options: list[str] = []
    upper = text[at + 1 : at + 3] != "a)" and text[at + 1 : at + 4] != "(a)"
    expected = ord("A" if upper else "a")
    for line in text[at + 1 :].split("\n", 26):
        line = line.strip()
        if not line:
            continue
        if line[0] == "(" and line[2:3] == ")" and ord(line[1:2] or "\0") == expected:
            options.append(line[3:].strip())
        elif len(line) >= 2 and ord(line[0]) == expected and line[1] in ".)":
            options.append(line[2:].strip())
        else:
            break
        expected += 1
    if len(options) < 2:
        return text, []
    return text[:at], options


def _last_sentence(stem: str) -> str:
    """The last sentence (or line) of a question stem, lower-cased."""
    tail = stem.rstrip()[-300:].lower()
    for sep in ("\n", ". ", "? ", "! ", ": "):
        cut = tail.rfind(sep)
        if 0 <= cut < len(tail) - 12:
            tail = tail[cut + len(sep):]
    return tail


def window(text: str) -> str:
    """The part of a long turn the text features read: its first quarter-window and last three quarters."""
    if len(text) > _WINDOW:
        return text[: _WINDOW // 4] + "\n" + text[-(_WINDOW * 3 // 4):]
    return text


def _text_features(text: str) -> tuple[list[float], frozenset[bytes] | set[bytes]]:
    """The text features of the last user turn, in ``FEATURE_NAMES`` order, and its word set."""
    n = len(text)
    if n == 0:
        return [0.0] * _N_TEXT, _NO_WORDS
    text = window(text)
    m = len(text)
    raw = _clean(text)
    low = text.lower()
    toks = _tokens(raw)
    words = set(toks)
    n_tok = len(toks) or 1
    fam = [0] * len(_FAMILIES)
    for hit in words & _KEYWORDS:
        for i in _FAMILY_OF[hit]:
            fam[i] += 1
    letters = len(raw) - len(raw.translate(None, _LETTERS))
    upper = len(raw) - len(raw.translate(None, _UPPER))
    digits = len(raw.translate(None, _NOT_DIGIT))
    special = raw.translate(None, _NOT_SPECIAL)
    operators = len(special) - len(special.translate(None, _OPERATORS))
    non_ascii = len(raw) > m
    equation = 0.0
    if operators:
        equation = _lg(_count_any(raw.translate(_SHAPE), _EQUATION_SHAPES))
    latex = 0.0
    if b"\\" in special or b"{" in special or b"$$" in special:
        latex = _lg(_count_any(text, _LATEX_MARKERS) + text.count("$") // 2)
    code_syntax = 0.0
    if fam[_CODE_HINT] or b"{" in special or b";\n" in special or b"==" in special:
        code_syntax = _lg(_count_any(text, _CODE_MARKERS))
    step = _lg(_count_any(low, _STEP_PHRASES)) if fam[_STEP_HINT] else 0.0
    stem, options = _options(text)
    last = _last_sentence(stem)
    head = last.split(None, 1)
    first = head[0].strip(_STRIP) if head else ""
    opener = toks[0].decode("utf-8", "replace") if toks else ""
    mc = [0.0] * 6
    if options:
        k = len(options)
        joined = "\n".join(options).lower()
        combos = sum(map(_has_combo, options)) if any(map(joined.__contains__, _COMBO_MARKERS)) else 0
        mc = [
            float(k),
            math.log1p(sum(map(len, options)) / k),
            sum(1 for o in options if _has_digit(o)) / k,
            combos / k,
            sum(1 for o in options if _is_pair(o)) / k,
            len(stem) / m,
        ]
    return [
        math.log1p(n),
        0.0,  # log_est_tokens: filled by ``extract`` (needs the context)
        0.0,  # log_context_chars: idem
        math.log1p(special.count(b"\n") + 1),
        letters / n_tok,
        sum(map(_NINE_LT, map(len, words))) / (len(words) or 1),
        upper / letters if letters else 0.0,
        # math
        digits / m,
        _lg(len(raw.translate(_DIGIT_RUNS).split())),
        _lg(operators),
        equation,
        latex,
        _lg(_count_any(raw, _MATH_UTF8)) if non_ascii else 0.0,
        _lg(fam[_MATH]),
        _lg(fam[_UNIT] + special.count(b"%")),
        # code
        1.0 if b"```" in special or b"~~~" in special else 0.0,
        code_syntax,
        _lg(fam[_CODE]),
        # reasoning and task shape
        _lg(fam[_REASON]),
        step,
        _lg(fam[_NEG] + (_count_any(text, _SHOUTED) if fam[_NEG] else 0)),
        _lg(fam[_LOGIC]),
        _lg(fam[_HYPO]),
        _lg(fam[_NARR]),
        1.0 if "1" in text and any(map(text.__contains__, _PAIRED_MARKERS)) else 0.0,
        _lg(special.count(b'"') // 2),
        _lg(fam[_CREATIVE]),
        _lg(fam[_CHAT]) if n < 200 else 0.0,
        _lg(fam[_FORMAT]),
        # question type
        1.0 if first in _FACTUAL or "which of the following" in last else 0.0,
        1.0 if first in _EXPLAIN or opener in _EXPLAIN else 0.0,
        1.0 if opener in _IMPERATIVE or first in _IMPERATIVE else 0.0,
        1.0 if first in _YES_NO and last.endswith("?") else 0.0,
        _lg(special.count(b"?")),
        1.0 if "___" in stem or stem.rstrip().endswith("...") else 0.0,
        # multiple choice
        *mc,
        # language
        (len(raw) - m) / m if non_ascii else 0.0,
        (len(raw) - len(raw.translate(None, _NON_LATIN_LEADS))) / m if non_ascii else 0.0,
    ], words


def extract(body: Any) -> list[float]:
    """Feature vector of a request body, in ``FEATURE_NAMES`` order; never raises."""
    return extract_with_words(body)[0]


def extract_with_words(body: Any) -> tuple[list[float], frozenset[bytes] | set[bytes]]:
    """``extract`` plus the set of lower-cased UTF-8 words of the last user turn; never raises."""
    v, words, _ = extract_with_text(body)
    return v, words


def extract_with_text(body: Any) -> tuple[list[float], frozenset[bytes] | set[bytes], str]:
    """``extract_with_words`` plus the ``window`` of the last user turn (what the router embeds); never raises."""
    query = ""
    try:
        req = request_text(body)
        query = req.query
        v, words = _text_features(req.query)
        context_chars = sum(map(len, req.context))
        v[1] = math.log1p((len(req.query) + context_chars) / 4.0)
        v[2] = _lg(context_chars)
        tools = fmt = effort = None
        if isinstance(body, Mapping):
            tools = body.get("tools", body.get("functions"))
            fmt = body.get("response_format")
            text_options = body.get("text")
            if fmt is None and isinstance(text_options, Mapping):
                fmt = text_options.get("format")
            effort = body.get("reasoning_effort")
            reasoning = body.get("reasoning")
            if effort is None and isinstance(reasoning, Mapping):
                effort = reasoning.get("effort")
        kind = fmt.get("type") if isinstance(fmt, Mapping) else fmt
        v += (
            _lg(req.assistant_turns),
            1.0 if req.has_system else 0.0,
            _lg(len(tools)) if isinstance(tools, (list, tuple)) else 0.0,
            1.0 if kind == "json_schema" else 0.0,
            1.0 if kind == "json_object" else 0.0,
            float(min(req.images, 4)),
            float(min(req.files_or_audio, 4)),
            _EFFORT.get(effort, 0.0) if isinstance(effort, str) else 0.0,
        )
    except Exception:  # a routing feature must never break a request
        return [0.0] * _N, _NO_WORDS, ""
    return v, words, window(query)


_EFFORT = {"minimal": 0.0, "none": 0.0, "low": 0.33, "medium": 0.67, "high": 1.0, "xhigh": 1.0}


def feature_dict(body: Any) -> dict[str, float]:
    """``extract`` as a name -> value mapping."""
    return dict(zip(FEATURE_NAMES, extract(body)))
