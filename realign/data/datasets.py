"""The data a workflow run uses: SFT examples, prompts with known answers, held-out evaluation sets.

Either the embedded digit tasks (realign.data.demo) or user files named in the recipe.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from realign.data.demo import digit_strings, example
from realign.data.formats import DataFormatError, DPORow, first_record, guess_format, iter_checked, read_rows
from realign.data.grounded import ABSTAIN, GroundedItem, abstention_text, from_record, grounded_items, world
from realign.io import atomic_path
from realign.score.verifiers import last_number


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSet(_Config):
    """A held-out evaluation set: a JSONL file in one of four row formats (see `format`). qa, choice and math sets
    have checkable answers; an open set has prompts only, and its scorer (a judge or reward model) rates answers."""

    name: str = Field(description="Metric name prefix, e.g. 'reverse'.")
    path: str = Field(description="JSONL file, one item per line, in the row format `format` names.")
    role: Literal["target", "benchmark"] = Field(
        description="target: the skill being aligned; benchmark: a capability to retain."
    )
    format: Literal["qa", "choice", "math", "open"] = Field(
        "qa",
        description="qa: 'prompt' and 'answer', the greedy answer judged by exact match (or the stage's verifier). "
        "choice: MMLU-style 'question', 'choices' (2-26 strings) and 'answer' (index from 0, or letter A-Z), the "
        "option whose letter the model finds likeliest after the lettered question is its answer (log-likelihood, "
        "as lm-eval's MMLU). math: GSM8K-style 'question' and 'answer' (a worked solution ending '#### NUMBER', or "
        "just the number), the last number of the greedy answer compared with it as a number. open: 'prompt' (and "
        "optionally a 'reference' answer, read for perplexity and decontamination only), the greedy answer rated by "
        "judge_model or reward_model; the target only, reported as mean score and win rate against the stage-1 model.",
    )
    judge_model: str | None = Field(
        None, description="open: a judge model directory that rates answers 0-10 (realign.score.judge's prompt)."
    )
    reward_model: str | None = Field(
        None, description="open: a reward model directory (an SRF run's 03_reward_model_training/reward_model)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Tokens generated per answer (qa, math, open). None: the stage's setting, and at least "
        "256 for math, whose worked answers need room.",
    )

    @model_validator(mode="after")
    def _scorer_fits_format(self) -> "EvalSet":
        scorers = [f for f in ("judge_model", "reward_model") if getattr(self, f)]
        where = f"eval set {self.name!r}"
        if self.format == "open":
            if len(scorers) != 1:
                raise ValueError(
                    f"{where}: format 'open' needs exactly one scorer, judge_model or reward_model (got "
                    f"{len(scorers)}): prompts without answers are rated by a model"
                )
            if self.role != "target":
                raise ValueError(
                    f"{where}: an open set can only be the target; a capability to retain needs checkable answers "
                    "(format qa, choice or math) so that retention is a ratio of accuracies"
                )
        elif scorers:
            raise ValueError(
                f"{where}: {scorers[0]} rates open sets only; format {self.format!r} has checkable answers "
                "(remove it, or set format: open)"
            )
        return self

    def scorer(self) -> tuple[str, str] | None:
        """('judge' | 'reward_model', directory) of an open set, else None."""
        if self.judge_model:
            return "judge", self.judge_model
        return ("reward_model", self.reward_model) if self.reward_model else None


class DataConfig(_Config):
    """Where prompts, SFT data and evaluation sets come from."""

    source: Literal["embedded", "files"] = Field(
        "embedded", description="embedded: the digit tasks of realign.data.demo; files: the paths below."
    )
    prompts: str | None = Field(
        None,
        description="files: JSONL with 'prompt' and 'answer' (the verifier's reference) per line; 'answer' may be "
        "left out when a judge or reward model scores the answers (pairs.scorer).",
    )
    sft: str | None = Field(
        None, description="files: SFT JSONL (instruction/output, response or messages) for stage 1."
    )
    eval_sets: list[EvalSet] = Field([], description="files: held-out evaluation sets (one 'target' at least).")
    pairs: str | None = Field(
        None,
        description="Your own preference pairs (JSONL or Parquet in TRL's standard, conversational or implicit-prompt "
        "format): stage 2 scores and checks them instead of generating round 1's pairs. Their prompts are the "
        "preference prompts when data.prompts is not given.",
    )
    n_prompts: int = Field(1200, ge=1, le=10_000_000, description="embedded: prompts for preference data per round.")
    n_sft_target: int = Field(1000, ge=0, description="embedded: SFT examples of the target skill (reverse).")
    n_sft_benchmark: int = Field(2000, ge=0, description="embedded: SFT examples of the benchmark skill (copy).")
    n_prompts_benchmark: int = Field(
        1200, ge=0, description="embedded: preference prompts of the benchmark skill (capability data)."
    )
    n_eval: int = Field(200, ge=10, description="embedded: held-out items per evaluation set.")
    n_dev: int = Field(
        100, ge=10, description="embedded: target items for round-to-round decisions, apart from evaluation."
    )
    seed: int = Field(0, ge=0, description="Seed of the embedded splits.")

    @model_validator(mode="after")
    def _files_given(self) -> "DataConfig":
        if self.source == "files":
            if (self.prompts is None and self.pairs is None) or not any(e.role == "target" for e in self.eval_sets):
                raise ValueError(
                    "data.source 'files' needs data.prompts (or data.pairs) and at least one eval_sets entry with "
                    "role 'target'"
                )
        return self


class GroundedDataConfig(DataConfig):
    """The anti-hallucination workflow's data: grounded questions (sources, question, answer or abstention).

    embedded: a synthetic world of invented people; questions about disjoint groups of people for training, round
    decisions and evaluation; stage 1 learns to answer from the sources without citing and without abstaining (a
    reader fine-tuned for answers only, the model the workflow starts from) next to the digit-copy capability.
    files: data.prompts and the target eval set are grounded JSONL rows (`realign validate --format grounded`).
    """

    n_prompts: int = Field(3000, ge=1, le=10_000_000, description="embedded: grounded training questions (stages 2-5).")
    n_sft_target: int = Field(
        2000, ge=0, description="embedded: stage-1 SFT rows of grounded questions answered without citation."
    )
    n_prompts_benchmark: int = Field(
        300, ge=0, description="embedded: stage-1 digit-copy rows replayed in stage 3's SFT (capability data)."
    )
    n_people: int = Field(400, ge=20, le=1_000_000, description="embedded: invented people in the world.")
    n_passages: int = Field(
        1,
        ge=1,
        le=20,
        description="embedded: passages shown with each question. The 0.75M-parameter tiny model answers one in a few "
        "hundred steps; picking the right one of two takes it over a thousand (0.82 factuality after 600, measured).",
    )
    unanswerable: float = Field(
        0.3, ge=0.0, le=0.9, description="embedded: share of questions the passages do not answer."
    )
    abstention: str = Field(
        ABSTAIN,
        min_length=1,
        max_length=100,
        description="What the model says when the sources do not hold the answer.",
    )


@dataclass
class EvalItems:
    """A verifiable held-out set. role: 'target' (the aligned skill) or 'benchmark' (a capability to keep).
    items: the grounded questions behind the prompts, for a grounded set.
    format: how it is scored ('qa', 'choice', 'math', 'open'; EvalSet.format). A choice set's prompts are the
    lettered questions, its answers the right letters, `choices` and `labels` the options and the right one's index;
    a math set's answers are the reference numbers (what follows '####'); an open set has no answers ('' each) and
    `scorer` (kind, directory) rates its answers; its `completions` are the optional references.
    completions: the full reference per item where it is more than the answer (a worked solution, the right
    option's text): what perplexity and decontamination read."""

    name: str
    role: str
    prompts: list[str]
    answers: list[str]
    items: list[GroundedItem] | None = None
    format: str = "qa"
    choices: list[list[str]] | None = None
    labels: list[int] | None = None
    completions: list[str] | None = None
    max_tokens: int | None = None
    scorer: tuple[str, str] | None = None

    @property
    def metric(self) -> str:
        """The name of its headline metric: NAME_accuracy, or NAME_score for an open set (a mean rating)."""
        return f"{self.name}_score" if self.format == "open" else f"{self.name}_accuracy"

    def references(self) -> list[str]:
        """The completion each prompt is held out with: the full reference when there is one, else the answer."""
        return self.completions if self.completions is not None else self.answers

    def held_out(self) -> list[tuple[str, str]]:
        """(prompt, reference) for perplexity and decontamination: an open set's rows without a reference have
        no text to hold out beyond the prompt."""
        return [(p, r) for p, r in zip(self.prompts, self.references()) if r]


@dataclass
class DataBundle:
    sft: list[tuple[str, str]]  # (prompt, completion)
    prompts: list[str]  # for preference data
    answers: dict[str, str]  # prompt -> known answer (for the verifier)
    eval_sets: list[EvalItems] = field(default_factory=list)
    heldout_text: list[tuple[str, str]] = field(default_factory=list)  # (prompt, completion) for perplexity
    # target-skill items for round-to-round decisions (kept apart from the final evaluation)
    dev: EvalItems | None = None
    grounded: list[GroundedItem] = field(default_factory=list)  # training questions (anti-hallucination)
    replay: list[tuple[str, str]] = field(default_factory=list)  # capability rows mixed into later training

    @property
    def target(self) -> EvalItems:
        return next(e for e in self.eval_sets if e.role == "target")

    @property
    def benchmarks(self) -> list[EvalItems]:
        return [e for e in self.eval_sets if e.role == "benchmark"]

    def eval_texts(self) -> list[str]:
        """'prompt answer' of every evaluation item: what training data must not overlap (decontamination)."""
        return [f"{p} {a}" for ev in self.eval_sets for p, a in zip(ev.prompts, ev.references())]


LETTERS = string.ascii_uppercase  # choice labels: MMLU's A-D, up to 26 options


def choice_prompt(question: str, choices: Sequence[str]) -> str:
    """lm-eval's MMLU prompt: the question, one 'A. option' line per choice, then 'Answer:'."""
    return "\n".join([question.strip(), *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)), "Answer:"])


