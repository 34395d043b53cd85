"""Build a second set of near-miss and paraphrase pairs for `llmbudget eval cache --mode replay`.

Written by a separate session that had not read the template guard's rules, the other pair builders or their
tests, then frozen and measured before anything was changed (see README, "A cache that never serves another
question's answer"): about 120 app-prompt templates (recipes and dosages, travel, support, HR and legal questions
by jurisdiction, code in several languages, spreadsheet formulas, extraction from short documents, emails,
tutoring, multiple choice, units, currencies, versions, quantifiers, superlatives) with several phrasings each.
A near miss changes one slot or swaps two, so the right answer differs; a paraphrase keeps the slots and changes
the phrasing or the surface (case, typos, punctuation, contractions, politeness). Deterministic (fixed seed).

    python ci/build_fresh_near_misses.py --out /tmp/fresh_near_misses.jsonl
"""
import argparse
import json
import random
import re
from collections import Counter


def _out() -> str:
    parser = argparse.ArgumentParser(description="near-miss and paraphrase pairs")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    return str(parser.parse_args().out)

SEED = 20240611
rng = random.Random(SEED)

# Each template: kind, phrasings (all same meaning), slots, vary (slot name or "swap:x,y"), n (near misses)
T = []


def tpl(kind, phrasings, slots, vary, n=12, dup=3):
    n = max(1, round(n * 0.56)) if n else 0
    T.append(dict(kind=kind, phrasings=phrasings, slots=slots, vary=vary, n=n, dup=dup))


# ---------------- numbers / recipe / dosage -----------------
tpl("number", [
    "My {dish} recipe serves {n} and uses {q} of {ing}. How much {ing} do I need to serve {m} people?",
    "I have a {dish} recipe for {n} people that calls for {q} of {ing}. How much {ing} should I use for {m} people?",
    "Scaling a {dish} recipe from {n} servings to {m} servings: the original uses {q} of {ing}. How much {ing} do I need?",
], dict(dish=["lasagna", "banana bread", "chicken curry", "pancake", "chili", "risotto"],
        n=["4", "6", "8"], q=["300 g", "2 cups", "500 ml", "3 tablespoons"],
        ing=["flour", "rice", "stock", "butter", "sugar"], m=["2", "3", "10", "12", "15", "20", "24"]), "m", n=14)

tpl("dosage", [
    "What is the maximum daily dose of {drug} for {who}?",
    "For {who}, what is the most {drug} that can safely be taken in one day?",
    "How much {drug} can {who} take per day at most?",
], dict(drug=["ibuprofen", "paracetamol", "acetaminophen", "aspirin", "cetirizine", "loratadine", "naproxen"],
        who=["adults", "children aged 6 to 12", "adults over 65", "pregnant women", "teenagers", "people with liver disease"]),
    "who", n=14)

tpl("dosage", [
    "Is it safe to take {mg} mg of {drug} every {h} hours?",
    "Can I safely take {drug} {mg} mg every {h} hours?",
    "Taking {mg} mg of {drug} every {h} hours, is that safe?",
], dict(mg=["200", "400", "500", "600", "800", "1000"], drug=["ibuprofen", "paracetamol", "naproxen"],
        h=["4", "6", "8", "12"]), "mg", n=10)

tpl("dosage", [
    "What is the recommended {drug} dose for a {w} kg {who}?",
    "How much {drug} should a {who} weighing {w} kg be given?",
], dict(drug=["amoxicillin", "ibuprofen", "paracetamol"], w=["10", "12", "15", "18", "20", "25", "30"],
        who=["child", "toddler", "dog"]), "w", n=10)

# ---------------- legal by jurisdiction -----------------
tpl("jurisdiction", [
    "How much notice must a landlord give to end a month-to-month tenancy in {place}?",
    "In {place}, what notice period does a landlord need to give to terminate a month-to-month lease?",
    "What's the required notice for a landlord ending a month-to-month rental in {place}?",
], dict(place=["California", "Texas", "New York", "Ontario", "England", "Scotland", "Victoria, Australia", "Florida",
               "Germany", "Ireland"]), "place", n=12)

tpl("jurisdiction", [
    "What is the statute of limitations for {claim} in {state}?",
    "How long do I have to file a {claim} claim in {state}?",
    "In {state}, what is the time limit for bringing a {claim} claim?",
], dict(claim=["personal injury", "breach of contract", "medical malpractice", "property damage", "defamation"],
        state=["California", "Texas", "Ohio", "Florida", "New York", "Illinois", "Georgia"]), "state", n=10)

tpl("jurisdiction", [
    "Is it legal to {act} in {place}?",
    "In {place}, is it legal to {act}?",
    "Am I allowed by law to {act} in {place}?",
], dict(act=["record a phone call without telling the other person", "turn right on a red light",
             "drink alcohol in public parks", "fly a drone over my neighbour's house", "carry pepper spray"],
        place=["California", "Germany", "New York City", "Japan", "the UK", "Canada", "Illinois"]), "place", n=10)

# ---------------- role reversal / swap -----------------
tpl("swap", [
    "Can a {x} sue a {y} for {thing}?",
    "Is it possible for a {x} to sue a {y} over {thing}?",
    "Can a {x} take a {y} to court for {thing}?",
], dict(x=["tenant", "employee", "patient", "customer"], y=["landlord", "employer", "doctor", "company"],
        thing=["emotional distress", "unpaid money", "breach of contract", "negligence"]), "swap:x,y", n=8)

tpl("swap", [
    "Is {x} faster than {y} for {task}?",
    "For {task}, is {x} faster than {y}?",
    "Does {x} run faster than {y} when doing {task}?",
], dict(x=["Python", "Go", "Node.js", "Rust", "Java"], y=["PHP", "Ruby", "C++", "Elixir", "C#"],
        task=["web servers", "number crunching", "parsing JSON", "string processing"]), "swap:x,y", n=8)

tpl("swap", [
    "Are all {x} {y}?",
    "Is every {x1} a {y1}?",
], dict(x=["squares"], y=["rectangles"], x1=["square"], y1=["rectangle"]), None, n=0, dup=0)  # placeholder (handled below)

# ---------------- programming -----------------
tpl("prog_lang", [
    "How do I {task} in {lang}?",
    "What's the best way to {task} using {lang}?",
    "{lang}: how can I {task}?",
], dict(task=["reverse a string", "read a CSV file", "sort a dictionary by value", "make an HTTP GET request",
              "parse a JSON string", "remove duplicates from a list", "get the current Unix timestamp",
              "check if a file exists", "convert a string to an integer", "generate a random UUID"],
        lang=["Python", "JavaScript", "Bash", "Go", "Rust", "Java", "C#", "Ruby", "PHP"]), "lang", n=16)

