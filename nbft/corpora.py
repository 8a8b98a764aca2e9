"""Small built-in text collections, made or written for nbft (no download).

- ``GENERAL_TEXT``: plain encyclopedic English, held out from every training set;
  its perplexity before and after fine-tuning probes forgetting.
- ``GENERAL_QA``: general questions the base SmolLM2-135M-Instruct answers correctly
  (checked once against the model, see docs/measurements.md): a second forgetting probe.
- ``domain_corpus``: deterministic documents about an invented world (people, places,
  organisations, dates, numbers) for continued pretraining and knowledge injection:
  no pretrained model has seen them.

The built-in instruction demo (its tasks and checks) lives in ``nbft.tasks``.
"""
from __future__ import annotations

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
TRADES = ["glassmaking", "salt trade", "clockmaking", "river shipping", "weaving", "beekeeping", "mapmaking",
           "copper mining", "paper milling", "bell founding"]
_ORG_KINDS = ["Guild", "Society", "Company", "Institute", "Brotherhood", "Academy"]
ROLES = ["founder", "chief engineer", "first treasurer", "master builder", "head archivist", "chief cartographer"]


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
              "population": rng.randint(3, 95) * 1000, "trade": rng.choice(TRADES)} for _ in range(n_towns)]
    orgs = [{"name": f"{fresh(2)} {rng.choice(_ORG_KINDS)}", "town": rng.choice(towns)["name"],
             "founded": rng.randint(1600, 1900), "members": rng.randint(12, 900), "trade": rng.choice(TRADES)}
            for _ in range(n_orgs)]
    people = [{"name": f"{fresh(2)} {fresh(3)}", "born": rng.randint(1650, 1950),
               "town": rng.choice(towns)["name"], "org": rng.choice(orgs)["name"], "role": rng.choice(ROLES),
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