def math_reference(answer: str) -> str:
    """The reference of a GSM8K-style answer: what follows the last '####' (the worked solution before it is
    explanation), else the whole answer."""
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()


def _json_lines(path: str, expected: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line; DataFormatError at the first line that is not JSON.
    expected: what a line should be, for the messages."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    path, n, [f"invalid UTF-8 at byte {exc.start + 1} (expected UTF-8 text)"]
                ) from exc
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, n, [f"invalid JSON: {exc.msg} (expected {expected})"]) from exc
            except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
                raise DataFormatError(
                    path, n, [f"invalid JSON: {exc or 'nested too deeply'} (expected standard JSON)"]
                ) from exc
            yield n, obj


def read_prompt_answers(path: str, answer_required: bool = True) -> tuple[list[str], list[str | None]]:
    """(prompts, answers) of a prompt/answer JSONL file; DataFormatError at the first bad line, and when a prompt
    appears twice with different answers (which one would the verifier grade against?).
    answer_required False: a row may leave 'answer' out (None): a judge or reward model scores its answers."""
    prompts, answers = [], []
    first_seen: dict[str, tuple[int, str | None]] = {}
    conflicts: list[tuple[int, int, str | None, str | None]] = []
    expected = "non-empty strings prompt and answer" if answer_required else "a non-empty string prompt (and answer)"
    for n, obj in _json_lines(path, "an object with prompt and answer"):
        fields = ("prompt", "answer") if answer_required or (isinstance(obj, dict) and "answer" in obj) else ("prompt",)
        missing = [
            k for k in fields if not isinstance(obj, dict) or not isinstance(obj.get(k), str) or not obj[k].strip()
        ]
        if missing:
            raise DataFormatError(
                path, n, [f"missing or empty field {', '.join(repr(m) for m in missing)} (expected {expected})"]
            )
        answer = obj.get("answer")
        prompts.append(obj["prompt"])
        answers.append(answer)
        seen = first_seen.setdefault(obj["prompt"], (n, answer))
        if (seen[1] or "").strip() != (answer or "").strip():
            conflicts.append((n, seen[0], seen[1], answer))
    if conflicts:
        n, first, a, b = conflicts[0]
        more = f"; {len(conflicts) - 1} more such lines" if len(conflicts) > 1 else ""
        raise DataFormatError(
            path,
            n,
            [
                f"same prompt as line {first} with a different answer ({b!r} here, {a!r} there)"
                f"{more} (expected one answer per prompt: keep the right one)"
            ],
        )
    if not prompts:
        raise DataFormatError(path, 0, ["no rows (expected JSONL with prompt and answer)"])
    return prompts, answers


