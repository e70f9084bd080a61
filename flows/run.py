"""The Run helper every workflow's flow uses: where the run lives, its gates and tiers, what it cost, its summary.

A flow calls `run.gate(result, *suites)` after each stage and `run.finish(evaluation, ...)` at the end; the
stage results say their stage name, output directory, compute time, the tables their gates check and what
they add to the summary, so the flow itself only lists the stages in order.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from gates.gate import GateFailed, gate
from gates.validate import suite_name
from hardware.profiles import apply_blas_threads
from realign.io import write_json
from realign.provenance import provenance
from realign.recipes.common import RUN_NAME_PATTERN
from realign.thresholds import TIER_ORDER, ThresholdsConfig, WorkflowThresholds
from tasks.shared.evaluation import EvaluationResult
from tasks.shared.summary import machine_description, write_summary
from tasks.stages import StageResult

R = TypeVar("R", bound=StageResult)


def _as_name(flow_run_name: str | None) -> str | None:
    """A flow run's name as a directory name: 'my run #2' -> 'my-run-2' (names typed in the UI may hold anything)."""
    if not flow_run_name:
        return None
    return re.sub(r"[^A-Za-z0-9._-]+", "-", flow_run_name).strip(".-")[:128] or None


class RunBusy(RuntimeError):
    """Another process is running in this run directory; the message says which."""


