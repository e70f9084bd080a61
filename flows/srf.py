"""The SRF workflow (Supervised Reward Fine-tuning): SPEC.md's seven gated stages, top to bottom.

A reward model is trained on preference pairs (stages 2-3), checked on pairs it never saw (4), and is then the
reward of on-policy RL under a KL constraint and an entropy range (5). Stage 6 repeats RL from the newest model,
with a fresh reward model on the policy's own samples when configured; stage 7 also flags reward hacking.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.run import Run
from gates.gate import stops_at_gates
from gates.suites.dpo import preference_metrics_suite, preference_pairs_suite
from gates.suites.shared import evaluation_suite, iteration_suite, sft_baseline_suite
from gates.suites.srf import reward_model_training_suite, reward_model_validation_suite, rl_optimization_suite
from realign.eval.control import ControlArm
from realign.recipes.srf import SRFWorkflowConfig
from tasks.dpo.preference_data import calibrated, generate_pairs
from tasks.shared.evaluation import evaluate_run
from tasks.shared.iterative_training import assess_round, measure_baseline, record_rounds
from tasks.shared.sft_preparation import prepare_sft
from tasks.srf.reward_model_training import train_reward_model
from tasks.srf.reward_model_validation import validate_reward_model
from tasks.srf.rl_fine_tuning import optimize_rl


@stops_at_gates
@flow(name="srf", log_prints=True, persist_result=True)
def srf(config: SRFWorkflowConfig = SRFWorkflowConfig()) -> dict:
    c, th, data, tokens = config, config.thresholds, config.data, config.eval_max_tokens
    min_gap, max_kl, ngram = (
        th.preference.min_preference_gap,
        th.optimization.max_kl,
        th.evaluation.decontamination_ngram,
    )
    with Run("srf", "SRF", c.run_name, c.runs_root, th, c.approve_medium, c.price_per_hour, recipe=c) as run:
        # 1. SFT preparation: the stage-1 model and its baseline (round 0 of stage 6's measurements).
        s1 = run.gate(prepare_sft(c.model, data, c.sft, run.dir, tokens), sft_baseline_suite)
        start, baseline = s1.model_dir, measure_baseline(data, s1.model_dir, tokens)
        pairs_cfg, batch_source = calibrated(c.pairs, start)

        model_dir, rounds, first, reward_model, rewarded_by = start, [], None, None, {}
        for rnd in range(1, c.iterations.max_rounds + 1):
            if reward_model is None or c.iterations.refresh_reward_model:
                # 2. Preference data generation, from the current model (the DPO workflow's stage).
                s2 = generate_pairs(pairs_cfg, data, min_gap, ngram, model_dir, run.dir, rnd)
                run.gate(s2, preference_pairs_suite, preference_metrics_suite)
                first = first or s2
                # 3. Reward model training on the pairs' training split.
                s3 = run.gate(
                    train_reward_model(c.reward_model, model_dir, s2.pairs_path, run.dir, rnd),
                    reward_model_training_suite,
                )
                # 4. Reward model validation on the held-out pairs, and against the verifier where answers are known.
                completions = str(Path(s2.out_dir) / "completions.jsonl")
                s4 = validate_reward_model(
                    s3.reward_model_dir,
                    s2.pairs_path,
                    s3.split_path,
                    completions,
                    data,
                    run.dir,
                    c.reward_model.correlation_samples,
                    rnd,
                )
                run.gate(s4, reward_model_validation_suite)
                reward_model = s3.reward_model_dir
            # 5. RL fine-tuning against the learned reward.
            s5 = run.gate(optimize_rl(c.rl, model_dir, reward_model, data, run.dir, rnd), rl_optimization_suite)
            rewarded_by[rnd] = reward_model
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
            ControlArm(data=first.train_file, train=c.rl.rl.train, steps=run.totals["training_steps"])
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
            method="reward model + RL",
            max_tokens=tokens,
            ngram=ngram,
            fuse=c.fuse_final,
            # the reward model the chosen round was trained against (the first one when stage 1's model is kept)
            reward_model_dir=rewarded_by.get(s6.best_round, rewarded_by[1]),
        )
        sizes = {
            "generation_batch_size": pairs_cfg.generation.batch_size,
            "rl_prompts_per_step": c.rl.rl.train.batch_size,
            "rl_num_generations": c.rl.rl.num_generations,
            "reward_model_batch_size": c.reward_model.training.train.batch_size,
        }
        return run.finish(s7, evaluation_suite, **sizes, batch_size_source=batch_source)
