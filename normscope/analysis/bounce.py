"""Bounce points of the weight norm: the exact ABEL rule replayed, and a noise-robust detector.

Both are pure functions of an end-of-epoch series (see `normscope.analysis.epochs`).

The exact rule (`abel_replay`) is Algorithm 1 of Lewkowycz 2021, step for step (`abel_rule.abel_step`;
docs/science.md §1.2).
On a noisy plateau the sign of Δ flips almost every epoch and the rule fires on noise; it is kept
because it is what the paper (and `ABEL(rule="exact")`) does.

The robust detector (`detect_bounces`; docs/science.md §6) works on y = log N, in these steps:

1. noise: white noise plus a mean-reverting AR(1) part whose correlation time is the relaxation time
   (`analysis.norm_noise`; docs/science.md §6.6–§6.7): the norm's slow wiggles are its own fluctuation,
   not a trend;
2. smoothing: z = centred moving average of y over `smooth_window` epochs (one-sided at the ends);
3. turning points: a zig-zag on z with threshold h, the rise that noise of the fitted model alone
   exceeds in a run of this length with probability `false_alarm` (simulated, studentized), never
   below `depth_sigmas`·(white σ) nor `min_depth`; a minimum is confirmed once z has risen h above
   it, a maximum once z has fallen h below it;
4. a bounce is a confirmed minimum preceded by a decline of at least h, spanning at least `min_width`
   epochs from the start of the decline to the confirmation of the rise;
5. the rise ends (and the robust ABEL would decay) at the first epoch after confirmation whose smoothed
   increase falls to max(`slope_sigmas`·(noise of a smoothed increment), `flat_fraction`·(the
   fastest increase since the minimum)), or at the next confirmed maximum — whichever comes first;
6. the decay interval: where simulated repeats of the run (trend plus fresh noise) decay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from normscope.analysis.abel_rule import (
    EVENT_DECAY,
    EVENT_MINIMUM,
    AbelState,
    abel_step,
    final_decay_epoch,
)
from normscope.analysis.epochs import EpochSeries, epoch_series
from normscope.analysis.norm_noise import (
    NoiseModel,
    estimate_noise,
    estimate_noise_rows,
    exceedance,
    null_drawups,
    null_key,
    null_ratios_many,
    simulate_noise,
    smooth_rows,
)
from normscope.analysis.theory import correlation_epochs as relaxation_correlation_epochs
from normscope.errors import BadInputError

REASON_BOUNCE = "bounce"
REASON_BUDGET = "budget"
_MAD_TO_SIGMA = 1.4826  # MAD of a normal sample → its standard deviation
_REPEAT_SEED = 16  # fixed: the intervals are a pure function of the series


# ----------------------------------------------------------------------------------------------- exact
@dataclass(frozen=True)
class AbelDecay:
    epoch: int  # completed epochs when the LR is multiplied (a MultiStepLR milestone)
    reason: str  # "bounce" (second sign change) or "budget" (the final decay at ~85 %)
    minimum_epoch: int | None = None  # for a bounce: the norm's lowest epoch between the two sign changes


@dataclass(frozen=True)
class AbelReplay:
    decays: tuple[AbelDecay, ...]
    minimum_epochs: tuple[int, ...]  # every extremum at which the rule set its flag (a peak or a trough)
    sign_changes: int
    reached_minimum: bool  # the flag after the last epoch
    final_decay_epoch: int | None  # None when the budget is unknown

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        return tuple(d.epoch for d in self.decays)


def abel_replay(
    epochs: Sequence[int],
    norm_sq: Sequence[float],
    *,
    total_epochs: int | None = None,
    final_fraction: float = 0.85,
) -> AbelReplay:
    """Replay ABEL's rule on end-of-epoch squared norms; add the budget decay when the budget is known."""
    if len(epochs) != len(norm_sq):
        raise ValueError("epochs and norm_sq differ in length")
    state = AbelState()
    decays: list[AbelDecay] = []
    minima: list[int] = []
    changes = 0
    flagged = 0  # index of the extremum at which the flag was set
    for i, (epoch, value) in enumerate(zip(epochs, norm_sq)):
        state, event = abel_step(state, float(value))
        if event is None:
            continue
        changes += 1
        if event == EVENT_MINIMUM:
            flagged = i - 1
            minima.append(int(epochs[flagged]))
        elif event == EVENT_DECAY:
            # The rule's first sign change may be a peak (the norm rose, then fell): the norm's minimum
            # is then the second extremum. Between the two the norm is monotone, so the lower one is it.
            bottom = flagged if float(norm_sq[flagged]) <= float(norm_sq[i - 1]) else i - 1
            decays.append(AbelDecay(int(epoch), REASON_BOUNCE, int(epochs[bottom])))
    final = None
    if total_epochs is not None:
        final = final_decay_epoch(total_epochs, final_fraction)
        if final not in {d.epoch for d in decays}:
            decays.append(AbelDecay(final, REASON_BUDGET))
            decays.sort(key=lambda d: d.epoch)
    return AbelReplay(tuple(decays), tuple(minima), changes, state.reached_minimum, final)