tpl("prog_task", [
    "How do I {task} in {lang}?",
    "In {lang}, how would I {task}?",
    "What's the {lang} code to {task}?",
], dict(task=["reverse a list", "sort a list in descending order", "sort a list in ascending order",
              "find the maximum value in a list", "find the minimum value in a list", "read a file line by line",
              "write a list to a file line by line", "convert a string to uppercase", "convert a string to lowercase",
              "split a string on commas", "join a list of strings with commas", "round a float up",
              "round a float down"],
        lang=["Python", "JavaScript", "TypeScript", "Java", "Kotlin"]), "task", n=16)

tpl("sql", [
    "Write a SQL query that returns the {k} {sup} expensive products from the products table.",
    "SQL query to get the {k} {sup} expensive products in the products table?",
    "I need a SQL query listing the {k} {sup} expensive rows of the products table.",
], dict(k=["5", "10", "3", "20"], sup=["most", "least"]), "sup", n=6)

tpl("sql", [
    "Write a SQL query to count orders per customer where the status is '{status}'.",
    "SQL: count the orders for each customer with status = '{status}'.",
    "How do I count, per customer, the orders whose status is '{status}' in SQL?",
], dict(status=["shipped", "pending", "cancelled", "refunded", "delivered"]), "status", n=6)

tpl("sql", [
    "In {db}, how do I {op}?",
    "How can I {op} in {db}?",
    "{db} question: how do I {op}?",
], dict(db=["PostgreSQL", "MySQL", "SQLite", "SQL Server", "Oracle"],
        op=["add a column to an existing table", "drop a column from an existing table", "rename a table",
            "create an index on a column", "drop an index", "list all tables", "list all databases",
            "get the current date", "concatenate two strings", "limit the number of rows returned"]), "op", n=14)

tpl("regex", [
    "Write a regex that matches {pattern}.",
    "Give me a regular expression to match {pattern}.",
    "What regex would match {pattern}?",
], dict(pattern=["US ZIP codes", "UK postcodes", "email addresses", "IPv4 addresses", "IPv6 addresses",
                 "dates in YYYY-MM-DD format", "dates in DD/MM/YYYY format", "hex colour codes",
                 "phone numbers in E.164 format", "US phone numbers", "URLs starting with https",
                 "times in 24-hour HH:MM format", "times in 12-hour format with AM/PM"]), "pattern", n=14)

tpl("bash", [
    "Write a bash one-liner to find all files larger than {size} in {dir}.",
    "Bash command to list every file bigger than {size} under {dir}?",
    "How do I find files over {size} in {dir} from the shell?",
], dict(size=["100MB", "1GB", "500MB", "10MB", "50KB"], dir=["/var", "/home", "the current directory"]), "size", n=8)

tpl("bash", [
    "Write a bash command that deletes {what} older than {d} days in {dir}.",
    "Shell one-liner to remove {what} in {dir} that are older than {d} days?",
], dict(what=["log files", ".tmp files", "files"], d=["1", "3", "7", "14", "30", "90"], dir=["/tmp", "/var/log", "~/Downloads"]),
    "d", n=8)

tpl("bash", [
    "How do I count the lines in all {ext} files in a directory with bash?",
    "Bash: count total lines across every {ext} file in a folder.",
], dict(ext=[".py", ".js", ".ts", ".go", ".java", ".md", ".csv"]), "ext", n=6)

tpl("version", [
    "What's new in {prod}?",
    "What are the main new features in {prod}?",
    "Summarise the changes introduced in {prod}.",
], dict(prod=[("Python 3.11", "Python 3.12", "Python 3.13"), ("Django 4.2", "Django 5.0", "Django 5.1"),
              ("Node.js 18", "Node.js 20", "Node.js 22"), ("Java 17", "Java 21"), ("React 18", "React 19"),
              ("iOS 17", "iOS 18"), ("Ubuntu 22.04", "Ubuntu 24.04"), ("PostgreSQL 15", "PostgreSQL 16"),
              ("Windows 10", "Windows 11"), ("TypeScript 5.0", "TypeScript 5.4")]), "group:prod", n=14)

tpl("version", [
    "Does the {phone} support {feature}?",
    "Is {feature} supported on the {phone}?",
    "Can the {phone} do {feature}?",
], dict(phone=[("iPhone 14", "iPhone 15", "iPhone 13"), ("Galaxy S22", "Galaxy S23", "Galaxy S24"),
               ("Pixel 7", "Pixel 8"), ("iPhone 15", "iPhone 15 Pro")],
        feature=["USB-C charging", "satellite SOS", "an always-on display", "Wi-Fi 7", "eSIM only",
                 "8K video recording"]), "group:phone", n=12)

tpl("version", [
    "How do I upgrade from {p} {v1} to {v2}?",
    "What are the steps to migrate a project from {p} {v1} to {v2}?",
], dict(p=["Python", "Angular", "Vue", "Laravel"], v1=["2", "3.8", "15", "9"], v2=["3", "3.12", "17", "11", "10"]),
    "v2", n=8)

tpl("spreadsheet", [
    "What {app} formula {op} column B where column A equals \"{val}\"?",
    "In {app}, which formula {op} the values in column B when column A is \"{val}\"?",
    "{app} formula that {op} column B for rows where A is \"{val}\"?",
], dict(app=["Excel", "Google Sheets"], op=["sums", "counts", "averages", "finds the maximum of"],
        val=["East", "West", "Q1", "Paid"]), "op", n=10)

tpl("spreadsheet", [
    "In Excel, how do I get the {nth} largest value in A1:A100?",
    "Excel formula for the {nth} largest number in the range A1:A100?",
    "Which Excel formula returns the {nth} highest value in A1:A100?",
], dict(nth=["2nd", "3rd", "5th", "10th", "4th"]), "nth", n=6)

tpl("spreadsheet", [
    "In Google Sheets, how do I round a number to {d} decimal places?",
    "Google Sheets: round a value to {d} decimal places, which formula?",
], dict(d=["1", "2", "3", "0", "4"]), "d", n=5)

tpl("spreadsheet", [
    "Excel: how do I {op} duplicates in column {c}?",
    "How can I {op} duplicate values in column {c} in Excel?",
], dict(op=["highlight", "remove", "count"], c=["A", "C"]), "op", n=5)

# ---------------- extraction over documents (long) -----------------
INV = ("Invoice {inv} from {vendor}, dated {date}. Items: {items}. Subtotal {sub} {cur}, VAT {vat}%. "
       "Payment terms: net {terms} days.")
tpl("extraction_field", [
    "Extract the {field} from the following invoice and return it as JSON. " + INV,
    "Return JSON containing the {field} found in this invoice. " + INV,
    "From the invoice below, pull out the {field} as JSON: " + INV,
], dict(field=["invoice date", "vendor name", "subtotal", "VAT rate", "payment terms", "invoice number",
               "currency", "list of items"],
        inv=["INV-2041", "INV-3380", "A-119"], vendor=["Northwind Traders", "Blue Harbor Ltd", "Acme Supplies"],
        date=["3 March 2024", "14 June 2024"], items=["12 ergonomic chairs", "40 reams of paper and 6 toner cartridges"],
        sub=["1,240.00", "3,980.50"], cur=["EUR", "USD", "GBP"], vat=["20", "19", "7"], terms=["30", "45", "14"]),
    "field", n=12)

