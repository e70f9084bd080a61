"""Stage 2: preference data generation. Sample N answers per prompt, score, pair best vs worst."""

from __future__ import annotations

import time

import pandas as pd
from prefect import get_run_logger, task
from pydantic import BaseModel

from realign.data.datasets import load_data
from realign.data.formats import write_rows
from realign.data.pairs import build_pairs
from realign.data.datasets import DataConfig
from realign.score.sampling import PairsConfig
from tasks.common import stage_cache, stage_dir, write_json
from tasks.shards import run_shards


class PairsResult(BaseModel):
    """Where the pairs are and what building them found (see realign.data.pairs.PairStats)."""

    round: int
    pairs_path: str
    train_jsonl: str
    stats: dict
    completions: int
    seconds: float
    shards: list[dict] = []


@task(name="2-preference-data", cache_policy=stage_cache("prompts", "eval_sets"), persist_result=True)
def generate_pairs(pairs_cfg: PairsConfig, data: DataConfig, min_gap: float, ngram: int, model_dir: str, run_dir: str,
                   round: int = 1) -> PairsResult:
    """Only the thresholds this stage uses are inputs, so changing another threshold keeps its cache."""
    log = get_run_logger()
    t0 = time.perf_counter()
    out = stage_dir(run_dir, 2, f"_round{round}" if round > 1 else "")
    bundle = load_data(data)
    gen_cfg = pairs_cfg.generation.model_copy(update={"seed": pairs_cfg.generation.seed + 1000 * round})
    total = len(bundle.prompts) * gen_cfg.n
    log.info(f"round {round}: sampling {gen_cfg.n} answers for {len(bundle.prompts)} prompts with {model_dir}")

    def progress(done, all_):
        if done == all_ or done % (gen_cfg.batch_size * 10) == 0:
            log.info(f"generated {done}/{all_} answers")

    answers = [bundle.answers.get(p) for p in bundle.prompts]
    scored, shards = run_shards(bundle.prompts, answers, model_dir, pairs_cfg.model_copy(update={"generation": gen_cfg}),
                                gen_cfg.seed, out / "shards", on_progress=progress)
    texts, scores, second = scored.texts, scored.scores, scored.second
    if pairs_cfg.scorer == "judge":
        unparsed = sum(1 for ts, sc in zip(texts, scores) for t, s in zip(ts, sc) if t.strip() and s != s)
        if unparsed:
            log.warning(f"judge gave no parseable rating for {unparsed} answers; they are excluded, not guessed")
    eval_texts = [f"{p} {a}" for ev in bundle.eval_sets for p, a in zip(ev.prompts, ev.answers)]
    pairs, stats = build_pairs(bundle.prompts, texts, scores, second, min_gap=min_gap, eval_texts=eval_texts, ngram=ngram)
    frame = pd.DataFrame(pairs, columns=["prompt", "chosen", "rejected", "chosen_score", "rejected_score", "gap", "agree"])
    frame.to_parquet(out / ".pairs.parquet.tmp")
    (out / ".pairs.parquet.tmp").replace(out / "pairs.parquet")
    write_rows(out / "train.jsonl", [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs], "dpo")
    # Every scored sample, GRPO format (blank answers cannot be written as responses; stats count them).
    graded = [{"prompt": p, "responses": [{"text": t, "score": s} for t, s in zip(ts, sc) if t.strip() and s == s]}
              for p, ts, sc in zip(bundle.prompts, texts, scores)]
    write_rows(out / "completions.jsonl", [g for g in graded if g["responses"]], "grpo")
    write_json(out / "stats.json", stats.as_dict())
    if stats.prompts and stats.no_gap >= 0.9 * stats.prompts:
        # Nearly every prompt's answers scored alike: usually the reference answers or the scorer, not the model.
        log.warning(f"{stats.no_gap} of {stats.prompts} prompts had no score gap between their best and worst answer: "
                    f"check the reference answers in the prompts data (placeholders like 'TBD'?) and the scorer")
    log.info(f"round {round}: {stats.pairs} pairs from {stats.prompts} prompts (no gap {stats.no_gap}, identical {stats.identical}, "
             f"duplicates {stats.duplicates}, contaminated {stats.contaminated}); gap {stats.preference_gap:.3f}, "
             f"agreement {stats.agreement_rate:.3f}")
    return PairsResult(round=round, pairs_path=str(out / "pairs.parquet"), train_jsonl=str(out / "train.jsonl"),
                       stats=stats.as_dict(), completions=total, seconds=time.perf_counter() - t0, shards=shards)
