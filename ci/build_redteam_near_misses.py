"""Build a fourth set of near-miss and paraphrase pairs for `llmbudget eval cache --mode replay`: a red-team's.

Written by hand by a red-team session that read the template guard's rules (``llmbudget/cache/templates.py``) to
find what they let through, in styles the other builders do not cover: punctuation, case or courtesy that is the
data (grammar, punctuation and capitalisation checks, "what does ?? mean"), fillers and modals inside a payload
("Translate to French: I saw a dog." / "... the dog."), languages, currencies, versions, dates, units, code and
SQL reviews, RAG and system+user prompts, emails, multiple choice, table rows, classification; 379 near misses
(``duplicate`` false: the right answer differs) and 52 paraphrases (``duplicate`` true). Deterministic (fixed
seed). Its first measurement found 75 false hits with the verifier (53 of them counted as "same text" hits by
``eval cache``, since the guard read the two texts as one); README says what the rules made of it.

    python ci/build_redteam_near_misses.py --out /tmp/redteam_pairs.jsonl
    llmbudget eval cache /tmp/redteam_pairs.jsonl --mode replay --json
"""
import argparse
import json
import random
from collections import Counter

rng = random.Random(7)
pairs = []
seen = set()


def add(kind, a, b, dup=False):
    if a == b:
        raise SystemExit(f"identical: {a!r}")
    for t in (a, b):
        if t in seen:  # every text in one pair only
            return
    seen.add(a)
    seen.add(b)
    pairs.append({"a": a, "b": b, "duplicate": dup, "kind": kind})


def swaps(kind, template, values, n=None, **fixed):
    """Pairs of the template with two different values of its {x} slot (consecutive values, then random)."""
    vals = list(values)
    out = [(vals[i], vals[i + 1]) for i in range(0, len(vals) - 1, 2)]
    for x, y in out[: n or len(out)]:
        add(kind, template.format(x=x, **fixed), template.format(x=y, **fixed))


# ---------------------------------------------------------------- A. punctuation is the data
P = [
    ("Does this sentence need a semicolon: I like cats; dogs are fine.",
     "Does this sentence need a semicolon: I like cats, dogs are fine."),
    ("Is the comma correct here: Let's eat, grandma.", "Is the comma correct here: Let's eat grandma."),
    ("Is this a comma splice: I went home, I slept.", "Is this a comma splice: I went home. I slept."),
    ("Check the punctuation: However, we decided to stay.", "Check the punctuation: However we decided to stay."),
    ("Is the colon used correctly here: You need three things: time, money and luck.",
     "Is the colon used correctly here: You need three things; time, money and luck."),
    ("Grammar check please: The dog, which was barking, ran away.",
     "Grammar check please: The dog which was barking ran away."),
    ("Is this punctuated correctly? Its a nice day, isn't it?", "Is this punctuated correctly? Its a nice day isn't it?"),
    ("Should there be a comma before and in: I bought eggs, milk, and bread.",
     "Should there be a comma before and in: I bought eggs, milk and bread."),
    ("In regex, what does . match?", "In regex, what does ? match?"),
    ("What does the ! operator do in JavaScript?", "What does the ? operator do in JavaScript?"),
    ("What does ?? mean in C#?", "What does ?. mean in C#?"),
    ("What does the ?: operator do in Kotlin?", "What does the !! operator do in Kotlin?"),
    ("What does :: mean in C++?", "What does ; mean in C++?"),
    ("In Swift, what is the difference between ! and ? when unwrapping?",
     "In Swift, what is the difference between ? and ! when unwrapping?"),
    ("In a bash script, what does $? hold?", "In a bash script, what does $! hold?"),
    ("What does the , operator do in C?", "What does the . operator do in C?"),
    ("What is 20! divided by 18!?", "What is 20 divided by 18?"),
    ("Compute 12! mod 13 and explain.", "Compute 12 mod 13 and explain."),
    ("How many trailing zeros does 25! have?", "How many trailing zeros does 25 have?"),
    ("Simplify 7! / 5! step by step.", "Simplify 7 / 5 step by step."),
    ("What does ... mean at the end of a text message from my boss?",
     "What does ! mean at the end of a text message from my boss?"),
    ("In Markdown, what does a line starting with ! do?", "In Markdown, what does a line starting with . do?"),
    ("In Ruby, what does a method name ending in ? mean?", "In Ruby, what does a method name ending in ! mean?"),
    ("Should I end this email subject line with a period: Meeting moved to Friday.",
     "Should I end this email subject line with a period: Meeting moved to Friday"),
    ("In Spanish, is ¿Dónde está? punctuated correctly?", "In Spanish, is ¿Dónde está punctuated correctly?"),
]
for a, b in P:
    add("punctuation_is_data", a, b)

# ---------------------------------------------------------------- B. case is the data
C = [
    ("Is this capitalized correctly: i moved to paris in june.",
     "Is this capitalized correctly: I moved to Paris in June."),
    ("Should 'internet' be capitalized in: I read it on the Internet.",
     "Should 'internet' be capitalized in: I read it on the internet."),
    ("Check the capitalization of this title: the lord of the rings",
     "Check the capitalization of this title: The Lord of the Rings"),
    ("Is this heading in title case: How To Train Your Dragon",
     "Is this heading in title case: How to train your dragon"),
    ("How long does it take to download 10 GB at 100 mbps?", "How long does it take to download 10 GB at 100 MBps?"),
    ("Is 300 kb/s fast enough to stream HD video?", "Is 300 KB/s fast enough to stream HD video?"),
    ("My ISP promises 50 mbps, how many MB per second is that?",
     "My ISP promises 50 MBps, how many MB per second is that?"),
    ("Is a 2 mw laser pointer dangerous to the eyes?", "Is a 2 MW laser pointer dangerous to the eyes?"),
    ("Should the word president be capitalized in: The president spoke today.",
     "Should the word president be capitalized in: The President spoke today."),
    ("Grammar check, is the capital right: my mom and Dad went out.",
     "Grammar check, is the capital right: My Mom and dad went out."),
    ("Does my sentence start correctly: the results were clear.",
     "Does my sentence start correctly: The results were clear."),
    ("Is south capitalized correctly here: We drove South for an hour.",
     "Is south capitalized correctly here: We drove south for an hour."),
]
for a, b in C:
    add("case_is_data", a, b)

