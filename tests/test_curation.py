"""The curation front door: request -> data type -> workflow -> curated/<type>_<source>_YYYYMMDD/."""

from __future__ import annotations

import json
from datetime import date

import pytest

from realign.data.curation import WORKFLOW_OF, curated_dir, data_type_of, source_slug


@pytest.mark.parametrize(
    "request_text, kind",
    [
        ("Curate DPO preference pairs from ml_textbook.pdf for Qwen 7B", "DPO"),
        ("chosen/rejected data for our 70B", "DPO"),
        ("verifiable math answers for RL", "RLVR"),
        ("teach it to abstain instead of hallucinating", "anti-hallucination"),
        ("self-refinement traces from the manual", "SRF-SFT"),
        ("some training data from notes.txt", "SFT"),  # unclear -> SFT
    ],
)
def test_data_type_of_a_request(request_text, kind):
    assert data_type_of(request_text) == kind
    assert kind in WORKFLOW_OF


def test_output_folder_follows_the_spec_example():
    assert (
        str(curated_dir("curated", "DPO", "ml_textbook.pdf", date(2026, 11, 21))) == "curated/dpo_ml_textbook_20261121"
    )
    assert str(curated_dir("c", "anti-hallucination", "Wiki Dump", date(2026, 1, 2))) == "c/anti_wiki_dump_20260102"
    with pytest.raises(ValueError, match="no letters or digits"):
        source_slug("...")


@pytest.mark.slow
def test_curate_flow_publishes_the_gated_pairs(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness
    from test_dpo_flow import SMALL

    from flows.curate import curate

    monkeypatch.chdir(tmp_path)
    cfg = json.loads(json.dumps(SMALL))
    cfg["iterations"] = {"max_rounds": 1}
    cfg["runs_root"] = str(tmp_path / "runs")
    with prefect_test_harness(server_startup_timeout=120):
        result = curate(
            "Curate DPO preference pairs from the digit tasks for Qwen 7B",
            cfg,
            source_name="digits.jsonl",
            curated_root=str(tmp_path / "curated"),
        )
        with pytest.raises(NotImplementedError, match="only DPO curation is available"):
            curate("verifiable math answers", cfg)
    out = tmp_path / "curated" / f"dpo_digits_{date.today():%Y%m%d}"
    assert result["output"] == str(out / "train.jsonl")
    lines = (out / "train.jsonl").read_text().splitlines()
    pairs_file = next((tmp_path / "runs").glob("*/02_preference_data/train.jsonl"))
    assert lines == pairs_file.read_text().splitlines() and len(lines) == result["examples"] > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["data_type"] == "DPO" and saved["workflow"] == "dpo" and saved["tier"] in ("HIGH", "MEDIUM")
    # planned for the size the request names: 7B goes to the fast machine
    assert saved["plan"]["params_b"] == 7.0 and saved["plan"]["machines"] == ["m4-max"]
    # the plan covers the prompts the data really has (SMALL: 120 reverse + 60 copy)
    assert sum(saved["plan"]["split"].values()) == 180
