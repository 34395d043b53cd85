"""Build near-miss pairs of varied app-prompt styles for `llmbudget eval cache --mode replay`.

Hand-written generators (not ci/build_template_pairs.py's): customer-support letters, code review and one-line
code questions, SQL, regular expressions, translation, summarisation, classification, maths word problems,
negation, units, comparatives, swapped entities, dates, one changed word, function words in a long template,
case-only changes, plurals, chat turns under a shared system prompt, decimal commas, short multi-line code and
punctuation in long prose; plus a few true rewordings (``duplicate: true``) to see recall. Each line is
``{"a", "b", "duplicate", "kind", "note"}``: ``a`` is stored, ``b`` looked up; ``eval cache`` counts the
non-duplicates that hit per ``kind``. Deterministic (fixed seed). Nothing here was trained on; the template
guard's rules were written while looking at these pairs, so they are a regression set, not a held-out one.

    python ci/build_near_miss_pairs.py --out /tmp/near_misses.jsonl
"""

import argparse
import json
import random

rng = random.Random(20240611)
PAIRS = []


def add(kind, a, b, note, dup=False):
    if a == b:
        return
    PAIRS.append({"a": a, "b": b, "duplicate": dup, "kind": kind, "note": note})


NAMES = ["Maria Lopez", "John Carter", "Aisha Khan", "Tom Becker", "Lena Novak", "Raj Patel", "Chen Wei",
         "Olga Petrova", "Sam Reed", "Nina Rossi", "Pierre Martin", "Yuki Tanaka"]
