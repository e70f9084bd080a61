"""On-policy RL: advantages and losses against hand-computed values (TRL's formulas), exact resume, and learning."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from conftest import REPO
from realign.train.rl import group_advantages, grpo_loss, rloo_advantages, rloo_loss

E = 1e-4  # TRL's epsilon in (r - mean) / (std + 1e-4)


# --- advantages ---------------------------------------------------------------------------


def test_group_advantages_divide_by_the_groups_bessel_std():
    # group [1, 2, 3]: mean 2, std with Bessel's correction 1; group [4, 4, 4]: zero std -> advantages 0
    adv = group_advantages([1, 2, 3, 4, 4, 4], 3, "group")
    np.testing.assert_allclose(adv, [-1 / (1 + E), 0, 1 / (1 + E), 0, 0, 0], rtol=1e-12)


def test_group_advantages_batch_scale_uses_the_whole_batchs_std():
    # batch [1, 2, 3, 4, 4, 4]: mean 3, squared deviations 4+1+0+1+1+1 = 8, std = sqrt(8 / 5)
    adv = group_advantages([1, 2, 3, 4, 4, 4], 3, "batch")
    s = math.sqrt(8 / 5)
    np.testing.assert_allclose(adv, [-1 / (s + E), 0, 1 / (s + E), 0, 0, 0], rtol=1e-12)


def test_group_advantages_none_only_centres():
    np.testing.assert_allclose(group_advantages([1, 2, 3, 4, 4, 4], 3, "none"), [-1, 0, 1, 0, 0, 0])


def test_a_reward_the_scorer_could_not_decide_teaches_nothing():
    # [1, NaN, 3]: statistics over 1 and 3 (mean 2, std sqrt(2)); the NaN sample's advantage is 0
    adv = group_advantages([1, float("nan"), 3], 3)
    np.testing.assert_allclose(adv, [-1 / (math.sqrt(2) + E), 0, 1 / (math.sqrt(2) + E)], rtol=1e-12)


def test_group_advantages_refuse_ragged_groups_and_unknown_scales():
    with pytest.raises(ValueError, match="groups of num_generations=4"):
        group_advantages([1, 2, 3], 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages([1, 2], 2, "std")  # type: ignore[arg-type]


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    # baselines: (2+3)/2, (1+3)/2, (1+2)/2
    adv, r = rloo_advantages([1, 2, 3], 3)
    np.testing.assert_allclose(adv, [-1.5, 0.0, 1.5])
    np.testing.assert_allclose(r, [1, 2, 3])


def test_rloo_subtracts_the_kl_from_the_reward_then_normalises():
    # r' = r - 0.5 * [1, 0, 2] = [0.5, 2, 2]; baselines (2+2)/2 = 2, (0.5+2)/2 = 1.25, 1.25
    adv, r = rloo_advantages([1, 2, 3], 3, sequence_kl=[1, 0, 2], beta=0.5)
    np.testing.assert_allclose(r, [0.5, 2, 2])
    np.testing.assert_allclose(adv, [-1.5, 0.75, 0.75])
    # normalised: mean 0, Bessel std sqrt((2.25 + 0.5625 + 0.5625) / 2)
    s = math.sqrt(3.375 / 2)
    normed, _ = rloo_advantages([1, 2, 3], 3, sequence_kl=[1, 0, 2], beta=0.5, normalize=True)
    np.testing.assert_allclose(normed, np.array([-1.5, 0.75, 0.75]) / (s + E), rtol=1e-12)
    with pytest.raises(ValueError, match="num_generations >= 2"):
        rloo_advantages([1, 2], 1)


# --- losses -------------------------------------------------------------------------------
# Two completions of two tokens; the second one's second token is padding.
LOGP = [[-1.0, -2.0], [-0.5, -1.0]]
OLD = [[-1.2, -1.9], [-0.5, -1.5]]
REF = [[-1.1, -2.0], [-0.4, -1.0]]
ADV = [1.0, -1.0]
MASK = [[1.0, 1.0], [1.0, 0.0]]
# c = exp(logp - old) = [[e^0.2, e^-0.1], [1, (e^0.5, masked)]]; clip to [0.8, 1.2]
# per token -min(cA, clip(c)A): [[-1.2, -e^-0.1], [1, masked]]
T00, T01, T10 = -1.2, -math.exp(-0.1), 1.0
# k3 = e^d - d - 1, d = ref - logp = [[-0.1, 0], [0.1, masked]]
K00, K10 = math.exp(-0.1) + 0.1 - 1, math.exp(0.1) - 0.1 - 1


def _loss(**kw):
    args = [mx.array(LOGP), mx.array(OLD), mx.array(REF), mx.array(ADV), mx.array(MASK)]
    defaults = {"beta": 0.0, "epsilon_low": 0.2, "epsilon_high": 0.2, "loss_type": "dapo", "max_completion_length": 4}
    loss, metrics = grpo_loss(*args, **{**defaults, **kw})
    return loss.item(), {k: v.item() for k, v in metrics.items()}


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        ("grpo", ((T00 + T01) / 2 + T10) / 2),  # each sequence's token mean, then the mean of sequences
        ("bnpo", (T00 + T01 + T10) / 3),  # all completion tokens of the batch
        ("dapo", (T00 + T01 + T10) / 3),
        ("dr_grpo", (T00 + T01 + T10) / (2 * 4)),  # sum / (batch * max_completion_length)
    ],
)
def test_grpo_loss_reductions(loss_type, expected):
    loss, metrics = _loss(loss_type=loss_type)
    assert loss == pytest.approx(expected, rel=1e-6)
    # measured even at beta 0 (float32: exp(d) - d - 1 keeps ~1e-7 absolute precision for small d)
    assert metrics["kl"] == pytest.approx((K00 + 0 + K10) / 3, abs=1e-6)
    # only token (0, 0) is clipped: c = e^0.2 > 1.2 with A > 0 (token (1, 1) has A < 0, and is padding besides)
    assert metrics["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert metrics["clip_ratio/low_mean"] == 0.0
    assert metrics["clip_ratio/region_mean"] == pytest.approx(1 / 3)


def test_grpo_loss_adds_beta_times_k3():
    loss, _ = _loss(beta=0.1)
    assert loss == pytest.approx((T00 + T01 + T10 + 0.1 * (K00 + K10)) / 3, rel=1e-6)


def test_grpo_loss_asymmetric_clipping():
    # epsilon_high 0.3: e^0.2 = 1.2214 < 1.3 is no longer clipped
    loss, metrics = _loss(epsilon_high=0.3)
    assert loss == pytest.approx((-math.exp(0.2) + T01 + T10) / 3, rel=1e-6)
    assert metrics["clip_ratio/region_mean"] == 0.0
    # epsilon_low 0.05: a ratio of e^-0.1 = 0.905 with A > 0 is not clipped (low clipping applies only where A < 0)
    _, metrics = _loss(epsilon_low=0.05)
    assert metrics["clip_ratio/low_mean"] == 0.0


def test_grpo_loss_clips_low_ratios_of_negative_advantages():
    # one token, c = e^(log 0.6) = 0.6 < 1 - 0.2 with A = -1: -min(0.6 * -1, 0.8 * -1) = 0.8, and it counts as clipped
    lp, old = mx.array([[math.log(0.6)]]), mx.array([[0.0]])
    loss, metrics = grpo_loss(lp, old, None, mx.array([-1.0]), mx.array([[1.0]]), epsilon_low=0.2, epsilon_high=0.2)
    assert loss.item() == pytest.approx(0.8, rel=1e-6)
    assert metrics["clip_ratio/low_mean"].item() == 1.0 and metrics["clip_ratio/high_mean"].item() == 0.0
    # asymmetric: epsilon_low 0.5 leaves 0.6 inside [0.5, 1.2]: loss -(0.6 * -1) = 0.6, nothing clipped
    loss, metrics = grpo_loss(lp, old, None, mx.array([-1.0]), mx.array([[1.0]]), epsilon_low=0.5, epsilon_high=0.2)
    assert loss.item() == pytest.approx(0.6, rel=1e-6) and metrics["clip_ratio/region_mean"].item() == 0.0


def test_grpo_loss_on_fresh_samples_is_the_policy_gradient():
    # old None (num_iterations 1): c = 1, loss = -mean A over tokens, d loss / d logp = -A / (completion tokens)
    lp = mx.array(LOGP)

    def f(x):
        return grpo_loss(x, None, None, mx.array(ADV), mx.array(MASK), loss_type="dapo")[0]

    loss, grad = mx.value_and_grad(f)(lp)
    assert loss.item() == pytest.approx(-(1 + 1 - 1) / 3)
    np.testing.assert_allclose(np.array(grad), [[-1 / 3, -1 / 3], [1 / 3, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(lp, None, None, mx.array(ADV), mx.array(MASK), beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(lp, None, None, mx.array(ADV), mx.array(MASK), loss_type="dr_grpo", max_completion_length=None)


def test_rloo_loss_clips_the_sequence_ratio():
    # sequence log-probs: row 0 -3 vs old -3.1 (c = e^0.1, inside the clip), row 1 -0.5 vs -0.5 (c = 1)
    loss, metrics = rloo_loss(mx.array(LOGP), mx.array(OLD), mx.array(ADV), mx.array(MASK))
    assert loss.item() == pytest.approx((-math.exp(0.1) + 1.0) / 2, rel=1e-6)
    assert metrics["clip_ratio/region_mean"].item() == 0.0
    # a tighter clip: e^0.1 = 1.105 > 1.05 with A > 0 is clipped to 1.05
    loss, metrics = rloo_loss(mx.array(LOGP), mx.array(OLD), mx.array(ADV), mx.array(MASK), epsilon_high=0.05)
    assert loss.item() == pytest.approx((-1.05 + 1.0) / 2, rel=1e-6)
    assert metrics["clip_ratio/high_mean"].item() == 0.5


# --- the loop -----------------------------------------------------------------------------


def test_killed_rl_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    script = REPO / "tests" / "helpers" / "rl_run.py"

    def run(out, *extra, **kw):
        return subprocess.run(
            [sys.executable, str(script), str(tiny_model_dir), str(out), "7", *extra],
            capture_output=True,
            text=True,
            timeout=300,
            **kw,
        )

    straight = run(tmp_path / "a")
    assert straight.returncode == 0, straight.stderr
    assert "done resumed_from=0 steps=7" in straight.stdout

    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "b"), "7", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # step 4 ran: the step-3 checkpoint is on disk, the run is mid-way
        if line.strip() == "step 4" or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step_000003"

    resumed = run(tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr
    assert "done resumed_from=3 steps=7" in resumed.stdout
    assert resumed.stdout.splitlines()[0] == "step 4"
    a, b = mx.load(str(tmp_path / "a" / "final.safetensors")), mx.load(str(tmp_path / "b" / "final.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert mx.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_rl_with_a_verifier_reward_beats_the_sft_model_beyond_its_interval(sft_model_dir):
    from realign.data.datasets import DataConfig, load_data
    from realign.eval.probes import accuracy
    from realign.eval.verdict import compare
    from realign.model.load import load_model
    from realign.score.verifiers import Verifier
    from realign.train.loop import TrainConfig, prepare_model
    from realign.train.rl import RLConfig, rl_train

    bundle = load_data(DataConfig())
    target = bundle.target  # 200 held-out reversal items: no prompt of them is trained on
    reverse = [p for p in bundle.prompts if p.startswith("Reverse")]
    assert not set(reverse) & set(target.prompts)
    lm, ref = load_model(sft_model_dir), load_model(sft_model_dir)
    before = accuracy(lm.model, lm.tokenizer, target.prompts, target.answers)
    cfg = RLConfig(
        num_generations=8,
        beta=0.0,
        max_completion_length=10,
        # 90 steps: measured gains +0.065, +0.060, +0.050 for seeds 0, 1, 2 (at 60 steps -0.035 to +0.040, inside
        # the interval of 200 items): the test pins seed 0, whose interval clears 0 by +0.015.
        train=TrainConfig(steps=90, batch_size=16, learning_rate=1e-5, lora=None, seed=0),
    )
    prepare_model(lm.model, cfg.train)
    verifier = Verifier(bundle.answers, mode="graded")
    result = rl_train(lm.model, lm.tokenizer, reverse, verifier.score, cfg, reference=ref.model)
    after = accuracy(lm.model, lm.tokenizer, target.prompts, target.answers)
    gain = compare("reverse_accuracy", "after", after.exact, "before", before.exact)
    assert result.steps_done == 90
    assert gain.ci_low > 0, gain.describe()  # the whole 95% interval is above 0: more than noise


def _tiny_rl(tiny_model_dir, **train):
    from realign.model.load import load_model
    from realign.train.loop import TrainConfig, prepare_model
    from realign.train.rl import RLConfig

    lm = load_model(tiny_model_dir)
    cfg = RLConfig(
        num_generations=2,
        max_completion_length=4,
        train=TrainConfig(**{"steps": 3, "batch_size": 2, "learning_rate": 1e-3, "lora": {"rank": 4}, **train}),
    )
    prepare_model(lm.model, cfg.train)
    return lm, cfg


def test_every_update_follows_one_schedule_and_metrics_use_trls_definitions(tiny_model_dir):
    from realign.train.rl import rl_train

    lm, cfg = _tiny_rl(tiny_model_dir, grad_accum=2)
    cfg = cfg.model_copy(update={"num_iterations": 2})
    seen = []

    def reward(prompts, completions):
        r = [float(len(c) % 3) for c in completions]
        seen.append(r)
        return r

    rows = []
    rl_train(lm.model, lm.tokenizer, [f"Copy: {i}{i}" for i in range(8)], reward, cfg, callback=rows.append)
    # 3 steps x 2 updates: cosine from 1e-3 to 1e-4 over 6 updates; a step logs the lr of its last update
    lr = [1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in (1, 3, 5)]
    assert [r["lr"] for r in rows] == pytest.approx(lr, rel=1e-5)
    # two micro-batches of 2 prompts x 2 samples per step; reward_std is the std of all of the step's rewards
    for row, (a, b) in zip(rows, zip(seen[::2], seen[1::2])):
        assert row["samples"] == 8
        assert row["reward"] == pytest.approx(np.mean(a + b))
        assert row["reward_std"] == pytest.approx(np.std(a + b, ddof=1))


def test_a_run_stopped_by_its_kl_limit_stays_stopped_when_resumed(tiny_model_dir, tmp_path):
    from realign.train.rl import rl_train

    def reward(prompts, completions):
        return [float(len(c)) for c in completions]

    lm, cfg = _tiny_rl(tiny_model_dir, kl_limit=1e-12, learning_rate=5e-2)
    first = rl_train(lm.model, lm.tokenizer, ["Copy: 12", "Copy: 34"], reward, cfg, out_dir=tmp_path)
    assert first.stopped == "kl_limit" and first.steps_done < 3
    lm, cfg = _tiny_rl(tiny_model_dir, kl_limit=1e-12, learning_rate=5e-2)
    again = rl_train(lm.model, lm.tokenizer, ["Copy: 12", "Copy: 34"], reward, cfg, out_dir=tmp_path)
    assert (again.stopped, again.steps_done, again.resumed_from) == ("kl_limit", first.steps_done, first.steps_done)
    with pytest.raises(ValueError, match="dropout"):
        lm, cfg = _tiny_rl(tiny_model_dir, lora={"rank": 4, "dropout": 0.1})
        rl_train(lm.model, lm.tokenizer, ["Copy: 12"], reward, cfg)
