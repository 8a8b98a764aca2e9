"""Small built-in text collections, made or written for nbft (no download).

- ``GENERAL_TEXT``: plain encyclopedic English, held out from every training set;
  its perplexity before and after fine-tuning probes forgetting.
- ``GENERAL_QA``: general questions the base SmolLM2-135M-Instruct answers correctly
  (checked once against the model, see docs/measurements.md): a second forgetting probe.
- ``domain_corpus``: deterministic documents about an invented world (people, places,
  organisations, dates, numbers) for continued pretraining and knowledge injection:
  no pretrained model has seen them.
"""
from __future__ import annotations

import json
import random

GENERAL_TEXT = [
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from the sun "
    "evaporates water from seas and lakes; the vapour rises, cools and condenses into clouds, and falls back "
    "as rain or snow. Rivers and groundwater then carry it back toward the sea, and the cycle begins again.",
    "Bread is one of the oldest prepared foods. Flour is mixed with water, salt and yeast, and the dough is "
    "kneaded so that gluten forms a stretchy network. While the dough rests, the yeast produces carbon "
    "dioxide, which is trapped in that network and makes the loaf rise before it is baked.",
    "A library lends books, newspapers and recordings to the people of a town. Many libraries also offer "
    "quiet rooms for study, computers with internet access, and reading groups for children. Librarians help "
    "visitors find information and keep the collection in order.",
    "The human heart is a muscle about the size of a fist. It pumps blood through two circuits: one carries "
    "blood to the lungs to pick up oxygen, and the other carries oxygen-rich blood to the rest of the body. "
    "At rest, an adult heart beats around sixty to eighty times a minute.",
    "Bicycles became popular in the late nineteenth century, when the safety bicycle with two wheels of equal "
    "size and a chain drive replaced earlier designs. Cycling is cheap, quiet and healthy, and in many cities "
    "special lanes separate cyclists from cars.",
    "Volcanoes form where molten rock from deep inside the Earth reaches the surface. Some erupt violently, "
    "throwing ash high into the sky, while others release slow rivers of lava. Over time, layers of cooled "
    "lava and ash can build mountains and even new islands.",
    "Photosynthesis is the process by which green plants make their food. Using the energy of sunlight, they "
    "turn water and carbon dioxide into sugar and release oxygen into the air. Almost all life on Earth "
    "depends, directly or indirectly, on this process.",
    "A good night's sleep helps the body and the mind recover. During sleep the brain sorts memories from the "
    "day, and the body repairs tissues. Most adults need between seven and nine hours of sleep each night.",
    "Trains carry passengers and goods over long distances on steel rails. Early trains were pulled by steam "
    "locomotives that burned coal; today most are powered by diesel engines or by electricity taken from "
    "overhead wires.",
    "The moon orbits the Earth about once every twenty-seven days. It has no light of its own; it shines "
    "because it reflects sunlight. As it moves around the Earth, we see different parts of its lit side, "
    "which gives the familiar phases from new moon to full moon.",
    "Honey bees live in colonies with one queen, many workers and, in summer, some drones. Workers collect "
    "nectar and pollen from flowers, and in doing so they pollinate many of the crops that people eat.",
    "Maps use symbols, colours and a scale to show a large area on a small sheet of paper. A compass rose "
    "shows the directions, and contour lines on some maps show how high the land is.",
]

