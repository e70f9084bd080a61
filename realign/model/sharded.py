"""Models too large for one machine: one model across `mlx.launch` ranks, through mlx-lm's own sharding.

tensor: every linear layer split across the ranks (`model.shard(group)`, mlx-lm's tensor parallelism); each rank
holds 1/N of every layer and the ranks exchange activations twice per layer (all_sum), so it wants a fast link
(Thunderbolt / JACCL). pipeline: the layers cut into N consecutive runs (`model.model.pipeline(group)`); each rank
holds its run and passes the hidden state on once per layer run, which a slower link tolerates. Every rank runs the
same calls on the same inputs and gets the same outputs; rank 0 writes them.

`python -m realign.model.sharded JOB.json` under `mlx.launch` generates or scores a job's prompts with the sharded
model (see ShardedJob).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from realign.model.generate import GenerationConfig
from realign.model.load import LoadedModel

ShardMode = Literal["auto", "tensor", "pipeline"]


def shard_modes(model) -> list[str]:
    """The sharding an mlx-lm model's architecture offers: "tensor" (it has `shard`), "pipeline" (`pipeline`)."""
    modes = []
    if hasattr(model, "shard"):
        modes.append("tensor")
    if hasattr(getattr(model, "model", None), "pipeline"):
        modes.append("pipeline")
    return modes


def load_sharded(path: str | Path, mode: ShardMode = "auto", group=None) -> tuple[LoadedModel, str]:
    """Load the model at `path` with its layers spread over the ranks of `group` (default: all of them).

    auto: tensor parallel where the architecture has it, else pipeline. Returns (the model, the mode used).
    Loading is lazy, so a rank reads only the weights of its own part.
    """
    import mlx.core as mx
    from mlx_lm.utils import load_model, load_tokenizer, sharded_load

    from realign.model.load import resolve_model_path

    group = group or mx.distributed.init()
    path = resolve_model_path(path)
    probe, config = load_model(path, lazy=True, strict=False)
    offered = shard_modes(probe)
    if mode == "auto":
        if not offered:
            raise ValueError(f"{path}: the {config.get('model_type')} architecture offers no sharding in mlx-lm")
        mode = offered[0]  # type: ignore[assignment]
    if mode not in offered:
        raise ValueError(
            f"{path}: the {config.get('model_type')} architecture has no {mode} sharding in mlx-lm "
            f"(it offers: {', '.join(offered) or 'none'})"
        )
    if mode == "tensor" or (path / "model.safetensors.index.json").is_file():
        model, tokenizer = sharded_load(
            str(path),
            pipeline_group=group if mode == "pipeline" else None,
            tensor_group=group if mode == "tensor" else None,
        )
    else:
        # mlx-lm's pipeline loader picks weight files from the index; one unindexed file: load it lazily, keep ours.
        model = probe
        model.model.pipeline(group)
        mx.eval(model.parameters())
        tokenizer = load_tokenizer(path, {"trust_remote_code": True}, eos_token_ids=config.get("eos_token_id"))
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))  # the ranks start together
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, config=config), mode


def generate_streamed(model, tokenizer, prompts: list[str], cfg: GenerationConfig) -> list[list[dict]]:
    """Completions one sequence at a time with mlx-lm's generate_step: under pipeline parallelism its batched decoder
    and stream_generate lose the ranks' lockstep (measured: the ring connection drops), generate_step does not."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    from realign.model.generate import prompt_tokens

    sampler = make_sampler(temp=cfg.temperature, top_p=cfg.top_p if cfg.top_p < 1.0 else 0.0)
    stop = set(tokenizer.eos_token_ids)
    mx.random.seed(cfg.seed)
    out = []
    for prompt in prompts:
        ids = prompt_tokens(tokenizer, prompt, cfg.chat)
        per = []
        for _ in range(cfg.n):
            tokens = []
            for token, _ in generate_step(mx.array(ids), model, max_tokens=cfg.max_tokens, sampler=sampler):
                if int(token) in stop:
                    break
                tokens.append(int(token))
            # generate_step computes one token ahead; a rank that finished first must wait for the others' last
            # step (its sends) before moving on or exiting (measured: the ring connection drops otherwise).
            mx.eval(mx.distributed.all_sum(mx.array(1.0)))
            per.append({"text": tokenizer.decode(tokens), "tokens": tokens})
        out.append(per)
    return out


class ShardedJob(BaseModel):
    """Generate completions for, or score, prompts with one model sharded across the launched ranks."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["generate", "logprobs"] = Field(description="generate: completions; logprobs: score pairs.")
    model: str = Field(description="Model directory, at the same path on every rank.")
    data: str = Field(description="JSONL: {prompt} rows (generate) or {prompt, chosen, rejected} pairs (logprobs).")
    out: str = Field(description="JSON file rank 0 writes the results to.")
    mode: ShardMode = Field("auto", description="tensor, pipeline, or auto (tensor where the architecture has it).")
    generation: GenerationConfig = Field(GenerationConfig(), description="Sampling (generate).")
    max_len: int = Field(512, ge=8, le=131072, description="Longest tokenized row (logprobs).")


def run_sharded(job: ShardedJob) -> dict:
    """Run `job` on this rank; rank 0 writes {"mode", "ranks", "results"} to job.out. Returns the same."""
    import mlx.core as mx

    from realign.model.generate import generate
    from realign.model.logprobs import reference_logps

    group = mx.distributed.init()
    lm, mode = load_sharded(job.model, job.mode, group)
    with open(job.data) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if job.kind == "generate" and mode == "pipeline":
        results = generate_streamed(lm.model, lm.tokenizer, [r["prompt"] for r in rows], job.generation)
    elif job.kind == "generate":
        done = generate(lm.model, lm.tokenizer, [r["prompt"] for r in rows], job.generation)
        results = [[{"text": c.text, "tokens": c.tokens} for c in per] for per in done]
    else:
        scores = reference_logps(lm.model, lm.tokenizer, rows, chat=job.generation.chat, max_len=job.max_len)
        results = {k: v.tolist() for k, v in scores.items()}
    summary = {"mode": mode, "ranks": group.size(), "results": results}
    if group.rank() == 0:
        Path(job.out).parent.mkdir(parents=True, exist_ok=True)
        Path(job.out).write_text(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m realign.model.sharded JOB.json", file=sys.stderr)
        return 2
    run_sharded(ShardedJob.model_validate_json(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":  # `python -m` imports the realign package (and its fast BLAS) before this module
    raise SystemExit(main())