def _read_open(path: str, name: str) -> EvalItems:
    """An open-ended set: 'prompt' per line and an optional 'reference' answer; DataFormatError at the first bad
    line, and at a prompt given twice (it would count twice in the win rate)."""
    prompts, references, first_seen = [], [], {}
    for n, obj in _json_lines(path, "an object with prompt"):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise DataFormatError(path, n, ["missing or empty field 'prompt' (expected a non-empty string)"])
        reference = obj.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataFormatError(path, n, [f"'reference' is {type(reference).__name__} (expected a string or none)"])
        if obj["prompt"] in first_seen:
            raise DataFormatError(
                path, n, [f"same prompt as line {first_seen[obj['prompt']]} (expected each prompt once)"]
            )
        first_seen[obj["prompt"]] = n
        prompts.append(obj["prompt"])
        references.append(reference or "")
    if not prompts:
        raise DataFormatError(path, 0, ["no rows (expected JSONL with prompt)"])
    return EvalItems(name, "target", prompts, [""] * len(prompts), None, "open", completions=references)


def _choice_label(answer: object, n_choices: int) -> int | str:
    """The right option's index from an MMLU-style answer (index from 0, or letter), or what is wrong with it."""
    last = LETTERS[n_choices - 1]
    expected = f"expected an index 0-{n_choices - 1} or a letter A-{last}"
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    else:
        return f"answer {answer!r} is neither an index nor a letter ({expected})"
    if not 0 <= index < n_choices:
        return f"answer {answer!r} is out of range for {n_choices} choices ({expected})"
    return index


