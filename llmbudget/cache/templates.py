r"""Templated near-misses: two prompts that share a long template but carry different data.

Most application prompts are a template with data inserted (a passage, a
scenario, a name, an amount, a code block). Two such prompts share most of
their words, so embeddings and the verifier see them as the same question;
answering one with the other's answer answers another question.

:class:`TemplateGuard` aligns the two texts' tokens. When they share at least
``min_shared_tokens`` tokens (a template), every token outside the shared part
must carry no content: each differing segment may only differ in articles,
courtesy or emphasis fillers, sentence punctuation, quotes around prose, "could"
for "can", or case a user may drop ("USA" and "usa"). A different (or moved) word, number, name, symbol or code token means
different data, and the pair is not a hit whatever its score: pronouns, question
words, modals, "and"/"or", "than", tense and plural endings all change what is
asked.

At any length, two texts with the same words and numbers in the same order
that differ in a symbol or in case a user would not drop ("12 - 5" and "12 / 5", "-7" and "7", "CO" and
"Co", ``\s`` and ``\S``, ``xs[1]`` and ``xs[1:]``, ``user.name`` and ``user.Name``) are not a hit either: an operator,
a sign, a bracket or an acronym is all that differs, and it carries the question. Code (inside backticks or a
fence) is read exactly, sentence punctuation is soft only where a space or the end follows its run (``data?.user``),
text in double quotes keeps its punctuation, and a few words whose capital changes them ("polish" and "Polish",
"us" and "US") are not folded past a sentence's start.
Nor are texts that differ in one word swapped for another of a closed class or
its opposite ("Monday" and "Tuesday", "km" and "miles", "into" and "from", "all" and
"most", "legal" and "illegal"), or in two words or phrases trading places
("Argentina beat France", "US dollars in Swiss francs", "orders per customer"), whatever courtesy opens or
closes the request; nor, in code or SQL, texts that differ in one name's plural ("FROM users", "FROM user").

Some rules hold whatever else is reworded, template or not: two texts that both quantify must quantify
alike ("all birds" and "most birds"; "some", "many" and "any" are left free); two comparisons with the same
comparative must not compare the same things the other way round ("C++ faster than Rust", "Rust faster than
C++"); neither text may use an opposite the other replaces ("keep the changes", "discard the changes"), nor
another aggregate ("sums column B", "averages column B"); two texts that each quote a short string the other
does not ('delivered', 'shipped') ask about other data; so does one that asks for exactly a number of things
the other never names ("any of the numbers", "exactly two of the numbers"), two that go between the same two
things the other way round ("Berlin to Rome", "Rome to Berlin") and one that negates where the other does not
("who placed an order", "who have not placed an order"; a "why not" asking for both sides aside).

And two texts with the same words (as :func:`same_text` reads them) but for courtesy set off from the request
("Hey,", "Please summarise ...", "..., thanks!") are the same question, whatever a scorer makes of them
(:meth:`TemplateGuard.same_question`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = [
    "DEFAULT_MAX_SEMANTIC_CHARS",
    "DEFAULT_MIN_SHARED_TOKENS",
    "DEFAULT_MIN_SHARED_TOKENS_MULTILINE",
    "SEMANTIC_CHARS_CEILING",
    "TemplateGuard",
]

DEFAULT_MIN_SHARED_TOKENS = 20
"""Shared tokens from which two one-line texts count as one template (more words than 90% of Quora questions)."""

DEFAULT_MIN_SHARED_TOKENS_MULTILINE = 8
"""The same for two texts that both span several lines (options, a passage, a letter, code: a template's layout)."""

DEFAULT_MAX_SEMANTIC_CHARS = 500
"""Longest text the semantic tier matches (longer ones use the exact tier only); see ``CacheStore``."""

SEMANTIC_CHARS_CEILING = 100_000
"""Longest text the semantic tier ever matches, whatever ``max_semantic_chars`` says (None included): embedding
and verifying a text costs CPU and memory in proportion to its length (a 10 MB message took half a minute)."""

_TOKENS = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]|\s+")
_SENTENCE = frozenset("?.,!:;")  # sentence punctuation: soft where a space or the end follows it
_APOSTROPHES = frozenset("'’")  # soft between two letters (a contraction or a possessive)
_CLOSING = frozenset(")]}\"'’”")
_OPENING = frozenset("([{\"'‘“")
_QUOTES = frozenset("\"'‘’“”")
_DOUBLE_QUOTES = frozenset("\"“”")
_JOINERS = frozenset("-'’")  # a word joined to another by these is still in prose
_HARD_IN_CODE = frozenset(",:;")  # in code, ``{1: 2}`` is not ``{1, 2}``
# Code's own syntax (not a semicolon, which prose uses too): where ``, : ;`` and runs of spaces are data, and a
# name's plural is another name
_SYNTAX = re.compile(r"[={}<>`]|\w\((?!s\)|es\)|ies\))|\b(?:SELECT|FROM|WHERE|JOIN|INSERT|UPDATE|DELETE)\b").search
# a quoted string (its spacing is data); not the apostrophes of "What's" and "Bob's"
_QUOTED = re.compile(r"(?<!\w)'[^'\n]*'(?!\w)|\"[^\"\n]*\"|“[^”\n]*”|(?<!\w)‘[^’\n]*’(?!\w)")
_CODE_SPANS = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)
# Words whose capital changes what they mean, so that a user typing one for the other asks something else
# ("polish silver", "Polish silver"; "us", "US"; "2 ms", "2 Ms"; "go", "Go"). Other capitals a user may drop.
_CAPITONYMS = frozenset("us polish bill ms may march august turkey china will mark rose frank jack nice mobile "
                        "reading bath job hamlet amazon apple windows word chrome edge go swift rust ruby java".split())
_SOFTISH = _SENTENCE | _QUOTES
# Short English words that are also acronyms, typed in capitals: "IT" is not "it", "WHO" not "who", "RAM" not
# "ram". Other acronyms a user types in lower case as often ("usa", "dna", "csv", "nato"): a word in capitals and
# the same in lower case are one word, as any other case a user may drop ("5 PM", "5 pm"; "am" is the word).
_WORD_ACRONYMS = frozenset("""it its and or not who what when why how can may will shall us we our is are was be do
    did does has had if so on in at to of for by as up an all any no yes one two sat sun net web war win top tip tap
    tab tag tan tea ten toe ton toy try use van vet via way wet zip zoo act add age aid aim air ale ant ape arc arm
    art ash ask ate awe axe bad bag ban bar bat bay bed bee bet bid big bin bit bow box boy bud bug bun bus but buy
    cab cam cap car cat cod cog con cop cot cow cry cub cue cup cut dab dad dam day den dew did die dig dim dip doc
    doe dog don dot dry due dug dye ear eat ebb egg ego elf elk elm end era eve eye fad fan far fat fax fed fee few
    fig fin fit fix fly fog fox fry fun fur gag gal gap gas gel gem get gig gin god got gum gun gut guy gym ham hat
    hen her hex hid him hip his hit hog hop hot hub hue hug hum hut ice ill ink inn ion ire ivy jab jam jar jaw jet
    jig job jog joy jug key kid kin kit lab lad lag lap law lay led leg let lid lie lip lit log lot low mad man map
    mat max men met mid mix mob mod mom mop mud mug nag nap new nod nor now nut oak oar oat odd off oil old opt orb
    ore out owe owl own pad pal pan par pat paw pay pea peg pen pet pie pig pin pit ply pod pop pot pro pub pun pup
    put rag ram ran rap rat raw ray red rep rib rid rim rip rob rod rot row rub rug rum run sad sag saw say sea see
    set sew she shy sin sip sir sit six ski sky sly sob sod son sow soy spa spy sub sum tar tax the tie tin toe too
    tub tug two urn vat vow wag was wax who why wig wit woe won wow yak yam yet zap zen also back bank base basic bear
    beat bell best bill bird blue boot boss cafe call calm care cash cast chip city club coal code cold cool cope
    core cost crew dare dash data dawn deal dear deep desk dial diet disk dock dome door dose down drop drum dual
    duck dust each earn ease east easy echo edge edit else even ever exam exit face fact fail fair fall fame farm
    fast fate fear feed feel file fill film find fine fire firm fish five flag flat flow fold font food fool foot
    form fort four free from fuel full fund gain game gate gear gift girl give glad goal gold golf good grid grip
    grow half hall hand hang hard harm hate have head heal hear heat help here hero hide high hill hint hire hold
    hole home hook hope host hour huge hunt idea into iron item jazz join joke jump just keep kind king kiss lack
    lady lake lamp land lane last late lead leaf lean left lens less life lift like line link list live load loan
    lock long look loop lord lose loss lost love luck made mail main make male mall many mark mask mass mate meal
    mean meat meet menu mild milk mind mine miss mode mood moon more most move much must name near neck need news
    next nice nine none norm nose note okay once only open pace pack page paid pain pair palm park part pass past
    path peak pick pile pink pipe plan play plot plug plus poem pole poll pool poor port pose post pour pray pull
    pump pure push race rage rain rank rare rate read real rear rely rent rest rice rich ride ring rise risk road
    rock role roll roof room root rope rose rule rush safe said sail sale salt same sand save scan seal seat seed
    seek self sell send ship shop shot show shut sick side sign silk sing sink site size skin slip slow snap snow
    soap sock soft soil sole song soon sort soul spin spot star stay step stop such suit sure swim tail take tale
    talk tall tank tape task team tear tech tell tend term test text than that them then they thin this tide tile
    time tiny tire told tone tool tour town tree trim trip true tube tune turn twin type unit upon used user vary
    vast very view vote wage wait wake walk wall want ward warm wash wave weak wear week well went were west what
    when whom wide wife wild will wind wine wing wire wise wish with wolf wood word work wrap yard yeah year your
    zero zone smart scam spam swat aids apt mac rom""".split())