# ---------------------------------------------------------------------------------------------- robust
@dataclass(frozen=True)
class RobustParams:
    """Parameters of the robust detector (see the module docstring for where each enters)."""

    smooth_window: int = 3  # epochs in the centred moving average of log N
    depth_sigmas: float = 5.0  # decline and rise must each exceed this many σ of the white noise ...
    min_depth: float = 0.002  # ... and this much in log N (≈ 0.2 % of N), whatever the noise
    min_width: int = 3  # epochs from the start of the decline to the confirmation of the rise
    slope_sigmas: float = 2.0  # a smoothed increase within this many σ of noise is "flat"
    flat_fraction: float = 0.2  # ... as is one below this fraction of the fastest increase
    false_alarm: float = 0.01  # P(the noise alone makes a rise or a decline this large in the run)
    interval_confidence: float = 0.9  # coverage of each decay interval
    repeats: int = 200  # simulated repeats of the run behind each decay interval (0: no intervals)

    def __post_init__(self) -> None:
        if self.smooth_window < 1 or self.min_width < 1:
            raise BadInputError("smooth_window and min_width must be at least 1")
        if self.depth_sigmas <= 0 or self.min_depth < 0 or not 0 <= self.flat_fraction < 1:
            raise BadInputError("depth_sigmas must be > 0, min_depth ≥ 0 and flat_fraction in [0, 1)")
        if not (0 < self.false_alarm < 1 and 0 < self.interval_confidence < 1):
            raise BadInputError("false_alarm and interval_confidence must be in (0, 1)")
        if self.repeats < 0:
            raise BadInputError("repeats must be ≥ 0")


@dataclass(frozen=True)
class Bounce:
    start_epoch: int  # where the decline began (previous peak, or the first epoch)
    minimum_epoch: int  # bottom of the bounce (lowest raw value within the smoothing window)
    confirmed_epoch: int  # first epoch at which the rise exceeded the threshold
    rise_end_epoch: int | None  # top of the rise; None while the norm is still rising
    decay_epoch: int | None  # where a robust ABEL decays (the epoch the end of the rise is seen)
    depth: float  # fractional drop from the start to the minimum: 1 − N_min/N_start
    rise: float  # fractional rise from the minimum to the rise's end (or the last epoch)
    significance: float  # min(drop, rise) in units of the σ of a far-apart smoothed difference
    confidence: float  # 1 − P(noise alone makes a drop and a rise this large somewhere in the run)
    # where repeats of the run (same trend, fresh noise from the fitted model) decay, as the central
    # `interval_confidence` range; None while still rising or without intervals (repeats=0)
    decay_interval: tuple[int, int] | None = None
    interval_confidence: float = math.nan
    reproducibility: float = math.nan  # share of those repeats in which the bounce is found at all


@dataclass(frozen=True)
class BounceDetection:
    bounces: tuple[Bounce, ...]
    noise: float  # stationary σ of log N about its trend (white and correlated parts together)
    threshold: float  # h, in log N
    noise_limited: bool  # True when h came from the noise, False when from the min_depth floor
    trend_at_end: str  # "rising", "falling" or "flat": smoothed move over the last epochs vs h/2
    last_turn_epoch: int | None  # epoch of the last confirmed turning point
    epochs: tuple[int, ...]
    smoothed_log_norm_sq: tuple[float, ...]
    params: RobustParams = field(default_factory=RobustParams)
    noise_model: NoiseModel | None = None  # the white + AR(1) fit that `noise` and `threshold` come from
    threshold_sigmas: float = math.nan  # h / noise: the threshold as a multiple of σ (NaN: no noise)

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        return tuple(b.decay_epoch for b in self.bounces if b.decay_epoch is not None)


def noise_level(log_norm_sq: np.ndarray) -> float:
    """Per-epoch white-noise σ of a series around its smooth trend, from the MAD of second differences
    (the white-noise reading; `norm_noise.estimate_noise` separates the correlated part)."""
    if len(log_norm_sq) < 4:
        return 0.0
    d2 = np.diff(log_norm_sq, n=2)
    return float(_MAD_TO_SIGMA * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at both ends instead of padding."""
    return smooth_rows(np.asarray(values, dtype=float), window)


def _turning_points(z: np.ndarray, h: float) -> tuple[list[tuple[str, int, int]], int]:
    """Zig-zag turning points (kind, index, index where confirmed) and the trend after the last one."""
    pivots: list[tuple[str, int, int]] = []
    trend, hi, lo = 0, 0, 0
    for i in range(1, len(z)):
        if trend == 0:
            hi = i if z[i] > z[hi] else hi
            lo = i if z[i] < z[lo] else lo
            if z[hi] - z[lo] >= h:
                if hi > lo:
                    pivots.append(("min", lo, i))
                    trend = 1
                else:
                    pivots.append(("max", hi, i))
                    trend = -1
        elif trend == 1:
            if z[i] > z[hi]:
                hi = i
            elif z[hi] - z[i] >= h:
                pivots.append(("max", hi, i))
                trend, lo = -1, i
        else:
            if z[i] < z[lo]:
                lo = i
            elif z[i] - z[lo] >= h:
                pivots.append(("min", lo, i))
                trend, hi = 1, i
    return pivots, trend


def detect_bounces(
    epochs: Sequence[int],
    norm_sq: Sequence[float],
    params: RobustParams | None = None,
    *,
    correlation_epochs: float | None = None,
) -> BounceDetection:
    """Find the bounces of a squared-norm series that stand out of its own noise.

    `correlation_epochs`: the correlation time of the norm's fluctuations, in epochs — the relaxation
    time (`recommend.relaxation_time`); fitted from the series when not given.
    """
    params = params or RobustParams()
    values = np.asarray(norm_sq, dtype=float)
    if len(values) != len(epochs):
        raise ValueError("epochs and norm_sq differ in length")
    if np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise BadInputError("the squared weight norm must be finite and positive at every epoch")
    y = np.log(values)
    model = estimate_noise(y, correlation_epochs)
    w = params.smooth_window
    z = smooth(y, w)
    null = null_drawups(model, len(z), w)
    noise_h = max(float(np.quantile(null, 1.0 - params.false_alarm)), params.depth_sigmas * model.white)
    h = max(noise_h, params.min_depth)
    if h <= 0:  # a constant series: nothing can stand out
        h = math.inf
    pivots, _ = _turning_points(z, h)
    far_sd = model.far_difference_sd(w)
    step_noise = model.smoothed_difference_sd(1, w)
    found = _candidates(z, h, pivots, step_noise, params)
    intervals = _decay_intervals(z, found, model, h, step_noise, params) if params.repeats else {}
    bounces = _bounces(epochs, y, z, found, model, null, far_sd, intervals, params)
    return BounceDetection(
        bounces=tuple(bounces),
        noise=model.total,
        threshold=float(h),
        threshold_sigmas=float(h / model.total) if model.total > 0 else math.nan,
        noise_limited=noise_h >= params.min_depth,
        trend_at_end=_recent_trend(z, h, max(3, w)),
        last_turn_epoch=int(epochs[pivots[-1][1]]) if pivots else None,
        epochs=tuple(int(e) for e in epochs),
        smoothed_log_norm_sq=tuple(float(v) for v in z),
        params=params,
        noise_model=model,
    )


def _bounces(epochs: Sequence[int], y: np.ndarray, z: np.ndarray, found, model: NoiseModel, null: np.ndarray,
             far_sd: float, intervals: dict[int, tuple[int, int, float]], params: RobustParams) -> list[Bounce]:
    """The `Bounce` of each candidate of `_candidates` (y: log N, z: its smoothed series)."""
    w = params.smooth_window
    bounces: list[Bounce] = []
    for start, m, confirmed, end, decay in found:
        drop = float(z[start] - z[m])
        # smoothing drags the bottom of an asymmetric V towards its gentler side: place the minimum
        # at the lowest raw value inside the smoothing window (depth stays the smoothed, cautious one)
        half = w // 2
        bottom = max(start, m - half) + int(np.argmin(y[max(start, m - half) : m + half + 1]))
        top = end if end is not None else int(len(z) - 1)
        rise = float(np.max(z[m : top + 1]) - z[m])
        significance = min(drop, rise) / far_sd if far_sd > 0 else math.inf
        p_value = max(exceedance(null, drop), exceedance(null, rise)) if model.total > 0 else 0.0
        spread = intervals.get(m)
        interval = None
        if spread is not None and decay is not None:
            low, high = int(epochs[spread[0]]), int(epochs[spread[1]])
            interval = (min(low, int(epochs[decay])), max(high, int(epochs[decay])))
        bounces.append(Bounce(
            start_epoch=int(epochs[start]),
            minimum_epoch=int(epochs[bottom]),
            confirmed_epoch=int(epochs[confirmed]),
            rise_end_epoch=None if end is None else int(epochs[end]),
            decay_epoch=None if decay is None else int(epochs[decay]),
            depth=float(1.0 - math.exp(-drop)),
            rise=float(math.expm1(rise)),
            significance=float(significance),
            confidence=float(1.0 - p_value),
            decay_interval=interval,
            interval_confidence=params.interval_confidence if interval is not None else math.nan,
            reproducibility=math.nan if spread is None else spread[2],
        ))
    return bounces


def _candidates(z: np.ndarray, h: float, pivots, step_noise: float, params: RobustParams
                ) -> list[tuple[int, int, int, int | None, int | None]]:
    """(start, minimum, confirmation, top of the rise, decay) indices of every bounce of z at threshold h."""
    out = []
    for k, (kind, m, confirmed) in enumerate(pivots):
        if kind != "min":
            continue
        start = pivots[k - 1][1] if k > 0 else int(np.argmax(z[: m + 1]))
        if z[start] - z[m] < h or confirmed - start < params.min_width:
            continue
        next_max = pivots[k + 1][1] if k + 1 < len(pivots) else None
        end, decay = _rise_end(z, m, confirmed, next_max, step_noise, params)
        out.append((start, m, confirmed, end, decay))
    return out


def _decay_intervals(z: np.ndarray, found, model: NoiseModel, h: float, step_noise: float,
                     params: RobustParams) -> dict[int, tuple[int, int, float]]:
    """Where repeats of the run would decay: {minimum index: (low, high decay index, share found)}.

    A parametric bootstrap: the trend (z smoothed once more over about one correlation time) plus
    fresh noise from the fitted model, run through the same detector at the same threshold. A
    repeat's bounce is the one whose minimum lies within the original's decline-to-confirmation
    span. The interval is the central `interval_confidence` range of the repeats' decay epochs; it
    errs wide, since the trend still carries part of this run's correlated noise."""
    with_decay = [f for f in found if f[4] is not None]
    if not with_decay or model.total <= 0:
        return {}
    span = max(params.smooth_window, 2 * int(round(model.correlation_epochs / 2)) + 1)
    trend = smooth_rows(z, span)
    rng = np.random.default_rng(_REPEAT_SEED)
    repeats = trend[None, :] + simulate_noise(model, len(z), params.repeats, rng)
    decays: dict[int, list[int]] = {f[1]: [] for f in with_decay}
    for row in smooth_rows(repeats, params.smooth_window):
        pivots, _ = _turning_points(row, h)
        others = _candidates(row, h, pivots, step_noise, params)
        for start, m, confirmed, _, _ in with_decay:
            match = [c for c in others if start <= c[1] <= confirmed and c[4] is not None]
            if match:
                decays[m].append(min(match, key=lambda c: abs(c[1] - m))[4])
    tail = (1.0 - params.interval_confidence) / 2
    out = {}
    for m, values in decays.items():
        if values:
            lo, hi = np.quantile(values, [tail, 1.0 - tail])
            out[m] = (int(math.floor(lo)), int(math.ceil(hi)), len(values) / params.repeats)
    return out


def _recent_trend(z: np.ndarray, h: float, span: int) -> str:
    """Direction of the smoothed series over its last `span` epochs: a move of h/2 either way counts."""
    if len(z) < 2:
        return "flat"
    move = float(z[-1] - z[-min(span, len(z))])
    return "rising" if move > h / 2 else "falling" if move < -h / 2 else "flat"


def _rise_end(
    z: np.ndarray, m: int, confirmed: int, next_max: int | None, step_noise: float, params: RobustParams
) -> tuple[int | None, int | None]:
    """(index of the top of the rise, index where that is first seen), or (None, None) while rising."""
    dz = np.diff(z, prepend=z[0])
    fastest = 0.0
    last = len(z) - 1 if next_max is None else next_max
    for j in range(m + 1, len(z)):
        if j > confirmed and j - 1 >= m:
            tol = max(params.slope_sigmas * step_noise, params.flat_fraction * fastest)
            if dz[j] <= tol:
                return j - 1, j
        fastest = max(fastest, dz[j])
        if j >= last and next_max is not None:
            return next_max, min(len(z) - 1, next_max + 1)
    return None, None


# ------------------------------------------------------------------------------------------- per layer
@dataclass(frozen=True)
class LayerBounces:
    layer: str
    exact: AbelReplay
    robust: BounceDetection | None  # None when the layer's norm is zero somewhere
    note: str = ""


def layer_bounces(
    series: EpochSeries, params: RobustParams | None = None, *, correlation_epochs: float | None = None
) -> tuple[LayerBounces, ...]:
    """Both detectors on every layer's own end-of-epoch squared norm (without decay intervals: those
    are the total norm's, and simulating repeats for thousands of layers would dominate the time).

    All layers at once, each step an array operation over them: the same results, bit for bit, as
    `abel_replay` and `detect_bounces` of each layer alone.

    Args:
        series: the run's end-of-epoch series (`epochs.epoch_series`), with its layers.
        params: the robust detector's parameters (`repeats` is ignored: no intervals).
        correlation_epochs: the norm's correlation time in epochs; fitted per layer when None.

    Returns:
        One `LayerBounces` per layer of `series`, in its order.
    """
    params = replace(params or RobustParams(), repeats=0)
    layers = series.layers
    if not layers:
        return ()
    values = np.array([layer.norm_sq for layer in layers], dtype=float).reshape(len(layers), len(series.epochs))
    finite = np.all(np.isfinite(values), axis=1)
    positive = finite & np.all(values > 0, axis=1)
    exact = dict(zip(np.flatnonzero(finite).tolist(), _abel_replay_rows(series.epochs, values[finite])))
    robust = dict(zip(np.flatnonzero(positive).tolist(), _detect_rows(
        series.epochs, values[positive], params, correlation_epochs)))
    out: list[LayerBounces] = []
    for i, layer in enumerate(layers):
        if i not in exact:
            out.append(LayerBounces(layer.layer, abel_replay((), ()), None, "missing in some epochs"))
        elif i not in robust:
            out.append(LayerBounces(layer.layer, exact[i], None, "zero norm in some epoch"))
        else:
            out.append(LayerBounces(layer.layer, exact[i], robust[i]))
    return tuple(out)


def _abel_replay_rows(epochs: Sequence[int], values: np.ndarray) -> list[AbelReplay]:
    """`abel_replay(epochs, row)` of each row of finite squared norms (no budget): a sign change of
    Δ at epoch i is Δ_i·Δ_{i−1} < 0, and the changes alternate between setting the flag (a minimum)
    and decaying."""
    count, n = values.shape
    if n < 3:  # no two deltas: no sign change
        return [AbelReplay((), (), 0, False, None) for _ in range(count)]
    labels = np.asarray(epochs, dtype=np.int64)
    delta = np.diff(values, axis=1)
    change = delta[:, 1:] * delta[:, :-1] < 0  # column j: the change at index j + 2
    rows, cols = np.nonzero(change)
    at = cols + 2
    ordinal = np.cumsum(change, axis=1)[rows, cols] - 1  # 0: the first change of the row
    minimum = ordinal % 2 == 0
    # a decay's flag was set at the change before it (the same row's previous one), at index - 1
    flagged = np.zeros_like(at)
    flagged[1:] = at[:-1] - 1
    bottom = np.where(values[rows, np.maximum(flagged, 0)] <= values[rows, at - 1], flagged, at - 1)
    bounds = np.searchsorted(rows, np.arange(count + 1)).tolist()
    minimum_epochs = labels[at - 1].tolist()
    decay_epochs, bottom_epochs = labels[np.minimum(at, n - 1)].tolist(), labels[np.maximum(bottom, 0)].tolist()
    kinds = minimum.tolist()
    out = []
    for r in range(count):
        lo, hi = bounds[r], bounds[r + 1]
        minima = tuple(minimum_epochs[k] for k in range(lo, hi) if kinds[k])
        decays = tuple(AbelDecay(decay_epochs[k], REASON_BOUNCE, bottom_epochs[k])
                       for k in range(lo, hi) if not kinds[k])
        out.append(AbelReplay(decays, minima, hi - lo, (hi - lo) % 2 == 1, None))
    return out


def _detect_rows(epochs: Sequence[int], values: np.ndarray, params: RobustParams,
                 correlation_epochs: float | None) -> list[BounceDetection]:
    """`detect_bounces(epochs, row, params)` of each row of finite positive squared norms, with
    `params.repeats` 0 (no decay intervals)."""
    count, n = values.shape
    if count == 0:
        return []
    y = np.log(values)
    models = estimate_noise_rows(y, correlation_epochs)
    w = params.smooth_window
    z = smooth_rows(y, w)
    keys = [null_key(model, n, w) for model in models]
    ratios = null_ratios_many(key for key in keys if key is not None)
    totals = np.array([model.total for model in models])
    quantile = np.zeros(count)  # of a null of zeros where there is no noise
    by_key: dict = {}
    for i, key in enumerate(keys):
        if key is not None:
            by_key.setdefault(key, []).append(i)
    for key, index in by_key.items():
        for first in range(0, len(index), 512):
            part = index[first:first + 512]
            nulls = totals[part][:, None] * ratios[key][None, :]
            quantile[part] = np.quantile(nulls, 1.0 - params.false_alarm, axis=-1)
    thresholds, noise_limited = [], []
    for q, model in zip(quantile.tolist(), models):
        noise_h = max(q, params.depth_sigmas * model.white)
        h = max(noise_h, params.min_depth)
        thresholds.append(math.inf if h <= 0 else h)
        noise_limited.append(noise_h >= params.min_depth)
    pivots = _turning_points_rows(z, np.array(thresholds))
    span = max(3, w)
    moves = (z[:, -1] - z[:, -min(span, n)]).tolist() if n >= 2 else [0.0] * count
    labels = tuple(int(e) for e in epochs)
    smoothed = z.tolist()
    out = []
    for i, model in enumerate(models):
        h, turns = thresholds[i], pivots[i]
        found = []
        if any(kind == "min" for kind, _, _ in turns):
            found = _candidates(z[i], h, turns, model.smoothed_difference_sd(1, w), params)
        bounces = ()
        if found:
            null = np.zeros(1) if keys[i] is None else model.total * ratios[keys[i]]
            bounces = tuple(_bounces(epochs, y[i], z[i], found, model, null, model.far_difference_sd(w), {},
                                     params))
        move = moves[i]
        trend = "flat" if n < 2 else "rising" if move > h / 2 else "falling" if move < -h / 2 else "flat"
        out.append(BounceDetection(
            bounces=bounces,
            noise=model.total,
            threshold=float(h),
            threshold_sigmas=float(h / model.total) if model.total > 0 else math.nan,
            noise_limited=noise_limited[i],
            trend_at_end=trend,
            last_turn_epoch=int(epochs[turns[-1][1]]) if turns else None,
            epochs=labels,
            smoothed_log_norm_sq=tuple(smoothed[i]),
            params=params,
            noise_model=model,
        ))
    return out


def _turning_points_rows(z: np.ndarray, h: np.ndarray) -> list[list[tuple[str, int, int]]]:
    """`_turning_points(z[r], h[r])[0]` of every row r: the zig-zag run over all rows at once, one
    epoch at a time."""
    count, n = z.shape
    rows = np.arange(count)
    trend = np.zeros(count, dtype=np.int8)
    hi = np.zeros(count, dtype=np.int64)
    lo = np.zeros(count, dtype=np.int64)
    events: list[tuple[np.ndarray, str, np.ndarray, int]] = []
    for i in range(1, n):
        zi = z[:, i]
        flat, up, down = trend == 0, trend == 1, trend == -1
        # no trend yet: the running high and low, and the first move of h between them
        hi = np.where(flat & (zi > z[rows, hi]), i, hi)
        lo = np.where(flat & (zi < z[rows, lo]), i, lo)
        fire = flat & (z[rows, hi] - z[rows, lo] >= h)
        first_min, first_max = fire & (hi > lo), fire & ~(hi > lo)
        # rising: a new high, or a fall of h from it confirms the maximum
        higher = up & (zi > z[rows, hi])
        turn_down = up & ~higher & (z[rows, hi] - zi >= h)
        # falling: a new low, or a rise of h from it confirms the minimum
        lower = down & (zi < z[rows, lo])
        turn_up = down & ~lower & (zi - z[rows, lo] >= h)
        for mask, kind, where in ((first_min, "min", lo), (first_max, "max", hi), (turn_down, "max", hi),
                                  (turn_up, "min", lo)):
            if mask.any():
                at = np.flatnonzero(mask)
                events.append((at, kind, where[at], i))
        hi = np.where(higher | turn_up, i, hi)
        lo = np.where(lower | turn_down, i, lo)
        trend = np.where(first_min | turn_up, 1, np.where(first_max | turn_down, -1, trend)).astype(np.int8)
    out: list[list[tuple[str, int, int]]] = [[] for _ in range(count)]
    for at, kind, where, i in events:  # in epoch order, so each row's list is too
        for r, index in zip(at.tolist(), where.tolist()):
            out[r].append((kind, index, i))
    return out


# ------------------------------------------------------------------------------------- all of it
@dataclass(frozen=True)
class BounceAnalysis:
    """Both detectors on the run's total norm and on each layer: what `normscope analyze` shows.
    Unlike `recommend`, it needs no learning rate."""

    series: EpochSeries
    exact: AbelReplay
    robust: BounceDetection
    layers: tuple[LayerBounces, ...]


def analyze_bounces(
    table,
    *,
    include_kinds: tuple[str, ...] | str | None = None,
    steps_per_epoch: float | None = None,
    params: RobustParams | None = None,
) -> BounceAnalysis:
    """Bounces of the trajectory table's end-of-epoch norm (raises BadInputError below 3 epochs)."""
    series = epoch_series(table, include_kinds=include_kinds, steps_per_epoch=steps_per_epoch)
    return bounces_of_series(series, params)


def bounces_of_series(series: EpochSeries, params: RobustParams | None = None) -> BounceAnalysis:
    """`analyze_bounces` of a series already aggregated (`epochs.epoch_series`): what a caller that
    also advises on it (`recommend.recommend`) uses, so the table is aggregated once."""
    tau = series_correlation_epochs(series)
    return BounceAnalysis(
        series=series,
        exact=abel_replay(series.epochs, series.norm_sq),
        robust=detect_bounces(series.epochs, series.norm_sq, params, correlation_epochs=tau),
        layers=layer_bounces(series, params, correlation_epochs=tau),
    )


def series_correlation_epochs(series: EpochSeries) -> float | None:
    """The norm's correlation time in epochs: its relaxation time at the run's largest recorded LR
    (docs/science.md §3.5); None (fit it from the series) when LR, weight decay or steps per epoch are unknown."""
    known = [x for x in series.lr if math.isfinite(x) and x > 0]
    if not known or not series.steps_per_epoch:
        return None
    return relaxation_correlation_epochs(series.optimizer, max(known), series.weight_decay, series.momentum,
                              series.beta1, series.steps_per_epoch)