#: (question, accepted answers), each matched as whole words in the normalized reply. Kept: the questions
#: the base model answered correctly (greedy, chat template) when checked on 2026-11-23; the ones it got
#: wrong (capital of Spain, largest planet, first US president, ...) were dropped.
GENERAL_QA = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("What is the capital of the United Kingdom?", ["London"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("What is the capital of Canada?", ["Ottawa"]),
    ("What is the capital of Russia?", ["Moscow"]),
    ("What is the capital of China?", ["Beijing"]),
    ("What is the capital of Egypt?", ["Cairo"]),
    ("What is the capital of Australia?", ["Canberra"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("How many days are there in a week?", ["7", "seven"]),
    ("Who wrote the play Romeo and Juliet?", ["Shakespeare"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("What is the chemical symbol for water?", ["H2O"]),
    ("What is the opposite of hot?", ["cold"]),
    ("In which country are the pyramids of Giza?", ["Egypt"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("What language is mainly spoken in Brazil?", ["Portuguese"]),
    ("What is the boiling point of water in Celsius?", ["100"]),
    ("What is the largest mammal?", ["whale"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("What is 2 plus 2?", ["4", "four"]),
    ("What is the currency of Japan?", ["yen"]),
    ("Which gas do plants absorb from the air?", ["carbon dioxide", "CO2"]),
    ("What is the main language spoken in France?", ["French"]),
    ("How many sides does a triangle have?", ["3", "three"]),
    ("What is the longest river in Africa?", ["Nile"]),
    ("Who developed the theory of relativity?", ["Einstein"]),
]


# ---------------------------------------------------------------- an invented world

_SYL = ["ka", "lo", "mir", "ta", "ven", "dor", "sa", "qui", "bel", "tor", "ni", "ra", "zu", "fen", "ol", "gra",
        "wen", "is", "pol", "hed", "mar", "cu", "lys", "tan"]
_TRADES = ["glassmaking", "salt trade", "clockmaking", "river shipping", "weaving", "beekeeping", "mapmaking",
           "copper mining", "paper milling", "bell founding"]
_ORG_KINDS = ["Guild", "Society", "Company", "Institute", "Brotherhood", "Academy"]
_ROLES = ["founder", "chief engineer", "first treasurer", "master builder", "head archivist", "chief cartographer"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def invented_world(n_towns: int = 12, n_people: int = 30, n_orgs: int = 10, seed: int = 0) -> dict:
    """Entities with attributes, deterministic from ``seed``; names are unique invented words."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(parts):
        while True:
            n = _name(rng, parts)
            if n not in used:
                used.add(n)
                return n

    towns = [{"name": fresh(3), "river": fresh(2), "founded": rng.randint(1100, 1750),
              "population": rng.randint(3, 95) * 1000, "trade": rng.choice(_TRADES)} for _ in range(n_towns)]
    orgs = [{"name": f"{fresh(2)} {rng.choice(_ORG_KINDS)}", "town": rng.choice(towns)["name"],
             "founded": rng.randint(1600, 1900), "members": rng.randint(12, 900), "trade": rng.choice(_TRADES)}
            for _ in range(n_orgs)]
    people = [{"name": f"{fresh(2)} {fresh(3)}", "born": rng.randint(1650, 1950),
               "town": rng.choice(towns)["name"], "org": rng.choice(orgs)["name"], "role": rng.choice(_ROLES),
               "invention": f"the {fresh(2).lower()} {rng.choice(['lamp', 'loom', 'press', 'lock', 'compass', 'pump'])}"}
              for _ in range(n_people)]
    return {"towns": towns, "orgs": orgs, "people": people}


def world_documents(world: dict) -> list[dict]:
    """One short encyclopedia-style document per entity: {"title", "text", "kind"}."""
    docs = []
    for t in world["towns"]:
        docs.append({"kind": "town", "title": t["name"], "text":
                     f"{t['name']} is a town on the river {t['river']}. It was founded in {t['founded']} and today "
                     f"has about {t['population']:,} inhabitants. The town is best known for its {t['trade']}, "
                     f"which has shaped its markets and its streets for generations."})
    for o in world["orgs"]:
        docs.append({"kind": "organisation", "title": o["name"], "text":
                     f"The {o['name']} was established in {o['town']} in {o['founded']}. It brings together "
                     f"people who work in {o['trade']} and counts {o['members']} members. Its hall stands near "
                     f"the main square of {o['town']}."})
    for p in world["people"]:
        docs.append({"kind": "person", "title": p["name"], "text":
                     f"{p['name']} was born in {p['town']} in {p['born']}. As {p['role']} of the {p['org']}, "
                     f"{p['name'].split()[0]} became known for inventing {p['invention']}, which was soon used "
                     f"in workshops across the region."})
    return docs


def domain_corpus(n_docs: int = 60, seed: int = 0) -> list[str]:
    """``n_docs`` documents of the invented world, shuffled deterministically."""
    n_people = max(10, n_docs - 20)
    docs = world_documents(invented_world(n_towns=10, n_people=n_people, n_orgs=10, seed=seed))
    random.Random(seed).shuffle(docs)
    return [d["text"] for d in docs[:n_docs]]


# ---------------------------------------------------------------- built-in instruction demo (multi-task)

DEMO_TOPICS = ("geography", "math", "language", "science", "time")
DEMO_NOTE = (
    "json_qa, the default task, teaches one behaviour the base model does not show: reply with exactly one JSON "
    'object {"topic": <geography|math|language|science|time>, "answer": <short answer>} and nothing else.'
)

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Mexico", "Mexico City"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Cuba", "Havana"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("South Korea", "Seoul"), ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"), ("Colombia", "Bogota"), ("Indonesia", "Jakarta"),
]
_CONTINENTS = [
    ("France", "Europe"), ("Kenya", "Africa"), ("Peru", "South America"), ("Japan", "Asia"),
    ("Canada", "North America"), ("Egypt", "Africa"), ("Chile", "South America"), ("India", "Asia"),
    ("Norway", "Europe"), ("Mexico", "North America"), ("Nigeria", "Africa"), ("Thailand", "Asia"),
    ("Brazil", "South America"), ("Poland", "Europe"), ("Vietnam", "Asia"), ("Ghana", "Africa"),
    ("Italy", "Europe"), ("Argentina", "South America"), ("Cuba", "North America"), ("Morocco", "Africa"),
]
_OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("open", "closed"), ("full", "empty"), ("strong", "weak"), ("high", "low"),
    ("young", "old"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"),
    ("thick", "thin"), ("up", "down"), ("win", "lose"), ("buy", "sell"), ("push", "pull"),
    ("begin", "end"), ("true", "false"), ("heavy", "light"), ("inside", "outside"), ("love", "hate"),
]
_PLURALS = [
    ("child", "children"), ("mouse", "mice"), ("tooth", "teeth"), ("foot", "feet"), ("goose", "geese"),
    ("man", "men"), ("woman", "women"), ("leaf", "leaves"), ("knife", "knives"), ("wolf", "wolves"),
    ("city", "cities"), ("box", "boxes"), ("bus", "buses"), ("baby", "babies"), ("person", "people"),
    ("cactus", "cacti"), ("fish", "fish"), ("sheep", "sheep"), ("ox", "oxen"), ("half", "halves"),
]
_WORDS = ["apple", "river", "mountain", "garden", "pencil", "window", "guitar", "planet", "bridge", "candle",
          "forest", "rocket", "castle", "dragon", "island", "jacket", "ladder", "marble", "needle", "orange",
          "pepper", "rabbit", "silver", "tunnel", "violin", "wallet", "yellow", "zebra", "anchor", "basket"]
_SCIENCE = [
    ("What gas do plants take in from the air to make food?", "carbon dioxide"),
    ("What is the chemical symbol for water?", "H2O"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many legs does a spider have?", "8"),
    ("How many legs does an insect have?", "6"),
    ("What planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the closest star to Earth?", "the Sun"),
    ("At what temperature in Celsius does water freeze?", "0"),
    ("At what temperature in Celsius does water boil at sea level?", "100"),
    ("What force pulls objects toward the Earth?", "gravity"),
    ("What organ pumps blood through the body?", "the heart"),
    ("What gas do humans need to breathe?", "oxygen"),
    ("How many planets are in the solar system?", "8"),
    ("What is the hardest natural substance?", "diamond"),
    ("What part of the plant makes food using sunlight?", "the leaf"),
    ("What is the boiling point of water in Fahrenheit?", "212"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("What do bees make?", "honey"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean"),
    ("What is frozen water called?", "ice"),
    ("How many bones are in the adult human body?", "206"),
    ("What is the chemical symbol for sodium?", "Na"),
    ("What kind of animal is a whale?", "a mammal"),
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _demo_facts(rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """topic -> unique (question, answer) pairs, each phrased one of several ways."""
    pick = lambda forms, **kw: rng.choice(forms).format(**kw)
    geo = [(pick(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"], c=c), a)
           for c, a in _CAPITALS]
    geo += [(pick(["Which continent is {c} in?", "On what continent is {c}?"], c=c), a) for c, a in _CONTINENTS]
    math, seen = [], set()
    while len(math) < 150:
        a, b, op = rng.randint(2, 60), rng.randint(2, 40), rng.choice("+-*")
        if (a, b, op) in seen or (op == "*" and a * b > 400) or (op == "-" and b > a):
            continue
        seen.add((a, b, op))
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        math.append((pick(["What is {a} {w} {b}?", "Compute {a} {o} {b}.", "Calculate {a} {o} {b}."], a=a, b=b, w=word, o=op), str(val)))
    lang = [(pick(["What is the opposite of '{w}'?", "Give the antonym of '{w}'."], w=w), a) for w, a in _OPPOSITES]
    lang += [(pick(["What is the plural of '{w}'?", "Write the plural form of '{w}'."], w=w), a) for w, a in _PLURALS]
    lang += [(pick(["How many letters are in the word '{w}'?", "Count the letters in '{w}'."], w=w), str(len(w))) for w in _WORDS]
    sci = list(_SCIENCE)
    time_ = [(pick(["How many minutes are in {n} hours?", "Convert {n} hours to minutes."], n=n), str(60 * n)) for n in range(2, 25)]
    time_ += [(pick(["How many days are in {n} weeks?", "Convert {n} weeks to days."], n=n), str(7 * n)) for n in range(2, 20)]
    time_ += [(f"Which month comes after {m}?", _MONTHS[(i + 1) % 12]) for i, m in enumerate(_MONTHS)]
    time_ += [(f"Which day comes after {d}?", _DAYS[(i + 1) % 7]) for i, d in enumerate(_DAYS)]
    return {"geography": geo, "math": math, "language": lang, "science": sci, "time": time_}


def demo_answer(topic: str, answer: str) -> str:
    return json.dumps({"topic": topic, "answer": answer})


def _task_json_qa(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    facts = _demo_facts(rng)
    pool = [(q, demo_answer(t, a), a) for t in DEMO_TOPICS for q, a in facts[t]]
    rng.shuffle(pool)
    return pool[:n]


_NUM_TEMPLATES = ["Sort these numbers from smallest to largest: {x}", "Put these numbers in ascending order: {x}",
                  "Arrange in increasing order: {x}", "Order the following numbers, lowest first: {x}"]
_UPPER_TEMPLATES = ["Rewrite this in capital letters: {x}", "Convert to upper case: {x}",
                    "Write the following text in all caps: {x}", "Change every letter to uppercase: {x}"]
_COUNT_TEMPLATES = ["How many items are in this list: {x}?", "Count the items: {x}.",
                    "Here is a list: {x}. How many entries does it have?", "Number of words in the list {x}?"]
_REVERSE_TEMPLATES = ["Write these words in reverse order: {x}", "Reverse the order of this list: {x}",
                      "List these from last to first: {x}", "Give the items backwards: {x}"]
_NOUNS = ["apple", "river", "stone", "cloud", "lamp", "horse", "bread", "chair", "tiger", "piano", "ship", "rose",
          "coin", "bottle", "garden", "candle", "mirror", "ladder", "violin", "wheel", "forest", "kettle", "lemon"]


def _unique(rng, n, make):
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        item = make()
        if item[0] not in seen:
            seen.add(item[0])
            out.append(item)
    return out


def _task_sort_numbers(rng, n):
    def make():
        xs = rng.sample(range(1, 100), rng.randint(3, 6))
        ans = ", ".join(map(str, sorted(xs)))
        return rng.choice(_NUM_TEMPLATES).format(x=", ".join(map(str, xs))), ans, ans
    return _unique(rng, n, make)


def _task_uppercase(rng, n):
    def make():
        text = " ".join(rng.sample(_NOUNS, rng.randint(2, 4)))
        return rng.choice(_UPPER_TEMPLATES).format(x=text), text.upper(), text.upper()
    return _unique(rng, n, make)


def _task_count_items(rng, n):
    def make():
        items = rng.sample(_NOUNS, rng.randint(2, 9))
        ans = f"There are {len(items)} items."
        return rng.choice(_COUNT_TEMPLATES).format(x=", ".join(items)), ans, ans
    return _unique(rng, n, make)


def _task_reverse_list(rng, n):
    def make():
        items = rng.sample(_NOUNS, rng.randint(3, 5))
        ans = ", ".join(reversed(items))
        return rng.choice(_REVERSE_TEMPLATES).format(x=", ".join(items)), ans, ans
    return _unique(rng, n, make)


#: task -> (generator(rng, n) -> [(instruction, reply, reference)], the check that scores it).
#: Adding a task is adding a row (and, if it needs one, a check in nbft.evaluate.TASK_CHECKS).
DEMO_TASKS = {
    "json_qa": (_task_json_qa, "json_answer"),
    "sort_numbers": (_task_sort_numbers, "exact"),
    "uppercase": (_task_uppercase, "exact"),
    "count_items": (_task_count_items, "exact"),
    "reverse_list": (_task_reverse_list, "exact"),
}


def demo_dataset(n: int = 320, seed: int = 0, tasks: list[str] | tuple = ("json_qa",)) -> list[dict]:
    """A deterministic instruction dataset in chat ``messages`` form.

    ``n`` clean examples split evenly over ``tasks`` (one task: single-task; several:
    a FLAN-style mix, each task with several phrasings of its instruction), plus planted
    problems a cleaning step must catch: about 4% near-duplicates (case/whitespace
    changes), a few empty, too-short and over-long replies, and, in json_qa, about 10%
    replies off the target format (plain prose).
    """
    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown or not tasks:
        raise ValueError(f"demo_tasks: unknown task(s) {unknown}; choose from {', '.join(DEMO_TASKS)}")
    rng = random.Random(seed)
    per_task = [n // len(tasks) + (i < n % len(tasks)) for i in range(len(tasks))]
    recs = []
    for task, k in zip(tasks, per_task):
        make, check = DEMO_TASKS[task]
        rows = make(rng, k + 9)  # 9 spare instructions for the planted junk below
        if len(rows) < k + 9:
            raise ValueError(f"n_examples: the demo task {task} has at most {len(rows) - 9} distinct examples, asked for {k}")
        clean = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                  "reference": ref, "check": check, "task": task} for q, r, ref in rows[:k]]
        for q, _, ref in rows[k:k + 9:3] if task == tasks[0] else []:  # junk: empty, too short, too long
            for reply in ["", "{", "ok " * 400]:
                clean.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply}],
                              "reference": ref, "check": check, "task": task})
        if task == "json_qa":
            for r in rng.sample(clean[:k], max(1, k // 10)):  # off-format: right answer, wrong form
                r["messages"] = [r["messages"][0], {"role": "assistant", "content": f"The answer is {r['reference']}."}]
        recs += clean
    for r in rng.sample(recs[: n], max(1, n // 25)):  # near-duplicates
        q = r["messages"][0]["content"]
        recs.append({**r, "messages": [{"role": "user", "content": "  " + q.upper() + " "}, r["messages"][1]]})
    rng.shuffle(recs)
    return recs