# ---------------------------------------------------------------- C. courtesy is the data
CO = [
    ("Is this message polite or rude? Send me the file, please.", "Is this message polite or rude? Send me the file."),
    ("Translate into Spanish: I'd like a coffee, thank you.", "Translate into Spanish: I'd like a coffee."),
    ("Translate to French: Sit down, please.", "Translate to French: Sit down."),
    ("Rate the politeness of this email from 1 to 5: Fix the bug today, thanks!",
     "Rate the politeness of this email from 1 to 5: Fix the bug today!"),
    ("Rewrite this more formally: Send the invoice, thx.", "Rewrite this more formally: Send the invoice."),
    ("How do you say this in Japanese: Hello, where is the station?",
     "How do you say this in Japanese: Where is the station?"),
    ("Hello, how are you? Translate that into Korean.", "How are you? Translate that into Korean."),
    ("Does this customer message sound angry: Where is my refund? Thanks.",
     "Does this customer message sound angry: Where is my refund?"),
    ("Is this Slack message too blunt: Review my PR, please.", "Is this Slack message too blunt: Review my PR."),
    ("Translate to German: Close the window, please.", "Translate to German: Close the window."),
    ("Count the words in this sentence: Hi, can you call me back? Thanks.",
     "Count the words in this sentence: Can you call me back?"),
    ("Translate into Italian: Just a little bit of sugar, please.",
     "Translate into Italian: A little bit of sugar, please."),
]
for a, b in CO:
    add("courtesy_is_data", a, b)

# ---------------------------------------------------------------- D. fillers / modals are the data
F = [
    ("Translate to French: I saw a dog in the garden.", "Translate to French: I saw the dog in the garden."),
    ("Translate into German: Give me an apple.", "Translate into German: Give me the apple."),
    ("Is this grammatical: She is a honest person.", "Is this grammatical: She is an honest person."),
    ("Is this correct English: I waited for an hour at a university.",
     "Is this correct English: I waited for a hour at an university."),
    ("Rate the sentiment from 1 to 5: The food was very good.", "Rate the sentiment from 1 to 5: The food was good."),
    ("Rate the sentiment from 1 to 5: I'm not really happy with it.",
     "Rate the sentiment from 1 to 5: I'm not happy with it."),
    ("On a scale of 1 to 10 how positive is this review: The movie was just okay.",
     "On a scale of 1 to 10 how positive is this review: The movie was okay."),
    ("What tense is 'I would go'?", "What tense is 'I will go'?"),
    ("Translate to Spanish: Could you help me?", "Translate to Spanish: Can you help me?"),
    ("Which modal verb shows possibility in: It could rain later.",
     "Which modal verb shows possibility in: It can rain later."),
    ("Is this conditional sentence correct: If I were rich, I would travel.",
     "Is this conditional sentence correct: If I were rich, I will travel."),
    ("Translate into Portuguese: I would buy the car.", "Translate into Portuguese: I will buy the car."),
    ("Classify the urgency (low, medium, high) of this ticket: The site is very slow.",
     "Classify the urgency (low, medium, high) of this ticket: The site is slow."),
    ("Classify the urgency (low, medium, high) of this ticket: Login actually fails for every user.",
     "Classify the urgency (low, medium, high) of this ticket: Login fails for every user."),
    ("Explain the difference: a cat sat on the mat.", "Explain the difference: the cat sat on a mat."),
    ("In the sentence 'I also like tea', what part of speech is each word?",
     "In the sentence 'I like tea', what part of speech is each word?"),
]
for a, b in F:
    add("filler_is_data", a, b)

# ---------------------------------------------------------------- E. short templates, slot outside the closed classes
langs = ["Swedish", "Norwegian", "Danish", "Finnish", "Turkish", "Greek", "Vietnamese", "Thai", "Hebrew", "Swahili",
         "Indonesian", "Ukrainian", "Czech", "Hungarian", "Romanian", "Tagalog", "Persian", "Bengali"]
swaps("language_short", "Translate into {x}: Where is the train station?", langs[:6])
swaps("language_short", "How do you say 'thank you for your help' in {x}?", langs[6:12])
swaps("language_short", "Translate this product title to {x}: Wireless noise cancelling headphones",
      langs[12:18])
swaps("language_short", "Write a short welcome message for new customers in {x}.", langs[1:9])

plangs = ["Kotlin", "Scala", "Elixir", "Haskell", "TypeScript", "C#", "PHP", "Perl", "Lua", "Dart", "Julia", "R",
          "Clojure", "OCaml", "Zig", "Nim"]
swaps("proglang_short", "How do I reverse a string in {x}?", plangs[:6])
swaps("proglang_short", "How do I read a file line by line in {x}?", plangs[6:12])
swaps("proglang_short", "Write a function in {x} that checks if a number is prime.", plangs[10:16])
swaps("proglang_short", "What is the idiomatic way to handle errors in {x}?", plangs[3:11])

ants = [("uppercase", "lowercase"), ("enable", "disable"), ("encrypt", "decrypt"), ("upload", "download"),
        ("push", "pull"), ("open", "close"), ("show", "hide"), ("start", "stop"), ("add", "remove"),
        ("horizontal", "vertical"), ("odd", "even"), ("positive", "negative"), ("rows", "columns"),
        ("allow", "block"), ("serialize", "deserialize"), ("compress", "decompress"), ("zip", "unzip"),
        ("mount", "unmount")]
tmpls = ["How do I {x} a string in Python?", "How do I {x} a file on Linux?", "Git: how to {x} a branch?",
         "How can I {x} all the cells in Excel?", "In CSS, how do I {x} an element?",
         "How to {x} a folder from the command line?"]
for i, (x, y) in enumerate(ants):
    t = tmpls[i % len(tmpls)]
    if i in (0,):
        add("antonym_short", "How do I convert a string to uppercase in Python?",
            "How do I convert a string to lowercase in Python?")
        continue
    if i == 10:
        add("antonym_short", "Write a Python function that returns the odd numbers in a list.",
            "Write a Python function that returns the even numbers in a list.")
        continue
    if i == 11:
        add("antonym_short", "Count the positive numbers in a NumPy array.", "Count the negative numbers in a NumPy array.")
        continue
    if i == 12:
        add("antonym_short", "How do I delete empty rows in a pandas DataFrame?",
            "How do I delete empty columns in a pandas DataFrame?")
        continue
    if i == 9:
        add("antonym_short", "How do I center a div horizontally?", "How do I center a div vertically?")
        continue
    add("antonym_short", t.format(x=x), t.format(x=y))

units = [("teaspoons", "tablespoons"), ("acres", "hectares"), ("knots", "mph"), ("psi", "bar"),
         ("calories", "joules"), ("quarts", "pints"), ("volts", "amps"), ("watts", "kilowatts"),
         ("nautical miles", "miles"), ("square feet", "square meters"), ("fluid ounces", "cups"),
         ("degrees", "radians")]
ut = ["How many {x} are in a cup?", "How do I convert 3 {x} to something I can picture?",
      "Is 40 {x} a lot?", "Give me a quick way to estimate {x} in my head."]
