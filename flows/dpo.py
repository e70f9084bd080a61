"""The DPO workflow: SPEC.md's seven gated stages, top to bottom.

Each stage is a cached task that writes RUN_DIR/NN_stage/ and is followed by its gate; stages 2-5
repeat on-policy from the newest model while the target metric improves (stage 6).
"""

from __future__ import annotations

from prefect import flow

from flows.run import Run
from gates.gate import stops_at_gates
from gates.suites.dpo import (
    dpo_optimization_suite,
    preference_metrics_suite,
    preference_pairs_suite,
    reference_suite,
    reward_model_suite,
)
from gates.suites.shared import evaluation_suite, iteration_suite, sft_baseline_suite
from realign.eval.control import ControlArm
from realign.recipes.dpo import DPOWorkflowConfig
from tasks.dpo.dpo_optimization import optimize_dpo
from tasks.dpo.model_initialization import initialize_reference
from tasks.dpo.preference_data import calibrated, generate_pairs
from tasks.dpo.preference_modeling import model_preferences
from tasks.shared.evaluation import evaluate_run
from tasks.shared.iterative_training import assess_round, measure_baseline, record_rounds
from tasks.shared.sft_preparation import prepare_sft


@stops_at_gates
@flow(name="dpo", log_prints=True, persist_result=True)
def dpo(config: DPOWorkflowConfig = DPOWorkflowConfig()) -> dict:
    c, th, data, tokens = config, config.thresholds, config.data, config.eval_max_tokens
    min_gap, max_kl = th.preference.min_preference_gap, th.optimization.max_kl
    ngram = th.evaluation.decontamination_ngram
    with Run("dpo", "DPO", c.run_name, c.runs_root, th, c.approve_medium, c.price_per_hour, recipe=c) as run:
        # 1. SFT preparation: the stage-1 model and its baseline (round 0 of stage 6's measurements).
        s1 = run.gate(prepare_sft(c.model, data, c.sft, run.dir, tokens), sft_baseline_suite)
        start, baseline = s1.model_dir, measure_baseline(data, s1.model_dir, tokens)
        pairs_cfg, batch_source = calibrated(c.pairs, start)

        model_dir, rounds, first = start, [], None
        for rnd in range(1, c.iterations.max_rounds + 1):
            # 2. Preference data generation, on-policy from the current model.
            s2 = generate_pairs(pairs_cfg, data, min_gap, ngram, model_dir, run.dir, rnd)
            run.gate(s2, preference_pairs_suite, preference_metrics_suite)
            first = first or s2
            # 3. Model initialization: frozen reference, cached log-probs, KL at init.
            s3 = run.gate(initialize_reference(model_dir, s2.pairs_path, c.dpo, run.dir, rnd), reference_suite)
            # 4. Preference modeling: is the signal learnable?
            s4 = model_preferences(c.reward_model, model_dir, s2.pairs_path, run.dir, c.dpo.train.seed, rnd)
            run.gate(s4, reward_model_suite)
            # 5. DPO optimization.
            s5 = optimize_dpo(c.dpo, model_dir, s2.pairs_path, s3.ref_logps_path, run.dir, rnd)
            run.gate(s5, dpo_optimization_suite)
            # 6. Iterative training: measure the round, decide whether to go on.
            score = assess_round(
                data, s5.model_dir, rnd, rounds, baseline, c.iterations, start, first.probe, max_kl, s5.reason, tokens
            )
            rounds.append(score)
            model_dir = s5.model_dir
            if score.decision != "continue":
                break
        s6 = run.gate(record_rounds(rounds, baseline, run.dir, start, max_kl), iteration_suite)

        # 7. Evaluation & monitoring of the best round's model, against continued SFT for as many steps.
        control = (
            ControlArm(data=first.train_file, train=c.dpo.train, steps=run.totals["training_steps"])
            if c.control
            else None
        )
        s7 = evaluate_run(
            data=data,
            reference_dir=start,
            final_model_dir=s6.best_model_dir,
            baseline=s1.baseline,
            probe=first.probe,
            trained_on=run.totals["train_jsonl"],
            training_metrics=run.totals["training_metrics"],
            run_dir=run.dir,
            control=control,
            method="preference optimisation",
            max_tokens=tokens,
            ngram=ngram,
            fuse=c.fuse_final,
        )
        batches = {"generation_batch_size": pairs_cfg.generation.batch_size, "dpo_batch_size": c.dpo.train.batch_size}
        return run.finish(s7, evaluation_suite, **batches, batch_size_source=batch_source)
