"""Stage 3: model initialization. Freeze the reference, cache its log-probs, check KL at init is 0."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from pydantic import BaseModel

from realign.model.logprobs import pair_batch, reference_logps
from realign.eval.metrics import mean_kl
from realign.model.load import load_model
from realign.train.loop import TrainConfig, prepare_model
from tasks.common import STAGE_CACHE, stage_dir, write_json


class ReferenceResult(BaseModel):
    """ref_logps_path: Parquet aligned with the pairs (chosen/rejected sums and token counts)."""

    reference_dir: str
    ref_logps_path: str
    reference_present: bool
    ref_logps_finite_fraction: float
    init_kl: float
    seconds: float


@task(name="3-model-initialization", cache_policy=STAGE_CACHE, persist_result=True)
def initialize_reference(reference_dir: str, pairs_path: str, train_cfg: TrainConfig, run_dir: str, round: int = 1) -> ReferenceResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = stage_dir(run_dir, 3, f"_round{round}" if round > 1 else "")
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    ref = load_model(reference_dir)
    cache = reference_logps(ref.model, ref.tokenizer, pairs, batch_size=32,
                            on_progress=lambda d, n: log.info(f"reference log-probs {d}/{n}") if d == n else None)
    frame = pd.DataFrame(cache)
    frame.to_parquet(out / ".reference_logps.parquet.tmp")
    (out / ".reference_logps.parquet.tmp").replace(out / "reference_logps.parquet")
    values = np.concatenate([cache["chosen_logps"], cache["rejected_logps"]])
    finite = float(np.isfinite(values).mean()) if len(values) else float("nan")

    # The policy starts as the reference plus freshly initialised adapters (LoRA B = 0), or a copy:
    # measure KL(policy || reference) for real on a probe batch instead of assuming it is 0.
    policy = load_model(reference_dir)
    prepare_model(policy.model, train_cfg)
    probe = pair_batch(ref.tokenizer, pairs[:32]) if pairs else None
    init_kl = float("nan")
    if probe is not None:
        inputs = probe.tokens[:, :-1]
        init_kl = mean_kl(policy.model(inputs), ref.model(inputs), probe.mask)
    # Present = a loadable model directory whose weights are all finite (not merely a path that exists).
    from mlx.utils import tree_flatten
    import mlx.core as mx

    present = (Path(reference_dir) / "config.json").is_file() and all(
        bool(mx.all(mx.isfinite(v)).item()) for _, v in tree_flatten(ref.model.parameters()))
    metrics = {"reference_present": present, "ref_logps_finite_fraction": finite, "init_kl": init_kl, "pairs": len(pairs)}
    write_json(out / "reference.json", {**metrics, "reference_dir": reference_dir})
    log.info(f"reference {reference_dir}: {len(pairs)} pairs cached, finite {finite:.3f}, KL at init {init_kl:.2e}")
    return ReferenceResult(reference_dir=reference_dir, ref_logps_path=str(out / "reference_logps.parquet"), reference_present=present,
                           ref_logps_finite_fraction=finite, init_kl=init_kl, seconds=time.perf_counter() - t0)
