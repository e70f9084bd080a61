"""The user's daily loop in a real browser: the Prefect UI of `realign server`'s stack.

Debian chromium through the playwright pip package (installed by `make test` as root; never `playwright install`).
Screenshots of every step go to test-output/browser/<test>/.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from contextlib import contextmanager
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
    # a task run just created may have no state yet (a CI run read one): None until it has
    return [
        (re.sub(r"-[0-9a-f]{3}$", "", r.name), r.state.name if r.state else None, r.flow_run_run_count) for r in runs
    ]


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
        # the card names the failing metric first, in full
        card = page.get_by_text(re.compile(r"^REJECT: pairs = 0 \(needs >= 20\)")).first
        card.wait_for(timeout=30_000)
        shot("gate-report-artifacts")
        page.get_by_text("gate-2-preference-data", exact=True).first.click()
        table = page.locator("table").first
        table.wait_for(timeout=30_000)
        headers = [h.strip().lower() for h in table.locator("th").all_inner_texts()]
        assert headers[:5] == ["metric", "value", "threshold", "tier", "remedy"], headers
        row = table.locator("tr", has=page.get_by_text("pairs", exact=True)).first
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert cells[:4] == ["pairs", "0", ">= 20", "REJECT"], cells  # ">= 20" as text, not a block quote
        assert cells[4].startswith("Insufficient data"), cells
        assert table.locator("blockquote").count() == 0
        shot("gate-report-table")
        page.go_back()
        page.get_by_text("Artifacts", exact=True).first.click()
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
        # the run's summary sits on the flow run, its plots drawn on the page
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("Flow run", exact=True).first.wait_for(timeout=30_000)  # the summary is the flow run's own
        shot("run-artifacts")
        (summary,) = artifacts(client, "run-summary", run.id)
        assert summary.task_run_id is None
        page.goto(f"{stack.ui_url}/artifacts/artifact/{summary.id}")
        page.locator("img[alt='training_curves']").first.wait_for(timeout=30_000)
        widths = page.evaluate(
            "Array.from(document.images).filter(i => i.src.startsWith('data:image/png')).map(i => i.naturalWidth)"
        )
        assert len(widths) >= 2 and min(widths) > 100, widths
        page.get_by_text("gate report", exact=True).first.wait_for(timeout=30_000)
        shot("run-summary-plots")

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

        def fill(dialog):
            dialog.get_by_role("switch").click()
            dialog.locator("textarea").nth(0).fill("ci-reviewer")
            dialog.locator("textarea").nth(1).fill("agreement is fine for this task")
            shot("resume-form")

        resume_in_form(page, stack, client, run.id, fill)
        wait_for(client, run.id, {"Completed"})
        open_run(page, stack, run.id, "Completed")
        shot("completed")
    approval = artifacts(client, "gate-2-preference-data-approval", run.id)
    assert approval and "approved by ci-reviewer: agreement is fine for this task" in approval[0].data


DEMOS = {"dpo-demo": "dpo", "srf-demo": "srf", "rlvr-demo": "rlvr", "antihallucination-demo": "antihallucination"}


def open_form(page, stack, client, deployment: str):
    """The deployment's Run -> Custom run form, loaded."""
    dep = client.read_deployment_by_name(f"{DEMOS[deployment]}/{deployment}")
    page.goto(f"{stack.ui_url}/deployments/deployment/{dep.id}/run")
    page.get_by_text("Parameters", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("Stage 1 · SFT preparation (Optional)").first.wait_for(timeout=30_000)
    return dep


def runs_of(client, deployment_id) -> set:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    flt = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    return {r.id for r in client.read_flow_runs(deployment_filter=flt, limit=200)}


@contextmanager
def ui_messages(page):
    """What the UI says while the block runs, as a list of lines. It says why a press did nothing only in a toast that
    fades in seconds or in the browser console: failed API calls with their bodies and console errors are kept here;
    read_shown adds the toasts (and the form's field errors) on screen when it is called."""
    said: list[str] = []

    def on_response(response):
        if "/api/" in response.url and response.status >= 400:
            try:
                body = response.text()[:400]
            except Exception as e:  # noqa: BLE001 - the body may be gone; the status still says something
                body = f"(body unreadable: {e})"
            said.append(f"{response.request.method} {response.url.split('/api', 1)[1]} -> {response.status} {body}")

    def on_console(message):
        if message.type == "error":
            said.append(f"console: {message.text[:400]}")

    page.on("response", on_response)
    page.on("console", on_console)
    try:
        yield said
    finally:
        page.remove_listener("response", on_response)
        page.remove_listener("console", on_console)


def read_shown(page, said: list[str], *, field_errors: bool = False) -> None:
    for text in page.locator(".p-toast__message, .p-message").all_inner_texts():
        if f"shown: {text}" not in said:
            said.append(f"shown: {text}")
    if field_errors:
        said.extend(f"field error: {t}" for t in page.locator(".p-label__message--failed").all_inner_texts())


def submit_form(page, client, deployment_id, reopen=None):
    """Press the form's Submit (the UI then shows the deployment's runs): the id of the run it created.
    reopen: loads the form again as the test had it (used once if pressing Submit on the first load did nothing)."""
    before = runs_of(client, deployment_id)

    def press(waits, said) -> str | None:
        button = page.locator("button[type=submit]").last
        button.wait_for(state="visible", timeout=30_000)
        try:  # the form may still be fetching (schema, variables): wait until the network is quiet (at once if it is)
            page.wait_for_load_state("networkidle", timeout=15_000)
        except Exception:  # noqa: BLE001 - a page that keeps polling is never idle; press anyway
            pass
        for wait in waits:
            deadline = time.monotonic() + wait
            pressed = False
            while time.monotonic() < deadline:
                new = runs_of(client, deployment_id) - before  # a run from an earlier press may arrive late
                if new:
                    assert len(new) == 1, f"the presses created {len(new)} runs"
                    return next(iter(new))
                if not pressed:
                    button.click()
                    pressed = True
                read_shown(page, said)
                time.sleep(0.5)
        read_shown(page, said, field_errors=True)
        return None

    with ui_messages(page) as said:
        # On a loaded machine a press can come to nothing (CI runs created no run in 30 s and in 60 s; the same
        # commits passed alone, and under two busy cores): press again, then once more on a freshly loaded form,
        # and say what the UI said either way.
        run_id = press((20, 40), said)
        if run_id is None and reopen is not None:
            reopen()
            run_id = press((60,), said)
            if run_id is not None:
                warnings.warn(f"the form's submit created a run only after reloading the form; the UI said: {said}")
    if run_id is None:
        raise AssertionError(f"submitting the form created no run (page {page.url}; the UI said: {said or 'nothing'})")
    return run_id


def resume_in_form(page, stack, client, run_id, fill) -> None:
    """Open the paused run's Resume dialog, fill(dialog) it and press Submit; return once the run has left Paused.
    If it has not within 90 s, load the page again and fill and submit the dialog once more (with a warning); if the
    run is still Paused after that, an AssertionError says what the UI said."""

    def paused() -> bool:
        state = client.read_flow_run(run_id).state
        return state is not None and state.name == "Paused"

    with ui_messages(page) as said:
        # A CI run stayed Paused 420 s after one Submit (the same test passes alone): the press may come to nothing
        # on a loaded machine, as the run form's does.
        for attempt in range(2):
            if attempt:
                try:  # a fresh page: no half-open dialog from the first try
                    open_run(page, stack, run_id, "Paused")
                except Exception:  # noqa: BLE001 - the first submit may have landed since: then it is not Paused
                    if not paused():
                        return
                    raise
            page.get_by_role("button", name="Resume").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Reviewer").first.wait_for(timeout=30_000)
            fill(dialog)
            dialog.get_by_role("button", name="Submit").click()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if not paused():
                    if attempt:
                        warnings.warn(f"the run resumed only after the dialog was submitted again; the UI said: {said}")
                    return
                read_shown(page, said)
                time.sleep(1)
            read_shown(page, said, field_errors=True)
    raise AssertionError(f"the Resume dialog, submitted twice, left the run Paused (the UI said: {said or 'nothing'})")


def wait_for_task(client, run_id, name: str, timeout: float = 600):
    """Until the run's task `name` has Completed (AssertionError naming what happened otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {n: s for n, s, _ in task_states(client, run_id)}
        if states.get(name) == "Completed":
            return
        run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            raise AssertionError(f"run ended {run.state.name} before {name} completed: {run.state.message}")
        time.sleep(2)
    raise AssertionError(f"{name} not completed after {timeout}s: {task_states(client, run_id)}")


def cancel(client, run_id):
    """Stop a run the test has seen enough of (the worker kills its process), and wait until it has."""
    from prefect.states import Cancelling

    client.set_flow_run_state(run_id, Cancelling(), force=True)
    wait_for(client, run_id, {"Cancelled"}, timeout=120)


@pytest.mark.timeout(1500)  # four demos' stage 1, one after the other (about 2.5 minutes each on 2 cores)
def test_each_demo_form_submitted_unchanged_runs_the_recipe_and_passes_gate_1(stack, client, tmp_path):
    """The Custom run form of every demo, submitted as it opens: the run gets the deployment's recipe (not each
    class's own defaults) and passes gate 1; while stage 1 trains, its progress is on the run's page."""
    from realign.recipes.antihallucination import AntiHallucinationWorkflowConfig
    from realign.recipes.dpo import DPOWorkflowConfig
    from realign.recipes.rlvr import RLVRWorkflowConfig
    from realign.recipes.srf import SRFWorkflowConfig

    recipes = {
        "dpo-demo": DPOWorkflowConfig,
        "srf-demo": SRFWorkflowConfig,
        "rlvr-demo": RLVRWorkflowConfig,
        "antihallucination-demo": AntiHallucinationWorkflowConfig,
    }
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "demo-forms")
        for deployment, cls in recipes.items():
            dep = open_form(page, stack, client, deployment)
            shot(f"{deployment}-form")
            run_id = submit_form(page, client, dep.id, reopen=lambda: open_form(page, stack, client, deployment))
            run = client.read_flow_run(run_id)
            run_dir = REPO / "runs" / run.name  # runs_root is the demo's own: the worker's checkout
            try:
                submitted = cls.model_validate(run.parameters["config"])
                assert submitted == cls.model_validate(dep.parameters["config"]), deployment
                if deployment == "dpo-demo":
                    # progress during training: the stage-1 progress artifact, updated while SFT runs
                    open_run(page, stack, run_id, "Running")
                    page.get_by_text("Artifacts", exact=True).first.click()
                    page.get_by_text("progress-1-sft-preparation", exact=True).first.click(timeout=180_000)
                    page.get_by_text(re.compile(r"SFT step \d+/300")).first.wait_for(timeout=60_000)
                    page.get_by_text(re.compile(r"Progress: \d+%")).first.wait_for(timeout=30_000)
                    shot("training-progress")
                wait_for_task(client, run_id, "gate-1-sft-preparation")
                open_run(page, stack, run_id, "Running")
                page.get_by_text("Task Runs", exact=True).first.click()
                page.get_by_text("gate-1-sft-preparation", exact=True).first.wait_for(timeout=30_000)
                shot(f"{deployment}-gate-1-passed")
                saved = json.loads((run_dir / "recipe.json").read_text())
                assert saved == submitted.model_dump(mode="json")
            finally:
                cancel(client, run_id)
                shutil.rmtree(run_dir, ignore_errors=True)


def test_a_field_changed_in_the_form_is_in_the_runs_saved_recipe(stack, client, tmp_path):
    runs_root = tmp_path / "my-runs"
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "changed-form")

        def fill_form():
            dep = open_form(page, stack, client, "dpo-demo")
            # the input of the form property whose label is "Runs Root"
            field = page.locator(
                "xpath=//span[contains(@class, 'schema-form-property__label') and "
                "normalize-space()='Runs Root (Optional)']"
                "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]//textarea"
            )
            field.fill(str(runs_root))
            return dep

        dep = fill_form()
        shot("runs-root-changed")
        run_id = submit_form(page, client, dep.id, reopen=fill_form)
    try:
        run = client.read_flow_run(run_id)
        assert run.parameters["config"]["runs_root"] == str(runs_root)
        recipe = runs_root / run.name / "recipe.json"
        deadline = time.monotonic() + 180
        while not recipe.is_file() and time.monotonic() < deadline:
            time.sleep(1)
        saved = json.loads(recipe.read_text())
        assert saved["runs_root"] == str(runs_root) and saved["sft"]["train"]["steps"] == 300
    finally:
        cancel(client, run_id)


def test_a_cli_run_reports_to_the_server_in_prefect_api_url(stack, client, tmp_path):
    """`make demo` / `realign run` with PREFECT_API_URL set: the run, its gate's REJECT (one message, no
    traceback) and its artifacts are in that server's UI."""
    import os
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "fail.yaml"  # quick: no SFT, a perplexity bound nothing meets, so gate 1 REJECTs
    recipe.write_text(
        yaml.safe_dump(
            {
                "sft": {"enabled": False},
                "data": {"n_eval": 10, "n_dev": 10, "n_prompts": 10, "n_prompts_benchmark": 0},
                "thresholds": {"sft": {"max_perplexity": 1.0001}},
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": stack.api_url}
    cmd = [sys.executable, "-m", "realign.cli", "run", "dpo", "--config", str(recipe), "--run-name", "from-cli"]
    proc = subprocess.run(
        [*cmd, "--runs-root", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"reporting to the Prefect server at {stack.api_url}" in proc.stdout
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    (run,) = [
        r for r in client.read_flow_runs(limit=200) if r.parameters.get("config", {}).get("run_name") == "from-cli"
    ]
    assert run.state.name == "Failed" and run.state.message.startswith("Gate 1-sft-preparation: REJECT")
    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert not [log.message for log in logs if "Traceback" in log.message]
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "cli-run")
        open_run(page, stack, run.id, "Failed")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text(re.compile(r"^REJECT: perplexity = [\d.]+ \(needs < 1\.0001\)")).first.wait_for(timeout=30_000)
        shot("rejected-at-gate-1")


def test_data_docs_render_styled_with_the_network_off(tmp_path):
    """`realign gates docs`: opened from disk with every network request refused, the pages are styled by the local
    stylesheet and the index lists every gate with its tier."""
    from test_gate_cli import write_pairs

    from gates.cli import check_file
    from realign.thresholds import ThresholdsConfig

    run = tmp_path / "run"
    for stage, gap in (("2-preference-data", 0.2), ("2b-low-gap", 0.05)):
        report = check_file(
            "preference_pairs", write_pairs(tmp_path / f"{stage}.jsonl", 1000, gap), ThresholdsConfig(), stage
        )
        report.write_json(run / stage / f"gate_{stage}.json")
    from gates.docs import build_data_docs

    index = build_data_docs(run)
    with browser(tmp_path / "chromium") as page:
        shot = Shots(page, "data-docs")
        refused = []

        def offline(route):
            if route.request.url.startswith("file:"):
                return route.continue_()
            refused.append(route.request.url)
            return route.abort()

        page.route("**/*", offline)
        page.goto(index.as_uri())
        page.locator("#realign-gates tbody tr").nth(1).wait_for(timeout=30_000)
        sheets = page.evaluate("Array.from(document.styleSheets).map(s => s.href)")
        assert any(h and h.startswith("file:") and h.endswith("static/realign/gate_docs.css") for h in sheets), sheets
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(245, 247, 250)"
        assert page.get_by_text("REJECT", exact=True).count() == 1 and page.get_by_text("HIGH", exact=True).count() == 1
        shot("index")
        page.get_by_role("link", name="preference_pairs_suite").first.click()
        page.get_by_text("Run Name").first.wait_for(timeout=30_000)
        assert page.evaluate("getComputedStyle(document.querySelector('.card')).borderTopLeftRadius") == "6px"
        assert page.get_by_text("__none__").count() == 0
        shot("validation-page")
    assert refused == []  # nothing even tried the network