# Words that do not change what is asked: articles, courtesy and emphasis fillers. Nothing else: a pronoun,
# a question word, a modal, a conjunction or a comparison word in a template's slot is its data.
_FILLERS = frozenset("a an the please kindly thank thanks thx cheers hey hi hello really just actually very also".split())
# Courtesy that opens or closes a request ("Hey,", "Please", "Thank you.", "Cheers."): not part of what is asked.
_OPENERS = frozenset("hey hi hello please kindly".split())
_CLOSERS = frozenset("please thanks thx cheers".split())
_POLITE = {"could": "can", "would": "will"}  # "Could you tell me" asks what "Can you tell me" asks
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?\Z").match  # 1,000 or 12,345.5: a comma that groups digits


_CODE = "\x00"  # marks a capitalised word touching code (``user.Name``, ``A[i]``): its case is compared exactly
_DATA = "\x01"  # marks a payload's word: its case is compared exactly ("paris", "Paris"), its key read as a word's
_MARKS = frozenset((_CODE, _DATA))


def _in_prose(text: str, i: int, step: int, brackets: frozenset[str]) -> bool:
    """Whether ``text[i]`` (the character beside a word) leaves the word in prose: a space, the text's end,
    sentence punctuation, a hyphen or an apostrophe ("Coca-Cola", "India's"), or a quote or bracket with a
    space or the end beyond it."""
    char = text[i] if 0 <= i < len(text) else " "
    if char.isspace() or char in _JOINERS or (step > 0 and char in _SENTENCE):
        return True
    if char in brackets:
        i += step
        char = text[i] if 0 <= i < len(text) else " "
        return char.isspace() or (step > 0 and char in _SENTENCE)
    return False


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds code: fenced blocks (an unclosed fence runs to the end) and inline backtick spans."""
    if "`" not in text:
        return []
    return [m.span() for m in _CODE_SPANS.finditer(text)]


def _run_end(text: str, i: int) -> int:
    """The index after the run of sentence punctuation that starts at ``i``."""
    end = len(text)
    while i < end and text[i] in _SENTENCE:
        i += 1
    return i


# Where a text's payload begins: after its first colon that ends a word ("Is this a comma splice: I went home, I
# slept.", "Transcript:\n..."). There the text is data, as an app sends it: its punctuation, its capitals and its
# courtesy are what is asked about. (Not after a question that more text follows, "What is X? Explain briefly.",
# nor at a line break, which an app's greeting or a user's own layout may add above the same prompt; after a
# question that works on the text after it, its words are data, see _asked_payload_differs.)
_PAYLOAD = re.compile(  # not "10:30", "https://", "std::"; "**Text:** ...", 'French:"I saw ..."', "anglais : J'ai",
    r"(?<=[\w)])[ \t]?(?::[*_]*(?:[ \t]+|[ \t]*\r?\n\s*|(?=[\"'“‘]))|：[ \t]*)(?=\S)")  # "(to French):", "英文："


def _payload_start(text: str) -> int:
    """The index where ``text``'s payload begins (see :data:`_PAYLOAD`); past the end when it has none."""
    match = _PAYLOAD.search(text)
    return match.end() if match else len(text) + 1


def _factorial(text: str, start: int) -> bool:
    """Whether the "!" at ``start`` may be a number's factorial: right after a digit ("20!", "How many trailing
    zeros in 100!"; so is "turning 60!", whose "!" is kept as data too)."""
    return text[start] == "!" and start > 0 and text[start - 1].isdigit()


def _word_before(text: str, start: int) -> str:
    """The word before ``text[start]`` (spaces skipped), in lower case (read in place: a long text is not copied
    for each symbol in it)."""
    end = start
    while end and text[end - 1].isspace():
        end -= 1
    i = end
    while i and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return text[i:end].lower()


def _next_char(text: str, i: int) -> str:
    """The first character at or after ``i`` that is not a space ("" at the end), read in place."""
    end = len(text)
    while i < end and text[i].isspace():
        i += 1
    return text[i : i + 1]


# Words after which a symbol standing alone is named, not written: "what does . match", "the ! operator",
# "between ! and ?", "ending in ?", "starting with !".
_NAMING = frozenset("does do did the a an and or between in with without is are of means mean use uses using like "
                    "as than vs versus after before character char symbol sign operator on by at to from for into "
                    "about type typing escape escaping add adding remove removing trailing leading print printing "
                    "replace replacing split splitting insert inserting delete deleting strip find match matches "
                    "matching contains contain ending starting end start put".split())


# Words that make a letter's case what is asked about: "the ASCII code of the letter A" is not "... of a" (65 and
# 97), "Convert A to binary" not "Convert a to binary"; in "words that start with the letter A" it is no matter.
_CASED = re.compile(r"(?i)\b(?:ascii|unicode|code ?points?|utf-?(?:8|16|32)|binary|hex(?:adecimal)?|bytes?|ord|chr"
                    r"|key ?codes?|upper ?case|lower ?case|case[- ]sensitive|capital letters?|regexp?)\b").search


def _shouting(text: str) -> bool:
    """Whether ``text`` is typed in capitals throughout (not one acronym): its case says nothing."""
    return text == text.upper() and sum(c.isalpha() for c in text) >= 8


