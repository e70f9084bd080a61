"""`realign gate check` and `realign gates docs` from the command line."""

import json
import re

import pandas as pd

from conftest import run_cli


def write_pairs(path, n, gap, *, parquet=False):
    rows = [
        {
            "prompt": f"q{i}",
            "chosen": f"good {i}",
            "rejected": f"bad {i}",
            "chosen_score": 0.5 + gap,
            "rejected_score": 0.5,
        }
        for i in range(n)
    ]
    if parquet:
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_exit_codes_follow_the_tier(tmp_path):
    high = run_cli(
        "gate",
        "check",
        "--suite",
        "preference_pairs",
        str(write_pairs(tmp_path / "h.parquet", 1000, 0.2, parquet=True)),
    )
    assert high.returncode == 0 and "tier: HIGH" in high.stdout and "warning" not in high.stderr
    medium = run_cli("gate", "check", "--suite", "preference_pairs", str(write_pairs(tmp_path / "m.jsonl", 1000, 0.12)))
    assert medium.returncode == 0 and "tier: MEDIUM" in medium.stdout
    assert "warning: Gate preference_pairs: MEDIUM" in medium.stderr and "preference_gap (mean) = 0.12" in medium.stderr
    reject = run_cli("gate", "check", "--suite", "preference_pairs", str(write_pairs(tmp_path / "r.jsonl", 999, 0.2)))
    assert reject.returncode == 2 and "tier: REJECT" in reject.stdout


def test_thresholds_file_and_json_output(tmp_path):
    pairs = write_pairs(tmp_path / "p.jsonl", 50, 0.2)
    th = tmp_path / "th.yaml"
    th.write_text("thresholds:\n  preference:\n    min_pairs: 50\n")
    proc = run_cli(
        "gate",
        "check",
        "--suite",
        "preference_pairs",
        str(pairs),
        "--thresholds",
        str(th),
        "--json",
        "--out-dir",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["tier"] == "HIGH" and report["rows"] == {"preference_pairs": 50}
    assert json.loads((tmp_path / "run" / "gate_preference_pairs.json").read_text())["tier"] == "HIGH"
    th.write_text("thresholds:\n  preference:\n    min_pair: 50\n")
    bad = run_cli("gate", "check", "--suite", "preference_pairs", str(pairs), "--thresholds", str(th))
    assert bad.returncode == 2 and "invalid thresholds file" in bad.stderr and "min_pair" in bad.stderr


def test_bad_inputs_say_where(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "p"}\n{oops\n')
    proc = run_cli("gate", "check", "--suite", "preference_pairs", str(f))
    assert proc.returncode == 2 and f"{f}:2: not a JSON object" in proc.stderr
    proc = run_cli("gate", "check", "--suite", "nope", str(f))
    assert proc.returncode == 2 and "unknown suite 'nope'" in proc.stderr


def test_data_docs_for_a_run(tmp_path):
    run = tmp_path / "run"
    for stage, gap in (("2-preference-data", 0.2), ("2b-low-gap", 0.05)):
        proc = run_cli(
            "gate",
            "check",
            "--suite",
            "preference_pairs",
            str(write_pairs(tmp_path / f"{stage}.jsonl", 1000, gap)),
            "--stage",
            stage,
            "--out-dir",
            str(run / stage),
        )
        assert proc.returncode in (0, 2)
    proc = run_cli("gates", "docs", str(run))
    assert proc.returncode == 0, proc.stderr
    index = run / "gate_docs" / "index.html"
    assert f"Data Docs: {index}" in proc.stdout
    pages = list((run / "gate_docs" / "validations").rglob("*.html"))
    assert len(pages) == 2
    html = "".join(p.read_text() for p in pages)
    assert "expect_column_mean_to_be_between" in html or "mean" in html.lower()
    assert "preference_pairs_suite" in index.read_text()
    # offline: nothing loads from the network, every page links the local stylesheet, the run's name is shown
    for page in [index, *pages]:
        text = page.read_text()
        assert not re.search(r"<(link|script|img)\b[^>]*(href|src)=[\"']https?://", text), page
        assert "static/realign/gate_docs.css" in text
    assert (run / "gate_docs" / "static" / "realign" / "gate_docs.css").stat().st_size > 1000
    assert "__none__" not in html and "2b-low-gap" in html  # GX's Run Name is the stage, not __none__
    assert "Gate reports of run run" in index.read_text() and 'class="realign-tier-REJECT"' in index.read_text()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # temporary build dirs removed
    empty = run_cli("gates", "docs", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and "no gate_<stage>.json files found" in empty.stderr
