"""The anti-hallucination workflow: SPEC.md's seven gated stages, top to bottom.

A model that answers from the given sources, cites them, says "I don't know" when they do not hold the answer, and
whose confidence matches its accuracy. Stage 2 collects grounded questions with checked citations, stage 3 trains
cited answers and abstentions, stage 4 measures hallucinations on held-out questions and turns the model's own
samples into preference pairs, stage 5 optimises on them. Stage 6 repeats 4-5; stage 7 compares with continued SFT
on the chosen answers and tiers the final calibration error.
"""

from __future__ import annotations

from prefect import flow

from flows.run import Run
from gates.gate import stops_at_gates
from gates.suites.antihallucination import (
    calibration_suite,
    citation_training_suite,
    factuality_data_suite,
    grounding_optimization_suite,
    hallucination_suite,
)
from gates.suites.shared import evaluation_suite, iteration_suite, sft_baseline_suite
from realign.data.datasets import TrainingFile
from realign.eval.control import ControlArm
from realign.recipes.antihallucination import AntiHallucinationWorkflowConfig
from tasks.antihallucination.citation_training import train_citations
from tasks.antihallucination.factuality_data_collection import collect_factuality_data
from tasks.antihallucination.grounding_optimization import optimize_grounding
from tasks.antihallucination.hallucination_detection import detect_hallucinations
from tasks.shared.evaluation import evaluate_run
from tasks.shared.iterative_training import assess_round, measure_baseline, record_rounds
from tasks.shared.sft_preparation import prepare_sft

JUDGE = "grounded"  # stages 1, 6 and 7: the right answer (citations aside) or the abstention where one is due


@stops_at_gates
@flow(name="antihallucination", log_prints=True, persist_result=True)
def antihallucination(config: AntiHallucinationWorkflowConfig = AntiHallucinationWorkflowConfig()) -> dict:
    c, th, data, tokens = config, config.thresholds, config.data, config.eval_max_tokens
    max_kl, ngram = th.optimization.max_kl, th.evaluation.decontamination_ngram
    with Run(
        "antihallucination",
        "antihallucination",
        c.run_name,
        c.runs_root,
        th,
        c.approve_medium,
        c.price_per_hour,
        recipe=c,
    ) as run:
        # 1. SFT preparation: the stage-1 model, its benchmarks and its baseline hallucination rate and calibration.
        s1 = run.gate(prepare_sft(c.model, data, c.sft, run.dir, tokens, JUDGE), sft_baseline_suite)
        start = s1.model_dir
        # 2. Factuality data collection: grounded questions, answerable and unanswerable, citations checked.
        s2 = run.gate(collect_factuality_data(data, run.dir), factuality_data_suite)
        # 3. Citation training: SFT on the cited answers and abstentions; factuality on held-out questions.
        s3 = run.gate(train_citations(c.citation, data, s2.sft_path, start, run.dir, tokens), citation_training_suite)
        # Round 0 of stage 6 is the citation-trained model: the rounds must improve on it.
        baseline = measure_baseline(data, s3.model_dir, tokens, JUDGE, after=s3.stage)

        model_dir, rounds, first, steps, chosen = s3.model_dir, [], None, 0, None
        for rnd in range(1, c.iterations.max_rounds + 1):
            # 4. Hallucination detection: the rate on held-out questions; pairs from the model's own samples.
            s4 = run.gate(
                detect_hallucinations(c.detection, data, s2.items_path, model_dir, run.dir, rnd, tokens),
                hallucination_suite,
            )
            first = first or s4
            # 5. Optimisation on those pairs (the DPO family): KL, factuality and hallucinations before/after.
            s5 = run.gate(
                optimize_grounding(c.optimization, data, s4.pairs_path, model_dir, run.dir, rnd, tokens),
                grounding_optimization_suite,
            )
            steps += s5.steps
            chosen = chosen or (s4.pairs_path if s5.steps else None)  # the control's data: the first pairs trained on
            # 6. Iterative training: measure the round, decide whether to go on (KL on the first round's probe texts).
            score = assess_round(
                data,
                s5.model_dir,
                rnd,
                rounds,
                baseline,
                c.iterations,
                s3.model_dir,
                first.probe,
                max_kl,
                s5.reason,
                tokens,
                JUDGE,
            )
            rounds.append(score)
            model_dir = s5.model_dir
            if score.decision != "continue":
                break
        s6 = run.gate(record_rounds(rounds, baseline, run.dir, s3.model_dir, max_kl), iteration_suite)

        # 7. Evaluation & monitoring against the stage-1 model (KL from the citation-trained model, the reference of
        # the preference optimisation), and a control: the citation-trained model with continued SFT on the chosen
        # answers for as many steps as stage 5 took.
        control = (
            ControlArm(
                data=TrainingFile(path=chosen, format="dpo"),
                train=c.optimization.train,
                steps=steps,
                start_dir=s3.model_dir,
                description="continued SFT of the citation-trained model on the chosen answers",
            )
            if c.control and chosen
            else None
        )
        if c.control and control is None:
            print("control arm not run: stage 5 took no training step (no preference pairs)")
        s7 = evaluate_run(
            data=data,
            reference_dir=start,
            kl_reference_dir=s3.model_dir,
            final_model_dir=s6.best_model_dir,
            baseline=s1.baseline,
            probe=first.probe,
            trained_on=[s2.sft_path, *run.totals["train_jsonl"]],
            training_metrics=run.totals["training_metrics"],
            run_dir=run.dir,
            control=control,
            method="citation training + preference optimisation",
            max_tokens=tokens,
            ngram=ngram,
            fuse=c.fuse_final,
            verifier=JUDGE,
        )
        sizes = {
            "answers_judged_by": "grounded answers: the right answer (citations aside) or the abstention",
            "citation_sft_batch_size": c.citation.train.batch_size,
            "preference_batch_size": c.optimization.train.batch_size,
            "generation_batch_size": c.detection.generation.batch_size,
        }
        return run.finish(s7, evaluation_suite, calibration_suite, **sizes, batch_size_source="recipe")
