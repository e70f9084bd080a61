"""Data parallelism and sharded models over real `mlx.launch` ranks: 2 local ranks on the ring backend (127.0.0.1).

Every distributed result is compared with one process on the same global batch:
- the gradient of a global batch summed over ranks (even and 3:1 splits) equals the single-process gradient to
  float32 rounding: SFT, DPO and the reward model's Bradley-Terry loss (per tensor, max |diff| <= 1e-5 * max |g|,
  5e-5 for the reward model; measured 1.2e-6 and 1.0e-5);
- SFT and DPO trained for 4 steps on 2 ranks end at the single-process weights: 99.9% of them within 1e-5, 1e-6 on
  average, none further than lr per step. Not bit-exact: the ranks sum their slices' gradients in another order (and
  the matrix products run on other row counts), which changes the last bits of the gradient; AdamW divides each
  gradient by its running RMS, so where a gradient is ~0 those last bits decide the update's sign, up to lr per step
  (1e-3 here; measured max 2.6e-5 to 1.5e-4 from run to run, mean 2e-8);
- greedy generation with the model split over 2 ranks (tensor and pipeline parallel) gives the same tokens.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.timeout(300)

LR, STEPS = 1e-3, 4


class Keep(logging.Handler):
    """The lines a logger writes (Prefect's logging setup may stop propagation to pytest's caplog and capsys)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir):
    """The tiny model, 64 SFT rows and 64 preference pairs (chosen: the right answer; rejected: another row's)."""
    from realign.data.datasets import DataConfig, load_data

    root = tmp_path_factory.mktemp("distributed")
    sft = load_data(DataConfig()).sft[:64]
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in sft))
    pairs = [{"prompt": p, "chosen": c, "rejected": sft[(i + 7) % len(sft)][1]} for i, (p, c) in enumerate(sft)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return {"root": root, "model": tiny_model_dir}


def on_ranks(args: list[str], n: int = 2, timeout: float = 240) -> list[str]:
    """Run `python ARGS` on n local ranks through realign's launcher (mlx.launch, ring backend)."""
    from realign.train.distributed_job import DistributedConfig, launch

    return launch(DistributedConfig(hosts=["127.0.0.1"], ranks_per_host=n), args, timeout=timeout)


def one_process(args: list[str]) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def load(path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


# --- pure parts --------------------------------------------------------------------------------


def test_split_counts():
    from realign.train.distributed import split_counts

    assert split_counts(8, None, 2) == [4, 4]
    assert split_counts(8, [3, 1], 2) == [6, 2]  # 1 each, then 6 split 3:1 (4.5 / 1.5, tie to the faster rank)
    assert split_counts(4, [3, 1], 2) == [3, 1]
    assert split_counts(2, [100, 1], 2) == [1, 1]  # every rank computes something: same metrics everywhere
    assert sum(split_counts(1000, [12956, 4599, 1000], 3)) == 1000
    with pytest.raises(ValueError, match="cannot give each of 2 ranks"):
        split_counts(1, None, 2)
    with pytest.raises(ValueError, match="3 shares for 2 ranks"):
        split_counts(8, [1, 1, 1], 2)


class Solo:
    """A stand-in group: slicing needs only rank and size."""

    def __init__(self, rank, size):
        self._r, self._s = rank, size

    def rank(self):
        return self._r

    def size(self):
        return self._s


def test_take_keeps_pairs_together():
    import mlx.core as mx

    from realign.train.distributed import DataParallel

    tokens = mx.arange(8).reshape(8, 1)  # 4 pairs: rows 0-3 chosen, 4-7 rejected
    batch = {"tokens": tokens, "mask": mx.ones((8, 1)), "ref_chosen": mx.arange(4), "ref_rejected": mx.arange(4) + 4}
    dp = DataParallel(Solo(1, 2), layout="pairs", weight_by="examples", shares=(3.0, 1.0))
    part, frac = dp.mine(batch)
    assert part["tokens"].reshape(-1).tolist() == [3, 7]  # pair 3: its chosen and its rejected row
    assert part["ref_chosen"].tolist() == [3] and part["ref_rejected"].tolist() == [7]
    assert frac == 0.25


@pytest.mark.parametrize("method,rpo_alpha", [("dpo", 1.0), ("orpo", None), ("cpo", None)], ids=["rpo", "orpo", "cpo"])
def test_slices_of_a_loss_with_a_token_mean_nll_sum_to_the_global_loss(work, method, rpo_alpha):
    """RPO, ORPO and CPO add the chosen tokens' mean NLL to a per-pair loss: each slice's weighted loss (its NLL term
    rescaled by NLL_WEIGHT) sums to the global batch's loss, also when the slices' completions differ in length."""
    from realign.model.load import load_model
    from realign.model.logprobs import reference_logps
    from realign.train.batches import NLL_WEIGHT, preference_batches
    from realign.train.distributed import DataParallel
    from realign.train.loop import TrainConfig
    from realign.train.objectives import PreferenceLossConfig, preference_loss

    lm = load_model(work["model"])
    pairs = [json.loads(line) for line in (work["root"] / "pairs.jsonl").read_text().splitlines()][:8]
    cfg = TrainConfig(batch_size=8, lora=None, max_seq_len=64)
    batch = preference_batches(lm.tokenizer, pairs, cfg, ref=reference_logps(lm.model, lm.tokenizer, pairs))(0)
    loss = preference_loss(PreferenceLossConfig(method=method, rpo_alpha=rpo_alpha))
    whole = loss(lm.model, batch)[0].item()
    slices = [DataParallel(Solo(r, 2), layout="pairs", shares=(3.0, 1.0)).mine(batch) for r in (0, 1)]
    tokens = [float(part["mask"][: part["tokens"].shape[0] // 2].sum().item()) / frac for part, frac in slices]
    assert abs(tokens[0] - tokens[1]) > 1  # chosen tokens per pair differ between the slices
    summed = sum(frac * loss(lm.model, part)[0].item() for part, frac in slices)
    print(f"weighted sum - whole: {summed - whole:.3g}")
    assert summed == pytest.approx(whole, rel=2e-6)
    plain = [{k: v for k, v in part.items() if k != NLL_WEIGHT} for part, _ in slices]
    unweighted = sum(frac * loss(lm.model, part)[0].item() for part, (_, frac) in zip(plain, slices))
    assert abs(unweighted - whole) > 1e-4 * abs(whole)  # what the weight corrects (the untrained model's NLL is flat)


def test_rank_shares_follow_the_calibrated_machines(tmp_path):
    from realign.train.distributed_job import DistributedConfig, failed_rank, launch_command
    from tasks.shared.distributed import rank_shares

    two_macs = DistributedConfig(hosts=["10.0.0.1", "10.0.0.2"], machines=["m4-max", "m3-ultra"], ranks_per_host=2)
    assert rank_shares(two_macs) == [388.0, 388.0, 139.0, 139.0]  # the seeds' 776 and 278 examples/s, per rank
    assert rank_shares(two_macs.model_copy(update={"shares": [2.0, 1.0, 1.0, 1.0]})) == [2.0, 1.0, 1.0, 1.0]
    assert rank_shares(DistributedConfig(hosts=["10.0.0.1"])) is None  # even
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "m4", "ips": []}, {"ssh": "m3", "ips": []}]}))
    from_file = DistributedConfig(hostfile=str(hostfile), machines=["m4-max", "m3-ultra"], ranks_per_host=4)
    assert rank_shares(from_file) == [776.0, 278.0] and from_file.world_size() == 2  # one rank per entry
    with pytest.raises(ValueError, match="names 1 machines for 2 hosts"):
        rank_shares(DistributedConfig(hosts=["10.0.0.1", "10.0.0.2"], machines=["m4-max"]))
    # mlx.launch reports the rank that died first, then those it stopped (-15)
    lines = [
        "\x1b[33m[WARN] Node with rank 3 exited with code 1 \x1b[0m",
        "[WARN] Node with rank 0 exited with code -15",
    ]
    assert failed_rank(lines, two_macs) == (3, "10.0.0.2")
    assert failed_rank(["[WARN] Node with rank 1 exited with code 1"], from_file) == (1, "m3")
    assert failed_rank(["all fine"], two_macs) == (None, None)
    cmd = launch_command(two_macs, ["-m", "x"])
    assert cmd[cmd.index("--hosts") + 1] == "10.0.0.1,10.0.0.2" and cmd[cmd.index("-n") + 1] == "2"
    assert cmd[-2:] == ["-m", "x"] and "--starting-port" in cmd


