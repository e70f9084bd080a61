"""Proportional shard planning: proportions, rounding, zero-throughput and single pools."""

import pytest

from hardware.shards import makespan, plan_shards


def test_seed_example_split():
    assert plan_shards(1000, {"m4-max": 1.95, "m3-ultra": 1.03}) == {"m4-max": 654, "m3-ultra": 346}


def test_largest_remainder_rounding_sums_exactly():
    # exact shares 3.333.. each: the one extra example goes to a pool by remainder, then speed, then name
    assert plan_shards(10, {"a": 1.0, "b": 1.0, "c": 1.0}) == {"a": 4, "b": 3, "c": 3}
    counts = plan_shards(7, {"fast": 5.0, "mid": 3.0, "slow": 1.0})  # exact 3.889, 2.333, 0.778
    assert counts == {"fast": 4, "mid": 2, "slow": 1} and sum(counts.values()) == 7


def test_zero_throughput_pool_gets_nothing_and_one_pool_gets_all():
    assert plan_shards(100, {"a": 2.0, "b": 0.0}) == {"a": 100, "b": 0}
    assert plan_shards(5, {"only": 0.3}) == {"only": 5}
    with pytest.raises(ValueError, match="calibrate"):
        plan_shards(10, {"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="finite"):
        plan_shards(10, {"a": float("nan")})


def test_proportional_split_beats_half_and_half():
    tp = {"m4-max": 1.95, "m3-ultra": 1.03}
    calibrated = makespan(plan_shards(1000, tp), tp)
    half = makespan({"m4-max": 500, "m3-ultra": 500}, tp)
    assert calibrated == pytest.approx(max(654 / 1.95, 346 / 1.03))
    assert half == pytest.approx(500 / 1.03) and half / calibrated > 1.4


def test_merge_checks_every_row_comes_back_exactly_once():
    from hardware.shards import ShardMismatch, assign_rows, merge_shards

    assigned = assign_rows(list(range(10)), {"m4-max": 6, "m3-ultra": 4})
    assert assigned == {"m4-max": [0, 1, 2, 3, 4, 5], "m3-ultra": [6, 7, 8, 9]}
    assert merge_shards(assigned, {"m4-max": [5, 4, 3, 2, 1, 0], "m3-ultra": [6, 7, 8, 9]}) == list(range(10))
    with pytest.raises(ShardMismatch, match=r"shard m3-ultra: 1 missing \(e.g. \[9\]\), 1 duplicated \(e.g. \[8\]\)"):
        merge_shards(assigned, {"m4-max": list(range(6)), "m3-ultra": [6, 7, 8, 8]})
    with pytest.raises(ShardMismatch, match="shard m4-max: returned nothing"):
        merge_shards(assigned, {"m3-ultra": [6, 7, 8, 9]})
    with pytest.raises(ValueError, match="plan covers 9 rows"):
        assign_rows(list(range(10)), {"a": 9})
