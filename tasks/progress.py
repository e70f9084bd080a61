"""Progress of long work inside a stage task: a Prefect progress artifact on the run's page (percent done, and a line
with step, loss, KL and ETA) updated every couple of seconds. The tasks keep their own log lines (every 10%).

    bar = Progress("5-dpo-optimization", "DPO step", total=cfg.steps)
    train(..., callback=lambda row: bar.update(row["step"], training_line(row), row))
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from tasks.tracking import MLflowSink, mlflow_sink


def eta_text(seconds: float) -> str:
    """'ETA 45 s', 'ETA 3 min 5 s', 'ETA 1 h 2 min' (nothing when it cannot be told yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return ""
    s = round(seconds)
    if s < 60:
        return f"ETA {s} s"
    if s < 3600:
        return f"ETA {s // 60} min {s % 60} s"
    return f"ETA {s // 3600} h {s % 3600 // 60} min"


def training_line(row: dict) -> str:
    """A training step's numbers for the progress line: loss, and KL / entropy on the steps that measured them."""
    parts = [f"loss {row['loss']:.4f}"]
    kl = row.get("kl", math.nan)
    if isinstance(kl, float) and not math.isnan(kl):
        parts.append(f"KL {kl:.4f}")
    if isinstance(row.get("entropy"), float) and not math.isnan(row["entropy"]):
        parts.append(f"entropy {row['entropy']:.3f}")
    return ", ".join(parts)


class Progress:
    """Counts `done` of `total` units of one piece of work (training steps, generated answers).

    Inside a Prefect task it keeps one progress artifact (key `progress-<stage>`) current: at most every
    `every_s` seconds, and always at the end; outside Prefect it does nothing. A training step's metrics row also
    goes to MLflow when the environment turns that on (tasks/tracking.py)."""

    def __init__(self, stage: str, what: str, total: int, every_s: float = 2.0) -> None:
        self.stage, self.what, self.total, self.every_s = stage, what, max(int(total), 1), every_s
        self.sink: MLflowSink | None = None
        self.t0 = self.last = time.monotonic()
        self.first: int | None = None
        self.artifact: Any = None
        if TaskRunContext.get() is not None:
            key = re.sub(r"[^a-z0-9-]+", "-", f"progress-{stage}".lower()).strip("-")
            self.artifact = create_progress_artifact(0.0, key=key, description=f"{what} 0/{self.total}: starting")

    def _track(self, call) -> None:
        """Run an MLflow call; if it fails, say so once and stop tracking: tracking never fails the training."""
        try:
            call()
        except Exception as exc:  # any tracking-store failure (unreachable server, refused store, ...)
            self.sink = None
            try:
                log = get_run_logger()
            except MissingContextError:
                log = logging.getLogger(__name__)
            log.warning(f"MLflow tracking off for {self.stage}: {exc}")

    def finish(self, done: int, why: str = "") -> None:
        """Work that ended before `total` (a KL limit, an early stop): the artifact says where and why, and the
        MLflow run is closed. Nothing to do when the last update already reached the total."""
        if self.first is None or done >= self.total:
            return
        if self.sink is not None:
            sink = self.sink
            self._track(sink.finish)
            self.sink = None
        if self.artifact is not None:
            line = f"{self.what} stopped at {done}/{self.total}" + (f": {why}" if why else "")
            update_progress_artifact(self.artifact, 100.0 * done / self.total, description=line)

    def eta(self, done: int) -> float:
        # From this run's own pace: a resumed run starts counting at its checkpoint's step.
        if self.first is None or done <= self.first:
            return math.nan
        rate = (done - self.first) / (time.monotonic() - self.t0)
        return (self.total - done) / rate if rate > 0 else math.nan

    def update(self, done: int, text: str = "", metrics: dict | None = None) -> None:
        if self.first is None:
            self.first, self.t0 = done - 1, time.monotonic()
            if metrics is not None:
                self._track(
                    lambda: setattr(self, "sink", mlflow_sink(self.stage, flow_run.get_name(), flow_run.get_id()))
                )
        end = done >= self.total
        now = time.monotonic()
        if self.sink is not None and metrics is not None:
            sink = self.sink
            # every step sent as it comes (a stage stopped early loses nothing); the run is closed at the last step
            self._track(lambda: (sink.log(done, metrics), sink.finish() if end else sink.flush()))
        if self.artifact is not None and (end or now - self.last >= self.every_s):
            self.last = now
            line = f"{self.what} {done}/{self.total}" + (f" · {text}" if text else "")
            eta = "" if end else eta_text(self.eta(done))
            update_progress_artifact(
                self.artifact,
                100.0 * min(done, self.total) / self.total,
                description=" · ".join(filter(None, [line, eta])),
            )
