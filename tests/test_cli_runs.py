"""`realign runs` lists runs with tier and key metrics; `realign runs compare A B` puts two runs side by side."""

from __future__ import annotations

import json
import os

from conftest import run_cli


def summary(tier: str, after: float, wall: float) -> dict:
    return {
        "workflow": "dpo",
        "tier": tier,
        "results": {"before/reverse_accuracy": 0.5, "after/reverse_accuracy": after, "target_after": after, "kl": 0.02},
        "gate_tiers": {"1-sft-preparation": "HIGH", "7-evaluation": tier},
        "wall_time_s": wall,
    }


def make_runs(root):
    for name, s in (("old", summary("HIGH", 0.61, 200.0)), ("new", summary("MEDIUM", 0.7, 150.5))):
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps(s))
    (root / "broken").mkdir()  # stopped before stage 7: no summary
    os.utime(root / "old", (1, 1))


def test_runs_are_listed_newest_first_with_tier_and_metrics(tmp_path):
    make_runs(tmp_path)
    proc = run_cli("runs", "--root", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["run"] for r in rows][-1] == "old"
    by = {r["run"]: r for r in rows}
    assert by["new"]["tier"] == "MEDIUM" and by["new"]["target_after"] == 0.7 and by["new"]["wall_time_s"] == 150.5
    assert by["broken"]["tier"] == "stopped early"
    shown = run_cli("runs", "--root", str(tmp_path))
    assert "MEDIUM" in shown.stdout and "stopped" in shown.stdout


def test_compare_prints_both_runs_side_by_side(tmp_path):
    make_runs(tmp_path)
    proc = run_cli("runs", "compare", "old", "new", "--root", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["runs"] == ["old", "new"]
    rows = {r["metric"]: (r["old"], r["new"]) for r in data["rows"]}
    assert rows["after/reverse_accuracy"] == (0.61, 0.7) and rows["gate 7-evaluation"] == ("HIGH", "MEDIUM")
    assert rows["wall_time_s"] == (200.0, 150.5)
    table = run_cli("runs", "compare", str(tmp_path / "old"), "new", "--root", str(tmp_path))
    assert "old" in table.stdout and "new" in table.stdout and "0.61" in table.stdout and "0.7" in table.stdout
    missing = run_cli("runs", "compare", "old", "broken", "--root", str(tmp_path))
    assert missing.returncode != 0 and "has no summary.json" in missing.stderr + missing.stdout
    nowhere = run_cli("runs", "--root", str(tmp_path / "nope"))
    assert nowhere.returncode != 0 and "no such directory" in nowhere.stderr + nowhere.stdout
