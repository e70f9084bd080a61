"""Recipes: the shipped demo recipe loads; a bad one names the file and the field."""

import pytest

from conftest import REPO
from realign.data.datasets import DataConfig, load_data
from realign.recipes.dpo import DPOWorkflowConfig, load_dpo_recipe


def test_demo_recipe_is_the_default_config():
    cfg = load_dpo_recipe(REPO / "deployments" / "dpo-demo.yaml")
    assert cfg == DPOWorkflowConfig()


def test_bad_recipe_names_file_and_field(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("config:\n  dpo:\n    loss:\n      beta: -1\n  sft:\n    stepz: 3\n")
    with pytest.raises(ValueError) as info:
        load_dpo_recipe(f)
    msg = str(info.value)
    assert str(f) in msg and "dpo.loss.beta" in msg and "sft.stepz" in msg


def test_files_source_needs_prompts_and_a_target_set():
    with pytest.raises(ValueError, match="needs data.prompts"):
        DataConfig(source="files")


def test_embedded_splits_are_disjoint():
    b = load_data(
        DataConfig(n_prompts=300, n_prompts_benchmark=100, n_sft_target=300, n_sft_benchmark=300, n_eval=50, n_dev=20)
    )
    sft_prompts = {p for p, _ in b.sft}
    evals = {p for e in b.eval_sets for p in e.prompts}
    assert len(b.prompts) == 400 and len(sft_prompts) == 600
    assert not (sft_prompts & set(b.prompts)) and not (evals & set(b.prompts)) and not (evals & sft_prompts)
    assert not (set(b.dev.prompts) & (evals | set(b.prompts) | sft_prompts))
    assert all(b.answers[p] for p in b.prompts)


def test_files_source(tmp_path):
    import json

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"prompt": f"Reverse: {i}23", "answer": f"32{i}"}) for i in range(5)) + "\n"
    )
    ev = tmp_path / "e.jsonl"
    ev.write_text(json.dumps({"prompt": "Reverse: 999", "answer": "999"}) + "\n")
    sft = tmp_path / "s.jsonl"
    sft.write_text(json.dumps({"instruction": "Reverse: 12", "output": "21"}) + "\n")
    cfg = DataConfig(
        source="files",
        prompts=str(prompts),
        sft=str(sft),
        eval_sets=[{"name": "rev", "path": str(ev), "role": "target"}],
    )
    b = load_data(cfg)
    assert len(b.prompts) == 5 and b.sft == [("Reverse: 12", "21")] and b.target.answers == ["999"] and b.dev is None
    prompts.write_text('{"prompt": "x"}\n')  # no answer: a judge or reward model scores it (the verifier cannot)
    assert load_data(cfg).prompts == ["x"] and load_data(cfg).answers == {}
    prompts.write_text('{"prompt": "x", "answer": " "}\n')  # an answer given empty is a mistake, not "none"
    with pytest.raises(ValueError, match=rf"{prompts}:1: missing or empty field 'answer'"):
        load_data(cfg)


def test_run_names_are_names_not_paths():
    assert DPOWorkflowConfig(run_name="dpo-2026_11.v2").run_name == "dpo-2026_11.v2"
    for bad in ("../../x", "a/b", "..", ".x", "a\\b", "x" * 200):
        with pytest.raises(ValueError, match="run_name"):
            DPOWorkflowConfig(run_name=bad)