def _scan(text: str, payload_case: bool = True) -> tuple[str, ...]:
    """Words, numbers and symbols of ``text``, soft punctuation dropped (see :func:`_tokens`)."""
    shouting = _shouting(text)
    payload = _payload_start(text)
    last = len(text.rstrip())  # where the text's trailing spaces begin
    out: list[str] = []
    append = out.append
    end = len(text)
    code = _code_spans(text)
    code_like = _code_like(text)
    quotes: list[tuple[int, int]] | None = None  # quoted strings, found when a run of spaces needs them
    quoted = False  # inside quotes around prose: the quoted text's punctuation is its data
    named = 0  # the end of a run of symbols named in prose ("what does ?? mean")
    cased = functools.cache(lambda: _CASED(text) is not None)  # a letter's case asked about (read once, if needed)
    for match in _TOKENS.finditer(text):
        token = match.group()
        first = token[0]
        start, after = match.start(), match.end()
        if first.isspace():  # spacing inside the text: line breaks, indents, runs of spaces are data
            if start == 0 or after == end:
                continue
            if code and any(s <= start < e for s, e in code):  # code's every space (``'a b'``, ``x = 1``)
                append(token.replace("\r\n", "\n"))
            elif "\n" in token:  # a line break and the next line's indent (a poem's lines, YAML, code)
                append("\n" + token.rsplit("\n", 1)[1])
            elif len(token) > 1:  # in code or a quoted string ("'a  b  c'"), two spaces are not one; a typo elsewhere
                if quotes is None:
                    quotes = [m.span() for m in _QUOTED.finditer(text)]
                if code_like or any(s <= start < e for s, e in quotes):
                    append(token)
            continue
        if token in (_CODE, _DATA):  # a NUL in the text is a symbol, never a marker: doubled, compared exactly
            append(_CODE + token)
            continue
        if code and any(s <= start < e for s, e in code):  # code: every symbol counts, and every capital
            append(_CODE + token if token.isalpha() and not token.islower() else token)
            continue
        if first in _SOFTISH:
            before = text[start - 1] if start else " "
            following = text[after] if after < end else " "
            if start >= payload and not (first in _SENTENCE and _run_end(text, after) >= last):
                append(token)  # the payload's punctuation, quotes and apostrophes are its data (not the text's last)
                continue
            if start < named:  # the rest of a symbol named in prose
                append(token)
                continue
            if first in _SENTENCE and not quoted and not _factorial(text, start):
                beyond = _run_end(text, after)
                if before.isspace() and beyond < end and text[beyond].isspace() \
                        and _next_char(text, beyond).islower() and _word_before(text, start) in _NAMING:
                    named = beyond  # a symbol named in prose: "what does . match", "the ! operator", "?? mean"
                    append(token)  # (not French spacing, "la France ? réponds", nor "apples , oranges")
                    continue
                word_end = before.isalnum() or before in _CLOSING or before in _SENTENCE
                spaced = beyond < end and text[beyond].isspace()
                if (_line_end(text, beyond) and (word_end or before.isspace())) or (spaced and (
                        (word_end and not (code_like and first in _HARD_IN_CODE))
                        or (before.isspace() and not code_like))):  # "France ? Tell me" in prose; not "x ? a"
                    continue  # "fast?", "fast??", "Python ?", "Python..." (not ".*?", "xs[1:]", "data?.user", "x ? a")
            elif first in _APOSTROPHES and before.isalnum() and following.isalnum():
                continue  # "What's", "India's"
            if first in _QUOTES:
                if (before.isspace() or before in _SENTENCE) and following.isalnum():  # an opening quote
                    # single quotes too ("Is the comma needed in 'However, it rained'?"), not a decade's "'80s"
                    quoted = quoted or not (first in _APOSTROPHES and following.isdigit())
                    continue
                if (before.isalnum() or before in _SENTENCE) and (following.isspace() or following in _SENTENCE):
                    quoted = False
                    continue  # quotes around prose: 'What does "carpe diem" mean?' (not print('name'))
            append(token)
        elif shouting:
            append(token.lower())
        elif payload_case and start >= payload and token.isalpha() and not _sentence_start(text, start):
            append(_DATA + token)  # the payload's words, but for a sentence's first: their case is data ("paris")
        elif token.islower() or not token.isalpha():  # most words, numbers, symbols, mixed identifiers: as they are
            append(token)
        elif token in ("I", "A") and not (quoted or (text[start - 1 : start] in _QUOTES
                                                      and text[after : after + 1] in _QUOTES)
                                           or cased() or text[start - 1 : start] == "-"):
            append(token.lower())  # (not ord('A'), "the ASCII code of A", nor a flag: "grep -I" is not "grep -i")
        else:  # a capital: kept, compared loosely in prose and exactly beside code
            prose = _in_prose(text, start - 1, -1, _OPENING) and _in_prose(text, after, 1, _CLOSING) \
                and not (out and out[-1][:1].isdigit() and len(token) <= 5 and not token[1:].islower()
                         and token.lower() not in ("am", "pm"))  # a unit's case is data: "2 mW", "2 MW"
            # compared exactly beside code, and for a word whose capital changes it past a sentence's start
            # ("Polish" is not "polish", "US" not "us")
            exact = not prose or (token.lower() in _CAPITONYMS and not _sentence_start(text, start))
            append(_CODE + token if exact else token)
    return tuple(out)


def _sentence_start(text: str, i: int) -> bool:
    """Whether the word at ``i`` opens a sentence (the text, a line, or after ". ", "? ", "! ", ": ")."""
    i -= 1
    while i >= 0 and text[i] in " \t\"'‘“(":
        i -= 1
    return i < 0 or text[i] in ".?!:\n"


def _line_end(text: str, i: int) -> bool:
    """Whether only spaces or tabs stand between ``text[i]`` and the end of its line (or of the text)."""
    end = len(text)
    while i < end and text[i] in " \t":
        i += 1
    return i >= end or text[i] in "\r\n"


_memo_scan = functools.lru_cache(maxsize=4096)(_scan)


def _tokens(text: str, payload_case: bool = True) -> tuple[str, ...]:
    """Words, numbers and symbols of ``text`` with soft punctuation dropped: sentence punctuation outside double
    quotes where a space or the end follows its run (``.*?`` keeps its ``?``, ``xs[1:]`` its ``:``, ``data?.user``
    its ``?``), an apostrophe between two letters, quotes around prose; nothing inside backticks or a fence.
    Capitals are kept: :func:`_same_token` compares them; a payload's exactly (``payload_case``; off where one of
    two texts is typed in capitals throughout, whose case says nothing). Texts up to 2,048 characters are memoised (a lookup compares its query with each candidate; stored texts come back)."""
    return _memo_scan(text, payload_case) if len(text) <= 2048 else _scan(text, payload_case)


def _same_token(x: str, y: str, acronyms: bool = True) -> bool:
    """Whether two tokens are the same word: equal, or in prose the same but for case where one of them is
    typed in lower case or only their first letters differ ("USA" and "usa", "Python" and "python"; not "IT" and
    "it", an acronym and a word, nor "CO" and "Co", not ``S`` and ``s``, not a word touching code)."""
    if x == y:
        return True
    if x[:1] == _DATA or y[:1] == _DATA:  # a payload's word: the same letters in the same case
        return x.lstrip(_DATA) == y.lstrip(_DATA)
    if len(x) < 2 or x[0] in _MARKS or y[0] in _MARKS or x.lower() != y.lower():
        return False
    if acronyms and ((x.isupper() and y.islower()) or (x.islower() and y.isupper())) and x.lower() in _WORD_ACRONYMS:
        return False  # an acronym is not the word: "What is IT?" and "What is it?", "RAM" and "ram", "WHO", "AND"
    return x.islower() or y.islower() or (x[1:].islower() and y[1:].islower())


def _same(a: Sequence[str], b: Sequence[str], acronyms: bool = True) -> bool:
    """Whether two token sequences are the same text (:func:`_same_token` for each)."""
    return len(a) == len(b) and all(_same_token(x, y, acronyms) for x, y in zip(a, b, strict=True))


def _cased(a: str, b: str) -> bool:
    """Whether both texts use capitals, so that a word in capitals in one and in lower case in the other says
    something ("What is IT?" and "What is it?"); a text typed all in lower case says nothing by its case ("how
    much ram do i need"), as one typed all in capitals does not."""
    return any(c.isupper() for c in a) and any(c.isupper() for c in b)


def same_text(a: str, b: str) -> bool:
    """Whether two texts are the same question as the guard reads them: spacing, sentence punctuation, quotes
    around prose and the case a user may drop folded; "CO" is not "Co", "12 - 5" not "12 / 5"."""
    case = not (_shouting(a) or _shouting(b))
    return a == b or _same(_tokens(a, case), _tokens(b, case), _cased(a, b))


def _keys(tokens: Sequence[str]) -> list[str]:
    """Tokens to align and compare: prose words in lower case, words beside code as they are."""
    return [t if t[0] == _CODE else t[1:].lower() if t[0] == _DATA else t.lower() for t in tokens]


def _bare(keys: Sequence[str]) -> list[str]:
    """The words and numbers of ``keys`` in lower case, without their symbols."""
    out = []
    for key in keys:
        word = key[1:].lower() if key[0] == _CODE else key
        if word[0].isalnum() or word[0] == "_":
            out.append(word)
    return out


