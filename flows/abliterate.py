"""The abliteration workflow: a behaviour, the direction that carries it, the direction projected out of the
weights, and the measured effect, each stage gated.

Stage 1 makes (embedded demo) or takes the model with the behaviour; 2 extracts the direction and chooses its layer
by held-out separation; 3 orthogonalises the residual-stream writers and reloads the model with mlx-lm; 7 measures
the behaviour rate before/after (and with activation steering instead) with intervals, capability retention and KL
on harmless prompts. Nothing is trained after stage 1, so stages 4-6 of the training workflows have no counterpart.
"""

from __future__ import annotations

from prefect import flow

from flows.run import Run
from gates.gate import stops_at_gates
from gates.suites.abliterate import (
    abliteration_evaluation_suite,
    abliteration_suite,
    behaviour_baseline_suite,
    direction_suite,
)
from realign.recipes.abliterate import AbliterationWorkflowConfig
from tasks.abliterate.abliteration import abliterate_model
from tasks.abliterate.behaviour_model import prepare_behaviour_model
from tasks.abliterate.direction_extraction import extract_direction
from tasks.abliterate.evaluation import evaluate_abliteration


@stops_at_gates
@flow(name="abliterate", log_prints=True, persist_result=True)
def abliterate(config: AbliterationWorkflowConfig = AbliterationWorkflowConfig()) -> dict:
    c, data, files = config, config.data, config.data.files()
    limits = c.thresholds.steering.model_dump()
    with Run(
        "abliterate",
        "abliteration",
        c.run_name,
        c.runs_root,
        c.thresholds,
        c.approve_medium,
        c.price_per_hour,
        recipe=c,
    ) as run:
        # 1. The model with the behaviour, and its baseline (behaviour rate, benchmark accuracies).
        s1 = prepare_behaviour_model(c.model, data, c.sft, run.dir, files, limits, c.eval_max_tokens)
        run.gate(s1, behaviour_baseline_suite)
        # 2. The direction: mean activation difference per layer, the layer chosen by held-out separation.
        s2 = run.gate(extract_direction(s1.model_dir, data, c.direction, run.dir, files, limits), direction_suite)
        # 3. Abliteration: the direction projected out of the writers; the model reloaded and checked.
        s3 = abliterate_model(s1.model_dir, s2.directions_path, c.abliteration, run.dir, limits)
        run.gate(s3, abliteration_suite)
        # 7. Evaluation: behaviour rate before/after (and steered), retention, KL on harmless prompts.
        s7 = evaluate_abliteration(
            s1.model_dir, s3.model_dir, s2.directions_path, data, c.steering, run.dir, files, limits, c.eval_max_tokens
        )
        return run.finish(s7, abliteration_evaluation_suite, direction_layer=s2.chosen_layer)
