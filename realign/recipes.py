"""Workflow configurations ("recipes"): pydantic models the Prefect UI renders as forms,
loaded from the YAML files in deployments/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from realign.config import ThresholdsConfig
from realign.generate import GenerationConfig
from realign.tiny import TinyModelConfig
from realign.train import PreferenceLossConfig, TrainConfig


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Recipe):
    """The base model: 'tiny' builds the tiny kit inside the run directory; otherwise a local dir or hub id."""

    path: str = Field("tiny", description="'tiny', a local model directory, or a Hugging Face hub id (online only).")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape and seed when path is 'tiny'.")


class EvalSet(_Recipe):
    """A held-out, verifiable evaluation set: JSONL rows with 'prompt' and 'answer'."""

    name: str = Field(description="Metric name prefix, e.g. 'reverse'.")
    path: str = Field(description="JSONL file with prompt and answer per line.")
    role: Literal["target", "benchmark"] = Field(description="target: the skill being aligned; benchmark: a capability to retain.")


class DataConfig(_Recipe):
    """Where prompts, SFT data and evaluation sets come from."""

    source: Literal["embedded", "files"] = Field("embedded", description="embedded: the digit tasks of realign.demo; files: the paths below.")
    prompts: str | None = Field(None, description="files: JSONL with 'prompt' and 'answer' (the verifier's reference) per line.")
    sft: str | None = Field(None, description="files: SFT JSONL (instruction/output, response or messages) for stage 1.")
    eval_sets: list[EvalSet] = Field(default_factory=list, description="files: held-out evaluation sets (one 'target' at least).")
    n_prompts: int = Field(1200, ge=1, le=10_000_000, description="embedded: prompts for preference data per round.")
    n_sft_target: int = Field(1000, ge=0, description="embedded: SFT examples of the target skill (reverse).")
    n_sft_benchmark: int = Field(2000, ge=0, description="embedded: SFT examples of the benchmark skill (copy).")
    n_prompts_benchmark: int = Field(1200, ge=0, description="embedded: preference prompts of the benchmark skill (capability data).")
    n_eval: int = Field(200, ge=10, description="embedded: held-out items per evaluation set.")
    n_dev: int = Field(100, ge=10, description="embedded: target items for round-to-round decisions, apart from evaluation.")
    seed: int = Field(0, ge=0, description="Seed of the embedded splits.")

    @model_validator(mode="after")
    def _files_given(self) -> "DataConfig":
        if self.source == "files":
            missing = [k for k in ("prompts",) if getattr(self, k) is None]
            if missing or not any(e.role == "target" for e in self.eval_sets):
                raise ValueError("data.source 'files' needs data.prompts and at least one eval_sets entry with role 'target'")
        return self


class SFTStageConfig(_Recipe):
    """Stage 1: optional SFT of the base model before preference training."""

    enabled: bool = Field(True, description="Run SFT; when off, the base model is the stage-1 model.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(steps=300, batch_size=32, learning_rate=3e-4, warmup_steps=10, lora=None,
                                            metrics_every=50),
        description="SFT optimisation (full fine-tuning by default for the tiny model).",
    )


class ShardingConfig(_Recipe):
    """Stage 2 across machines: one shard per work pool, sized by measured throughput."""

    pools: list[str] = Field(default_factory=list, max_length=64,
                             description="Work pools to fan out to (e.g. [m4-max, m3-ultra]); empty: run in this process.")
    throughput: dict[str, float] = Field(default_factory=dict, description="Measured examples/s per pool (`realign calibrate` "
                                         "on that machine); a pool not listed takes its hardware profile's scoring rate.")
    deployment: str = Field("shard/shard-{pool}", min_length=1, description="Deployment each pool's shard runs as ({pool} is filled in).")
    results_path: str | None = Field(None, description="Folder every machine can reach for shard inputs/outputs (one subfolder "
                                     "per run and round); default RUN_DIR/02_preference_data/shards.")
    timeout_s: float = Field(6 * 3600, gt=0, le=7 * 24 * 3600, description="Fail the stage when shards are not all back after this long.")
    poll_s: float = Field(2.0, gt=0, le=600, description="How often the owning stage checks on its shards.")

    @model_validator(mode="after")
    def _distinct(self) -> "ShardingConfig":
        dup = sorted({p for p in self.pools if self.pools.count(p) > 1})
        if dup:
            raise ValueError(f"pairs.sharding.pools lists {dup} more than once (one shard per pool)")
        if "{pool}" not in self.deployment:
            raise ValueError("pairs.sharding.deployment must contain {pool}, e.g. 'shard/shard-{pool}'")
        return self


class PairsConfig(_Recipe):
    """Stage 2: sampling and scoring."""

    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(n=8, batch_size=128, temperature=1.0, max_tokens=12, seed=0),
        description="How candidate answers are sampled (n per prompt).",
    )
    scorer: Literal["verifier", "judge"] = Field("verifier", description="verifier: graded match to the known answer; judge: an MLX model's 0-10 rating.")
    judge_model: str | None = Field(None, description="judge: the judge model directory.")
    use_calibration: bool = Field(True, description="Use this machine's calibrated batch size (`realign calibrate`) when there is one.")
    sharding: ShardingConfig = Field(default_factory=ShardingConfig, description="Fan the sampling out to work pools.")


class RewardModelStageConfig(_Recipe):
    """Stage 4: the reward model that checks the preference signal is learnable."""

    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of pairs held out for accuracy.")
    steps: int = Field(300, ge=1, description="Full-batch Bradley-Terry steps of the linear head.")
    learning_rate: float = Field(0.05, gt=0, description="Head learning rate (features are standardised).")
    pooling: Literal["mean", "last"] = Field("mean", description="Pool completion hidden states by mean or last token.")


class DPOStageConfig(_Recipe):
    """Stage 5: preference optimisation."""

    loss: PreferenceLossConfig = Field(default_factory=lambda: PreferenceLossConfig(beta=1.0, rpo_alpha=1.0),
                                       description="Objective (sigmoid DPO + RPO NLL by default; chosen by measurement on the demo).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(steps=120, batch_size=16, learning_rate=5e-6, warmup_steps=5, lora=None,
                                            checkpoint_every=40, metrics_every=10),
        description="Optimisation (full fine-tuning of the tiny model by default; LoRA for large models).",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of pairs held out for implicit reward accuracy and KL.")


class IterationConfig(_Recipe):
    """Stage 6: on-policy rounds of stages 2-5."""

    max_rounds: int = Field(2, ge=1, le=50, description="Total rounds, counting the first (stages 2-5).")
    epsilon: float = Field(0.01, ge=-1, le=1, description="Continue only while the target metric improves by at least this (negative: keep going even if it drops).")


class DPOWorkflowConfig(_Recipe):
    """Everything a DPO run needs. Every default is the embedded demo."""

    run_name: str | None = Field(None, description="Run directory name under runs_root; default: the Prefect flow run's name.")
    runs_root: str = Field("runs", description="Where run directories are created.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Prompts, SFT data and evaluation sets.")
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig, description="Stage 1.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="Stage 2.")
    reward_model: RewardModelStageConfig = Field(default_factory=RewardModelStageConfig, description="Stage 4.")
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig, description="Stage 5.")
    iterations: IterationConfig = Field(default_factory=IterationConfig, description="Stage 6.")
    control: bool = Field(True, description="Stage 7: also train continued SFT on the chosen answers for the same steps, as a control.")
    eval_max_tokens: int = Field(12, ge=1, le=4096, description="Stage 7: max new tokens of evaluation answers (greedy).")
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig, description="Gate thresholds and tiers.")
    approve_medium: bool = Field(False, description="Pause for a person's approval in the UI when a gate is MEDIUM.")
    price_per_hour: float | None = Field(None, ge=0, description="Machine price per hour, for cost per example in the summary.")


def load_recipe(path: str | Path) -> DPOWorkflowConfig:
    """A DPOWorkflowConfig from YAML; ValueError naming the file and the bad fields."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read recipe: {exc}") from exc
    try:
        return DPOWorkflowConfig.model_validate(data.get("config", data))
    except ValidationError as exc:
        lines = [f"{path}: invalid recipe:"]
        for e in exc.errors(include_url=False):
            lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
        raise ValueError("\n".join(lines)) from exc
