"""The user's daily loop in a real browser: the Prefect UI of `realign server`'s stack.

Debian chromium through the playwright pip package (installed by `make test` as root; never `playwright install`).
Screenshots of every step go to test-output/browser/<test>/.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO
from realign.cli.server import LocalPrefect
from ui_helpers import browser, run_parameters, write_prompts, write_user_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]
if shutil.which("chromium") is None:
    # `make test` installs it when run as root with apt; otherwise say so, never skip silently.
    pytest.skip(
        "chromium not found: sudo apt-get install -y chromium (Debian's, driven by playwright)", allow_module_level=True
    )
SHOTS = REPO / "test-output" / "browser"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server on 127.0.0.1, pools, every deployment in prefect.yaml, a worker for the `realign` pool."""
    home = tmp_path_factory.mktemp("prefect")
    with LocalPrefect(home, REPO, poll_s=1, timezone="Europe/Berlin") as s:
        s.start_server()
        s.create_pools()
        s.deploy()
        s.start_worker("realign")
        yield s


@pytest.fixture
def client(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        with get_client(sync_client=True) as c:
            yield c


class Shots:
    def __init__(self, page, name: str):
        self.page, self.dir, self.n = page, SHOTS / name, 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):
            old.unlink()

    def __call__(self, step: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def start(client, params: dict):
    dep = client.read_deployment_by_name("dpo/dpo-demo")
    return client.create_flow_run_from_deployment(dep.id, parameters=params)


def wait_for(client, run_id, states: set[str], timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state and run.state.name in states:
            return run
        if run.state and run.state.is_final():
            raise AssertionError(f"run ended {run.state.name}, expected {states}: {run.state.message}")
        time.sleep(2)
    raise AssertionError(f"run not {states} after {timeout}s (last: {run.state.name if run.state else None})")


def task_states(client, run_id) -> list[tuple[str, str, int]]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return [(re.sub(r"-[0-9a-f]{3}$", "", r.name), r.state.name, r.flow_run_run_count) for r in runs]


def artifacts(client, key: str, run_id) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
        )
    )


def open_run(page, stack, run_id, expect: str):
    """Open the run's page and wait until its state badge shows `expect`."""
    page.goto(f"{stack.ui_url}/runs/flow-run/{run_id}")
    page.get_by_text(expect, exact=True).first.wait_for(timeout=30_000)


def test_deployments_and_nightly_schedule_are_listed(stack, client, tmp_path):
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "deployments")
        page.goto(f"{stack.ui_url}/deployments")
        for name in ("dpo-demo", "nightly-curation", "shard-m4-max", "shard-m3-ultra"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        assert page.get_by_text("At 02:00 AM every day").count() == 1
        shot("deployments")
        page.get_by_text("nightly-curation", exact=True).first.click()
        page.get_by_text("Upcoming", exact=True).first.click()
        # the scheduler has put the next nightly runs on the calendar
        page.get_by_text("Scheduled", exact=True).first.wait_for(timeout=60_000)
        shot("nightly-upcoming")
    dep = client.read_deployment_by_name("curate/nightly-curation")
    assert dep.schedules[0].schedule.cron == "0 2 * * *" and dep.schedules[0].schedule.timezone == "Europe/Berlin"
    assert dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $REALIGN_HOME }}"


def test_rejected_gate_fixed_in_the_data_and_retried_from_the_ui(stack, client, tmp_path):
    data_dir = tmp_path / "data"
    # The preference prompts arrive with the placeholder answer 'TBD': stage 2's gate must REJECT (no pairs).
    params = run_parameters(write_user_data(data_dir, answers_filled=False), tmp_path / "runs")
    run = start(client, params)
    wait_for(client, run.id, {"Failed"})
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "retry")
        open_run(page, stack, run.id, "Failed")
        shot("failed")
        page.get_by_text("Artifacts", exact=True).first.click()
        card = page.get_by_text(re.compile(r"Gate 2-preference-data: REJECT: pairs = 0 \(needs >= 20\)")).first
        card.wait_for(timeout=30_000)
        shot("gate-report-artifact")
        page.get_by_text("gate-2-preference-data-summary", exact=True).first.click()
        page.get_by_text(re.compile(r"Insufficient data")).first.wait_for(timeout=30_000)
        shot("gate-report-opened")

        # The fix: real answers in the file stage 2 reads. Parameters stay as they were; Retry in the UI.
        write_prompts(data_dir, answers_filled=True)
        open_run(page, stack, run.id, "Failed")
        page.get_by_role("button", name="Retry").click()
        dialog = page.get_by_role("dialog")
        shot("retry-dialog")
        dialog.get_by_role("button", name="Retry").click()
        wait_for(client, run.id, {"Completed"})
        open_run(page, stack, run.id, "Completed")
        page.get_by_text("Task Runs", exact=True).first.click()
        page.get_by_text("Cached", exact=True).first.wait_for(timeout=30_000)
        shot("completed-after-retry")

    second = [(name, state) for name, state, count in task_states(client, run.id) if count == 2]
    states = dict(second)
    # Before the failed stage: reused from storage. The failed stage and everything after: executed again.
    assert states["1-sft-preparation"] == "Cached"
    assert states["2-preference-data"] == "Completed"
    for stage in (
        "3-model-initialization",
        "4-preference-modeling",
        "5-dpo-optimization",
        "6-iterative-training",
        "7-evaluation",
        "gate-2-preference-data",
        "gate-7-evaluation",
    ):
        assert states[stage] == "Completed", (stage, second)
    summaries = artifacts(client, "run-summary", run.id)
    assert summaries and "dpo run" in summaries[0].data


def test_medium_gate_pauses_and_is_approved_in_the_resume_form(stack, client, tmp_path):
    params = run_parameters(write_user_data(tmp_path / "data"), tmp_path / "runs", approve_medium=True)
    # agreement can never reach HIGH (2.0) and always clears MEDIUM (0.0): stage 2's gate is MEDIUM.
    params["config"]["thresholds"]["tiers"]["agreement_rate"] = {"direction": "higher", "high": 2.0, "medium": 0.0}
    run = start(client, params)
    wait_for(client, run.id, {"Paused"})
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "approve-medium")
        open_run(page, stack, run.id, "Paused")
        shot("paused")
        page.get_by_role("button", name="Resume").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Reviewer").first.wait_for(timeout=30_000)
        dialog.get_by_role("switch").click()
        dialog.locator("textarea").nth(0).fill("ci-reviewer")
        dialog.locator("textarea").nth(1).fill("agreement is fine for this task")
        shot("resume-form")
        dialog.get_by_role("button", name="Submit").click()
        wait_for(client, run.id, {"Completed"})
        open_run(page, stack, run.id, "Completed")
        shot("completed")
    approval = artifacts(client, "gate-2-preference-data-approval", run.id)
    assert approval and "approved by ci-reviewer: agreement is fine for this task" in approval[0].data
