"""Stage 2 (DPO): preference data generation. Sample N answers per prompt, score, pair best vs worst."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger

from hardware.calibrate import calibration_applies, model_key_of
from hardware.profiles import load_calibration
from realign.data.datasets import DataConfig, TrainingFile, load_data, read_pairs
from realign.data.formats import write_rows
from realign.data.pairs import PAIR_COLUMNS, GivenPairs, build_pairs, graded_rows, unparsed_ratings
from realign.eval.probes import probe_examples
from realign.io import write_json, write_parquet
from realign.model.load import load_model, model_root
from realign.score.judge import JudgeScorer
from realign.score.reward_model import load_reward_model
from realign.score.sampling import PairsConfig, score_answers, score_given
from tasks.cache import stage_task
from tasks.dpo import DPO_STAGES
from tasks.progress import Progress
from tasks.shards import run_shards
from tasks.shared.distributed import sample_on_sharded_model, sharded_sampling, stage_distributed
from tasks.stages import StageResult, one_row


class PairsResult(StageResult):
    """Where the pairs are and what building them found (see realign.data.pairs.PairStats)."""

    round: int
    pairs_path: str
    train_file: TrainingFile
    stats: dict
    completions: int
    probe: list[tuple[str, str]]  # fixed texts for KL from the stage-1 model (the first pairs' answers)
    shards: list[dict] = []

    def tables(self) -> dict[str, pd.DataFrame]:
        st = self.stats
        return {
            "preference_pairs": pd.read_parquet(self.pairs_path),
            "preference_metrics": one_row(agreement_rate=st["agreement_rate"], decontamination=st["decontamination"]),
        }

    def summary(self) -> dict:
        return {
            "examples_processed": self.completions,
            "pairs": self.stats["pairs"],
            "shards": self.shards,
            "train_jsonl": [self.train_file.path],
        }


def calibrated(pairs: PairsConfig, model_dir: str) -> tuple[PairsConfig, str]:
    """The pairs config with this machine's calibrated generation batch size (`realign calibrate`) when there is one
    measured on a model like `model_dir` (architecture, size, quantisation), and where the batch size came from.
    Called by the flow, so the chosen batch is part of stage 2's cache key."""
    if not pairs.use_calibration:
        return pairs, "recipe"
    calibration = load_calibration()
    key = model_key_of(model_root(model_dir))
    applies, why = calibration_applies(calibration, key) if key is not None else (False, "model has no config.json")
    if not applies:
        if calibration:
            get_run_logger().info(f"generation batch size {pairs.generation.batch_size} from the recipe: {why}")
        return pairs, "recipe"
    gen = pairs.generation.model_copy(update={"batch_size": int(calibration["chosen_batch"])})
    source = f"calibrated on this machine ({calibration.get('profile', 'generic')} profile) for this model"
    get_run_logger().info(f"generation batch size {gen.batch_size}: {source}")
    return pairs.model_copy(update={"generation": gen}), source


def score_given_pairs(path: str, pairs_cfg: PairsConfig, answers: dict[str, str]) -> GivenPairs:
    """The user's pairs (data.pairs) with the stage's scorer's scores of both answers."""
    log = get_run_logger()
    rows = read_pairs(path)
    log.info(f"{path}: {len(rows)} given pairs; scoring both answers with the {pairs_cfg.scorer}")
    judge_lm = load_model(pairs_cfg.judge_model) if pairs_cfg.scorer == "judge" else None
    rm = load_reward_model(pairs_cfg.reward_model) if pairs_cfg.scorer == "reward_model" else None
    prompts = [r.prompt for r in rows]
    chosen, rejected = [r.chosen for r in rows], [r.rejected for r in rows]
    sc, sr, unparsed = score_given(
        prompts, chosen, rejected, [answers.get(p) for p in prompts], pairs_cfg, judge_lm, rm
    )
    if unparsed:
        log.warning(
            f"judge gave no parseable rating for {unparsed} given answers; their pairs are left out, not guessed"
        )
    return GivenPairs(prompts, chosen, rejected, sc, sr)


