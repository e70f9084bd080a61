"""Stage 4 (anti-hallucination): hallucination detection. The current model's hallucination rate and calibration
error on held-out questions, unanswerable ones included (SPEC.md: rate < 10%); then preference pairs from its own
samples of the training questions: a cited right answer over an uncited or wrong one, the abstention over an
invented answer."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from realign.data.datasets import GroundedDataConfig, load_data, read_grounded, write_jsonl
from realign.eval.grounding import answer_items, grounded_report, preference_pairs, sample_verdict
from realign.eval.metrics import calibration_bins
from realign.eval.plots import reliability_diagram
from realign.eval.probes import probe_examples
from realign.io import write_json
from realign.model.generate import generate
from realign.model.load import load_model
from realign.recipes.antihallucination import DetectionStageConfig
from tasks.antihallucination import AH_STAGES
from tasks.cache import stage_task
from tasks.stages import StageResult, one_row


class DetectionResult(StageResult):
    pairs_path: str  # pairs.jsonl: prompt, chosen, rejected (+ what was wrong with the rejected sample)
    samples_path: str  # samples.jsonl: every sample with its verdict
    heldout: dict[str, float]  # grounded metrics of the current model on the dev split
    counts: dict[str, int]
    plot: str
    probe: list[tuple[str, str]]  # fixed texts for KL in stages 6-7: pairs' chosen and rejected, else cited answers

    def tables(self) -> dict[str, pd.DataFrame]:
        h = self.heldout
        return {
            "hallucination": one_row(
                hallucination_rate=h["hallucination_rate"],
                calibration_error=h["calibration_error"],
                factuality=h["factuality"],
                pairs=self.counts["pairs"],
            )
        }

    def summary(self) -> dict:
        return {
            "examples_processed": self.counts["samples"],
            "train_jsonl": [self.pairs_path] if self.counts["pairs"] else [],
            "heldout_hallucination_rate": [self.heldout["hallucination_rate"]],
            "preference_pairs": [self.counts["pairs"]],
        }


@stage_task("4-hallucination-detection", reads=("eval_sets",))
def detect_hallucinations(
    cfg: DetectionStageConfig,
    data: GroundedDataConfig,
    items_path: str,
    model_dir: str,
    run_dir: str,
    round: int = 1,
    max_tokens: int = 12,
) -> DetectionResult:
    log = get_run_logger()
    t0 = time.perf_counter()
    out = AH_STAGES.dir(run_dir, 4, round)
    bundle = load_data(data)
    lm = load_model(model_dir)
    split = bundle.dev or bundle.target
    outputs = answer_items(lm.model, lm.tokenizer, split.items, max_tokens)
    heldout, conf, correct = grounded_report(lm.model, lm.tokenizer, split.items, outputs)
    plot = reliability_diagram(
        calibration_bins(conf, correct),
        out / "reliability.png",
        title=f"round {round}: {split.name}",
        ece=heldout["calibration_error"],
    )
    log.info(
        f"round {round} held-out ({len(split.items)} questions, {split.name}): hallucination rate "
        f"{heldout['hallucination_rate']:.3f}, factuality {heldout['factuality']:.3f}, calibration error "
        f"{heldout['calibration_error']:.3f}"
    )

    items = read_grounded(items_path, data.abstention)[: cfg.max_items]
    gen = cfg.generation.model_copy(update={"seed": cfg.generation.seed + round})  # fresh samples each round
    log.info(f"sampling {gen.n} answers to each of {len(items)} training questions")
    samples = [[c.text for c in group] for group in generate(lm.model, lm.tokenizer, [i.prompt() for i in items], gen)]
    pairs, counts = preference_pairs(items, samples, cfg.reference_when_none_right)
    counts["samples"] = sum(len(s) for s in samples)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(
        out / "samples.jsonl",
        [
            {"prompt": i.prompt(), "reference": i.target(), "sample": s, "verdict": sample_verdict(i, s)}
            for i, group in zip(items, samples)
            for s in group
        ],
    )
    write_json(out / "detection.json", {"split": split.name, "heldout": heldout, "counts": counts})
    log.info(
        f"{counts['pairs']} preference pairs from {counts['samples']} samples ("
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("good", "wrong", "uncited", "invented", "abstained"))
        + f"; chosen from the reference {counts['chosen_from_reference']})"
    )
    return DetectionResult(
        stage=AH_STAGES.name(4, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        pairs_path=str(out / "pairs.jsonl"),
        samples_path=str(out / "samples.jsonl"),
        heldout=heldout,
        counts=counts,
        plot=str(plot),
        # no pairs (nothing hallucinated in the samples): the cited answers and abstentions stand in as KL texts
        probe=probe_examples(pairs) if pairs else [(i.prompt(), i.target()) for i in items[:128]],
    )
