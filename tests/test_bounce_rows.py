"""The per-layer bounce analysis, run over all layers at once, gives what each layer alone gives, bit for bit."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _bounce_tables import noisy

from normscope.analysis import norm_noise
from normscope.analysis.bounce import (
    LayerBounces,
    RobustParams,
    abel_replay,
    detect_bounces,
    layer_bounces,
    series_correlation_epochs,
)
from normscope.analysis.epochs import EpochSeries, LayerSeries, epoch_series
from normscope.api import load_trajectory

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"


def _series(rows: np.ndarray, epochs) -> EpochSeries:
    n = len(epochs)
    return EpochSeries(
        epochs=tuple(epochs), norm_sq=tuple(np.nansum(rows, axis=0)), steps=(None,) * n, lr=(math.nan,) * n,
        snapshots=tuple(range(n)), include_kinds=("weight",), n_tensors=len(rows), epoch_source="recorded epoch",
        steps_per_epoch=None, optimizer="SGD", weight_decay=0.0, momentum=0.0, beta1=math.nan,
        layers=tuple(LayerSeries(f"layer{i}", tuple(r)) for i, r in enumerate(rows.tolist())),
    )


def _one_at_a_time(series: EpochSeries, params: RobustParams, tau: float | None) -> tuple[LayerBounces, ...]:
    """Each layer through `abel_replay` and `detect_bounces` on its own."""
    params = replace(params, repeats=0)
    out = []
    for layer in series.layers:
        values = np.asarray(layer.norm_sq, dtype=float)
        if np.any(~np.isfinite(values)):
            out.append(LayerBounces(layer.layer, abel_replay((), ()), None, "missing in some epochs"))
            continue
        exact = abel_replay(series.epochs, values)
        if np.any(values <= 0):
            out.append(LayerBounces(layer.layer, exact, None, "zero norm in some epoch"))
            continue
        out.append(LayerBounces(layer.layer, exact, detect_bounces(series.epochs, values, params,
                                                                   correlation_epochs=tau)))
    return tuple(out)


def _bits(found) -> str:
    return repr(found)  # floats by repr: equal text is equal bits, NaN included


def _random_rows(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    t = np.arange(n)
    rows = []
    for _ in range(count):
        shape = rng.integers(0, 5)
        if shape == 0:  # a noisy plateau
            row = noisy(np.full(n, 50.0), rng.uniform(0, 0.02), seed=int(rng.integers(10**6)))
        elif shape == 1:  # a bounce
            bottom = rng.uniform(0.2, 0.8) * n
            row = noisy(50 * (1 + rng.uniform(0.05, 0.5) * ((t - bottom) / n) ** 2), rng.uniform(0, 0.01),
                        seed=int(rng.integers(10**6)))
        elif shape == 2:  # constant
            row = np.full(n, 3.0)
        elif shape == 3:  # slow wiggles
            row = 10 + np.sin(t / rng.uniform(1, 6)) * rng.uniform(0.01, 3) + rng.normal(0, 0.01, n)
        else:  # a random walk of log N
            row = np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        rows.append(row)
    return np.array(rows, dtype=float)


@pytest.mark.parametrize("seed", range(6))
def test_all_layers_at_once_equal_each_layer_alone(seed):
    rng = np.random.default_rng(seed)
    found = 0
    for trial in range(6):
        n, count = int(rng.integers(3, 70)), int(rng.integers(1, 30))
        rows = _random_rows(rng, n, count)
        if count > 2 and trial % 2 == 0:
            rows[1, n // 2] = math.nan  # missing in an epoch
            rows[2, 0] = 0.0  # a zero norm
        series = _series(rows, range(1, n + 1))
        params = RobustParams(smooth_window=int(rng.choice([1, 3, 5])), min_width=int(rng.choice([1, 3])))
        for tau in (None, float(rng.uniform(0.5, 10))):
            together = layer_bounces(series, params, correlation_epochs=tau)
            assert _bits(together) == _bits(_one_at_a_time(series, params, tau))
            found += sum(len(lb.robust.bounces) for lb in together if lb.robust is not None)
    assert found > 0  # bounces were there to compare


@pytest.mark.parametrize("run", ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw",
                                 "digits_bn_cnn_live/track.jsonl"])  # fmt: skip
def test_sample_runs_layers_equal_each_layer_alone(run):
    table = load_trajectory(str(SAMPLE_RUNS / run)).table
    for kinds in ("weight", "all"):
        series = epoch_series(table, include_kinds=kinds)
        tau = series_correlation_epochs(series)
        together = layer_bounces(series, correlation_epochs=tau)
        assert _bits(together) == _bits(_one_at_a_time(series, RobustParams(), tau))


def test_noise_models_of_many_rows_equal_each_rows():
    rng = np.random.default_rng(7)
    for _ in range(20):
        n, count = int(rng.integers(4, 90)), int(rng.integers(1, 40))
        y = np.cumsum(rng.normal(0, rng.uniform(1e-4, 0.05), (count, n)), axis=1)
        y += rng.normal(0, rng.uniform(1e-4, 0.05), (count, n))
        y[0] = 1.0  # a constant row
        for tau in (None, float(rng.uniform(0.3, 20))):
            assert norm_noise.estimate_noise_rows(y, tau) == [norm_noise.estimate_noise(row, tau) for row in y]


def test_null_distributions_simulated_together_equal_each_alone():
    keys = [(n, w, rho, share, tau) for n in (5, 24) for w in (1, 3) for tau in (None, 2.5)
            for rho in (0.0, 0.135, 0.9) for share in (0.0, 0.33, 1.0)]  # fmt: skip
    norm_noise._null_cache.clear()
    together = norm_noise.null_ratios_many(keys)
    for key in keys:
        norm_noise._null_cache.clear()
        alone = norm_noise.null_ratios_many([key])[key]
        assert np.array_equal(together[key], alone)
        assert not alone.flags.writeable


def test_median_by_sorting_is_numpys_median():
    rng = np.random.default_rng(3)
    for m in range(1, 12):
        a = rng.normal(size=(50, m)) * rng.choice([1e-9, 1.0, 1e9], size=(50, 1))
        a[::7] = np.round(a[::7], 1)  # ties
        assert np.array_equal(norm_noise._median_last(a), np.median(a, axis=-1))
        assert np.array_equal(norm_noise._median_last(a[0]), np.median(a[0]))
    with_nan = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    assert np.array_equal(norm_noise._median_last(with_nan), [np.nan, 2.0], equal_nan=True)


def test_noise_models_without_the_stacked_lstsq_are_the_same(monkeypatch):
    y = np.cumsum(np.random.default_rng(3).normal(0, 0.01, (12, 40)), axis=1)
    stacked = [norm_noise.estimate_noise_rows(y, tau) for tau in (None, 3.0)]
    monkeypatch.setattr(norm_noise, "_umath_linalg", None)  # a numpy without the gufunc: one lstsq per row
    assert [norm_noise.estimate_noise_rows(y, tau) for tau in (None, 3.0)] == stacked
