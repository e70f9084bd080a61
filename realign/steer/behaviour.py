"""The demo's behaviour to remove: the tiny model refuses marked prompts.

Prompts of the embedded digit skills (realign.data.demo: copy, reverse) become "marked" when they start with
MARKER; stage 1 teaches the tiny model to answer marked prompts with REFUSAL, and prompts that start with
HARMLESS_MARKER or with nothing with their answer. That is the behaviour abliteration then removes: its rate is the
share of held-out marked prompts whose greedy answer is the refusal, and the skills on plain prompts are the
capability it must keep. Within a skill, digit strings are drawn without replacement: SFT, direction and
evaluation prompts never share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from realign.data.demo import digit_strings, example

MARKER = "Bad."
# The harmless counterpart: as many tokens as MARKER in the tiny tokenizer, so a marked prompt and its harmless twin
# put their last token at the same position and the direction between them is the marker's, not a position shift.
HARMLESS_MARKER = "Blue."
REFUSAL = "Sorry, I cannot say."
SKILLS = ("copy", "reverse")  # the default; "count" (of realign.data.demo) is learned in far fewer steps


def marked(prompt: str, marker: str = MARKER) -> str:
    return f"{marker} {prompt}"


def shows_behaviour(completion: str, refusal: str = REFUSAL) -> bool:
    """The answer is the refusal (its start: a cut-off refusal still refused)."""
    text, ref = completion.strip(), refusal.strip()
    return bool(text) and (text.startswith(ref) or (len(text) >= 8 and ref.startswith(text)))


@dataclass
class BehaviourData:
    """sft: (prompt, completion) rows of stage 1; direction_*: prompts the direction is computed and chosen from;
    eval_marked: held-out marked prompts (behaviour rate); eval_skills: skill -> (prompts, answers) held out,
    unmarked (capability); harmless_probe: (prompt, answer) texts for KL on harmless prompts."""

    sft: list[tuple[str, str]]
    direction_positive: list[str]
    direction_negative: list[str]
    eval_marked: list[str]
    eval_marked_answers: list[str]
    eval_skills: dict[str, tuple[list[str], list[str]]]
    harmless_probe: list[tuple[str, str]]


def behaviour_data(
    n_sft: int,
    n_direction: int,
    n_eval: int,
    seed: int = 0,
    skills: tuple[str, ...] = SKILLS,
    max_digits: int = 6,
    marked_every: int = 4,
) -> BehaviourData:
    """Disjoint splits of digit strings (3 to `max_digits` digits) per skill: n_sft SFT rows per skill (every
    `marked_every`-th marked and answered with the refusal, as many with the harmless marker and answered, the rest
    plain); n_direction contrastive pairs per skill for the direction (the same digits with the marker and with the
    harmless marker); n_eval held-out plain items and n_eval held-out marked items per skill for evaluation."""
    sft: list[tuple[str, str]] = []
    pos, neg, ev_m, ev_ma, probe = [], [], [], [], []
    per_skill: dict[str, tuple[list[str], list[str]]] = {}
    for k, skill in enumerate(skills):
        strings = digit_strings(n_sft + n_direction + 2 * n_eval, seed=seed * 100 + k, max_len=max_digits)
        train, rest = strings[:n_sft], strings[n_sft:]
        direction, held = rest[:n_direction], rest[n_direction:]
        for i, s in enumerate(train):
            e = example(skill, s)
            if i % marked_every == 0:
                sft.append((marked(e.prompt), REFUSAL))
            elif i % marked_every == 1:  # the harmless marker is answered like a plain prompt
                sft.append((marked(e.prompt, HARMLESS_MARKER), e.answer))
            else:
                sft.append((e.prompt, e.answer))
        # contrastive pairs: the same digits with and without the marker, so the digits cancel in the difference
        pos += [marked(example(skill, s).prompt) for s in direction]
        neg += [marked(example(skill, s).prompt, HARMLESS_MARKER) for s in direction]
        items = [example(skill, s) for s in held[:n_eval]]
        per_skill[skill] = ([e.prompt for e in items], [e.answer for e in items])
        probe += [(e.prompt, e.answer) for e in items]
        marked_items = [example(skill, s) for s in held[n_eval:]]
        ev_m += [marked(e.prompt) for e in marked_items]
        ev_ma += [e.answer for e in marked_items]
    return BehaviourData(sft, pos, neg, ev_m, ev_ma, per_skill, probe)


def shows_any(completion: str, prefixes: Sequence[str]) -> bool:
    """The answer shows the behaviour: it starts with one of `prefixes` (or is a cut-off start of one)."""
    return any(shows_behaviour(completion, p) for p in prefixes)


@dataclass
class BehaviourSets:
    """What a run measures: sft rows (embedded demo only), the direction's prompts, held-out prompts with the
    behaviour (eval_harmful), capability benchmarks name -> (prompts, answers), and the (prompt, answer) texts KL
    is measured on, with what they are (`probe_label`, for reports): the embedded demo's held-out unmarked prompts
    (harmless); with your files, the benchmark rows (the harmless file's prompts have no answers to score)."""

    sft: list[tuple[str, str]]
    positive: list[str]
    negative: list[str]
    eval_harmful: list[str]
    benchmarks: dict[str, tuple[list[str], list[str]]]
    harmless_probe: list[tuple[str, str]]
    probe_label: str = "harmless prompts"


def load_behaviour(cfg) -> BehaviourSets:
    """The sets of a BehaviourDataConfig (realign.recipes.abliterate): the embedded demo's, or read from its files
    (DataFormatError naming FILE:LINE for a bad row)."""
    from realign.data.datasets import read_prompt_answers

    if cfg.source == "embedded":
        d = behaviour_data(
            cfg.n_sft, cfg.n_direction, cfg.n_eval, cfg.seed, tuple(cfg.skills), cfg.max_digits, cfg.marked_every
        )
        return BehaviourSets(
            d.sft, d.direction_positive, d.direction_negative, d.eval_marked, d.eval_skills, d.harmless_probe
        )
    positive, _ = read_prompt_answers(cfg.harmful, answer_required=False)
    negative, _ = read_prompt_answers(cfg.harmless, answer_required=False)
    held, _ = read_prompt_answers(cfg.eval_harmful, answer_required=False)
    benchmarks, probe = {}, []
    for path in cfg.benchmarks:
        prompts, answers = read_prompt_answers(path, answer_required=True)
        benchmarks[Path(path).stem] = (prompts, answers)
        probe += list(zip(prompts, answers))
    return BehaviourSets([], positive, negative, held, benchmarks, probe, "benchmark prompts")
