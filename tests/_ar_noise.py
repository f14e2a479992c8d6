"""Synthetic log-norm series with the noise model of `normscope.analysis.norm_noise`: a trend plus an
AR(1) (discretised Ornstein-Uhlenbeck) part with correlation time τ epochs, plus white noise."""

from __future__ import annotations

import math

import numpy as np


def ar1(n: int, tau: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) of n epochs: ρ = exp(−1/τ), stationary σ `sigma`, started in equilibrium."""
    rho = math.exp(-1.0 / tau)
    x = np.empty(n)
    x[0] = sigma * rng.standard_normal()
    shocks = sigma * math.sqrt(1 - rho * rho) * rng.standard_normal(n)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + shocks[t]
    return x


def norm_series(log_trend: np.ndarray, tau: float, sigma: float, white: float, seed: int) -> np.ndarray:
    """exp(trend + AR(1) + white): a squared-norm series."""
    rng = np.random.default_rng(seed)
    n = len(log_trend)
    return np.exp(log_trend + ar1(n, tau, sigma, rng) + white * rng.standard_normal(n))


def piecewise_bounce(n: int = 61, minimum: int = 15, top: int = 27, drop: float = 0.35, rise: float = 0.40
                     ) -> np.ndarray:
    """log N: a linear decline to `minimum`, a linear rise to `top`, then flat (the rise ends at `top`)."""
    t = np.arange(n, dtype=float)
    return np.log(250.0) + np.where(
        t <= minimum, -drop * t / minimum,
        np.where(t <= top, -drop + rise * (t - minimum) / (top - minimum), rise - drop))
