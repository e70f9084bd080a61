"""Stage 2's unit of work: sample N answers per prompt and score each one.

The same function runs in-process or on another machine as one shard (flows/shard.py): a
shard reads its rows from a Parquet file, writes one output row per input row, and the
owning stage merges the shards back (hardware.shards.merge_shards checks exactly-once).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from realign.io import write_json, write_parquet
from realign.model.generate import GenerationConfig
from realign.score.verifiers import edit_similarity, positional_match


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardingConfig(_Config):
    """Stage 2 across machines: one shard per work pool, sized by measured throughput."""

    pools: list[str] = Field(
        [],
        max_length=64,
        description="Work pools to fan out to (e.g. [m4-max, m3-ultra]); empty: run in this process.",
    )
    throughput: dict[str, float] = Field(
        {},
        description="Measured examples/s per pool (`realign calibrate` "
        "on that machine); a pool not listed takes its hardware profile's scoring rate.",
    )
    deployment: str = Field(
        "shard/shard-{pool}", min_length=1, description="Deployment each pool's shard runs as ({pool} is filled in)."
    )
    results_path: str | None = Field(
        None,
        description="Folder every machine can reach for shard inputs/outputs (one subfolder "
        "per run and round); default RUN_DIR/02_preference_data/shards.",
    )
    timeout_s: float = Field(
        6 * 3600, gt=0, le=7 * 24 * 3600, description="Fail the stage when shards are not all back after this long."
    )
    poll_s: float = Field(2.0, gt=0, le=600, description="How often the owning stage checks on its shards.")

    @model_validator(mode="after")
    def _distinct(self) -> "ShardingConfig":
        dup = sorted({p for p in self.pools if self.pools.count(p) > 1})
        if dup:
            raise ValueError(f"pairs.sharding.pools lists {dup} more than once (one shard per pool)")
        if "{pool}" not in self.deployment:
            raise ValueError("pairs.sharding.deployment must contain {pool}, e.g. 'shard/shard-{pool}'")
        return self


class PairsConfig(_Config):
    """Stage 2: sampling and scoring."""

    generation: GenerationConfig = Field(
        GenerationConfig(n=8, batch_size=128, temperature=1.0, max_tokens=12, seed=0),
        description="How candidate answers are sampled (n per prompt).",
    )
    scorer: Literal["verifier", "judge", "reward_model"] = Field(
        "verifier",
        description="verifier: graded match to the known answer; judge: an MLX model's 0-10 rating; reward_model: "
        "sigmoid of a trained reward model's reward.",
    )
    judge_model: str | None = Field(None, description="judge: the judge model directory.")
    reward_model: str | None = Field(
        None, description="reward_model: a reward model directory (an SRF run's 03_reward_model_training/reward_model)."
    )
    use_calibration: bool = Field(
        True, description="Use this machine's calibrated batch size (`realign calibrate`) when there is one."
    )
    sharding: ShardingConfig = Field(ShardingConfig(), description="Fan the sampling out to work pools.")
    top_up: bool = Field(
        False,
        description="With data.pairs: also sample and pair answers for the prompts in round 1, added to the given "
        "pairs (later rounds always sample, on-policy).",
    )

    @model_validator(mode="after")
    def _scorer_model_named(self) -> "PairsConfig":
        if self.scorer == "judge" and not self.judge_model:
            raise ValueError("pairs.scorer 'judge' needs pairs.judge_model (a judge model directory)")
        if self.scorer == "reward_model" and not self.reward_model:
            raise ValueError("pairs.scorer 'reward_model' needs pairs.reward_model (a reward model directory)")
        return self


@dataclass
class ScoredSamples:
    """Per prompt: the sampled texts, their scores in [0, 1] (NaN: the scorer could not decide) and,
    where there is one, a second independent judgement of the same texts (for the agreement rate)."""

    texts: list[list[str]]
    scores: list[list[float]]
    second: list[list[float]] | None
    unparsed: int = 0


def sample_and_score(
    lm,
    prompts: Sequence[str],
    answers: Sequence[str | None],
    pairs_cfg: PairsConfig,
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
    judge_lm=None,
    reward_model=None,
) -> ScoredSamples:
    """Sample `pairs_cfg.generation.n` answers per prompt with `lm` (a realign.model.load.LoadedModel) at `seed`.

    verifier: score = positional match to the known answer, second = edit similarity to it.
    judge: score = `judge_lm`'s 0-10 rating / 10, second = exact match when every answer is known.
    reward_model: score = `reward_model`'s (a RewardModelScorer) sigmoid(reward), second = exact match likewise.
    """
    from realign.model.generate import generate

    gen_cfg = pairs_cfg.generation.model_copy(update={"seed": seed})
    samples = generate(lm.model, lm.tokenizer, list(prompts), gen_cfg, on_progress=on_progress)
    return score_answers(
        prompts, [[c.text for c in per] for per in samples], answers, pairs_cfg, judge_lm, reward_model
    )


def score_answers(
    prompts: Sequence[str],
    texts: list[list[str]],
    answers: Sequence[str | None],
    pairs_cfg: PairsConfig,
    judge_lm=None,
    reward_model=None,
) -> ScoredSamples:
    """Score answers already sampled (`texts[i]` for `prompts[i]`) with the stage's scorer (see sample_and_score):
    the same scores whichever way the answers were generated (in this process, a shard, a sharded model)."""
    from realign.score.judge import JudgeScorer

    exact = None
    if all(a is not None for a in answers):
        exact = [[float(t.strip() == a.strip()) for t in ts] for ts, a in zip(texts, answers)]
    if pairs_cfg.scorer == "verifier":
        if exact is None:
            raise ValueError(
                "scorer 'verifier' needs a known answer for every prompt (data.prompts rows need 'answer')"
            )
        scores = [[positional_match(t, a) for t in ts] for ts, a in zip(texts, answers)]
        # A second, independent judgement of the same answers: edit similarity (tolerates shifted digits,
        # which positional match punishes). Agreement = how often both name the same winner.
        second = [[edit_similarity(t, a) for t in ts] for ts, a in zip(texts, answers)]
        return ScoredSamples(texts, scores, second)
    if pairs_cfg.scorer == "reward_model":
        if reward_model is None:
            raise ValueError("scorer 'reward_model' needs a reward model (pairs.reward_model)")
        flat = reward_model.score([p for p, ts in zip(prompts, texts) for _ in ts], [t for ts in texts for t in ts])
        it = iter(flat)
        return ScoredSamples(texts, [[next(it) for _ in ts] for ts in texts], exact)
    if judge_lm is None:
        raise ValueError("scorer 'judge' needs a judge model (pairs.judge_model)")
    judge = JudgeScorer(judge_lm.model, judge_lm.tokenizer)
    flat = judge.score([p for p, ts in zip(prompts, texts) for _ in ts], [t for ts in texts for t in ts])
    it = iter(flat)
    scores = [[next(it) for _ in ts] for ts in texts]
    return ScoredSamples(texts, scores, exact, unparsed=len(judge.unparsed))


def score_given(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    answers: Sequence[str | None],
    pairs_cfg: PairsConfig,
    judge_lm=None,
    reward_model=None,
) -> tuple[list[float], list[float], int]:
    """The stage's scorer on both answers of the user's pairs: (chosen scores, rejected scores, unparsed ratings),
    scores in [0, 1], NaN where the scorer could not decide. The verifier needs every prompt's known answer."""
    from realign.score.judge import JudgeScorer

    n = len(prompts)
    texts = list(chosen) + list(rejected)
    if pairs_cfg.scorer == "verifier":
        missing = sum(a is None for a in answers)
        if missing:
            raise ValueError(
                f"scorer 'verifier' needs a known answer for every prompt; {missing} of the given pairs' prompts have "
                "none in data.prompts (give their answers there, or set pairs.scorer to judge or reward_model)"
            )
        scores = [positional_match(t, a) for t, a in zip(texts, list(answers) * 2)]
        return scores[:n], scores[n:], 0
    if pairs_cfg.scorer == "reward_model":
        if reward_model is None:
            raise ValueError("scorer 'reward_model' needs a reward model (pairs.reward_model)")
        scores = reward_model.score(list(prompts) * 2, texts)
        return scores[:n], scores[n:], 0
    if judge_lm is None:
        raise ValueError("scorer 'judge' needs a judge model (pairs.judge_model)")
    judge = JudgeScorer(judge_lm.model, judge_lm.tokenizer)
    scores = judge.score(list(prompts) * 2, texts)
    return scores[:n], scores[n:], len(judge.unparsed)


