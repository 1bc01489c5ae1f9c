"""A built-in suite of small generated tasks, so the default pipeline runs with no data download.

Each task is a pure function of ``(split, n, seed)``: the same arguments give the same
examples on every machine. They are easy for a pretrained encoder but not trivial: the
sentiment task needs negation, the entailment task needs comparing two sentences.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Example = dict

_NOUNS = ["movie", "film", "book", "meal", "concert", "hotel", "game", "show", "album", "trip", "play", "course"]
_POS = [
    "good",
    "great",
    "wonderful",
    "delightful",
    "excellent",
    "charming",
    "superb",
    "enjoyable",
    "brilliant",
    "lovely",
]
_NEG = ["bad", "awful", "terrible", "boring", "dreadful", "dull", "poor", "disappointing", "horrible", "tedious"]
_ADV = ["", "really ", "very ", "quite ", "truly ", "rather ", "so "]
_FRAMES = [
    "the {n} was {a}{j}.",
    "i thought the {n} was {a}{j}.",
    "honestly, this {n} is {a}{j}.",
    "my friends said the {n} was {a}{j}.",
    "overall the {n} felt {a}{j}.",
]
_NEG_FRAMES = [
    "the {n} was not {a}{j}.",
    "i did not think the {n} was {a}{j}.",
    "honestly, this {n} is not {a}{j}.",
    "nobody said the {n} was {a}{j}.",
    "overall the {n} never felt {a}{j}.",
]


def sentiment(n: int, seed: int) -> list[Example]:
    """Binary sentiment where a negation flips the polarity of the adjective."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        positive_word = rng.random() < 0.5
        negated = rng.random() < 0.5
        frame = rng.choice(_NEG_FRAMES if negated else _FRAMES)
        text = frame.format(n=rng.choice(_NOUNS), a=rng.choice(_ADV), j=rng.choice(_POS if positive_word else _NEG))
        out.append({"id": i, "text": text, "label": "positive" if positive_word != negated else "negative"})
    return out


_TOPICS = {
    "sports": ["team", "coach", "goal", "match", "league", "striker", "season", "referee", "tournament", "score"],
    "science": [
        "experiment",
        "molecule",
        "telescope",
        "theory",
        "laboratory",
        "genome",
        "physics",
        "data",
        "cell",
        "orbit",
    ],
    "food": ["recipe", "kitchen", "flavor", "chef", "dessert", "soup", "spices", "bakery", "menu", "dinner"],
    "travel": ["airport", "passport", "beach", "journey", "luggage", "hotel", "map", "flight", "tourist", "island"],
}
_TOPIC_FRAMES = [
    "the {a} and the {b} were in the news again today.",
    "she wrote about the {a} after seeing the {b}.",
    "everyone kept talking about the {a} and its {b}.",
    "a new report on the {a} mentions the {b}.",
    "we spent the whole afternoon discussing the {a} and the {b}.",
]


def topic(n: int, seed: int) -> list[Example]:
    """Four-way topic classification from content words in neutral frames."""
    rng = random.Random(seed)
    names = sorted(_TOPICS)
    out = []
    for i in range(n):
        label = rng.choice(names)
        a, b = rng.sample(_TOPICS[label], 2)
        out.append({"id": i, "text": rng.choice(_TOPIC_FRAMES).format(a=a, b=b), "label": label})
    return out


_PEOPLE = ["anna", "ben", "carla", "david", "elena", "felix", "grace", "henry", "iris", "jonas"]
_ITEMS = ["bicycle", "lamp", "jacket", "guitar", "camera", "table", "kettle", "backpack"]
_COLORS = ["red", "blue", "green", "black", "white", "yellow"]
_CITIES = ["paris", "tokyo", "lima", "cairo", "oslo", "denver", "madrid", "seoul"]
_DAYS = ["monday", "tuesday", "friday", "saturday", "sunday"]


_HYPOTHESES = [
    ("{who} bought a {color} {item}.", ("who", "color", "item")),
    ("{who} was in {city} on {day}.", ("who", "city", "day")),
    ("someone in {city} bought a {item} on {day}.", ("city", "item", "day")),
    ("a {color} {item} was bought by {who}.", ("color", "item", "who")),
    ("on {day}, {who} bought a {item} in {city}.", ("day", "who", "item", "city")),
]
_POOLS = {"who": _PEOPLE, "item": _ITEMS, "color": _COLORS, "city": _CITIES, "day": _DAYS}


def entailment(n: int, seed: int) -> list[Example]:
    """Sentence pairs, half entailed: a non-entailed hypothesis changes one detail it mentions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        facts = {k: rng.choice(pool) for k, pool in _POOLS.items()}
        premise = "{who} bought a {color} {item} in {city} on {day}.".format(**facts)
        template, mentioned = rng.choice(_HYPOTHESES)
        entailed = rng.random() < 0.5
        if not entailed:
            key = rng.choice(mentioned)
            facts = {**facts, key: rng.choice([v for v in _POOLS[key] if v != facts[key]])}
        hypothesis = template.format(**facts)
        out.append(
            {"id": i, "text": premise, "text_pair": hypothesis, "label": "entailment" if entailed else "not_entailment"}
        )
    return out


TASKS: dict[str, Callable[[int, int], list[Example]]] = {
    "sentiment": sentiment,
    "topic": topic,
    "entailment": entailment,
}

# Train and eval splits come from disjoint seed streams so that no example is shared by design.
_SPLIT_OFFSET = {"train": 0, "eval": 1_000_003}


def demo_split(name: str, split: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of demo task ``name`` for ``split`` (``train`` or ``eval``)."""
    if name not in TASKS:
        raise ValueError(f"unknown demo task {name!r}; built-in demo tasks: {', '.join(sorted(TASKS))}")
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"demo tasks have splits train and eval, not {split!r}")
    return TASKS[name](n, seed + _SPLIT_OFFSET[split])


def demo_labels(name: str) -> list[str]:
    """The label names of a demo task, in id order."""
    return {
        "sentiment": ["negative", "positive"],
        "topic": sorted(_TOPICS),
        "entailment": ["entailment", "not_entailment"],
    }[name]
