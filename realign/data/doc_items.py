"""Passages -> the items each data type is curated from, by deterministic extraction (no model writes them).

- cloze questions: a sentence of a passage with one span blanked (a number, else a name, else its longest content
  word) and that span as the answer: checkable by exact match, so they are the prompts of the dpo, srf and rlvr
  workflows (the run's model writes the answers, the verifier grades them, the gates decide) and sft items;
- continuations: the first half of a sentence -> its second half (sft items, and the capability benchmark);
- grounded questions (antihallucination): a cloze question with the passage it comes from (answer + citation of the
  passage's stable id) or, for a share of them, with another passage that does not hold the answer (abstention).

Passages are split into training and held-out (evaluation) passages by a hash of their id, so a passage stays on its
side when documents are added later. Items are deduplicated by prompt, and a training item that shares an n-gram
(decontamination_ngram words) with a held-out item is rejected with the reason.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from realign.data.documents import DocPassage, sentences
from realign.data.grounded import ABSTAIN, GroundedItem, Passage

STOPWORDS = frozenset(
    "a an the and or but if then than that this these those there their they them it its is are was were be been "
    "being have has had do does did of to in on at by for with from into onto over under about after before between "
    "through during without within which who whom whose what when where why how all any each every some such no not "
    "only own same so too very can will just should would could may might must also more most other our your we you "
    "he she his her him i me my as while because until upon".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
BLANK = "____"


class ItemsConfig(BaseModel):
    """How passages become items (the defaults suit documents of a few pages to a few thousand)."""

    model_config = ConfigDict(extra="forbid")

    eval_fraction: float = Field(
        0.2, ge=0.05, le=0.5, description="Share of passages held out for evaluation (by a hash of their id)."
    )
    max_passage_chars: int = Field(
        600,
        ge=100,
        le=20_000,
        description="Paragraphs longer than this are cut at sentence ends: a grounded question shows one passage, "
        "so this bounds its prompt.",
    )
    min_sentence_words: int = Field(6, ge=3, le=50, description="Shorter sentences make no item.")
    max_sentence_words: int = Field(60, ge=10, le=500, description="Longer sentences make no item.")
    max_items_per_passage: int = Field(8, ge=1, le=100, description="Cloze questions per passage at most.")
    unanswerable: float = Field(
        0.3, ge=0.0, le=0.9, description="antihallucination: share of questions shown a passage without the answer."
    )
    abstention: str = Field(
        ABSTAIN, min_length=1, max_length=100, description="What the model says when the sources lack the answer."
    )
    decontamination_ngram: int = Field(
        13, ge=4, le=64, description="A training item sharing this many consecutive words with a held-out one is out."
    )
    seed: int = Field(0, ge=0, description="Seed of the unanswerable questions' passages.")


@dataclass(frozen=True)
class Cloze:
    """A sentence of passage `passage_id` with `answer` blanked: the question and its checkable answer."""

    passage_id: str
    sentence: str
    answer: str

    @property
    def blanked(self) -> str:
        return re.sub(r"(?<!\w)" + re.escape(self.answer) + r"(?!\w)", BLANK, self.sentence, count=1)

    @property
    def prompt(self) -> str:
        return f"Fill in the blank: {self.blanked}"


@dataclass
class CurationItems:
    """The items of one curation: training and held-out sides, rejects with their reasons."""

    train_cloze: list[Cloze] = field(default_factory=list)
    eval_cloze: list[Cloze] = field(default_factory=list)
    train_continuations: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, completion, passage id)
    eval_continuations: list[tuple[str, str, str]] = field(default_factory=list)
    train_grounded: list[GroundedItem] = field(default_factory=list)
    eval_grounded: list[GroundedItem] = field(default_factory=list)
    eval_choice: list[dict] = field(default_factory=list)  # MMLU-style rows: question, choices, answer (index)
    rejects: list[dict] = field(default_factory=list)


def held_out(passage_id: str, fraction: float) -> bool:
    """Whether a passage is on the evaluation side: a stable hash of its id, not its position."""
    return int(hashlib.sha256(passage_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def answer_span(sentence: str) -> str | None:
    """The span to blank: the last number, else the last capitalised word not opening the sentence, else the
    longest content word of 4+ letters (the first of equals); only spans written once in the sentence (a second
    copy would give the answer away); None when the sentence has none."""

    def once(span: str) -> bool:
        return len(re.findall(r"(?<!\w)" + re.escape(span) + r"(?!\w)", sentence)) == 1

    numbers = [n for n in _NUMBER.findall(sentence) if once(n)]
    if numbers:
        return numbers[-1]
    words = [(m.group(0), m.start()) for m in _WORD.finditer(sentence) if once(m.group(0))]
    names = [w for w, at in words if at > 0 and w[0].isupper() and w.lower() not in STOPWORDS and len(w) > 1]
    if names:
        return names[-1]
    content = [w for w, _ in words if w.lower() not in STOPWORDS and len(w) >= 4]
    return max(content, key=len) if content else None


def cloze_of(passage: DocPassage, cfg: ItemsConfig) -> tuple[list[Cloze], list[dict]]:
    """The cloze questions of a passage (one per usable sentence) and the sentences rejected, with the reason."""
    items, rejects = [], []
    for s in sentences(passage.text):
        n = len(s.split())
        why = None
        if n < cfg.min_sentence_words:
            why = f"sentence of {n} words (fewer than {cfg.min_sentence_words})"
        elif n > cfg.max_sentence_words:
            why = f"sentence of {n} words (more than {cfg.max_sentence_words})"
        span = None if why else answer_span(s)
        if not why and span is None:
            why = "no number, name or content word to ask about"
        if why:
            rejects.append({"passage": passage.id, "text": s[:200], "reason": why})
            continue
        if len(items) >= cfg.max_items_per_passage:
            rejects.append({"passage": passage.id, "text": s[:200], "reason": "passage already gave its items"})
            continue
        items.append(Cloze(passage.id, s, span))  # type: ignore[arg-type]
    return items, rejects


def continuation_of(c: Cloze) -> tuple[str, str, str]:
    """'Continue the text: <first half>' -> '<second half>' of the cloze's sentence."""
    words = c.sentence.split()
    cut = len(words) // 2
    return f"Continue the text: {' '.join(words[:cut])}", " ".join(words[cut:]), c.passage_id


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.casefold())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def build_items(passages: list[DocPassage], cfg: ItemsConfig = ItemsConfig()) -> CurationItems:
    """Cloze questions, continuations and grounded questions of `passages`, split into training and held-out sides
    by passage, deduplicated by prompt and decontaminated (training items sharing an n-gram with held-out ones)."""
    out = CurationItems()
    by_id = {p.id: p for p in passages}
    evaluation = {p.id for p in passages if held_out(p.id, cfg.eval_fraction)}
    if len(passages) >= 2 and not evaluation:  # few passages: hold out the one the hash ranks first
        evaluation = {min(by_id, key=lambda i: hashlib.sha256(i.encode()).hexdigest())}
    if len(evaluation) == len(passages) and len(passages) >= 2:
        evaluation.discard(max(evaluation, key=lambda i: hashlib.sha256(i.encode()).hexdigest()))
    seen: dict[str, str] = {}
    for p in passages:
        items, rejects = cloze_of(p, cfg)
        out.rejects += rejects
        for c in items:
            key = " ".join(c.prompt.casefold().split())
            if key in seen:
                out.rejects.append(
                    {"passage": p.id, "text": c.sentence[:200], "reason": f"same question as {seen[key]}"}
                )
                continue
            seen[key] = p.id
            (out.eval_cloze if p.id in evaluation else out.train_cloze).append(c)
    # Decontamination: no training sentence shares an n-gram with a held-out one.
    held = set().union(*(_ngrams(c.sentence, cfg.decontamination_ngram) for c in out.eval_cloze))
    kept = []
    for c in out.train_cloze:
        if held and _ngrams(c.sentence, cfg.decontamination_ngram) & held:
            out.rejects.append(
                {
                    "passage": c.passage_id,
                    "text": c.sentence[:200],
                    "reason": f"shares a {cfg.decontamination_ngram}-word sequence with a held-out sentence "
                    "(decontamination)",
                }
            )
        else:
            kept.append(c)
    out.train_cloze = kept
    out.train_continuations = [continuation_of(c) for c in out.train_cloze]
    out.eval_continuations = [continuation_of(c) for c in out.eval_cloze]
    out.eval_choice = choice_rows(out.eval_cloze, [c.answer for c in out.train_cloze + out.eval_cloze], cfg.seed)
    out.train_grounded = grounded_of(out.train_cloze, [by_id[i] for i in by_id if i not in evaluation], cfg, 0)
    out.eval_grounded = grounded_of(out.eval_cloze, [by_id[i] for i in by_id if i in evaluation], cfg, 1)
    return out