def _pairwise_judge(pairs_cfg: PairsConfig):
    """Without known answers there is no second scorer: the judge's second, independent judgement is a pairwise one,
    asked in both orders (SPEC.md's "the same judge with the two answers swapped") of the pairs once they are built."""

    def judge_pairs(prompts: list[str], first: list[str], second: list[str]) -> list[int | None]:
        lm = load_model(pairs_cfg.judge_model)
        judge = JudgeScorer(lm.model, lm.tokenizer, batch_size=pairs_cfg.generation.batch_size)
        verdicts = judge.prefers_second(prompts, first, second)
        if judge.unparsed:
            get_run_logger().warning(
                f"the judge named neither answer for {len(judge.unparsed)} of {len(prompts)} pairs (e.g. "
                f"{judge.unparsed[0][1]!r}); they are left out of the agreement rate, not guessed"
            )
        return verdicts

    return judge_pairs


def _sample_sharded(bundle, pairs_cfg: PairsConfig, gen_cfg, model_dir: str, out, dist, why: str):
    """Sample with the model split over the recipe's ranks, then score here: (texts, scores, second, shards)."""
    log = get_run_logger()
    log.info(f"sampling with {model_dir} split over {dist.world_size()} ranks: {why}")
    t0 = time.perf_counter()
    texts, mode = sample_on_sharded_model(bundle.prompts, model_dir, gen_cfg, dist, out / "sharded")
    seconds = time.perf_counter() - t0
    judge_lm = load_model(pairs_cfg.judge_model) if pairs_cfg.scorer == "judge" else None
    rm = load_reward_model(pairs_cfg.reward_model) if pairs_cfg.scorer == "reward_model" else None
    answers = [bundle.answers.get(p) for p in bundle.prompts]
    scored = score_answers(bundle.prompts, texts, answers, pairs_cfg, judge_lm, rm)
    if pairs_cfg.scorer == "judge" and scored.unparsed:
        log.warning(f"judge gave no parseable rating for {scored.unparsed} answers; they are excluded, not guessed")
    record = {
        "shard": f"sharded model ({mode}, {dist.world_size()} ranks)",
        "rows": len(bundle.prompts),
        "planned_examples_per_s": None,
        "planned_from": why,
        "measured_examples_per_s": len(bundle.prompts) / seconds,
        "output": str(out / "sharded" / "generated.json"),
    }
    return scored, [record]


def _sample(bundle, pairs_cfg: PairsConfig, gen_cfg, model_dir: str, out, round: int, run_dir: str):
    """Sample gen_cfg.n answers per prompt with the current model and score them: over work pools when the recipe
    names them, with the model split over the recipe's ranks when it fits no machine (or the recipe says so)."""
    log = get_run_logger()
    total = len(bundle.prompts) * gen_cfg.n
    dist = stage_distributed(run_dir)
    why = sharded_sampling(dist, model_dir, total)
    if why:
        scored, shards = _sample_sharded(bundle, pairs_cfg, gen_cfg, model_dir, out, dist, why)
        Progress(DPO_STAGES.name(2, round), f"round {round} answers generated", total).update(total)
        return scored.texts, scored.scores, scored.second, shards
    log.info(
        f"round {round}: sampling {gen_cfg.n} answers for {len(bundle.prompts)} prompts with {model_dir} "
        f"(batch {gen_cfg.batch_size})"
    )
    bar = Progress(DPO_STAGES.name(2, round), f"round {round} answers generated", total)

    def progress(done, all_):
        bar.update(done)
        if done == all_ or done % (gen_cfg.batch_size * 10) == 0:
            log.info(f"generated {done}/{all_} answers")

    answers = [bundle.answers.get(p) for p in bundle.prompts]
    scored, shards = run_shards(
        bundle.prompts,
        answers,
        model_dir,
        pairs_cfg.model_copy(update={"generation": gen_cfg}),
        gen_cfg.seed,
        out / "shards",
        on_progress=progress,
    )
    if pairs_cfg.scorer == "judge" and (unparsed := unparsed_ratings(scored.texts, scored.scores)):
        log.warning(f"judge gave no parseable rating for {unparsed} answers; they are excluded, not guessed")
    return scored.texts, scored.scores, scored.second, shards


