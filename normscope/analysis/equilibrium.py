"""Equilibrium of scale-invariant weights: predicted vs measured angular updates (docs/science.md §3–§4).

For an invariant weight, weight decay's shrink balances the growth from gradient noise orthogonal to
the weight; the direction then performs a random walk of fixed speed. What is compared:

* Angle between consecutive snapshots, k optimizer steps apart. Gradients after snapshot s are
  (nearly) orthogonal to w_s, so without momentum E⟨w_s, w_{s+k}⟩ = (1 − ηλ_eff)^k |w_s|² and at
  equilibrium E cos θ_k = (1 − ηλ_eff)^k (docs/science.md §4), λ_eff = λ/(1−μ) for SGD (coupled decay
  inside the momentum buffer), λ for AdamW (decoupled). With momentum μ (SGD) or β₁ (AdamW) the
  steps are correlated, and what enters is an effective step count
      S(k) = Σ_{i=1..k} (1 − μ^i)² + μ²(1 − μ^k)²/(1 − μ²)
  (the first sum: gradients inside the window, each delivered in part before the window ends; the
  second: the buffer carried in from before s) — so E cos θ_k = (1 − ηλ_eff)^{S(k)}, i.e.
  θ_k² ≈ 2ηλ_eff·S(k). Checks: S(1) = (1−μ)/(1+μ) gives the known per-step angles √(2ηλ/(1+μ))
  and √(2ηλ(1−β₁)/(1+β₁)); μ = 0 gives S = k; for k ≫ 1/(1−μ), S ≈ k − 2μ/(1−μ²) (9.5 steps
  fewer at μ = 0.9 — 40% of a 23-step epoch). [derived, docs/equilibrium.md]
  The ratio measured/predicted θ_k is the headline number. Neither θ_k/k nor θ_k/√k is the
  per-step angle: θ_k/k underestimates it √k-fold (a random walk), and with momentum θ_k/√k
  overestimates it up to √((1+μ)/(1−μ))-fold (≈ 4.4 at μ = 0.9). The per-step angle shown as
  "measured" is ratio × predicted per-step angle.
* Myrtle's η|g|/|w| → √(2ηλ(1−μ)) (SGD/SGDM), with |g| from live logs or, from checkpoints, from the
  momentum buffer: b − λw/(1−μ) ≈ Σ μ^j g_{t−j}, whose squared norm is |g|²/(1−μ²) for uncorrelated
  gradients.
* AdamW: the tensor norm against Σ over neurons of √(ηC/(2λ))², i.e. √(η·numel/(2λ)).

Relaxation time (steps): (1−μ)/(4ηλ) for SGD/SGDM, 1/(2ηλ) for AdamW. An LR phase is the stretch over
which the interval LR stayed within 25% of its latest value (so cosine schedules count as slowly
moving, step decays as changes); a layer is "approaching" until 3 relaxation times (e^-3 ≈ 5%
left) have passed in the current phase, then "at equilibrium" if its ratio lies within TOLERANCE,
"off" otherwise.

Which LR governs the steps between two snapshots: by default the LR recorded in the earlier one
(`lr_at="start"`), because most loops step the scheduler before saving, so a checkpoint holds the
next epoch's LR (the sample SGD run does exactly this); `lr_at="end"` for loops that save first.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normscope.analysis import theory
from normscope.analysis.invariance import INVARIANT, InvarianceVerdict, classify_invariance
from normscope.analysis.theory import optimizer_family
from normscope.analysis.user_model import build_model
from normscope.trajectory import Trajectory

# Band on the angle ratio for "at equilibrium". The prediction assumes successive gradients are
# uncorrelated; real gradient noise is partly mean-reverting, which slows the random walk without
# touching the instantaneous balance (on the sample SGD run, settled conv layers: angle ratio
# 0.65–0.81 while η|g|/|w| sits at 1.00 of Myrtle's prediction). A factor 1.5 either way admits that
# and the e^-3 relaxation residue, and still separates the off-equilibrium states the report must
# catch: just after an LR decay 0.1–0.3, the initial transient 1.4–4.5. See docs/equilibrium.md.
TOLERANCE = (0.5, 1.5)
SETTLED_RELAXATIONS = 3.0
LR_PHASE_BAND = 1.25
SATURATION = 0.5  # k·ηλ_eff above this: the k-step angle no longer resolves the random walk


@dataclass(frozen=True)
class HyperparamOverrides:
    """Values the user gives (CLI flags); each replaces the table's column everywhere."""

    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    beta1: float | None = None
    steps_per_epoch: float | None = None
    lr_at: str = "start"