# --- over real ranks ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shares", ["", "3,1"], ids=["even", "uneven-3to1"])
def test_global_gradient_matches_one_process(work, tmp_path, shares):
    root = work["root"]
    args = ["tests/helpers/dist_grad.py", str(work["model"]), str(root / "sft.jsonl"), str(root / "pairs.jsonl")]
    one_process([*args, str(tmp_path / "one")])
    on_ranks([*args, str(tmp_path / "two"), shares])
    for kind in ("sft", "preference", "reward"):
        a, b = load(tmp_path / "one" / f"grad-{kind}.safetensors"), load(tmp_path / "two" / f"grad-{kind}.safetensors")
        assert a.keys() == b.keys()
        np.testing.assert_allclose(b["__loss__"], a["__loss__"], rtol=1e-5)
        # measured worst tensor: 1.2e-6 (SFT, DPO), 1.0e-5 (reward model: its gradients pass through the reward
        # difference of two rows, where the rounding of the rows' sums cancels less)
        rtol = 5e-5 if kind == "reward" else 1e-5
        for name in a:
            scale = np.abs(a[name]).max()
            assert np.abs(a[name] - b[name]).max() <= rtol * scale + 1e-8, (kind, name)


def write_job(root, kind: str, tag: str, shares=None, steps: int = STEPS, checkpoint_every: int = 0):
    from realign.train.distributed_job import DistributedJob
    from realign.train.loop import TrainConfig

    data = root["root"] / ("sft.jsonl" if kind == "sft" else "pairs.jsonl")
    train = TrainConfig(
        steps=steps,
        batch_size=8,
        learning_rate=LR,
        lora=None,
        max_seq_len=64,
        metrics_every=1000,
        checkpoint_every=checkpoint_every,
    )
    job = DistributedJob(
        kind=kind, model=str(root["model"]), data=str(data), out_dir=str(root["root"] / tag), train=train, shares=shares
    )
    path = root["root"] / f"{tag}.json"
    path.write_text(job.model_dump_json())
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,shares", [("sft", None), ("preference", None), ("sft", [3.0, 1.0])], ids=["sft", "dpo", "sft-uneven-3to1"]
)
def test_training_on_two_ranks_matches_one_process(work, kind, shares):
    tag = f"{kind}-{'uneven' if shares else 'even'}"
    one_process(["-m", "realign.train.distributed_job", str(write_job(work, kind, f"{tag}-one"))])
    lines = on_ranks(["-m", "realign.train.distributed_job", str(write_job(work, kind, f"{tag}-two", shares))])
    steps = [json.loads(line) for line in lines if line.startswith('{"rank": 0')]
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))  # rank 0 alone reports
    assert all(s["ranks"] == 2 and "wait_s/rank1" in s and s["comm_s"] >= 0 for s in steps)
    one = json.loads((work["root"] / f"{tag}-one" / "result.json").read_text())
    two = json.loads((work["root"] / f"{tag}-two" / "result.json").read_text())
    assert two["ranks"] == 2 and two["steps_done"] == STEPS
    assert two["rank_divergence"] == 0.0  # every rank applied the same summed gradient: identical weights
    np.testing.assert_allclose([r["loss"] for r in two["history"]], [r["loss"] for r in one["history"]], rtol=1e-5)
    if kind == "sft":  # a per-token mean, combined by the slices' token shares: the global batch's value
        np.testing.assert_allclose(two["history"][-1]["entropy"], one["history"][-1]["entropy"], rtol=1e-4)
    a = load(work["root"] / f"{tag}-one" / "trainable.safetensors")
    b = load(work["root"] / f"{tag}-two" / "trainable.safetensors")
    assert a.keys() == b.keys()
    diffs = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
    # see the module docstring for why not bit-exact, and why a few weights may differ by up to lr per step
    assert diffs.mean() <= 1e-6, diffs.mean()
    assert np.quantile(diffs, 0.999) <= 1e-5, np.quantile(diffs, 0.999)
    assert diffs.max() <= LR * STEPS, diffs.max()
    # ...while training did move the weights by far more than that
    moved = np.concatenate([np.abs(a[k] - v).ravel() for k, v in load_initial(work, a).items()])
    assert moved.max() > 100 * np.quantile(diffs, 0.999)