def _read_choice(path: str, name: str, role: str) -> EvalItems:
    """An MMLU-style multiple-choice set: question, choices (2-26 strings), answer (index or letter) per line;
    DataFormatError at the first bad line."""
    prompts, letters, options, labels, completions = [], [], [], [], []
    for n, obj in _json_lines(path, "an object with question, choices and answer"):
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, ["not an object (expected question, choices and answer)"])
        question, choices = obj.get("question"), obj.get("choices")
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(path, n, ["missing or empty field 'question' (expected a non-empty string)"])
        if (
            not isinstance(choices, list)
            or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise DataFormatError(
                path, n, [f"'choices' is not a list of 2-{len(LETTERS)} non-empty strings (expected the options)"]
            )
        if "answer" not in obj:
            raise DataFormatError(path, n, ["missing field 'answer' (expected the right option's index or letter)"])
        label = _choice_label(obj["answer"], len(choices))
        if isinstance(label, str):
            raise DataFormatError(path, n, [label])
        prompts.append(choice_prompt(question, choices))
        letters.append(LETTERS[label])
        options.append(list(choices))
        labels.append(label)
        completions.append(f"{LETTERS[label]}. {choices[label]}")
    if not prompts:
        raise DataFormatError(path, 0, ["no rows (expected JSONL with question, choices and answer)"])
    return EvalItems(name, role, prompts, letters, None, "choice", options, labels, completions)


def _read_math(path: str, name: str, role: str) -> EvalItems:
    """A GSM8K-style set: question and answer (a worked solution ending '#### NUMBER', or the number) per line;
    DataFormatError at the first bad line, and when the reference is no number."""
    questions, references, solutions = [], [], []
    for n, obj in _json_lines(path, "an object with question and answer"):
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, ["not an object (expected question and answer)"])
        question, answer = obj.get("question"), obj.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # a bare numeric answer, as some GSM8K conversions store it
        missing = [
            k for k, v in (("question", question), ("answer", answer)) if not isinstance(v, str) or not v.strip()
        ]
        if missing:
            raise DataFormatError(
                path,
                n,
                [f"missing or empty field {', '.join(repr(m) for m in missing)} (expected question and answer text)"],
            )
        reference = math_reference(answer)
        if last_number(reference) is None:
            where = "after '####'" if "####" in answer else "in the answer"
            raise DataFormatError(
                path, n, [f"no number {where}: {reference[:60]!r} (expected a final '#### NUMBER' line, as GSM8K's)"]
            )
        questions.append(question)
        references.append(reference)
        solutions.append(answer)
    if not questions:
        raise DataFormatError(path, 0, ["no rows (expected JSONL with question and answer)"])
    return EvalItems(name, role, questions, references, None, "math", completions=solutions)


