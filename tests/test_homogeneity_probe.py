"""Exact invariance on hand-built modules: the torch.fx degree analysis and the numerical probe agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normscope.analysis.homogeneity import (
    INVARIANT,
    NOT_INVARIANT,
    VERDICT_UNKNOWN,
    analyze_homogeneity,
)
from normscope.analysis.probe import probe_invariance


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: thread start-up dominates, and the test machine is shared
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def both(model: nn.Module, inputs=None) -> dict[str, tuple[str, str]]:
    torch.manual_seed(0)
    fx = analyze_homogeneity(model)
    probe = probe_invariance(model, inputs=inputs)
    return {name: (fx[name].verdict, probe[name].verdict) for name in fx}


class ConvBN(nn.Module):
    def __init__(self, conv_bias: bool = False, affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=conv_bias)
        self.bn = nn.BatchNorm2d(6, affine=affine)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_conv_before_batchnorm_is_invariant_and_nothing_else():
    got = both(ConvBN(), (torch.randn(8, 3, 5, 5),))
    assert got["conv.weight"] == (INVARIANT, INVARIANT)
    for name in ("bn.weight", "bn.bias", "head.weight", "head.bias"):
        assert got[name] == (NOT_INVARIANT, NOT_INVARIANT), name


def test_conv_bias_cancels_in_batchnorm():
    got = both(ConvBN(conv_bias=True), (torch.randn(8, 3, 5, 5),))
    assert got["conv.weight"] == (INVARIANT, INVARIANT)
    # the bias is removed by the batch mean: fx proves invariance, the probe sees no response at all
    assert got["conv.bias"] == (INVARIANT, VERDICT_UNKNOWN)


def test_batchnorm_without_affine():
    got = both(ConvBN(affine=False), (torch.randn(8, 3, 5, 5),))
    assert got["conv.weight"] == (INVARIANT, INVARIANT)
    assert "bn.weight" not in got


def test_conv_with_bias_and_no_norm_is_not_invariant():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 2))
    got = both(model, (torch.randn(4, 3, 5, 5),))
    assert all(v == (NOT_INVARIANT, NOT_INVARIANT) for v in got.values()), got


class LinearLN(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.fc = nn.Linear(5, 7, bias=bias)
        self.ln = nn.LayerNorm(7)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        return self.out(F.gelu(self.ln(self.fc(x))))


def test_linear_before_layernorm():
    got = both(LinearLN(bias=False), (torch.randn(6, 5),))
    assert got["fc.weight"] == (INVARIANT, INVARIANT)
    # affine LayerNorm: its scale and shift are not invariant
    assert got["ln.weight"] == (NOT_INVARIANT, NOT_INVARIANT)
    assert got["ln.bias"] == (NOT_INVARIANT, NOT_INVARIANT)


def test_bias_before_layernorm_breaks_invariance():
    got = both(LinearLN(bias=True), (torch.randn(6, 5),))
    assert got["fc.weight"] == (NOT_INVARIANT, NOT_INVARIANT)
    assert got["fc.bias"] == (NOT_INVARIANT, NOT_INVARIANT)


class Residual(nn.Module):
    """x + BN(conv_a(x)) keeps conv_a invariant; x + conv_b(x) (no norm on the branch) does not."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(x + self.bn_a(self.conv_a(x)))
        x = x + self.conv_b(x)
        return self.head(x.mean((2, 3)))


def test_residual_connections():
    got = both(Residual(), (torch.randn(8, 2, 5, 5),))
    assert got["stem.weight"] == (INVARIANT, INVARIANT)
    assert got["conv_a.weight"] == (INVARIANT, INVARIANT)
    assert got["conv_b.weight"] == (NOT_INVARIANT, NOT_INVARIANT)
    assert got["bn_a.weight"] == (NOT_INVARIANT, NOT_INVARIANT)


def test_group_norm_and_functional_calls():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 3, 3, 3))
            self.gn = nn.GroupNorm(2, 6)
            self.v = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            h = F.relu(self.gn(F.conv2d(x, self.w, padding=1)))
            return F.linear(h.mean((2, 3)), self.v)

    got = both(Functional(), (torch.randn(4, 3, 5, 5),))
    assert got["w"] == (INVARIANT, INVARIANT)
    # v feeds the output linearly: degree 1
    assert got["v"] == (NOT_INVARIANT, NOT_INVARIANT)
    assert analyze_homogeneity(Functional())["v"].output_degree == 1


def test_sample_pre_ln_transformer_flags_nothing():
    from sample_runs.models import ln_transformer

    got = both(ln_transformer())
    assert got, "no parameters analysed"
    assert all(v == (NOT_INVARIANT, NOT_INVARIANT) for v in got.values()), \
        {k: v for k, v in got.items() if v != (NOT_INVARIANT, NOT_INVARIANT)}


def test_sample_bn_cnn_flags_exactly_the_conv_weights():
    from sample_runs.models import bn_cnn

    got = both(bn_cnn())
    flagged = {name for name, v in got.items() if v == (INVARIANT, INVARIANT)}
    assert flagged == {"block1.conv.weight", "block2.conv.weight", "block3.conv.weight"}
    assert all(v == (NOT_INVARIANT, NOT_INVARIANT) for name, v in got.items() if name not in flagged)


def test_untraceable_model_falls_back_to_the_probe():
    class Branchy(ConvBN):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                x = x * 1.0
            return super().forward(x)

    model = Branchy()
    fx = analyze_homogeneity(model)
    assert fx["conv.weight"].verdict == VERDICT_UNKNOWN
    assert "torch.fx could not trace" in fx["conv.weight"].reason
    assert probe_invariance(model, inputs=(torch.randn(8, 3, 5, 5),))["conv.weight"].verdict == INVARIANT


def test_probe_leaves_the_model_untouched_and_handles_dropout():
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = probe_invariance(model, inputs=(torch.randn(16, 5),))
    assert result["0.weight"].verdict == INVARIANT  # same dropout mask in every forward
    assert result["3.weight"].verdict == NOT_INVARIANT
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and next(model.parameters()).dtype == torch.float32


def test_probe_without_a_usable_input_says_unknown():
    class NeedsTwo(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, a, b):
            return a * self.scale + b

    result = probe_invariance(NeedsTwo())
    assert result["scale"].verdict == VERDICT_UNKNOWN
    assert "could not guess an input" in result["scale"].reason


def test_every_modelled_function_has_one_rule():
    from normscope.analysis import homogeneity as h

    groups = [h._ADD_FUNCS, h._MUL_FUNCS, h._DIV_FUNCS, h._KEEP_FUNCS, h._ZERO_ONLY_FUNCS, h._SHAPE_FUNCS]
    names = [name for group in groups for name in group]
    assert len(names) == len(set(names)), "a function name in two groups would take either rule"
    assert set(names) <= set(h._FUNCTION_RULES)
    with pytest.raises(TypeError):  # the flags of a Degree are named, never positional
        h.Degree(h.MIXED, 0, True, False)