@dataclass(frozen=True)
class HyperParam:
    name: str
    value: str
    source: str


@dataclass(frozen=True)
class EquilibriumPoint:
    """One interval between consecutive snapshots, ending at `snapshot`."""

    snapshot: int
    step: float
    epoch: float | None
    steps: float  # k
    lr: float
    weight_decay: float
    angle_rad: float
    predicted_angle_rad: float
    ratio: float
    angle_per_step_rad: float  # implied: ratio × predicted per-step angle
    predicted_angle_per_step_rad: float
    lr_grad_over_norm: float  # η|g|/|w| (SGD), NaN where unknown
    predicted_lr_grad_over_norm: float
    grad_source: str  # "live log", "momentum buffer", ""
    norm: float
    predicted_norm: float  # AdamW rotational-equilibrium norm, NaN for SGD
    relaxation_steps: float
    relaxations_in_phase: float


@dataclass(frozen=True)
class LayerEquilibrium:
    param: str
    layer: str
    optimizer: str
    status: str  # "approaching", "at equilibrium", "off", "unknown"
    reason: str
    ratio: float  # latest interval, measured/predicted angle
    settled_ratio: float  # median over intervals ≥ 3 relaxation times into their LR phase (NaN if none)
    grad_ratio: float  # latest η|g|/|w| over √(2ηλ(1−μ)) (SGD; NaN otherwise)
    settled_grad_ratio: float  # its median over the settled intervals
    predicted_angle_per_step_rad: float
    angle_per_step_rad: float
    relaxation_steps: float
    steps_since_lr_change: float
    relaxations_since_lr_change: float
    points: tuple[EquilibriumPoint, ...]
    # 90 % distribution-free intervals of the two settled medians (order statistics over the settled
    # intervals): the sampling uncertainty only. The momentum-buffer |g| additionally assumes
    # uncorrelated successive gradients, a bias of unknown sign (docs/science.md §4.5).
    settled_ratio_interval: tuple[float, float] = (math.nan, math.nan)
    settled_grad_ratio_interval: tuple[float, float] = (math.nan, math.nan)


@dataclass(frozen=True)
class NotApplicable:
    param: str
    layer: str
    reason: str


@dataclass(frozen=True)
class EquilibriumReport:
    hyperparams: tuple[HyperParam, ...]
    layers: tuple[LayerEquilibrium, ...]
    not_applicable: tuple[NotApplicable, ...]
    tolerance: tuple[float, float] = TOLERANCE
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- hyper-parameters


def _describe_values(table: pd.DataFrame, column: str) -> str:
    """A hyper-parameter's values: one value; per param group where groups differ (a group without
    weight decay is not an anneal to 0); else how it changed over the run. Significant digits are
    kept (a cosine LR ends at 8.13e-05, not 0).

    Whole columns at once (numpy): a live log's table has a row per parameter and logged step."""
    if column not in table or "snapshot" not in table:
        return "–"
    values = table[column].to_numpy()
    snapshots = table["snapshot"].to_numpy()
    keep = ~(pd.isna(values) | pd.isna(snapshots))
    if not keep.any():
        return "–"
    values = np.round(values[keep].astype(float), 12)
    snapshots = snapshots[keep]
    # each snapshot's distinct values: sorted by (snapshot, value), a new pair starts a run
    order = np.lexsort((values, snapshots))
    by_snapshot, by_value = snapshots[order], values[order]
    new_snapshot = np.r_[True, by_snapshot[1:] != by_snapshot[:-1]]
    new_pair = new_snapshot | np.r_[True, by_value[1:] != by_value[:-1]]
    distinct = np.add.reduceat(new_pair, np.flatnonzero(new_snapshot))
    firsts = by_snapshot[new_snapshot]
    if (distinct > 1).any():
        last = values[snapshots == firsts[distinct > 1][-1]]  # in the table's row order
        return "per param group: " + ", ".join(f"{value:.3g}" for value in dict.fromkeys(last.tolist()))
    # one value per snapshot: each snapshot's, in snapshot order
    over_time = by_value[new_snapshot].tolist()
    distinct_values = list(dict.fromkeys(over_time))
    if len(distinct_values) == 1:
        return f"{distinct_values[0]:.3g}"
    return (f"{min(distinct_values):.3g} to {max(distinct_values):.3g} over the run "
            f"(first {over_time[0]:.3g}, last {over_time[-1]:.3g})")