add("unit_short", "How many teaspoons are in a cup?", "How many tablespoons are in a cup?")
add("unit_short", "How many acres is a football field?", "How many hectares is a football field?")
add("unit_short", "What is 30 knots in km per hour?", "What is 30 mph in km per hour?")
add("unit_short", "Is 35 psi the right tire pressure for a sedan?", "Is 35 bar the right tire pressure for a sedan?")
add("unit_short", "How many calories does walking 10,000 steps burn?", "How many joules does walking 10,000 steps burn?")
add("unit_short", "How many quarts in a gallon?", "How many pints in a gallon?")
add("unit_short", "Is 12 volts dangerous to touch?", "Is 12 amps dangerous to touch?")
add("unit_short", "How much does it cost to run a 1500 watt heater for an hour?",
    "How much does it cost to run a 1500 kilowatt heater for an hour?")
add("unit_short", "Convert 90 degrees to the other angle unit.", "Convert 90 radians to the other angle unit.")
add("unit_short", "How many square feet is a 3 bedroom apartment on average?",
    "How many square meters is a 3 bedroom apartment on average?")
add("unit_short", "How many fluid ounces should a baby drink per day?", "How many cups should a baby drink per day?")
add("unit_short", "Is 20 nautical miles far to sail in a day?", "Is 20 miles far to sail in a day?")

curr = ["yuan", "pesos", "francs", "won", "rand", "krona", "bitcoin", "rubles", "baht", "dirhams"]
add("currency_short", "What is 100 yuan worth in US dollars?", "What is 100 pesos worth in US dollars?")
add("currency_short", "Convert 5000 won to euros.", "Convert 5000 rand to euros.")
add("currency_short", "Is 200 baht a good tip for a massage?", "Is 200 dirhams a good tip for a massage?")
add("currency_short", "How much is 1 bitcoin in Swiss francs today?", "How much is 1 bitcoin in Swedish krona today?")
add("currency_short", "Is 50 rubles expensive for a coffee?", "Is 50 krona expensive for a coffee?")

numw = ["eleven", "twelve", "thirteen", "fourteen", "fifteen", "twenty", "thirty", "forty", "fifty", "sixty",
        "seventy", "eighty", "ninety"]
add("number_word_short", "What is eleven times twelve?", "What is eleven times thirteen?")
add("number_word_short", "Write a haiku about autumn in exactly thirteen words.",
    "Write a haiku about autumn in exactly fourteen words.")
add("number_word_short", "Give me twenty ideas for a birthday party.", "Give me thirty ideas for a birthday party.")
add("number_word_short", "Is it safe to leave a forty year old boiler running?",
    "Is it safe to leave a fifty year old boiler running?")
add("number_word_short", "What should a sixty year old eat for breakfast?",
    "What should a seventy year old eat for breakfast?")
add("number_word_short", "What was life like in the eighties?", "What was life like in the nineties?")
add("number_word_short", "Summarize the plot in fifteen words.", "Summarize the plot in twelve words.")
add("number_word_short", "How do I say twenty one in French?", "How do I say thirty one in French?")

prod = [("iPhone 14", "iPhone 15"), ("Galaxy S23", "Galaxy S24"), ("PS4", "PS5"), ("Windows 10", "Windows 11"),
        ("RTX 3080", "RTX 4080"), ("MacBook Air M1", "MacBook Air M2"), ("Kindle Paperwhite", "Kindle Oasis"),
        ("Pixel 7", "Pixel 8"), ("Model 3", "Model Y"), ("AirPods Pro", "AirPods Max"),
        ("Python 3.11", "Python 3.12"), ("Node 18", "Node 20"), ("Ubuntu 22.04", "Ubuntu 24.04"),
        ("Django 4", "Django 5"), ("React 17", "React 18")]
pt = ["How do I factory reset my {x}?", "What is the battery life of the {x}?", "Is the {x} worth buying in 2024?",
      "What are the known issues with {x}?", "How do I upgrade to {x}?"]
for i, (x, y) in enumerate(prod):
    t = pt[i % len(pt)]
    add("product_version_short", t.format(x=x), t.format(x=y))

ents = [("Ghana", "Kenya"), ("monstera", "philodendron"), ("banana", "mango"), ("Lisbon", "Porto"),
        ("a golden retriever", "a border collie"), ("Ozempic", "Wegovy"), ("ibuprofen", "acetaminophen"),
        ("Roth IRA", "traditional IRA"), ("Stripe", "PayPal"), ("Postgres", "MySQL"),
        ("the Eiffel Tower", "the Louvre"), ("Moby Dick", "Middlemarch"), ("Tesla", "Rivian"),
        ("sourdough", "focaccia"), ("Kafka", "RabbitMQ"), ("Jupiter", "Saturn"),
        ("a 401k", "an HSA"), ("Airbnb", "Vrbo"), ("the French Revolution", "the Russian Revolution"),
        ("tomatoes", "peppers")]
et = ["What is the population of {x}?", "How often should I water a {x} plant?",
      "How many calories are in a {x}?", "What are the best things to do in {x} for 3 days?",
      "How much exercise does {x} need per day?", "What are the side effects of {x}?",
      "What is the max dosage of {x} for adults?", "What are the contribution limits for a {x} this year?",
      "How do I issue a refund in {x}?", "How do I create a read-only user in {x}?",
      "What are the opening hours of {x}?", "Give me a one-paragraph summary of {x}.",
      "What is the towing capacity of a {x} SUV?", "Give me a beginner recipe for {x}.",
      "How do I set up a dead letter queue in {x}?", "How many moons does {x} have?",
      "Can I withdraw early from {x} without penalty?", "How do I contact {x} support as a host?",
      "What were the main causes of {x}?", "When should I plant {x} in zone 6?"]
for (x, y), t in zip(ents, et, strict=False):
    add("entity_short", t.format(x=x), t.format(x=y))

# ---------------------------------------------------------------- F. realistic long templates (should be guarded)
SYS = "You are a support assistant for {co}. Answer in two sentences. Customer: {q}"
cos = ["Acme Bank", "Nimbus Telecom", "Orbit Airlines", "Greenleaf Insurance", "Pixel Cloud"]
qs = [("How do I reset my online banking password?", "How do I reset my card PIN?"),
      ("Why was I charged a roaming fee in Spain?", "Why was I charged a roaming fee in Mexico?"),
      ("Can I change my flight from Boston to Denver?", "Can I change my flight from Boston to Dallas?"),
      ("Does my policy cover hail damage to my car?", "Does my policy cover flood damage to my car?"),
      ("How do I increase my storage quota to 2 TB?", "How do I increase my storage quota to 5 TB?")]