def load_initial(work, like: dict) -> dict[str, np.ndarray]:
    import mlx.core as mx

    weights = {}
    for f in sorted(work["model"].glob("*.safetensors")):
        weights.update({k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(f)).items()})
    return {k: weights[k] for k in like if k in weights}


@pytest.mark.slow
def test_resume_on_two_ranks_is_exact(work):
    """A 2-rank run killed after its step-2 checkpoint, relaunched, ends where an uninterrupted 2-rank run does."""
    job = write_job(work, "sft", "resume", steps=STEPS, checkpoint_every=2)
    helper = "tests/helpers/dist_fail.py"
    from realign.train.distributed_job import RankFailed

    with pytest.raises(RankFailed) as failed:
        on_ranks([helper, str(job), "2"])
    assert failed.value.rank == 0 and failed.value.host == "127.0.0.1"
    assert "rank 0 on 127.0.0.1" in str(failed.value)
    on_ranks(["-m", "realign.train.distributed_job", str(job)])
    resumed = json.loads((work["root"] / "resume" / "result.json").read_text())
    assert resumed["resumed_from"] == 2 and resumed["steps_done"] == STEPS
    straight = write_job(work, "sft", "straight", steps=STEPS, checkpoint_every=2)
    on_ranks(["-m", "realign.train.distributed_job", str(straight)])
    a = load(work["root"] / "straight" / "trainable.safetensors")
    b = load(work["root"] / "resume" / "trainable.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("shares", ["", "3,1"], ids=["even", "uneven-3to1"])
def test_rl_gradient_on_fixed_samples_matches_one_process(work, tmp_path, shares):
    """GRPO (dapo: token-weighted, batch-scaled rewards; grpo: sequence-weighted) and RLOO (sequence-weighted,
    batch-normalised, KL in the reward): each rank scores its prompts' samples, the advantages come from the pooled
    rewards, and the weighted all_sum is the single-process gradient of the same samples."""
    args = ["tests/helpers/dist_rl_grad.py", str(work["model"])]
    one_process([*args, str(tmp_path / "one")])
    on_ranks([*args, str(tmp_path / "two"), shares])
    for kind in ("grpo", "grpo-seq", "rloo"):
        adv_one = json.loads((tmp_path / "one" / f"advantages-{kind}.json").read_text())
        adv_two = json.loads((tmp_path / "two" / f"advantages-{kind}.json").read_text())
        # GRPO's from the same rewards: equal; RLOO's also carry the sequence KL, computed by each rank in float32
        np.testing.assert_allclose(adv_two, adv_one, rtol=1e-5, atol=1e-6)
        assert np.std(adv_one) > 0.1  # spread out: the samples' rewards differ
        a, b = load(tmp_path / "one" / f"grad-{kind}.safetensors"), load(tmp_path / "two" / f"grad-{kind}.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            scale = np.abs(a[name]).max()
            assert np.abs(a[name] - b[name]).max() <= 1e-5 * scale + 1e-8, (kind, name)


@pytest.mark.slow
def test_rl_training_on_two_ranks_and_its_exact_resume(work, tmp_path):
    """GRPO with LoRA on 2 ranks split 3:1: rank 0 reports the whole batch's samples and each rank's waiting; every
    rank ends with the same weights; a run continued from its step-2 checkpoint ends where a straight run does."""
    helper, model = "tests/helpers/dist_rl.py", str(work["model"])
    on_ranks([helper, model, str(tmp_path / "straight"), "3", "3,1"])
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert straight["ranks"] == 2 and straight["steps_done"] == 3 and straight["rank_divergence"] == 0.0
    rows = straight["history"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["samples"] == 16 and r["ranks"] == 2 and r["wait_s/rank1"] >= 0 and r["comm_s"] >= 0 for r in rows)
    assert all(np.isfinite(r["reward"]) and np.isfinite(r["kl"]) for r in rows)
    lora_b = {k: v for k, v in load(tmp_path / "straight" / "trainable.safetensors").items() if "lora_b" in k}
    assert lora_b and max(np.abs(v).max() for v in lora_b.values()) > 0  # LoRA B starts at 0: training moved it
    from realign.train.distributed_job import RankFailed

    with pytest.raises(RankFailed):
        on_ranks([helper, model, str(tmp_path / "resumed"), "3", "3,1", "2"])
    on_ranks([helper, model, str(tmp_path / "resumed"), "3", "3,1"])
    resumed = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert resumed["resumed_from"] == 2 and resumed["steps_done"] == 3
    a = load(tmp_path / "straight" / "trainable.safetensors")
    b = load(tmp_path / "resumed" / "trainable.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


# --- sharded models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory):
    """A tiny model with larger weights (init_std 0.08): its greedy tokens vary (the default repeats one token)."""
    from realign.model.tiny import TinyModelConfig, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "peaked", TinyModelConfig(seed=0, init_std=0.08))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tensor", "pipeline"])
def test_sharded_greedy_generation_matches_one_process(peaked_model, tmp_path, mode):
    from realign.model.generate import GenerationConfig
    from realign.model.sharded import ShardedJob

    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Reverse: {1000 + 37 * i}"}) + "\n" for i in range(6))
    )
    gen = GenerationConfig(temperature=0.0, max_tokens=12, batch_size=6)

    def job(tag: str, how: str):
        path = tmp_path / f"{tag}.json"
        spec = ShardedJob(
            kind="generate",
            model=str(peaked_model),
            data=str(tmp_path / "prompts.jsonl"),
            out=str(tmp_path / f"{tag}-out.json"),
            mode=how,
            generation=gen,
        )
        path.write_text(spec.model_dump_json())
        return str(path)

    one_process(["-m", "realign.model.sharded", job("one", "auto")])
    on_ranks(["-m", "realign.model.sharded", job("two", mode)])
    one = json.loads((tmp_path / "one-out.json").read_text())
    two = json.loads((tmp_path / "two-out.json").read_text())
    assert one["ranks"] == 1 and two["ranks"] == 2 and two["mode"] == mode
    tokens = [[c["tokens"] for c in per] for per in one["results"]]
    assert len({tuple(t[0]) for t in tokens}) > 1 and all(len(set(t[0])) > 3 for t in tokens)  # not a degenerate run
    assert [[c["tokens"] for c in per] for per in two["results"]] == tokens


@pytest.mark.slow
def test_sharded_logprobs_match_one_process(work, tmp_path):
    from realign.model.sharded import ShardedJob

    def job(tag: str, how: str):
        path = tmp_path / f"{tag}.json"
        spec = ShardedJob(
            kind="logprobs",
            model=str(work["model"]),
            data=str(work["root"] / "pairs.jsonl"),
            out=str(tmp_path / f"{tag}-out.json"),
            mode=how,
            max_len=64,
        )
        path.write_text(spec.model_dump_json())
        return str(path)

    from realign.train.distributed_job import DistributedConfig
    from tasks.shared.distributed import run_sharded_inference

    one_process(["-m", "realign.model.sharded", job("one", "auto")])
    spec = ShardedJob.model_validate_json(open(job("two", "tensor")).read())
    done = run_sharded_inference(spec, DistributedConfig(hosts=["127.0.0.1"], ranks_per_host=2), timeout=240)
    assert done["ranks"] == 2 and done["mode"] == "tensor"  # through the stage task's launcher
    one = json.loads((tmp_path / "one-out.json").read_text())["results"]
    two = done["results"]
    for key in ("chosen_logps", "rejected_logps"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-4)
    assert two["chosen_tokens"] == one["chosen_tokens"]


# --- the Prefect side ----------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_task_forwards_rank_lines_and_names_a_dead_rank(work, tmp_path):
    from realign.train.distributed_job import DistributedConfig, DistributedJob, RankFailed, launch
    from tasks.shared.distributed import run_distributed_training

    keep, logger = Keep(), logging.getLogger("realign.distributed")
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    job = DistributedJob.model_validate_json(write_job(work, "sft", "task", steps=2).read_text())
    try:
        result = run_distributed_training(job, DistributedConfig(hosts=["127.0.0.1"], ranks_per_host=2), timeout=240)
    finally:
        logger.removeHandler(keep)
    assert result["ranks"] == 2 and result["steps_done"] == 2
    assert any(line.startswith("step 2: loss") and "2 ranks" in line for line in keep.lines), keep.lines

    dies = tmp_path / "dies.py"
    dies.write_text(
        "import realign, sys\nimport mlx.core as mx\ng = mx.distributed.init()\n"
        "mx.eval(mx.distributed.all_sum(mx.ones(1), group=g))\n"
        "if g.rank() == 1:\n    sys.exit('rank 1 gives up')\n"
        "mx.eval(mx.distributed.all_sum(mx.ones(1), group=g))\n"
    )
    with pytest.raises(RankFailed) as failed:
        launch(DistributedConfig(hosts=["127.0.0.1"], ranks_per_host=2), [str(dies)], timeout=120)
    assert failed.value.rank == 1 and failed.value.host == "127.0.0.1"
    assert "rank 1 on 127.0.0.1" in str(failed.value) and "rank 1 gives up" in str(failed.value)


def test_the_rank_that_failed_on_its_own_account_is_named_not_its_peer():
    from realign.train.distributed_job import DistributedConfig, failed_rank, rank_error

    cfg = DistributedConfig(hosts=["10.0.0.1", "10.0.0.2"], ranks_per_host=1)
    # mlx.launch reports the victim (rank 0 lost its peer) first; rank 1's own line says what happened
    lines = [
        '{"rank_failed": 0, "peer_error": true, "error": "RuntimeError: [ring] Socket 4 was closed by the peer"}',
        '{"rank_failed": 1, "peer_error": false, "error": "out of memory"}',
        "[WARN] Node with rank 0 exited with code 1",
        "[WARN] Node with rank 1 exited with code -15",
    ]
    assert failed_rank(lines, cfg) == (1, "10.0.0.2")
    assert failed_rank(lines[:1] + lines[2:], cfg) == (0, "10.0.0.1")  # only peer errors: the first reported
    assert failed_rank(lines[3:], cfg) == (1, "10.0.0.2")  # no guard lines: mlx.launch's own report
    assert failed_rank(["step 1: loss 2.0"], cfg) == (None, None)
    assert rank_error(lines, 1) == "out of memory" and rank_error(lines, 0).endswith("closed by the peer")
    assert rank_error(lines[2:], 1) is None


def test_sampling_is_sharded_when_the_recipe_forces_it_or_the_plan_says_the_model_fits_no_machine(
    tmp_path, tiny_model_dir
):
    from hardware.sizing import KNOWN_SHAPES
    from realign.train.distributed_job import DistributedConfig
    from tasks.shared.distributed import sharded_sampling

    ranks = DistributedConfig(hosts=["127.0.0.1"], ranks_per_host=2)
    huge = tmp_path / "llama-405b"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({**KNOWN_SHAPES["Llama-3.1-405B"], "torch_dtype": "bfloat16"}))

    assert sharded_sampling(None, str(tiny_model_dir), 100) is None  # fits: sample here
    assert sharded_sampling(ranks, str(tiny_model_dir), 100) is None  # ranks for training only
    forced = ranks.model_copy(update={"model_sharding": "always"})
    assert "always" in sharded_sampling(forced, str(tiny_model_dir), 100)
    why = sharded_sampling(ranks, str(huge), 100)
    assert why.startswith("the hardware plan says sharded") and "405" in why
    assert sharded_sampling(ranks.model_copy(update={"model_sharding": "never"}), str(huge), 100) is None
    keep, logger = Keep(), logging.getLogger("realign.distributed")
    logger.addHandler(keep)
    try:
        assert sharded_sampling(None, str(huge), 100) is None  # no ranks to shard over: said, not failed
    finally:
        logger.removeHandler(keep)
    assert any("no distributed section" in line for line in keep.lines), keep.lines
    assert sharded_sampling(None, str(tmp_path / "no-such-model"), 100) is None  # nothing to plan by
    adapters = tmp_path / "lora"  # a LoRA stage's output: the sharded loader cannot apply adapters
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    with pytest.raises(ValueError, match="LoRA adapters"):
        sharded_sampling(forced, str(adapters), 100)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tensor", "pipeline"])
