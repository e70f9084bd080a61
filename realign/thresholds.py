"""Thresholds and quality tiers (SPEC.md and the seeds).

Every number a gate or planner uses lives here, as a pydantic field with a
description and bounds, so it is shown and edited in one place (and in the
Prefect UI's parameter form) and never inlined in code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- quality tiers -------------------------------------------------------------

Tier = Literal["HIGH", "MEDIUM", "REJECT"]
# Bounds are compared with this much slack so that floating-point noise (0.65 - 0.5 = 0.15000000000000002,
# 0.7 - 0.55 = 0.1499999999999999) does not move a value across a tier boundary.
FLOAT_SLACK = 1e-12
TIER_ORDER: dict[str, int] = {"HIGH": 0, "MEDIUM": 1, "REJECT": 2}


class TierBand(_Strict):
    """Two bounds that split a metric's values into HIGH / MEDIUM / REJECT.

    direction "higher": value >= high is HIGH, medium <= value < high is MEDIUM, below medium REJECT.
    direction "lower":  value <= high is HIGH, high < value <= medium is MEDIUM, above medium REJECT.
    """

    direction: Literal["higher", "lower"] = Field(
        description="Whether larger values are better ('higher') or worse ('lower')."
    )
    high: float = Field(description="Bound of the HIGH tier (inclusive).")
    medium: float = Field(description="Bound of the MEDIUM tier (inclusive); beyond it is REJECT.")

    @model_validator(mode="after")
    def _ordered(self) -> "TierBand":
        if self.direction == "higher" and self.medium > self.high:
            raise ValueError(f"for a higher-is-better metric medium ({self.medium}) must be <= high ({self.high})")
        if self.direction == "lower" and self.medium < self.high:
            raise ValueError(f"for a lower-is-better metric medium ({self.medium}) must be >= high ({self.high})")
        return self

    def tier_of(self, value: float) -> Tier:
        """The tier of `value` (NaN is REJECT: a metric that cannot be computed does not pass)."""
        if value != value:  # NaN
            return "REJECT"
        eps = FLOAT_SLACK
        if self.direction == "higher":
            return "HIGH" if value >= self.high - eps else "MEDIUM" if value >= self.medium - eps else "REJECT"
        return "HIGH" if value <= self.high + eps else "MEDIUM" if value <= self.medium + eps else "REJECT"


# Each band once, as an annotated type, so the full table and each workflow's own table share defaults and words.
PreferenceGapBand = Annotated[
    TierBand,
    Field(
        TierBand(direction="higher", high=0.15, medium=0.10),
        description="DPO: mean score(chosen) - score(rejected); HIGH >= 0.15, MEDIUM 0.10-0.15, REJECT < 0.10.",
    ),
]
AgreementRateBand = Annotated[
    TierBand,
    Field(
        TierBand(direction="higher", high=0.90, medium=0.80),
        description="DPO: fraction of pairs a second judgement agrees on; HIGH >= 90%, MEDIUM 80-90%, REJECT < 80%.",
    ),
]
VerifiabilityBand = Annotated[
    TierBand,
    Field(
        TierBand(direction="higher", high=0.80, medium=0.70),
        description="RLVR: fraction of tasks a verifier can check; HIGH >= 80%, MEDIUM 70-80%, REJECT < 70%.",
    ),
]
QualityScoreBand = Annotated[
    TierBand,
    Field(
        TierBand(direction="higher", high=8.0, medium=6.0),
        description="SFT/SRF: quality score on a 0-10 scale; HIGH >= 8.0, MEDIUM 6.0-8.0, REJECT < 6.0.",
    ),
]
CalibrationErrorBand = Annotated[
    TierBand,
    Field(
        TierBand(direction="lower", high=0.10, medium=0.15),
        description="Anti-hallucination: expected calibration error; HIGH <= 0.10, MEDIUM 0.10-0.15, REJECT > 0.15.",
    ),
]


class TiersConfig(_Strict):
    """The curator's tier table (SPEC.md "Quality tiers")."""

    preference_gap: PreferenceGapBand
    agreement_rate: AgreementRateBand
    verifiability: VerifiabilityBand
    quality_score: QualityScoreBand
    calibration_error: CalibrationErrorBand


class DPOTiers(_Strict):
    """The tier bands the DPO workflow's gates use."""

    preference_gap: PreferenceGapBand
    agreement_rate: AgreementRateBand


class SRFTiers(_Strict):
    """The tier bands the SRF workflow's gates use (its stage 2 is the DPO workflow's)."""

    preference_gap: PreferenceGapBand
    agreement_rate: AgreementRateBand


