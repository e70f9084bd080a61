"""Great Expectations Data Docs (static HTML) for a run's gate results."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from gates.context import gx_context


def find_gate_reports(run_dir: Path) -> list[Path]:
    """Every gate_<stage>.json under `run_dir`, sorted by path (stage directories are numbered)."""
    return sorted(Path(run_dir).rglob("gate_*.json"))


def build_data_docs(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Render the GX validation results saved in a run's gate reports as Data Docs.

    Returns the path of index.html (in RUN_DIR/gate_docs unless `out_dir` is given).
    Raises FileNotFoundError when the run has no gate reports.
    """
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    run_dir = Path(run_dir)
    reports = find_gate_reports(run_dir)
    if not reports:
        raise FileNotFoundError(
            f"{run_dir}: no gate_<stage>.json files found; run a workflow (or `realign gate check --out-dir`) first"
        )
    out = Path(out_dir) if out_dir else run_dir / "gate_docs"
    gx_context()  # sets GX's offline defaults
    with tempfile.TemporaryDirectory(prefix=".gate_docs.", dir=run_dir) as tmp:
        ctx = gx.get_context(mode="file", project_root_dir=tmp)
        schema = ExpectationSuiteValidationResultSchema()
        for path in reports:
            report = json.loads(path.read_text())
            run_time = datetime.fromisoformat(report["created_at"])
            for raw in report.get("gx_results", []):
                result = schema.load(raw)
                key = ValidationResultIdentifier(
                    ExpectationSuiteIdentifier(name=raw["suite_name"]),
                    RunIdentifier(run_name=report["stage"], run_time=run_time),
                    report["stage"],
                )
                ctx.validation_results_store.set(key, result)
        ctx.build_data_docs()
        site = Path(tmp) / "gx" / "uncommitted" / "data_docs" / "local_site"
        staged = Path(tempfile.mkdtemp(prefix=".gate_docs_new.", dir=out.parent))
        shutil.copytree(site, staged, dirs_exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    return out / "index.html"
