"""Property: mapping optimizer positions to names is either right or refused, never wrong."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normscope.sources._optimizer import _map_positions

SHAPES = [(4,), (4, 4), (2,), (8, 4), (4,)]


@st.composite
def models_and_groups(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 9))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n)]
    names = [f"p{i}" for i in range(n)]
    n_groups = draw(st.integers(1, 3))
    owner = [draw(st.integers(0, n_groups - 1)) for _ in range(n)]
    # frozen: not in the optimizer at all; without state the shape is unknown (a wildcard)
    frozen = [draw(st.booleans()) and n > 1 for _ in range(n)]
    has_state = [draw(st.booleans()) for _ in range(n)]
    return names, shapes, n_groups, owner, frozen, has_state


@settings(max_examples=200, deadline=None)
@given(models_and_groups())
def test_mapping_is_right_or_refused(case):  # type: ignore[no-untyped-def]
    names, shapes, n_groups, owner, frozen, has_state = case
    # build what Optimizer.state_dict() writes: positions numbered group by group
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    truth: dict[int, str] = {}
    members = [
        [i for i in range(len(names)) if owner[i] == g and not frozen[i]]
        for g in range(n_groups)
    ]
    position = 0
    for g, idx in enumerate(members):
        for i in idx:
            groups[g].append(position)
            truth[position] = names[i]
            position += 1
    state = {
        pos: {"exp_avg": torch.zeros(shapes[names.index(name)])}
        for pos, name in truth.items()
        if has_state[names.index(name)]
    }
    found = _map_positions(groups, state, names, dict(zip(names, shapes)))
    assert found is None or found == truth
    if not any(frozen) and n_groups == 1:
        assert found == truth  # one group, nothing frozen: always mapped
