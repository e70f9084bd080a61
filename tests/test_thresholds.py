"""Config defaults are SPEC.md's numbers, read from SPEC.md itself; configs reject bad input."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from hardware.config import HardwareConfig
from realign.thresholds import OptimizationThresholds, ThresholdsConfig, TierBand

REPO = Path(__file__).resolve().parents[1]
# The shared spec sits beside the checkout in CI and in sessions; docs/SPEC.md is the copy that travels with a clone.
SPEC_PATH = next(p for p in (REPO.parent / "shared" / "SPEC.md", REPO / "docs" / "SPEC.md") if p.exists())
SPEC = SPEC_PATH.read_text()


def _num(text: str) -> float:
    return float(text.rstrip("%").replace(",", "")) / (100 if text.endswith("%") else 1)


def spec_number(pattern: str) -> float:
    m = re.search(pattern, SPEC)
    assert m, f"pattern {pattern!r} not found in {SPEC_PATH}"
    return _num(m.group(1))


def spec_tier_table() -> dict[str, tuple[str, float, float]]:
    """metric -> (direction, high bound, medium bound) parsed from SPEC.md's tier table."""
    rows = {}
    for line in SPEC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not re.match(r"^(>=|<=)", cells[2]):
            continue
        metric = cells[1].split()[0]
        op, high = re.match(r"(>=|<=)\s*([\d.]+%?)", cells[2]).groups()
        lo, hi = re.match(r"([\d.]+%?)\s*-\s*([\d.]+%?)", cells[3]).groups()
        if "%" in hi and "%" not in lo:
            lo += "%"
        direction = "higher" if op == ">=" else "lower"
        rows[metric] = (direction, _num(high), _num(lo) if direction == "higher" else _num(hi))
    return rows


def test_tier_defaults_match_spec_table():
    table = spec_tier_table()
    tiers = ThresholdsConfig().tiers
    assert set(table) == set(type(tiers).model_fields), table
    for metric, (direction, high, medium) in table.items():
        band = getattr(tiers, metric)
        assert band.direction == direction, metric
        assert (band.high, band.medium) == pytest.approx((high, medium)), metric


def test_stage_thresholds_match_spec():
    t = ThresholdsConfig()
    assert t.preference.min_preference_gap == spec_number(r"gap >= ([\d.]+)")
    assert t.preference.min_pairs == spec_number(r"pairs >= (\d+)")
    assert t.verifiable.min_verifiability == spec_number(r"verifiability >= (\d+%)")
    assert t.factuality.min_citation_accuracy == spec_number(r"citation accuracy >= (\d+%)")
    assert t.reward_model.min_accuracy == spec_number(r"Reward model training: accuracy >= (\d+%)")
    assert t.reward_model.min_val_accuracy == spec_number(r"val accuracy >= (\d+%)")
    assert t.reward_model.max_train_val_gap == spec_number(r"train/val gap <= (\d+%)")
    assert t.verifiable.max_false_positive_rate == spec_number(r"false-positive rate < (\d+%)")
    assert t.factuality.min_factuality == spec_number(r"factuality >= (\d+%)")
    assert t.factuality.max_hallucination_rate == spec_number(r"hallucination rate < (\d+%)")
    assert t.optimization.max_kl == spec_number(r"KL <= ([\d.]+)")
    assert t.optimization.min_entropy == spec_number(r"entropy ([\d.]+)-[\d.]+")
    assert t.optimization.max_entropy == spec_number(r"entropy [\d.]+-([\d.]+)")
    assert t.evaluation.min_capability_retention == spec_number(r"capability retention >= (\d+%)")
    assert t.evaluation.min_decontamination == spec_number(r"decontamination >= ([\d.]+)")
    assert t.evaluation.decontamination_ngram == spec_number(r"share a (\d+)-gram")
    # From the seeds (stage 1 gate: "Validation perplexity <20"); not in SPEC.md's table.
    assert t.sft.max_perplexity == 20.0


def test_hardware_defaults_match_spec():
    hw = HardwareConfig()
    for name, label in (("m4-max", "M4 Max"), ("m3-ultra", "M3 Ultra")):
        m = re.search(label + r" \((\d+) GB; ([\d,]+) GFLOPS(?: measured)?; best batch (\d+), peak (\d+) ex/s\)", SPEC)
        assert m, label
        prof = hw.machine(name)
        assert (prof.memory_gb, prof.gflops, prof.best_batch_size, prof.peak_examples_per_s) == tuple(
            _num(g) for g in m.groups()
        )
    split = re.search(r"\(([\d.]+)% / ([\d.]+)%\)", SPEC).groups()
    assert hw.default_split == {"m4-max": _num(split[0] + "%"), "m3-ultra": _num(split[1] + "%")}
    assert hw.selection.fast_max_b == spec_number(r"<= (\d+)B M4 Max")
    assert hw.selection.fast_if_fits_max_b == spec_number(r"30-(\d+)B M4 Max")
    assert hw.selection.large_max_b == spec_number(r"70-(\d+)B M3 Ultra")
    env = dict(re.findall(r"(MLX_METAL_PREALLOCATE|MLX_METAL_FAST_SYNCH|TOKENIZERS_PARALLELISM)=(\w+)", SPEC))
    assert hw.environment == env


@pytest.mark.parametrize(
    "band,value,tier",
    [
        ("preference_gap", 0.15, "HIGH"),
        ("preference_gap", 0.1499, "MEDIUM"),
        ("preference_gap", 0.10, "MEDIUM"),
        ("preference_gap", 0.0999, "REJECT"),
        ("calibration_error", 0.10, "HIGH"),
        ("calibration_error", 0.1001, "MEDIUM"),
        ("calibration_error", 0.15, "MEDIUM"),
        ("calibration_error", 0.1501, "REJECT"),
        ("agreement_rate", 0.90, "HIGH"),
        ("agreement_rate", 0.7999, "REJECT"),
        ("quality_score", 7.99, "MEDIUM"),
        ("preference_gap", float("nan"), "REJECT"),
    ],
)
def test_tier_boundaries(band, value, tier):
    assert getattr(ThresholdsConfig().tiers, band).tier_of(value) == tier


def test_configs_reject_unknown_fields_and_out_of_bounds():
    with pytest.raises(ValidationError, match="extra"):
        ThresholdsConfig.model_validate({"preference": {"min_gap": 0.2}})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ThresholdsConfig.model_validate({"preference": {"min_preference_gap": 1.5}})
    with pytest.raises(ValidationError, match="min_entropy"):
        OptimizationThresholds(min_entropy=2.5, max_entropy=2.0)
    with pytest.raises(ValidationError, match="must be <= high"):
        TierBand(direction="higher", high=0.1, medium=0.2)
    with pytest.raises(ValidationError, match="sum to 1.0"):
        HardwareConfig(default_split={"m4-max": 0.5, "m3-ultra": 0.4})


def test_every_field_has_a_description():
    import hardware.config
    import realign.thresholds

    missing = []
    for module in (realign.thresholds, hardware.config):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, module._Strict) and obj is not module._Strict:
                missing += [f"{name}.{f}" for f, info in obj.model_fields.items() if not info.description]
    assert missing == []
