"""Each workflow's stage table names its own stages 2-5; stages 1, 6 and 7 are shared."""

from tasks.dpo import DPO_STAGES
from tasks.stages import SHARED_STAGES, StageTable


def test_dpo_table_names_and_dirs(tmp_path):
    assert [DPO_STAGES.name(n) for n in range(1, 8)] == [
        "1-sft-preparation",
        "2-preference-data",
        "3-model-initialization",
        "4-preference-modeling",
        "5-dpo-optimization",
        "6-iterative-training",
        "7-evaluation",
    ]
    assert DPO_STAGES.name(2, round=2) == "2-preference-data-round2"
    d = DPO_STAGES.dir(tmp_path, 5, round=3)
    assert d == tmp_path / "05_dpo_optimization_round3" and d.is_dir()
    assert SHARED_STAGES.dir(tmp_path, 7) == tmp_path / "07_evaluation"


def test_another_workflow_reads_as_itself(tmp_path):
    rlvr = StageTable(
        "rlvr", {2: "verifiable_task_design", 3: "automated_verification", 4: "verifiable_data", 5: "rlvr_optimization"}
    )
    assert rlvr.name(5) == "5-rlvr-optimization" and rlvr.dir(tmp_path, 5).name == "05_rlvr_optimization"
    assert rlvr.name(1) == DPO_STAGES.name(1) and rlvr.name(7) == "7-evaluation"