def choice_rows(items: list[Cloze], answers: list[str], seed: int = 0, n_choices: int = 4) -> list[dict]:
    """MMLU-style rows of the held-out cloze questions: the right span among up to n_choices - 1 other answers of
    the documents of the same kind (numbers with numbers, words with words); the right one's position cycles
    through the letters, so a model that always names one letter scores chance, not 0 or 1. Scored by the
    log-likelihood of each option's letter, a capability a model has before training (chance is 1/n_choices), so
    stage 7's retention is a ratio it can compute. Questions without a distractor are left out."""
    rng = random.Random(seed + 7)
    rows = []
    for c in items:
        numeric = bool(_NUMBER.fullmatch(c.answer))
        pool = sorted(
            {a for a in answers if a.casefold() != c.answer.casefold() and bool(_NUMBER.fullmatch(a)) == numeric}
        )
        if not pool:
            continue
        choices = rng.sample(pool, min(n_choices - 1, len(pool)))
        choices.insert(len(rows) % (len(choices) + 1), c.answer)  # the right letter cycles A, B, C, D: no position bias
        rows.append({"question": c.blanked, "choices": choices, "answer": choices.index(c.answer)})
    return rows


def grounded_of(items: list[Cloze], passages: list[DocPassage], cfg: ItemsConfig, salt: int) -> list[GroundedItem]:
    """A grounded question per cloze: its own passage and the answer cited, or (a `cfg.unanswerable` share, when
    another passage of the same side lacks the answer) that other passage and the abstention."""
    rng = random.Random(cfg.seed * 1000 + salt)
    out = []
    for c in items:
        own = next(p for p in passages if p.id == c.passage_id)
        question = f"Fill in the blank from the sources: {c.blanked}"
        rx = re.compile(r"(?<!\w)" + re.escape(c.answer) + r"(?!\w)", re.IGNORECASE)
        others = [p for p in passages if p.id != c.passage_id and not rx.search(p.text)]
        if others and rng.random() < cfg.unanswerable:
            other = rng.choice(others)
            out.append(GroundedItem(question, (Passage(other.id, other.text),), cfg.abstention, (), cfg.abstention))
        else:
            out.append(GroundedItem(question, (Passage(own.id, own.text),), c.answer, (own.id,), cfg.abstention))
    return out


