"""The RLVR workflow's own stages 2-5: verifiable task design, automated verification, verifiable data, GRPO."""

from tasks.stages import StageTable

RLVR_STAGES = StageTable(
    "rlvr",
    {
        2: "verifiable_task_design",
        3: "automated_verification",
        4: "verifiable_data_generation",
        5: "rlvr_optimization",
    },
)
