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

import contextlib
import contextvars
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

ABSTAIN = "I don't know"
# The abstention text rows are validated against (`realign.data.formats`' grounded rows); a recipe may choose its own.
_ABSTENTION = contextvars.ContextVar("abstention", default=ABSTAIN)


def current_abstention() -> str:
    return _ABSTENTION.get()


@contextlib.contextmanager
def abstention_text(text: str) -> Iterator[None]:
    """Validate and read grounded rows with `text` as the abstention (default "I don't know")."""
    token = _ABSTENTION.set(text)
    try:
        yield
    finally:
        _ABSTENTION.reset(token)


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
    abstains = is_abstention(answer, abstention)
    if not abstains and passages and not supporting_ids(passages, answer):
        problems.append(
            f"answer {answer[:60]!r} is in no passage and is not the abstention {abstention!r} "
            "(expected an answer stated in a passage, or the abstention)"
        )
    if abstains and citations:
        problems.append("an abstention cites passages (expected no citations when abstaining)")
    return problems


def from_record(obj: dict, abstention: str = ABSTAIN) -> GroundedItem:
    passages = tuple(Passage(str(p["id"]), p["text"]) for p in obj["passages"])
    answer = abstention if is_abstention(obj["answer"], abstention) else obj["answer"].strip()
    cites = tuple(obj.get("citations") or ()) or (supporting_ids(passages, answer) if answer != abstention else ())
    return GroundedItem(obj["question"], passages, answer, cites, abstention)


# --- the embedded synthetic world ------------------------------------------------------------------------------


def _names(n: int, rng: random.Random) -> list[str]:
    # Lower case: a capital letter splits a name into more tokens, and the tiny model then needs many more steps
    # to learn to match a name in the question with the same name in a passage.
    seen: set[str] = set()
    out = []
    while len(out) < n:
        name = "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3)))
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
    """`n` questions about `people`. Each item shows `n_passages` facts, one each about different people (ids
    1..n_passages). An answerable question asks for a shown fact; an unanswerable one (share `unanswerable`) asks
    for an attribute no passage states: half of them about a shown person (another attribute), half about a person
    not shown."""
    rng = random.Random(seed)
    names = list(people)
    attrs = list(ATTRIBUTES)
    if len(names) <= n_passages:
        raise ValueError(f"{len(names)} people cannot fill {n_passages} passages and leave one unshown")
    items = []
    for _ in range(n):
        shown = [(p, rng.choice(attrs)) for p in rng.sample(names, n_passages)]
        if rng.random() < unanswerable:
            if rng.random() < 0.5:
                person, stated = rng.choice(shown)
                attr = rng.choice([a for a in attrs if a != stated])
            else:
                person = rng.choice([p for p in names if p not in {q for q, _ in shown}])
                attr = rng.choice(attrs)
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


def _bare(text: str) -> str:
    """Text without its [citations], surrounding space and final period, case-folded: what is compared."""
    return _CITE.sub("", text).strip().rstrip(".").strip().casefold()


def is_abstention(text: str, abstention: str = ABSTAIN) -> bool:
    """`text` says the abstention: equal to it with citations, case and a final period aside (whole, when the
    abstention is itself only brackets)."""
    bare = _bare(abstention)
    return _bare(text) == bare if bare else text.strip().casefold() == abstention.strip().casefold()


def parse_output(text: str, abstention: str = ABSTAIN) -> ParsedAnswer:
    """'fish [2]' -> ('fish', ('2',), False); "I don't know" -> ('', (), True). The output abstains only when,
    citations and a final period aside, it is the abstention: "I don't know. It is a cat" is an answer."""
    t = text.strip()
    cites = tuple(c.strip() for c in _CITE.findall(t))
    if is_abstention(t, abstention):
        return ParsedAnswer("", cites, True)
    return ParsedAnswer(_CITE.sub("", t).strip().rstrip(".").strip(), cites, False)


def same_answer(prediction: str, target: str) -> bool:
    """A grounded output is right when it says what the target says, case, citations and a final period aside:
    the target's answer, or its abstention (whatever its text; citations are judged apart, by citation accuracy).
    An empty output is never right."""
    p, t = _bare(prediction), _bare(target)
    if not t:  # a target that is only brackets, e.g. the abstention "[no answer]": compare it whole
        return prediction.strip().casefold() == target.strip().casefold() != ""
    return p == t


def citation_problem(item: GroundedItem) -> str | None:
    """Why an answerable item's citations do not hold up (None when every cited passage states the answer, or the
    item abstains): the check behind the collected data's citation accuracy."""
    if not item.answerable:
        return None
    if not item.citations:
        return "cites no passage (expected the id of a passage that states the answer)"
    by_id = {p.id: p for p in item.passages}
    for c in item.citations:
        if c not in by_id:
            return f"cites unknown passage id {c!r}"
        if not supporting_ids([by_id[c]], item.answer):
            return f"cites passage {c!r}, which does not state the answer {item.answer!r}"
    return None
