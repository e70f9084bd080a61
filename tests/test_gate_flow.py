"""Gates inside Prefect flows: REJECT fails the run, MEDIUM pauses for approval, reports are artifacts."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
from prefect.flow_runs import resume_flow_run
from prefect.testing.utilities import prefect_test_harness

from gates.gate import GateFailed, artifact_key, gate, stops_at_gates
from gates.suites.dpo import preference_pairs_suite
from realign.thresholds import ThresholdsConfig


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def pairs(n: int, chosen: float, rejected: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [f"q{i}" for i in range(n)],
            "chosen": ["good"] * n,
            "rejected": ["bad"] * n,
            "chosen_score": [chosen] * n,
            "rejected_score": [rejected] * n,
        }
    )


SMALL = ThresholdsConfig.model_validate({"preference": {"min_pairs": 10}})


@flow(name="gate-probe")
@stops_at_gates
def gate_probe(chosen: float, rejected: float, approve_medium: bool, out_dir: str, stage: str) -> str:
    report = gate(
        stage,
        {preference_pairs_suite: pairs(20, chosen, rejected)},
        SMALL,
        out_dir=out_dir,
        approve_medium=approve_medium,
        approval_poll_s=1,
    )
    return f"{report.tier}|{report.approval}"


def _read_flow_run(run_id):
    with get_client(sync_client=True) as c:
        return c.read_flow_run(run_id)


def test_reject_fails_the_run_with_the_gate_message(tmp_path):
    state = gate_probe(
        chosen=0.6,
        rejected=0.55,
        approve_medium=False,
        out_dir=str(tmp_path),
        stage="2-preference-data",
        return_state=True,
    )
    assert state.is_failed()
    assert state.message.startswith("Gate 2-preference-data: REJECT\n- [REJECT] preference_gap")  # the UI shows it
    with pytest.raises(GateFailed) as info:
        state.result()
    msg = str(info.value)
    assert "Gate 2-preference-data: REJECT" in msg
    assert "preference_gap (mean) = 0.05 (threshold: >= 0.15 HIGH, >= 0.1 MEDIUM)" in msg
    assert "Remedy: Weak preference signal" in msg
    assert info.value.report.tier == "REJECT" and info.value.report.stage == "2-preference-data"
    saved = json.loads((tmp_path / "gate_2-preference-data.json").read_text())
    assert saved["tier"] == "REJECT"
    # An expected REJECT is one message, not traceback noise: no log line of the run carries a traceback.
    logs = _run_logs(state.state_details.flow_run_id, until="Finished in state Failed")
    assert logs and not [log.message for log in logs if "Traceback" in log.message]
    assert any("Gate 2-preference-data: REJECT" in log.message for log in logs)


def _run_logs(run_id, until: str, timeout: float = 30.0) -> list:
    """The run's log lines, once the one containing `until` has arrived (logs are shipped in batches)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as c:
        while True:
            logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            if any(until in log.message for log in logs) or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)


def test_high_gate_continues_without_pausing(tmp_path):
    assert (
        gate_probe(chosen=0.9, rejected=0.5, approve_medium=True, out_dir=str(tmp_path), stage="2-high") == "HIGH|None"
    )


def test_medium_gate_without_approval_warns_and_continues(tmp_path):
    assert (
        gate_probe(chosen=0.62, rejected=0.5, approve_medium=False, out_dir=str(tmp_path), stage="2-medium")
        == "MEDIUM|None"
    )


def _run_in_thread(stage: str, tmp_path):
    box: dict = {}

    def target():
        box["state"] = gate_probe(
            chosen=0.62, rejected=0.5, approve_medium=True, out_dir=str(tmp_path), stage=stage, return_state=True
        )

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _wait_for_paused(stage: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as c:
        while time.monotonic() < deadline:
            for run in c.read_flow_runs(limit=50):
                if run.parameters.get("stage") == stage and run.state and run.state.is_paused():
                    return run.id
            time.sleep(0.5)
    raise AssertionError(f"no paused run for {stage} within {timeout}s")


@pytest.mark.parametrize("approve", [True, False])
def test_medium_gate_pauses_until_a_reviewer_answers(tmp_path, approve):
    stage = f"2-approval-{approve}".lower()
    t, box = _run_in_thread(stage, tmp_path)
    run_id = _wait_for_paused(stage)
    assert t.is_alive()  # blocked on the pause, not finished
    resume_flow_run(run_id, run_input={"approve": approve, "reviewer": "alice", "comment": "gap is borderline"})
    t.join(timeout=60)
    state = box["state"]
    if approve:
        assert state.is_completed()
        assert state.result() == "MEDIUM|MEDIUM gate approved by alice: gap is borderline"
        assert json.loads((tmp_path / f"gate_{stage}.json").read_text())["approval"].startswith("MEDIUM gate approved")
    else:
        assert state.is_failed()
        with pytest.raises(GateFailed, match="MEDIUM gate rejected by alice: gap is borderline"):
            state.result()


def test_table_artifact_reads_back_through_the_client(tmp_path):
    stage = f"2-artifact-{uuid.uuid4().hex[:6]}"
    gate_probe(chosen=0.9, rejected=0.5, approve_medium=False, out_dir=str(tmp_path), stage=stage)
    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(stage)])))
        assert len(arts) == 1 and arts[0].type == "table"
        rows = json.loads(arts[0].data) if isinstance(arts[0].data, str) else arts[0].data
        # Reading order, cells escaped for the UI's markdown (">=" would start a block quote, "_" emphasis).
        assert list(rows[0])[:5] == ["metric", "value", "threshold", "tier", "remedy"]
        by_metric = {r["metric"]: r for r in rows}
        assert by_metric["preference\\_gap (mean)"]["value"] == "0.4"
        assert by_metric["preference\\_gap (mean)"]["threshold"] == "\\>= 0.15 HIGH, \\>= 0.1 MEDIUM"
        assert by_metric["preference\\_gap (mean)"]["tier"] == "HIGH"
        assert by_metric["pairs"]["value"] == "20"
        summary = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(stage, "-summary")]))
        )
        assert summary[0].type == "markdown" and f"Gate {stage}: **HIGH**" in summary[0].data
