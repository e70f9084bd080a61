"""Stage 7: the behaviour rate of the stage-1 model, the abliterated model and the steered stage-1 model on held-out
prompts, paired, with 95% bootstrap intervals; capability retention on the benchmarks; KL on the probe texts (the
embedded demo's harmless prompts; with your files, the benchmark rows: BehaviourSets.probe_label says which)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import write_jsonl
from realign.eval.metrics import capability_retention
from realign.eval.verdict import compare
from realign.io import atomic_dir, write_json
from realign.model.load import load_model
from realign.recipes.abliterate import BehaviourDataConfig, SteeringEvalConfig
from realign.steer.behaviour import load_behaviour
from realign.steer.directions import load_directions
from realign.steer.measure import harmless_kl, measure
from realign.steer.steering import SteeringVector
from tasks.abliterate import ABLITERATE
from tasks.cache import stage_task
from tasks.shared.evaluation import EvaluationResult
from tasks.stages import one_row


class AbliterationEvaluationResult(EvaluationResult):
    limits: dict
    kl_on: str = "harmless prompts"  # what the KL was measured on (BehaviourSets.probe_label)

    def tables(self) -> dict[str, pd.DataFrame]:
        m = self.metrics
        return {
            "abliteration_evaluation": one_row(
                behaviour_rate_after=m["behaviour_rate_after"],
                behaviour_change_ci_high=m["behaviour_change_ci_high"],
                capability_retention=m["capability_retention"],
                kl=m["kl"],
            )
        }

    def suite_kwargs(self) -> dict[str, dict]:
        return {"abliteration_evaluation": {"limits": self.limits, "kl_on": self.kl_on}}


@stage_task("7-evaluation")
def evaluate_abliteration(
    reference_dir: str,
    model_dir: str,
    directions_path: str,
    data: BehaviourDataConfig,
    steering: SteeringEvalConfig,
    run_dir: str,
    files: list[str],
    limits: dict,
    max_tokens: int = 12,
) -> AbliterationEvaluationResult:
    """reference_dir: the stage-1 model; model_dir: the abliterated one; directions_path: stage 2's directions."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = ABLITERATE.dir(run_dir, 7)
    sets = load_behaviour(data)
    prefixes = data.behaviour_prefixes
    ref, abl = load_model(reference_dir), load_model(model_dir)
    found = load_directions(directions_path)
    before = measure(ref.model, ref.tokenizer, sets, prefixes, max_tokens=max_tokens)
    after = measure(abl.model, abl.tokenizer, sets, prefixes, max_tokens=max_tokens)
    kl = harmless_kl(abl.model, ref.model, ref.tokenizer, sets.harmless_probe)

    comparisons = [compare("behaviour_rate", "after", after.behaviour, "before", before.behaviour)]
    comparisons += [
        compare(f"{name}_accuracy", "after", after.benchmarks[name], "before", before.benchmarks[name])
        for name in sets.benchmarks
    ]
    retention = capability_retention(before.accuracies(), after.accuracies())
    metrics = {
        "behaviour_rate_before": before.behaviour_rate,
        "behaviour_rate_after": after.behaviour_rate,
        "behaviour_change_ci_high": comparisons[0].ci_high,
        "capability_retention": retention.retention,
        "kl": kl,
    }
    steered_answers = None
    if steering.scale != 0:
        layer = found.chosen_layer
        strength = steering.scale * found.separation[layer]["norm"]  # in units of the mean difference
        vectors = [SteeringVector(found.direction, strength, layer)]
        st = measure(ref.model, ref.tokenizer, sets, prefixes, max_tokens=max_tokens, steering=vectors)
        steered_answers = st.answers
        comparisons.append(compare("behaviour_rate", "steered", st.behaviour, "before", before.behaviour))
        comparisons += [
            compare(f"{name}_accuracy", "steered", st.benchmarks[name], "before", before.benchmarks[name])
            for name in sets.benchmarks
        ]
        steered_retention = capability_retention(before.accuracies(), st.accuracies())
        metrics.update(
            {
                "steering_layer": layer,
                "steering_strength": strength,
                "behaviour_rate_steered": st.behaviour_rate,
                "capability_retention_steered": steered_retention.retention,
                "kl_steered": harmless_kl(ref.model, ref.model, ref.tokenizer, sets.harmless_probe, steering=vectors),
            }
        )
    b = comparisons[0]
    said = (
        f"abliteration (layer {found.chosen_layer}'s direction projected out of the weights): behaviour rate "
        f"{b.second_value:.3f} -> {b.first_value:.3f} ({b.difference:+.3f}, 95% CI [{b.ci_low:+.3f}, {b.ci_high:+.3f}]"
        + ("; within noise)" if b.within_noise else ")")
        + f"; capability retention {retention.retention:.3f}; KL on {sets.probe_label} {kl:.4f} nats"
    )
    if "behaviour_rate_steered" in metrics:
        said += (
            f". Steering instead ({metrics['steering_strength']:+.3g} at layer {metrics['steering_layer']}, no weights "
            f"changed): behaviour rate {metrics['behaviour_rate_steered']:.3f}, retention "
            f"{metrics['capability_retention_steered']:.3f}, KL {metrics['kl_steered']:.4f}"
        )
    rows = [
        {"prompt": p, "before": a, "after": z, **({"steered": steered_answers[i]} if steered_answers else {})}
        for i, (p, a, z) in enumerate(zip(sets.eval_harmful, before.answers, after.answers))
    ]
    write_jsonl(out / "behaviour_answers.jsonl", rows)
    report = {
        **metrics,
        "before": {"behaviour_rate": before.behaviour_rate, **before.accuracies()},
        "after": {"behaviour_rate": after.behaviour_rate, **after.accuracies()},
        "retention_per_benchmark": retention.per_benchmark,
        "not_computed": retention.not_computed,
        "comparisons": [c.model_dump() | {"within_noise": c.within_noise, "text": c.describe()} for c in comparisons],
        "verdict": said,
    }
    write_json(out / "evaluation.json", report)
    # The final model is a copy in this stage's directory, as every workflow's stage 7 writes it: the run's model card
    # (README.md) goes beside it, and stage 3's directory, an input of this stage, stays as stage 3 wrote it.
    final_dir = out / "final_model"
    with atomic_dir(final_dir) as tmp:
        for f in Path(model_dir).iterdir():
            if f.is_file() and f.name != "README.md":
                shutil.copy2(f, tmp / f.name)
        write_json(tmp / "metrics.json", report)
    for c in comparisons:
        log.info(c.describe())
    log.info(said)
    how = (
        f"greedy answers to {len(sets.eval_harmful)} held-out prompts showing the behaviour (an answer starting with "
        f"{prefixes[0]!r}{' or another prefix' if len(prefixes) > 1 else ''} shows it) and to "
        + ", ".join(f"{n} ({len(p)} items, exact match)" for n, (p, _) in sets.benchmarks.items())
        + f"; KL over the answer tokens of {len(sets.harmless_probe)} {sets.probe_label} (with their answers); 95% "
        "paired-bootstrap intervals"
    )
    return AbliterationEvaluationResult(
        stage=ABLITERATE.name(7),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        metrics=metrics,
        before=report["before"],
        after=report["after"],
        control=None,
        comparisons=comparisons,
        verdict=said,
        evaluation=how,
        final_model_dir=str(final_dir),
        plots=[],
        not_computed=retention.not_computed,
        limits=limits,
        kl_on=sets.probe_label,
    )
