"""Stage 7: evaluation and monitoring. Retention, target before/after, win rate, KL, decontamination,
a continued-SFT control, the final model, plots."""

from __future__ import annotations

import shutil
import time

import pandas as pd
from prefect import get_run_logger, task
from pydantic import BaseModel

from realign.data.datasets import load_data
from realign.eval.probes import accuracy, win_rate
from realign.score.verifiers import positional_match
from realign.model.logprobs import pair_batch
from realign.eval.metrics import capability_retention, decontamination, mean_kl
from realign.model.load import load_model, save_model
from realign.eval.plots import before_after, training_curves
from realign.data.datasets import DataConfig
from realign.recipes.dpo import DPOStageConfig
from realign.train.batches import sft_batches
from realign.train.loop import prepare_model, train
from realign.train.objectives import sft_loss
from tasks.common import stage_cache, stage_dir, write_json


class EvaluationResult(BaseModel):
    metrics: dict              # one row for the evaluation gate
    before: dict[str, float]
    after: dict[str, float]
    control: dict[str, float] | None
    verdict: str               # plain words: did preference optimisation beat the control?
    final_model_dir: str
    plots: list[str]
    not_computed: dict[str, str]
    seconds: float


@task(name="7-evaluation", cache_policy=stage_cache("eval_sets"), persist_result=True)
def evaluate_run(data: DataConfig, dpo: DPOStageConfig, reference_dir: str, final_model_dir: str, baseline: dict[str, float],
                 pair_paths: list[str], metrics_paths: list[str], total_dpo_steps: int, run_dir: str, control: bool = True,
                 max_tokens: int = 12, ngram: int = 13) -> EvaluationResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = stage_dir(run_dir, 7)
    bundle = load_data(data)
    final = load_model(final_model_dir)

    after: dict[str, float] = {}
    scores_after: dict[str, list[float]] = {}
    for ev in bundle.eval_sets:
        acc = accuracy(final.model, final.tokenizer, ev.prompts, ev.answers, max_tokens=max_tokens)
        after[f"{ev.name}_accuracy"], after[f"{ev.name}_score"] = acc.accuracy, acc.mean_score
        scores_after[ev.name] = [positional_match(p, a) for p, a in zip(acc.predictions, ev.answers)]
    before = {k: v for k, v in baseline.items() if k in after}

    # Win rate on the target set, judged by the run's graded verifier, against the stage-1 model.
    ref = load_model(reference_dir)
    tgt = bundle.target
    base_acc = accuracy(ref.model, ref.tokenizer, tgt.prompts, tgt.answers, max_tokens=max_tokens)
    wr = win_rate(scores_after[tgt.name], [positional_match(p, a) for p, a in zip(base_acc.predictions, tgt.answers)])

    retention = capability_retention({f"{b.name}_accuracy": baseline.get(f"{b.name}_accuracy", float("nan")) for b in bundle.benchmarks},
                                     after)
    # Final KL(policy || stage-1 reference) on fixed texts: the round-1 pairs (chosen and rejected answers).
    pairs = pd.read_parquet(pair_paths[0]).to_dict("records")[:64]
    kl = float("nan")
    if pairs:
        probe = pair_batch(final.tokenizer, pairs)
        kl = mean_kl(final.model(probe.tokens[:, :-1]), ref.model(probe.tokens[:, :-1]), probe.mask)
    train_texts = [f"{p} {c}" for p, c in bundle.sft]
    for path in pair_paths:
        train_texts += [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in pd.read_parquet(path).to_dict("records")]
    eval_texts = [f"{p} {a}" for ev in bundle.eval_sets for p, a in zip(ev.prompts, ev.answers)]
    decon = decontamination(train_texts, eval_texts, n=ngram)

    control_metrics = None
    if control and total_dpo_steps > 0:
        # Same start, same optimiser settings and number of steps, SFT on the chosen answers instead of preferences.
        chosen = [(r["prompt"], r["chosen"]) for r in pd.read_parquet(pair_paths[0]).to_dict("records")]
        ctl = load_model(reference_dir)
        ctl_cfg = dpo.train.model_copy(update={"steps": total_dpo_steps, "checkpoint_every": 0, "kl_limit": None})
        prepare_model(ctl.model, ctl_cfg)
        train(ctl.model, sft_loss, sft_batches(ctl.tokenizer, chosen, ctl_cfg), ctl_cfg)
        control_metrics = {}
        for ev in bundle.eval_sets:
            acc = accuracy(ctl.model, ctl.tokenizer, ev.prompts, ev.answers, max_tokens=max_tokens)
            control_metrics[f"{ev.name}_accuracy"] = acc.accuracy
        log.info("control (continued SFT on chosen answers): " + ", ".join(f"{k}={v:.3f}" for k, v in control_metrics.items()))

    key = f"{tgt.name}_accuracy"
    gain = after[key] - before.get(key, float("nan"))
    if control_metrics is None:
        verdict = f"{tgt.name} accuracy {before.get(key, float('nan')):.3f} -> {after[key]:.3f} ({gain:+.3f}); no control was run"
    else:
        c = control_metrics[key]
        if after[key] > c:
            verdict = f"preference optimisation beat the control on {tgt.name}: {after[key]:.3f} vs {c:.3f} (baseline {before.get(key):.3f})"
        else:
            verdict = (f"preference optimisation did NOT beat the control on {tgt.name}: {after[key]:.3f} vs continued SFT "
                       f"{c:.3f} (baseline {before.get(key):.3f})")

    final_dir = out / "final_model"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    save_model(final.model, final_model_dir, final_dir)
    history = pd.concat([pd.read_parquet(p) for p in metrics_paths], ignore_index=True) if metrics_paths else pd.DataFrame()
    plots = [str(training_curves(history, out / "training_curves.png")),
             str(before_after({k: {"baseline": before.get(k, float("nan")), "final": after[k],
                                   **({"control": control_metrics[k]} if control_metrics and k in control_metrics else {})}
                               for k in after if k.endswith("_accuracy")}, out / "before_after.png",
                              title="held-out exact-match accuracy"))]
    metrics = {"capability_retention": retention.retention, "decontamination": decon.score, "kl": kl,
               "target_before": before.get(key, float("nan")), "target_after": after[key], "win_rate": wr}
    write_json(final_dir / "metrics.json", {**metrics, "after": after, "before": before, "control": control_metrics})
    write_json(out / "evaluation.json", {**metrics, "after": after, "before": before, "control": control_metrics,
                                         "retention_per_benchmark": retention.per_benchmark, "not_computed": retention.not_computed,
                                         "contaminated_eval_items": decon.contaminated, "verdict": verdict})
    log.info(verdict)
    return EvaluationResult(metrics=metrics, before=before, after=after, control=control_metrics, verdict=verdict,
                            final_model_dir=str(final_dir), plots=plots, not_computed=retention.not_computed,
                            seconds=time.perf_counter() - t0)
