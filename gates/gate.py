"""The gate as Prefect sees it: a task that validates, reports and fails on REJECT,
and, in the flow, a pause for a person's approval on MEDIUM when the run asks for it.

    report = gate("2-preference-data", {preference_pairs_suite: pairs, preference_metrics_suite: m},
                  config.thresholds, out_dir=stage_dir, approve_medium=config.approve_medium)

Flows call it through flows/run.py (`run.gate(stage_result, *suites)`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
from prefect import Flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Failed
from pydantic import Field

from gates.report import GateReport, md_escape
from gates.validate import evaluate
from realign.thresholds import ThresholdsConfig


class GateFailed(Exception):
    """A gate REJECTed (or a reviewer rejected a MEDIUM gate); the message says what and what to do."""

    def __init__(self, report: GateReport, reason: str | None = None):
        self.report = report
        self.reason = reason
        msg = report.failure_message()
        if reason:
            msg = f"{msg}\n{reason}"
        super().__init__(msg)

    def __reduce__(self):
        # Prefect stores a failed run's exception; keep the report when it is pickled and read back.
        return (GateFailed, (self.report, self.reason))


def stops_at_gates(target: Flow | Callable) -> Flow | Callable:
    """Over @flow: a gate's REJECT ends the run Failed with the gate's message as the run's state message, without
    the tracebacks Prefect logs for an unexpected exception (a REJECT is an expected outcome, not a crash). Calling
    the flow still raises GateFailed.

    Given a Flow, only the function it calls is wrapped: its parameters, name and version (a hash of the flow's own
    file) stay the flow's. Given a function (a test's flow), the wrapper is returned."""
    fn = target.fn if isinstance(target, Flow) else target

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GateFailed as exc:
            return Failed(message=str(exc), data=exc)

    # Resolved types, not the strings of `from __future__ import annotations`: Prefect reads the parameters' types
    # from this wrapper, whose module does not import the flow's recipe class.
    run.__annotations__ = typing.get_type_hints(fn)
    run.__signature__ = inspect.signature(fn, eval_str=True)
    if isinstance(target, Flow):
        target.fn = run
        return target
    return run


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a task that returned a Failed state with exc_info=True and no exception, which prints a
    'NoneType: None' line under the gate's message; drop the empty exception info, keep the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyTraceback())


class GateApproval(RunInput):
    """The form a reviewer fills on the run's page to let a MEDIUM gate through (or not)."""

    approve: bool = Field(description="Approve: continue the run. Leave unticked to reject: the run fails.")
    reviewer: str = Field(description="Who decided.", min_length=1)
    comment: str = Field("", description="Why (kept with the gate report).")


def artifact_key(stage: str, suffix: str = "") -> str:
    """A Prefect artifact key for a stage: lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"gate-{stage}{suffix}".lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)


def publish(report: GateReport, out_dir: Path | None = None) -> None:
    """gate_<stage>.json beside the stage outputs (first: the verdict is on disk whatever the API does) and, inside a
    Prefect run, the artifacts (a table and a markdown report, whose id is kept on `report` and in the JSON so the run
    summary links to it)."""
    path = Path(out_dir) / f"gate_{report.stage}.json" if out_dir is not None else None
    if path is not None:
        report.write_json(path)
    if FlowRunContext.get() is None:
        return
    headline = md_escape(report.headline())  # the UI renders descriptions as markdown too
    create_table_artifact(key=artifact_key(report.stage), table=report.table_rows(), description=headline)
    report.artifact_id = str(
        create_markdown_artifact(
            key=artifact_key(report.stage, "-summary"), markdown=report.markdown(), description=headline
        )
    )
    if path is not None:
        report.write_json(path)


@task(name="gate", task_run_name="gate-{stage}", cache_policy=NO_CACHE)
def check_gate(
    stage: str,
    tables: Mapping[Callable, pd.DataFrame],
    thresholds: ThresholdsConfig,
    out_dir: Path | None = None,
    suite_kwargs: Mapping[str, dict] | None = None,
) -> GateReport:
    """Validate the stage outputs, publish the report; on REJECT the task ends Failed with the gate's message (a
    state, not an exception: one clear line in the log, no traceback) and the report as its data."""
    logger = get_run_logger()
    report = evaluate(stage, tables, thresholds, suite_kwargs)
    publish(report, out_dir)
    if report.tier == "REJECT":
        return Failed(message=report.failure_message(), data=report)
    if report.tier == "MEDIUM":
        logger.warning(report.failure_message())
    else:
        logger.info(f"Gate {stage}: HIGH ({len(report.outcomes)} expectations passed)")
    return report


def gate(
    stage: str,
    tables: Mapping[Callable, pd.DataFrame],
    thresholds: ThresholdsConfig,
    *,
    out_dir: Path | None = None,
    approve_medium: bool = False,
    approval_timeout_s: int = 24 * 3600,
    approval_poll_s: int = 10,
    suite_kwargs: Mapping[str, dict] | None = None,
) -> GateReport:
    """Run a stage's gate from inside a flow.

    HIGH continues; MEDIUM warns and continues, or with `approve_medium` pauses the
    flow until a reviewer submits GateApproval on the run's page (rejecting fails the
    run); REJECT fails the gate task and so the flow, with GateFailed's message.
    """
    state = check_gate(stage, tables, thresholds, out_dir, suite_kwargs, return_state=True)
    report = state.result(raise_on_failure=False)
    if not isinstance(report, GateReport):  # the gate itself broke (a bug, a bad table): that is an exception
        raise report if isinstance(report, BaseException) else RuntimeError(f"gate {stage}: {state.message}")
    if report.tier == "REJECT":
        raise GateFailed(report)
    if report.tier != "MEDIUM" or not approve_medium:
        return report
    logger = get_run_logger()
    logger.warning(f"Gate {stage} is MEDIUM: pausing for approval. Open this run in the UI and press Resume.")
    approval = pause_flow_run(
        wait_for_input=GateApproval, timeout=approval_timeout_s, poll_interval=approval_poll_s, key=f"gate-{stage}"
    )
    decision = "approved" if approval.approve else "rejected"
    note = f"MEDIUM gate {decision} by {approval.reviewer}" + (f": {approval.comment}" if approval.comment else "")
    report = report.model_copy(update={"approval": note})
    create_markdown_artifact(
        key=artifact_key(stage, "-approval"), markdown=f"**{md_escape(note)}**\n\n{report.markdown()}"
    )
    if out_dir is not None:
        report.write_json(Path(out_dir) / f"gate_{stage}.json")
    if not approval.approve:
        raise GateFailed(report, reason=note)
    logger.info(note)
    return report