# --- one shard ----------------------------------------------------------------------------


class ShardJob(BaseModel):
    """One machine's share of a stage-2 round. Paths must be reachable from the machine that runs it."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="The round this shard belongs to, e.g. 'RUN_DIR/02_preference_data', for logs.")
    shard: str = Field(description="Shard name: the work pool it was planned for, or 'local'.")
    model_dir: str = Field(description="Model that samples (a directory both machines can read).")
    inputs_path: str = Field(description="Parquet with row_id, prompt, answer (answer may be null) for this shard.")
    output_path: str = Field(description="Where the shard writes its Parquet: row_id, prompt, texts, scores, second.")
    pairs: PairsConfig = Field(description="Sampling and scoring settings of the stage.")
    seed: int = Field(ge=0, description="Sampling seed of this shard.")


def measurement_key(model_dir: str, pairs: PairsConfig) -> dict:
    """What a shard's rows/s depends on; a figure measured for another model or job shape is not reused."""
    g = pairs.generation
    return {"model_dir": model_dir, "n": g.n, "max_tokens": g.max_tokens, "scorer": pairs.scorer}


def run_shard(job: ShardJob, *, slowdown: float = 1.0, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample and score the shard's rows; write its output Parquet atomically (temp + rename).

    slowdown >= 1 sleeps (slowdown - 1) x the compute time of each batch: a stand-in for a slower
    machine, used by tests and benchmarks to check that the split follows throughput.
    Returns {"shard", "rows", "completions", "seconds"}.
    """
    import pandas as pd

    from realign.model.load import load_model
    from realign.score.reward_model import load_reward_model

    if slowdown < 1:
        raise ValueError(f"slowdown must be >= 1 (1 = full speed), got {slowdown}")
    t0 = time.perf_counter()
    frame = pd.read_parquet(job.inputs_path)
    missing = {"row_id", "prompt", "answer"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"{job.inputs_path}: shard input lacks columns {sorted(missing)} (expected row_id, prompt, answer)"
        )
    prompts = frame["prompt"].tolist()
    answers = [None if a is None or a != a else a for a in frame["answer"].tolist()]
    lm = load_model(job.model_dir)
    judge_lm = load_model(job.pairs.judge_model) if job.pairs.scorer == "judge" else None
    rm = load_reward_model(job.pairs.reward_model) if job.pairs.scorer == "reward_model" else None
    last = [time.perf_counter()]
    slept = [0.0]

    def progress(done: int, total: int) -> None:
        if slowdown > 1:
            asleep = time.perf_counter()
            time.sleep((slowdown - 1) * (asleep - last[0]))
            last[0] = time.perf_counter()
            slept[0] += last[0] - asleep  # as slept, not as asked: a loaded machine oversleeps
        if on_progress:
            on_progress(done, total)

    t_sample = time.perf_counter()
    scored = sample_and_score(lm, prompts, answers, job.pairs, job.seed, progress, judge_lm, rm)
    sample_s = time.perf_counter() - t_sample
    out = pd.DataFrame(
        {
            "row_id": frame["row_id"],
            "prompt": prompts,
            "texts": scored.texts,
            "scores": scored.scores,
            "second": scored.second if scored.second is not None else [None] * len(prompts),
        }
    )
    write_parquet(job.output_path, out)
    # Rows per second of sampling + scoring (model loading excluded): the figure to calibrate the split with.
    info = {
        "shard": job.shard,
        "rows": len(out),
        "completions": sum(len(t) for t in scored.texts),
        "unparsed": scored.unparsed,
        "seconds": time.perf_counter() - t0,
        "sampling_seconds": sample_s,
        "examples_per_s": len(out) / sample_s if sample_s > 0 else None,
        "slowdown": slowdown,
        "slowdown_seconds": slept[0],  # of sampling_seconds, spent asleep standing in for a slower machine
        # what MLX and the tokenizers ran under on this machine (the owner sends SPEC.md's hardware environment)
        "environment": {k: v for k, v in os.environ.items() if k.startswith("MLX_") or k == "TOKENIZERS_PARALLELISM"},
    }
    write_json(Path(job.output_path).with_suffix(".json"), info)
    return info