# Closed classes: two different members of one class are two different data, never a rewording ("Monday" and
# "Tuesday", "km" and "miles", "into" and "from"). Each group lists the spellings of one member.
_CLASSES: tuple[tuple[tuple[str, ...], ...], ...] = tuple(
    tuple(tuple(group.split()) for group in groups.split(" | "))
    for groups in (
        "monday mon | tuesday tue tues | wednesday wed | thursday thu thur thurs | friday fri | saturday sat"
        " | sunday sun",
        "january jan | february feb | march mar | april apr | may | june jun | july jul | august aug"
        " | september sep sept | october oct | november nov | december dec",
        "today | tomorrow | yesterday | tonight",
        "row rows | column columns col cols",
        "mm millimeter millimeters millimetre millimetres | cm centimeter centimeters centimetre centimetres"
        " | m meter meters metre metres | km kilometer kilometers kilometre kilometres kms"
        " | in inch inches | ft foot feet | yd yard yards | mi mile miles",
        "mg milligram milligrams | g gram grams | kg kilogram kilograms kilo kilos | oz ounce ounces"
        " | lb lbs pound pounds | ton tons tonne tonnes",
        "ms millisecond milliseconds | s sec secs second seconds | minute minutes | h hr hrs hour hours"
        " | day days | week weeks | month months | year years",
        "ml milliliter milliliters millilitre millilitres | l liter liters litre litres | gallon gallons"
        " | cup cups | pint pints",
        "celsius centigrade | fahrenheit | kelvin",
        "b byte bytes | kb kilobyte kilobytes | mb megabyte megabytes | gb gigabyte gigabytes"
        " | tb terabyte terabytes",
        "usd dollar dollars | eur euro euros | gbp sterling | jpy yen | inr rupee rupees",
        "north | south | east | west",
        "english | french | spanish | german | italian | portuguese | dutch | russian | chinese | mandarin"
        " | japanese | korean | arabic | hindi",
        "and | or | nor",
        "to into | from",
        "before | after",
        "above over | below under",
        "more | less fewer",
        "faster quicker | slower",
        "fast quick | slow",
        "cheap cheaper cheapest | expensive",
        "ascending asc | descending desc",
        "keep | discard",
        "higher | lower",
        "larger bigger | smaller",
        "older elder | younger", "taller | shorter", "earlier sooner | later", "heavier | lighter",
        "warmer hotter | colder cooler", "stronger | weaker", "richer wealthier | poorer",
        "increase increases | decrease decreases",
        "maximum max | minimum min",
        "sum sums summed summing | average averages averaged averaging avg | median medians"
        " | count counts counted counting",  # aggregates ("mean" and "total" are other words too)
        "first | last",
        "one | two | three | four | five | six | seven | eight | nine | ten | eleven | twelve | thirteen | fourteen"
        " | fifteen | sixteen | seventeen | eighteen | nineteen | twenty | thirty | forty | fifty | sixty | seventy"
        " | eighty | ninety | dozen | hundred | thousand | million | billion",
        "true | false",
        "yes | no",
        "am | pm",  # "5am", "5 pm" ("5 a.m." and "5 p.m." differ in a letter: see _opposed)
        "left | right",
        "buy | sell",
        "import | export",
        "inside | outside",
        "win | lose",
        "always | never",
        "all every each | most many some any several | few least | none",  # coarse: "some" asks what "many" asks
        "best | worst",
        "same | different",
    )
)
_MEMBER: dict[str, tuple[int, int]] = {}
for _c, _groups in enumerate(_CLASSES):
    for _g, _group in enumerate(_groups):
        for _spelling in _group:
            _MEMBER.setdefault(_spelling, (_c, _g))
_NEGATING = ("un", "in", "im", "il", "ir", "non", "dis", "de", "anti")  # "decompress", "antivirus"
_SHORTHAND = frozenset("iu")  # "i" and "u" stand for "I" and "you" in a text typed fast


def _opposed(x: str, y: str) -> bool:
    """Two different members of one closed class, two different letters ("option a" and "option b", "solve for
    x" and "... y", "5 a.m." and "5 p.m."; not "u" for "i", a texter's "How do u reset..."), or a word and its
    negation by prefix ("legal", "illegal")."""
    if len(x) == 1 and len(y) == 1 and x.isalpha() and y.isalpha():
        return x != y and x not in _SHORTHAND and y not in _SHORTHAND
    mx, my = _MEMBER.get(x), _MEMBER.get(y)
    if mx is not None and my is not None and mx[0] == my[0] and mx[1] != my[1]:
        return True
    short, long = (x, y) if len(x) < len(y) else (y, x)
    return len(short) > 3 and any(long == p + short or long == p + "-" + short for p in _NEGATING)


# "A and B" asks what "B and A" asks; "how tall is Everest" what "Everest is how tall" asks
_SYMMETRIC = frozenset("and or vs versus & is are was were a an the".split())


def _trimmed(words: Sequence[str]) -> Sequence[str]:
    """``words`` without the courtesy that opens or closes a request ("hey", "please"; "thanks", "thank you")."""
    start, end = 0, len(words)
    while start < end and words[start] in _OPENERS:
        start += 1
    while end > start:
        if words[end - 1] in _CLOSERS:
            end -= 1
        elif end - start >= 2 and words[end - 2] == "thank" and words[end - 1] == "you":
            end -= 2
        else:
            break
    return words[start:end]


# Courtesy set off from the request in the raw text: a greeting with its comma or "!", a "please" before a word
# in lower case, a closing "please" or "thanks" after sentence punctuation. Not "Hello world", "Hey Jude",
# "Please Please Me", "Spanish for please", "Reply with one word: thanks", ``hello.py``.
_OPENING_COURTESY = re.compile(r"\A\s*(?:(?i:hey|hi|hello)\s*[,!]|(?i:please|kindly)(?=\s+[a-z]))\s*")
_CLOSING_COURTESY = re.compile(r"(?<=[,.!?])\s*(?i:please|thanks|thx|cheers|thank\s+you)\s*[.!?]*\s*\Z")


def _courtesy_off(text: str) -> str:
    """``text`` without the courtesy that opens or closes it ("Hey, please summarise ... Thanks!"); a payload's
    closing courtesy is its data ("Translate to French: Sit down, please.")."""
    for _ in range(2):
        text = _OPENING_COURTESY.sub("", text, count=1)
    if _payload_start(text) <= len(text):
        return text
    return _CLOSING_COURTESY.sub("", text, count=1)


