"""Per-parameter verdicts from trajectory tables: live logs, checkpoints only, and the sample runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from _sample_tables import ADAMW_RUN, SGD_RUN, sample_trajectory
from _training import small_bn_cnn, train_run

from normscope.analysis.invariance import (
    BASIS_EXACT,
    BASIS_GUESS,
    BASIS_MEASURED,
    INVARIANT,
    NOT_INVARIANT,
    VERDICT_UNKNOWN,
    classify_invariance,
)
from normscope.analysis.invariance_dynamics import sgd_buffer_cosines
from normscope.analysis.invariance_structure import structural_guesses

CONVS = {"block1.conv.weight", "block2.conv.weight", "block3.conv.weight"}


@pytest.fixture(scope="module")
def live_sgd_run():
    torch.set_num_threads(1)
    return train_run(small_bn_cnn, epochs=4, log_grads=True)


def by_param(verdicts):
    return {v.param: v for v in verdicts}


def test_live_gradients_decide_exactly_the_conv_weights(live_sgd_run):
    verdicts = by_param(classify_invariance(live_sgd_run.table))
    assert {p for p, v in verdicts.items() if v.verdict == INVARIANT} == {"0.weight", "3.weight", "7.weight"}
    assert all(v.basis == BASIS_MEASURED for v in verdicts.values())
    grad = next(e for e in verdicts["3.weight"].evidence if e.source == "grad")
    assert grad.value < 1e-4
    assert "running_mean" not in " ".join(verdicts)  # buffers get no verdict


def test_checkpoint_only_falls_back_to_structure(live_sgd_run):
    table = live_sgd_run.table.assign(grad_norm=math.nan, grad_dot=math.nan)
    verdicts = by_param(classify_invariance(table))
    assert {p for p, v in verdicts.items() if v.verdict == INVARIANT} == {"0.weight", "3.weight", "7.weight"}
    assert {v.basis for v in verdicts.values()} == {BASIS_GUESS}
    assert "BatchNorm 1" in verdicts["0.weight"].reason


def test_sgd_buffer_cosine_matches_its_definition(live_sgd_run):
    """cos(w, (1−μ)b − λw) from the reduced columns equals the cosine of the reconstructed vectors."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=50), rng.normal(size=50)
    mu, lam = 0.9, 0.01
    g = (1 - mu) * b - lam * w
    row = pd.DataFrame({"norm": [np.linalg.norm(w)], "buf_dot": [w @ b], "buf_norm": [np.linalg.norm(b)],
                        "momentum": [mu], "weight_decay": [lam]})
    expected = (w @ g) / (np.linalg.norm(w) * np.linalg.norm(g))
    assert sgd_buffer_cosines(row).iloc[0] == pytest.approx(expected, rel=1e-12)


def test_dynamic_veto_turns_a_structural_guess_into_unknown(live_sgd_run):
    table = live_sgd_run.table.assign(grad_norm=math.nan, grad_dot=math.nan)
    # make the momentum buffer of 0.weight point along the weight: a radial pull the loss would exert
    rows = table["param"] == "0.weight"
    table.loc[rows, "buf_dot"] = table.loc[rows, "norm"] * table.loc[rows, "buf_norm"] * -0.9
    verdict = by_param(classify_invariance(table))["0.weight"]
    assert verdict.verdict == VERDICT_UNKNOWN
    assert "structure says invariant" in verdict.reason


def test_model_evidence_outranks_the_rest(live_sgd_run):
    verdicts = by_param(classify_invariance(live_sgd_run.table, model=small_bn_cnn()))
    assert {p for p, v in verdicts.items() if v.verdict == INVARIANT} == {"0.weight", "3.weight", "7.weight"}
    assert all(v.basis == BASIS_EXACT for v in verdicts.values())
    sources = {e.source for e in verdicts["0.weight"].evidence}
    assert {"fx", "probe", "grad", "structure"} <= sources


def test_fx_alone_decides_when_the_probe_is_off(live_sgd_run):
    verdicts = by_param(classify_invariance(live_sgd_run.table, model=small_bn_cnn(), probe=False))
    assert {p for p, v in verdicts.items() if v.verdict == INVARIANT} == {"0.weight", "3.weight", "7.weight"}
    assert not any(e.source == "probe" for v in verdicts.values() for e in v.evidence)
    assert verdicts["0.weight"].basis == BASIS_EXACT


def test_names_the_model_lacks_are_reported(live_sgd_run):
    from torch import nn

    verdicts = by_param(classify_invariance(live_sgd_run.table, model=nn.Linear(2, 2)))
    fx = next(e for e in verdicts["0.weight"].evidence if e.source == "fx")
    assert "no parameter of this name" in fx.detail
    assert verdicts["0.weight"].basis == BASIS_MEASURED  # falls through to the live gradients