def hyperparams_used(table: pd.DataFrame, overrides: HyperparamOverrides, source: str | None) -> tuple[HyperParam, ...]:
    """Each hyper-parameter's value(s) and where it came from (override, checkpoint, or missing)."""
    where = source or "the run's optimizer state"
    out = []
    for name, column in (("optimizer", "optimizer"), ("lr", "lr"), ("weight_decay", "weight_decay"),
                         ("momentum", "momentum"), ("beta1", "beta1")):
        given = getattr(overrides, name)
        if given is not None:
            out.append(HyperParam(name, f"{given:g}" if isinstance(given, float) else str(given), "override"))
            continue
        if name == "optimizer":
            # distinct values in order of appearance, a whole column at once
            names = [v for v in (pd.unique(table[column]) if column in table else ()) if isinstance(v, str) and v]
            out.append(HyperParam(name, ", ".join(names) or "–", where if names else "missing"))
        else:
            text = _describe_values(table, column)
            if text == "–" and name in ("momentum", "beta1"):
                continue  # the other family's knob: absent, not missing
            out.append(HyperParam(name, text, where if text != "–" else "missing"))
    if overrides.steps_per_epoch is not None:
        out.append(HyperParam("steps_per_epoch", f"{overrides.steps_per_epoch:g}", "override"))
    out.append(HyperParam("lr_at", overrides.lr_at, "override" if overrides.lr_at != "start" else "default"))
    return tuple(out)


class LayerRows:
    """One parameter's rows as arrays, one per table column, in snapshot order: what
    `layer_equilibrium` reads. `equilibrium_report` cuts them from whole columns (one frame per
    parameter cost milliseconds each, seconds on a run of thousands of invariant weights)."""

    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns  # every one as long as "snapshot", which every table has

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return len(self.columns["snapshot"])


def _arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns of `frame` that `layer_equilibrium` reads, as arrays in its row order (the
    nullable step column as floats, NaN where unknown)."""
    out = {}
    for name in frame.columns:
        if name not in _LAYER_COLUMNS:
            continue
        column = frame[name]
        out[name] = (column.astype("Float64").to_numpy(dtype=float, na_value=math.nan) if name == "step"
                     else column.to_numpy())
    return out


def layer_rows(frame: pd.DataFrame) -> LayerRows:
    """One parameter's rows of the trajectory table as `LayerRows` (sorted by snapshot)."""
    return LayerRows(_arrays(frame.sort_values("snapshot")))


def _rows_by_param(table: pd.DataFrame, params: set[str]) -> dict[str, LayerRows]:
    """`layer_rows` of each of `params`, cut from whole columns: one sort of their rows by
    parameter, then snapshot."""
    read = table.loc[table["param"].isin(params), [c for c in table.columns if c in _LAYER_COLUMNS]]
    codes, names = pd.factorize(read["param"], sort=False)
    order = np.lexsort((read["snapshot"].to_numpy(), codes))
    columns = {name: values[order] for name, values in _arrays(read).items()}
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {str(name): LayerRows({c: values[lo:hi] for c, values in columns.items()})
            for name, lo, hi in zip(names, bounds[:-1], bounds[1:])}


def _column(rows: LayerRows, name: str, override: float | None) -> np.ndarray:
    if override is not None:
        return np.full(len(rows), float(override))
    return np.asarray(rows[name], dtype=float) if name in rows else np.full(len(rows), math.nan)


def _steps(rows: LayerRows, overrides: HyperparamOverrides) -> np.ndarray:
    steps = np.array(rows["step"], dtype=float)
    if np.isnan(steps).any() and overrides.steps_per_epoch is not None:
        by_epoch = np.asarray(rows["epoch"], dtype=float) * overrides.steps_per_epoch
        steps = np.where(np.isnan(steps), by_epoch, steps)
    return steps


# --------------------------------------------------------------------------- the theory


