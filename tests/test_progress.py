"""Progress artifacts of long work in a task: percent done, the step's numbers and an ETA on the run's page."""

from __future__ import annotations

import math

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

from tasks.progress import Progress, eta_text, training_line


def test_eta_and_the_training_line_read_like_a_person_would_write_them():
    assert eta_text(45.4) == "ETA 45 s" and eta_text(185) == "ETA 3 min 5 s" and eta_text(3725) == "ETA 1 h 2 min"
    assert eta_text(math.nan) == "" and eta_text(-1) == ""
    assert training_line({"loss": 0.51234, "kl": math.nan, "entropy": math.nan}) == "loss 0.5123"
    assert training_line({"loss": 0.5, "kl": 0.012345, "entropy": 1.23456}) == "loss 0.5000, KL 0.0123, entropy 1.235"


def test_outside_a_task_it_does_nothing():
    bar = Progress("5-dpo-optimization", "DPO step", 10)
    bar.update(1, "loss 1")
    assert bar.artifact is None


@task
def work(total: int) -> None:
    bar = Progress("5-dpo-optimization", "DPO step", total, every_s=0.0)
    for step in range(1, total + 1):
        row = {"loss": 1.0 / step, "kl": 0.01}
        bar.update(step, training_line(row), row)


@flow
def long_work(total: int) -> None:
    work(total)


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_artifact_ends_at_100_percent_with_the_last_step(harness):
    long_work(4)
    with get_client(sync_client=True) as c:
        (art,) = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-5-dpo-optimization"]))
        )
    assert art.type == "progress" and float(art.data) == 100.0
    assert art.description == "DPO step 4/4 · loss 0.2500, KL 0.0100"


def test_training_steps_go_to_mlflow_when_asked(harness, tmp_path, monkeypatch):
    """Off by default; with REALIGN_MLFLOW_TRACKING_URI (here MLflow's local file store) every step's numbers."""
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("REALIGN_MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("REALIGN_MLFLOW_EXPERIMENT", "realign-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this opt-in

    @task
    def train_like(total: int) -> None:
        bar = Progress("5-dpo-optimization", "DPO step", total, every_s=0.0)
        for step in range(1, total + 1):
            row = {"step": step, "loss": 1.0 / step, "kl": math.nan if step % 2 else 0.01 * step, "stopped": False}
            bar.update(step, training_line(row), row)

    @flow
    def tracked() -> None:
        train_like(4)

    tracked()
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("realign-test").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["realign.stage"] == "5-dpo-optimization"
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert loss == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    kl = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "kl"))
    assert kl == [(2, 0.02), (4, 0.04)]  # measured steps only; NaN (not measured) is not sent as a number
    assert "stopped" not in run.data.metrics and "step" not in run.data.metrics


def test_work_that_stops_early_says_where_and_why(harness, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("REALIGN_MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    @task
    def stops_on_kl() -> None:
        bar = Progress("5-rl-fine-tuning", "RL step", 10, every_s=0.0)
        for step in (1, 2):
            bar.update(step, "loss 1", {"loss": 1.0})
        bar.finish(2, "KL 0.5 > limit 0.1 at step 2")

    @flow
    def early() -> None:
        stops_on_kl()

    early()
    with get_client(sync_client=True) as c:
        (art,) = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-5-rl-fine-tuning"]))
        )
    assert float(art.data) == 20.0 and art.description == "RL step stopped at 2/10: KL 0.5 > limit 0.1 at step 2"
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("realign").experiment_id])
    assert run.info.status == "FINISHED"


def test_mlflow_stays_off_without_the_environment(monkeypatch):
    from tasks.tracking import mlflow_sink

    monkeypatch.delenv("REALIGN_MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_sink("1-sft-preparation", "run", "id") is None


def test_a_tracking_store_that_fails_never_fails_the_training(harness, tmp_path, monkeypatch):
    monkeypatch.setenv("REALIGN_MLFLOW_TRACKING_URI", f"file:{tmp_path / 'refused'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses its file store without it
    state = long_work(3, return_state=True)
    assert state.is_completed()
