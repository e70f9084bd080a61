"""realign.train.held_out and resume keys: splits keep pairs and their reference log-probs aligned."""

import hashlib

import numpy as np

from realign.train.held_out import split_pairs, split_with_reference
from realign.train.loop import resume_key


def test_split_keeps_reference_aligned_and_is_seeded():
    pairs = [{"id": i} for i in range(10)]
    ref = {"chosen_logps": np.arange(10) * 1.0, "rejected_logps": np.arange(10) * -1.0}
    tr, va, ref_tr, ref_va = split_with_reference(pairs, ref, 0.2, seed=3)
    assert len(va) == 2 and sorted(p["id"] for p in tr + va) == list(range(10))
    assert list(ref_tr["chosen_logps"]) == [p["id"] for p in tr] and list(ref_va["rejected_logps"]) == [
        -p["id"] for p in va
    ]
    assert [p["id"] for p in va] == list(split_pairs(10, 0.2, 3)[1])
    assert split_pairs(1, 0.2, 0)[1].size == 0  # one pair: nothing to hold out


def test_resume_key_is_the_digest_of_its_parts():
    assert resume_key("a", b"bc") == hashlib.sha256(b"abc").hexdigest()
    assert resume_key("a", b"bc") != resume_key("a", b"bd")
