"""What every workflow's recipe shares: the base model, stage 1 (SFT), stage 6 (rounds), and loading YAML.

Recipes are pydantic models the Prefect UI renders as forms, loaded from the YAML files in deployments/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from realign.data.datasets import DataConfig, read_prompt_answers
from realign.data.formats import DataFormatError
from realign.model.load import looks_like_path
from realign.model.tiny import TinyModelConfig
from realign.train.distributed_job import DistributedConfig
from realign.train.loop import TrainConfig


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A run's directory name under runs_root: a name, never a path (no separators, no leading dot, so no "..").
RUN_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
RunName = Annotated[str, Field(pattern=RUN_NAME_PATTERN)]


class ModelSpec(Recipe):
    """The base model: 'tiny' builds the tiny kit inside the run directory; otherwise a local dir or hub id."""

    path: str = Field("tiny", description="'tiny', a local model directory, or a Hugging Face hub id (online only).")
    tiny: TinyModelConfig = Field(TinyModelConfig(), description="Shape and seed when path is 'tiny'.")


class SFTStageConfig(Recipe):
    """Stage 1: optional SFT of the base model before preference training."""

    enabled: bool = Field(True, description="Run SFT; when off, the base model is the stage-1 model.")
    train: TrainConfig = Field(
        TrainConfig(steps=300, batch_size=32, learning_rate=3e-4, warmup_steps=10, lora=None, metrics_every=50),
        description="SFT optimisation (full fine-tuning by default for the tiny model).",
    )


class IterationConfig(Recipe):
    """Stage 6: on-policy rounds of stages 2-5."""

    max_rounds: int = Field(2, ge=1, le=50, description="Total rounds, counting the first (stages 2-5).")
    epsilon: float = Field(
        0.01,
        ge=-1,
        le=1,
        description="Continue only while the target metric improves by at least this (negative: go on if it drops).",
    )


# Stage 7's final model: fused, or the LoRA stages' adapters merged into one (the same field in every workflow).
FuseFinal = Annotated[
    bool,
    Field(
        True,
        title="Stage 7 · Fuse the final model",
        description="LoRA runs: true writes 07_evaluation/final_model as one full model (every stage's adapters "
        "fused, mlx-lm's save_model); false writes one adapter merged from every stage's, exact, for "
        "mlx_lm.load(BASE, adapter_path=...): megabytes instead of a model copy. Runs without LoRA write the full "
        "model either way.",
    ),
]

# Stage 7's answer length, the same field in every workflow's recipe.
EvalMaxTokens = Annotated[
    int,
    Field(
        12,
        ge=1,
        le=4096,
        title="Stage 7 · Answer length",
        description="Stage 7: max new tokens of evaluation answers (greedy).",
    ),
]


# A recipe's `distributed:` section (every workflow's and the abliteration flow's).
Distributed = Annotated[
    DistributedConfig | None,
    Field(
        None,
        title="Distributed training",
        description="None: every stage runs in this one process. Set (hosts or a hostfile, backend, ranks per host): "
        "the training stages (stage 1's SFT and behaviour model; stage 5's DPO, RL or GRPO; the SRF reward model; "
        "the anti-hallucination stages 3 and 5) launch on these ranks with mlx.launch, data parallel; the DPO and SRF "
        "workflows' stage 2 samples with the model split over them when it fits no machine (model_sharding); every "
        "other stage, and those stages' evaluations, stay a single process.",
    ),
]


class WorkflowRecipe(Recipe):
    """What every workflow's recipe starts with (the form's first group): where the run goes, approvals, price, and
    the base model; the local paths a recipe names are checked when it is validated."""

    run_name: RunName | None = Field(
        None,
        description="Run directory name under runs_root (letters, digits, . _ -; not a path); default: the run's name.",
    )
    runs_root: str = Field("runs", description="Where run directories are created.")
    approve_medium: bool = Field(False, description="Pause for a person's approval in the UI when a gate is MEDIUM.")
    price_per_hour: float | None = Field(
        None, ge=0, description="Machine price per hour, for cost per example in the summary."
    )
    distributed: Distributed
    model: ModelSpec = Field(ModelSpec(), title="Model", description="Base model.")

    @model_validator(mode="after")
    def _inputs_exist(self):
        problems = input_problems(self.model, self.data)  # every workflow's recipe has its `data`
        pairs = getattr(self, "pairs", None)  # stage 2's settings, in the workflows that build preference pairs
        if self.data.pairs and pairs is None:
            problems.append("data.pairs: this workflow does not train on preference pairs; remove data.pairs")
        elif self.data.pairs and pairs.scorer == "verifier" and not (self.data.source == "files" and self.data.prompts):
            problems.append(
                "data.pairs: the verifier scorer needs each pair's prompt with its known answer: give data.prompts "
                "(prompt, answer) with data.source 'files', or set pairs.scorer to judge (with pairs.judge_model) or "
                "reward_model"
            )
        problems += self._answers_given(pairs)
        opened = [e.name for e in self.data.eval_sets if e.format == "open"]
        if opened and pairs is None:  # RLVR judges by its verifier, anti-hallucination by the sources
            problems.append(
                f"data.eval_sets ({', '.join(opened)}): this workflow evaluates checkable answers; an open-ended set "
                "rated by a judge or reward model fits the DPO and SRF workflows (use format qa, choice or math here)"
            )
        if pairs is not None and pairs.top_up and not self.data.pairs:
            problems.append("pairs.top_up: tops up given pairs, and data.pairs names none (set it or turn top_up off)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _answers_given(self, pairs) -> list[str]:
        """A verifier grades against each prompt's answer: RLVR always, SRF when its RL reward has a verifier part,
        DPO and SRF when stage 2's scorer is the verifier. Their data.prompts rows must then all have one, checked
        here (FILE:LINE) rather than after stage 1 has trained."""
        rl = getattr(self, "rl", None)
        needs = (
            hasattr(self, "verifier")
            or (pairs is not None and pairs.scorer == "verifier")
            or (rl is not None and getattr(rl, "verifier_weight", 0) > 0)
        )
        path = self.data.prompts
        if not needs or self.data.source != "files" or not path or not Path(path).expanduser().is_file():
            return []
        try:
            read_prompt_answers(path, answer_required=True)
        except DataFormatError as exc:
            return [f"data.prompts: {exc} (the verifier grades against it; or score with a judge or reward model)"]
        return []


def input_problems(model: ModelSpec, data: DataConfig) -> list[str]:
    """What is wrong with the local paths a recipe names (model directory, data files), field by field.

    Checked when a recipe is validated, on the machine that runs it, so a typo fails in a second with the field
    named, not after a server started and a model loaded.
    """
    problems = []
    if model.path != "tiny" and looks_like_path(model.path):
        m = Path(model.path).expanduser()
        if not m.is_dir():
            problems.append(f"model.path: {m} is not a directory (expected a model directory with config.json)")
        elif not (m / "config.json").is_file():
            problems.append(f"model.path: {m} has no config.json (expected a Hugging Face/MLX model directory)")
    if data.pairs and not Path(data.pairs).expanduser().is_file():
        problems.append(f"data.pairs: {data.pairs} does not exist or is not a file")
    if data.source == "files":
        named = [("data.prompts", data.prompts), ("data.sft", data.sft)]
        named += [(f"data.eval_sets.{i}.path", e.path) for i, e in enumerate(data.eval_sets)]
        for field, value in named:
            if value and not Path(value).expanduser().is_file():
                problems.append(f"{field}: {value} does not exist or is not a file")
    for i, e in enumerate(data.eval_sets):  # an open set's judge or reward model, wherever the data comes from
        for field in ("judge_model", "reward_model"):
            value = getattr(e, field)
            found = value and any(
                (Path(value).expanduser() / f).is_file() for f in ("config.json", "adapter_config.json")
            )
            if value and not found:
                problems.append(
                    f"data.eval_sets.{i}.{field}: {value} is not a model directory (expected a directory with "
                    "config.json, or adapters with adapter_config.json)"
                )
    return problems


def _yaml_kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "value")


def load_recipe(path: str | Path, cls: type[Recipe]) -> Recipe:
    """A `cls` recipe from YAML (optionally under a top-level `config:` key).

    ValueError naming the file and what is wrong: the line and column of a YAML error, a file that is empty or not a
    mapping, and each bad field (including local paths that do not exist).
    """
    import yaml  # only the CLI and tests load YAML

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read recipe: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ValueError(
            f"{where}: invalid YAML: {exc.problem or exc}" + (f" ({exc.context})" if exc.context else "")
        ) from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    example = "expected recipe fields such as `model:` and `data:`, optionally under `config:` (see deployments/)"
    if data is None:
        raise ValueError(f"{path}: is empty ({example})")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: is a YAML {_yaml_kind(data)}, not a mapping ({example})")
    body = data.get("config", data)
    if not isinstance(body, dict):
        raise ValueError(
            f"{path}: field config is {'empty' if body is None else 'a YAML ' + _yaml_kind(body)} ({example})"
        )
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        lines = [f"{path}: invalid recipe:"]
        for e in exc.errors(include_url=False):
            field = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {field}: {msg}" if field else f"  {msg}")
        raise ValueError("\n".join(lines)) from exc
