"""The anti-hallucination workflow's own stages 2-5: factuality data, citation training, hallucination detection,
preference optimisation against the model's own hallucinations."""

from tasks.stages import StageTable

AH_STAGES = StageTable(
    "antihallucination",
    {
        2: "factuality_data_collection",
        3: "citation_training",
        4: "hallucination_detection",
        5: "grounding_optimization",
    },
)