class RLVRTiers(_Strict):
    """The tier band the RLVR workflow's gates use."""

    verifiability: VerifiabilityBand


class GroundedTiers(_Strict):
    """The tier band the anti-hallucination workflow's gates use."""

    calibration_error: CalibrationErrorBand


# --- stage thresholds ----------------------------------------------------------


class SFTThresholds(_Strict):
    """Stage 1, SFT preparation."""

    max_perplexity: float = Field(
        20.0, gt=1.0, description="Held-out perplexity must be below this (seed: 'validation perplexity <20')."
    )


class PreferenceThresholds(_Strict):
    """Stage 2, preference data generation (DPO, SRF)."""

    min_preference_gap: float = Field(
        0.15, ge=0.0, le=1.0, description="Minimum mean score(chosen) - score(rejected), scores on 0-1."
    )
    min_pairs: int = Field(1000, ge=1, description="Minimum number of preference pairs.")


class ReferenceThresholds(_Strict):
    """Stage 3 (DPO), model initialization."""

    max_init_kl: float = Field(
        1e-6,
        ge=0.0,
        le=1.0,
        description="KL(policy || reference) at initialization must be below this (policy == reference).",
    )


class RewardModelThresholds(_Strict):
    """Reward-model accuracy (DPO stage 4; SRF stages 3-4)."""

    min_accuracy: float = Field(
        0.70, ge=0.0, le=1.0, description="Minimum fraction of pairs with reward(chosen) > reward(rejected)."
    )
    min_val_accuracy: float = Field(0.70, ge=0.0, le=1.0, description="Minimum held-out (validation) reward accuracy.")
    max_train_val_gap: float = Field(
        0.10, ge=0.0, le=1.0, description="Maximum train accuracy - validation accuracy (overfitting)."
    )


class OptimizationThresholds(_Strict):
    """Stage 5, policy optimization (all workflows)."""

    max_kl: float = Field(0.1, gt=0.0, description="Maximum mean per-token KL(policy || reference).")
    min_entropy: float = Field(
        0.5, ge=0.0, description="Minimum mean per-token policy entropy (nats); below is entropy collapse."
    )
    max_entropy: float = Field(2.0, gt=0.0, description="Maximum mean per-token policy entropy (nats).")
    min_reward_margin: float = Field(
        0.0,
        ge=-1000,
        le=1000,
        description="Held-out implicit reward margin (chosen - rejected) must be strictly above this.",
    )

    @model_validator(mode="after")
    def _range(self) -> "OptimizationThresholds":
        if self.min_entropy >= self.max_entropy:
            raise ValueError(f"min_entropy ({self.min_entropy}) must be below max_entropy ({self.max_entropy})")
        return self


class VerifiableThresholds(_Strict):
    """RLVR stages 2-5."""

    min_verifiability: float = Field(
        0.80, ge=0.0, le=1.0, description="Minimum fraction of tasks an automatic verifier can check."
    )
    max_false_positive_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="The verifier's false-positive rate must be strictly below this."
    )
    min_coverage: float = Field(
        0.10,
        ge=0.0,
        le=1.0,
        description="Stage 4: minimum share of tasks (in every category) with at least one right and one wrong "
        "sample (only those groups carry a GRPO signal).",
    )
    min_verified_rate_gain: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="Stage 5: the held-out verified rate after RL minus before must be at least this.",
    )


class FactualityThresholds(_Strict):
    """Anti-hallucination stages 2-5."""

    min_citation_accuracy: float = Field(
        0.85, ge=0.0, le=1.0, description="Minimum citation accuracy of the collected factuality data."
    )
    min_factuality: float = Field(0.90, ge=0.0, le=1.0, description="Minimum factuality after citation training.")
    max_hallucination_rate: float = Field(
        0.10, ge=0.0, le=1.0, description="The hallucination rate must be strictly below this."
    )
    min_factuality_gain: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="Stage 5: the upper end of the 95% interval of held-out factuality after optimisation minus before "
        "must be at least this (0: factuality did not fall beyond noise).",
    )
    max_hallucination_change: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="Stage 5: the lower end of the 95% interval of the held-out hallucination rate after optimisation "
        "minus before must be at most this (0: hallucinations did not rise beyond noise).",
    )


class EvaluationThresholds(_Strict):
    """Stage 7, evaluation and monitoring (all workflows)."""

    min_capability_retention: float = Field(
        0.95, ge=0.0, le=2.0, description="Minimum score-after / score-before on the stage-1 benchmarks."
    )
    min_decontamination: float = Field(
        0.90, ge=0.0, le=1.0, description="Minimum 1 - fraction of eval items sharing an n-gram with training data."
    )
    decontamination_ngram: int = Field(
        13, ge=1, le=100, description="n of the n-gram overlap used for decontamination (tokens are words)."
    )


