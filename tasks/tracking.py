"""Optional: per-step training metrics to MLflow (off by default; `pip install -e '.[mlflow]'`).

On when REALIGN_MLFLOW_TRACKING_URI names a tracking store (`file:/path/mlruns`, or a server's http URL) in the
environment of the process that runs the stage (the worker's, for UI runs). Each training stage becomes one MLflow
run in the experiment REALIGN_MLFLOW_EXPERIMENT (default `realign`), named after the flow run and the stage, with
every numeric value of every step's metrics row. Nothing here changes what the run computes or writes.
"""

from __future__ import annotations

import math
import os
import time

ENV_URI, ENV_EXPERIMENT = "REALIGN_MLFLOW_TRACKING_URI", "REALIGN_MLFLOW_EXPERIMENT"


class MLflowSink:
    """One MLflow run for one stage's steps: `log` collects a step's numbers, `flush` sends them in one batch."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise RuntimeError(
                f"{ENV_URI} is set but MLflow is not installed: pip install -e '.[mlflow]' (or unset {ENV_URI})"
            ) from exc
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self.pending: list = []

    def log(self, step: int, row: dict) -> None:
        """Every finite number of `row` at `step` (NaN marks a metric not measured on that step: skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                if key != "step":
                    self.pending.append(Metric(key=key, value=float(value), timestamp=now, step=step))

    def flush(self) -> None:
        for start in range(0, len(self.pending), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self.pending[start : start + 1000])
        self.pending = []

    def finish(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id)


def mlflow_sink(stage: str, flow_run_name: str | None, flow_run_id: str | None) -> MLflowSink | None:
    """The sink for `stage` when the environment asks for one, else None."""
    uri = os.environ.get(ENV_URI)
    if not uri:
        return None
    name = f"{flow_run_name or 'realign'} {stage}"
    tags = {"realign.stage": stage, "realign.flow_run_id": flow_run_id or ""}
    return MLflowSink(uri, os.environ.get(ENV_EXPERIMENT, "realign"), name, tags)