@pytest.mark.parametrize(
    "text, message",
    [
        ("config:\n  model: {path: tiny\n  data: x\n", r"r.yaml:3:\d+: invalid YAML"),
        ("config:\n\tmodel: tiny\n", r"r.yaml:2:1: invalid YAML"),
        ("- model\n- data\n", "is a YAML list, not a mapping"),
        ("just words\n", "is a YAML string, not a mapping"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("null\n", "is empty"),
        ("config:\n", "field config is empty"),
        ("config: [1, 2]\n", "field config is a YAML list"),
    ],
)
def test_recipe_shape_and_yaml_errors_name_file_line_and_column(tmp_path, text, message):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_dpo_recipe(f)
    assert str(info.value).startswith(str(f))


def test_missing_local_paths_are_named_by_field(tmp_path):
    f = tmp_path / "r.yaml"
    real = tmp_path / "eval.jsonl"
    real.write_text('{"prompt": "p", "answer": "a"}\n')
    f.write_text(
        "config:\n"
        f"  model: {{path: {tmp_path / 'no-model'}/}}\n"
        "  data:\n"
        "    source: files\n"
        f"    prompts: {tmp_path / 'missing.jsonl'}\n"
        "    eval_sets:\n"
        f"      - {{name: t, role: target, path: {real}}}\n"
        f"      - {{name: b, role: benchmark, path: {tmp_path / 'gone.jsonl'}}}\n"
    )
    with pytest.raises(ValueError) as info:
        load_dpo_recipe(f)
    msg = str(info.value)
    assert f"model.path: {tmp_path / 'no-model'} is not a directory" in msg
    assert f"data.prompts: {tmp_path / 'missing.jsonl'} does not exist" in msg
    assert f"data.eval_sets.1.path: {tmp_path / 'gone.jsonl'} does not exist" in msg
    assert "eval_sets.0" not in msg


def test_given_pairs_are_checked_against_the_workflow_and_the_scorer(tmp_path):
    from realign.recipes.rlvr import RLVRWorkflowConfig

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"prompt": "p", "answer": "a"}\n')
    data = {"source": "files", "pairs": str(pairs), "eval_sets": [{"name": "t", "path": str(evals), "role": "target"}]}
    with pytest.raises(ValueError, match="the verifier scorer needs each pair's prompt"):
        DPOWorkflowConfig.model_validate({"data": data})
    cfg = DPOWorkflowConfig.model_validate({"data": data, "pairs": {"scorer": "judge", "judge_model": str(tmp_path)}})
    assert load_data(cfg.data).prompts == ["p"] and load_data(cfg.data).answers == {}
    with pytest.raises(ValueError, match="data.pairs: this workflow does not train on preference pairs"):
        RLVRWorkflowConfig.model_validate({"data": {"pairs": str(pairs)}})
    with pytest.raises(ValueError, match="the verifier scorer needs each pair's prompt"):
        DPOWorkflowConfig.model_validate({"data": {"pairs": str(pairs)}})  # embedded prompts do not answer the pairs'
    with pytest.raises(ValueError, match="pairs.top_up: tops up given pairs, and data.pairs names none"):
        DPOWorkflowConfig.model_validate({"pairs": {"top_up": True}})
    with pytest.raises(ValueError, match="data.pairs: .*missing.jsonl does not exist"):
        DPOWorkflowConfig.model_validate({"data": {"pairs": str(tmp_path / "missing.jsonl")}})


def test_an_open_target_names_a_judge_that_exists_and_fits_dpo_and_srf_only(tmp_path):
    from realign.recipes.rlvr import RLVRWorkflowConfig
    from realign.recipes.srf import SRFWorkflowConfig

    prompts, ev = tmp_path / "p.jsonl", tmp_path / "open.jsonl"
    prompts.write_text('{"prompt": "Tell me a joke"}\n')
    ev.write_text('{"prompt": "Write a haiku"}\n')
    judge = tmp_path / "judge"
    data = {
        "source": "files",
        "prompts": str(prompts),
        "eval_sets": [{"name": "chat", "path": str(ev), "role": "target", "format": "open", "judge_model": str(judge)}],
    }
    pairs = {"scorer": "judge", "judge_model": str(judge)}
    with pytest.raises(ValueError, match=r"data.eval_sets.0.judge_model: .*judge is not a model directory"):
        DPOWorkflowConfig(data=data, pairs=pairs)
    judge.mkdir()
    (judge / "config.json").write_text("{}")
    assert DPOWorkflowConfig(data=data, pairs=pairs).data.eval_sets[0].scorer() == ("judge", str(judge))
    assert SRFWorkflowConfig(data=data, pairs=pairs).data.eval_sets[0].format == "open"
    with pytest.raises(ValueError, match="this workflow evaluates checkable answers; an open-ended set"):
        RLVRWorkflowConfig(data=data)


def test_a_verifier_needs_every_prompt_answered_and_says_so_at_validation(tmp_path):
    from realign.recipes.rlvr import RLVRWorkflowConfig

    prompts, ev = tmp_path / "p.jsonl", tmp_path / "e.jsonl"
    prompts.write_text('{"prompt": "2+2", "answer": "4"}\n{"prompt": "Tell me a joke"}\n')
    ev.write_text('{"prompt": "3+3", "answer": "6"}\n')
    data = {"source": "files", "prompts": str(prompts), "eval_sets": [{"name": "t", "path": str(ev), "role": "target"}]}
    for make in (lambda: DPOWorkflowConfig(data=data), lambda: RLVRWorkflowConfig(data=data)):  # the verifier scores
        with pytest.raises(ValueError, match=rf"data.prompts: {prompts}:2: missing or empty field 'answer'"):
            make()
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text("{}")
    assert DPOWorkflowConfig(data=data, pairs={"scorer": "judge", "judge_model": str(judge)}).data.prompts


def test_an_open_set_without_references_and_no_other_set_leaves_nothing_for_perplexity(tmp_path):
    ev, prompts = tmp_path / "open.jsonl", tmp_path / "p.jsonl"
    ev.write_text('{"prompt": "Write a haiku"}\n')
    prompts.write_text('{"prompt": "Tell me a joke"}\n')
    cfg = DataConfig(
        source="files",
        prompts=str(prompts),
        eval_sets=[{"name": "o", "path": str(ev), "role": "target", "format": "open", "judge_model": "j"}],
    )
    with pytest.raises(ValueError, match="no held-out text to measure perplexity on"):
        load_data(cfg)