for co, (x, y) in zip(cos, qs, strict=False):
    add("system_user_inline", SYS.format(co=co, q=x), SYS.format(co=co, q=y))
for co, (x, _y) in zip(cos, qs, strict=False):  # same question, another company
    other = cos[(cos.index(co) + 1) % len(cos)]
    add("system_user_inline", SYS.format(co=co, q=x + " "), SYS.format(co=other, q=x + " ").strip())

RAG = ("Answer the question using only the context below. If the answer is not in the context, say \"I don't know\".\n\n"
       "Context: {ctx}\n\nQuestion: {q}")
ctxs = [
    "The Model X200 blender has a 1.5 litre jar, a 900 W motor and a 2 year warranty.",
    "The Model X300 blender has a 2 litre jar, a 1200 W motor and a 3 year warranty.",
    "Employees accrue 1.5 vacation days per month and may carry over up to 5 days into the next year.",
    "Employees accrue 2 vacation days per month and may carry over up to 10 days into the next year.",
    "Orders over $50 ship free within the continental US; Alaska and Hawaii pay a flat $15.",
    "Orders over $75 ship free within the continental US; Alaska and Hawaii pay a flat $20.",
    "The clinic is open Monday to Friday 8am-6pm and Saturday 9am-1pm.",
    "The clinic is open Monday to Thursday 8am-5pm and Friday 9am-1pm.",
    "Refunds are issued to the original payment method within 14 days of receiving the return.",
    "Refunds are issued as store credit within 7 days of receiving the return.",
]
rq = ["What is the warranty period?", "How many days can I carry over?", "How much is shipping to Hawaii?",
      "Is the clinic open on Saturday?", "How will I get my refund?"]
for i, q in enumerate(rq):
    add("rag_passage", RAG.format(ctx=ctxs[2 * i], q=q), RAG.format(ctx=ctxs[2 * i + 1], q=q))
rq2 = [("What is the jar size?", "What is the motor power?"), ("How many days do I accrue per month?",
       "How many days can I carry over?"), ("Is shipping free?", "How much does Alaska pay?"),
       ("What time does the clinic close on weekdays?", "What time does the clinic open on Saturday?"),
       ("How long do refunds take?", "Where is the refund sent?")]
for i, (x, y) in enumerate(rq2):
    add("rag_question", RAG.format(ctx=ctxs[2 * i + 1], q=x), RAG.format(ctx=ctxs[2 * i + 1], q=y).replace(
        "Question:", "Question:"))
# short single-line RAG (shares < 20 tokens)
SR = "Context: {ctx} Q: {q}"
sr = [("Paris is the capital of France.", "Berlin is the capital of Germany.", "What is the capital?"),
      ("The meeting is at 3pm.", "The meeting is at 4pm.", "When is the meeting?"),
      ("Alice is 34.", "Alice is 43.", "How old is Alice?"),
      ("The fee is waived for students.", "The fee is doubled for students.", "What about students?"),
      ("Shipping takes 3 days.", "Shipping takes 3 weeks.", "How long is shipping?"),
      ("The password must have 8 characters.", "The password must have 12 characters.", "How long must it be?"),
      ("Bob manages the Berlin office.", "Bob manages the Munich office.", "Which office does Bob manage?"),
      ("The API limit is 100 requests per minute.", "The API limit is 100 requests per hour.", "What is the limit?")]
for c1, c2, q in sr:
    add("rag_short", SR.format(ctx=c1, q=q), SR.format(ctx=c2, q=q))

LET = ("Write a polite reminder email to {name} that invoice #{inv} for {amt} was due on {date}. "
       "Sign it from the Accounts team.")
names = ["Maria Lopez", "John Smith", "Priya Patel", "Chen Wei", "Olga Ivanova", "Tom Baker"]
for i in range(6):
    base = dict(name=names[i], inv=1040 + i, amt=f"${(i + 3) * 125}", date=f"March {i + 3}")
    ch = dict(base)
    key = ["name", "inv", "amt", "date", "name", "amt"][i]
    ch[key] = {"name": names[(i + 2) % 6], "inv": 2040 + i, "amt": f"${(i + 3) * 135}",
               "date": f"March {i + 13}"}[key]
    add("email_template", LET.format(**base), LET.format(**ch))
LET2 = "Draft a short offer letter for {name} for the {role} role, starting {date}, salary {sal}."
offers = [(dict(name="Anna Berg", role="Data Analyst", date="June 1", sal="$72,000"), "sal", "$78,000"),
          (dict(name="Luis Ortega", role="Backend Engineer", date="July 15", sal="$120,000"), "role",
           "Frontend Engineer"),
          (dict(name="Mei Tanaka", role="Product Designer", date="May 3", sal="$95,000"), "date", "May 13"),
          (dict(name="Sam Okafor", role="QA Lead", date="August 1", sal="$88,000"), "name", "Sam Okoro"),
          (dict(name="Ella Novak", role="Account Manager", date="September 9", sal="$65,000"), "sal", "$56,000"),
          (dict(name="Raj Mehta", role="Site Reliability Engineer", date="October 2", sal="$130,000"), "role",
           "Site Reliability Manager")]
for d, k, v in offers:
    e = dict(d)
    e[k] = v
    add("email_template", LET2.format(**d), LET2.format(**e))
LET3 = "Hi, write a two-line birthday message for my {rel} {name} who is turning {age}."
bd = [("sister", "Emma", "30", "age", "40"), ("boss", "Karen", "50", "rel", "colleague"),
      ("grandfather", "Joe", "80", "age", "90"), ("friend", "Liam", "25", "name", "Noah"),
      ("son", "Leo", "6", "age", "7"), ("wife", "Sara", "35", "rel", "mother")]
for rel, name, age, k, v in bd:
    d = dict(rel=rel, name=name, age=age)
    e = dict(d)
    e[k] = v
    add("email_template", LET3.format(**d), LET3.format(**e))

SQLR = "Review this SQL for bugs:\n{sql}"
sqls = [("SELECT name FROM users WHERE age > 18;", "SELECT name FROM users WHERE age >= 18;"),
        ("SELECT * FROM orders WHERE status = 'paid' ORDER BY created_at DESC;",
         "SELECT * FROM orders WHERE status = 'paid' ORDER BY created_at;"),
        ("UPDATE accounts SET balance = balance - 100 WHERE id = 7;",
         "UPDATE accounts SET balance = balance - 100;"),
        ("SELECT COUNT(*) FROM events GROUP BY user_id HAVING COUNT(*) > 5;",
         "SELECT COUNT(*) FROM events GROUP BY user_id HAVING COUNT(*) > 50;"),
        ("DELETE FROM sessions WHERE expires_at < NOW();", "DELETE FROM sessions WHERE expires_at > NOW();"),
        ("SELECT a.id FROM a LEFT JOIN b ON a.id = b.a_id WHERE b.id IS NULL;",
         "SELECT a.id FROM a INNER JOIN b ON a.id = b.a_id WHERE b.id IS NULL;"),
        ("SELECT email FROM customers WHERE email LIKE '%@gmail.com';",
         "SELECT email FROM customers WHERE email LIKE '%@gmail.com%';"),
        ("SELECT price * qty AS total FROM items;", "SELECT price + qty AS total FROM items;")]