def read_eval_set(e: EvalSet) -> EvalItems:
    """One evaluation set of the user's, read by its row format."""
    if e.format == "choice":
        items = _read_choice(e.path, e.name, e.role)
    elif e.format == "math":
        items = _read_math(e.path, e.name, e.role)
    elif e.format == "open":
        items = _read_open(e.path, e.name)
        items.scorer = e.scorer()
    else:
        items = EvalItems(e.name, e.role, *read_prompt_answers(e.path))
    items.max_tokens = e.max_tokens
    return items


def read_pairs(path: str) -> list[DPORow]:
    """The user's preference pairs (any TRL preference format); DataFormatError (FILE:LINE) at the first bad row."""
    rows = []
    for res in iter_checked(path, "dpo"):
        if res is None:
            continue
        if not res.ok:
            raise DataFormatError(path, res.line, res.problems)
        if not isinstance(res.row.prompt, str):
            raise DataFormatError(
                path,
                res.line,
                [
                    "prompt has several messages (a system prompt or earlier turns); the workflows train on "
                    "single-turn prompts for now (expected one user message, or a prompt string)"
                ],
            )
        rows.append(res.row)
    if not rows:
        raise DataFormatError(path, 0, ["no rows (expected preference pairs: prompt, chosen, rejected)"])
    return rows


def read_grounded(path: str, abstention: str = ABSTAIN) -> list[GroundedItem]:
    """The grounded questions of a JSONL/Parquet file; DataFormatError (FILE:LINE) at the first bad row."""
    with abstention_text(abstention):
        items = [from_record(r.to_record(), abstention) for r in read_rows(path, "grounded")]
    if not items:
        raise DataFormatError(path, 0, ["no rows (expected grounded rows: question, passages, answer)"])
    return items


def _grounded_set(name: str, role: str, items: list[GroundedItem]) -> EvalItems:
    return EvalItems(name, role, [i.prompt() for i in items], [i.target() for i in items], items)


def _is_grounded_file(path: str) -> bool:
    first = first_record(path)
    return first is not None and guess_format(first) == "grounded"


