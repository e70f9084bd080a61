"""Stage 2: the direction that carries the behaviour, per layer, and the layer chosen by held-out separation."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.io import write_json
from realign.model.load import load_model
from realign.recipes.abliterate import BehaviourDataConfig, DirectionStageConfig
from realign.steer.behaviour import load_behaviour
from realign.steer.directions import directions_from_prompts, save_directions
from tasks.abliterate import ABLITERATE
from tasks.cache import stage_task
from tasks.stages import StageResult, one_row


class DirectionResult(StageResult):
    """directions_path: the safetensors of every layer's unit direction; separation: layer -> d_prime, accuracy,
    norm (of the mean difference); chosen_layer."""

    directions_path: str
    chosen_layer: int
    separation: dict[int, dict[str, float]]
    prompts: int
    limits: dict

    def tables(self) -> dict[str, pd.DataFrame]:
        s = self.separation[self.chosen_layer]
        return {"direction": one_row(layer=self.chosen_layer, heldout_accuracy=s["accuracy"], d_prime=s["d_prime"])}

    def suite_kwargs(self) -> dict[str, dict]:
        return {"direction": {"limits": self.limits}}

    def summary(self) -> dict:
        s = self.separation[self.chosen_layer]
        return {
            "direction_layer": self.chosen_layer,
            "direction_heldout_accuracy": s["accuracy"],
            "direction_d_prime": s["d_prime"],
        }


@stage_task("2-direction-extraction")
def extract_direction(
    model_dir: str, data: BehaviourDataConfig, cfg: DirectionStageConfig, run_dir: str, files: list[str], limits: dict
) -> DirectionResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = ABLITERATE.dir(run_dir, 2)
    lm = load_model(model_dir)
    sets = load_behaviour(data)
    found = directions_from_prompts(
        lm.model,
        lm.tokenizer,
        sets.positive,
        sets.negative,
        layers=cfg.layers,
        layer=cfg.layer,
        heldout_fraction=cfg.heldout_fraction,
        seed=cfg.seed,
        projected=cfg.projected,
    )
    found.source["model"] = model_dir
    path = save_directions(found, out / "directions.safetensors")
    write_json(
        out / "separation.json",
        {"chosen_layer": found.chosen_layer, "per_layer": found.separation, "source": found.source},
    )
    for layer, s in sorted(found.separation.items()):
        mark = " (chosen)" if layer == found.chosen_layer else ""
        log.info(
            f"layer {layer}: d' {s['d_prime']:.3g}, held-out accuracy {s['accuracy']:.3f}, "
            f"|mean difference| {s['norm']:.4g}{mark}"
        )
    return DirectionResult(
        stage=ABLITERATE.name(2),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        directions_path=str(path),
        chosen_layer=found.chosen_layer,
        separation=found.separation,
        prompts=len(sets.positive) + len(sets.negative),
        limits=limits,
    )