class Run:
    """One workflow run: RUNS_ROOT/RUN_NAME, its thresholds and approval setting, the tier of every gate so far,
    every stage's compute time, and the totals its stages add to the summary."""

    def __init__(
        self,
        workflow: str,
        data_type: str,
        run_name: str | None,
        runs_root: str,
        thresholds: ThresholdsConfig | WorkflowThresholds,
        approve_medium: bool,
        price_per_hour: float | None,
        recipe: BaseModel | None = None,
    ) -> None:
        # A retried flow run keeps its name, so it finds its earlier stage outputs.
        name = run_name or _as_name(flow_run.get_name()) or time.strftime(f"{workflow}-%Y%m%d-%H%M%S")
        if not re.fullmatch(RUN_NAME_PATTERN, name):
            raise ValueError(f"run name {name!r} is not a name (letters, digits, . _ -, no path): choose another")
        self.dir = str((Path(runs_root) / name).resolve())
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire(Path(self.dir) / ".run.lock")
        if flow_run.get_id():
            get_run_logger().info(f"run directory: {self.dir}")
        self.workflow, self.data_type = workflow, data_type
        # A recipe holds its workflow's thresholds only; the gates read the full table (defaults for the rest).
        self.thresholds = thresholds.full() if isinstance(thresholds, WorkflowThresholds) else thresholds
        self.approve_medium, self.price_per_hour = approve_medium, price_per_hour
        if recipe is not None:
            self._record(recipe)
            model = getattr(recipe, "model", None)
            if model is not None:
                threads = apply_blas_threads(model.path, model.tiny.model_dump())
                if flow_run.get_id():
                    get_run_logger().info(threads)
        self.tiers: dict[str, str] = {}
        self.stage_seconds: dict[str, float] = {}
        self.reports: dict[str, str | None] = {}  # stage -> its gate report's artifact id
        self.totals: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def _record(self, recipe: BaseModel) -> None:
        """RUN_DIR/recipe.json (the resolved recipe, every default filled in) and provenance.json (versions, git
        commit), so a run can be reproduced; a retry with another recipe keeps the earlier one beside it."""
        run_dir = Path(self.dir)
        resolved = recipe.model_dump(mode="json")
        path = run_dir / "recipe.json"
        if path.is_file():
            try:
                earlier = json.loads(path.read_text())
            except (OSError, ValueError):
                earlier = None
            if earlier != resolved:
                stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
                kept, n = run_dir / f"recipe.{stamp}.json", 1
                while kept.exists():  # two retries within a second: never overwrite an earlier recipe
                    kept, n = run_dir / f"recipe.{stamp}-{n}.json", n + 1
                path.rename(kept)
        write_json(path, resolved)
        write_json(run_dir / "provenance.json", provenance())

    @staticmethod
    def _acquire(path: Path):
        """Hold an exclusive lock on the run directory: two runs writing the same stages would corrupt each other."""
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunBusy(f"{path.parent} is in use by {holder}; wait for it, or choose another run name") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        return fh

    def close(self) -> None:
        """Release the run directory (the lock goes with the process too, whatever way it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def gate(self, result: R, *suites: Callable) -> R:
        """Check `result`'s tables with `suites` (REJECT raises GateFailed; MEDIUM may pause for approval), record
        the tier, the stage's compute time and its summary contributions; return the result for the next stage."""
        tables = result.tables()
        missing = [suite_name(s) for s in suites if suite_name(s) not in tables]
        if missing:
            raise ValueError(f"stage {result.stage} has no table for {missing}; it gives {sorted(tables)}")
        self.stage_seconds[result.stage] = result.seconds
        report = gate(
            result.stage,
            {s: tables[suite_name(s)] for s in suites},
            self.thresholds,
            out_dir=Path(result.out_dir),
            approve_medium=self.approve_medium,
            suite_kwargs=result.suite_kwargs(),
        )
        self.tiers[result.stage] = report.tier
        self.reports[result.stage] = report.artifact_id
        for key, value in result.summary().items():
            if isinstance(value, list):
                self.totals[key] = self.totals.get(key, []) + value
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and key in self.totals:
                self.totals[key] += value
            else:
                self.totals[key] = value
        return result

    def finish(self, evaluation: EvaluationResult, *suites: Callable, **details: Any) -> dict:
        """Gate stage 7 and write summary.json (+ the `run-summary` artifact), also when that last gate rejects:
        the run fails, but what it measured is still reported. `details`: workflow facts for the summary."""
        try:
            self.gate(evaluation, *suites)
        except GateFailed as exc:
            self.tiers[evaluation.stage] = "REJECT"
            self.reports[evaluation.stage] = exc.report.artifact_id
            write_summary(self.dir, self.summary(evaluation, details, failure=str(exc)))
            raise
        return write_summary(self.dir, self.summary(evaluation, details))

    def summary(self, evaluation: EvaluationResult, details: dict, failure: str | None = None) -> dict:
        # Compute time of every stage, cached stages at what they cost when they ran, so a retried run reports
        # throughput and cost for all the work, not just the part it redid.
        self.stage_seconds[evaluation.stage] = evaluation.seconds
        compute = sum(self.stage_seconds.values())
        examples = self.totals.get("examples_processed", 0)
        cost = self.price_per_hour * compute / 3600 / examples if self.price_per_hour is not None and examples else None
        e = evaluation
        return {
            "flow_run_id": str(flow_run.get_id()) if flow_run.get_id() else None,
            "data_type": self.data_type,
            "workflow": self.workflow,
            "tier": max(self.tiers.values(), key=TIER_ORDER.__getitem__),
            "failure": failure,
            **self.totals,
            **details,
            "machine": machine_description(),
            "wall_time_s": round(time.perf_counter() - self.t0, 1),
            "compute_time_s": round(compute, 1),
            "throughput_examples_per_s": round(examples / compute, 3) if compute else None,
            "cost_per_example": cost,
            "cost_note": None if cost is not None else "price_per_hour not configured: cost not computed",
            "verdict": e.verdict,
            "evaluation": e.evaluation,
            "comparisons": [
                {**c.model_dump(), "within_noise": c.within_noise, "text": c.describe()} for c in e.comparisons
            ],
            "results": {
                **{f"before/{k}": v for k, v in e.before.items()},
                **{f"after/{k}": v for k, v in e.after.items()},
                **({f"control/{k}": v for k, v in e.control.items()} if e.control else {}),
                **e.metrics,
            },
            "gate_tiers": self.tiers,
            "gate_reports": self.reports,
            "stage_seconds": {k: round(v, 1) for k, v in self.stage_seconds.items()},
            "run_dir": self.dir,
            "final_model": e.final_model_dir,
            "plots": e.plots,
        }
