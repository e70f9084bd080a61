"""The SRF workflow's own stages 3-5 (stage 2, the preference pairs, is the DPO workflow's task)."""

from tasks.stages import StageTable

SRF_STAGES = StageTable(
    "srf",
    {2: "preference_data", 3: "reward_model_training", 4: "reward_model_validation", 5: "rl_fine_tuning"},
)
