"""Stage 3: the direction projected out of every residual-stream writer; the model saved and reloaded with mlx-lm.

Orthogonality is gated on the float32 matrices before the cast back to the model's dtype (what the arithmetic
achieved); the reloaded weights' value is reported beside it, in their dtype: for a bf16 or fp16 model it is that
dtype's rounding (~1e-3 of the largest weight), which no abliteration can get under the float32 tolerance."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.io import write_json
from realign.model.load import ModelLoadError, load_model, weights_finite
from realign.recipes.abliterate import AbliterationStageConfig
from realign.steer.abliterate import abliterate, relative_projection, save_abliterated
from realign.steer.directions import load_directions
from tasks.abliterate import ABLITERATE
from tasks.cache import stage_task
from tasks.stages import StageResult, one_row


class AbliterationResult(StageResult):
    """model_dir: the abliterated model; relative_projection: largest |r . W| over the largest |W| of the
    orthogonalised writers in float32, before the cast (gated); saved_relative_projection: the same of the reloaded
    writers in their `dtypes` (reported: rounding for bf16/fp16, `note`); loads / finite: mlx_lm.load read it back,
    every weight finite."""

    model_dir: str
    matrices: int
    projection_before: float
    relative_projection: float
    loads: bool
    finite: bool
    limits: dict
    saved_relative_projection: float = float("nan")
    dtypes: list[str] = []
    note: str = ""

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "abliteration": one_row(
                relative_projection=self.relative_projection, loads=int(self.loads), finite=int(self.finite)
            )
        }

    def suite_kwargs(self) -> dict[str, dict]:
        return {"abliteration": {"limits": self.limits}}

    def summary(self) -> dict:
        return {
            "abliterated_matrices": self.matrices,
            "relative_projection": self.relative_projection,
            "saved_relative_projection": self.saved_relative_projection,
            "saved_dtypes": self.dtypes,
            **({"saved_projection_note": self.note} if self.note else {}),
        }


@stage_task("3-abliteration")
def abliterate_model(
    model_dir: str, directions_path: str, cfg: AbliterationStageConfig, run_dir: str, limits: dict
) -> AbliterationResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = ABLITERATE.dir(run_dir, 3)
    found = load_directions(directions_path)
    lm = load_model(model_dir)
    report = abliterate(lm.model, found.direction, embeddings=cfg.embeddings, layer=found.chosen_layer)
    saved = save_abliterated(lm.model, model_dir, out / "model", report)
    # Read back with mlx-lm: it must load with finite weights; its projection (in its dtype) is reported beside the
    # float32 one the gate reads.
    try:
        back = load_model(saved)
    except ModelLoadError as exc:
        log.error(f"the abliterated model does not load: {exc}")
        back = None
    reloaded = relative_projection(back.model, found.direction, cfg.embeddings) if back else float("nan")
    finite = weights_finite(back.model) if back else False
    write_json(
        out / "abliteration_check.json",
        {**report.as_dict(), "reloaded_relative_projection": reloaded, "finite": finite},
    )
    log.info(
        f"orthogonalised {len(report.matrices)} matrices against layer {found.chosen_layer}'s direction: largest "
        f"|r . W| {report.max_projection_before:.4g} -> {report.max_projection_after:.3g} (float32); relative to "
        f"the largest weight {report.relative_projection_after:.2e}, reloaded in {'/'.join(report.dtypes or [])} "
        f"{reloaded:.2e}" + (f" ({report.note})" if report.note else "")
    )
    return AbliterationResult(
        stage=ABLITERATE.name(3),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        model_dir=str(saved),
        matrices=len(report.matrices),
        projection_before=report.max_projection_before,
        relative_projection=report.relative_projection_after,
        loads=back is not None,
        finite=finite,
        limits=limits,
        saved_relative_projection=reloaded,
        dtypes=report.dtypes or [],
        note=report.note,
    )
