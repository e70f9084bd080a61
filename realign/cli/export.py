"""`realign export RUN_DIR --to mlx-lm|trl OUT`: a run's training data in the formats mlx-lm and TRL read."""

from __future__ import annotations

from pathlib import Path

import typer


def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>/)."),
    to: str = typer.Option(..., "--to", help="mlx-lm (mlx_lm lora --data OUT) | trl (conversational formats)."),
    out: Path = typer.Argument(..., help="A new or empty directory to write train.jsonl, valid.jsonl, ... into."),
    sft: str = typer.Option(
        "both",
        "--sft",
        help="SFT rows: stage1 (rebuilt from the run's recipe), chosen (the pairs' chosen answers) or both.",
    ),
    valid_fraction: float = typer.Option(
        0.1, "--valid-fraction", help="Share of prompts held out in valid.jsonl (by a hash of the prompt), 0 to 0.5."
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty OUT, replacing the export's files."),
) -> None:
    """Write a run's preference pairs and SFT rows as mlx-lm or TRL read them, split train/valid, with a README.md.

    Exit 0 when written, 2 when the run lacks the data or OUT is not usable."""
    # The command line's own error printer; imported here, as main.py imports this module to register it.
    from realign.cli.main import _fail
    from realign.cli.main import out as console
    from realign.data.export import ExportError
    from realign.data.export import export_run as export

    try:
        report = export(run_dir, out, to, sft=sft, valid_fraction=valid_fraction, force=force)
    except ExportError as exc:
        _fail(str(exc))
    except OSError as exc:  # disk full, permissions
        _fail(
            f"writing {out}: {exc.strerror or exc}; free space or choose another OUT (files written so far are whole)"
        )
    for name in report.removed:
        console.print(f"removed {out / name} (a previous export's, not part of this one)")
    console.print(report.summary())
