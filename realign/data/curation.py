"""The curation front door (SPEC.md): a request in words -> data type, workflow, output path.

"Curate DPO preference pairs from ml_textbook.pdf for Qwen 7B" -> DPO, the dpo workflow,
curated/dpo_ml_textbook_YYYYMMDD/train.jsonl. SFT when the request does not say.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

# Checked in this order; the first data type whose words appear in the request wins.
_KEYWORDS = (
    ("anti-hallucination", r"hallucinat|abstain|factual|grounded"),
    ("RLVR", r"\brlvr\b|verifiable|verifier|unit tests?|math answers?"),
    ("DPO", r"\bdpo\b|preference|chosen|rejected|\bpairs?\b"),
    ("SRF-SFT", r"\bsrf\b|self[- ]?refin|refinement"),
    ("SFT", r"\bsft\b|instruction|supervised"),
)

WORKFLOW_OF = {"DPO": "dpo", "SRF-SFT": "srf", "SFT": "srf", "RLVR": "rlvr", "anti-hallucination": "antihallucination"}


def data_type_of(request: str) -> str:
    """The data type a request asks for: DPO, SRF-SFT, RLVR, anti-hallucination, or SFT when unclear."""
    text = request.lower()
    for kind, pattern in _KEYWORDS:
        if re.search(pattern, text):
            return kind
    return "SFT"


def source_slug(name: str) -> str:
    """'ml_textbook.pdf' -> 'ml_textbook': the file stem, lowercase, [a-z0-9_] only."""
    stem = Path(name).stem if "." in Path(name).name else name
    slug = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")
    if not slug:
        raise ValueError(f"source name {name!r} has no letters or digits to name the output folder with")
    return slug


def curated_dir(root: str | Path, data_type: str, source: str, day: date | None = None) -> Path:
    """ROOT/<type>_<source>_YYYYMMDD, e.g. curated/dpo_ml_textbook_20261121."""
    kind = re.sub(r"[^a-z0-9]+", "", data_type.lower().split("-")[0])
    return Path(root) / f"{kind}_{source_slug(source)}_{(day or date.today()):%Y%m%d}"