def _differing(a: Sequence[str], b: Sequence[str]) -> list[int]:
    """Where two word lists of one length differ (none when their lengths differ)."""
    if len(a) != len(b):
        return []
    return [k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


def _swapped(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether ``b`` (bare words) is ``a`` with one word swapped for an opposed one ("Monday" and "Tuesday", "km"
    and "miles"), or with two words or spans trading places, not across a symmetric "and"/"or"/"vs"
    ("Argentina beat France" and "France beat Argentina", "1,000 US dollars in Swiss francs" and "1,000 Swiss
    francs in US dollars"). Neighbours trading places is word order ("learn Python fast")."""
    at = _differing(a, b)
    if not at:
        return False
    if len(at) == 1:
        return _opposed(a[at[0]], b[at[0]])
    if at[-1] - at[0] >= 64:  # the search below is cubic in the span: two phrases trading places are short
        return False
    # spans compared by their stems: "orders per customer" turned round is "customers per order"
    mid_a, mid_b = [_stem(w) for w in a[at[0] : at[-1] + 1]], [_stem(w) for w in b[at[0] : at[-1] + 1]]
    n = len(mid_a)
    for x in range(1, n - 1):  # a's first span, b's last
        if mid_a[:x] != mid_b[n - x :]:
            continue
        for y in range(1, n - x):  # a's last span, b's first; what stays between them is not empty
            if mid_a[n - y :] == mid_b[:y] and mid_a[x : n - y] == mid_b[y : n - x]:
                between = set(mid_a[x : n - y])
                if not (between <= _SYMMETRIC and not between <= _FILLERS):
                    return True
    return False


def _stem(word: str) -> str:
    """``word`` without a plural ending ("orders", "boxes", "queries"); short words and "-ss" as they are."""
    if len(word) <= 3 or word[-1] != "s" or word.endswith("ss"):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    return word[:-1]


def _plural_only(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether ``b`` (bare words) is ``a`` with one word's plural ending added or dropped ("users", "user")."""
    at = _differing(a, b)
    return len(at) == 1 and _stem(a[at[0]]) == _stem(b[at[0]])


# Quantifiers: a question about "all" of something is not one about "most" of it, whatever else is reworded.
# "some", "many" and "any" are left out: users trade them freely ("What are some good..." and "What are good...").
_QUANTIFIERS = {w: g for g, words in enumerate(("all every each", "most majority", "few", "none", "exactly"))
                for w in words.split()}
_NUMBER_WORDS = frozenset("one two three four five six seven eight nine ten dozen hundred".split())
_DIGITS = {w: str(n) for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    " eighteen nineteen twenty".split())} | {w: str(n) for n, w in zip(
        range(30, 100, 10), "thirty forty fifty sixty seventy eighty ninety".split(), strict=True)}


def _quantifiers(words: Sequence[str]) -> frozenset[int]:
    """The quantifier groups ``words`` (bare, lower case) use; not "most" after "the" (a superlative), "all" in
    "all the time", "of all time" or "at all", "every time", "each other", nor "exactly" but before a number
    ("exactly two"; "What exactly does..." is emphasis)."""
    found = set()
    for i, word in enumerate(words):
        group = _QUANTIFIERS.get(word)
        if group is None:
            continue
        before, after = words[i - 1] if i else "", words[i + 1] if i + 1 < len(words) else ""
        if (word == "most" and before == "the") or (word == "all" and (after == "time" or before == "at"
                                                                        or words[i + 1 : i + 3] == ["the", "time"])) \
                or (word == "every" and after == "time") or (word == "each" and after == "other") \
                or (word == "exactly" and not (after[:1].isdigit() or after in _NUMBER_WORDS)):
            continue
        found.add(group)
    return frozenset(found)


def _quantifiers_differ(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether both texts quantify and not alike: "Can all birds fly?" and "Are most birds able to fly?"."""
    qa, qb = _quantifiers(a), _quantifiers(b)
    return bool(qa) and bool(qb) and qa != qb


def _is_number(word: str) -> bool:
    """Whether ``word`` (bare, lower case) is a number: digits, or a number word ("two", "twelve", "dozen")."""
    return word[:1].isdigit() or word in _DIGITS or word in _NUMBER_WORDS


def _number(word: str) -> str:
    """``word`` as digits when it is a number ("two" and "2", "1,000" and "1000"), else as it is."""
    return _DIGITS.get(word) or (word.replace(",", "") if word[:1].isdigit() and _THOUSANDS(word) else word)


def _thousands(number: str) -> str:
    """``number`` (digits, as :func:`_number` gives them) times 1,000: the "1" of "1k" (a word of its own) and "1000"
    are one amount, "2.5" of "2.5k" and "2500" too; ``number`` as it is where it is no plain decimal."""
    whole, _, fraction = number.partition(".")
    if not (whole.isascii() and whole.isdigit() and (not fraction or (fraction.isascii() and fraction.isdigit()))
            and len(fraction) <= 3):
        return number
    return str(int(whole) * 1000 + int(fraction.ljust(3, "0")))


def _exact_counts(words: Sequence[str]) -> set[str]:
    """The numbers ``words`` (bare, lower case) say "exactly" before ("exactly two", "exactly 3"), as digits."""
    return {_number(words[i + 1]) for i in range(len(words) - 1) if words[i] == "exactly" and _is_number(words[i + 1])}


def _exact_count_dropped(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether one text asks for exactly a number of things and the other never says that number: "True if any
    of the numbers are negative" and "True when exactly two of the numbers are negative" ("exactly 2" and "exactly
    two" are one number)."""
    for x, y in ((a, b), (b, a)):
        counts = _exact_counts(x)
        if counts and not counts <= {_number(w) for w in y}:
            return True
    return False


# The bound a text puts on a number: "more than 5", "over 5" and "5 or more" ask another question than "under 5",
# "up to 5" or "exactly 5". Strict and not ("over 18", "18 and over") are one direction, as users trade them, but
# for 0, 1 and 2 ("more than one car", "at least one car"). Read before the number (a currency between them
# skipped) and after it, or after its unit ("5 or more", "18 years or older").
_BOUNDS_BEFORE: tuple[tuple[tuple[str, ...], str], ...] = tuple(
    (tuple(phrase.split()), bound) for bound, phrases in (
        (">=", "no less than | no fewer than | at least | a minimum of | minimum of | min | greater than or equal to"
               " | more than or equal to"),
        (">", "more than | greater than | higher than | exceeding | exceeds | exceed | over | above"),
        ("<=", "no more than | no greater than | at most | a maximum of | maximum of | up to | max"
               " | less than or equal to"),
        ("<", "less than | fewer than | lower than | under | below"),
        ("=", "exactly"),
    ) for phrase in phrases.split(" | "))
_BOUNDS_AFTER: dict[tuple[str, ...], str] = {
    **{(joined, w): ">=" for joined in ("or", "and") for w in ("more", "above", "over", "higher", "greater", "later",
                                                               "newer", "older", "up")},
    **{(joined, w): "<=" for joined in ("or", "and") for w in ("less", "fewer", "below", "under", "lower", "earlier",
                                                               "younger")},
}
_TURNED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "=": "="}  # "not more than 5" is "at most 5"
_DIRECTION = {">=": ">", ">": ">", "<=": "<", "<": "<", "=": "="}
_STRICT_FOR = frozenset(("0", "1", "2"))
_BOUND_WORDS = frozenset(w for phrase, _ in _BOUNDS_BEFORE for w in phrase) | {w for _, w in _BOUNDS_AFTER}
_CURRENCY = frozenset("rs inr usd us eur gbp aud cad jpy chf cny".split())  # (their symbols are no words)
_SUMMING = frozenset("add added adding sum summed summing total totalled totaling round rounded rounding scale scaled"
                     " scaling".split())  # "add up to 10" is a sum, "scale (it) up to 10,000" a target: no bound


def _bounds(words: Sequence[str], turn: bool) -> dict[str, set[str]]:
    """Per number ``words`` (bare, lower case) name (as digits: "two" is "2"), the bounds put on it (">=", ">",
    "<=", "<", "="; none for a bare number); ``turn``: a negation just before a bound turns it round ("must not be
    under 18")."""
    out: dict[str, set[str]] = {}
    for i, word in enumerate(words):
        if not _is_number(word):
            continue
        number = _number(word)
        found = out.setdefault(_thousands(number) if words[i + 1 : i + 2] == ["k"] else number, set())  # "1k"
        at = i - 1 if i and words[i - 1] in _CURRENCY else i  # "under Rs 15000"
        for phrase, bound in _BOUNDS_BEFORE:
            start = at - len(phrase)
            if start < 0 or tuple(words[start:at]) != phrase:
                continue
            if phrase == ("up", "to") and {_stem(w) for w in words[max(0, start - 2) : start]} & _SUMMING:
                break
            if turn and phrase[0] != "no" and any(_negator(words, j) for j in range(max(0, start - 2), start)):
                bound = _TURNED[bound]
            found.add(bound)
            break
        else:  # right after the number, or after its unit ("18 years or older", "3 bedrooms or more")
            after = _BOUNDS_AFTER.get(tuple(words[i + 1 : i + 3])) or _BOUNDS_AFTER.get(tuple(words[i + 2 : i + 4]))
            if after is not None:
                found.add(after)
    return {n: found if n in _STRICT_FOR else {_DIRECTION[b] for b in found} for n, found in out.items()}


def _bound_differs(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether both texts bound a number they both name, and the other way, whatever else is reworded: "exactly two
    of the numbers" and "at least two of them", "earn more than 50,000" and "earn at most 50000", "priced over 100
    dollars" and "up to $100". "More than", "over", "at least" and "5 or more" are one direction (but for 0, 1 and
    2); a number left bare in either text is no conflict ("a crowd of more than 10,000", "a crowd of 10,000";
    "hands over 66 notes", "delivers 66 messages"). A negation may or may not bear on a bound ("must not be over
    10 MB", "files over 10 MB are not accepted"): the bounds must differ read either way."""
    if not (_BOUND_WORDS.intersection(a) and _BOUND_WORDS.intersection(b)):
        return False
    for turn in (False, True):
        ba, bb = _bounds(a, turn), _bounds(b, turn)
        if not any(ba[n] and bb[n] and ba[n] != bb[n] for n in ba.keys() & bb.keys()):
            return False
    return True


def _direction_reversed(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether the two texts (bare words) go between the same two things the other way round, whatever else is
    reworded: "the cheapest flight Berlin to Rome" and "Cheapest Rome to Berlin flight", "convert USD into EUR"
    and "EUR into USD"; not a text that goes both ways itself ("Celsius to Fahrenheit and Fahrenheit to
    Celsius")."""
    ways_a, ways_b = _ways(a), _ways(b)
    return any((y, x) in ways_b and (x, y) not in ways_b and (y, x) not in ways_a for x, y in ways_a if x != y)


def _ways(words: Sequence[str]) -> set[tuple[str, str]]:
    """The (from, to) of each "X to Y" / "X into Y" in ``words``."""
    return {(words[i - 1], words[i + 1]) for i in range(1, len(words) - 1) if words[i] in _DIRECTED}


_DIRECTED = frozenset(("to", "into"))
_NEGATORS = frozenset("not never no cannot without nobody nothing neither nor none dont cant wont isnt arent wasnt"
                      " werent doesnt didnt shouldnt wouldnt couldnt havent hasnt aint"
                      # German, Dutch, French, Spanish, Portuguese, Italian, Russian: "Welche Kunden haben keine
                      # Bestellung aufgegeben?" was answered with the customers who have one
                      " nicht kein keine keinen keinem keiner keines nie niemals nichts niemand ohne"
                      " niet geen nooit niets zonder ne n pas jamais rien aucun aucune sans"
                      " nunca jamás jamas nada nadie ningún ningun ninguna ninguno sin tampoco"
                      " não nao ninguém ninguem nenhum nenhuma sem non mai niente nulla nessuno nessuna senza"
                      " не нет никогда ничего никто ни без".split())


def _negator(words: Sequence[str], i: int) -> bool:
    """Whether ``words[i]`` (bare, lower case) negates: "not", "never", "no", "without", ..., or the "t" of "n't" as
    the tokens split it ("don't"; not the "t" of "t-test")."""
    word = words[i]
    return word in _NEGATORS or (word == "t" and i > 0 and words[i - 1].endswith("n"))


def _negates(words: Sequence[str]) -> bool:
    """Whether ``words`` (bare, lower case) negate ("not", "n't", "never", "no", "without", "nobody", ...); not the
    "why not" or "or not" that asks for both sides ("Should healthcare be free? Why or why not?"), nor, in an
    English text, another language's short negation that is an English word or abbreviation too ("mac n cheese",
    "sin x", "non-profit", "sans-serif")."""
    english = not _ENGLISH.isdisjoint(words)
    return any(_negator(words, i) and not (w == "not" and i and words[i - 1] in _BOTH_SIDES)
               and not (english and w in _FOREIGN_SHORT) for i, w in enumerate(words))


# Negations of other languages that English texts hold as words of their own, and English words no text in those
# languages holds (not "a", "i", "in" or "do", which Italian, Spanish, Portuguese and German write too).
_FOREIGN_SHORT = frozenset("n ne pas sin sem mai non ni sans nie nada".split())
_ENGLISH = frozenset("the an is are was were be will should would could how what does of and for with from by on at "
                     "my you your our can it this that why which who some any about please give recommend write "
                     "tell explain show find get make use".split())


_BOTH_SIDES = frozenset(("why", "or"))


def _negation_differs(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether one text negates and the other does not: "customers that have placed any order" and "customers who
    have not placed an order"; in Chinese and Japanese, whose words the tokens do not split, by the negations they
    hold (:func:`_cjk_negations`: "为什么我的代码在Linux上能运行？" and "... 不能运行？")."""
    return _negates(a) != _negates(b) or _cjk_negations(a) != _cjk_negations(b)


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
# Chinese and Japanese negations (不 "not", 没 "have not", 未 "not yet", 非 "non-", 无 "without", 别 "don't";
# Japanese verb endings ない, ません, なかっ; Korean 않, 없, 못), and words that hold one without negating
# ("非常" very, "未来" future, "无论" no matter, "不过" however), which are taken out first.
_CJK_NEGATIONS = re.compile(r"[不没沒未非无無别別勿않없못]|ない|ません|なかっ|なけれ|なし|아니")
_CJK_NOT_NEGATING = re.compile(
    r"非常(?!规)|未来|未來|无论|無論|不过(?!如此)|不過|不同(?!意)|不错|不錯|不管|不断|不斷|不少|不久|不仅|不僅|差不多"
    r"|不好意思|对不起|對不起|是不是|有没有|有沒有|要不要|能不能|可不可以|好不好|对不对|對不對|会不会|會不會"
    r"|[区區差分特类類级級性识識告]别|[区區差分特类類级級性识識告]別|别人|別人|别的|別的|无线|無線|無料|非洲"
    r"|すみません|ませんか|少ない|危ない|잘못")


def _cjk_negations(words: Sequence[str]) -> int:
    """How many negations the Chinese, Japanese or Korean runs of ``words`` hold (see :data:`_CJK_NEGATIONS`)."""
    count = 0
    for word in words:
        if _CJK.search(word):
            count += len(_CJK_NEGATIONS.findall(_CJK_NOT_NEGATING.sub("", word)))
    return count


def _comparison_reversed(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether the two texts (bare words) compare the same two things the other way round: "Is C++ faster than
    Rust?" and "Is Rust faster than C++?" (the word after "than" in each stands before "than" in the other)."""
    for i in range(1, len(a) - 1):
        if a[i] != "than":
            continue
        for j in range(1, len(b) - 1):
            if b[j] == "than" and a[i - 1] == b[j - 1] and a[i + 1] != b[j + 1] \
                    and a[i + 1] in b[:j] and b[j + 1] in a[:i]:
                return True
    return False


def _payload_differs(a: str, b: str) -> bool:
    """Whether the two texts give one instruction (its content words alike) to payloads (see :data:`_PAYLOAD`)
    with other words, however short: "Translate to French: I saw a dog." and "... I saw the dog.", "Rate the
    sentiment: The food was very good." and "... The food was good.", "Solve: 2x + 3 = 7" and "... = 9" (a filler
    or a courtesy word is the payload's data too). Not after a label a user sets before their own words ("Quick
    question:", "Note:"), nor a question after its topic ("Theology: What are the best arguments for God's
    existence?"), which are reworded as any other, unless the instruction works on its payload ("Translate to
    French: Where is the dog?"). Two texts without a colon's payload are read by :func:`_asked_payload_differs`
    (a judgement asked as a question before its input)."""
    at, bt = _payload_start(a), _payload_start(b)
    if at > len(a) and bt > len(b):
        return _asked_payload_differs(a, b)
    if at > len(a) or bt > len(b):
        return False
    instruction = _content(_keys(_tokens(a[:at])))
    if " ".join(instruction) in _FRAMES:  # a label before the user's own words: "Quick question:", "Note:"
        return False
    if (a.rstrip().endswith("?") or b.rstrip().endswith("?")) and not _TASKS.intersection(instruction):
        return False  # a question after its topic: "Music: What's your favourite song right now?"
    return instruction == _content(_keys(_tokens(b[:bt]))) and _bare(_keys(_tokens(a[at:]))) != \
        _bare(_keys(_tokens(b[bt:])))


_ASKED = re.compile(r"\?+[ \t]*(?:\r?\n\s*)?(?=\S)")  # a question mark that more text follows


def _asked_payload_differs(a: str, b: str) -> bool:
    """Whether the two texts ask one question about their input, written after it, and give it inputs of other
    words: "Is this sentence correct? I went home." and "... I go home.", "Is this grammatical? She don't like
    it." (the colon's rule of :func:`_payload_differs`, with a question mark ending the instruction). Only where
    the question judges its input (a word of :data:`_JUDGED`: "sentence", "grammatical", "sentiment", "spam",
    ...): "What's the capital of France? I need it for homework.", "How do I fix this? My printer won't print." and
    "Is this normal? My cat sleeps all day." are a question and a remark, reworded as any other. There the
    input's punctuation and capitals count too, as a colon's payload's do ("Is this punctuated correctly? Its a
    nice day, isn't it?" and "... day isn't it?"); elsewhere the text after a question mark is not a payload (a
    surface paraphrase of a multiple-choice question drops the "?" before its options, or writes a scenario's "I"
    in lower case)."""
    ma, mb = _ASKED.search(a), _ASKED.search(b)
    if ma is None or mb is None:
        return False
    instruction = _content(_keys(_tokens(a[: ma.start()])))
    if not _JUDGED.intersection(instruction) or instruction != _content(_keys(_tokens(b[: mb.start()]))):
        return False
    # both inputs read as a colon's payload: their words, punctuation and capitals are what is judged ("Is this
    # punctuated correctly? Its a nice day, isn't it?" and "... day isn't it?")
    return not _same(_tokens(_INPUT + a[ma.end() :]), _tokens(_INPUT + b[mb.end() :]))


_INPUT = "input: "  # before a text, makes all of it a payload (see _PAYLOAD)

# Words of a prompt that asks about a text's punctuation (:data:`_MARKS_ASKED`) or its capitals
# (:data:`_CASE_ASKED`): there those are its data wherever they stand, set off by a colon or not ("Does the
# sentence Let's eat Grandma need a comma?", "Fix the capitalization of i met john in new york"). Only words that
# ask about nothing else: "sentence", "CSV", "uppercase" or "period" name other things as often ("Summarize the
# French Revolution in one sentence", "how do i read a csv file in python").
_MARKS_ASKED = frozenset("comma commas splice punctuation punctuate punctuated semicolon apostrophe".split())
_CASE_ASKED = frozenset("capitalize capitalise capitalized capitalised capitalization capitalisation".split())
# Operations whose result depends on every letter's case (a hash, an encoding, a reversal, byte values): their
# input's capitals are data where the text gives one ("base64 encode hello world" is not "... Hello World", nor
# the SHA-256 of "password" that of "PASSWORD"), not in a how-to question ("How do I reverse a list in Python?").
_CASE_OPS = frozenset("hash hashes hashed sha sha1 sha256 sha512 md5 crc crc32 checksum base64 base32 rot13 encode "
                      "encoded decode encrypt encrypted decrypt cipher reverse reversed backwards palindrome anagram "
                      "ascii hex hexadecimal bytes binary unicode codepoint codepoints".split())
_HOW_TO = frozenset(("how", "why"))
# ... and words that ask about capitals in data set off below them ("How many uppercase letters are in the text
# below?\nHello World"), though not in a question of their own ("how to convert a string to uppercase in python").
_CASE_WORDS = _CASE_ASKED | frozenset("uppercase lowercase capital capitals case".split())
# Where a text sets its data off without a colon: a dash between spaces, or a line break ("Sort these numbers -
# 10, 2, 33, 4", "Classify each line below as question or statement\nYou are coming tomorrow.").
_SET_OFF = re.compile(r"[ \t][-–—][ \t]+(?=\S)|[ \t]*\r?\n\s*(?=\S)")
# What an instruction before such data works on, besides :data:`_TASKS`' and :data:`_JUDGED`'s words.
_WORKS_ON = frozenset("sort list items numbers classify line lines split fields".split())


def _form_differs(a: str, b: str) -> bool:
    """Whether two texts (their words the same) differ in punctuation or capitals where those are data: anywhere
    in a text that asks about its punctuation (a word of :data:`_MARKS_ASKED`: a comma in "Let's eat, Grandma")
    or its capitals (:data:`_CASE_ASKED`: "i met john" and "I met John" after "Fix the capitalization"), or in
    the data a dash or line break sets off after an instruction working on it (a word of :data:`_WORKS_ON`,
    :data:`_TASKS` or :data:`_JUDGED`: "Sort these numbers - 10, 2, 33, 4" and "... 33 4"), its punctuation
    there, its capitals where the text asks about case. Elsewhere, and a greeting's or a user's own line break
    above a question, they are typing ("When should I use a comma before and?" and "when should i use ...")."""
    keys = _bare(_keys(_tokens(a)))
    words = set(keys)
    case = bool(_CASE_ASKED.intersection(words)) or (bool(_CASE_OPS.intersection(words)) and (
        keys[0] not in _HOW_TO or _QUOTED.search(a) is not None or _payload_start(a) <= len(a)))
    if case or _MARKS_ASKED.intersection(words):
        return _marked_differently(a, b, case=case)
    if _CASE_WORDS.intersection(words) and _quoted_case_differs(a, b):
        return True  # a quoted string's capitals, asked about: 'Is "python code" all lowercase?'
    ma, mb = _SET_OFF.search(a), _SET_OFF.search(b)
    if ma is None or mb is None:
        return False
    instruction = _content(_keys(_tokens(a[: ma.start()])))
    if not (_WORKS_ON.intersection(instruction) or _TASKS.intersection(instruction)
            or _JUDGED.intersection(instruction)) or instruction != _content(_keys(_tokens(b[: mb.start()]))):
        return False
    case = bool(_CASE_WORDS.intersection(words))
    return _marked_differently(a[ma.end() :], b[mb.end() :], case=case, first=not case)


def _quoted_case_differs(a: str, b: str) -> bool:
    """Whether the two texts quote the same strings but for their capitals."""
    qa, qb = [m.group() for m in _QUOTED.finditer(a)], [m.group() for m in _QUOTED.finditer(b)]
    return bool(qa) and qa != qb and [q.lower() for q in qa] == [q.lower() for q in qb]


_END_MARKS = ".!?。？！"
_TYPED = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "？": "?", "！": "!"})


def _marked_differently(a: str, b: str, *, case: bool, first: bool = True) -> bool:
    """Whether two texts differ in their punctuation (and their capitals, with ``case``) beyond typing: spacing
    (before a mark too), curly quotes, a doubled final mark, the case of the first letter and a final mark one of
    them leaves out ("Is this sentence correct? I went home." and "is this sentence correct?  I went home").
    Another final mark ("Are you coming?" and "... coming."), a comma or, with ``case``, a capital inside count
    (and the first one, without ``first``: data set off below its instruction, "alice_2024" and "Alice_2024")."""
    def typed(text: str) -> str:
        text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.translate(_TYPED).split()))
        text = re.sub(r"([.!?])\1+$", r"\1", text)
        return text if case else text.lower()

    a, b = typed(a), typed(b)
    if bool(a) and bool(b) and (a[-1] in _END_MARKS) != (b[-1] in _END_MARKS):
        a, b = a.rstrip(_END_MARKS), b.rstrip(_END_MARKS)
    if first:
        a, b = a[:1].lower() + a[1:], b[:1].lower() + b[1:]
    return a != b


# What a question asked before its input judges in it ("Is this sentence correct?", "Sentiment?", "Is this email
# spam?", "Fact or opinion?"): narrower than _TASKS, whose "this", "fix", "check" or "rate" a question about the
# user's own situation uses too ("How do I fix this? My printer won't print.").
_JUDGED = frozenset("sentence sentences phrase paragraph grammatical grammar punctuated punctuation spelled spelling "
                    "sentiment tone capitalized capitalised capitalization capitalisation translate translation spam "
                    "sarcastic polite rude positive negative neutral formal informal fact opinion".split())

# Labels a user sets before their own words, which are reworded as any question is.
_FRAMES = frozenset(("question", "quick question", "q", "note", "notes", "background", "context", "fyi", "ps",
                     "update", "edit", "tl dr", "tldr", "topic", "subject", "re", "help", "problem", "issue",
                     "my question", "one question", "question for you", "follow up", "followup"))
# An instruction that works on its payload ("Translate to French:", "Rate the sentiment of this review:", "Is this
# grammatical:"): its payload is data even where it asks a question ("Translate to French: Where is the dog?").
_TASKS = frozenset("translate translation rate rating classify classification label tag categorize categorise "
                   "summarize summarise summary rewrite rephrase paraphrase proofread correct fix check edit improve "
                   "count detect extract analyze analyse score grade evaluate convert format sentiment tone spell "
                   "spelling grammar grammatical punctuate punctuation capitalize capitalise capitalization "
                   "capitalisation this these following below text sentence message review email input".split())


def _quoted_data_differs(a: str, b: str) -> bool:
    """Whether each text quotes a short string (five words at most) that the other does not: "where the status is
    'delivered'" and "... 'shipped'" (a string only dropped, as a paraphrase may drop one of a list, is not this).
    Longer quotations (a review, a message) are read by the other rules: "The delivery was fast and..." and "The
    delivery was slow but..." differ in an opposite."""
    if not any(q in a for q in _QUOTE_CHARS) or not any(q in b for q in _QUOTE_CHARS):
        return False
    sa, sb = set(_strings(a)), set(_strings(b))
    return bool(sa - sb) and bool(sb - sa)


_QUOTE_CHARS = frozenset("'\"‘“")


def _strings(text: str) -> list[tuple[str, ...]]:
    """The short quoted strings of ``text`` (five words at most: 'delivered', "carpe diem"), each as its words and
    symbols (the quote marks and the case a user may drop aside)."""
    # (with their fillers: "I have a apple" is not "I have an apple")
    found = (tuple(_keys(_tokens(m.group()[1:-1]))) for m in _QUOTED.finditer(text) if len(m.group()) > 2)
    return [words for words in found if words and len(_bare(words)) <= 5]


# Opposites that differ in meaning wherever they stand ("keep" and "discard"), so that two texts using different
# members of one are different questions even when reworded around them. The other closed classes (units,
# numbers, comparatives, "and"/"or", "always"/"never", ...) are reworded into each other ("in 30 days", "in a
# month"; "Why is Python slower than C?", "Why is C faster than Python?"): they count only in place, within a
# shared template.
_ANYWHERE = frozenset(c for c, groups in enumerate(_CLASSES) if {w for g in groups for w in g} & frozenset(
    "keep buy import win inside left increase ascending maximum sum fast best".split()))


def _members(words: Sequence[str]) -> dict[int, set[int]]:
    """Per opposite that counts anywhere, the members ``words`` use."""
    out: dict[int, set[int]] = {}
    for word in words:
        member = _MEMBER.get(word)
        if member is not None and member[0] in _ANYWHERE:
            out.setdefault(member[0], set()).add(member[1])
    return out


def _opposed_anywhere(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether each text uses a member of one such opposite that the other does not ("undo the last commit and
    discard the changes", "... but keep the changes")."""
    ma = _members(a)
    if not ma:
        return False
    mb = _members(b)
    return any(ma[c] - mb[c] and mb[c] - ma[c] for c in ma.keys() & mb.keys())


def _code_like(text: str) -> bool:
    """Whether ``text`` holds code or a query (backticks, SQL keywords, a call such as ``len(``, or code symbols:
    ``= { } < >``; a semicolon alone is prose's too)."""
    return bool(_SYNTAX(text))


def _content_word(token: str) -> str | None:
    """The token's content form (a digit-grouping comma removed, "could" as "can"), or None for a filler."""
    if token in _FILLERS:
        return None
    token = _POLITE.get(token, token)
    if token[:1].isdigit() and _THOUSANDS(token):
        return token.replace(",", "")
    return token


def _content(tokens: Sequence[str]) -> list[str]:
    """The content words of ``tokens``, in order."""
    return [c for c in map(_content_word, tokens) if c is not None]


# Words of a text that judges its own words' grammar or spelling: there an article is data too ("Is I have a apple
# correct English?" is not "... an apple ...").
_GRAMMAR = _JUDGED | frozenset("grammatically proofread typo typos spell".split())
# ... and these two together ("Is I have a apple correct English?"), not one alone ("the correct way to boil an
# egg", "an essay in English")
_GRAMMAR_PAIR = (frozenset(("correct", "incorrect", "proper")), frozenset(("english", "grammar", "wording")))


def _judges_words(words: Sequence[str]) -> bool:
    """Whether a text (its words) judges its own words' grammar or spelling (see :data:`_GRAMMAR`); a count of
    sentences or paragraphs is a length ("Summarize the article in three sentences")."""
    present = {word for i, word in enumerate(words)
               if not (word in _COUNTED and i and _is_number(words[i - 1]))}
    return bool(_GRAMMAR & present) or all(group & present for group in _GRAMMAR_PAIR)


_COUNTED = frozenset("sentence sentences paragraph paragraphs".split())
# Fillers a rewording trades for one another: articles for articles, courtesy and emphasis for courtesy and emphasis
# ("Hi, ..." and "Thanks, ..."; "can you please tell me" and "can you just tell me"); not one for the other.
_FILLER_KIND = {**dict.fromkeys(_FILLERS, "soft"), **dict.fromkeys(("a", "an", "the"), "article")}


_COURTESY = _OPENERS | _CLOSERS | {"thank"}  # (greetings, "please", thanks)


def _filler_traded(a: Sequence[str], b: Sequence[str], judged: bool) -> bool:
    """Whether two word lists of one length differ only in fillers, one traded for another of a different kind
    (or, ``judged``, for any other but courtesy): in a text too short to be read as a template, the one word of
    its own (the verifier scored "Translate please to German" and "... thanks ..." alike)."""
    where = _differing(a, b)
    if not where or not all(a[i] in _FILLERS and b[i] in _FILLERS for i in where):
        return False
    return any(_FILLER_KIND[a[i]] != _FILLER_KIND[b[i]] or (judged and not {a[i], b[i]} <= _COURTESY)
               for i in where)


def _judged_words(tokens: Sequence[str]) -> list[str]:
    """The words of ``tokens`` that count in a judged text: its content words and its fillers but courtesy."""
    return [t if t in _FILLERS else c for t in tokens if t not in _COURTESY and (c := _content_word(t) or t)]


def _slot_differs(a: Sequence[str], b: Sequence[str], judged: bool) -> bool:
    """Whether two differing stretches of a shared template carry different content: other content words (and,
    ``judged``, another article or emphasis word: only courtesy is left aside there), or an article traded for
    another filler."""
    if judged:
        if _judged_words(a) != _judged_words(b):
            return True
    elif _content(a) != _content(b):
        return True
    kinds_a = {_FILLER_KIND.get(t, t) for t in a if t in _FILLERS}
    kinds_b = {_FILLER_KIND.get(t, t) for t in b if t in _FILLERS}
    return bool(kinds_a - kinds_b) and bool(kinds_b - kinds_a)


def _costly_to_align(a: Sequence[str], b: Sequence[str]) -> bool:
    """Texts whose alignment would take long: difflib's matcher grows to cubic time on long texts made of few
    distinct tokens ("a+b+c+..." against "n+o+p+...": 0.4 s for 500 characters). Such a pair is compared by
    its content words alone, as a pair too long to align is."""
    return len(a) * len(b) > 10_000 and 4 * min(len(set(a)), len(set(b))) < max(len(a), len(b))


@dataclass(frozen=True, slots=True)
class TemplateGuard:
    """Refuses semantic hits between prompts that share a template but differ in its data.

    ``min_shared_tokens``: tokens (words, numbers, symbols) two texts must
    share, in order, to count as one template; below it the verifier alone
    decides. ``min_shared_tokens_multiline``: the same when both texts span
    several lines. ``max_tokens``: a pair with a text longer than this (in
    tokens) is not aligned (the alignment is quadratic in the worst case): it
    passes only with the same content words in the same order.
    """

    min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS
    min_shared_tokens_multiline: int = DEFAULT_MIN_SHARED_TOKENS_MULTILINE
    max_tokens: int = 2000

    def __post_init__(self) -> None:
        if self.min_shared_tokens < 1 or self.min_shared_tokens_multiline < 1:
            raise ValueError(
                f"min_shared_tokens={self.min_shared_tokens}, min_shared_tokens_multiline="
                f"{self.min_shared_tokens_multiline}: expected at least 1 each"
            )

    def conflict(self, query: str, candidate: str) -> bool:
        """True when the texts share a template and the parts that differ carry different content."""
        case = not (_shouting(query) or _shouting(candidate))
        tokens_a, tokens_b = _tokens(query, case), _tokens(candidate, case)
        a, b = _keys(tokens_a), _keys(tokens_b)
        words_a, words_b = _bare(a), _bare(b)
        if words_a == words_b and (not _same(tokens_a, tokens_b, _cased(query, candidate))
                                   or _form_differs(query, candidate)):
            return True  # the same words, another symbol or case: "12 - 5" and "12 / 5", "CO" and "Co"
        if _swapped(_trimmed(words_a), _trimmed(words_b)):
            return True  # "Monday" for "Tuesday", "km" for "miles"; "Argentina beat France" turned round
        judged = _judges_words(words_a) or _judges_words(words_b)
        if _filler_traded(words_a, words_b, judged):
            return True  # "Translate please to German" and "... thanks ..."; "Is I have a apple correct?" and "an"
        if _plural_only(words_a, words_b) and (_code_like(query) or _code_like(candidate)):
            return True  # in code or SQL a name's plural is another name: "FROM users", "FROM user"
        if _quantifiers_differ(words_a, words_b) or _comparison_reversed(words_a, words_b) \
                or _opposed_anywhere(words_a, words_b) or _exact_count_dropped(words_a, words_b) \
                or _direction_reversed(words_a, words_b) or _negation_differs(words_a, words_b) \
                or _bound_differs(words_a, words_b):
            return True  # "all birds" and "most birds"; "C++ faster than Rust" turned round; "keep" and "discard"
        if _quoted_data_differs(query, candidate):
            return True  # another quoted string: "status is 'delivered'", "status is 'shipped'"
        if _payload_differs(query, candidate):
            return True  # one instruction around another input: "Translate to French: I saw a dog" / "... the dog"
        needed = self._needed(query, candidate)
        if min(len(a), len(b)) < needed:
            return False
        if max(len(a), len(b)) > self.max_tokens or _costly_to_align(a, b):
            return _content(a) != _content(b)
        matcher = SequenceMatcher(None, a, b, autojunk=False)
        shared = sum(block.size for block in matcher.get_matching_blocks())
        if shared < needed:
            return False
        return any(_slot_differs(a[i1:i2], b[j1:j2], judged)
                   for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")

    def same_question(self, query: str, candidate: str) -> bool:
        """True when the texts are the same words, as :func:`same_text` reads them (spacing, sentence punctuation,
        quotes around prose and the case a user may drop folded), but for courtesy set off from the request
        ("Hey,", "Please" before a word in lower case, ", thanks!"; not "Hello world" nor "Spanish for please").
        "Please summarise this report: ..." asks what "Summarise this report: ..." asks, whatever a scorer makes
        of a text longer than those it learned from; "say hello" and "say thanks", "hepatitis A" and "hepatitis",
        ``foo(a)`` and ``foo()`` are other words."""
        a, b = _courtesy_off(query), _courtesy_off(candidate)
        return bool(_tokens(a)) and same_text(a, b) and not _form_differs(a, b)

    def _needed(self, query: str, candidate: str) -> int:
        """Shared tokens that make the two texts one template."""
        if "\n" in query.strip() and "\n" in candidate.strip():
            return min(self.min_shared_tokens, self.min_shared_tokens_multiline)
        return self.min_shared_tokens
