"""Stage 6: iterative training. Measure the target metric after each round and decide whether to go on."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from realign.data.datasets import load_data
from realign.eval.probes import accuracy
from realign.model.load import load_model
from realign.data.datasets import DataConfig
from tasks.common import STAGE_CACHE, stage_cache, stage_dir, write_json


class RoundScore(BaseModel):
    round: int
    model_dir: str
    target_metric: float       # exact-match accuracy on the dev (or target) set
    split: str
    kl_from_start: float = float("nan")  # mean per-token KL(round model || stage-1 model) on the round-1 pairs; NaN: not measured


@task(name="6-iterative-training-score", cache_policy=stage_cache("eval_sets"), persist_result=True)
def score_round(data: DataConfig, model_dir: str, round: int, max_tokens: int = 12, start_dir: str | None = None,
                probe_pairs_path: str | None = None) -> RoundScore:
    """Target-skill accuracy of a round's model (dev split when there is one) and its total drift from the start."""
    import pandas as pd

    from realign.model.logprobs import pair_batch
    from realign.eval.metrics import mean_kl

    bundle = load_data(data)
    items = bundle.dev or bundle.target
    lm = load_model(model_dir)
    acc = accuracy(lm.model, lm.tokenizer, items.prompts, items.answers, max_tokens=max_tokens)
    kl = float("nan")
    if start_dir is not None and probe_pairs_path is not None:
        pairs = pd.read_parquet(probe_pairs_path).to_dict("records")[:64]
        if pairs:
            start = load_model(start_dir)
            probe = pair_batch(lm.tokenizer, pairs)
            kl = mean_kl(lm.model(probe.tokens[:, :-1]), start.model(probe.tokens[:, :-1]), probe.mask)
    get_run_logger().info(f"round {round}: {items.name} accuracy {acc.accuracy:.3f}, KL from the stage-1 model "
                          + (f"{kl:.4f}" if kl == kl else "not measured"))
    return RoundScore(round=round, model_dir=model_dir, target_metric=acc.accuracy, split=items.name, kl_from_start=kl)


def decide(history: list[RoundScore], baseline: float, epsilon: float, max_rounds: int, max_kl: float = float("inf")
           ) -> tuple[str, str]:
    """(decision, reason) after the last round in `history`; baseline is the metric before round 1.

    Rounds stop when the target metric stops improving by epsilon, at max_rounds, or when the
    model has drifted more than max_kl from the stage-1 model (the final KL gate would reject it).
    """
    last = history[-1]
    if last.kl_from_start != last.kl_from_start and max_kl != float("inf"):
        return "stop_kl_limit", f"round {last.round}: KL from the stage-1 model was not measured, so the budget cannot be checked"
    if last.kl_from_start > max_kl:
        return "stop_kl_limit", f"round {last.round} drifted {last.kl_from_start:.4f} > {max_kl} (KL from the stage-1 model)"
    before = history[-2].target_metric if len(history) > 1 else baseline
    delta = last.target_metric - before
    if delta < epsilon:
        return "stop_no_improvement", f"round {last.round} changed {last.split} accuracy by {delta:+.3f} < epsilon {epsilon}"
    if last.round >= max_rounds:
        return "stop_max_rounds", f"improved by {delta:+.3f} >= {epsilon}, but round {last.round} is the last of {max_rounds}"
    return "continue", f"improved by {delta:+.3f} >= epsilon {epsilon}"


class IterationResult(BaseModel):
    rounds: list[dict]
    best_round: int
    best_model_dir: str
    stop_reason: str


@task(name="6-iterative-training", cache_policy=STAGE_CACHE, persist_result=True)
def record_rounds(history: list[RoundScore], decisions: list[tuple[str, str]], baseline: float, run_dir: str,
                  start_dir: str, max_kl: float = float("inf")) -> IterationResult:
    """Write the rounds table; the best round is the most accurate one within the KL budget (else the stage-1 model)."""
    out = stage_dir(run_dir, 6)
    rows = []
    prev = baseline
    for score, (decision, reason) in zip(history, decisions):
        rows.append({"round": score.round, "target_metric": score.target_metric, "delta": score.target_metric - prev,
                     "kl_from_start": score.kl_from_start, "decision": decision, "reason": reason, "model_dir": score.model_dir,
                     "split": score.split})
        prev = score.target_metric
    within = [s for s in history if s.kl_from_start <= max_kl]
    if within:
        best = max(within, key=lambda s: (s.target_metric, -s.round))
        best_round, best_dir = best.round, best.model_dir
    else:
        best_round, best_dir = 0, start_dir  # every round drifted too far: keep the stage-1 model
    write_json(out / "rounds.json", {"baseline": baseline, "rounds": rows, "best_round": best_round})
    return IterationResult(rounds=rows, best_round=best_round, best_model_dir=best_dir, stop_reason=decisions[-1][1])
