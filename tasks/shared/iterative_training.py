"""Stage 6: iterative training. Measure each round's model, decide whether to go on, record the rounds."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task

from realign.data.datasets import DataConfig, load_data
from realign.eval.probes import kl_probe, score_eval_sets
from realign.eval.rounds import RoundScore, best_round, decide, rounds_table
from realign.io import write_json
from realign.model.load import load_model
from realign.recipes.common import IterationConfig
from realign.score.verify import judge
from tasks.cache import stage_cache, stage_task
from tasks.stages import SHARED_STAGES, StageResult


@task(name="6-iterative-training-score", cache_policy=stage_cache("eval_sets"), persist_result=True)
def measure_round(
    data: DataConfig,
    model_dir: str,
    round: int,
    max_tokens: int = 12,
    start_dir: str | None = None,
    probe: list[tuple[str, str]] | None = None,
    verifier: str | None = None,
) -> RoundScore:
    """Target-skill accuracy (an open target's mean rating) of a round's model (dev split when there is one) and,
    with a probe, its drift from the stage-1 model. Cached on what it measures only, so changing the stopping rules
    re-measures nothing."""
    t0 = time.perf_counter()
    bundle = load_data(data)
    items = bundle.dev or bundle.target
    lm = load_model(model_dir)
    # Scored as stage 7 scores it: a choice or math target set by its own rule, not by exact match.
    # An open-ended target's rounds are judged by its mean rating (its scorer loaded here).
    acc = score_eval_sets(lm.model, lm.tokenizer, [items], max_tokens=max_tokens, is_correct=judge(verifier))[
        items.name
    ]
    kl = math.nan
    if start_dir is not None and probe:
        kl = kl_probe(lm.model, load_model(start_dir).model, lm.tokenizer, probe)
    score = RoundScore(
        round=round,
        model_dir=model_dir,
        target_metric=acc.value,
        split=items.name,
        kl_from_start=kl,
        seconds=time.perf_counter() - t0,
    )
    shown = f"{kl:.4f}" if not math.isnan(kl) else "not measured"
    start = "/".join(Path(start_dir).parts[-2:]) if start_dir else "the start model"
    what = "mean rating" if acc.open else "accuracy"
    get_run_logger().info(f"round {round}: {score.split} {what} {score.target_metric:.3f}, KL from {start} {shown}")
    return score


def measure_baseline(
    data: DataConfig,
    model_dir: str,
    max_tokens: int = 12,
    verifier: str | None = None,
    after: str = "1-sft-preparation",
) -> RoundScore:
    """Round 0: the target metric of the model the rounds start from, the bar round 1 must clear (judged by
    `verifier` when given). Named in the UI after the stage whose model it measures (`after`), where it runs, so the
    task list reads in stage order."""
    as_stage = measure_round.with_options(task_run_name=f"{after}-baseline")
    return as_stage(data, model_dir, 0, max_tokens, verifier=verifier)


def assess_round(
    data: DataConfig,
    model_dir: str,
    round: int,
    history: list[RoundScore],
    baseline: RoundScore,
    iterations: IterationConfig,
    start_dir: str,
    probe: list[tuple[str, str]],
    max_kl: float,
    training_stop: str = "",
    max_tokens: int = 12,
    verifier: str | None = None,
) -> RoundScore:
    """Measure round `round`'s model (a cached task) and decide: continue, or stop and why (training_stop: stage 5
    stopped on its KL limit). Called from a flow; the decision itself is realign.eval.rounds.decide."""
    score = measure_round(data, model_dir, round, max_tokens, start_dir, probe, verifier)
    decision, reason = decide(
        [*history, score], baseline.target_metric, iterations.epsilon, iterations.max_rounds, max_kl, training_stop
    )
    get_run_logger().info(f"round {round}: {decision} ({reason})")
    return score.model_copy(update={"decision": decision, "reason": reason})


class IterationResult(StageResult):
    rounds: list[dict]
    best_round: int
    best_model_dir: str
    stop_reason: str

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"iteration": pd.DataFrame(self.rounds)}

    def summary(self) -> dict:
        return {"rounds": len(self.rounds), "best_round": self.best_round}


@stage_task("6-iterative-training")
def record_rounds(
    history: list[RoundScore], baseline: RoundScore, run_dir: str, start_dir: str, max_kl: float = math.inf
) -> IterationResult:
    """Write the rounds table; the best round is the most accurate one within the KL budget (else the stage-1 model)."""
    t0 = time.perf_counter()
    out = SHARED_STAGES.dir(run_dir, 6)
    rows = rounds_table(history, baseline.target_metric)
    best = best_round(history, max_kl)
    best_no, best_dir = (best.round, best.model_dir) if best else (0, start_dir)  # all drifted too far: keep stage 1
    write_json(out / "rounds.json", {"baseline": baseline.target_metric, "rounds": rows, "best_round": best_no})
    # The measurements were stage 6's work too: count them, cached or not, at what they cost when they ran.
    measured = baseline.seconds + sum(s.seconds for s in history)
    return IterationResult(
        stage=SHARED_STAGES.name(6),
        out_dir=str(out),
        seconds=time.perf_counter() - t0 + measured,
        rounds=rows,
        best_round=best_no,
        best_model_dir=best_dir,
        stop_reason=history[-1].reason,
    )