@dataclass(frozen=True)
class _Theory:
    """Per-interval predictions for one optimizer family (formulas in `analysis.theory`)."""

    family: str

    def lambda_eff(self, lam: np.ndarray, mom: np.ndarray) -> np.ndarray:
        return theory.effective_weight_decay(self.family, lam, mom)

    def angle_per_step(self, eta: np.ndarray, lam: np.ndarray, mom: np.ndarray) -> np.ndarray:
        return theory.angle_per_step(self.family, eta, lam, mom)

    def relaxation(self, eta: np.ndarray, lam: np.ndarray, mom: np.ndarray) -> np.ndarray:
        return theory.relaxation_steps(self.family, eta, lam, mom)


def effective_steps(k: np.ndarray, mom: np.ndarray) -> np.ndarray:
    """S(k): how many uncorrelated steps k momentum-correlated steps amount to (docs/science.md §4.3).

    Args:
        k: steps between two snapshots; mom: the momentum μ over them. Arrays of one shape.

    Returns:
        S(k), an array of that shape; S(1) = (1−μ)/(1+μ), and k itself when μ = 0.

    >>> effective_steps(np.array([1, 23, 5]), np.array([0.9, 0.9, 0.0])).round(2).tolist()
    [0.05, 14.37, 5.0]
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.clip(mom, 0.0, 1 - 1e-12)
        inside = k - 2 * mu * (1 - mu**k) / (1 - mu) + mu**2 * (1 - mu ** (2 * k)) / (1 - mu**2)
        carried = mu**2 * (1 - mu**k) ** 2 / (1 - mu**2)
    return inside + carried


def _interval(values: np.ndarray, lr_at: str) -> np.ndarray:
    """The value governing the steps that end at each row (row 0: NaN)."""
    out = np.full(len(values), math.nan)
    if len(values) > 1:
        out[1:] = values[:-1] if lr_at == "start" else values[1:]
    return out


def _phase_starts(eta: np.ndarray) -> np.ndarray:
    """For each interval i, the first interval of its LR phase: the one after the last interval whose
    LR lies outside [η_i / LR_PHASE_BAND, η_i · LR_PHASE_BAND] (or is unknown)."""
    starts = np.zeros(len(eta), dtype=int)
    phase = LrPhaseStart()
    for i in range(1, len(eta)):
        phase.add(i, eta[i])
        starts[i] = phase.start
    return starts


class LrPhaseStart:
    """The LR phases of one parameter, an interval at a time: after `add(i, eta)` for intervals
    1..i in order, `start` is the first interval of interval i's phase (the one after the last whose
    LR lies outside [eta / LR_PHASE_BAND, eta · LR_PHASE_BAND] or is unknown). The whole run's
    analysis and the live view, which adds intervals as records arrive, both go through it.

    O(log n) an interval: the last index with a value above (below) a threshold is found by
    bisection on a monotone stack."""

    def __init__(self) -> None:
        self.high: list[tuple[int, float]] = []  # values strictly decreasing: "previous greater"
        self.low: list[tuple[int, float]] = []  # values strictly increasing: "previous smaller"
        self.last_bad = 0
        self.start = 0

    def add(self, i: int, value: float) -> None:
        if not (np.isfinite(value) and value > 0):
            self.last_bad, self.high, self.low = i, [], []
            self.start = i + 1
            return
        above = _last_beyond(self.high, value * LR_PHASE_BAND, greater=True)
        below = _last_beyond(self.low, value / LR_PHASE_BAND, greater=False)
        self.start = max(self.last_bad, above, below) + 1
        while self.high and self.high[-1][1] <= value:
            self.high.pop()
        self.high.append((i, value))
        while self.low and self.low[-1][1] >= value:
            self.low.pop()
        self.low.append((i, value))


def _last_beyond(stack: list[tuple[int, float]], threshold: float, *, greater: bool) -> int:
    """Largest index in the monotone stack whose value is beyond the threshold (0 if none)."""
    # high: values decrease along the stack, so "value > t" holds on a prefix; low: "value < t" likewise
    keys = [(-v if greater else v) for _, v in stack]
    cut = bisect.bisect_left(keys, -threshold if greater else threshold)
    return stack[cut - 1][0] if cut > 0 else 0


def _grad_ratio(rows: LayerRows, eta: np.ndarray, lam: np.ndarray, mom: np.ndarray, family: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Measured η|g|/|w|, its SGD prediction √(2ηλ(1−μ)), and where |g| came from, per row."""
    norm = _column(rows, "norm", None)
    live = _column(rows, "grad_norm", None)
    b_sq = _column(rows, "buf_norm", None) ** 2
    b_dot = _column(rows, "buf_dot", None)
    predicted = theory.grad_to_weight_ratio(eta, lam, mom) if family == "sgd" else np.full(len(rows), math.nan)
    from_log = np.isfinite(live) & (live > 0)
    from_buffer = ~from_log & (family == "sgd") & np.isfinite(b_sq) & (b_sq > 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = lam / (1 - mom)  # b − a·w ≈ Σ μ^j g_{t−j}
        noise_sq = b_sq - 2 * a * b_dot + a * a * norm**2
        # NaN where the buffer is not read; max(·, 0) as `max` takes it (a NaN left as it is)
        g = np.sqrt(np.where((1 - mom**2) * noise_sq < 0, 0.0, (1 - mom**2) * noise_sq))
        measured = np.where(from_log, eta * live / norm, np.where(from_buffer, eta * g / norm, math.nan))
    sources = np.where(from_log, "live log", np.where(from_buffer, "momentum buffer", "")).tolist()
    return measured, predicted, sources


def layer_equilibrium(rows: pd.DataFrame | LayerRows,
                      overrides: HyperparamOverrides = HyperparamOverrides()) -> LayerEquilibrium | NotApplicable:
    """Predicted vs measured equilibrium for one scale-invariant parameter's rows (its rows of the
    trajectory table, or their `LayerRows`)."""
    if isinstance(rows, pd.DataFrame):
        rows = layer_rows(rows)
    param, layer = str(rows["param"][0]), str(rows["layer"][0])
    family = optimizer_family(overrides.optimizer or str(rows["optimizer"][-1]))
    lam_row = _column(rows, "weight_decay", overrides.weight_decay)
    if family == "":
        return NotApplicable(param, layer, "optimizer unknown: give the optimizer (SGD or AdamW) to predict an equilibrium")
    if family == "adam" and np.nanmax(np.nan_to_num(lam_row)) > 0:
        return NotApplicable(param, layer, "Adam with coupled L2 decay: decay passes through the normalizer, no closed-form equilibrium here (AdamW has one)")
    mom_row = _column(rows, "momentum" if family == "sgd" else "beta1",
                      overrides.momentum if family == "sgd" else overrides.beta1)
    mom_row = np.nan_to_num(mom_row, nan=0.0)
    steps = _steps(rows, overrides)
    if len(rows) < 2 or np.isnan(steps).all():
        return NotApplicable(param, layer, "needs at least two snapshots with known steps (give steps per epoch)")
    eta = _interval(_column(rows, "lr", overrides.lr), overrides.lr_at)
    lam = _interval(lam_row, overrides.lr_at)
    mom = _interval(mom_row, overrides.lr_at)
    predict = _Theory(family)
    k = np.concatenate([[math.nan], np.diff(steps)])
    lam_eff = predict.lambda_eff(lam, mom)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted_angle = np.arccos(np.clip((1 - eta * lam_eff) ** effective_steps(k, mom), -1, 1))
        ratio = _column(rows, "angle_rad", None) / predicted_angle
    per_step = predict.angle_per_step(eta, lam, mom)
    ratio = np.where(predicted_angle > 0, ratio, math.nan)
    tau = predict.relaxation(eta, lam, mom)
    starts = _phase_starts(eta)
    since = np.array([steps[i] - steps[max(starts[i] - 1, 0)] for i in range(len(rows))])
    relax_in_phase = since / tau
    grad_meas, grad_pred, grad_src = _grad_ratio(rows, eta, lam, mom, family)
    numel = _column(rows, "numel", None)
    pred_norm = theory.adamw_equilibrium_norm(eta, lam, numel) if family == "adamw" else np.full(len(rows), math.nan)
    # whole columns once: a cell lookup per point cost most of a live refresh
    snapshots, epochs = rows["snapshot"].tolist(), rows["epoch"].tolist()
    angles, norms = _column(rows, "angle_rad", None).tolist(), _column(rows, "norm", None).tolist()
    points = tuple(
        EquilibriumPoint(
            snapshot=int(snapshots[i]), step=float(steps[i]),
            epoch=None if pd.isna(epochs[i]) else float(epochs[i]),
            steps=float(k[i]), lr=float(eta[i]), weight_decay=float(lam[i]),
            angle_rad=float(angles[i]), predicted_angle_rad=float(predicted_angle[i]),
            ratio=float(ratio[i]), angle_per_step_rad=float(ratio[i] * per_step[i]),
            predicted_angle_per_step_rad=float(per_step[i]), lr_grad_over_norm=float(grad_meas[i]),
            predicted_lr_grad_over_norm=float(grad_pred[i]), grad_source=grad_src[i],
            norm=float(norms[i]), predicted_norm=float(pred_norm[i]),
            relaxation_steps=float(tau[i]), relaxations_in_phase=float(relax_in_phase[i]),
        )
        for i in range(1, len(rows))
        if np.isfinite(k[i]) and k[i] > 0
    )
    if not points:
        return NotApplicable(param, layer, "no interval with a positive step count between snapshots")
    settled = [p for p in points if p.relaxations_in_phase >= SETTLED_RELAXATIONS]
    last = points[-1]
    status, reason = _status(last)
    return LayerEquilibrium(
        param=param, layer=layer, optimizer=family, status=status, reason=reason, ratio=last.ratio,
        settled_ratio=_median(p.ratio for p in settled),
        grad_ratio=_ratio(last.lr_grad_over_norm, last.predicted_lr_grad_over_norm),
        settled_grad_ratio=_median(_ratio(p.lr_grad_over_norm, p.predicted_lr_grad_over_norm) for p in settled),
        predicted_angle_per_step_rad=last.predicted_angle_per_step_rad, angle_per_step_rad=last.angle_per_step_rad,
        relaxation_steps=last.relaxation_steps, steps_since_lr_change=last.relaxations_in_phase * last.relaxation_steps,
        relaxations_since_lr_change=last.relaxations_in_phase, points=points,
        settled_ratio_interval=median_interval([p.ratio for p in settled]),
        settled_grad_ratio_interval=median_interval(
            [_ratio(p.lr_grad_over_norm, p.predicted_lr_grad_over_norm) for p in settled]),
    )


def median_interval(values, confidence: float = 0.9) -> tuple[float, float]:
    """Distribution-free interval for the median of independent samples: the order statistics
    x_(j) ≤ x_(k) with P(j ≤ #{x < median} < k) ≥ `confidence` under Binomial(n, 1/2); (NaN, NaN) when
    n is too small for that (n < 5 at 90 %).

    Args:
        values: the samples; NaN and infinite ones are left out.
        confidence: the interval's coverage.

    Returns:
        (low, high), or (NaN, NaN).

    >>> median_interval(range(1, 11))
    (2.0, 9.0)
    """
    finite = sorted(v for v in values if math.isfinite(v))
    n = len(finite)
    if n == 0:
        return (math.nan, math.nan)
    tail = (1.0 - confidence) / 2
    cumulative, j = 0.0, 0
    while j < n and cumulative + math.comb(n, j) / 2**n <= tail:
        cumulative += math.comb(n, j) / 2**n
        j += 1
    if j == 0:
        return (math.nan, math.nan)
    return (float(finite[j - 1]), float(finite[n - j]))


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def _median(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _status(last: EquilibriumPoint) -> tuple[str, str]:
    lo, hi = TOLERANCE
    if not (last.weight_decay > 0):
        return "off", "no weight decay: nothing balances the noise-driven growth, so there is no equilibrium"
    if not math.isfinite(last.ratio):
        return "unknown", "no angle between the last two snapshots"
    if last.angle_rad < 1e-9:
        return "off", "the weight did not rotate: no gradient reaches it (the loss does not depend on it)"
    k_lam = 1 - math.cos(last.predicted_angle_rad)  # ≈ k·ηλ_eff
    n = last.relaxations_in_phase
    if n < SETTLED_RELAXATIONS:
        return "approaching", (f"{n:.1f} τ since the LR changed (τ = {last.relaxation_steps:.0f} steps); "
                               f"settles after ~{SETTLED_RELAXATIONS:g} τ")
    if k_lam > SATURATION:
        return "unknown", "snapshots are too far apart: the angle between them has saturated"
    if lo <= last.ratio <= hi:
        return "at equilibrium", f"angular update {last.ratio:.2f}× the prediction, {n:.1f} τ into the LR phase"
    if last.ratio > hi:
        return "off", (f"angular update {last.ratio:.2f}× the prediction after {n:.1f} τ: "
                       "gradients are not noise-dominated (consistent signal) or training is unstable")
    return "off", (f"angular update only {last.ratio:.2f}× the prediction after {n:.1f} τ: "
                   "gradient noise is fading (loss near zero) or the weight barely trains")


def analyze_equilibrium(
    traj: Trajectory,
    *,
    model_spec: str | None = None,
    overrides: HyperparamOverrides = HyperparamOverrides(),
    probe: bool = True,
) -> tuple[list[InvarianceVerdict], EquilibriumReport]:
    """What `normscope analyze --equilibrium [--model M]` shows: verdicts, then the equilibrium report.

    `model_spec` ('package.module:factory') imports and runs the user's code — their explicit choice.
    """
    verdicts = scale_invariance(traj, model_spec=model_spec, probe=probe)
    return verdicts, equilibrium_for(traj, verdicts, overrides)


def scale_invariance(traj: Trajectory, *, model_spec: str | None = None, probe: bool = True
                     ) -> list[InvarianceVerdict]:
    """Per-parameter invariance verdicts: exact when `model_spec` names the model (imports and runs it),
    from the checkpoints alone otherwise."""
    model = None
    if model_spec:
        model = build_model(model_spec)
    return classify_invariance(traj.table, model=model, probe=probe)


def equilibrium_for(
    traj: Trajectory, verdicts: Sequence[InvarianceVerdict], overrides: HyperparamOverrides = HyperparamOverrides()
) -> EquilibriumReport:
    """`equilibrium_report` on a loaded run, naming where its hyper-parameters were read from."""
    sources = [m.hyperparams_source for m in traj.snapshots if m.hyperparams_source]
    return equilibrium_report(traj.table, verdicts, overrides=overrides, hyperparams_source=sources[-1] if sources else None)


# the table columns `layer_equilibrium` (and what it calls) reads
_LAYER_COLUMNS = frozenset((
    "snapshot", "step", "epoch", "param", "layer", "numel", "norm", "angle_rad", "buf_dot", "buf_norm",
    "grad_norm", "optimizer", "lr", "weight_decay", "momentum", "beta1",
))


def equilibrium_report(
    table: pd.DataFrame,
    verdicts: Sequence[InvarianceVerdict],
    *,
    overrides: HyperparamOverrides = HyperparamOverrides(),
    hyperparams_source: str | None = None,
) -> EquilibriumReport:
    """The equilibrium section: every invariant parameter's analysis; everything else as not applicable."""
    present = set(pd.unique(table["param"]))
    # the rows of the invariant parameters only, in the columns `layer_equilibrium` reads: a run of
    # thousands of tensors made a frame of every column for every parameter
    invariant = {v.param for v in verdicts if v.verdict == INVARIANT and v.param in present}
    by_param = _rows_by_param(table, invariant)
    layers: list[LayerEquilibrium] = []
    skipped: list[NotApplicable] = []
    for v in verdicts:
        if v.param not in present:
            continue
        if v.verdict != INVARIANT:
            what = "not scale-invariant" if v.invariant is False else "scale invariance unknown"
            skipped.append(NotApplicable(v.param, v.layer, f"{what} ({v.basis}): the theory does not apply"))
            continue
        result = layer_equilibrium(by_param[v.param], overrides)
        (layers if isinstance(result, LayerEquilibrium) else skipped).append(result)
    notes = []
    if overrides.lr_at == "start":
        notes.append("each interval uses the LR recorded in its earlier snapshot (scheduler stepped before saving)")
    return EquilibriumReport(
        hyperparams=hyperparams_used(table, overrides, hyperparams_source),
        layers=tuple(layers), not_applicable=tuple(skipped), notes=tuple(notes),
    )


__all__ = [
    "SETTLED_RELAXATIONS", "TOLERANCE", "EquilibriumPoint", "EquilibriumReport", "HyperParam",
    "HyperparamOverrides", "LayerEquilibrium", "LrPhaseStart", "NotApplicable", "analyze_equilibrium", "effective_steps", "equilibrium_for", "equilibrium_report",
    "hyperparams_used",
    "layer_equilibrium",
]
