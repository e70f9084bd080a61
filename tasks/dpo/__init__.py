"""The DPO workflow's own stages 2-5."""

from tasks.stages import StageTable

DPO_STAGES = StageTable(
    "dpo", {2: "preference_data", 3: "model_initialization", 4: "preference_modeling", 5: "dpo_optimization"}
)