def load_grounded(cfg: GroundedDataConfig) -> DataBundle:
    """The anti-hallucination bundle: grounded target (training questions, a dev split, the evaluation set) and the
    digit-copy benchmark; embedded splits ask about disjoint groups of people."""
    if cfg.source == "files":
        train = read_grounded(cfg.prompts, cfg.abstention)  # type: ignore[arg-type]
        sft = [(r.prompt, r.completion) for r in read_rows(cfg.sft, "sft")] if cfg.sft else []
        evals = []
        for e in cfg.eval_sets:
            if e.format == "qa" and _is_grounded_file(e.path):
                evals.append(_grounded_set(e.name, e.role, read_grounded(e.path, cfg.abstention)))
            else:
                evals.append(read_eval_set(e))
        target = next(i for i, e in enumerate(evals) if e.role == "target")
        if evals[target].items is None:
            raise DataFormatError(
                cfg.eval_sets[target].path,
                1,
                ["the target evaluation set is not grounded rows (expected question, passages, answer)"],
            )
        held = [pair for e in evals for pair in e.held_out()]
        # Stage-1 SFT rows replayed in stage 3 keep what the model could do (capability data).
        replay = random.Random(cfg.seed + 3).sample(sft, min(cfg.n_prompts_benchmark, len(sft)))
        prompts = [i.prompt() for i in train]
        return DataBundle(sft, prompts, {i.prompt(): i.target() for i in train}, evals, held, None, train, replay)

    people = world(cfg.n_people, seed=cfg.seed)
    names = list(people)
    # Three disjoint groups of people: training (stages 1-5), round decisions (stage 6), evaluation (1, 7).
    cut1, cut2 = len(names) * 3 // 5, len(names) * 4 // 5
    groups = [{n: people[n] for n in part} for part in (names[:cut1], names[cut1:cut2], names[cut2:])]
    kw = dict(unanswerable=cfg.unanswerable, n_passages=cfg.n_passages, abstention=cfg.abstention)
    pool = grounded_items(groups[0], cfg.n_prompts + cfg.n_sft_target * 2, seed=cfg.seed, **kw)
    train = pool[: cfg.n_prompts]
    reader = [i for i in pool[cfg.n_prompts :] if i.answerable][: cfg.n_sft_target]
    dev = grounded_items(groups[1], cfg.n_dev, seed=cfg.seed + 1, **kw)
    evaluation = grounded_items(groups[2], cfg.n_eval, seed=cfg.seed + 2, **kw)
    cop = [example("copy", s) for s in digit_strings(cfg.n_sft_benchmark + cfg.n_eval, seed=cfg.seed + 1)]
    sft_cop, eval_cop = cop[: cfg.n_sft_benchmark], cop[cfg.n_sft_benchmark :]
    # Stage 1 answers from the sources, never cites and never abstains: what citation training starts from.
    sft = [(i.prompt(), i.answer) for i in reader] + [(e.prompt, e.answer) for e in sft_cop]
    random.Random(cfg.seed).shuffle(sft)
    target = _grounded_set("grounded", "target", evaluation)
    copy = EvalItems("copy", "benchmark", [e.prompt for e in eval_cop], [e.answer for e in eval_cop])
    # Perplexity (stage 1's gate) on text like stage 1's own: answers without citations, then the copy items.
    held = [(i.prompt(), i.answer) for i in evaluation if i.answerable] + [(e.prompt, e.answer) for e in eval_cop]
    replay = random.Random(cfg.seed + 3).sample(sft_cop, min(cfg.n_prompts_benchmark, len(sft_cop)))
    return DataBundle(
        sft,
        [i.prompt() for i in train],
        {i.prompt(): i.target() for i in train},
        [target, copy],
        held,
        _grounded_set("grounded_dev", "target", dev),
        train,
        [(e.prompt, e.answer) for e in replay],
    )