for x, y in sqls:
    add("sql_review", SQLR.format(sql=x), SQLR.format(sql=y))
# SQL asked in prose, one line, no code markers
sqlp = [("Write a SQL query that lists customers who signed up last month.",
         "Write a SQL query that lists customers who churned last month."),
        ("Write SQL to find the second highest salary per department.",
         "Write SQL to find the third highest salary per department."),
        ("SQL query for the top 5 products by revenue in 2023", "SQL query for the top 5 products by units sold in 2023"),
        ("How do I get the median order value per region in Postgres?",
         "How do I get the mode order value per region in Postgres?"),
        ("Write a query to find duplicate emails in the users table.",
         "Write a query to find duplicate phone numbers in the users table.")]
for x, y in sqlp:
    add("sql_prose_short", x, y)

CR = "Review this Python code and point out bugs:\n```python\n{code}\n```"
codes = [("def avg(xs):\n    return sum(xs) / len(xs)", "def avg(xs):\n    return sum(xs) // len(xs)"),
         ("for i in range(len(xs)):\n    print(xs[i])", "for i in range(len(xs) - 1):\n    print(xs[i])"),
         ("if user is None:\n    raise ValueError()", "if user == None:\n    raise ValueError()"),
         ("with open(p) as f:\n    data = f.read()", "f = open(p)\ndata = f.read()"),
         ("items.sort(key=lambda x: x.price)", "items.sort(key=lambda x: -x.price)"),
         ("return a if a > b else b", "return a if a < b else b")]
for x, y in codes:
    add("code_review", CR.format(code=x), CR.format(code=y))
# code in a one-line prompt without fences
cinl = [("Why does print(0.1 + 0.2 == 0.3) print False in Python?", "Why does print(0.1 + 0.2 == 0.3) print True in Python?"),
        ("What does x[::-1] do in Python?", "What does x[::2] do in Python?"),
        ("Why is my for loop in JavaScript skipping the last item: for (let i = 0; i < arr.length - 1; i++)",
         "Why is my for loop in JavaScript skipping the last item: for (let i = 0; i <= arr.length - 1; i++)"),
        ("What's the time complexity of list.insert(0, x) in Python?",
         "What's the time complexity of list.append(x) in Python?"),
        ("Explain what git reset --hard HEAD~1 does", "Explain what git reset --soft HEAD~1 does"),
        ("What does chmod 755 do?", "What does chmod 775 do?"),
        ("What does docker run -d nginx do?", "What does docker run -it nginx do?"),
        ("Explain the regex ^\\d{3}-\\d{4}$", "Explain the regex ^\\d{3}-\\d{3}$")]
for x, y in cinl:
    add("code_inline", x, y)

MCQ = "{stem}\nA) {o[0]}\nB) {o[1]}\nC) {o[2]}\nD) {o[3]}\nAnswer with the letter only."
mcqs = [("Which of these is a prime number?", ["21", "27", "29", "33"], ["21", "25", "27", "33"]),
        ("Which planet is closest to the Sun?", ["Venus", "Mercury", "Earth", "Mars"],
         ["Venus", "Earth", "Mars", "Jupiter"]),
        ("Which word is a synonym of 'happy'?", ["sad", "joyful", "angry", "tired"],
         ["sad", "gloomy", "angry", "tired"]),
        ("Which data structure is FIFO?", ["stack", "queue", "tree", "graph"], ["stack", "heap", "tree", "graph"]),
        ("Who wrote Hamlet?", ["Marlowe", "Shakespeare", "Jonson", "Kyd"], ["Marlowe", "Jonson", "Kyd", "Webster"]),
        ("What is 15% of 80?", ["10", "12", "15", "18"], ["10", "15", "16", "18"])]
for stem, o1, o2 in mcqs:
    add("mcq_options", MCQ.format(stem=stem, o=o1), MCQ.format(stem=stem, o=o2))
# one-line MCQ with inline options
ml = [("Which is a mammal: (a) shark (b) dolphin (c) trout (d) eel?",
       "Which is a mammal: (a) shark (b) salmon (c) trout (d) eel?"),
      ("Pick the odd one out: apple, banana, carrot, grape", "Pick the odd one out: apple, banana, cherry, grape"),
      ("Which is largest: 0.5, 0.45, 0.405, 0.54?", "Which is largest: 0.5, 0.45, 0.405, 0.504?"),
      ("True or false: the Great Wall is visible from the Moon.", "True or false: the Great Wall is visible from orbit."),
      ("Which came first: the printing press, the telescope or the compass?",
       "Which came first: the printing press, the telescope or the steam engine?"),
      ("Is a tomato a fruit, a vegetable or a berry?", "Is a tomato a fruit, a vegetable or a legume?")]
for x, y in ml:
    add("mcq_inline", x, y)

CLS = "Classify this support ticket as billing, technical, or account: {t}"
tix = [("I was charged twice for my subscription.", "I can't log in after changing my email."),
       ("The app crashes when I upload a photo.", "The app charges me for photos I never uploaded."),
       ("Please delete my account and all my data.", "Please update the card on my account."),
       ("My invoice shows the wrong VAT number.", "My dashboard shows the wrong time zone.")]
for x, y in tix:
    add("classification_input", CLS.format(t=x), CLS.format(t=y))
CLS2 = "Is this review positive or negative? {t}"
revs = [("Battery lasts two days, love it.", "Battery lasts two hours, hate it."),
        ("Arrived on time and works great.", "Arrived late but works great."),
        ("Not bad for the price.", "Bad for the price."),
        ("I expected more, honestly.", "I expected less, honestly."),
        ("Would buy again.", "Would never buy again."),
        ("Five stars, the seller was helpful.", "Three stars, the seller was helpful.")]
for x, y in revs:
    add("classification_input", CLS2.format(t=x), CLS2.format(t=y))
CLS3 = "Detect the language of this text: {t}"
dl = [("Ich habe Hunger.", "Ik heb honger."), ("Jeg er sulten.", "Jag är hungrig."), ("Estoy cansado.", "Estou cansado.")]
for x, y in dl:
    add("classification_input", CLS3.format(t=x), CLS3.format(t=y))

