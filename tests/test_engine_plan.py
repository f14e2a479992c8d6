"""The plan's two packings agree: the column-wise one for runs of one model, the general one; and
the entries it shares between snapshots are each snapshot's own."""

from __future__ import annotations

import random

import torch

from engine_helpers import snapshot

from normscope.engine.plan import Entry, _entry, _greedy_buckets, _presences, _uniform_buckets, plan_buckets


def _entries(nbytes: list[int], snapshots: int) -> list[dict[str, Entry]]:
    one = {f"p{i}": Entry((n,), "uint8", {}, n, n) for i, n in enumerate(nbytes)}
    return [dict(one) for _ in range(snapshots)]


def test_uniform_packing_equals_the_general_greedy_one():
    rng = random.Random(3)
    for _ in range(300):
        nbytes = [rng.choice([0, 1, 7, 64, 300, 1000]) for _ in range(rng.randint(1, 60))]
        budget = rng.randint(max(nbytes) or 1, 3000)
        entries = _entries(nbytes, rng.randint(1, 5))
        uniform = _uniform_buckets(entries, budget)
        assert uniform is not None
        assert uniform == _greedy_buckets(_presences(entries), budget, len(entries))


def test_uniform_packing_declines_runs_it_does_not_cover():
    # a tensor over the budget (row slices), a model that changes, and no snapshot at all
    assert _uniform_buckets(_entries([10, 500], 2), 100) is None
    changed = _entries([10, 20], 2)
    changed[1]["p1"] = Entry((30,), "uint8", {}, 30, 30)
    assert _uniform_buckets(changed, 100) is None
    grown = _entries([10, 20], 2)
    grown[1]["p2"] = Entry((5,), "uint8", {}, 5, 5)
    assert _uniform_buckets(grown, 100) is None
    assert _uniform_buckets([], 100) is None


def test_snapshots_of_one_model_share_their_entries_and_a_changed_one_gets_its_own():
    """The plan takes a snapshot's entries as the previous one's only where its names, shapes and
    dtypes are the same: each snapshot's entries are those `_entry` makes for it alone."""

    a = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    runs = [a, dict(a), {"w": torch.zeros(5, 3), "b": torch.zeros(3)},
            {"w": torch.zeros(5, 3), "b": torch.zeros(3, dtype=torch.float64)},
            {"b": torch.zeros(3, dtype=torch.float64), "w": torch.zeros(5, 3)}]
    snapshots = [snapshot(i, tensors) for i, tensors in enumerate(runs)]
    plan = plan_buckets(snapshots, 1 << 20)
    for snap, planned in zip(snapshots, plan.entries):
        assert planned == {name: _entry(snap, name, ref, False) for name, ref in snap.tensors.items()}
        assert list(planned) == list(snap.tensors)
    assert plan.entries[1]["w"] is plan.entries[0]["w"]  # the same model: taken as it was
    assert plan.entries[1] is plan.entries[0]  # its whole mapping, the same object
    assert plan.entries[2] is not plan.entries[1] and plan.entries[3] is not plan.entries[2]
    assert plan.entries[2]["w"].shape == (5, 3) and plan.entries[3]["b"].dtype == "float64"


def test_uniform_packing_of_one_shared_mapping_equals_that_of_copies():
    """Snapshots planned with one shared mapping (`_plain_entries`) are packed as copies of it are."""
    one = _entries([10, 20, 30, 40], 1)[0]
    shared = [one] * 3
    assert _uniform_buckets(shared, 50) == _uniform_buckets([dict(one) for _ in range(3)], 50)