def load_data(cfg: DataConfig) -> DataBundle:
    """Build the bundle. Embedded splits are disjoint: SFT, preference prompts and eval items share no digit string."""
    if isinstance(cfg, GroundedDataConfig):
        return load_grounded(cfg)
    if cfg.source == "files":
        if cfg.prompts is not None:
            prompts, answers = read_prompt_answers(cfg.prompts, answer_required=False)
        else:  # the given pairs' prompts, once each, answers unknown (a judge or reward model scores them)
            prompts = list(dict.fromkeys(r.prompt for r in read_pairs(cfg.pairs)))  # type: ignore[arg-type]
            answers = [None] * len(prompts)
        sft = [(r.prompt, r.completion) for r in read_rows(cfg.sft, "sft")] if cfg.sft else []
        evals = [read_eval_set(e) for e in cfg.eval_sets]
        held = [pair for e in evals for pair in e.held_out()]
        if not held:  # stage 1's perplexity gate needs text; say so before anything trains
            raise ValueError(
                "data.eval_sets: no held-out text to measure perplexity on (an open set without 'reference' answers "
                "and no other set): add a benchmark set with answers, or 'reference' answers to the open set"
            )
        # No separate dev set in user files: round decisions use the target set (the report says so).
        known = {p: a for p, a in zip(prompts, answers) if a is not None}
        return DataBundle(sft, prompts, known, evals, held, None)

    # One pool of distinct strings per task, cut into disjoint slices.
    n_t = cfg.n_sft_target + cfg.n_prompts + cfg.n_eval + cfg.n_dev
    n_b = cfg.n_sft_benchmark + cfg.n_eval  # + n_prompts_benchmark, drawn below
    rev = [example("reverse", s) for s in digit_strings(n_t, seed=cfg.seed)]
    cop = [example("copy", s) for s in digit_strings(n_b + cfg.n_prompts_benchmark, seed=cfg.seed + 1)]
    a, b = cfg.n_sft_target, cfg.n_sft_target + cfg.n_prompts
    sft_rev, pref, dev_rev = rev[:a], rev[a:b], rev[b : b + cfg.n_dev]
    eval_rev = rev[b + cfg.n_dev :]
    sft_cop, eval_cop = cop[: cfg.n_sft_benchmark], cop[-cfg.n_eval :]
    # Capability data: some preference prompts of the benchmark skill, so aligning the target does not erase it.
    pref += cop[cfg.n_sft_benchmark : cfg.n_sft_benchmark + cfg.n_prompts_benchmark]
    sft = [(e.prompt, e.answer) for e in sft_rev + sft_cop]

    random.Random(cfg.seed).shuffle(sft)  # interleave skills so every batch sees both
    evals = [
        EvalItems("reverse", "target", [e.prompt for e in eval_rev], [e.answer for e in eval_rev]),
        EvalItems("copy", "benchmark", [e.prompt for e in eval_cop], [e.answer for e in eval_cop]),
    ]
    held = [(e.prompt, e.answer) for e in eval_rev + eval_cop]
    dev = EvalItems("reverse_dev", "target", [e.prompt for e in dev_rev], [e.answer for e in dev_rev])
    return DataBundle(sft, [e.prompt for e in pref], {e.prompt: e.answer for e in pref}, evals, held, dev)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


class TrainingFile(_Config):
    """A file of training rows a stage wrote (or the user gave): what a model was trained on."""

    path: str = Field(description="JSONL or Parquet file.")
    format: Literal["sft", "dpo", "grpo", "rlvr", "grounded"] | None = Field(
        None, description="Row format (see `realign validate`); None: guessed from the first row's fields."
    )

    def row_format(self) -> str:
        if self.format is not None:
            return self.format
        first = first_record(self.path)
        fmt = guess_format(first) if first is not None else None
        if fmt is None:
            raise DataFormatError(
                self.path, 1, ["cannot tell the row format (expected sft, dpo, grpo, rlvr or grounded fields)"]
            )
        return fmt

    def records(self) -> list[dict]:
        return [r.to_record() for r in read_rows(self.path, self.row_format())]

    def texts(self) -> list[str]:
        """One text per row: every string in it, in field order (what decontamination compares with the eval sets)."""
        return [" ".join(_strings(r)) for r in self.records()]

    def examples(self) -> list[tuple[str, str]]:
        """(prompt, completion) per row for supervised training: SFT rows as they are, preference rows' chosen one."""
        fmt = self.row_format()
        if fmt == "sft":
            return [(r.prompt, r.completion) for r in read_rows(self.path, "sft")]  # type: ignore[attr-defined]
        if fmt == "dpo":
            return [(r["prompt"], r["chosen"]) for r in self.records()]
        raise ValueError(f"{self.path}: {fmt} rows have no single completion to train on (expected sft or dpo rows)")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []
