"""The fluctuations of log N around its trend: white noise plus a mean-reverting (OU / AR(1)) part.

A weight norm is not a smooth curve plus independent epoch-to-epoch noise. Near equilibrium the
squared norm of a scale-invariant weight obeys d|w|⁴/dt = −4ηλ_eff|w|⁴ + 2η²|g̃|², so a fluctuation
of the gradient noise |g̃|² is forgotten only over the relaxation time τ = 1/(4ηλ_eff) steps
(λ_eff = λ/(1−μ); AdamW 1/(2ηλ)). The norm is a mean-reverting process with correlation time τ, and
over a budget of a few dozen τ it wiggles slowly by several σ. Model, per end-of-epoch point:

    y_t = log N_t = trend(t) + e_t + x_t,   e_t ~ N(0, a) independent,
    x_t = ρ·x_{t−1} + √(b(1−ρ²))·ξ_t,        ρ = exp(−1/τ) (τ in epochs), Var x_t = b.

Autocovariance of the noise: C(k) = a·[k = 0] + b·ρ^|k|. The lag-L second difference
D_L(t) = y_{t+L} − 2y_t + y_{t−L} cancels any trend that is locally linear over 2L epochs, and

    Var D_L = 6a + b·(6 − 8ρ^L + 2ρ^{2L}).

For L = 1 and white noise alone this is the old estimate (σ² = Var D_1 / 6). With correlation the
lag-1 second difference sees only b·2(1−ρ)(3−ρ) of the correlated part — at τ = 5.4 epochs 0.37·b
where the white formula would read 6a — so the stationary fluctuation √b is underestimated about
2.9-fold; a wiggle of 3√b then looks like a 9σ event. Measuring Var D_L at several lags
L = 1..L_max (robustly: 1.4826·MAD) separates the two parts: a and b are the non-negative weighted
least-squares fit of the line above (weights 1/Var D_L, i.e. relative errors). When τ is not given
it is fitted too (the τ of a geometric grid with the smallest residual).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

try:  # the gufunc behind np.linalg.lstsq: it solves a stack of systems, each as lstsq solves one
    from numpy.linalg import _umath_linalg
except ImportError:  # pragma: no cover - a numpy without it: one lstsq per system
    _umath_linalg = None

_MAD_TO_SIGMA = 1.4826  # MAD of a normal sample → its standard deviation
_NULL_REPEATS = 2000  # simulated noise-only series behind each false-alarm quantile
_NULL_SEED = 20210325  # fixed: the detector is a pure function of its input
_NULL_CACHE_SIZE = 512  # null distributions kept (a key each: see `null_drawups`)
_NULL_BATCH_ELEMENTS = 400_000  # simulated values per batch of null distributions
TAU_GIVEN = "relaxation time"
TAU_FITTED = "fitted"
TAU_NONE = "white (too short to fit a correlation)"


@dataclass(frozen=True)
class NoiseModel:
    """Noise of log N per epoch: white variance `white`² plus an AR(1) part of stationary σ
    `correlated` and correlation time `correlation_epochs` (ρ = exp(−1/τ) per epoch)."""

    white: float
    correlated: float
    correlation_epochs: float
    tau_source: str

    @property
    def rho(self) -> float:
        return math.exp(-1.0 / self.correlation_epochs) if self.correlation_epochs > 0 else 0.0

    @property
    def total(self) -> float:
        """Stationary σ of the fluctuation of log N about its trend."""
        return math.sqrt(self.white**2 + self.correlated**2)

    def covariance(self, k: np.ndarray) -> np.ndarray:
        k = np.abs(np.asarray(k))
        return np.where(k == 0, self.white**2, 0.0) + self.correlated**2 * self.rho**k

    def smoothed_difference_sd(self, lag: int, window: int) -> float:
        """σ of z_{t+lag} − z_t, z the centred `window`-point moving average of y (lag=None: far apart)."""
        i = np.arange(window)
        offsets = i[None, :] - i[:, None]
        var_z = float(self.covariance(offsets).sum()) / window**2
        cov = float(self.covariance(offsets + lag).sum()) / window**2
        return math.sqrt(max(2.0 * (var_z - cov), 0.0))

    def far_difference_sd(self, window: int) -> float:
        i = np.arange(window)
        var_z = float(self.covariance(i[None, :] - i[:, None]).sum()) / window**2
        return math.sqrt(2.0 * var_z)


def _robust_var(values: np.ndarray) -> float:
    if len(values) == 0:
        return math.nan
    return float((_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))) ** 2)


_MIN_DIFFERENCES = 8  # a lag's variance needs at least this many second differences
# Without a given τ: lags up to n/8 and τ up to n/16. A real bounce bends D_L over 2L epochs around
# its kink; beyond these the median no longer ignores that bend and a bounce reads as slow noise.
_FIT_LAG_SHARE = 8
_FIT_TAU_SHARE = 16


def _max_lag(n: int, correlation_epochs: float | None) -> int:
    """Lags up to 2τ (the variance of D_L has then risen to 98 % of its plateau) or n/6 when τ is to be
    fitted; never so long that fewer than `_MIN_DIFFERENCES` differences remain."""
    longest = max(1, (n - _MIN_DIFFERENCES) // 2)
    wanted = math.ceil(2 * correlation_epochs) if correlation_epochs else n // _FIT_LAG_SHARE
    return min(longest, max(3, wanted))


def _median_last(a: np.ndarray) -> np.ndarray:
    """`np.median(a, axis=-1)` to the bit (the same middle values, averaged by the same `mean`),
    sorting instead of partitioning: several times faster on many short rows."""
    ordered = np.sort(a, axis=-1)
    m = ordered.shape[-1]
    middle = ordered[..., m // 2 : m // 2 + 1] if m % 2 else ordered[..., m // 2 - 1 : m // 2 + 1]
    out = np.mean(middle, axis=-1)
    return np.where(np.isnan(ordered[..., -1]), math.nan, out) if m else out


def _scaled_mads(y: np.ndarray, max_lag: int):
    """`out`, the all-NaN array of Var D_L to fill, and (lag, sigma) for each lag with at least 3
    second differences along the last axis: their robust sigma (MAD × 1.4826)."""
    y = np.asarray(y, dtype=float)
    out = np.full(y.shape[:-1] + (max_lag,), math.nan)
    sigmas = []
    for lag in range(1, max_lag + 1):
        if y.shape[-1] - 2 * lag >= 3:
            d = y[..., 2 * lag:] - 2 * y[..., lag:-lag] + y[..., : -2 * lag]
            sigmas.append((lag, _MAD_TO_SIGMA * _median_last(np.abs(d - _median_last(d)[..., None]))))
    return out, sigmas


def second_difference_variances(y: np.ndarray, max_lag: int) -> np.ndarray:
    """Robust Var D_L for L = 1..max_lag along the last axis (NaN where fewer than 3 differences exist)."""
    out, sigmas = _scaled_mads(y, max_lag)
    for lag, sigma in sigmas:
        out[..., lag - 1] = sigma ** 2
    return out


def _series_variances(y: np.ndarray, max_lag: int) -> np.ndarray:
    """`second_difference_variances` of each row of y as it is of that row alone: the MADs of all
    rows at once, each squared as the one series' scalar is (a scalar's square and an array's can
    differ in the last bit)."""
    out, sigmas = _scaled_mads(y, max_lag)
    for lag, sigma in sigmas:
        out[..., lag - 1] = np.reshape([x**2 for x in sigma.ravel().tolist()], sigma.shape)
    return out


def _lag_shape(rho: float, lags: np.ndarray) -> np.ndarray:
    """f_L(ρ) = 6 − 8ρ^L + 2ρ^{2L}: how much of the correlated variance b the lag-L difference sees."""
    return 6 - 8 * rho**lags + 2 * rho ** (2 * lags)


def _fit_rows(v: np.ndarray, lags: np.ndarray, rho: float) -> np.ndarray:
    """`_fit`'s total variance a + b for many rows of lag variances at once (the simulated null)."""
    return _fit_rows_of_shape(v, _lag_shape(rho, lags))


def _fit_rows_of_shape(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """`_fit_rows` with f_L(ρ) given (broadcast against v: one ρ per stack of rows)."""
    w = 1.0 / np.maximum(v, 1e-300)
    s00, s01, s11 = (w * 36).sum(-1), (w * 6 * f).sum(-1), (w * f * f).sum(-1)
    t0, t1 = (w * 6 * v).sum(-1), (w * f * v).sum(-1)
    if v.shape[-1] < 2:  # one lag: white noise alone (`_fit`)
        return np.maximum(t0 / s00, 0)
    det = s00 * s11 - s01 * s01
    with np.errstate(divide="ignore", invalid="ignore"):
        a_both = (s11 * t0 - s01 * t1) / det
        b_both = (s00 * t1 - s01 * t0) / det
    candidates = [(np.maximum(t0 / s00, 0), np.zeros_like(t0)), (np.zeros_like(t1), np.maximum(t1 / s11, 0))]
    feasible = (a_both >= 0) & (b_both >= 0) & np.isfinite(a_both) & np.isfinite(b_both)
    candidates.append((np.where(feasible, a_both, 0.0), np.where(feasible, b_both, 0.0)))
    best_total, best_res = None, None
    for index, (a, b) in enumerate(candidates):
        res = (w * (6 * a[..., None] + f * b[..., None] - v) ** 2).sum(-1)
        if index == 2:
            res = np.where(feasible, res, np.inf)
        if best_res is None:
            best_total, best_res = a + b, res
        else:
            better = res < best_res
            best_total, best_res = np.where(better, a + b, best_total), np.where(better, res, best_res)
    return best_total


def _fit(v: np.ndarray, lags: np.ndarray, rho: float) -> tuple[float, float, float]:
    """Non-negative weighted least squares of v_L = 6a + b·f_L(ρ): (a, b, weighted residual).

    One lag is one equation for two parts: every split of it fits exactly, and which one the
    candidates' rounding picked moved with the last digit of the data (a 5-epoch run's threshold
    went from 0.69 to 4.2 σ and back). It is read as white noise, as `estimate_noise` reads one or
    two lags when it fits τ."""
    f = _lag_shape(rho, lags)
    w = 1.0 / np.maximum(v, 1e-300)
    design = np.stack([np.full_like(f, 6.0), f], axis=1) * np.sqrt(w)[:, None]
    target = v * np.sqrt(w)
    best = None
    candidates = []
    separable = len(v) >= 2  # else white noise alone
    if separable:
        sol, *_ = np.linalg.lstsq(design, target, rcond=None)
        if sol[0] >= 0 and sol[1] >= 0:
            candidates.append((float(sol[0]), float(sol[1])))
    for col in (0, 1) if separable else (0,):  # the boundary solutions: one component alone
        x = design[:, col]
        coef = max(float(x @ target / (x @ x)), 0.0) if x @ x > 0 else 0.0
        candidates.append((coef, 0.0) if col == 0 else (0.0, coef))
    for a, b in candidates:
        residual = float(np.sum((design @ np.array([a, b]) - target) ** 2))
        if best is None or residual < best[2]:
            best = (a, b, residual)
    return best


def estimate_noise(y: np.ndarray, correlation_epochs: float | None = None) -> NoiseModel:
    """Fit the white + AR(1) model to a log-norm series (see the module docstring)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n < 4:
        return NoiseModel(0.0, 0.0, 0.0, TAU_NONE)
    if correlation_epochs is not None and not (math.isfinite(correlation_epochs) and correlation_epochs > 0):
        correlation_epochs = None
    max_lag = _max_lag(n, correlation_epochs)
    v = second_difference_variances(y, max_lag)
    keep = np.isfinite(v)
    lags, v = np.arange(1, max_lag + 1)[keep], v[keep]
    if len(v) == 0 or not np.any(v > 0):
        return NoiseModel(0.0, 0.0, correlation_epochs or 0.0, TAU_GIVEN if correlation_epochs else TAU_NONE)
    if len(v) < 3 and correlation_epochs is None:
        # one or two lags cannot tell a correlated part from a white one: read them as white noise
        return NoiseModel(math.sqrt(float(v[0]) / 6.0), 0.0, 0.0, TAU_NONE)
    if correlation_epochs is not None:
        a, b, _ = _fit(v, lags, math.exp(-1.0 / correlation_epochs))
        return NoiseModel(math.sqrt(a), math.sqrt(b), float(correlation_epochs), TAU_GIVEN)
    best = None
    for tau in np.geomspace(0.5, max(1.0, n / _FIT_TAU_SHARE), 16):
        a, b, residual = _fit(v, lags, math.exp(-1.0 / tau))
        if best is None or residual < best[3] * (1 - 1e-9):
            best = (a, b, float(tau), residual)
    a, b, tau, _ = best
    if b == 0:
        tau = 0.0
    return NoiseModel(math.sqrt(a), math.sqrt(b), tau, TAU_FITTED)


def _lstsq_rows(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`np.linalg.lstsq(design[i], target[i])[0]` for every i (design: rows × m × 2), in one call
    of the gufunc lstsq uses: the same LAPACK routine, workspace and tolerance for each system."""
    m = design.shape[-2]
    rcond = np.finfo(float).eps * max(m, design.shape[-1])
    if _umath_linalg is not None and len(design):
        try:
            with np.errstate(invalid="raise", over="ignore", divide="ignore", under="ignore"):
                x, *_ = _umath_linalg.lstsq(design, target[..., None], rcond, signature="ddd->ddid")
            return x[..., 0]
        except (FloatingPointError, TypeError, ValueError):
            pass  # a system LAPACK cannot solve: lstsq on each says which, as it always did
    return np.array([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(design, target)]).reshape(
        design.shape[:-2] + (design.shape[-1],))


def _fit_many(v: np.ndarray, lags: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_fit` of each row of v (rows × lags) at once, to the bit: arrays of a, b and the residual."""
    f = _lag_shape(rho, lags)
    w = 1.0 / np.maximum(v, 1e-300)
    root = np.sqrt(w)
    design = np.stack([np.broadcast_to(np.full_like(f, 6.0), v.shape), np.broadcast_to(f, v.shape)],
                      axis=-1) * root[..., None]
    target = v * root

    def residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        predicted = (design @ np.stack([a, b], axis=-1)[..., None])[..., 0]
        return np.sum((predicted - target) ** 2, axis=-1)

    edges = []
    for col in (0, 1):  # one component alone: max(x·t / x·x, 0), 0 where x·x is 0
        x = design[..., col]
        xx = (x[:, None, :] @ x[:, :, None])[:, 0, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = (x[:, None, :] @ target[:, :, None])[:, 0, 0] / xx
        coef = np.where(xx > 0, np.where(0.0 > coef, 0.0, coef), 0.0)
        zero = np.zeros_like(coef)
        edges.append((coef, zero) if col == 0 else (zero, coef))
    # the candidates in `_fit`'s order, each taking over only where its residual is smaller
    (a0, b0), (a1, b1) = edges
    if v.shape[-1] < 2:  # one lag: white noise alone (`_fit`)
        return a0, b0, residual(a0, b0)
    sol = _lstsq_rows(design, target)
    a_ls, b_ls = sol[:, 0], sol[:, 1]
    feasible = (a_ls >= 0) & (b_ls >= 0)
    r_ls, r0, r1 = residual(a_ls, b_ls), residual(a0, b0), residual(a1, b1)
    a, b, best = np.where(feasible, a_ls, a0), np.where(feasible, b_ls, b0), np.where(feasible, r_ls, r0)
    better = feasible & (r0 < best)
    a, b, best = np.where(better, a0, a), np.where(better, b0, b), np.where(better, r0, best)
    better = r1 < best
    return np.where(better, a1, a), np.where(better, b1, b), np.where(better, r1, best)


def estimate_noise_rows(y: np.ndarray, correlation_epochs: float | None = None) -> list[NoiseModel]:
    """`estimate_noise` of each row of y (series × epochs), all rows at once; the same models, bit
    for bit, as fitting each row alone.

    Args:
        y: log-norm series, one per row, of equal length.
        correlation_epochs: the correlation time in epochs shared by every row, or None to fit it.

    Returns:
        One `NoiseModel` per row.
    """
    y = np.asarray(y, dtype=float)
    count, n = y.shape
    if n < 4:
        return [NoiseModel(0.0, 0.0, 0.0, TAU_NONE) for _ in range(count)]
    if correlation_epochs is not None and not (math.isfinite(correlation_epochs) and correlation_epochs > 0):
        correlation_epochs = None
    max_lag = _max_lag(n, correlation_epochs)
    v = _series_variances(y, max_lag)
    finite = np.isfinite(v)
    keep = np.all(finite, axis=0)  # which lags have enough differences: the same for every row ...
    if not np.array_equal(finite, np.broadcast_to(keep, finite.shape)):  # ... unless a row holds NaN
        return [estimate_noise(row, correlation_epochs) for row in y]
    lags, v = np.arange(1, max_lag + 1)[keep], v[:, keep]
    models: list[NoiseModel | None] = [None] * count
    empty = NoiseModel(0.0, 0.0, correlation_epochs or 0.0, TAU_GIVEN if correlation_epochs else TAU_NONE)
    if v.shape[1] == 0:
        return [empty] * count
    fit = np.any(v > 0, axis=1)
    for i in np.flatnonzero(~fit).tolist():
        models[i] = empty
    rows = np.flatnonzero(fit)
    v = v[rows]
    if v.shape[1] < 3 and correlation_epochs is None:
        for i, first in zip(rows.tolist(), v[:, 0].tolist()):
            models[i] = NoiseModel(math.sqrt(first / 6.0), 0.0, 0.0, TAU_NONE)
        return models  # type: ignore[return-value]
    if correlation_epochs is not None:
        a, b, _ = _fit_many(v, lags, math.exp(-1.0 / correlation_epochs))
        tau = float(correlation_epochs)
        for i, ai, bi in zip(rows.tolist(), a.tolist(), b.tolist()):
            models[i] = NoiseModel(math.sqrt(ai), math.sqrt(bi), tau, TAU_GIVEN)
        return models  # type: ignore[return-value]
    best_a = best_b = best_tau = best_res = None
    for tau in np.geomspace(0.5, max(1.0, n / _FIT_TAU_SHARE), 16):
        a, b, res = _fit_many(v, lags, math.exp(-1.0 / tau))
        if best_res is None:
            best_a, best_b, best_res = a, b, res
            best_tau = np.full(len(rows), float(tau))
            continue
        better = res < best_res * (1 - 1e-9)
        best_a, best_b = np.where(better, a, best_a), np.where(better, b, best_b)
        best_tau, best_res = np.where(better, float(tau), best_tau), np.where(better, res, best_res)
    for i, ai, bi, ti in zip(rows.tolist(), best_a.tolist(), best_b.tolist(), best_tau.tolist()):
        models[i] = NoiseModel(math.sqrt(ai), math.sqrt(bi), 0.0 if bi == 0 else ti, TAU_FITTED)
    return models  # type: ignore[return-value]


# ------------------------------------------------------------------------------ false-alarm levels
def simulate_noise(model: NoiseModel, n: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """`repeats` noise-only series of length n drawn from the model (rows)."""
    rho = model.rho
    out = model.white * rng.standard_normal((repeats, n))
    if model.correlated > 0:
        x = model.correlated * rng.standard_normal(repeats)
        innovation = model.correlated * math.sqrt(1 - rho * rho)
        shocks = rng.standard_normal((repeats, n))
        for t in range(n):
            if t:
                x = rho * x + innovation * shocks[:, t]
            out[:, t] += x
    return out


def smooth_rows(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the last axis; the window shrinks at both ends (no padding)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    half = window // 2
    csum = np.concatenate([np.zeros(values.shape[:-1] + (1,)), np.cumsum(values, axis=-1)], axis=-1)
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    return (csum[..., hi] - csum[..., lo]) / (hi - lo)


def max_drawup(z: np.ndarray) -> np.ndarray:
    """Largest rise z_k − z_j (j ≤ k) along the last axis."""
    return np.max(z - np.minimum.accumulate(z, axis=-1), axis=-1)


NullKey = tuple  # (n, window, rho, white share, tau or None): what a null distribution depends on
_null_cache: OrderedDict[NullKey, np.ndarray] = OrderedDict()


def _null_ratios(n: int, window: int, rho: float, white_share: float, tau: float | None) -> np.ndarray:
    """Sorted max drawups of smoothed noise-only series over each series' own estimated total σ.

    Studentized: the threshold is a multiple of the σ estimated from the run, so the null must carry
    the error of that estimate too — with few correlation times in the run it is large, and a
    threshold from the true σ would let one run in three through at τ = n/3."""
    return null_ratios_many([(n, window, rho, white_share, tau)])[(n, window, rho, white_share, tau)]


def null_ratios_many(keys: Iterable[NullKey]) -> dict[NullKey, np.ndarray]:
    """`_null_ratios` of every key (n, window, rho, white share, tau), from the cache or simulated,
    those of one (n, window, tau) together: every key draws the same normal numbers (one seed), so
    they are drawn once and each key's noise is made of them as it would be alone.

    Args:
        keys: the null distributions wanted, as `null_drawups` keys them.

    Returns:
        The sorted, read-only ratios of each key.
    """
    wanted = list(dict.fromkeys(keys))
    found: dict[NullKey, np.ndarray] = {}
    missing: dict[tuple[int, int, float | None], list[NullKey]] = {}
    for key in wanted:
        ratios = _null_cache.get(key)
        if ratios is not None:
            _null_cache.move_to_end(key)
            found[key] = ratios
        else:
            missing.setdefault((int(key[0]), int(key[1]), key[4]), []).append(key)
    for (n, window, tau), group in missing.items():
        repeats = max(400, min(_NULL_REPEATS, 4_000_000 // max(n, 1)))
        rng = np.random.default_rng(_NULL_SEED)
        draws = (rng.standard_normal((repeats, n)), rng.standard_normal(repeats),
                 rng.standard_normal((repeats, n)))  # the white part, then the AR(1) start and shocks
        per_batch = max(1, _NULL_BATCH_ELEMENTS // max(repeats * n, 1))
        for first in range(0, len(group), per_batch):
            batch = group[first:first + per_batch]
            found.update(zip(batch, _simulated_null(batch, n, window, tau, repeats, draws)))
    for key in wanted:
        _null_cache[key] = found[key]
        _null_cache.move_to_end(key)
    while len(_null_cache) > _NULL_CACHE_SIZE:
        _null_cache.popitem(last=False)
    return found


def _simulated_null(keys: Sequence[NullKey], n: int, window: int, tau: float | None, repeats: int,
                    draws: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """The ratios of keys sharing (n, window, tau): `simulate_noise` of each key's model from the
    same draws, then the drawups and the fitted σ of all of them at once."""
    white_draws, start, shocks = draws
    models = [NoiseModel(math.sqrt(share), math.sqrt(1 - share), -1.0 / math.log(rho) if rho > 0 else 0.0,
                         TAU_GIVEN) for _, _, rho, share, _ in keys]
    y = np.stack([model.white * white_draws for model in models])
    correlated = [k for k, model in enumerate(models) if model.correlated > 0]
    if correlated:
        rho = np.array([models[k].rho for k in correlated])[:, None]
        innovation = np.array([models[k].correlated * math.sqrt(1 - models[k].rho * models[k].rho)
                               for k in correlated])[:, None]
        x = np.array([models[k].correlated for k in correlated])[:, None] * start
        part = y[correlated]
        for t in range(n):
            if t:
                x = rho * x + innovation * shocks[:, t]
            part[:, :, t] += x
        y[correlated] = part
    drawups = max_drawup(smooth_rows(y, window))
    max_lag = _max_lag(n, tau)
    v = second_difference_variances(y, max_lag)
    out: list[np.ndarray | None] = [None] * len(keys)
    fitted = []
    for k, (_, _, rho, share, _) in enumerate(keys):
        keep = np.all(np.isfinite(v[k]), axis=0)
        lags = np.arange(1, max_lag + 1)[keep]
        if len(lags) == 0 or rho <= 0 and share >= 1:
            out[k] = np.sqrt(np.maximum(v[k, :, :1] / 6.0, 0)).ravel() if len(lags) else np.ones(repeats)
        else:
            fitted.append((k, keep, _lag_shape(rho if rho > 0 else 1e-9, lags)))
    keeps = {tuple(keep) for _, keep, _ in fitted}
    if len(keeps) == 1:  # every lag usable by every key (always, in practice): one fit for all
        index = [k for k, _, _ in fitted]
        keep = fitted[0][1]
        totals = np.sqrt(_fit_rows_of_shape(v[index][:, :, keep], np.stack([f for _, _, f in fitted])[:, None, :]))
        for k, total in zip(index, totals):
            out[k] = total
    else:
        for k, keep, f in fitted:
            out[k] = np.sqrt(_fit_rows_of_shape(v[k][:, keep], f))
    ratios_all = []
    for k, total in enumerate(out):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(total > 0, drawups[k] / total, np.inf)
        ratios.sort()
        ratios.setflags(write=False)
        ratios_all.append(ratios)
    return ratios_all


def null_key(model: NoiseModel, n: int, window: int) -> NullKey | None:
    """The key of the null distribution `null_drawups` uses for `model`. Rounded: the cache serves
    every layer of a model with nearly the same noise shape.

    Args:
        model: the series' fitted noise.
        n: epochs in the series.
        window: the smoothing window.

    Returns:
        (n, window, rho, white share, tau or None), or None where there is no noise (no null).
    """
    total = model.total
    if total <= 0 or n < 2:
        return None
    white_share = round(model.white**2 / total**2, 2)
    tau = round(model.correlation_epochs, 2) if model.correlation_epochs > 0 else None
    return (int(n), int(window), round(model.rho, 3), white_share, tau)


def null_drawups(model: NoiseModel, n: int, window: int) -> np.ndarray:
    """Max drawups (in log N) that the model's noise alone produces over n epochs, sorted, scaled by
    this run's estimated σ (see `_null_ratios`). The noise is symmetric, so the same distribution
    holds for the largest drawdown."""
    key = null_key(model, n, window)
    if key is None:
        return np.zeros(1)
    return model.total * _null_ratios(*key)


def exceedance(null: np.ndarray, value: float) -> float:
    """P(null ≥ value), with the +1 correction of a Monte Carlo p-value."""
    above = len(null) - int(np.searchsorted(null, value, side="left"))
    return (above + 1) / (len(null) + 1)