DT = [("What day of the week was July 4, 1976?", "What day of the week was July 4, 1977?"),
      ("How many days are there between March 3 and April 15?", "How many days are there between March 3 and April 25?"),
      ("Is 2028 a leap year?", "Is 2100 a leap year?"),
      ("When is Easter in 2025?", "When is Easter in 2026?"),
      ("What is the date 90 days after 1 Feb 2024?", "What is the date 90 days after 1 Feb 2023?"),
      ("Is the office open on Christmas Eve?", "Is the office open on New Year's Eve?"),
      ("What is the deadline to file taxes in the UK for the 2023/24 year?",
       "What is the deadline to file taxes in the UK for the 2024/25 year?"),
      ("How old is someone born in 1990 today?", "How old is someone born in 1999 today?")]
for x, y in DT:
    add("date_short", x, y)

TBL = "Given the row name={n}, age={a}, country={c}, write a one-line bio."
rows = [("Ana", 31, "Chile", "a", 13), ("Ben", 45, "Canada", "c", "Cuba"), ("Chloe", 22, "France", "n", "Zoe"),
        ("Dev", 38, "India", "a", 83), ("Eli", 27, "Israel", "c", "Italy")]
for n, a, c, k, v in rows:
    d = dict(n=n, a=a, c=c)
    e = dict(d)
    e[k] = v
    add("table_row", TBL.format(**d), TBL.format(**e))

# misc: same question another person / role / jurisdiction, short
MS = [("What is the notice period for a tenant in California?", "What is the notice period for a landlord in California?"),
      ("Can a nurse practitioner prescribe Adderall in Texas?", "Can a physician assistant prescribe Adderall in Texas?"),
      ("Do I need a visa to visit Japan with an Indian passport?", "Do I need a visa to visit Japan with a Brazilian passport?"),
      ("What should I pack for a week in Iceland in winter?", "What should I pack for a week in Iceland in summer?"),
      ("How do I cook brown rice in an Instant Pot?", "How do I cook wild rice in an Instant Pot?"),
      ("What's a good gift for a coworker who likes hiking?", "What's a good gift for a coworker who likes cooking?"),
      ("Explain photosynthesis to a 5th grader.", "Explain photosynthesis to a college student."),
      ("Summarize the causes of World War I.", "Summarize the consequences of World War I."),
      ("What are the symptoms of type 1 diabetes?", "What are the symptoms of type 2 diabetes?"),
      ("How do I become a pilot in Australia?", "How do I become a pilot in Austria?"),
      ("Can dogs eat grapes?", "Can cats eat grapes?"),
      ("Is it safe to take melatonin while pregnant?", "Is it safe to take melatonin while breastfeeding?"),
      ("How do I improve my credit score quickly?", "How do I check my credit score quickly?"),
      ("What's the difference between a virus and a bacterium?", "What's the difference between a virus and a prion?"),
      ("Write a cover letter for a junior accountant job.", "Write a cover letter for a senior accountant job."),
      ("Plan a 3-day vegetarian meal plan.", "Plan a 3-day vegan meal plan."),
      ("Give me a workout plan for building muscle.", "Give me a workout plan for losing fat."),
      ("How long should I boil a soft egg?", "How long should I boil a hard egg?"),
      ("Who was the first woman in space?", "Who was the first American woman in space?"),
      ("What is the boiling point of water at sea level?", "What is the boiling point of water in Denver?")]
for x, y in MS:
    add("entity_short", x, y)


# ---------------------------------------------------------------- G. more styles
G = [
    ("extract_field", "Extract the invoice total from: Invoice 88, total due 1,250.00 EUR, net 30.",
     "Extract the due date from: Invoice 88, total due 1,250.00 EUR, net 30."),
    ("extract_field", "From this text, get the sender's phone number: Call me at 555-0142, Dana.",
     "From this text, get the sender's name: Call me at 555-0142, Dana."),
    ("extract_field", "Return JSON with the city and zip from: 12 Oak St, Springfield, IL 62704",
     "Return JSON with the street and state from: 12 Oak St, Springfield, IL 62704"),
    ("spreadsheet_prose", "Excel formula to count cells in A1:A100 that are blank",
     "Excel formula to count cells in A1:A100 that contain text"),
    ("spreadsheet_prose", "Google Sheets formula to get the last non-empty value in column C",
     "Google Sheets formula to get the first non-empty value in column D"),
    ("spreadsheet_prose", "How do I highlight duplicates in column B in Excel?",
     "How do I highlight unique values in column B in Excel?"),
    ("regex_prose", "Regex to match a US zip code", "Regex to match a UK postcode"),
    ("regex_prose", "Regex that matches an email address but not a trailing dot",
     "Regex that matches an IPv4 address but not a trailing dot"),
    ("bash_prose", "Bash one-liner to find files larger than 100MB modified in the last 7 days",
     "Bash one-liner to find files larger than 100MB accessed in the last 7 days"),
    ("bash_prose", "How do I kill the process listening on port 3000 on macOS?",
     "How do I kill the process listening on port 8080 on macOS?"),
    ("persona_prompt", "You are a pirate. Describe your morning routine in three sentences.",
     "You are an astronaut. Describe your morning routine in three sentences."),
    ("persona_prompt", "Act as a Socratic tutor and help me understand derivatives.",
     "Act as a Socratic tutor and help me understand integrals."),
    ("persona_prompt", "Pretend you are my landlord and reply to my request to paint the bedroom.",
     "Pretend you are my landlord and reply to my request to get a cat."),
    ("format_change", "List five fruits as a JSON array.", "List five fruits as a YAML list."),
    ("format_change", "Explain quantum entanglement in one tweet.", "Explain quantum entanglement in one limerick."),
    ("format_change", "Summarize this in bullet points: Our Q3 revenue grew 12% while costs fell 3%.",
     "Summarize this in a table: Our Q3 revenue grew 12% while costs fell 3%."),
    ("audience_change", "Explain blockchain to my grandmother.", "Explain blockchain to a software engineer."),
    ("audience_change", "Write a bedtime story for a toddler about a brave turtle.",
     "Write a bedtime story for a teenager about a brave turtle."),
    ("tone_change", "Rewrite this in a sarcastic tone: The meeting has been moved to Monday.",
     "Rewrite this in a cheerful tone: The meeting has been moved to Monday."),
    ("tone_change", "Make this sound more confident: I think I might be a good fit for the role.",
     "Make this sound more humble: I think I might be a good fit for the role."),
    ("punctuation_is_data", "What does a semicolon at the end of a line do in JavaScript?",
     "What does a colon at the end of a line do in JavaScript?"),
    ("punctuation_is_data", "Is it correct to write: Thank you, John!", "Is it correct to write: Thank you John!"),
    ("punctuation_is_data", "What is the result of 10 - 3 ! in math notation?", "What is the result of 10 - 3 in math notation?"),
    ("punctuation_is_data", "Parse this CSV line into fields: a,b;c,d", "Parse this CSV line into fields: a;b,c;d"),
    ("case_is_data", "Is the password hunter2 the same as Hunter2 on Linux logins?",
     "Is the password hunter2 the same as hunter2 on Linux logins?"),
    ("case_is_data", "Should brand names like iphone be written as iPhone in this ad: Buy the new iphone today.",
     "Should brand names like iphone be written as iPhone in this ad: Buy the new iPhone today."),
    ("courtesy_is_data", "Reply with one word, is this greeting formal: Hello, Dr. Smith.",
     "Reply with one word, is this greeting formal: Dr. Smith."),
    ("filler_is_data", "Translate to German: The very old man sat down.", "Translate to German: The old man sat down."),
    ("filler_is_data", "Is this sentence correct: I have just finished my homework.",
     "Is this sentence correct: I have finished my homework."),
    ("filler_is_data", "Translate to Italian: A doctor came.", "Translate to Italian: The doctor came."),
]
for k, x, y in G:
    add(k, x, y)