@stage_task("2-preference-data", reads=("prompts", "eval_sets", "pairs"))
def generate_pairs(
    pairs_cfg: PairsConfig, data: DataConfig, min_gap: float, ngram: int, model_dir: str, run_dir: str, round: int = 1
) -> PairsResult:
    """Only the thresholds this stage uses are inputs, so changing another threshold keeps its cache."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = DPO_STAGES.dir(run_dir, 2, round)
    bundle = load_data(data)
    gen_cfg = pairs_cfg.generation.model_copy(update={"seed": pairs_cfg.generation.seed + 1000 * round})
    given = score_given_pairs(data.pairs, pairs_cfg, bundle.answers) if data.pairs and round == 1 else None
    texts, scores, second, shards = [], [], None, []
    if given is None or pairs_cfg.top_up:  # later rounds sample on-policy from the current model
        texts, scores, second, shards = _sample(bundle, pairs_cfg, gen_cfg, model_dir, out, round, run_dir)
    prompts = bundle.prompts if texts else []
    pairs, stats = build_pairs(
        prompts,
        texts,
        scores,
        second,
        min_gap=min_gap,
        eval_texts=bundle.eval_texts(),
        ngram=ngram,
        given=given,
        second_pairwise=_pairwise_judge(pairs_cfg) if pairs_cfg.scorer == "judge" and second is None else None,
    )
    write_parquet(out / "pairs.parquet", pd.DataFrame(pairs, columns=PAIR_COLUMNS))
    write_rows(out / "train.jsonl", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs], "dpo")
    write_rows(out / "completions.jsonl", graded_rows(prompts, texts, scores), "grpo")
    write_json(out / "stats.json", stats.as_dict())
    if stats.given and stats.given_no_gap >= 0.5 * stats.given:
        log.warning(
            f"the {pairs_cfg.scorer} does not prefer the chosen answer by the minimum gap in {stats.given_no_gap} of "
            f"{stats.given} given pairs (dropped): check the labels in {data.pairs} and the scorer"
        )
    sampled_no_gap = stats.no_gap - stats.given_no_gap
    if stats.prompts and sampled_no_gap >= 0.9 * stats.prompts:
        # Nearly every prompt's answers scored alike: usually the reference answers or the scorer, not the model.
        log.warning(
            f"{sampled_no_gap} of {stats.prompts} prompts had no score gap between their best and worst answer: "
            f"check the reference answers in the prompts data (placeholders like 'TBD'?) and the scorer"
        )
    log.info(
        f"round {round}: {stats.pairs} pairs from {stats.given} given pairs and {stats.prompts} sampled prompts "
        f"(no gap {stats.no_gap}, identical "
        f"{stats.identical}, duplicates {stats.duplicates}, contaminated {stats.contaminated}); gap "
        f"{stats.preference_gap:.3f}, agreement {stats.agreement_rate:.3f}"
    )
    return PairsResult(
        stage=DPO_STAGES.name(2, round),
        out_dir=str(out),
        seconds=time.perf_counter() - t0,
        round=round,
        pairs_path=str(out / "pairs.parquet"),
        train_file=TrainingFile(path=str(out / "train.jsonl"), format="dpo"),
        stats=stats.as_dict(),
        completions=sum(len(t) for t in texts) + 2 * stats.given,  # answers sampled or scored
        probe=probe_examples(pairs),
        shards=shards,
    )
