"""Stage 3 (DPO): model initialization. Freeze the reference, cache its log-probs, check KL at init is 0."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.eval.probes import kl_probe, probe_examples
from realign.io import write_json, write_parquet
from realign.model.load import is_adapter_dir, load_model, weights_finite
from realign.model.logprobs import (
    finite_fraction,
    hidden_cache_bytes,
    hidden_cache_problem,
    pair_batch,
    reference_logps,
)
from realign.recipes.dpo import DPOStageConfig
from realign.train.loop import prepare_model
from tasks.cache import stage_task
from tasks.dpo import DPO_STAGES
from tasks.stages import StageResult, one_row


class ReferenceResult(StageResult):
    """ref_logps_path: Parquet aligned with the pairs (chosen/rejected sums and token counts, and the hidden states
    at the completion tokens when cached)."""

    reference_dir: str
    ref_logps_path: str
    reference_present: bool
    ref_logps_finite_fraction: float
    init_kl: float

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "reference": one_row(
                reference_present=self.reference_present,
                ref_logps_finite_fraction=self.ref_logps_finite_fraction,
                init_kl=self.init_kl,
            )
        }


@stage_task("3-model-initialization")
def initialize_reference(
    reference_dir: str, pairs_path: str, cfg: DPOStageConfig, run_dir: str, round: int = 1
) -> ReferenceResult:
    """cfg: stage 5's, whose training the cache serves (its max_seq_len and LoRA setting); cfg.kl_cache_max_gb: also
    cache the reference's hidden states at the completion tokens when they fit in this many GB, and stage 5 measures
    its per-step KL from them without running the reference."""
    train_cfg, kl_cache_max_gb = cfg.train, cfg.kl_cache_max_gb
    log = get_run_logger()
    t0 = time.perf_counter()
    out = DPO_STAGES.dir(run_dir, 3, round)
    pairs = pd.read_parquet(pairs_path).to_dict("records")
    ref = load_model(reference_dir)
    hidden = False
    problem = hidden_cache_problem(ref.model, pair_batch(ref.tokenizer, pairs[:1]).tokens) if kl_cache_max_gb else None
    if problem:
        log.warning(f"reference hidden states not cached ({problem}): stage 5 measures KL with a reference forward")
    elif kl_cache_max_gb > 0:
        size = hidden_cache_bytes(ref.model, ref.tokenizer, pairs, max_len=train_cfg.max_seq_len)
        hidden = size <= kl_cache_max_gb * 1e9
        log.info(
            f"reference hidden states for the per-step KL: {size / 1e6:.1f} MB, "
            + (
                "cached"
                if hidden
                else f"over kl_cache_max_gb={kl_cache_max_gb:g}: not cached (a reference forward "
                "per measured step instead)"
            )
        )
    cache = reference_logps(
        ref.model,
        ref.tokenizer,
        pairs,
        batch_size=32,
        max_len=train_cfg.max_seq_len,  # cut as training cuts them: the reference scores the tokens the policy sees
        hidden=hidden,
        on_progress=lambda d, n: log.info(f"reference log-probs {d}/{n}") if d == n else None,
    )
    write_parquet(out / "reference_logps.parquet", pd.DataFrame(cache))
    finite = finite_fraction(cache)

    # The policy starts as the reference plus freshly initialised adapters (LoRA B = 0), or a copy:
    # measure KL(policy || reference) for real on a probe batch instead of assuming it is 0.
    policy = load_model(reference_dir)
    prepare_model(policy.model, train_cfg)
    init_kl = kl_probe(policy.model, ref.model, ref.tokenizer, probe_examples(pairs, limit=32))
    # Present = a loadable model directory whose weights are all finite (not merely a path that exists).
    present = (Path(reference_dir) / "config.json").is_file() or is_adapter_dir(reference_dir)
    present = present and weights_finite(ref.model)
    metrics = {
        "reference_present": present,
        "ref_logps_finite_fraction": finite,
        "init_kl": init_kl,
        "pairs": len(pairs),
    }
    write_json(out / "reference.json", {**metrics, "reference_dir": reference_dir})
    log.info(f"reference {reference_dir}: {len(pairs)} pairs cached, finite {finite:.3f}, KL at init {init_kl:.2e}")
    return ReferenceResult(
        stage=DPO_STAGES.name(3, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        reference_dir=reference_dir,
        ref_logps_path=str(out / "reference_logps.parquet"),
        reference_present=present,
        ref_logps_finite_fraction=finite,
        init_kl=init_kl,
    )