H = [
    ("punctuation_is_data", "Is the comma needed in 'However, it rained all day'?", "Is the comma needed in 'However it rained all day'?"),
    ("punctuation_is_data", "Which is correct, 'Yes, sir' or the other version?", "Which is correct, 'Yes sir' or the other version?"),
    ("punctuation_is_data", "Is the apostrophe right: The teachers' lounge is closed.", "Is the apostrophe right: The teachers lounge is closed."),
    ("punctuation_is_data", "Proofread: The students' essays are due Friday.", "Proofread: The students essays are due Friday."),
    ("punctuation_is_data", "Does 'Eats, shoots and leaves' mean the panda is violent?",
     "Does 'Eats shoots and leaves' mean the panda is violent?"),
    ("case_is_data", "What does ord('A') return in Python?", "What does ord('a') return in Python?"),
    ("case_is_data", "What is the ASCII code of the letter A?", "What is the ASCII code of the letter a?"),
    ("case_is_data", "Is 'A' > 'a' in JavaScript string comparison?", "Is 'a' > 'A' in JavaScript string comparison?"),
    ("case_is_data", "What is the Unicode code point of A in hex?", "What is the Unicode code point of a in hex?"),
    ("case_is_data", "Does the regex [a-z] match the letter A?", "Does the regex [a-z] match the letter a?"),
    ("filler_word_is_data", "How do you say hello in Korean?", "How do you say thanks in Korean?"),
    ("filler_word_is_data", "How do you say please in German?", "How do you say thank you in German?"),
    ("filler_word_is_data", "What is the sign for hello in American Sign Language?",
     "What is the sign for thanks in American Sign Language?"),
    ("filler_word_is_data",
     "For my flashcard app, give the word for 'hello' in Japanese, its romaji, its kana spelling, and one example sentence.",
     "For my flashcard app, give the word for 'thanks' in Japanese, its romaji, its kana spelling, and one example sentence."),
    ("filler_word_is_data",
     "For my flashcard app, give the word for 'please' in Mandarin, its pinyin, its characters, and one short example sentence.",
     "For my flashcard app, give the word for 'hello' in Mandarin, its pinyin, its characters, and one short example sentence."),
    ("filler_word_is_data", "Give me five synonyms for very.", "Give me five synonyms for really."),
    ("filler_word_is_data", "What part of speech is 'actually' in a sentence?", "What part of speech is 'the' in a sentence?"),
    ("filler_word_is_data", "Explain when to use the word 'also' in formal English writing, with three examples from business emails.",
     "Explain when to use the word 'just' in formal English writing, with three examples from business emails."),
    ("filler_is_data", "Under my renter's policy described here, is it just the tenant who is covered for liability?",
     "Under my renter's policy described here, is it the tenant who is covered for liability?"),
    ("filler_is_data", "Generate a product description for a very lightweight hiking backpack with a 30 liter capacity and rain cover.",
     "Generate a product description for a lightweight hiking backpack with a 30 liter capacity and rain cover."),
    ("filler_is_data", "Translate this sentence into French and keep the article: I bought a car yesterday at the dealer near my house.",
     "Translate this sentence into French and keep the article: I bought the car yesterday at the dealer near my house."),
    ("filler_is_data", "Label the sentiment of this review as positive, neutral or negative and explain briefly: The hotel was actually clean.",
     "Label the sentiment of this review as positive, neutral or negative and explain briefly: The hotel was clean."),
    ("courtesy_is_data", "Write a reply to this customer chat message and match its tone: Hey, where's my package?",
     "Write a reply to this customer chat message and match its tone: Where's my package?"),
]
for k, x, y in H:
    add(k, x, y)


EXTRA = [
    ("punctuation_is_data", "Is this valid YAML?\nname: web\nreplicas: 3", "Is this valid YAML?\nname web\nreplicas 3"),
    ("punctuation_is_data", "Fix the indentation in this YAML:\nservices:\n  db:\n    image: postgres",
     "Fix the indentation in this YAML:\nservices:\n  db\n    image: postgres"),
    ("punctuation_is_data", "Which delimiter does this CSV header use: name, age, city",
     "Which delimiter does this CSV header use: name; age; city"),
    ("punctuation_is_data", "Is this Markdown list numbered correctly?\n1. Apples\n2. Pears",
     "Is this Markdown list numbered correctly?\n1 Apples\n2 Pears"),
    ("punctuation_is_data", "Is this a valid Python dict literal: {'a': 1, 'b': 2}",
     "Is this a valid Python dict literal: {'a' 1, 'b' 2}"),
    ("time_ampm", "Convert 5 a.m. Eastern time to Tokyo time.", "Convert 5 p.m. Eastern time to Tokyo time."),
    ("time_ampm", "Set a reminder for 7 a.m. tomorrow to call the dentist.", "Set a reminder for 7 p.m. tomorrow to call the dentist."),
    ("time_ampm", "Is a flight landing at 11:30 p.m. too late to catch the last train in Zurich?",
     "Is a flight landing at 11:30 a.m. too late to catch the last train in Zurich?"),
]
for k, x, y in EXTRA:
    add(k, x, y)


TR = ("You are a professional translator for a travel phrasebook app. Translate the user's sentence into {lang}, "
      "keep the register, and return only the translation. Sentence: {s}")