# Each section once, as an annotated type, shared by the full table and each workflow's own.
SFTSection = Annotated[SFTThresholds, Field(SFTThresholds(), description="Stage 1.")]
PreferenceSection = Annotated[
    PreferenceThresholds, Field(PreferenceThresholds(), description="Stage 2: preference pairs (DPO, SRF).")
]
ReferenceSection = Annotated[ReferenceThresholds, Field(ReferenceThresholds(), description="Stage 3 (DPO).")]
RewardModelSection = Annotated[
    RewardModelThresholds, Field(RewardModelThresholds(), description="Reward accuracy (DPO 4, SRF 3-4).")
]
OptimizationSection = Annotated[OptimizationThresholds, Field(OptimizationThresholds(), description="Stage 5.")]
VerifiableSection = Annotated[VerifiableThresholds, Field(VerifiableThresholds(), description="RLVR stages 2-5.")]
FactualitySection = Annotated[
    FactualityThresholds, Field(FactualityThresholds(), description="Anti-hallucination stages 2-5.")
]
EvaluationSection = Annotated[EvaluationThresholds, Field(EvaluationThresholds(), description="Stage 7.")]


class ThresholdsConfig(_Strict):
    """Every threshold of SPEC.md's stage table and tier table (what the gates read; `realign gate check` takes it)."""

    sft: SFTSection
    preference: PreferenceSection
    reference: ReferenceSection
    reward_model: RewardModelSection
    optimization: OptimizationSection
    verifiable: VerifiableSection
    factuality: FactualitySection
    evaluation: EvaluationSection
    tiers: TiersConfig = Field(TiersConfig(), description="HIGH / MEDIUM / REJECT bands.")


class WorkflowThresholds(_Strict):
    """A workflow's own thresholds (its recipe shows only these); `full()` is the table the gates read.

    A recipe written with the full table (an earlier run's recipe.json, `realign gate check --thresholds` files) still
    loads: sections and bands of other workflows, which this one never reads, are dropped; an unknown name is still an
    error."""

    @model_validator(mode="before")
    @classmethod
    def _drop_other_workflows(cls, data):
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields)
        data = {k: v for k, v in data.items() if k in own or k not in ThresholdsConfig.model_fields}
        tiers, tier_cls = data.get("tiers"), cls.model_fields["tiers"].annotation
        if isinstance(tiers, dict):
            keep = set(tier_cls.model_fields)
            data["tiers"] = {k: v for k, v in tiers.items() if k in keep or k not in TiersConfig.model_fields}
        return data

    def full(self) -> ThresholdsConfig:
        """Every threshold: this workflow's values, the defaults of sections it does not use."""
        return ThresholdsConfig.model_validate(self.model_dump())


class DPOThresholds(WorkflowThresholds):
    """The DPO workflow's gates: stages 1-7 and the preference tiers."""

    sft: SFTSection
    preference: PreferenceSection
    reference: ReferenceSection
    reward_model: RewardModelSection
    optimization: OptimizationSection
    evaluation: EvaluationSection
    tiers: DPOTiers = Field(DPOTiers(), description="HIGH / MEDIUM / REJECT bands of the preference data.")


class SRFThresholds(WorkflowThresholds):
    """The SRF workflow's gates: stages 1-7, the preference and quality-score tiers."""

    sft: SFTSection
    preference: PreferenceSection
    reward_model: RewardModelSection
    optimization: OptimizationSection
    evaluation: EvaluationSection
    tiers: SRFTiers = Field(SRFTiers(), description="HIGH / MEDIUM / REJECT bands.")


class RLVRThresholds(WorkflowThresholds):
    """The RLVR workflow's gates: stages 1-7 and the verifiability tier."""

    sft: SFTSection
    verifiable: VerifiableSection
    optimization: OptimizationSection
    evaluation: EvaluationSection
    tiers: RLVRTiers = Field(RLVRTiers(), description="HIGH / MEDIUM / REJECT band of verifiability.")


class GroundedThresholds(WorkflowThresholds):
    """The anti-hallucination workflow's gates: stages 1-7 and the calibration tier."""

    sft: SFTSection
    factuality: FactualitySection
    optimization: OptimizationSection
    evaluation: EvaluationSection
    tiers: GroundedTiers = Field(GroundedTiers(), description="HIGH / MEDIUM / REJECT band of calibration error.")
