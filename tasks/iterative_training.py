"""Stage 6: iterative training. Measure the target metric after each round and decide whether to go on."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from realign.datasets import load_data
from realign.evaluation import accuracy
from realign.models import load_model
from realign.recipes import DataConfig
from tasks.common import STAGE_CACHE, stage_dir, write_json


class RoundScore(BaseModel):
    round: int
    model_dir: str
    target_metric: float       # exact-match accuracy on the dev (or target) set
    split: str


@task(name="6-iterative-training-score", cache_policy=STAGE_CACHE, persist_result=True)
def score_round(data: DataConfig, model_dir: str, round: int, max_tokens: int = 12) -> RoundScore:
    """Target-skill accuracy of a round's model, on the dev split when there is one."""
    bundle = load_data(data)
    items = bundle.dev or bundle.target
    lm = load_model(model_dir)
    acc = accuracy(lm.model, lm.tokenizer, items.prompts, items.answers, max_tokens=max_tokens)
    get_run_logger().info(f"round {round}: {items.name} accuracy {acc.accuracy:.3f}")
    return RoundScore(round=round, model_dir=model_dir, target_metric=acc.accuracy, split=items.name)


def decide(history: list[RoundScore], baseline: float, epsilon: float, max_rounds: int) -> tuple[str, str]:
    """(decision, reason) after the last round in `history`; baseline is the metric before round 1."""
    last = history[-1]
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
def record_rounds(history: list[RoundScore], decisions: list[tuple[str, str]], baseline: float, run_dir: str) -> IterationResult:
    out = stage_dir(run_dir, 6)
    rows = []
    prev = baseline
    for score, (decision, reason) in zip(history, decisions):
        rows.append({"round": score.round, "target_metric": score.target_metric, "delta": score.target_metric - prev,
                     "decision": decision, "reason": reason, "model_dir": score.model_dir, "split": score.split})
        prev = score.target_metric
    best = max(history, key=lambda s: (s.target_metric, -s.round))
    write_json(out / "rounds.json", {"baseline": baseline, "rounds": rows, "best_round": best.round})
    return IterationResult(rounds=rows, best_round=best.round, best_model_dir=best.model_dir, stop_reason=decisions[-1][1])