def test_stage_two_samples_with_the_model_split_over_two_ranks_as_one_process_does(peaked_model, tmp_path, mode):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from realign.recipes.dpo import DPOWorkflowConfig
    from tasks.dpo.preference_data import generate_pairs

    def recipe(distributed):
        c = DPOWorkflowConfig.model_validate(
            {
                "model": {"path": str(peaked_model)},
                "data": {"n_prompts": 12, "n_prompts_benchmark": 4, "n_eval": 10, "n_dev": 10},
                "pairs": {
                    "generation": {"n": 2, "temperature": 0.0, "max_tokens": 8, "batch_size": 16},
                    "use_calibration": False,
                },
                "distributed": distributed,
            }
        )
        root = tmp_path / ("two" if distributed else "one")
        root.mkdir()
        (root / "recipe.json").write_text(json.dumps(c.model_dump(mode="json")))
        return c, str(root)

    @flow
    def stage_two(c, run_dir: str):
        return generate_pairs(c.pairs, c.data, 0.15, 13, str(peaked_model), run_dir, 1)

    sharded = {"hosts": ["127.0.0.1"], "ranks_per_host": 2, "model_sharding": "always", "shard_mode": mode}
    with prefect_test_harness(server_startup_timeout=120):
        one = stage_two(*recipe(None))
        two = stage_two(*recipe(sharded))
    assert one.shards[0]["shard"] == "local" and two.shards[0]["shard"] == f"sharded model ({mode}, 2 ranks)"
    assert (Path(two.out_dir) / "sharded" / "generated.json").is_file()
    rows = [[json.loads(line) for line in (Path(r.out_dir) / "completions.jsonl").open()] for r in (one, two)]
    texts = [r["responses"][0]["text"] for r in rows[0]]
    assert len(rows[0]) >= 12 and len(set(texts)) > 3  # greedy answers that differ from prompt to prompt
    assert [r["prompt"] for r in rows[1]] == [r["prompt"] for r in rows[0]]  # back in the stage's order
    same = sum(a == b for a, b in zip(*rows))
    print(f"{mode}: {same} of {len(rows[0])} prompts sampled and scored exactly as in one process")
    if mode == "pipeline":  # each rank runs whole layers: the same arithmetic, the same answers and scores
        assert same == len(rows[0]) and json.dumps(two.stats) == json.dumps(one.stats)
    else:  # each layer's partial products are summed across ranks in another order: a near-tie may flip a token
        assert same >= 0.6 * len(rows[0])  # measured 14 and 15 of 16
