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
        bar.update(step, training_line({"loss": 1.0 / step, "kl": 0.01}))


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