# --- SFT quality ---------------------------------------------------------------------------------------------------

QUALITY_PARTS = ("grounded", "self_contained", "informative", "clean", "no_leak")


def quality_score(instruction: str, output: str, source_text: str) -> tuple[float, dict[str, float]]:
    """A 0-10 score of an SFT item against the passage it came from: 10 x the mean of five checks in [0, 1]:
    grounded (the output's words found in the source), self_contained (the instruction has 8+ words of context),
    informative (the output has 3+ words; 1 word scores 1/3), clean (letters make up 60%+ of the characters, as
    extraction debris does not), no_leak (the output is not already written in the instruction).
    Returns (score, the parts)."""
    out_words = re.findall(r"\w+", output.casefold())
    src_words = set(re.findall(r"\w+", source_text.casefold()))
    ins_words = re.findall(r"\w+", instruction)
    letters = sum(ch.isalpha() for ch in instruction + output)
    chars = sum(not ch.isspace() for ch in instruction + output) or 1
    tail = output.strip().casefold()
    parts = {
        "grounded": sum(w in src_words for w in out_words) / len(out_words) if out_words else 0.0,
        "self_contained": min(1.0, len(ins_words) / 8),
        "informative": min(1.0, len(out_words) / 3),
        "clean": min(1.0, letters / chars / 0.6),
        "no_leak": 0.0 if tail and re.search(r"(?<!\w)" + re.escape(tail) + r"(?!\w)", instruction.casefold()) else 1.0,
    }
    return round(10 * sum(parts.values()) / len(parts), 3), parts