def test_sample_sgd_checkpoints_flag_every_conv_and_nothing_else():
    verdicts = by_param(classify_invariance(sample_trajectory(SGD_RUN).table))
    assert {p for p, v in verdicts.items() if v.verdict == INVARIANT} == CONVS
    assert all(v.verdict == NOT_INVARIANT for p, v in verdicts.items() if p not in CONVS)
    # the momentum buffer agrees: small cosines on the conv weights (later half of the run)
    for conv in CONVS:
        buf = next(e for e in verdicts[conv].evidence if e.source == "sgd_buffer")
        assert abs(buf.value) < 0.1


def test_sample_transformer_checkpoints_flag_nothing():
    verdicts = classify_invariance(sample_trajectory(ADAMW_RUN).table)
    assert len(verdicts) == 31
    residual_writers = {"embed.weight", "pos", "blocks.0.attn.proj.weight", "blocks.0.mlp.2.weight",
                        "blocks.1.attn.proj.weight", "blocks.1.mlp.2.weight"}
    got = by_param(verdicts)
    assert all(got[p].verdict == NOT_INVARIANT for p in residual_writers)
    assert not [v.param for v in verdicts if v.verdict == INVARIANT]


def test_structure_in_sorted_files_only_trusts_batchnorm_siblings():
    def rows(names_shapes):
        return pd.DataFrame({
            "snapshot": 0, "param": [n for n, _ in names_shapes],
            "layer": [n.rpartition(".")[0] for n, _ in names_shapes],
            "kind": ["buffer" if "running" in n else ("weight" if len(s) > 1 else ("bias" if n.endswith("bias") else "norm"))
                     for n, s in names_shapes],
            "shape": ["x".join(map(str, s)) for _, s in names_shapes],
        })

    # safetensors sorts names: bn comes before conv, so order cannot be used
    sorted_cnn = rows([("b.bn.bias", (4,)), ("b.bn.running_mean", (4,)), ("b.bn.running_var", (4,)),
                       ("b.bn.weight", (4,)), ("b.conv.weight", (4, 3, 3, 3)), ("head.weight", (2, 4))])
    guesses = structural_guesses(sorted_cnn)
    assert guesses["b.conv.weight"].verdict == INVARIANT
    assert "order is inferred" in guesses["b.conv.weight"].detail
    sorted_ln = rows([("blk.fc.weight", (4, 4)), ("blk.ln.bias", (4,)), ("blk.ln.weight", (4,)),
                      ("blk.out.weight", (2, 4))])
    assert structural_guesses(sorted_ln)["blk.fc.weight"].verdict == NOT_INVARIANT


def test_structure_layernorm_guess_needs_support():
    table = pd.DataFrame({
        "snapshot": 0, "param": ["proj.weight", "ln.weight", "ln.bias", "out.weight"],
        "layer": ["proj", "ln", "ln", "out"], "kind": ["weight", "norm", "bias", "weight"],
        "shape": ["8x5", "8", "8", "3x8"],
    })
    guess = structural_guesses(table)["proj.weight"]
    assert guess.verdict == INVARIANT and "weaker guess" in guess.detail
    # a Layer/Group-norm guess alone is not enough for a verdict: no dynamics → unknown
    table = table.assign(step=0, epoch=0.0, norm=1.0, dot_prev=math.nan, buf_dot=math.nan, buf_norm=math.nan,
                         grad_norm=math.nan, grad_dot=math.nan, optimizer="SGD", lr=0.1, weight_decay=0.0,
                         momentum=0.0, numel=1)
    verdict = by_param(classify_invariance(table))["proj.weight"]
    assert verdict.verdict == VERDICT_UNKNOWN and "give --model" in verdict.reason


def test_nan_filled_tables_give_unknowns_not_crashes(live_sgd_run):
    import json

    from normscope.analysis.equilibrium import equilibrium_report
    from normscope.report.machine.equilibrium_json import to_json

    table = live_sgd_run.table.copy()
    for column in ("norm", "norm_sq", "dot_prev", "angle_rad", "buf_dot", "buf_norm", "delta_norm"):
        table[column] = math.nan
    verdicts = classify_invariance(table)
    assert not any(e.source == "grad" for v in verdicts for e in v.evidence)  # no norm, no cosine
    report = equilibrium_report(table, verdicts)
    assert report.layers and {layer.status for layer in report.layers} == {"unknown"}
    json.dumps(to_json(verdicts, report), allow_nan=False)
    assert classify_invariance(table.iloc[0:0]) == []
