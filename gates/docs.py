"""Great Expectations Data Docs (static HTML) for a run's gate results, readable without the network.

GX's pages load Bootstrap, jQuery, Font Awesome and bootstrap-table from CDNs, and its index is a table those scripts
draw: offline it is empty and unstyled. So the site is post-processed: external stylesheets and scripts (and the
remote logo) are removed, realign's own stylesheet (gates/static/gate_docs.css) is copied in and linked from every
page, and the index is written as plain HTML (run name and time, each stage's tier, links to GX's pages).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from gates.context import gx_context

STYLESHEET = Path(__file__).parent / "static" / "gate_docs.css"
# <link>/<script> tags that load from the network, and remote images (GX's logo, fetched with a tracking query).
_EXTERNAL = re.compile(r"<(?:link|script)\b[^>]*?(?:href|src)=[\"']https?://[^>]*>(?:\s*</script>)?", re.I | re.S)
_REMOTE_IMG = re.compile(r"<img\b[^>]*?src=[\"']https?://[^>]*>", re.I | re.S)


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
                # The run's name and time on GX's page (it shows __none__ for results validated without a run id).
                result.meta["run_id"] = RunIdentifier(run_name=report["stage"], run_time=run_time)
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
    make_offline(staged, run_dir, reports)
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    return out / "index.html"


def make_offline(site: Path, run_dir: Path, reports: list[Path]) -> None:
    """Strip the site's network assets, link realign's stylesheet from every page, write a static index."""
    css = site / "static" / "realign" / "gate_docs.css"
    css.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(STYLESHEET, css)
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        text = _REMOTE_IMG.sub("<b>realign gate reports</b>", _EXTERNAL.sub("", text))
        href = os.path.relpath(css, page.parent).replace(os.sep, "/")
        text = text.replace("</head>", f'<link rel="stylesheet" href="{href}">\n</head>', 1)
        page.write_text(text, encoding="utf-8")
    (site / "index.html").write_text(index_html(site, run_dir, reports), encoding="utf-8")


def index_html(site: Path, run_dir: Path, reports: list[Path]) -> str:
    """The run's gates as a plain table: stage, tier, checks passed, when, and each suite's GX page."""
    rows = []
    for path in reports:
        report = json.loads(path.read_text())
        stage, tier = report["stage"], report["tier"]
        outcomes = report.get("outcomes", [])
        passed = sum(o["tier"] == "HIGH" for o in outcomes)
        pages = []
        for raw in report.get("gx_results", []):
            suite = raw["suite_name"]
            found = sorted((site / "validations" / suite / stage).glob("*/*.html"))
            if found:
                link = found[-1].relative_to(site).as_posix()
                pages.append(f'<a href="{html.escape(link)}">{html.escape(suite)}</a>')
            else:
                pages.append(html.escape(suite))
        rows.append(
            f'<tr><td>{html.escape(stage)}</td><td class="realign-tier-{tier}">{tier}</td>'
            f"<td>{passed} of {len(outcomes)}</td><td>{html.escape(report.get('created_at', ''))}</td>"
            f"<td>{', '.join(pages)}</td></tr>"
        )
    name = html.escape(run_dir.resolve().name)
    built = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Gate reports: {name}</title>
<link rel="stylesheet" href="static/realign/gate_docs.css">
</head><body>
<div class="realign-banner"><b>Gate reports of run {name}</b> &middot; {html.escape(str(run_dir.resolve()))}
&middot; built {built}</div>
<div class="container-fluid pt-4"><div class="card"><div class="card-header">Every stage's gate (Great Expectations
validation results; HIGH / MEDIUM / REJECT as SPEC.md's tiers)</div><div class="card-body table-responsive">
<table class="table table-sm" id="realign-gates"><thead><tr><th>stage</th><th>tier</th><th>checks HIGH</th>
<th>checked at (UTC)</th><th>validation results</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></div></div></div>
</body></html>
"""
