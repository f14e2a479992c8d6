"""The checkpoint estimate of η|g|/|w| (from the SGD momentum buffer) against the true gradients of the
same run, logged every step by `normscope.track` (docs/science.md §4.5)."""

import math

import numpy as np
import pytest
import torch
from _digits import bn_cnn, digits_tensors

import normscope
from normscope.analysis.equilibrium import effective_steps, equilibrium_for
from normscope.analysis.invariance import classify_invariance
from normscope.api import load_trajectory

LR, WD, MOM, EPOCHS, BATCH = 0.2, 2e-3, 0.9, 16, 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real SGD-with-momentum run: a checkpoint per epoch and a tracker log of every step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("grad_truth")
    (root / "ck").mkdir()
    x, y = digits_tensors()
    model = bn_cnn(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM, weight_decay=WD)
    order_gen = torch.Generator().manual_seed(0)
    step = 0
    with normscope.track(model, opt, root / "log.jsonl"):
        for epoch in range(EPOCHS + 1):
            if epoch:
                order = torch.randperm(len(x), generator=order_gen)
                for start in range(0, len(x) - BATCH + 1, BATCH):  # full batches only
                    idx = order[start:start + BATCH]
                    opt.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
                    step += 1
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                        "step": step}, root / "ck" / f"epoch_{epoch:03d}.pt")
    torch.set_num_threads(threads)
    checkpoints = load_trajectory(root / "ck", device="cpu")
    report = equilibrium_for(checkpoints, classify_invariance(checkpoints.table))
    return report, load_trajectory(root / "log.jsonl").table


def test_momentum_buffer_estimate_is_within_tens_of_percent_of_the_true_gradients(run):
    report, live = run
    assert {layer.param for layer in report.layers} >= {"0.weight", "3.weight"}
    for layer in report.layers:
        rows = live[live["param"] == layer.param].sort_values("step")
        steps = rows["step"].to_numpy(dtype=float)
        ratio = LR * rows["grad_norm"].to_numpy(dtype=float) / rows["norm"].to_numpy(dtype=float)
        settled = [p for p in layer.points if p.epoch is not None and p.epoch > EPOCHS / 2]
        assert all(p.grad_source == "momentum buffer" for p in settled)
        truth = math.sqrt(np.mean(ratio[steps > settled[0].step - settled[0].steps] ** 2))  # RMS
        estimate = np.median([p.lr_grad_over_norm for p in settled])
        # the estimate assumes uncorrelated successive gradients; √B of docs/science.md §4.5
        assert 0.6 < estimate / truth < 1.25, (layer.param, estimate / truth)
        # the k-step angle measures the long-time diffusion: what uncorrelated gradients would need
        s = effective_steps(np.array([p.steps for p in settled]), np.full(len(settled), MOM))
        implied = np.median(np.array([p.angle_rad for p in settled]) * (1 - MOM) / np.sqrt(s))
        assert 0.2 < implied / truth < 1.1, (layer.param, implied / truth)


def test_settled_medians_come_with_intervals(run):
    report, _ = run
    for layer in report.layers:
        lo, hi = layer.settled_grad_ratio_interval
        assert lo <= layer.settled_grad_ratio <= hi
        lo, hi = layer.settled_ratio_interval
        assert lo <= layer.settled_ratio <= hi


def test_intervals_are_sampling_uncertainty_only():
    """A simulated scale-invariant weight with uncorrelated gradients of known size (|g| = 1/|w|): the
    interval of the settled median is narrow (2000-dim gradients), the estimate within 6 % of the truth,
    and the gap between them is what the interval does not cover (the estimator's own bias)."""
    from test_equilibrium import _simulate_invariant_weight

    from normscope.analysis.equilibrium import layer_equilibrium, median_interval

    result = layer_equilibrium(_simulate_invariant_weight("SGD", lr=0.1, wd=0.01).table)
    settled = [p for p in result.points if p.relaxations_in_phase >= 3]
    over_truth = [p.lr_grad_over_norm / (p.lr / p.norm**2) for p in settled]
    lo, hi = median_interval(over_truth)
    assert hi - lo < 0.02 and 0.94 < lo <= hi < 1.06
    lo, hi = result.settled_grad_ratio_interval
    assert hi - lo < 0.02
