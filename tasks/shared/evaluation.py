"""Stage 7: evaluation and monitoring of the chosen model. Retention, target before/after with intervals, win rate
with its interval, perplexity, KL from the stage-1 model, decontamination, an optional control arm, the final model
and plots. A verifiable target is scored by its answers; an open-ended one by its judge or reward model."""

from __future__ import annotations

import shutil
import time

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import DataConfig, TrainingFile, load_data, write_jsonl
from realign.eval.control import ControlArm, train_control
from realign.eval.grounding import evaluate_grounded
from realign.eval.metrics import calibration_bins, capability_retention, decontamination
from realign.eval.plots import before_after, reliability_diagram, training_curves
from realign.eval.probes import (
    describe_evaluation,
    eval_metrics,
    kl_probe,
    perplexity,
    score_eval_sets,
    win_rate_comparison,
)
from realign.eval.verdict import Comparison, compare, reward_hacking, verdict
from realign.io import write_json
from realign.model.adapters import merge_adapter_chain
from realign.model.load import base_reference_of, is_adapter_dir, load_model, model_root, save_model
from realign.score.reward_model import load_reward_model
from realign.score.verify import judge
from tasks.cache import stage_task
from tasks.stages import SHARED_STAGES, StageResult, one_row


class EvaluationResult(StageResult):
    metrics: dict  # one row for the evaluation gate
    before: dict[str, float]
    after: dict[str, float]
    control: dict[str, float] | None
    comparisons: list[Comparison]  # after - before and after - control on the target, with intervals
    verdict: str  # plain words: what changed, and did the method beat the control?
    evaluation: str  # which kind of evaluation ran: exact match, a verifier, choices, or a judge's ratings
    final_model_dir: str
    plots: list[str]
    not_computed: dict[str, str]

    def tables(self) -> dict[str, pd.DataFrame]:
        m = self.metrics
        tables = {
            "evaluation": one_row(
                capability_retention=m["capability_retention"], decontamination=m["decontamination"], kl=m["kl"]
            )
        }
        if "calibration_error" in m:  # grounded questions: the final model's calibration (anti-hallucination)
            tables["calibration"] = one_row(calibration_error=m["calibration_error"])
        return tables


def _nan_none(values: list[float]) -> list[float | None]:
    """JSON has no NaN: an unrated answer's score is written as null."""
    return [None if v != v else v for v in values]