J = [
    ("German", "I saw a dog near the hotel.", "I saw the dog near the hotel."),
    ("French", "Is there a pharmacy nearby?", "Is the pharmacy nearby?"),
    ("Spanish", "Could you call a taxi for me?", "Can you call a taxi for me?"),
    ("Italian", "I would like the fish.", "I will like the fish."),
    ("Portuguese", "The room is very cold.", "The room is cold."),
    ("Dutch", "Hello, a table for two.", "A table for two."),
    ("Japanese", "Thank you, the bill.", "The bill."),
    ("Korean", "I just arrived at an airport.", "I arrived at the airport."),
]
for lang, x, y in J:
    add("filler_long_template", TR.format(lang=lang, s=x), TR.format(lang=lang, s=y))
LBL = ("Our checkout page shows the button label '{w}' after payment. Translate this label into French, Spanish and "
       "German for the localization file, as JSON with keys fr, es and de.")
for x, y in [("Thanks", "Cheers"), ("Hello", "Hey"), ("Please wait", "Wait")]:
    add("filler_long_template", LBL.format(w=x), LBL.format(w=y))
SENT = ("Rate the sentiment of this customer review on a scale from 1 (very negative) to 5 (very positive) and reply "
        "with the number only. Review: {r}")
for x, y in [("The staff were really friendly.", "The staff were friendly."),
             ("Delivery was very late.", "Delivery was late."),
             ("It actually works.", "It works."),
             ("Just awful.", "Awful.")]:
    add("filler_long_template", SENT.format(r=x), SENT.format(r=y))
GR = ("You are an English teacher. Say whether the student's sentence is grammatically correct, and if not, give the "
      "corrected sentence and a one-line reason. Student sentence: {s}")
for x, y in [("I have a umbrella.", "I have an umbrella."), ("She is an university student.", "She is a university student."),
             ("I can swim when I was five.", "I could swim when I was five."),
             ("If I won, I will buy a house.", "If I won, I would buy a house.")]:
    add("filler_long_template", GR.format(s=x), GR.format(s=y))

# ---------------------------------------------------------------- paraphrases (should hit)
PP = [
    ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
    ("What is the capital of Australia?", "What's the capital city of Australia?"),
    ("How many teaspoons are in a tablespoon?", "How many teaspoons make up a tablespoon?"),
    ("How do I undo my last git commit?", "How can I undo the last commit in git?"),
    ("What are the symptoms of vitamin D deficiency?", "What are symptoms of a vitamin D deficiency?"),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?"),
    ("What is the boiling point of water in Fahrenheit?", "At what temperature in Fahrenheit does water boil?"),
    ("How do I center a div in CSS?", "How can I center a div with CSS?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("What's the difference between a list and a tuple in Python?",
     "What is the difference between lists and tuples in Python?"),
    ("How do I remove duplicates from a list in Python?", "How can I remove duplicate items from a Python list?"),
    ("How long should I boil an egg for a soft yolk?", "How long do I boil an egg to get a soft yolk?"),
    ("What does HTTP stand for?", "What does the acronym HTTP stand for?"),
    ("Explain recursion in simple terms.", "Can you explain recursion in simple terms?"),
    ("How do I convert a string to an integer in JavaScript?", "How can I convert a string into an integer in JavaScript?"),
    ("What is the speed of light?", "What's the speed of light?"),
    ("How do I check my Python version?", "How can I check which version of Python I have?"),
    ("Write a haiku about the ocean.", "Please write a haiku about the ocean."),
    ("What is the tallest mountain in the world?", "Which mountain is the tallest in the world?"),
    ("How do I make cold brew coffee at home?", "How can I make cold brew coffee at home?"),
    ("Summarize the plot of Romeo and Juliet.", "Give me a summary of the plot of Romeo and Juliet."),
    ("How many bones are in the human body?", "How many bones does the human body have?"),
    ("What is a good name for a golden retriever puppy?", "What's a good name for a golden retriever puppy?"),
    ("How do I delete a branch in git?", "How can I delete a git branch?"),
    ("What causes the seasons on Earth?", "What causes Earth's seasons?"),
    ("Hey, how do I install numpy?", "How do I install numpy?"),
    ("Translate to French: Where is the library?", "Translate into French: Where is the library?"),
    ("How do I exit vim?", "How do I exit Vim?"),
    ("What is the population of Canada?", "What's the population of Canada?"),
    ("Give me three tips for better sleep.", "Give me 3 tips for better sleep."),
    ("What is the square root of 144?", "What's the square root of 144?"),
    ("How do I sort a dictionary by value in Python?", "How can I sort a Python dictionary by its values?"),
    ("What year did the Berlin Wall fall?", "In what year did the Berlin Wall fall?"),
    ("How do I make a pivot table in Excel?", "How can I create a pivot table in Excel?"),
    ("Is coffee bad for your heart?", "Is coffee bad for the heart?"),
    ("Write a SQL query to count rows in a table.", "Write an SQL query that counts the rows in a table."),
    ("What is machine learning?", "What is machine learning, in simple terms?"),
    ("How do I take a screenshot on a Mac?", "How can I take a screenshot on a Mac?"),
    ("Recommend a good book on habits.", "Can you recommend a good book about habits?"),
    ("Classify this review as positive or negative: The pizza was cold and late.",
     "Classify the following review as positive or negative: The pizza was cold and late."),
    ("Is this ticket billing, technical or account: I was charged twice this month.",
     "Is this ticket billing, technical, or account: I was charged twice this month."),
    ("Write a polite reminder to Maria Lopez that invoice 1040 for $375 was due on March 3.",
     "Write a polite reminder to Maria Lopez that invoice 1040 for $375 was due March 3."),
    ("What is the time complexity of binary search?", "What's the time complexity of a binary search?"),
    ("How do I find my IP address on Windows?", "How can I find my IP address on Windows?"),
    ("Convert 100 Fahrenheit to Celsius.", "Convert 100 degrees Fahrenheit to Celsius."),
    ("What are the health benefits of green tea?", "What health benefits does green tea have?"),
    ("How do I reset my router?", "How can I reset my router?"),
    ("What's a good substitute for buttermilk?", "What is a good substitute for buttermilk?"),
    ("Why is the sky blue?", "Why is the sky blue? Thanks!"),
    ("Explain the difference between TCP and UDP.", "Explain the difference between UDP and TCP."),
    ("How do I learn to touch type?", "How can I learn touch typing?"),
    ("Best way to learn Spanish quickly?", "What is the best way to learn Spanish quickly?"),
]
for x, y in PP:
    add("paraphrase", x, y, dup=True)

parser = argparse.ArgumentParser(description="red-team near-miss and paraphrase pairs")
parser.add_argument("--out", required=True, help="the JSONL file to write")
with open(parser.parse_args().out, "w", encoding="utf-8") as f:
    for p in pairs:
        f.write(json.dumps(p) + "\n")
print(len(pairs), Counter(p["kind"] for p in pairs))
print("near-misses", sum(not p["duplicate"] for p in pairs), "paraphrases", sum(p["duplicate"] for p in pairs))
