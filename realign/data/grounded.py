"""Grounded question answering: questions answered from given passages, with citations, or abstained from.

A row is `{"question", "passages": [{"id", "text"}], "answer"}` (optionally `"citations": [ids]`); `answer` is the
abstention text ("I don't know" by default) when the passages do not hold the answer. The expected model output is
the answer followed by the cited passage ids, `Quenby [2]`, or the abstention alone. Without `citations`, the
passages whose text contains the answer are cited.

The embedded knowledge base is a synthetic world (invented people and their invented attributes), so no real-world
knowledge is needed or leaks in: passages state facts, answerable questions ask for one stated there, unanswerable
ones ask about a person or attribute no passage mentions. Train and held-out people are disjoint.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

ABSTAIN = "I don't know"

# Attributes and values from the tiny tokenizer's word list, so each is one or two tokens.
ATTRIBUTES = {
    "color": ("red", "blue", "green", "yellow", "black", "white"),
    "pet": ("cat", "dog", "bird", "fish"),
    "city": ("paris", "london", "berlin", "rome", "madrid", "tokyo"),
    "tree": ("apple", "flower", "star", "moon", "sun"),
}
_SYLLABLES = [c + v for c in "bdfgkmnprstvz" for v in ("a", "e", "i", "o", "u")]


@dataclass(frozen=True)
class Passage:
    id: str
    text: str


@dataclass(frozen=True)
class GroundedItem:
    """One grounded question. answer == abstention when no passage holds it; citations: the ids to cite."""

    question: str
    passages: tuple[Passage, ...]
    answer: str
    citations: tuple[str, ...] = ()
    abstention: str = ABSTAIN

    @property
    def answerable(self) -> bool:
        return self.answer != self.abstention

    def prompt(self) -> str:
        """What the model sees: the sources, then the question."""
        sources = " ".join(f"[{p.id}] {p.text}" for p in self.passages)
        return f"Sources: {sources}\nQuestion: {self.question}"

    def target(self) -> str:
        """The expected output: 'answer [id]' (every cited id), or the abstention."""
        if not self.answerable:
            return self.abstention
        return self.answer + "".join(f" [{c}]" for c in self.citations)

    def record(self) -> dict:
        return {
            "question": self.question,
            "passages": [{"id": p.id, "text": p.text} for p in self.passages],
            "answer": self.answer,
            "citations": list(self.citations),
        }


def supporting_ids(passages: Sequence[Passage], answer: str) -> tuple[str, ...]:
    """Ids of the passages whose text contains `answer` as a whole word or phrase (case-insensitive)."""
    rx = re.compile(r"(?<!\w)" + re.escape(answer.strip()) + r"(?!\w)", re.IGNORECASE)
    return tuple(p.id for p in passages if answer.strip() and rx.search(p.text))


def item_problems(question: str, passages: Sequence[Passage], answer: str, citations, abstention: str) -> list[str]:
    """What is wrong with a grounded row (phrases for FILE:LINE errors); [] when it is usable."""
    problems = []
    ids = [p.id for p in passages]
    if not passages:
        problems.append("passages is empty (expected at least one {id, text} passage)")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        problems.append(f"passage id {dup!r} appears twice (expected unique ids)")
    for c in citations or ():
        if c not in ids:
            problems.append(f"cites unknown passage id {c!r} (expected one of {', '.join(map(repr, ids))})")
    if answer.strip() != abstention and passages and not supporting_ids(passages, answer):
        problems.append(
            f"answer {answer[:60]!r} is in no passage and is not the abstention {abstention!r} "
            "(expected an answer stated in a passage, or the abstention)"
        )
    if answer.strip() == abstention and citations:
        problems.append("an abstention cites passages (expected no citations when abstaining)")
    return problems


def from_record(obj: dict, abstention: str = ABSTAIN) -> GroundedItem:
    passages = tuple(Passage(str(p["id"]), p["text"]) for p in obj["passages"])
    answer = obj["answer"].strip()
    cites = tuple(obj.get("citations") or ()) or (supporting_ids(passages, answer) if answer != abstention else ())
    return GroundedItem(obj["question"], passages, answer, cites, abstention)


# --- the embedded synthetic world ------------------------------------------------------------------------------


def _names(n: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        name = "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))).capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def world(n_people: int, seed: int = 0) -> dict[str, dict[str, str]]:
    """Invented people, each with one value per attribute."""
    rng = random.Random(seed)
    return {name: {a: rng.choice(vs) for a, vs in ATTRIBUTES.items()} for name in _names(n_people, rng)}


def fact(name: str, attribute: str, value: str) -> str:
    return f"{name}'s {attribute} is {value}."


def question(name: str, attribute: str) -> str:
    return f"What is {name}'s {attribute}?"


def grounded_items(
    people: dict[str, dict[str, str]],
    n: int,
    seed: int = 0,
    unanswerable: float = 0.3,
    n_passages: int = 3,
    abstention: str = ABSTAIN,
) -> list[GroundedItem]:
    """`n` questions about `people`: each shows `n_passages` facts (ids 1..n_passages, shuffled); an answerable
    question asks for a fact shown there, an unanswerable one (share `unanswerable`) for an attribute of a shown
    person that no passage states."""
    rng = random.Random(seed)
    names = list(people)
    attrs = list(ATTRIBUTES)
    items = []
    for _ in range(n):
        shown = rng.sample([(p, a) for p in rng.sample(names, min(len(names), n_passages)) for a in attrs], n_passages)
        # one fact per person-attribute; the asked one is shown (answerable) or withheld (unanswerable)
        if rng.random() < unanswerable:
            candidates = [(p, a) for p, _ in shown for a in attrs if (p, a) not in shown]
            person, attr = rng.choice(candidates)
            answer, cite_text = abstention, None
        else:
            person, attr = rng.choice(shown)
            answer = people[person][attr]
            cite_text = fact(person, attr, answer)
        passages = tuple(Passage(str(i + 1), fact(p, a, people[p][a])) for i, (p, a) in enumerate(shown))
        cites = tuple(p.id for p in passages if p.text == cite_text)
        items.append(GroundedItem(question(person, attr), passages, answer, cites, abstention))
    return items


def closed_book(item: GroundedItem, people: dict[str, dict[str, str]]) -> tuple[str, str] | None:
    """(prompt, answer) asking the question with no sources, answered from the world (stage 1's SFT: a model that
    answers from memory, never cites and never abstains, the baseline a grounded model is compared with)."""
    m = re.fullmatch(r"What is (\w+)'s (\w+)\?", item.question)
    if not m:
        return None
    return item.question, people[m.group(1)][m.group(2)]


# --- reading a model's output ----------------------------------------------------------------------------------

_CITE = re.compile(r"\[([^\[\]]{1,40})\]")


class ParsedAnswer(NamedTuple):
    answer: str  # the text without its citations ('' when abstained)
    citations: tuple[str, ...]
    abstained: bool


def parse_output(text: str, abstention: str = ABSTAIN) -> ParsedAnswer:
    """'fish [2]' -> ('fish', ('2',), False); "I don't know" -> ('', (), True)."""
    t = text.strip()
    if t.casefold().startswith(abstention.casefold()):
        return ParsedAnswer("", tuple(_CITE.findall(t)), True)
    cites = tuple(c.strip() for c in _CITE.findall(t))
    answer = _CITE.sub("", t).strip().rstrip(".").strip()
    return ParsedAnswer(answer, cites, False)
