"""The RLVR workflow (reinforcement learning with verifiable rewards): SPEC.md's seven gated stages, top to bottom.

Everything hinges on the verifier: stage 2 keeps the tasks it can check (it accepts the reference and rejects
known-wrong answers), stage 3 gates its false-positive rate, stage 4 samples and grades answers from the current
model (coverage: tasks with both a right and a wrong sample), stage 5 runs GRPO on the verifier's reward. Stage 6
repeats 4-5 from the newest model; stage 7 compares with continued SFT on the verified-correct samples.
"""

from __future__ import annotations

from prefect import flow

from flows.run import Run
from gates.gate import stops_at_gates
from gates.suites.rlvr import (
    rlvr_optimization_suite,
    verifiable_data_suite,
    verifiable_tasks_suite,
    verifier_suite,
)
from gates.suites.shared import evaluation_suite, iteration_suite, sft_baseline_suite
from realign.eval.control import ControlArm
from realign.recipes.rlvr import RLVRWorkflowConfig
from tasks.rlvr.automated_verification import verify_verifier
from tasks.rlvr.rlvr_optimization import optimize_rlvr
from tasks.rlvr.verifiable_data_generation import generate_verifiable_data
from tasks.rlvr.verifiable_task_design import design_tasks
from tasks.shared.evaluation import evaluate_run
from tasks.shared.iterative_training import assess_round, measure_baseline, record_rounds
from tasks.shared.sft_preparation import prepare_sft


@stops_at_gates
@flow(name="rlvr", log_prints=True, persist_result=True)
def rlvr(config: RLVRWorkflowConfig = RLVRWorkflowConfig()) -> dict:
    c, th, data, tokens = config, config.thresholds, config.data, config.eval_max_tokens
    max_kl, ngram = th.optimization.max_kl, th.evaluation.decontamination_ngram
    with Run("rlvr", "RLVR", c.run_name, c.runs_root, th, c.approve_medium, c.price_per_hour, recipe=c) as run:
        # 1. SFT preparation: the stage-1 model and its baseline (round 0 of stage 6's measurements).
        # Stages 1, 6 and 7 judge answers with the workflow's verifier, the criterion RL optimises.
        kind = c.verifier.kind
        s1 = run.gate(prepare_sft(c.model, data, c.sft, run.dir, tokens, kind), sft_baseline_suite)
        start, baseline = s1.model_dir, measure_baseline(data, s1.model_dir, tokens, kind)
        # 2. Verifiable task design: the tasks whose answers the verifier can check.
        s2 = run.gate(design_tasks(c.verifier, data, run.dir), verifiable_tasks_suite)
        # 3. Automated verification: the verifier's false positives on known-wrong answers (and false negatives).
        run.gate(verify_verifier(c.verifier, s2.tasks_path, run.dir), verifier_suite)

        model_dir, rounds, first, verified = start, [], None, None
        for rnd in range(1, c.iterations.max_rounds + 1):
            # 4. Verifiable data generation: samples from the current model, graded; coverage per category.
            s4 = generate_verifiable_data(c.samples, c.verifier, s2.tasks_path, model_dir, run.dir, rnd)
            run.gate(s4, verifiable_data_suite)
            first = first or s4
            verified = verified or s4.verified_sft  # the control's data: the first round with verified samples
            # 5. RLVR optimisation: GRPO on the verifier's reward.
            s5 = optimize_rlvr(
                c.rl, c.verifier, s2.tasks_path, model_dir, data, run.dir, rnd, tokens, c.samples.max_tasks
            )
            run.gate(s5, rlvr_optimization_suite)
            # 6. Iterative training: measure the round, decide whether to go on.
            score = assess_round(
                data,
                s5.model_dir,
                rnd,
                rounds,
                baseline,
                c.iterations,
                start,
                first.probe,
                max_kl,
                s5.reason,
                tokens,
                kind,
            )
            rounds.append(score)
            model_dir = s5.model_dir
            if score.decision != "continue":
                break
        s6 = run.gate(record_rounds(rounds, baseline, run.dir, start, max_kl), iteration_suite)

        # 7. Evaluation & monitoring of the best round's model, against continued SFT on the verified samples.
        control = (
            ControlArm(
                data=verified,
                train=c.rl.rl.train,
                steps=run.totals["training_steps"],
                description="continued SFT on the verified-correct samples",
            )
            if c.control and verified is not None and run.totals["training_steps"]
            else None
        )
        if c.control and control is None:
            print("control arm not run: no verified-correct sample to train it on, or no RL step was taken")
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
            method="RLVR (GRPO on the verifier's reward)",
            max_tokens=tokens,
            ngram=ngram,
            fuse=c.fuse_final,
            verifier=kind,
        )
        sizes = {
            "verifier": kind,
            "answers_judged_by": f"the {kind} verifier (stages 1, 5, 6, 7)",
            "generation_batch_size": c.samples.generation.batch_size,
            "rl_prompts_per_step": c.rl.rl.train.batch_size,
            "rl_num_generations": c.rl.rl.num_generations,
        }
        return run.finish(s7, evaluation_suite, **sizes, batch_size_source="recipe")
