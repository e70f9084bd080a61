"""The curation front door (SPEC.md): a request in words -> data type, model size, workflow, output path.

"Curate DPO preference pairs from ml_textbook.pdf for Qwen 7B" -> data type dpo (the DPO workflow), 7B,
curated/dpo_ml_textbook_YYYYMMDD/train.jsonl. SFT when the request does not say.

Data type: every phrase that names a method or describes its data (method names, their synonyms, what the data
looks like) adds its weight to its type; a phrase after a negation ("not DPO", "instead of preference pairs") counts
for nothing; the highest total wins and the reason lists the phrases. Model size: a mixture-of-experts name
(mixtral 8x7B is 46.7B in total), a known family without a size in its name (phi-3-mini is 3.8B), or a size in
any spelling (7B, 7b, 0.5B, 270M, 1.1b, 7 billion).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

DATA_TYPES = ("dpo", "srf", "sft", "rlvr", "antihallucination")
# SFT runs the SRF workflow's data stages (the seeds route SRF and SFT to one workflow).
WORKFLOW_OF = {"dpo": "dpo", "srf": "srf", "sft": "srf", "rlvr": "rlvr", "antihallucination": "antihallucination"}
# The row format each data type's curated file holds (realign.data.formats).
ROW_FORMAT_OF = {"dpo": "dpo", "srf": "dpo", "sft": "sft", "rlvr": "rlvr", "antihallucination": "grounded"}

STRONG, SYNONYM, WEAK = 3, 2, 1
# (data type, weight, pattern) over the request lowercased with '_' as ' '. STRONG: the method's name; SYNONYM: a
# phrase that describes the method's data; WEAK: a word that leans towards it.
_PHRASES: tuple[tuple[str, int, str], ...] = (
    ("dpo", STRONG, r"\b(?:dpo|orpo|cpo|ipo|simpo|kto)\b"),
    ("dpo", SYNONYM, r"\bprefer(?:ence|red|ences)\b"),
    ("dpo", SYNONYM, r"\bchosen\s*(?:/|and|vs\.?|versus|,)?\s*rejected\b"),
    ("dpo", SYNONYM, r"\b(?:good|better|best)\s+(?:and|vs\.?|versus|or)\s+(?:bad|worse|worst)\b"),
    ("dpo", SYNONYM, r"\bpairwise\b|\bcomparison pairs?\b|\branked (?:answers|responses)\b"),
    ("dpo", WEAK, r"(?<!q&a )(?<!qa )(?<!question )(?<!question-answer )\bpairs?\b"),
    ("dpo", WEAK, r"\bcompar(?:e|ing|ison)\b"),
    ("srf", STRONG, r"\bsrf\b|\bsupervised reward fine[- ]?tun\w*"),
    ("srf", SYNONYM, r"\breward[- ]model\w*"),
    (
        "srf",
        SYNONYM,
        r"\bthumbs[- ]?(?:up|down)\b|\bup[- ]?votes?\b|\bdown[- ]?votes?\b|\bratings?\b|\bstar ratings?\b",
    ),
    ("srf", SYNONYM, r"\brlhf\b|\bppo\b|\bhuman feedback\b|\breinforcement learning from (?:human )?feedback\b"),
    ("srf", WEAK, r"\brewards?\b|\bfeedback\b|\brl\b"),
    ("rlvr", STRONG, r"\brlvr\b|\bverifiabl[ey]\b|\bverifiable rewards?\b"),
    ("rlvr", SYNONYM, r"\bunit[- ]tests?\b|\btest cases?\b|\bexecutable (?:checks?|tests?)\b|\bauto[- ]?grad\w*"),
    ("rlvr", SYNONYM, r"\bcheckable\b|\bverifier\b|\bground[- ]truth answers?\b|\banswer key\b"),
    ("rlvr", SYNONYM, r"\bmath\w*(?: \w+){0,4} (?:with|and) (?:\w+ ){0,2}(?:answers?|solutions?)\b"),
    ("rlvr", SYNONYM, r"\b(?:numeric|numerical|exact|final) answers?\b"),
    ("rlvr", WEAK, r"\bgrpo\b|\bmath\w*\b|\bcod(?:e|ing) (?:tasks|problems|challenges)\b|\bproofs?\b|\bpuzzles?\b"),
    ("antihallucination", STRONG, r"\b(?:anti[- ]?)?hallucinat\w*"),
    ("antihallucination", SYNONYM, r"\bcit(?:e|es|ing|ation|ations)\b|\bgrounded\b|\bgrounding\b|\battribution\b"),
    ("antihallucination", SYNONYM, r"\babstain\w*|\babstention\w*|\bi (?:don't|do not|dont) know\b"),
    ("antihallucination", SYNONYM, r"\bcalibrat\w*|\brefus\w*|\bdecline\w*|\bunanswerable\b|\bnot covered\b"),
    ("antihallucination", SYNONYM, r"\bfactual\w*|\bfaithful\w*|\bmade[- ]up\b|\bconfabulat\w*|\bfabricat\w*"),
    ("antihallucination", WEAK, r"\bsources?\b|\bevidence\b|\bfacts?\b"),
    ("sft", STRONG, r"\bsft\b|\bsupervised fine[- ]?tun\w*|\binstruction[- ]tun\w*"),
    ("sft", SYNONYM, r"\binstruction(?:s)?(?: data| dataset| following|[/ ]response| answer|[/ ]output)\b"),
    ("sft", SYNONYM, r"\bq ?& ?a\b|\bquestion[- ]answer\b|\bquestions? and answers?\b|\bdemonstrations?\b"),
    ("sft", SYNONYM, r"\bchat (?:data|transcripts|examples)\b|\bprompt[/ -](?:completion|response)\b"),
    ("sft", WEAK, r"\bfine[- ]?tun\w*|\binstructions?\b|\bqa\b|\bexamples?\b"),
)
_COMPILED = [(kind, weight, re.compile(rx)) for kind, weight, rx in _PHRASES]
_NEGATION = re.compile(
    r"(?:\bnot|\bno|\bwithout|\binstead of|\brather than|\bnever|\bavoid(?:ing)?|\bexcept|\bbut not|\bnor)"
    r"(?:\s+\w+){0,2}\s*[-—:,]*\s*$"
)


@dataclass
class DataTypeDecision:
    """The data type of a request, its workflow, and why: the phrases that counted (and those negated)."""

    data_type: str
    workflow: str
    reason: str
    scores: dict[str, int]


def data_type_of(request: str) -> DataTypeDecision:
    """The data type a request asks for (dpo, srf, sft, rlvr, antihallucination; sft when unclear), with its reason.

    Each phrase adds its weight (method name 3, synonym 2, leaning word 1) to its type unless a negation ("not",
    "no", "without", "instead of", "rather than") stands within two words before it. Anti-hallucination phrases are
    never negated: "abstain instead of hallucinating" still asks for anti-hallucination data. Ties go to the type
    with the strongest phrase, then to the one named first."""
    text = request.lower().replace("_", " ")
    scores = dict.fromkeys(DATA_TYPES, 0)
    strongest = dict.fromkeys(DATA_TYPES, 0)
    first = dict.fromkeys(DATA_TYPES, len(text))
    found: dict[str, list[str]] = {k: [] for k in DATA_TYPES}
    negated: list[str] = []
    claimed: list[tuple[int, int]] = []  # spans already counted (a phrase counts once, for its strongest reading)
    for kind, weight, rx in sorted(_COMPILED, key=lambda c: -c[1]):
        for m in rx.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in claimed):
                continue
            claimed.append((m.start(), m.end()))
            if kind != "antihallucination" and _NEGATION.search(text[max(0, m.start() - 40) : m.start()]):
                negated.append(f"'{m.group(0)}' ({kind})")
                continue
            scores[kind] += weight
            strongest[kind] = max(strongest[kind], weight)
            first[kind] = min(first[kind], m.start())
            found[kind].append(f"'{m.group(0)}'")
    best = max(DATA_TYPES, key=lambda k: (scores[k], strongest[k], -first[k]))
    tail = f"; negated: {', '.join(negated)}" if negated else ""
    if scores[best] == 0:
        return DataTypeDecision("sft", WORKFLOW_OF["sft"], "no data type named: SFT (the default)" + tail, scores)
    others = ", ".join(f"{k} {v}" for k, v in sorted(scores.items(), key=lambda kv: -kv[1]) if v and k != best)
    reason = f"{best}: {', '.join(found[best])} (score {scores[best]}" + (f"; also {others})" if others else ")")
    return DataTypeDecision(best, WORKFLOW_OF[best], reason + tail, scores)


# --- model size --------------------------------------------------------------------------------------------------

# Mixture-of-experts totals (experts share attention and embeddings, so total < experts x size).
MOE_TOTAL_B = {(8, 7.0): 46.7, (8, 22.0): 141.0, (8, 3.0): 13.0}  # mixtral 8x7B / 8x22B, granite-style 8x3B
# Families whose names carry no size (or carry one that is not the parameter count), in billions.
# Checked before a size in the text; the longer name first ("phi-3-mini" before "phi-3").
KNOWN_FAMILIES_B: dict[str, float] = {
    "phi-3.5-mini": 3.8,
    "phi-3.5-moe": 41.9,
    "phi-3-mini": 3.8,
    "phi-3-small": 7.4,
    "phi-3-medium": 14.0,
    "phi-4-mini": 3.8,
    "phi-4": 14.7,
    "phi-2": 2.7,
    "phi-1.5": 1.4,
    "tinyllama": 1.1,
    "mixtral": 46.7,
    "mistral-nemo": 12.2,
    "mistral-small": 24.0,
    "mistral-large": 123.0,
    "deepseek-v3": 671.0,
    "deepseek-r1": 671.0,
    "deepseek-v2-lite": 15.7,
    "deepseek-v2": 236.0,
    "gpt-2-xl": 1.5,
    "gpt2-xl": 1.5,
    "gpt-2-large": 0.774,
    "gpt2-large": 0.774,
    "gpt-2-medium": 0.355,
    "gpt2-medium": 0.355,
    "gpt-2": 0.124,
    "gpt2": 0.124,
    "grok-1": 314.0,
    "dbrx": 132.0,
}
_FAMILY_RX = [
    (name, re.compile(r"(?<![\w.])" + re.escape(name) + r"(?![\w.]|-\d)"))
    for name in sorted(KNOWN_FAMILIES_B, key=len, reverse=True)
]
_MOE = re.compile(r"(?<![\w.])(\d+)\s*x\s*(\d+(?:\.\d+)?)\s*b\b")
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(b|m|bn|billion|million)\b(?:[- ]param\w*)?")
# "1M preference pairs", "500M tokens": a count of data, not a model size
_COUNTED = re.compile(
    r"\s*(?:of\s+)?(?:(?:preference|training|sft|dpo|instruction|chat|text|labell?ed|rated)\s+)?(?:tokens?|examples?|pairs?|rows?|samples?|words?|documents?|items?|questions?)\b"
)


@dataclass
class ModelSizeDecision:
    """Billions of parameters a request names (None when none), and how it was read."""

    params_b: float | None
    reason: str


def model_size_of(request: str) -> ModelSizeDecision:
    """The model size a request names: a mixture-of-experts total, a known family's size, or a size written as
    7B / 7b / 0.5B / 270M / 1.1b / '7 billion'. Several sizes: the first. None when the request names none."""
    text = re.sub(r"[\s_]+", " ", request.lower())
    dashed = text.replace(" ", "-")
    m = _MOE.search(text)
    if m:
        experts, size = int(m.group(1)), float(m.group(2))
        total = MOE_TOTAL_B.get((experts, size))
        if total is not None:
            return ModelSizeDecision(total, f"'{m.group(0)}': mixture of experts, {total:g}B parameters in total")
        return ModelSizeDecision(
            experts * size,
            f"'{m.group(0)}': mixture of experts of unknown total; {experts} x {size:g}B (an upper bound)",
        )
    for name, rx in _FAMILY_RX:
        if rx.search(dashed):
            b = KNOWN_FAMILIES_B[name]
            return ModelSizeDecision(b, f"'{name}': a known model of {b:g}B parameters")
    for m in _SIZE.finditer(text):
        value, unit = float(m.group(1)), m.group(2)
        if value == 0 or _COUNTED.match(text, m.end()):
            continue
        b = value / 1000 if unit in ("m", "million") else value
        return ModelSizeDecision(b, f"'{m.group(0).strip()}': {b:g}B parameters")
    return ModelSizeDecision(None, "the request names no model size")


# --- sources and output ------------------------------------------------------------------------------------------

_SOURCE = re.compile(r"(?<![\w/.~-])([~./\w-][\w./~-]*\.(?:pdf|md|markdown|txt|text|html?|jsonl))\b", re.IGNORECASE)
_FOLDER = re.compile(r"(?<![\w])((?:[~.]?/)?[\w.-]+(?:/[\w.-]+)*/)(?=\s|$|[,;)])")


def sources_named(request: str) -> list[str]:
    """Document paths a request names ("from ml_textbook.pdf", "from policies/"), in order."""
    named = [m.group(1) for m in _SOURCE.finditer(request)]
    named += [m.group(1) for m in _FOLDER.finditer(request) if m.group(1) not in ("/", "./")]
    return list(dict.fromkeys(named))


def source_slug(name: str) -> str:
    """'ml_textbook.pdf' -> 'ml_textbook', 'docs/policies/' -> 'policies': the file stem (or the folder's name),
    lowercase, [a-z0-9_] only."""
    p = Path(str(name).rstrip("/"))
    stem = p.stem if p.suffix and re.fullmatch(r"\.[A-Za-z]{2,8}", p.suffix) else p.name
    slug = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")
    if not slug:
        raise ValueError(f"source name {name!r} has no letters or digits to name the output folder with")
    return slug


def curated_dir(root: str | Path, data_type: str, source: str, day: date | None = None) -> Path:
    """ROOT/<type>_<source>_YYYYMMDD, e.g. curated/dpo_ml_textbook_20261121."""
    kind = re.sub(r"[^a-z0-9]+", "", data_type.lower())
    return Path(root) / f"{kind}_{source_slug(source)}_{(day or date.today()):%Y%m%d}"


@dataclass
class RequestUnderstanding:
    """Everything read from a request's words: data type, workflow, model size, the sources it names; with reasons."""

    request: str
    data_type: str
    workflow: str
    data_type_reason: str
    params_b: float | None
    size_reason: str
    sources_named: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def understand(request: str) -> RequestUnderstanding:
    """Read a request: data type (with its reason), model size (with its reason), the document paths it names."""
    if not request or not request.strip():
        raise ValueError('the request is empty: say what to curate, e.g. "Curate DPO preference pairs from notes.pdf"')
    kind = data_type_of(request)
    size = model_size_of(request)
    return RequestUnderstanding(
        request, kind.data_type, kind.workflow, kind.reason, size.params_b, size.reason, sources_named(request)
    )