ITEMS = ["wireless headphones", "coffee grinder", "yoga mat", "desk lamp", "running shoes", "phone case",
         "blender", "backpack", "electric kettle", "smart watch"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def other(seq, x):
    return rng.choice([y for y in seq if y != x])


# ----------------------------------------------------------------------------- S1 support letters (long, one line)
def support_long():
    for _ in range(24):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        order = rng.randint(100000, 999999)
        amt = f"{rng.randint(10, 400)}.{rng.randint(0, 99):02d}"
        day, month = rng.randint(1, 28), rng.choice(MONTHS)
        t = ("Hello, my name is {name} and I ordered a {item} (order #{order}) on {month} {day}. I was charged "
             "${amt} but the item arrived damaged. Can you tell me whether I am eligible for a full refund?")
        base = dict(name=name, item=item, order=order, amt=amt, day=day, month=month)
        field = rng.choice(["name", "item", "order", "amt", "day", "month"])
        alt = dict(base)
        alt[field] = {"name": other(NAMES, name), "item": other(ITEMS, item), "order": order + rng.choice([1, 10, 9]),
                      "amt": f"{float(amt) + rng.choice([1, 10, 100]):.2f}", "day": (day % 28) + 1,
                      "month": other(MONTHS, month)}[field]
        add("support_long", t.format(**base), t.format(**alt), f"{field} changed")


# ----------------------------------------------------------------------------- S2 support (short one-liners)
def support_short():
    temps = [
        ("Where is my order #{o}?", "o"),
        ("Cancel order {o} please", "o"),
        ("Refund ${n} to my card", "n"),
        ("Change my delivery date to {m} {d}", "md"),
        ("Is order {o} shipped yet?", "o"),
        ("My invoice {o} shows ${n}, why?", "n"),
        ("Update my address to {n} Main Street", "n"),
        ("Track parcel {o}", "o"),
        ("I was charged twice for order {o}", "o"),
        ("Can I return the {i}?", "i"),
        ("Reset the password for {name}", "name"),
    ]
    for t, f in temps:
        for _ in range(3):
            o = rng.randint(10000, 99999)
            n = rng.randint(5, 500)
            m, d = rng.choice(MONTHS), rng.randint(1, 28)
            i = rng.choice(ITEMS)
            name = rng.choice(NAMES).split()[0]
            a = t.format(o=o, n=n, m=m, d=d, i=i, name=name)
            if f == "o":
                b = t.format(o=o + rng.choice([1, 10, 100]), n=n, m=m, d=d, i=i, name=name)
            elif f == "n":
                b = t.format(o=o, n=n + rng.choice([1, 10, 50]), m=m, d=d, i=i, name=name)
            elif f == "md":
                b = t.format(o=o, n=n, m=m, d=(d % 28) + 1, i=i, name=name)
            elif f == "i":
                b = t.format(o=o, n=n, m=m, d=d, i=other(ITEMS, i), name=name)
            else:
                b = t.format(o=o, n=n, m=m, d=d, i=i, name=other(NAMES, name + " x").split()[0])
            add("support_short", a, b, f"{f} changed")


# ----------------------------------------------------------------------------- S3 code review (multi-line)
CODE = [
    ("def total_{w}(items):\n    total = 0\n    for item in items:\n        if item {cmp} {k}:\n            total += {var}\n    return total",
     {"cmp": [">", ">="], "k": ["0", "1"], "var": ["item", "items"]}),
    ("function isVisible(el) {{\n  if ({neg}el.hidden) {{\n    return {ret};\n  }}\n  return el.offsetWidth > {k};\n}}",
     {"neg": ["!", ""], "ret": ["false", "true"], "k": ["0", "10"]}),
    ("def tail(xs):\n    return xs[{sl}]",
     {"sl": ["1:", "1", "-1", ":-1"]}),
    ("def greet(name):\n    print({q}name{q})",
     {"q": ["'", ""]}),
    ("if a {op} b:\n    swap(a, b)",
     {"op": ["!=", "=", "=="]}),
    ("const user = response.data{ch}user;\nconsole.log(user.{fld});",
     {"ch": ["?.", "."], "fld": ["name", "Name", "id"]}),
    ("SELECT * FROM {tbl}\nWHERE status = {val}\nORDER BY created_at {dir};",
     {"tbl": ["user", "users", "orders"], "val": ["'active'", "active"], "dir": ["ASC", "DESC"]}),
    ("for (int i = 0; i {cmp} n; i++) {{\n    sum += {arr}[i];\n}}",
     {"cmp": ["<", "<="], "arr": ["a", "A", "b"]}),
    ("x = {expr}\nprint(x)",
     {"expr": ["(a + b) * c", "a + b * c", "a + (b * c)"]}),
    ("while (count {op} 10) {{\n  count{inc};\n}}",
     {"op": ["<", ">"], "inc": ["++", "--"]}),
    ("def is_valid(s):\n    return s {cond} s.strip()",
     {"cond": ["and", "or"]}),
    ("try:\n    value = cfg[{key}]\nexcept KeyError:\n    value = None",
     {"key": ['"timeout"', "timeout", '"Timeout"']}),
]
PREFIX = ["Review this code and point out any bugs:\n", "What does this function return? Explain briefly.\n",
          "Is there a bug in the following snippet?\n```\n", "Refactor this code for readability:\n"]


def code_review():
    for tmpl, slots in CODE:
        keys = list(slots)
        for _ in range(6):
            base = {k: rng.choice(v) for k, v in slots.items()}
            k = rng.choice(keys)
            alt = dict(base)
            alt[k] = other(slots[k], base[k])
            pre = rng.choice(PREFIX)
            suf = "\n```" if pre.endswith("```\n") else ""
            w = rng.choice(["a", "b"])
            a = pre + tmpl.format(w=w, **base) + suf
            b = pre + tmpl.format(w=w, **alt) + suf
            add("code_review", a, b, f"{k}: {base[k]!r}->{alt[k]!r}")


# ----------------------------------------------------------------------------- S4 code one-liners
def code_oneliner():
    rows = [
        ("What does `xs[1:]` return in Python?", "What does `xs[1]` return in Python?", "slice colon"),
        ("What does `xs[:-1]` return?", "What does `xs[-1]` return?", "slice colon"),
        ("Why is `if (!ready)` never true?", "Why is `if (ready)` never true?", "! negation"),
        ("Is `a != b` valid in C?", "Is `a = b` valid in C?", "!= vs ="),
        ("What does `user?.name` do in JavaScript?", "What does `user.name` do in JavaScript?", "optional chaining"),
        ("What does print('x') output?", "What does print(x) output?", "string vs var"),
        ("What is the output of 7//2 in Python?", "What is the output of 7/2 in Python?", "// vs /"),
        ("What is 2**3 in Python?", "What is 2*3 in Python?", "** vs *"),
        ("What does `ls -la` do?", "What does `ls -l` do?", "flag"),
        ("What does `git reset --hard` do?", "What does `git reset --soft` do?", "flag word"),
        ("What does `rm -rf dir` do?", "What does `rm -r dir` do?", "flag"),
        ("How do I use `str.split(',')` in Python?", "How do I use `str.split(':')` in Python?", "sep char"),
        ("What does `x ?? y` mean in JavaScript?", "What does `x || y` mean in JavaScript?", "?? vs ||"),
        ("What does `Foo.bar()` call?", "What does `foo.bar()` call?", "case"),
        ("Is `MyClass` the same as `myClass` in Java?", "Is `MyClass` the same as `MyClass` in Java?", "case"),
        ("What does `chmod 755 file` do?", "What does `chmod 775 file` do?", "number"),
        ("What is the time complexity of `list.pop(0)`?", "What is the time complexity of `list.pop()`?", "arg"),
        ("Explain `a = b if c else d`", "Explain `a = c if b else d`", "swap"),
        ("In SQL, what does `COUNT(*)` count?", "In SQL, what does `COUNT(id)` count?", "arg"),
        ("What does `s.strip()` return for ' a '?", "What does `s.lstrip()` return for ' a '?", "method"),
        ("What is the value of `len('hello')`?", "What is the value of `len(hello)`?", "quotes"),
        ("What does `x -= 1` do?", "What does `x = -1` do?", "-= vs = -"),
        ("What does `i++` return in C?", "What does `++i` return in C?", "pre/post"),
        ("What does `a, b = b, a` do in Python?", "What does `a. b = b. a` do in Python?", "comma/dot (contrived)"),
    ]
    for a, b, n in rows:
        add("code_oneliner", a, b, n)


# ----------------------------------------------------------------------------- S5 SQL (long one-line)
def sql():
    t = ("Write a SQL query for PostgreSQL that returns the id, name and email of every row in the {tbl} table "
         "where {c1} {op} {v1} {conj} {c2} = '{v2}', sorted by {c3} {dir}.")
    opts = {"tbl": ["customers", "customer", "users", "accounts"], "c1": ["age", "balance", "score"],
            "op": [">", "<", ">="], "v1": ["30", "100", "18"], "conj": ["and", "or"], "c2": ["city", "country"],
            "v2": ["Paris", "Berlin", "Madrid"], "c3": ["name", "email", "created_at"], "dir": ["ASC", "DESC"]}
    for k in opts:
        for _ in range(3):
            base = {x: rng.choice(v) for x, v in opts.items()}
            alt = dict(base)
            alt[k] = other(opts[k], base[k])
            add("sql", t.format(**base), t.format(**alt), f"{k}: {base[k]}->{alt[k]}")
    short = [
        ("SQL: select users older than 30", "SQL: select users younger than 30", "comparative"),
        ("SQL to count orders per customer", "SQL to count customers per order", "order swap"),
        ("SQL query: delete rows where status is null", "SQL query: delete rows where status is not null", "negation"),
        ("How do I LEFT JOIN orders and customers?", "How do I RIGHT JOIN orders and customers?", "left/right"),
        ("SELECT name FROM users WHERE id = 5; what's wrong?", "SELECT name FROM user WHERE id = 5; what's wrong?",
         "plural table"),
        ("Why does WHERE a = 1 OR b = 2 return too many rows?", "Why does WHERE a = 1 AND b = 2 return too many rows?",
         "and/or"),
    ]
    for a, b, n in short:
        add("sql", a, b, n)


# ----------------------------------------------------------------------------- S6 regex
def regex():
    rows = [
        (r"What does the regex ^\d{3}-\d{4}$ match?", r"What does the regex ^\D{3}-\D{4}$ match?", r"\d vs \D"),
        (r"What does the regex \s+ match?", r"What does the regex \S+ match?", r"\s vs \S"),
        (r"Explain the regex ^\w+@\w+\.com$", r"Explain the regex ^\W+@\W+\.com$", r"\w vs \W"),
        (r"Does ^[A-Z][a-z]+$ match 'Hello'?", r"Does ^[a-z][A-Z]+$ match 'Hello'?", "case class"),
        (r"Does the regex colou?r match 'color'?", r"Does the regex colour match 'color'?", "? optional"),
        (r"Does a.c match 'abc'?", r"Does ac match 'abc'?", ". any"),
        (r"Does the pattern ab*c match 'ac'?", r"Does the pattern ab+c match 'ac'?", "* vs +"),
        (r"Is \bcat\b matched in 'concatenate'?", r"Is \Bcat\B matched in 'concatenate'?", r"\b vs \B"),
        (r"What does (a|b)c match?", r"What does a|bc match?", "grouping parens"),
        (r"Write a regex that matches 5-digit US zip codes", r"Write a regex that matches 9-digit US zip codes", "number"),
        (r"Regex to match emails ending in .org", r"Regex to match emails ending in .edu", "word"),
        (r"In Python re, what does re.match(r'\d+', s) return for s = 'abc123'?",
         r"In Python re, what does re.search(r'\d+', s) return for s = 'abc123'?", "match vs search"),
        (r"Why does the regex [0-9]{2,4} match 12345?", r"Why does the regex [0-9]{2}4 match 12345?", "comma quantifier"),
        (r"What does .*? do in a regex?", r"What does .* do in a regex?", "lazy ?"),
        (r"Write a regex that matches lines NOT starting with #", r"Write a regex that matches lines starting with #", "not"),
    ]
    for a, b, n in rows:
        add("regex", a, b, n)
    # long single-line regex template
    t = ("I am validating form input in JavaScript. Explain step by step what the regular expression {r} accepts, "
         "and give two strings it matches and two it rejects.")
    rs = [r"/^[A-Z]{2}\d{6}$/", r"/^[a-z]{2}\d{6}$/", r"/^[A-Z]{2}\D{6}$/", r"/^[A-Z]{2}\d{8}$/", r"/^[A-Z]{2}\d{6}/",
          r"/[A-Z]{2}\d{6}$/", r"/^[A-Z]?\d{6}$/", r"/^[A-Z]\d{6}$/"]
    for x in rs[1:]:
        add("regex", t.format(r=rs[0]), t.format(r=x), f"long tmpl {rs[0]} -> {x}")


# ----------------------------------------------------------------------------- S7 translation
SENT = [
    ("The cat is sleeping on the sofa.", "The dog is sleeping on the sofa.", "noun"),
    ("I will arrive at 5 pm.", "I will arrive at 6 pm.", "number"),
    ("He is very tired today.", "She is very tired today.", "pronoun he/she"),
    ("Please close the window.", "Please open the window.", "verb"),
    ("We do not accept cash.", "We accept cash.", "negation"),
    ("The meeting is on Monday.", "The meeting is on Tuesday.", "day"),
    ("My brother lives in London.", "My sister lives in London.", "noun"),
    ("The train leaves before noon.", "The train leaves after noon.", "before/after"),
    ("It is cheaper than the red one.", "It is more expensive than the red one.", "comparative"),
    ("I gave the book to her.", "I gave the book to him.", "her/him"),
    ("This is his car.", "This is her car.", "his/her"),
    ("Where is the station?", "When is the station?", "where/when"),
]
LANGS = ["French", "German", "Spanish", "Italian"]


def translation():
    for a, b, n in SENT:
        lang = rng.choice(LANGS)
        add("translation", f"Translate into {lang}: {a}", f"Translate into {lang}: {b}", "short " + n)
        add("translation", f"Translate into {lang}: {a}", f"Translate into {other(LANGS, lang)}: {a}", "target language")
    # long template with pronoun / function word swaps (guard treats these as fillers)
    t = ("You are a professional translator for a travel agency. Translate the following customer message into "
         "{lang}, keeping the polite tone and the formatting: \"{s}\"")
    longs = [
        ("He has already paid for the hotel room and would like a receipt.",
         "She has already paid for the hotel room and would like a receipt.", "he/she"),
        ("I can cancel the booking until Friday without any fee.",
         "You can cancel the booking until Friday without any fee.", "I/you"),
        ("The guide was waiting at the airport when we arrived.",
         "The guide was waiting at the airport where we arrived.", "when/where"),
        ("Our flight is from Paris to Rome on the fifth of May.",
         "Our flight is to Paris from Rome on the fifth of May.", "from/to swap"),
        ("You must show your passport at the check-in desk.",
         "You may show your passport at the check-in desk.", "must/may"),
        ("Breakfast is included and parking is free.", "Breakfast is included or parking is free.", "and/or"),
        ("We have booked this room for two nights.", "We had booked that room for two nights.", "have/had this/that"),
        ("The price of the tour is 120 euros per person.", "The price of the tour is 210 euros per person.", "number"),
    ]
    for a, b, n in longs:
        lang = rng.choice(LANGS)
        add("translation", t.format(lang=lang, s=a), t.format(lang=lang, s=b), "long " + n)
    dir_pairs = [
        ("Translate from English into French: Good morning, how are you?",
         "Translate from French into English: Good morning, how are you?", "direction order swap"),
        ("Translate this into Spanish: Where is the nearest pharmacy?",
         "Translate this from Spanish: Where is the nearest pharmacy?", "into/from"),
    ]
    for a, b, n in dir_pairs:
        add("translation", a, b, n)


# ----------------------------------------------------------------------------- S8 summarisation
PASSAGES = [
    "The city council voted 7 to 2 on Tuesday to approve a new bike lane on Main Street. Construction will begin "
    "in March and is expected to cost 1.2 million dollars.",
    "Shares of Acme Corp rose 12 percent after the company reported record quarterly revenue of 4.5 billion dollars, "
    "beating analyst expectations.",
    "A study of 2,000 adults found that people who walked at least 8,000 steps a day had a lower risk of heart "
    "disease than those who walked fewer than 4,000.",
    "The museum will close for renovations from June to September. Visitors with annual passes will receive a "
    "three-month extension.",
]
EDITS = [
    ("7 to 2", "2 to 7"), ("approve", "reject"), ("March", "May"), ("1.2 million", "2.1 million"),
    ("rose 12 percent", "fell 12 percent"), ("beating", "missing"), ("lower risk", "higher risk"),
    ("at least", "at most"), ("8,000", "800"), ("will close", "will not close"), ("June to September", "September to June"),
    ("annual passes", "monthly passes"), ("Tuesday", "Thursday"),
]


def summarisation():
    heads = ["Summarise the following news in one sentence:\n\n{p}", "TL;DR:\n{p}",
             "Summarize this passage for a 10-year-old.\nPassage:\n{p}\nSummary:", "Summarize in one sentence: {p}"]
    for p in PASSAGES:
        for old, new in EDITS:
            if old in p:
                h = rng.choice(heads)
                add("summarisation", h.format(p=p), h.format(p=p.replace(old, new)), f"{old}->{new}")
    # short passages (one line, < 20 shared tokens)
    shorts = [("Summarize: Sales rose 5% in May.", "Summarize: Sales fell 5% in May.", "rose/fell"),
              ("Summarize: Bob hired Alice.", "Summarize: Alice hired Bob.", "order swap"),
              ("TL;DR: the flight was delayed by 3 hours.", "TL;DR: the flight was delayed by 30 hours.", "number"),
              ("Summarize: The patient is allergic to penicillin.", "Summarize: The patient is not allergic to penicillin.", "negation")]
    for a, b, n in shorts:
        add("summarisation", a, b, "short " + n)


# ----------------------------------------------------------------------------- S9 classification
REVIEWS = [
    ("The battery lasts all day and the screen is gorgeous.", "The battery dies by noon and the screen is gorgeous."),
    ("Delivery was fast and the packaging was fine.", "Delivery was slow and the packaging was fine."),
    ("I would buy this again.", "I would not buy this again."),
    ("Great value for the price.", "Poor value for the price."),
    ("The staff were friendly and helpful.", "The staff were rude and unhelpful."),
    ("Works as advertised.", "Never works as advertised."),
    ("The food was good.", "The food was not good."),
    ("Best purchase this year.", "Worst purchase this year."),
]


def classification():
    heads = [
        "Classify the sentiment of this review as positive, negative or neutral: \"{r}\"",
        "You are a sentiment classifier for an online store. Read the customer review and reply with exactly one word, "
        "positive, negative or neutral. Review: {r}",
        "Sentiment? {r}",
        "Label the following support ticket's urgency (low, medium, high):\n{r}",
    ]
    for a, b in REVIEWS:
        for h in heads:
            add("classification", h.format(r=a), h.format(r=b), "review changed")
    spam = [("Is this email spam? 'You won $1000, click here'", "Is this email spam? 'Your invoice of $1000 is attached'"),
            ("Topic of: 'Stocks fell sharply today'", "Topic of: 'Storms hit the coast today'"),
            ("Is 'I love it' positive?", "Is 'I hate it' positive?"),
            ("Language of: 'Guten Morgen'", "Language of: 'Buenos dias'")]
    for a, b in spam:
        add("classification", a, b, "short input")


# ----------------------------------------------------------------------------- S10 math word problems
def math_word():
    t = ("A train travels {d} km in {h} hours at a constant speed. How far will it travel in {h2} hours at the "
         "same speed? Show your reasoning step by step.")
    for _ in range(8):
        d, h, h2 = rng.randint(100, 600), rng.randint(2, 6), rng.randint(7, 12)
        which = rng.choice(["d", "h", "h2"])
        alt = {"d": d, "h": h, "h2": h2}
        alt[which] = alt[which] + rng.choice([1, 10, 2])
        add("math_word", t.format(d=d, h=h, h2=h2), t.format(**alt), f"{which} changed (long)")
    eu = ("Ein Seil ist {x} m lang. Wie viele Stücke von 0,5 m kann man daraus schneiden? Erkläre den Rechenweg "
          "Schritt für Schritt und gib das Ergebnis an.")
    for x, y in [("1,5", "15"), ("2,5", "25"), ("12,5", "125"), ("7,5", "75")]:
        add("math_word", eu.format(x=x), eu.format(x=y), f"decimal comma {x} vs {y} (long)")
    en = ("A recipe needs {x} kg of flour for one cake. The bakery has 30 kg of flour. How many cakes can it bake? "
          "Explain your answer.")
    for x, y in [("1,5", "15"), ("2,5", "25"), ("0,75", "075"), ("1.5", "1,5")]:
        add("math_word", en.format(x=x), en.format(x=y), f"decimal comma {x} vs {y} (long en)")
    shorts = [
        ("What is 15% of 80?", "What is 15% of 90?", "number"),
        ("What is 12 - 5?", "What is 12 / 5?", "- vs /"),
        ("What is -7 squared?", "What is 7 squared?", "sign"),
        ("Is -3 greater than -5?", "Is 3 greater than 5?", "signs"),
        ("Compute (2 + 3) * 4", "Compute 2 + 3 * 4", "parens"),
        ("Solve x/2 = 8", "Solve x-2 = 8", "/ vs -"),
        ("What is 1,5 + 2,5?", "What is 15 + 25?", "decimal comma"),
        ("If I save $200 a month, how much after 3 years?", "If I save $200 a month, how much after 5 years?", "number"),
        ("Simplify sqrt(x)/2", "Simplify sqrt(x/2)", "parens"),
        ("Integrate 1/(1+x^2) dx", "Integrate 1/1+x^2 dx", "parens"),
        ("What is log(100)/2?", "What is log(100/2)?", "parens"),
        ("Is 0.1 + 0.2 == 0.3 in Python?", "Is 0.1 + 0.2 = 0.3 in Python?", "== vs ="),
        ("What is the derivative of x^2 - 3x?", "What is the derivative of x^2 / 3x?", "- vs /"),
        ("A shirt costs $40 after a 20% discount. Original price?",
         "A shirt costs $40 after a 25% discount. Original price?", "number"),
        ("How many minutes are in 2.5 hours?", "How many minutes are in 25 hours?", "decimal"),
    ]
    for a, b, n in shorts:
        add("math_word", a, b, "short " + n)


# ----------------------------------------------------------------------------- S11 negation
def negation():
    rows = [
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
        ("Which fruits are good for dogs?", "Which fruits are not good for dogs?"),
        ("Why does my code compile?", "Why doesn't my code compile?"),
        ("Can I take ibuprofen with alcohol?", "Can't I take ibuprofen with alcohol?"),
        ("List countries that use the euro", "List countries that don't use the euro"),
        ("Should I include a cover letter?", "Should I never include a cover letter?"),
        ("Which EU countries are in NATO?", "Which EU countries are not in NATO?"),
        ("Is the function pure?", "Is the function impure?"),
        ("Foods with gluten", "Foods without gluten"),
        ("Is it legal to record a phone call in California?", "Is it illegal to record a phone call in California?"),
    ]
    for a, b in rows:
        add("negation", a, b, "negation short")
    t = ("Our company handbook says remote work requires manager approval and a signed agreement. Based only on "
         "this policy, is an employee who {x} a signed agreement allowed to work from home next week?")
    add("negation", t.format(x="has"), t.format(x="has not"), "negation long")
    add("negation", t.format(x="has"), t.format(x="lacks"), "antonym long")
    add("negation", t.format(x="has"), t.format(x="has no"), "no long")


# ----------------------------------------------------------------------------- S12 units
def units():
    rows = [
        ("How long does it take to drive 100 km at 60 mph?", "How long does it take to drive 100 miles at 60 mph?", "km/mi"),
        ("Convert 30 Celsius to Fahrenheit", "Convert 30 Fahrenheit to Celsius", "direction swap"),
        ("How many grams in 5 ounces?", "How many grams in 5 pounds?", "unit"),
        ("How long to download 500 MB at 100 Mb/s?", "How long to download 500 Mb at 100 MB/s?", "MB/Mb case"),
        ("Is 5 mW of laser power dangerous?", "Is 5 MW of laser power dangerous?", "mW/MW case"),
        ("How far is 10 km in miles?", "How far is 10 miles in km?", "direction swap"),
        ("What is 1 GB in MB?", "What is 1 GiB in MiB?", "binary units"),
        ("Cook chicken at 180 C for how long?", "Cook chicken at 180 F for how long?", "C/F"),
        ("Is 120 mg of caffeine a lot?", "Is 120 g of caffeine a lot?", "mg/g"),
        ("What is 2 ms in seconds?", "What is 2 Ms in seconds?", "ms/Ms case"),
    ]
    for a, b, n in rows:
        add("units", a, b, n)
    t = ("I am planning a cycling trip and my route is {x} long with about 800 metres of climbing. How many days "
         "should I plan if I ride five hours a day at a relaxed pace?")
    add("units", t.format(x="300 km"), t.format(x="300 miles"), "long km/miles")
    add("units", t.format(x="300 km"), t.format(x="300 m"), "long km/m")


# ----------------------------------------------------------------------------- S13 comparatives
def comparatives():
    rows = [
        ("Which uses more memory, a list or a tuple?", "Which uses less memory, a list or a tuple?"),
        ("Is Python faster than Java?", "Is Python slower than Java?"),
        ("Which planet is the largest?", "Which planet is the smallest?"),
        ("Cities with higher rent than Paris", "Cities with lower rent than Paris"),
        ("Should I eat before or after running?", "Should I eat after or before running?"),
        ("What happened before World War I?", "What happened after World War I?"),
        ("Is a kilo heavier than a pound?", "Is a pound heavier than a kilo?"),
        ("Best way to increase dopamine", "Best way to decrease dopamine"),
        ("Which is the most expensive city in Europe?", "Which is the least expensive city in Europe?"),
        ("Is it better to buy or lease a car?", "Is it worse to buy or lease a car?"),
    ]
    for a, b in rows:
        add("comparative", a, b, "short")
    t = ("I run a small online shop selling handmade candles and I want to grow. Given my numbers below, should I "
         "spend {x} on ads than on product photos next quarter? Revenue is 4000 dollars a month.")
    add("comparative", t.format(x="more"), t.format(x="less"), "long more/less")


# ----------------------------------------------------------------------------- S14 entity order
def order_swap():
    rows = [
        ("Argentina beat France in the final", "France beat Argentina in the final"),
        ("Did Apple sue Samsung?", "Did Samsung sue Apple?"),
        ("Why did Brutus kill Caesar?", "Why did Caesar kill Brutus?"),
        ("Difference between A and B in the ranking: A is above B", "Difference between A and B in the ranking: B is above A"),
        ("Send $50 from Alice to Bob", "Send $50 from Bob to Alice"),
        ("Move money from savings to checking", "Move money to savings from checking"),
        ("Flights from London to Tokyo in May", "Flights to London from Tokyo in May"),
        ("Is a dog a mammal?", "Is a mammal a dog?"),
        ("Convert USD to EUR: 100", "Convert EUR to USD: 100"),
        ("Does Tom owe Jerry money?", "Does Jerry owe Tom money?"),
        ("Who is taller, Ann or Ben, if Ann is 170 cm and Ben is 180 cm?",
         "Who is taller, Ann or Ben, if Ann is 180 cm and Ben is 170 cm?"),
    ]
    for a, b in rows:
        add("order_swap", a, b, "short")
    t = ("Please draft a polite email from our accounts team. The situation: {x1} still owes {x2} 2,400 euros for "
         "the March invoice, and we want to propose a payment plan over three months.")
    add("order_swap", t.format(x1="Northwind Ltd", x2="Contoso GmbH"), t.format(x1="Contoso GmbH", x2="Northwind Ltd"),
        "long entity swap")
    t2 = ("I need to transfer 2,000 dollars {p1} my savings account {p2} my checking account before Friday. What fees "
          "should I expect and how long does it usually take with a standard bank?")
    add("order_swap", t2.format(p1="from", p2="to"), t2.format(p1="to", p2="from"), "long from/to swap (fillers)")


# ----------------------------------------------------------------------------- S15 dates
def dates():
    rows = [
        ("What day of the week was 2021-03-04?", "What day of the week was 2021-04-03?"),
        ("Book a table for 4 on May 12", "Book a table for 4 on May 21"),
        ("Was there a holiday on 12/25/2020?", "Was there a holiday on 12/25/2021?"),
        ("How many days until March 1?", "How many days until March 10?"),
        ("Weather in Paris on 3 June", "Weather in Paris on 3 July"),
        ("What happened in 1969?", "What happened in 1996?"),
        ("Is 2024 a leap year?", "Is 2025 a leap year?"),
    ]
    for a, b in rows:
        add("dates", a, b, "short")
    t = ("Our team offsite is scheduled for {d}. Draft a short announcement for the company newsletter that gives "
         "the date, asks people to register by the end of the week, and mentions lunch is provided.")
    add("dates", t.format(d="Thursday 14 March"), t.format(d="Thursday 14 May"), "long date")
    add("dates", t.format(d="2024-03-14"), t.format(d="2024-14-03"), "long date digits order")


# ----------------------------------------------------------------------------- S16 one content word
def one_word():
    rows = [
        ("What is the capital of Australia?", "What is the capital of Austria?"),
        ("capital of france", "capital of spain"),
        ("who wrote hamlet", "who wrote macbeth"),
        ("How many calories are in an apple?", "How many calories are in a banana?"),
        ("What is the boiling point of water?", "What is the boiling point of ethanol?"),
        ("What is the population of Canada?", "What is the population of Mexico?"),
        ("side effects of ibuprofen", "side effects of paracetamol"),
        ("How do I cook rice?", "How do I cook quinoa?"),
        ("Who is the CEO of Microsoft?", "Who is the CEO of Google?"),
        ("What is the atomic number of carbon?", "What is the atomic number of nitrogen?"),
        ("best laptop for students", "best tablet for students"),
        ("how to learn spanish fast", "how to learn german fast"),
        ("Symptoms of flu", "Symptoms of covid"),
        ("what time is it in tokyo", "what time is it in london"),
        ("How tall is the Eiffel Tower?", "How tall is the Statue of Liberty?"),
        ("Is Pluto a planet?", "Is Ceres a planet?"),
        ("What does HTTP stand for?", "What does HTTPS stand for?"),
        ("what is the speed of light", "what is the speed of sound"),
        ("Define photosynthesis", "Define respiration"),
        ("How many legs does a spider have?", "How many legs does an insect have?"),
    ]
    for a, b in rows:
        add("one_word", a, b, "short")


# ----------------------------------------------------------------------------- S18 function words in long templates
def function_words():
    t = [
        ("Read the passage and answer the question. Passage: The Hubble telescope was launched in 1990 from the "
         "Kennedy Space Center aboard the shuttle Discovery. Question: {w} was the telescope launched?",
         ["When", "Where", "Why", "How"]),
        ("You are a helpful HR assistant for Acme Inc. Using the attached leave policy, explain whether {w} can carry "
         "over unused vacation days into next year and what the limit is.", ["I", "you", "he", "she", "they", "we"]),
        ("According to the tenancy agreement I pasted earlier, {w} the landlord enter the flat without giving "
         "notice in an emergency, and what counts as an emergency?", ["can", "must", "should", "may", "will"]),
        ("Write a short, friendly birthday message for my colleague Sam; {w} is turning 40 this week and loves "
         "hiking, cooking and old science fiction films.", ["he", "she"]),
        ("Based on the log excerpt in my previous message, {w} the nightly backup job fail on the production "
         "database server, and what should I check first?", ["why did", "when did", "how did", "where did"]),
        ("Search our product catalogue and list every item that is waterproof {w} lighter than 500 grams, with the "
         "price and the stock level for each one.", ["and", "or"]),
        ("For a customer who {w} already paid the deposit and signed the contract, explain the cancellation terms "
         "and how much of the deposit is refundable.", ["has", "had"]),
        ("Explain to a beginner {w} the TCP three-way handshake works and what problem it solves in computer "
         "networks, using a simple everyday analogy.", ["how", "why"]),
        ("Given the quarterly figures below, was revenue higher in Q3 {w} in Q2, and by how many percent did it "
         "change compared with the same quarter last year?", ["than", "then"]),
        ("Draft a reply to the customer explaining that {w} order will be shipped within three business days and "
         "that a tracking link will follow by email.", ["his", "her", "their", "your", "my"]),
        ("Check the following contract clause and tell me whether {w} of the penalties apply if the delivery is "
         "late by more than ten working days: penalties apply per day of delay.", ["any", "some"]),
        ("Translate the following sentence {w} French and keep the formal register used in business letters: "
         "We look forward to hearing from you at your earliest convenience.", ["into", "from"]),
        ("Write a product description of about 50 words for a stainless steel water bottle that keeps drinks cold "
         "for 24 hours, for customers {w} shop on our website.", ["who", "which"]),
        ("My landlord says the rent {w} due on the first of the month. Draft a polite message asking whether I can "
         "pay on the fifth instead because of my salary date.", ["is", "was"]),
    ]
    for tmpl, words in t:
        for i in range(len(words)):
            for j in range(i + 1, len(words)):
                add("function_word", tmpl.format(w=words[i]), tmpl.format(w=words[j]), f"{words[i]}->{words[j]}")


# ----------------------------------------------------------------------------- S19 case-only differences
def case_only():
    rows = [
        ("Is CO dangerous indoors?", "Is Co dangerous indoors?", "CO/Co"),
        ("What is the melting point of NO?", "What is the melting point of No?", "NO/No"),
        ("Is the US sanctioning Iran?", "Is the us sanctioning Iran?", "US/us"),
        ("How do I polish silver?", "How do I Polish silver?", "polish/Polish"),
        ("What does Bill mean in Congress?", "What does bill mean in Congress?", "Bill"),
        ("Explain the difference: var x vs var X in Go", "Explain the difference: var X vs var x in Go", "case swap"),
        ("In Go, is func parse exported?", "In Go, is func Parse exported?", "exported identifier"),
        ("What is 1 MB in bits?", "What is 1 Mb in bits?", "MB/Mb"),
        ("Regex [A-Z] vs [a-z]?", "Regex [a-z] vs [A-Z]?", "case"),
        ("In Python, why is `None` not `none`?", "In Python, why is `none` not `None`?", "case swap"),
    ]
    for a, b, n in rows:
        add("case_only", a, b, n)
    t = ("You are a code reviewer. In the Go package below, explain whether the function is visible to other "
         "packages and why:\n\npackage store\n\nfunc {f}(key string) (string, error) {{\n    return lookup(key)\n}}")
    add("case_only", t.format(f="getValue"), t.format(f="GetValue"), "long Go exported case")


# ----------------------------------------------------------------------------- S20 plural drop (guard normalisation)
def plural():
    rows = [
        ("Review this Python:\nfor item in items:\n    total += items\nreturn total",
         "Review this Python:\nfor item in items:\n    total += item\nreturn total", "items/item var"),
        ("Fix this SQL, it is slow:\nSELECT * FROM users u\nJOIN orders o ON o.user_id = u.id\nWHERE u.active",
         "Fix this SQL, it is slow:\nSELECT * FROM user u\nJOIN orders o ON o.user_id = u.id\nWHERE u.active", "table plural"),
        ("We sell handmade goods at local markets and want to open an online store. Which platform has the lowest "
         "fees for a shop with about 50 products?",
         "We sell handmade good at local markets and want to open an online store. Which platform has the lowest "
         "fees for a shop with about 50 products?", "goods/good (benign-ish)"),
        ("What does the news say about the merger between the two airlines? Summarize it in three bullet points for "
         "my manager, who has not been following it.",
         "What does the new say about the merger between the two airlines? Summarize it in three bullet points for "
         "my manager, who has not been following it.", "news/new"),
        ("Explain this Django model field:\nclass Order(models.Model):\n    items = models.ManyToManyField(Item)\n"
         "    status = models.CharField(max_length=20)",
         "Explain this Django model field:\nclass Order(models.Model):\n    item = models.ForeignKey(Item)\n"
         "    status = models.CharField(max_length=20)", "items/item + field type"),
        ("In this React component, why does the list not re-render?\nconst [todos, setTodos] = useState([]);\n"
         "todos.push(newTodo);\nsetTodos(todos);",
         "In this React component, why does the list not re-render?\nconst [todos, setTodos] = useState([]);\n"
         "todos.push(newTodo);\nsetTodo(todos);", "setTodos/setTodo"),
    ]
    for a, b, n in rows:
        add("plural_norm", a, b, n)


# ----------------------------------------------------------------------------- S17 chat: long shared system prompt
SYSTEM = ("You are ShopBot, the customer assistant of Northwind Outdoor Gear. Answer in at most three sentences, be "
          "polite, never invent order data, and escalate to a human agent when the customer is angry. Our return "
          "window is 30 days, shipping is free above 50 euros, and we ship to all EU countries.")
CHAT = [
    ("Do you ship to Norway?", "Do you ship to Sweden?"),
    ("Can I return a tent after 20 days?", "Can I return a tent after 40 days?"),
    ("Is shipping free for a 60 euro order?", "Is shipping free for a 40 euro order?"),
    ("My order 5512 is late", "My order 5521 is late"),
    ("do you sell kayaks", "do you sell canoes"),
    ("Can I pay with PayPal?", "Can I pay with Klarna?"),
    ("Is the jacket waterproof?", "Is the jacket windproof?"),
    ("How do I return shoes?", "How do I return boots?"),
    ("When will my order arrive?", "Where will my order arrive?"),
    ("Can he return it for me?", "Can she return it for me?"),
    ("Is the returns window 30 days?", "Is the return window 30 days?"),
    ("Do you ship to the UK?", "Do you ship to the US?"),
    ("I want a refund!", "I don't want a refund!"),
    ("Is the small size in stock?", "Is the large size in stock?"),
]


def chat():
    for a, b in CHAT:
        add("chat_system", a, b, "user msg differs; system prompt shared", )
    for p in PAIRS:
        if p["kind"] == "chat_system":
            p["system"] = SYSTEM


# ----------------------------------------------------------------------------- true rewordings
def rewordings():
    rows = [
        ("What is the capital of France?", "Which city is the capital of France?"),
        ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
        ("Where is my order #48213?", "Where's my order #48213?"),
        ("Translate into French: The cat is sleeping on the sofa.", "Translate to French: The cat is sleeping on the sofa."),
        ("What is 15% of 80?", "Calculate 15% of 80"),
        ("How many calories are in an apple?", "How many calories does an apple have?"),
        ("Is it safe to eat raw eggs?", "Are raw eggs safe to eat?"),
        ("Convert 30 Celsius to Fahrenheit", "What is 30 Celsius in Fahrenheit?"),
        ("Who wrote Hamlet?", "Who is the author of Hamlet?"),
        ("What are the side effects of ibuprofen?", "What side effects does ibuprofen have?"),
        ("Do you ship to Norway?", "Can you ship to Norway?"),
        ("How long does it take to boil an egg?", "How long should I boil an egg?"),
        ("What does HTTP stand for?", "What is HTTP short for?"),
        ("Best way to learn Spanish fast", "What is the fastest way to learn Spanish?"),
        ("Why is the sky blue?", "Why does the sky look blue?"),
    ]
    for a, b in rows:
        add("reword", a, b, "true reword", dup=True)
    # long templates, identical data, courtesy / filler changes only
    t = ("Hello, my name is Maria Lopez and I ordered a blender (order #552211) on March 3. I was charged $89.99 but "
         "the item arrived damaged. Can you tell me whether I am eligible for a full refund?")
    add("reword", t, t.replace("Can you tell me", "Could you please tell me"), "long courtesy", dup=True)
    add("reword", t, t.replace("Hello, my", "Hi there, my"), "long greeting", dup=True)
    c = "Review this code and point out any bugs:\ndef tail(xs):\n    return xs[1:]"
    add("reword", c, c.replace("Review this code and point out any bugs", "Please review this code and point out any bugs"),
        "code courtesy", dup=True)
    s = "Summarise the following news in one sentence:\n\n" + PASSAGES[0]
    add("reword", s, s.replace("Summarise", "Summarize"), "spelling", dup=True)
    for a, b in [("capital of france", "whats the capital of france"), ("who wrote hamlet", "hamlet author"),
                 ("Is Python faster than Java?", "Is Java slower than Python?")]:
        add("reword", a, b, "short", dup=True)


def more_kinds():
    """Decimal commas, plurals in identifiers, short multi-line code, punctuation and case in long prose."""
    # decimal comma / digit grouping normalisation in long one-line templates (guard: "1,5" -> "15")
    tmps = [
     "Our bakery in Lyon uses {x} kg of butter per batch of croissants and makes 12 batches a week. How much butter do we need for a month, and how much will it cost at 9 euros per kg?",
     "Mein Auto verbraucht {x} Liter auf 100 km. Wie viel Benzin brauche ich für eine Strecke von 450 km, und was kostet das bei 1,80 Euro pro Liter? Bitte rechne Schritt für Schritt.",
     "A patient weighs 70 kg and the prescribed dose is {x} mg per kg of body weight, given twice a day. What is the total daily dose in milligrams? Show the calculation.",
     "The exchange rate is {x} Brazilian reais per US dollar today. How many reais will I get for 250 dollars after a 2 percent conversion fee? Please explain each step.",
     "Please convert the following list of prices from our Italian supplier into a clean table with two columns, item and price in euros: flour {x}, sugar 2,10, salt 0,90.",
    ]
    for t in tmps:
        for x, y in [("1,5", "15"), ("2,5", "25"), ("0,8", "08"), ("3,25", "325")]:
            add("decimal_comma", t.format(x=x), t.format(x=y), f"{x} vs {y}")
    # list numbers merge
    add("decimal_comma", "I have an array [4,8,15,16,23,42] in JavaScript and I want to compute its median without mutating it. Write a short function and explain why it works for this input.",
        "I have an array [4,8,15,16,2,342] in JavaScript and I want to compute its median without mutating it. Write a short function and explain why it works for this input.", "list 23,42 vs 2,342")
    add("decimal_comma", "The GPS coordinates of the delivery point are 48,8566 north and 2,3522 east. Which Paris arrondissement is that in, and what is the nearest metro station to it?",
        "The GPS coordinates of the delivery point are 48,8566 north and 23,522 east. Which Paris arrondissement is that in, and what is the nearest metro station to it?", "coords")
    # plural normalisation in identifiers (guard drops trailing s)
    plur = [
     ("Review this Python function for bugs:\ndef count_words(lines):\n    counts = {{}}\n    for line in lines:\n        for word in {v}.split():\n            counts[word] = counts.get(word, 0) + 1\n    return counts", "line", "lines"),
     ("What does this query return?\nSELECT name FROM {v}\nWHERE created_at > '2024-01-01'\nLIMIT 10;", "product", "products"),
     ("Why does this fail?\nfor user in users:\n    send_email({v}.email)", "user", "users"),
     ("Explain this JavaScript:\nconst total = cart.{v}.reduce((s, x) => s + x.price, 0);\nconsole.log(total);", "item", "items"),
     ("Is this Kubernetes manifest valid?\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  {v}:\n  - name: app\n    image: nginx", "containers", "container"),
     ("Fix the CSS:\n.card {{\n  border-radius: 8px;\n  {v}: 0 2px 4px #0003;\n}}", "box-shadows", "box-shadow"),
    ]
    for t, x, y in plur:
        add("plural_norm", t.format(v=x), t.format(v=y), f"{x}/{y}")
    # short multi-line code (< 8 shared tokens => guard off; verifier same-words floor for - ( ) / and case)
    sm = [
     ("Fix:\nx = a - b", "Fix:\nx = a / b", "-//"),
     ("Bug?\nif (!ok)\n  retry()", "Bug?\nif (ok)\n  retry()", "!"),
     ("Output?\nprint(-3 // 2)", "Output?\nprint(3 // 2)", "sign"),
     ("Explain:\nx = (a + b) * c", "Explain:\nx = a + b * c", "parens"),
     ("Explain:\ny = f(g)(x)", "Explain:\ny = f(g(x))", "parens"),
     ("Bug?\nint N = 10;\nint n = 5;\nreturn N;", "Bug?\nint N = 10;\nint n = 5;\nreturn n;", "case var"),
    ]
    for a, b, n in sm:
        add("code_multiline_short", a, b, n)
    # prose punctuation / case in long templates (guard drops soft punctuation, folds case)
    prose = [
     ("Please proofread this sentence for our newsletter and tell me whether it needs any changes before we print it tomorrow morning: \"Let's eat, grandma!\"",
      "Please proofread this sentence for our newsletter and tell me whether it needs any changes before we print it tomorrow morning: \"Let's eat grandma!\"", "comma"),
     ("Explain in two sentences what the following headline means for our investors and whether we should respond publicly: \"Apple to buy Shazam\"",
      "Explain in two sentences what the following headline means for our investors and whether we should respond publicly: \"apple to buy shazam?\"", "case + ?"),
     ("I am writing a report on air quality in our office building. The sensor in room 12 shows high levels of CO this week. What are the health risks and what should we do?",
      "I am writing a report on air quality in our office building. The sensor in room 12 shows high levels of Co this week. What are the health risks and what should we do?", "CO/Co long"),
     ("Our data plan is 100 MB per month for each field device and the devices upload every hour. Will that be enough for a sensor that sends 40 KB per upload? Show the arithmetic.",
      "Our data plan is 100 Mb per month for each field device and the devices upload every hour. Will that be enough for a sensor that sends 40 KB per upload? Show the arithmetic.", "MB/Mb long"),
     ("Answer yes or no and explain briefly, as you would to a new employee on their first day: Employees may work from home on Fridays.",
      "Answer yes or no and explain briefly, as you would to a new employee on their first day: Employees may work from home on Fridays?", ". vs ?"),
    ]
    for a, b, n in prose:
        add("soft_punct_case_long", a, b, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    args = parser.parse_args()
    for make in (support_long, support_short, code_review, code_oneliner, sql, regex, translation, summarisation,
                 classification, math_word, negation, units, comparatives, order_swap, dates, one_word,
                 function_words, case_only, plural, chat, rewordings, more_kinds):
        make()
    with open(args.out, "w", encoding="utf-8") as out:
        for pair in PAIRS:
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"{len(PAIRS)} pairs to {args.out}")


if __name__ == "__main__":
    main()