@stage_task("7-evaluation", reads=("eval_sets",))
def evaluate_run(
    data: DataConfig,
    reference_dir: str,
    final_model_dir: str,
    baseline: dict[str, float],
    probe: list[tuple[str, str]],
    trained_on: list[str],
    training_metrics: list[str],
    run_dir: str,
    control: ControlArm | None = None,
    method: str = "the workflow",
    max_tokens: int = 12,
    ngram: int = 13,
    reward_model_dir: str | None = None,
    verifier: str | None = None,
    kl_reference_dir: str | None = None,
    fuse: bool = True,
) -> EvaluationResult:
    """Evaluate `final_model_dir` against the stage-1 model `reference_dir` (whose metrics are `baseline`).

    probe: fixed (prompt, completion) texts for the final KL; trained_on: every training file of the run, any row
    format (stage 1's SFT data comes from `data`), for decontamination; training_metrics: per-step metric tables, for
    the curves. reward_model_dir: a learned reward (SRF); its score of the target answers before and after is compared
    too, and reward hacking flagged when it rose while the verifier's accuracy fell (both outside noise).
    verifier: judge every answer with this verifier kind (RLVR) instead of exact match.
    kl_reference_dir: measure the final KL from this model instead of the stage-1 one (the reference of a later
    optimisation stage, as anti-hallucination's citation-trained model).
    fuse: write the final model as a full model; False: a LoRA chain's adapters merged into one adapter instead.
    A grounded target set (anti-hallucination) adds hallucination rate, factuality, citation accuracy and calibration
    error for before / after / control, the differences with intervals, and reliability diagrams.
    """
    log = get_run_logger()
    t0 = time.perf_counter()
    out = SHARED_STAGES.dir(run_dir, 7)
    bundle = load_data(data)
    tgt = bundle.target
    final, ref = load_model(final_model_dir), load_model(reference_dir)

    is_correct, scorers = judge(verifier), {}  # an open set's judge is loaded once for every model it rates
    scored = score_eval_sets(
        final.model, final.tokenizer, bundle.eval_sets, max_tokens=max_tokens, is_correct=is_correct, scorers=scorers
    )
    after = eval_metrics(scored)
    after["perplexity"] = perplexity(final.model, final.tokenizer, bundle.heldout_text)
    before = {k: v for k, v in baseline.items() if k in after}
    # The stage-1 model answers the target again, item by item, for the paired comparison and the win rate.
    start = score_eval_sets(
        ref.model, ref.tokenizer, [tgt], max_tokens=max_tokens, is_correct=is_correct, scorers=scorers
    )[tgt.name]
    # Win rate by per-item scores (an open set's ratings, else the graded scores), against an even split.
    win = win_rate_comparison(f"{tgt.name}_score", scored[tgt.name].scores, start.scores)
    for label, res in (("final", scored[tgt.name]), ("stage-1", start)):
        if res.unscored:
            log.warning(
                f"{tgt.name}: the scorer gave no rating for {res.unscored} {label} answers; left out, not guessed"
            )
    retention = capability_retention(
        {f"{b.name}_accuracy": baseline.get(f"{b.name}_accuracy", float("nan")) for b in bundle.benchmarks}, after
    )
    kl_ref = load_model(kl_reference_dir).model if kl_reference_dir else ref.model
    kl = kl_probe(final.model, kl_ref, final.tokenizer, probe)
    train_texts = [f"{p} {c}" for p, c in bundle.sft] + [
        t for path in trained_on for t in TrainingFile(path=path).texts()
    ]
    decon = decontamination(train_texts, bundle.eval_texts(), n=ngram)

    key = tgt.metric  # NAME_accuracy, or NAME_score for an open set
    comparisons = [compare(key, "after", scored[tgt.name].per_item, "before", start.per_item)]
    control_metrics = None
    if control is not None:
        ctl = train_control(reference_dir, control)
        ctl_scored = score_eval_sets(
            ctl.model, ctl.tokenizer, bundle.eval_sets, max_tokens=max_tokens, is_correct=is_correct, scorers=scorers
        )
        control_metrics = {f"{name}_{'score' if r.open else 'accuracy'}": r.value for name, r in ctl_scored.items()}
        comparisons.append(compare(key, "after", scored[tgt.name].per_item, "control", ctl_scored[tgt.name].per_item))
        log.info(f"control ({control.description}): " + ", ".join(f"{k}={v:.3f}" for k, v in control_metrics.items()))
    grounded = None
    if tgt.items is not None:
        answers = {
            "after": (final.model, final.tokenizer, scored[tgt.name].predictions),
            "before": (ref.model, ref.tokenizer, start.predictions),
        }
        if control is not None:
            answers["control"] = (ctl.model, ctl.tokenizer, ctl_scored[tgt.name].predictions)
        grounded = evaluate_grounded(tgt.items, answers)
        named = {
            label: {f"{tgt.name}_{k}": v for k, v in values.items() if k != "items"}
            for label, values in grounded.metrics.items()
        }
        after.update(named["after"])
        before.update(named["before"])
        if control_metrics is not None:
            control_metrics.update(named["control"])
    hacking = None
    if reward_model_dir is not None and tgt.format != "open":  # hacking is judged against checkable answers
        rm = load_reward_model(reward_model_dir)
        rm_after = rm.score(tgt.prompts, scored[tgt.name].predictions)
        rm_before = rm.score(tgt.prompts, start.predictions)
        rm_cmp = compare("reward_model_score", "after", rm_after, "before", rm_before)
        hacking = reward_hacking(rm_cmp, comparisons[0])
        comparisons.append(rm_cmp)
        if hacking:
            log.warning(f"reward hacking: {rm_cmp.describe()} while {comparisons[0].describe()}")
    chosen_on_target = bundle.dev is None  # no dev split: stage 6 judged the rounds on the target set itself
    said = verdict(
        method,
        tgt.name,
        comparisons[0],
        comparisons[1] if control_metrics else None,
        control.description if control else "",
        chosen_on_target,
        measure=f"mean {tgt.scorer[0].replace('_', ' ')} rating" if tgt.format == "open" else "accuracy",
    )
    if hacking:
        said += (
            " Reward hacking: the learned reward rose while the verifier's accuracy fell (both outside noise); "
            "do not ship this model: retrain the reward model on the policy's own samples, or add the verifier."
        )

    final_dir = out / "final_model"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    if not fuse and is_adapter_dir(final_model_dir):  # one adapter for the whole chain, not a model copy
        root = model_root(final_model_dir)
        merge_adapter_chain(final_model_dir, final_dir, base_reference=base_reference_of(root, final_dir))
        log.info(f"final model: the LoRA stages' adapters merged into one on {root} (fuse_final is off)")
    else:
        save_model(final.model, final_model_dir, final_dir)
    history = (
        pd.concat([pd.read_parquet(p) for p in training_metrics], ignore_index=True)
        if training_metrics
        else pd.DataFrame()
    )
    accuracies = {
        k: {
            "baseline": before.get(k, float("nan")),
            "final": after[k],
            **({"control": control_metrics[k]} if control_metrics and k in control_metrics else {}),
        }
        for k in after
        if k.endswith("_accuracy") or k == key
    }
    title = "held-out accuracy" + (f" and {key} (mean rating)" if tgt.format == "open" else "")
    plots = [
        str(training_curves(history, out / "training_curves.png", title=f"{method} training")),
        str(before_after(accuracies, out / "before_after.png", title=title)),
    ]
    if grounded is not None:
        for label in ("before", "after"):
            ece = grounded.metrics[label]["calibration_error"]
            bins = calibration_bins(grounded.confidences[label], grounded.correct[label])
            title = f"{tgt.name}: {label} ({'stage-1 model' if label == 'before' else 'final model'})"
            plots.append(str(reliability_diagram(bins, out / f"reliability_{label}.png", title=title, ece=ece)))
        comparisons += grounded.comparisons
    comparisons.append(win)
    how = describe_evaluation(bundle.eval_sets, verifier, unscored=scored[tgt.name].unscored + start.unscored)
    metrics = {
        "capability_retention": retention.retention,
        "decontamination": decon.score,
        "kl": kl,
        "target_before": before.get(key, float("nan")),
        "target_after": after[key],
        "win_rate": win.first_value,
        **({"reward_hacking": hacking} if hacking is not None else {}),
        **({"calibration_error": grounded.metrics["after"]["calibration_error"]} if grounded is not None else {}),
    }
    report = {
        **metrics,
        "after": after,
        "before": before,
        "control": control_metrics,
        "comparisons": [c.model_dump() | {"within_noise": c.within_noise} for c in comparisons],
        "evaluation": how,
    }
    # Every target answer with its score, before and after: what the comparisons and the win rate were computed from.
    write_jsonl(
        out / "target_answers.jsonl",
        [
            {"prompt": p, "answer": ref_answer, "before": b, "after": a, "before_score": sb, "after_score": sa}
            for p, ref_answer, b, a, sb, sa in zip(
                tgt.prompts,
                tgt.answers,
                start.predictions,
                scored[tgt.name].predictions,
                _nan_none(start.scores),
                _nan_none(scored[tgt.name].scores),
            )
        ],
    )
    write_json(final_dir / "metrics.json", report)
    write_json(
        out / "evaluation.json",
        {
            **report,
            "retention_per_benchmark": retention.per_benchmark,
            "not_computed": retention.not_computed,
            "contaminated_eval_items": decon.contaminated,
            "verdict": said,
        },
    )
    log.info(f"evaluation: {how}")
    for c in comparisons:
        log.info(c.describe())
    log.info(said)
    return EvaluationResult(
        stage=SHARED_STAGES.name(7),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        metrics=metrics,
        before=before,
        after=after,
        control=control_metrics,
        comparisons=comparisons,
        verdict=said,
        evaluation=how,
        final_model_dir=str(final_dir),
        plots=plots,
        not_computed=retention.not_computed,
    )
