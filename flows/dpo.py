"""The DPO workflow: seven gated stages (SPEC.md), top to bottom.

Each stage is a cached task that writes RUN_DIR/NN_stage/ and is followed by its gate.
Stages 2-5 repeat on-policy while the target metric improves (stage 6).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from gates.gate import GateFailed, gate
from hardware.profiles import load_calibration
from realign.recipes.dpo import DPOWorkflowConfig
from tasks.common import stage_dir, stage_name
from tasks.dpo_optimization import optimize_dpo
from tasks.evaluation import evaluate_run
from tasks.iterative_training import decide, record_rounds, score_round
from tasks.model_initialization import initialize_reference
from tasks.preference_data import generate_pairs
from tasks.preference_modeling import model_preferences
from tasks.sft_preparation import prepare_sft
from tasks.summary import machine_description, write_summary


def one_row(**metrics) -> pd.DataFrame:
    return pd.DataFrame({k: [v] for k, v in metrics.items()})


def resolve_run_dir(config: DPOWorkflowConfig) -> str:
    """RUNS_ROOT/RUN_NAME; a retried flow run keeps its name, so it finds its earlier stage outputs."""
    name = config.run_name or flow_run.get_name() or time.strftime("dpo-%Y%m%d-%H%M%S")
    path = Path(config.runs_root) / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path.resolve())


@flow(name="dpo", log_prints=True, persist_result=True)
def dpo(config: DPOWorkflowConfig = DPOWorkflowConfig()) -> dict:
    log = get_run_logger()
    t0 = time.perf_counter()
    run_dir = resolve_run_dir(config)
    th, approve = config.thresholds, config.approve_medium
    tiers: dict[str, str] = {}
    log.info(f"run directory: {run_dir}")

    # 1. SFT preparation: the stage-1 model and its baseline.
    s1 = prepare_sft(config.model, config.data, config.sft, run_dir, config.eval_max_tokens)
    benchmarks = [k for k in s1.baseline if k.endswith("_accuracy")]
    tiers[stage_name(1)] = gate(stage_name(1), {"sft_baseline": one_row(**s1.baseline)}, th, out_dir=stage_dir(run_dir, 1),
                                approve_medium=approve, suite_kwargs={"sft_baseline": {"benchmarks": benchmarks}}).tier
    baseline_dev = score_round(config.data, s1.model_dir, 0, config.eval_max_tokens)

    history, decisions, pair_results, dpo_results, stage_seconds = [], [], [], [], [s1.seconds]
    pairs_cfg, batch_source = config.pairs, "recipe"
    calibration = load_calibration() if config.pairs.use_calibration else None
    if calibration:
        # Measured on this machine beats the recipe's guess (the chosen batch is part of stage 2's cache key).
        gen = config.pairs.generation.model_copy(update={"batch_size": int(calibration["chosen_batch"])})
        pairs_cfg = config.pairs.model_copy(update={"generation": gen})
        batch_source = f"calibrated on this machine ({calibration.get('profile', 'generic')} profile)"
        log.info(f"generation batch size {gen.batch_size}: {batch_source}")
    model_dir = s1.model_dir
    for rnd in range(1, config.iterations.max_rounds + 1):
        sfx = "" if rnd == 1 else f"-round{rnd}"
        # 2. Preference data generation, on-policy from the current model.
        s2 = generate_pairs(pairs_cfg, config.data, th.preference.min_preference_gap, th.evaluation.decontamination_ngram,
                            model_dir, run_dir, rnd)
        st = s2.stats
        tiers[stage_name(2) + sfx] = gate(
            stage_name(2) + sfx,
            {"preference_pairs": pd.read_parquet(s2.pairs_path),
             "preference_metrics": one_row(agreement_rate=st["agreement_rate"], decontamination=st["decontamination"])},
            th, out_dir=Path(s2.pairs_path).parent, approve_medium=approve).tier
        # 3. Model initialization: frozen reference, cached log-probs, KL at init.
        s3 = initialize_reference(model_dir, s2.pairs_path, config.dpo.train, run_dir, rnd)
        tiers[stage_name(3) + sfx] = gate(
            stage_name(3) + sfx,
            {"reference": one_row(reference_present=s3.reference_present, ref_logps_finite_fraction=s3.ref_logps_finite_fraction,
                                  init_kl=s3.init_kl)},
            th, out_dir=Path(s3.ref_logps_path).parent, approve_medium=approve).tier
        # 4. Preference modeling: is the signal learnable?
        s4 = model_preferences(config.reward_model, model_dir, s2.pairs_path, run_dir, config.dpo.train.seed, rnd)
        tiers[stage_name(4) + sfx] = gate(stage_name(4) + sfx, {"reward_model": one_row(accuracy=s4.accuracy)}, th,
                                          out_dir=Path(s4.head_path).parent, approve_medium=approve).tier
        # 5. DPO optimization.
        s5 = optimize_dpo(config.dpo, model_dir, s2.pairs_path, s3.ref_logps_path, run_dir, rnd)
        tiers[stage_name(5) + sfx] = gate(
            stage_name(5) + sfx,
            {"dpo_optimization": one_row(kl=s5.kl, reward_accuracy=s5.reward_accuracy, reward_margin=s5.reward_margin)},
            th, out_dir=Path(s5.metrics_path).parent, approve_medium=approve).tier
        pair_results.append(s2)
        dpo_results.append(s5)
        stage_seconds += [s2.seconds, s3.seconds, s4.seconds, s5.seconds]
        # 6. Iterative training: measure, decide.
        history.append(score_round(config.data, s5.model_dir, rnd, config.eval_max_tokens, s1.model_dir,
                                   pair_results[0].pairs_path))
        decision = ("stop_kl_limit", s5.reason) if s5.stopped == "kl_limit" else decide(
            history, baseline_dev.target_metric, config.iterations.epsilon, config.iterations.max_rounds, th.optimization.max_kl)
        decisions.append(decision)
        log.info(f"round {rnd}: {decision[0]} ({decision[1]})")
        model_dir = s5.model_dir
        if decision[0] != "continue":
            break
    s6 = record_rounds(history, decisions, baseline_dev.target_metric, run_dir, s1.model_dir, th.optimization.max_kl)
    tiers[stage_name(6)] = gate(stage_name(6), {"iteration": pd.DataFrame(s6.rounds)}, th, out_dir=stage_dir(run_dir, 6),
                                approve_medium=approve).tier

    # 7. Evaluation & monitoring of the best round's model.
    s7 = evaluate_run(config.data, config.dpo, s1.model_dir, s6.best_model_dir, s1.baseline,
                      [p.pairs_path for p in pair_results], [d.metrics_path for d in dpo_results],
                      sum(d.steps for d in dpo_results), run_dir, config.control, config.eval_max_tokens,
                      th.evaluation.decontamination_ngram)
    m = s7.metrics

    def summary(failure: str | None = None) -> dict:
        wall = time.perf_counter() - t0
        # Compute time of every stage, counting cached stages at what they cost when they ran, so a
        # retried run reports throughput and cost for all the work, not just the part it redid.
        compute = sum(stage_seconds) + s7.seconds
        examples = sum(p.completions for p in pair_results)
        cost = config.price_per_hour * compute / 3600 / examples if config.price_per_hour is not None and examples else None
        order = {"HIGH": 0, "MEDIUM": 1, "REJECT": 2}
        return {
            "data_type": "DPO",
            "workflow": "dpo",
            "tier": max(tiers.values(), key=order.__getitem__),
            "failure": failure,
            "examples_processed": examples,
            "pairs": sum(p.stats["pairs"] for p in pair_results),
            "rounds": len(history),
            "best_round": s6.best_round,
            "machine": machine_description(),
            "generation_batch_size": pairs_cfg.generation.batch_size,
            "batch_size_source": batch_source,
            "dpo_batch_size": config.dpo.train.batch_size,
            "shards": [r for p in pair_results for r in p.shards],
            "wall_time_s": round(wall, 1),
            "compute_time_s": round(compute, 1),
            "throughput_examples_per_s": round(examples / compute, 3) if compute else None,
            "cost_per_example": cost,
            "cost_note": None if cost is not None else "price_per_hour not configured: cost not computed",
            "verdict": s7.verdict,
            "results": {**{f"before/{k}": v for k, v in s7.before.items()}, **{f"after/{k}": v for k, v in s7.after.items()},
                        **({f"control/{k}": v for k, v in s7.control.items()} if s7.control else {}), **m},
            "gate_tiers": tiers,
            "run_dir": run_dir,
            "final_model": s7.final_model_dir,
            "train_jsonl": [p.train_jsonl for p in pair_results],
            "plots": s7.plots,
        }

    try:
        tiers[stage_name(7)] = gate(stage_name(7), {"evaluation": one_row(capability_retention=m["capability_retention"],
                                                                            decontamination=m["decontamination"], kl=m["kl"])},
                                    th, out_dir=stage_dir(run_dir, 7), approve_medium=approve).tier
    except GateFailed as exc:
        # The run fails, but what it measured is still reported: summary.json says what was made and why it was rejected.
        tiers[stage_name(7)] = "REJECT"
        write_summary(run_dir, summary(str(exc)))
        raise
    return write_summary(run_dir, summary())
