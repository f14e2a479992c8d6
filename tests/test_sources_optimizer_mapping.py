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


@st.composite
def layer_stacks(draw):  # type: ignore[no-untyped-def]
    """A Sequential of Linear / LayerNorm / BatchNorm1d layers of random widths, maybe nested."""
    width = draw(st.sampled_from([2, 3, 4]))
    layers: list[torch.nn.Module] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["linear", "linear", "ln", "bn", "block"]))
        if kind == "linear":
            out = draw(st.sampled_from([2, 3, 4]))
            layers.append(torch.nn.Linear(width, out, bias=draw(st.booleans())))
            width = out
        elif kind == "ln":
            layers.append(torch.nn.LayerNorm(width))
        elif kind == "bn":
            layers.append(torch.nn.BatchNorm1d(width))
        else:
            layers.append(torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.LayerNorm(width)))
    return torch.nn.Sequential(*layers), draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(layer_stacks())
def test_lost_order_is_mapped_right_or_left_out(case):  # type: ignore[no-untyped-def]
    """Weights whose order is lost (sorted names, as safetensors keeps them): every parameter
    normscope maps gets its own state, whether one group or a decay / no-decay split."""
    from normscope.sources._optimizer import read_optimizer

    model, split = case
    params = list(model.parameters())
    groups = ([{"params": [p for p in params if p.dim() > 1]}, {"params": [p for p in params if p.dim() <= 1]}]
              if split else [{"params": params}])  # fmt: skip
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.Adam(groups, lr=0.1)
    model(torch.randn(5, model[0].in_features if isinstance(model[0], torch.nn.Linear) else
                      next(model.parameters()).shape[0])).pow(2).mean().backward()  # fmt: skip
    opt.step()
    sd = model.state_dict()
    names = sorted(k for k, v in sd.items() if v.is_floating_point())
    info = read_optimizer(opt.state_dict(), names, {k: tuple(sd[k].shape) for k in names},
                          lambda _n, v: v, "x", order_known=False)  # fmt: skip
    by_name = dict(model.named_parameters())
    for name, entry in info.state.items():
        assert torch.equal(entry["exp_avg"], opt.state[by_name[name]]["exp_avg"]), name


import pytest  # noqa: E402

from normscope.sources._optimizer import read_optimizer  # noqa: E402


@pytest.mark.parametrize("optimizer", [
    {"param_groups": [{"lr": 0.1, "params": 1.5}], "state": {}},  # found by benchmarks/fuzz.py
    {"param_groups": [{"lr": 0.1, "params": [[0]]}], "state": {}},
    {"param_groups": [{"lr": 0.1, "params": [0], "param_names": 3.0}], "state": {}},
    {"param_groups": [{"lr": 0.1, "params": [0]}], "state": [1, 2]},
    {"param_groups": [{"lr": 0.1, "params": [0]}], "state": {0: 2.5}},
    {"param_groups": "groups", "state": {}},
])
def test_damaged_param_groups_are_ignored_with_a_warning(optimizer):
    info = read_optimizer(optimizer, ["0.weight"], {"0.weight": (4, 3)}, lambda name, t: t, "ckpt.pt")
    assert info.param_groups == () and not info.state
    assert info.warnings == ["ckpt.pt: optimizer param_groups unreadable; ignored"]