tpl("extraction_doc", [
    "Extract the total amount due from this invoice: " + INV,
    "What is the payment term in days in this invoice? " + INV,
], dict(inv=["INV-2041", "INV-3380"], vendor=["Northwind Traders", "Blue Harbor Ltd"], date=["3 March 2024"],
        items=["12 ergonomic chairs"], sub=["1,240.00", "3,980.50", "1,420.00", "12,400.00"], cur=["EUR", "USD"],
        vat=["20", "19"], terms=["30", "45", "14", "60"]), "sub", n=0, dup=0)  # replaced by custom below

EMAIL_DOC = "Hi all, let's move the weekly sync to {day} at {time} in room {room}. Please bring the {topic} figures. Thanks, {name}"
tpl("extraction_doc", [
    "From the email below, extract the meeting day and time as JSON. Email: \"" + EMAIL_DOC + "\"",
    "Read this email and return the day and time of the meeting in JSON. Email: \"" + EMAIL_DOC + "\"",
], dict(day=["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], time=["9:30", "10:00", "14:00", "15:30", "4 pm"],
        room=["4B", "2A", "12"], topic=["Q3 sales", "hiring", "budget"], name=["Priya", "Tom", "Ana"]), "time", n=8)

tpl("extraction_doc", [
    "Classify the sentiment of this review as positive, negative or neutral: \"{review}\"",
    "Is the following customer review positive, negative or neutral? \"{review}\"",
    "Sentiment (positive / negative / neutral) of this review: \"{review}\"",
], dict(review=[
    ("The delivery was fast and the blender works great.", "The delivery was fast but the blender stopped working after a day.",
     "The delivery was slow but the blender works great."),
    ("Battery lasts all day, I love this phone.", "Battery barely lasts half a day, I regret buying this phone.",
     "Battery lasts about a day, it's an okay phone."),
    ("The hotel staff were friendly and the room was spotless.", "The hotel staff were rude and the room was dirty.",
     "The hotel staff were friendly but the room was dirty."),
    ("Great value for money, would buy again.", "Poor value for money, would not buy again."),
    ("The course was clear and well organised.", "The course was confusing and badly organised.")]),
    "group:review", n=10)

# ---------------- email drafting (long) -----------------
EM = ("Write a {tone} email to {rcpt} explaining that the {proj} launch is delayed by {wk} because of {reason}. "
      "Keep it under 150 words and end with a clear next step.")
EM2 = ("Draft an email to {rcpt}, {tone} in tone, letting them know the {proj} launch is pushed back {wk} due to {reason}. "
       "Under 150 words, and finish with a clear next step.")
tpl("email", [EM, EM2], dict(tone=["formal", "friendly", "apologetic", "brief and direct"],
                            rcpt=["our biggest customer", "the engineering team", "the CEO", "our investors", "a new client"],
                            proj=["mobile app", "billing portal", "website redesign"], wk=["two weeks", "one month", "three days"],
                            reason=["a security audit", "a supplier delay", "critical bugs found in testing"]),
    "rcpt", n=8)
tpl("email", [EM, EM2], dict(tone=["formal", "friendly", "apologetic", "casual"],
                            rcpt=["our biggest customer", "the engineering team"],
                            proj=["mobile app", "billing portal"], wk=["two weeks", "one month", "three days", "six weeks"],
                            reason=["a security audit", "a supplier delay", "critical bugs found in testing", "staff illness"]),
    "tone", n=6, dup=0)
tpl("email", [EM, EM2], dict(tone=["formal", "friendly"], rcpt=["our biggest customer", "the CEO"],
                            proj=["mobile app", "billing portal"], wk=["two weeks", "one month", "three days", "six weeks"],
                            reason=["a security audit", "a supplier delay"]), "wk", n=6, dup=0)
tpl("email", [EM, EM2], dict(tone=["formal", "friendly"], rcpt=["the CEO", "a new client"],
                            proj=["mobile app", "billing portal"], wk=["two weeks", "one month"],
                            reason=["a security audit", "a supplier delay", "critical bugs found in testing", "staff illness",
                                    "a change in regulations"]), "reason", n=6, dup=0)

tpl("email", [
    "Write a short reply to a customer who asked for a {remedy} for order {order}, {decision} the request politely.",
    "Draft a brief, polite reply to a customer requesting a {remedy} on order {order}, {decision} the request.",
], dict(remedy=["refund", "replacement", "discount"], order=["#48213", "#50977", "#11235"],
        decision=["accepting", "declining"]), "decision", n=6)

# ---------------- tutoring -----------------
tpl("math", [
    "Solve for x: {a}x + {b} = {c}.",
    "Find x if {a}x + {b} = {c}.",
    "What is x when {a}x + {b} = {c}?",
], dict(a=["2", "3", "4", "5", "7"], b=["1", "5", "8", "12"], c=["11", "17", "20", "29", "35", "41"]), "c", n=8)
tpl("math", [
    "What is the derivative of {f}?",
    "Differentiate {f} with respect to x.",
    "Find d/dx of {f}.",
], dict(f=["sin(x)", "cos(x)", "tan(x)", "x^2", "x^3", "e^x", "e^(2x)", "ln(x)", "ln(2x)", "x*sin(x)", "1/x"]), "f", n=10)
tpl("math", [
    "What is {p}% of {n}?",
    "Calculate {p} percent of {n}.",
    "How much is {p}% of {n}?",
], dict(p=["5", "12", "15", "20", "25", "40"], n=["80", "250", "1,200", "64", "360"]), "p", n=8)
tpl("math", [
    "What is the probability of rolling {what} with two fair dice?",
    "With two fair six-sided dice, what's the chance of rolling {what}?",
], dict(what=["a sum of 7", "a sum of 8", "a sum of 12", "doubles", "at least one six", "no sixes", "a sum greater than 9"]),
    "what", n=7)
tpl("physics", [
    "A ball is dropped from {h} m. How long does it take to hit the ground, ignoring air resistance?",
    "Ignoring air resistance, how long does a ball dropped from a height of {h} m take to reach the ground?",
], dict(h=["5", "10", "20", "45", "80", "100"]), "h", n=6)
tpl("physics", [
    "What is the kinetic energy of a {m} kg object moving at {v} m/s?",
    "Calculate the kinetic energy of a {m} kg mass travelling at {v} m/s.",
], dict(m=["2", "5", "10", "1,000", "1,500"], v=["3", "4", "10", "20", "25"]), "v", n=7)
tpl("physics", [
    "Why does {thing} happen?",
    "Can you explain why {thing} happens?",
    "What causes {thing}?",
], dict(thing=["a lunar eclipse", "a solar eclipse", "high tide", "low tide", "a rainbow", "a double rainbow",
               "static electricity", "lightning", "thunder"]), "thing", n=8)
tpl("history", [
    "Who was the {ord} president of the United States?",
    "Who served as the {ord} US president?",
    "Name the {ord} president of the USA.",
], dict(ord=["1st", "3rd", "16th", "26th", "32nd", "35th", "40th", "44th"]), "ord", n=7)
tpl("history", [
    "What were the main causes of the {war}?",
    "Explain the main causes of the {war}.",
    "Why did the {war} start?",
], dict(war=["First World War", "Second World War", "Korean War", "Crimean War", "American Civil War", "Vietnam War",
             "Hundred Years' War", "Thirty Years' War"]), "war", n=8)
tpl("history", [
    "In what year did {event}?",
    "What year did {event}?",
    "When exactly (which year) did {event}?",
], dict(event=["the Berlin Wall fall", "the Berlin Wall go up", "the Titanic sink", "World War I begin", "World War I end",
               "the French Revolution begin", "the Roman Empire fall in the West", "man first land on the Moon"]), "event", n=8)
tpl("geography", [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "{c}'s capital city is what?",
], dict(c=["Australia", "Austria", "Canada", "Nigeria", "Niger", "Slovakia", "Slovenia", "Brazil", "Turkey", "Iceland",
           "Ireland"]), "c", n=10)
tpl("superlative", [
    "What is the {sup} {thing} in {place}?",
    "Which {thing} in {place} is the {sup}?",
    "Name the {sup} {thing} in {place}.",
], dict(sup=[("longest", "shortest"), ("highest", "lowest"), ("largest", "smallest"), ("oldest", "newest")],
        thing=["river", "mountain", "lake", "city", "national park"],
        place=["Europe", "Africa", "South America", "Canada", "Japan"]), "group:sup", n=12)
tpl("superlative", [
    "Which planet is the {sup} from the Sun?",
    "What planet is {sup} from the Sun?",
], dict(sup=["closest", "farthest", "second closest", "third closest"]), "sup", n=4)
tpl("superlative", [
    "What's the {sup} way to get from {a} to {b}?",
    "From {a} to {b}, what is the {sup} way to travel?",
    "How do I get from {a} to {b} the {sup} way?",
], dict(sup=["cheapest", "fastest", "most scenic"], a=["London", "Paris", "Tokyo", "New York"],
        b=["Edinburgh", "Amsterdam", "Kyoto", "Boston"]), "sup", n=8)

# ---------------- MCQ (long) -----------------
tpl("mcq", [
    "Question: Which of the following is a {cat}? A) Dolphin B) Crocodile C) Salmon D) Eagle. Answer with the letter only.",
    "Pick the {cat} among these options and reply with just the letter: A) Dolphin B) Crocodile C) Salmon D) Eagle.",
], dict(cat=["mammal", "reptile", "fish", "bird"]), "cat", n=4)
tpl("mcq", [
    "Which of these is the {prop}? A) Hydrogen B) Helium C) Oxygen D) Iron. Reply with one letter.",
    "Reply with one letter: which of these is the {prop}? A) Hydrogen B) Helium C) Oxygen D) Iron.",
], dict(prop=["lightest element", "heaviest element", "most abundant element in Earth's crust", "noble gas"]), "prop", n=4)
tpl("mcq", [
    "Multiple choice: What is {a} x {b}? A) {o1} B) {o2} C) {o3} D) {o4}. Explain your answer briefly.",
    "Choose the right answer and explain briefly. {a} x {b} = ? A) {o1} B) {o2} C) {o3} D) {o4}.",
], dict(a=["6", "7", "8", "9"], b=["7", "8", "9"], o1=["42"], o2=["48"], o3=["56"], o4=["63"]), "a", n=6)
tpl("mcq", [
    "Which statement about {topic} is {tf}? A) {s1} B) {s2} C) {s3}. Answer A, B or C.",
    "Answer A, B or C. Which of these statements about {topic} is {tf}? A) {s1} B) {s2} C) {s3}.",
], dict(topic=["photosynthesis"], tf=["true", "false"], s1=["It produces oxygen"], s2=["It happens only at night"],
        s3=["It uses carbon dioxide"]), "tf", n=2)

# ---------------- comparison -----------------
tpl("comparison", [
    "What's the difference between {xy}?",
    "How do {xy} differ?",
    "Explain the difference between {xy}.",
], dict(xy=[("let and var", "let and const", "var and const"), ("TCP and UDP", "TCP and HTTP", "UDP and QUIC"),
            ("a Roth IRA and a traditional IRA", "a Roth IRA and a 401(k)", "a traditional IRA and a 401(k)"),
            ("an LLC and an S corp", "an LLC and a sole proprietorship", "an S corp and a C corp"),
            ("baking soda and baking powder", "baking powder and yeast"), ("RAM and ROM", "RAM and an SSD"),
            ("a virus and a bacterium", "a bacterium and a fungus"), ("weather and climate", "climate and seasons"),
            ("a list and a tuple in Python", "a list and a set in Python", "a tuple and a set in Python")]),
    "group:xy", n=12)
tpl("comparison", [
    "Which is better for {use}: {xy}?",
    "For {use}, should I choose {xy}?",
], dict(use=["a beginner", "a small business", "a data science project"],
        xy=[("Python or JavaScript", "Python or Java", "Python or R"), ("PostgreSQL or MySQL", "PostgreSQL or MongoDB"),
            ("a MacBook Air or a ThinkPad", "a MacBook Air or a MacBook Pro"), ("AWS or Azure", "AWS or Google Cloud")]),
    "group:xy", n=6)

# ---------------- dates & time zones -----------------
tpl("timezone", [
    "If it's {t} in {c1}, what time is it in {c2}?",
    "When it is {t} in {c1}, what's the time in {c2}?",
    "{t} in {c1} is what time in {c2}?",
], dict(t=["9:00 am", "3:00 pm", "11:30 pm", "noon"], c1=["New York", "London", "Tokyo", "Sydney", "Berlin"],
        c2=["Los Angeles", "Mumbai", "Singapore", "Chicago", "Paris", "Dubai"]), "c2", n=8)
tpl("timezone", [
    "If it's {t} in {c1}, what time is it in {c2}?",
    "When it is {t} in {c1}, what's the time in {c2}?",
], dict(t=["9:00 am", "3:00 pm"], c1=["New York", "London", "Tokyo"], c2=["Los Angeles", "Mumbai", "Singapore"]),
    "swap:c1,c2", n=6, dup=0)
tpl("date", [
    "What day of the week was {d}?",
    "Which weekday was {d}?",
    "{d} fell on which day of the week?",
], dict(d=["1 January 2000", "4 July 1976", "25 December 2023", "29 February 2024", "11 September 2001", "14 March 2015",
           "1 January 2001"]), "d", n=7)
tpl("date", [
    "How many days are there between {d1} and {d2}?",
    "Count the days from {d1} to {d2}.",
    "Number of days between {d1} and {d2}?",
], dict(d1=["1 March 2024", "15 January 2024", "10 June 2023"], d2=["31 March 2024", "1 April 2024", "1 May 2024",
                                                                   "25 December 2024", "31 December 2024"]), "d2", n=8)
tpl("date", [
    "What date is {n} business days after {d}?",
    "Counting only business days, what is the date {n} business days after {d}?",
], dict(n=["3", "5", "10", "15", "20"], d=["Friday 5 April 2024", "Monday 2 September 2024"]), "n", n=6)

# ---------------- currency & units -----------------
tpl("conversion", [
    "Convert {amt} {c1} to {c2}.",
    "How much is {amt} {c1} in {c2}?",
    "What's {amt} {c1} worth in {c2}?",
], dict(amt=["100", "250", "1,000", "49.99"], c1=["US dollars", "euros", "British pounds", "Japanese yen"],
        c2=["Canadian dollars", "Swiss francs", "Indian rupees", "Mexican pesos"]), "c2", n=8)
tpl("conversion", [
    "Convert {amt} {c1} to {c2}.",
    "How much is {amt} {c1} in {c2}?",
], dict(amt=["100", "250", "1,000"], c1=["US dollars", "euros", "British pounds"], c2=["Japanese yen", "Swiss francs"]),
    "swap:c1,c2", n=6, dup=0)
tpl("conversion", [
    "Convert {amt} {c1} to {c2}.",
    "How much is {amt} {c1} in {c2}?",
], dict(amt=["100", "250", "1,000", "49.99", "20", "5,000"], c1=["US dollars", "euros"], c2=["British pounds", "Swiss francs"]),
    "amt", n=6, dup=0)
tpl("conversion", [
    "How many {u2} are in {n} {u1}?",
    "Convert {n} {u1} to {u2}.",
    "{n} {u1} is how many {u2}?",
], dict(n=["5", "10", "26.2", "100", "3"], u1=["miles", "kilometres", "pounds", "kilograms", "gallons", "litres"],
        u2=["kilometres", "miles", "kilograms", "pounds", "litres", "gallons"]), "swap:u1,u2", n=8)
tpl("conversion", [
    "Convert {t} degrees {s1} to {s2}.",
    "What is {t}°{a1} in {s2}?",
], dict(t=["100", "37", "-40", "0", "350", "72"], s1=["Fahrenheit"], a1=["F"], s2=["Celsius"]), "t", n=6)
tpl("conversion", [
    "How many grams is {n} cup of {ing}?",
    "{n} cup of {ing} in grams?",
    "What does {n} cup of {ing} weigh in grams?",
], dict(n=["1", "1/2", "1/4", "3/4"], ing=["flour", "sugar", "butter", "rice", "honey", "oats", "cocoa powder"]),
    "ing", n=8)

# ---------------- e-commerce / support -----------------
tpl("support", [
    "Where is my order {order}?",
    "Can you check the status of order {order}?",
    "What's the delivery status for order {order}?",
], dict(order=["#10452", "#10453", "#20981", "#77310", "#77301", "#5530", "#55300"]), "order", n=7)
tpl("support", [
    "How do I {act} an item I bought on sale?",
    "Can I {act} something I purchased during the sale, and how?",
    "What's the process to {act} a sale item?",
], dict(act=["return", "exchange", "cancel", "price-match"]), "act", n=4)
tpl("support", [
    "Can I return {item} after {d} days?",
    "Is it possible to return {item} {d} days after delivery?",
], dict(item=["a laptop", "shoes", "a mattress", "opened headphones"], d=["10", "14", "30", "45", "60", "90"]), "d", n=7)
tpl("support", [
    "Do you ship to {c}?",
    "Is shipping to {c} available?",
    "Can you deliver to {c}?",
], dict(c=["Canada", "Australia", "Norway", "Brazil", "Japan", "the Canary Islands", "Puerto Rico", "Alaska"]), "c", n=7)
tpl("support", [
    "Hi, I ordered the {prod} in {col}, size {size}, but received the wrong item. I'd like a {remedy}. What should I do?",
    "Hello, my order for the {prod} ({col}, size {size}) arrived as the wrong item and I want a {remedy}. What are the next steps?",
], dict(prod=["Trailrunner jacket", "Classic hoodie", "Aero running shoes"], col=["navy", "black", "olive"],
        size=["M", "L", "10", "S"], remedy=["full refund", "replacement", "store credit"]), "remedy", n=6)
tpl("support", [
    "Hi, I ordered the {prod} in {col}, size {size}, but received the wrong item. I'd like a {remedy}. What should I do?",
    "Hello, my order for the {prod} ({col}, size {size}) arrived as the wrong item and I want a {remedy}. What are the next steps?",
], dict(prod=["Trailrunner jacket", "Classic hoodie", "Aero running shoes", "Summit backpack"], col=["navy", "black"],
        size=["M", "L"], remedy=["full refund", "replacement"]), "prod", n=4, dup=0)
tpl("support", [
    "How do I {op} two-factor authentication on my {svc} account?",
    "On {svc}, how can I {op} 2FA for my account?",
    "Steps to {op} two-factor authentication for {svc}?",
], dict(op=["enable", "disable", "reset"], svc=["Google", "GitHub", "Instagram", "PayPal", "Microsoft"]), "op", n=8)
tpl("support", [
    "How do I {op} {pkg} on {os}?",
    "What's the command to {op} {pkg} on {os}?",
], dict(op=["install", "uninstall", "update"], pkg=["Docker", "Node.js", "PostgreSQL", "nginx"],
        os=["Ubuntu", "macOS", "Windows 11", "Fedora"]), "op", n=8)
tpl("support", [
    "How do I {op} the sudo group on Ubuntu?",
    "On Ubuntu, how can I {op} the sudo group?",
], dict(op=["add a user to", "remove a user from", "list the members of"]), "op", n=3)
tpl("support", [
    "In git, how do I undo the last commit {keep}?",
    "Git: how can I undo my last commit {keep}?",
], dict(keep=["but keep the changes", "and discard the changes", "that I already pushed", "but keep it staged"]), "keep", n=4)

# ---------------- HR / policy -----------------
tpl("hr", [
    "How many days of {leave} leave do {who} employees get?",
    "What is the {leave} leave entitlement for {who} employees?",
    "For {who} staff, how much {leave} leave is there?",
], dict(leave=["parental", "sick", "annual", "bereavement", "maternity", "paternity", "study"],
        who=["full-time", "part-time", "contract", "probationary"]), "leave", n=8)
tpl("hr", [
    "How many days of {leave} leave do {who} employees get?",
    "What is the {leave} leave entitlement for {who} employees?",
], dict(leave=["parental", "sick", "annual"], who=["full-time", "part-time", "contract", "probationary"]), "who", n=6, dup=0)
tpl("hr", [
    "Is the office closed on {hol}?",
    "Do we get {hol} off?",
    "Is {hol} a company holiday?",
], dict(hol=["Good Friday", "Easter Monday", "Boxing Day", "Christmas Eve", "New Year's Eve", "Juneteenth", "Veterans Day"]),
    "hol", n=6)
tpl("hr", [
    "What is the notice period for employees with {n} years of service?",
    "If I have worked here for {n} years, what notice period applies to me?",
], dict(n=["1", "2", "3", "5", "10", "less than 1"]), "n", n=6)
tpl("hr", [
    "Can I expense {item} when travelling for work?",
    "Is {item} reimbursable on a business trip?",
    "Will the company reimburse {item} during work travel?",
], dict(item=["alcohol with dinner", "airport lounge access", "a taxi to the airport", "laundry", "in-flight Wi-Fi",
              "a gym day pass", "travel insurance"]), "item", n=6)

# ---------------- travel -----------------
tpl("travel", [
    "Find me the cheapest flight from {a} to {b} on {d}.",
    "What's the cheapest flight {a} to {b} on {d}?",
    "Cheapest {a} to {b} flight on {d}, please.",
], dict(a=["London", "Berlin", "Madrid", "Chicago"], b=["Rome", "Lisbon", "Boston", "Denver"],
        d=["12 May", "13 May", "1 June", "20 July"]), "swap:a,b", n=6)
tpl("travel", [
    "Find me the cheapest flight from {a} to {b} on {d}.",
    "What's the cheapest flight {a} to {b} on {d}?",
], dict(a=["London", "Berlin", "Madrid"], b=["Rome", "Lisbon", "Boston"], d=["12 May", "13 May", "1 June", "20 July",
                                                                          "2 June"]), "d", n=6, dup=0)
tpl("travel", [
    "Do I need a visa to visit {c} as a {nat} citizen?",
    "As a {nat} citizen, do I need a visa for {c}?",
    "Is a visa required for {nat} citizens travelling to {c}?",
], dict(c=["Japan", "the United States", "India", "Brazil", "Turkey", "the UK"],
        nat=["US", "UK", "Indian", "Canadian", "Australian", "Nigerian", "Chinese"]), "nat", n=8)
tpl("travel", [
    "What's the checked baggage allowance for {cls} class on {air}?",
    "On {air}, how much checked baggage is allowed in {cls} class?",
], dict(cls=["economy", "premium economy", "business", "first"], air=["Emirates", "Lufthansa", "Delta", "Qantas"]),
    "cls", n=6)
tpl("travel", [
    "Book a hotel in {city} for {n} nights from {d} for {k} adults, near the city centre, with free cancellation.",
    "I need a hotel in {city} near the centre with free cancellation: {k} adults, {n} nights starting {d}.",
], dict(city=["Lisbon", "Prague", "Barcelona", "Vienna"], n=["2", "3", "4", "7"], d=["3 May", "10 May"],
        k=["1", "2", "3", "4"]), "k", n=6)
tpl("travel", [
    "Book a hotel in {city} for {n} nights from {d} for {k} adults, near the city centre, with free cancellation.",
    "I need a hotel in {city} near the centre with free cancellation: {k} adults, {n} nights starting {d}.",
], dict(city=["Lisbon", "Prague", "Barcelona", "Vienna"], n=["2", "3", "4", "7"], d=["3 May", "10 May"],
        k=["2"]), "n", n=6, dup=0)

# ---------------- negation -----------------
tpl("negation", [
    "Which of these numbers are {neg}prime: 2, 9, 15, 17, 21, 23?",
    "From 2, 9, 15, 17, 21 and 23, which ones are {neg}prime?",
], dict(neg=["", "not "]), "neg", n=1)
tpl("negation", [
    "Which foods are {neg}safe for dogs to eat?",
    "What foods are {neg}safe to give a dog?",
], dict(neg=["", "not "]), "neg", n=1)
tpl("negation", [
    "Write a SQL query to find customers who have {neg}placed an order in the last {d} days.",
    "SQL to list customers that have {neg}placed any order in the past {d} days?",
], dict(neg=["", "not "], d=["30", "90", "7"]), "neg", n=3)
tpl("negation", [
    "Show me the orders that have {neg}shipped yet.",
    "List the orders that have {neg}shipped yet.",
], dict(neg=["already ", "not "]), "neg", n=1)
tpl("negation", [
    "Which medications should {neg}be taken with food?",
    "What medicines should {neg}be taken together with food?",
], dict(neg=["", "not "]), "neg", n=1)
tpl("negation", [
    "Which EU countries are {neg}in the eurozone?",
    "List the EU member states that are {neg}part of the eurozone.",
], dict(neg=["", "not "]), "neg", n=1)
tpl("negation", [
    "Which items are {neg}allowed in carry-on luggage on {air} flights?",
    "On {air} flights, what items are {neg}allowed in hand luggage?",
], dict(neg=["", "not "], air=["Ryanair", "United", "easyJet", "Delta"]), "neg", n=4)
tpl("negation", [
    "Write a Python function that returns the words in a list that do {neg}contain the letter '{l}'.",
    "Python function: return the list's words that do {neg}contain '{l}'.",
], dict(neg=["", "not "], l=["a", "e", "z"]), "neg", n=3)
tpl("negation", [
    "My {dev} is {state}. What should I do?",
    "What should I do? My {dev} is {state}.",
], dict(dev=["laptop", "phone", "iPad"], state=["charging", "not charging", "charging slowly", "overheating while charging"]),
    "state", n=6)
tpl("negation", [
    "Is {x} {neg}a good idea for {who}?",
    "For {who}, is {x} {neg}a good idea?",
], dict(x=["intermittent fasting", "running every day", "a keto diet"], neg=["", "not "],
        who=["teenagers", "people with diabetes", "pregnant women"]), "neg", n=3)

# ---------------- quantifiers -----------------
tpl("quantifier", [
    "Write a Python function that returns True if {q} of the numbers in a list are negative.",
    "Python: a function returning True when {q} of the list's numbers are negative.",
], dict(q=["all", "any", "none", "exactly two", "more than half"]), "q", n=5)
tpl("quantifier", [
    "Write a SQL query that returns customers who bought {q} of the products in the 'Garden' category.",
    "SQL: list the customers who purchased {q} of the products in category 'Garden'.",
], dict(q=["all", "none", "at least one", "at least three"]), "q", n=4)
tpl("quantifier", [
    "Which students passed {q} of their exams? Use the table below. Alice: math pass, physics fail, art pass. "
    "Bob: math pass, physics pass, art pass. Chen: math fail, physics fail, art fail. Dana: math fail, physics pass, art pass.",
    "Using the table, which students passed {q} of their exams? Alice: math pass, physics fail, art pass. "
    "Bob: math pass, physics pass, art pass. Chen: math fail, physics fail, art fail. Dana: math fail, physics pass, art pass.",
], dict(q=["all", "none", "at least one", "exactly two", "most"]), "q", n=5)
tpl("quantifier", [
    "Can {q} birds fly?",
    "Are {q} birds able to fly?",
], dict(q=["all", "most"]), "q", n=1)
tpl("quantifier", [
    "Do {q} EU countries use the euro?",
    "Is the euro used by {q} EU countries?",
], dict(q=["all", "most"]), "q", n=1)
tpl("quantifier", [
    "Does {q} employee have to complete the security training this quarter?",
    "Is {q} employee required to finish the security training this quarter?",
], dict(q=["every", "any new"]), "q", n=1)

# ---------------- named entities -----------------
tpl("entity", [
    "Who is the CEO of {co}?",
    "Who runs {co} as chief executive?",
    "Name the current CEO of {co}.",
], dict(co=["Microsoft", "Apple", "Alphabet", "Amazon", "Nvidia", "Intel", "AMD", "Netflix", "Spotify", "Siemens"]), "co", n=9)
tpl("entity", [
    "What is the population of {city}?",
    "How many people live in {city}?",
    "{city} population?",
], dict(city=["Vienna", "Venice", "Paris, Texas", "Paris", "Portland, Oregon", "Portland, Maine", "Sydney", "Sidney, Ohio",
              "Cambridge, England", "Cambridge, Massachusetts"]), "city", n=9)
tpl("entity", [
    "Summarise the plot of {book} in three sentences.",
    "In three sentences, summarise the plot of {book}.",
    "Give me a three-sentence plot summary of {book}.",
], dict(book=["1984", "Brave New World", "Pride and Prejudice", "Sense and Sensibility", "The Great Gatsby",
              "The Old Man and the Sea", "Of Mice and Men", "The Grapes of Wrath"]), "book", n=8)
tpl("entity", [
    "What is the phone number of our {city} office?",
    "Can you give me the {city} office's phone number?",
], dict(city=["Berlin", "Munich", "Dublin", "Austin", "Boston", "Denver"]), "city", n=6)
tpl("entity", [
    "Translate '{ph}' into {lang}.",
    "How do you say '{ph}' in {lang}?",
    "{lang} translation of '{ph}'?",
], dict(ph=["Where is the train station?", "I am allergic to peanuts", "Thank you very much", "The bill, please"],
        lang=["Spanish", "French", "German", "Japanese", "Italian", "Portuguese"]), "lang", n=8)
tpl("negation", [
    "Translate '{ph}' into {lang}.",
    "How do you say '{ph}' in {lang}?",
], dict(ph=[("I am hungry", "I am not hungry"), ("I like coffee", "I don't like coffee"),
            ("The shop is open", "The shop is closed"), ("I can come tomorrow", "I can't come tomorrow")],
        lang=["Spanish", "French", "German"]), "group:ph", n=5, dup=0)

# ---------------- surface noise for paraphrases -----------------
TYPOS = {"recipe": "recpie", "difference": "diffrence", "between": "betwen", "convert": "conver", "please": "plz",
         "should": "shoud", "weather": "wether", "necessary": "neccessary", "receive": "recieve", "received": "recieved",
         "separate": "seperate", "definitely": "definately", "which": "whcih", "what": "waht", "formula": "fromula",
         "maximum": "maxium", "allowed": "alowed", "country": "contry", "people": "poeple", "function": "fucntion",
         "query": "qeury", "employees": "employes", "customer": "costumer", "tomorrow": "tommorow", "available": "availble",
         "business": "buisness", "calculate": "calcuate", "explain": "explian"}
CONTRACT = [("What is", "What's"), ("what is", "what's"), ("do not", "don't"), ("Do not", "Don't"), ("I am", "I'm"),
            ("it is", "it's"), ("It is", "It's"), ("How do I", "how do i"), ("cannot", "can't"), ("I would", "I'd")]
PREFIX = ["Hi! ", "Hey, ", "Quick question: ", "Please help: ", "Hello, ", "Can you tell me: ", "I was wondering, ",
          "Hi there. "]
SUFFIX = [" Thanks!", " Thank you.", " thx", " Please.", " Cheers."]


def noise(s, r, strength=2):
    ops = r.sample(["case", "typo", "punct", "contract", "prefix", "suffix", "space"], k=strength)
    for op in ops:
        if op == "case":
            s = s.lower() if r.random() < 0.8 else s.upper()
        elif op == "typo":
            words = [w for w in TYPOS if re.search(r"\b" + w + r"\b", s)]
            if words:
                w = r.choice(words)
                s = re.sub(r"\b" + w + r"\b", TYPOS[w], s, count=1)
            else:
                s = s.replace(" the ", " teh ", 1) if " the " in s else s.replace(" a ", " a  ", 1)
        elif op == "punct":
            s = s.rstrip(".?!") if r.random() < 0.5 else s.rstrip(".?!") + "??"
        elif op == "contract":
            for x, y in CONTRACT:
                if x in s:
                    s = s.replace(x, y, 1)
                    break
        elif op == "prefix":
            p = r.choice(PREFIX)
            s = p + (s[0].lower() + s[1:] if s[:2] != "I " and not s[:3].isupper() else s)
        elif op == "suffix":
            s = s + r.choice(SUFFIX)
        elif op == "space":
            s = s.replace(", ", " , ", 1) if ", " in s else "  " + s + " "
    return s


# ---------------- generation -----------------
def slot_values(v):
    return v


def fill(ph, vals):
    return ph.format(**vals)


def pick(slots, r):
    out = {}
    for k, vs in slots.items():
        v = r.choice(vs)
        out[k] = v
    return out


def resolve(vals, group_sel):
    """group slots hold tuples of alternatives; group_sel maps slot -> index."""
    out = {}
    for k, v in vals.items():
        if isinstance(v, tuple):
            out[k] = v[group_sel.get(k, 0)]
        else:
            out[k] = v
    return out


def key_of(ti, vals):
    return (ti, tuple(sorted((k, str(v)) for k, v in vals.items())))


pairs = []
a_keys = set()
texts = set()


def norm(s):
    return re.sub(r"\s+", " ", s.lower().strip(" .?!"))


def add(a, b, dup, kind, ka, kb, short):
    if norm(a) in texts or norm(b) in texts or norm(a) == norm(b):
        return False
    if ka in a_keys:
        return False
    if not dup and kb in a_keys:
        return False
    a_keys.add(ka)
    texts.add(norm(a))
    texts.add(norm(b))
    pairs.append({"a": a, "b": b, "duplicate": dup, "kind": kind})
    return True


planned_b_keys = set()
for ti, t in enumerate(T):
    made = 0
    tries = 0
    while made < t["n"] and tries < 400:
        tries += 1
        vals = pick(t["slots"], rng)
        vary = t["vary"]
        if vary.startswith("swap:"):
            x, y = vary[5:].split(",")
            if vals[x] == vals[y]:
                continue
            bvals = dict(vals)
            bvals[x], bvals[y] = vals[y], vals[x]
            asel = bsel = {}
        elif vary.startswith("group:"):
            s = vary[6:]
            g = vals[s]
            i, j = rng.sample(range(len(g)), 2)
            asel, bsel = {s: i}, {s: j}
            bvals = vals
        else:
            alts = [v for v in t["slots"][vary] if v != vals[vary]]
            bvals = dict(vals)
            bvals[vary] = rng.choice(alts)
            asel = bsel = {}
        av, bv = resolve(vals, asel), resolve(bvals, bsel)
        pa = rng.randrange(len(t["phrasings"]))
        pb = pa if rng.random() < 0.7 or len(t["phrasings"]) == 1 else rng.choice(
            [k for k in range(len(t["phrasings"])) if k != pa])
        a = fill(t["phrasings"][pa], av)
        b = fill(t["phrasings"][pb], bv)
        if rng.random() < 0.2:
            b = noise(b, rng, 1)
        ka, kb = key_of(ti, av), key_of(ti, bv)
        if ka in planned_b_keys:
            continue
        if add(a, b, False, t["kind"], ka, kb, None):
            planned_b_keys.add(kb)
            made += 1

# paraphrases: each template with dup > 0 contributes up to dup pairs
DUP_TARGET = 100
dup_made = 0
order = [ti for ti, t in enumerate(T) if t["dup"] > 0]
per = {ti: 0 for ti in order}
rounds = 0
while dup_made < DUP_TARGET and rounds < 5000:
    rounds += 1
    ti = rng.choice(order)
    t = T[ti]
    if per[ti] >= t["dup"] + 1:
        continue
    vals = pick(t["slots"], rng)
    sel = {}
    for k, v in vals.items():
        if isinstance(v, tuple):
            sel[k] = rng.randrange(len(v))
    av = resolve(vals, sel)
    ka = key_of(ti, av)
    if ka in planned_b_keys or ka in a_keys:
        continue
    pa = rng.randrange(len(t["phrasings"]))
    if len(t["phrasings"]) > 1 and rng.random() < 0.65:
        pb = rng.choice([k for k in range(len(t["phrasings"])) if k != pa])
        b = fill(t["phrasings"][pb], av)
        if rng.random() < 0.4:
            b = noise(b, rng, 1)
        how = "rephrase"
    else:
        b = noise(fill(t["phrasings"][pa], av), rng, rng.choice([1, 2, 3]))
        how = "surface"
    a = fill(t["phrasings"][pa], av)
    if add(a, b, True, "paraphrase_" + t["kind"], ka, ka, None):
        pairs[-1]["how"] = how
        per[ti] += 1
        dup_made += 1

# extra hand-written near misses (semantic traps not covered by slots)
HAND = [
    ("Are all squares rectangles?", "Are all rectangles squares?", "swap"),
    ("Is a tomato a fruit or a vegetable?", "Is a cucumber a fruit or a vegetable?", "entity"),
    ("Can I bring my dog to work on Fridays?", "Can I bring my dog to work on Mondays?", "hr"),
    ("What is 15% of 80?", "What is 80% of 15?", "swap"),
    ("How do I convert a list to a string in Python?", "How do I convert a string to a list in Python?", "swap"),
    ("How do I convert JSON to CSV in Python?", "How do I convert CSV to JSON in Python?", "swap"),
    ("Does the return policy cover items bought online?", "Does the return policy cover items bought in store?", "support"),
    ("Who won the 2018 FIFA World Cup?", "Who won the 2022 FIFA World Cup?", "number"),
    ("Who won the 2018 FIFA World Cup?", "Who hosted the 2018 FIFA World Cup?", "entity"),
    ("What is the boiling point of water at sea level in Fahrenheit?", "What is the boiling point of water at sea level in Celsius?", "conversion"),
    ("How long should I boil an egg for a runny yolk?", "How long should I boil an egg for a hard yolk?", "number"),
    ("How many calories are in a large banana?", "How many calories are in a small banana?", "superlative"),
    ("What time does the store open on Sundays?", "What time does the store close on Sundays?", "support"),
    ("Is the 2019 MacBook Pro compatible with macOS Sonoma?", "Is the 2017 MacBook Pro compatible with macOS Sonoma?", "version"),
    ("What is the square root of 144?", "What is the square of 144?", "math"),
    ("How do I merge two dictionaries in Python?", "How do I merge two lists in Python?", "prog_task"),
    ("Explain recursion to a five-year-old.", "Explain recursion to a computer science student.", "email"),
    ("Write a haiku about autumn.", "Write a haiku about spring.", "entity"),
    ("Write a limerick about a cat.", "Write a sonnet about a cat.", "entity"),
    ("How many ounces are in a pound?", "How many pounds are in an ounce?", "swap"),
    ("What's the minimum wage in California in 2024?", "What's the minimum wage in California in 2020?", "jurisdiction"),
    ("Is 1 a prime number?", "Is 2 a prime number?", "math"),
    ("Who wrote Hamlet?", "Who wrote Macbeth?", "entity"),
    ("Is coffee bad for you?", "Is coffee good for you?", "negation"),
    ("What happens if I miss a mortgage payment?", "What happens if I miss a car payment?", "entity"),
    ("What's the VAT rate in Germany?", "What's the reduced VAT rate in Germany?", "jurisdiction"),
    ("Can I use my HSA to pay for glasses?", "Can I use my FSA to pay for glasses?", "entity"),
    ("What is the difference between affect and effect?", "What is the difference between affect and impact?", "comparison"),
    ("How many weeks pregnant is 6 months?", "How many months pregnant is 6 weeks?", "swap"),
    ("Sort this list in ascending order: 5, 3, 9, 1.", "Sort this list in descending order: 5, 3, 9, 1.", "superlative"),
]
for a, b, kind in HAND:
    pairs.append({"a": a, "b": b, "duplicate": False, "kind": kind})
    texts.add(norm(a))
    texts.add(norm(b))

with open(_out(), "w", encoding="utf-8") as f:
    for p in pairs:
        f.write(json.dumps(p) + "\n")
print(len(pairs), Counter(p["duplicate"] for p in pairs))
print(Counter(p["kind"] for p in pairs if not p["duplicate"]))
print(Counter(p.get("how") for p in pairs if p["duplicate"]))
