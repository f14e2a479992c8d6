"""Per-parameter and run-level summaries of a trajectory: what `normscope analyze` shows first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normscope.trajectory import Trajectory

# Tensors that are weights in the ABEL sense (docs/science.md §1.1: matrices and kernels by default).
DEFAULT_TOTAL_KINDS = ("weight",)


@dataclass(frozen=True)
class ParamSummary:
    param: str
    layer: str
    kind: str
    shape: str
    numel: int
    dtype: str
    first_norm: float
    min_norm: float
    min_snapshot: int
    min_step: int | None
    min_epoch: float | None
    last_norm: float
    rel_change: float  # last / first - 1; NaN where the norm starts near 0 (`relative_change`)
    total_angle_rad: float  # sum of angles between consecutive snapshots; NaN if any is not measured
    nonfinite: int  # in the last snapshot
    first_nonfinite_snapshot: int | None  # earliest snapshot with any non-finite value


@dataclass(frozen=True)
class NonFiniteFinding:
    param: str
    snapshot: int
    step: int | None
    epoch: float | None
    count: int


@dataclass(frozen=True)
class RunSummary:
    snapshots: int
    params: int
    numel: int  # elements per snapshot, last snapshot
    total_kinds: tuple[str, ...]
    total_norm_first: float  # sqrt of the summed squared norms of `total_kinds` tensors
    total_norm_min: float
    total_norm_min_snapshot: int
    total_norm_last: float
    total_norm_max: float
    total_norm_max_snapshot: int
    first_step: int | None
    last_step: int | None
    first_epoch: float | None
    last_epoch: float | None
    nonfinite: tuple[NonFiniteFinding, ...]
    total_norm_nonfinite_snapshots: int = 0  # snapshots whose total is NaN: a tensor in it is not finite


# A norm that starts below this fraction of its largest value starts "near 0": its relative change
# (a bias trained from 0 by one step shows +41603 %) says nothing, so it is not shown.
NEAR_ZERO_START = 0.05


def relative_change(first: float, last: float, peak: float) -> float:
    """last / first − 1, or NaN where the norm starts near 0 (below NEAR_ZERO_START × its peak)."""
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
        return math.nan
    if math.isfinite(peak) and first < NEAR_ZERO_START * peak:
        return math.nan
    return last / first - 1.0


def _opt_int(x: object) -> int | None:
    return None if x is None or pd.isna(x) else int(x)  # type: ignore[arg-type]


def _opt_float(x: object) -> float | None:
    return None if x is None or pd.isna(x) else float(x)  # type: ignore[arg-type]


def summarize_params(traj: Trajectory, kinds: tuple[str, ...] | None = None) -> list[ParamSummary]:
    """One summary per parameter, in first-seen order. `kinds` restricts (None: all kinds).

    Column-wise over the whole table (one sort, a few grouped reductions): a loop of pandas
    operations per parameter is far too slow on checkpoints of 8k tensors."""
    table = traj.table
    if kinds is not None:
        table = table[table["kind"].isin(kinds)]
    if table.empty:
        return []
    # codes in first-seen order (so code i is the i-th parameter of the result); the rows taken in
    # snapshot order (stable) as positions into the table, without sorting the table itself
    codes_seen, order = pd.factorize(table["param"], sort=False)
    sorted_rows = np.argsort(table["snapshot"].to_numpy(), kind="stable")
    codes = codes_seen[sorted_rows]
    count = len(order)
    positions = np.arange(len(sorted_rows))
    # per code: the first and last row (rows are in snapshot order within each parameter)
    _, first_at = np.unique(codes, return_index=True)
    _, last_from_end = np.unique(codes[::-1], return_index=True)
    last_at = len(sorted_rows) - 1 - last_from_end
    # the row of the smallest finite norm; a parameter with none points at its first row
    norms = table["norm"].to_numpy(dtype=np.float64)[sorted_rows]
    key = np.where(np.isfinite(norms), norms, np.inf)
    ranked = np.lexsort((positions, key, codes))
    min_at = ranked[np.r_[0, np.flatnonzero(np.diff(codes[ranked])) + 1]]
    angles = table["angle_rad"].to_numpy(dtype=np.float64)[sorted_rows]
    angle_sums = np.bincount(codes, weights=np.where(np.isfinite(angles), angles, 0.0), minlength=count)
    # A parameter's angle sum is only a total when every interval between its snapshots was measured:
    # tracker logs at every > 1 and TensorBoard sources measure none (no dot product with the previous
    # snapshot). An interval that starts at the zero vector was measured; its angle just has no value.
    unmeasured = ~np.isfinite(angles) & ~np.isfinite(table["dot_prev"].to_numpy(dtype=np.float64)[sorted_rows])
    rows_per_code = np.bincount(codes, minlength=count)
    angle_sums[(np.bincount(codes, weights=unmeasured, minlength=count) > 1) | (rows_per_code < 2)] = np.nan
    peaks = pd.Series(np.where(np.isfinite(norms), norms, np.nan)).groupby(codes).max().to_numpy()
    nonfinite = table["nonfinite"].to_numpy()[sorted_rows]
    bad = nonfinite > 0
    first_bad = dict(zip(*np.unique(codes[bad], return_index=True)))
    bad_positions = positions[bad]
    # the columns at the rows the summaries read (a few per parameter), not at every row
    def at(column: str, rows: np.ndarray) -> list:
        return table[column].take(sorted_rows[rows]).tolist()

    last_norms, first_norms = norms[last_at].tolist(), norms[first_at].tolist()
    bad_snapshot = {c: at("snapshot", bad_positions[[i]])[0] for c, i in first_bad.items()}
    out: list[ParamSummary] = []
    for c, (param, layer, kind, shape, numel, dtype, first_norm, min_norm, min_snapshot, min_step, min_epoch,
            last_norm, peak, angle_sum, bad_count) in enumerate(zip(
                order.tolist(), at("layer", last_at), at("kind", last_at), at("shape", last_at),
                at("numel", last_at), at("dtype", last_at), first_norms, norms[min_at].tolist(),
                at("snapshot", min_at), at("step", min_at), at("epoch", min_at), last_norms, peaks.tolist(),
                angle_sums.tolist(), at("nonfinite", last_at))):
        out.append(ParamSummary(
            param=str(param),
            layer=str(layer),
            kind=str(kind),
            shape=str(shape),
            numel=int(numel),
            dtype=str(dtype),
            first_norm=first_norm,
            min_norm=min_norm,
            min_snapshot=int(min_snapshot),
            min_step=_opt_int(min_step),
            min_epoch=_opt_float(min_epoch),
            last_norm=last_norm,
            rel_change=relative_change(first_norm, last_norm, float(peak)),
            total_angle_rad=angle_sum,
            nonfinite=int(bad_count),
            first_nonfinite_snapshot=int(bad_snapshot[c]) if c in bad_snapshot else None,
        ))
    return out


def total_norm_series(traj: Trajectory, kinds: tuple[str, ...] = DEFAULT_TOTAL_KINDS) -> pd.Series:
    """sqrt(Σ|w|²) over the chosen kinds, per snapshot (index: snapshot). NaN at a snapshot where a
    tensor of those kinds is not finite: leaving it out would make the total seem to drop."""
    sel = traj.table[traj.table["kind"].isin(kinds)]
    by_snapshot = sel.groupby("snapshot")["norm_sq"]
    totals = np.sqrt(by_snapshot.sum()).astype(np.float64)
    broken = (~np.isfinite(sel["norm_sq"].to_numpy(dtype=np.float64))) | (sel["nonfinite"].to_numpy() > 0)
    if broken.any():
        totals[pd.Series(broken, index=sel.index).groupby(sel["snapshot"]).any()] = np.nan
    return totals


def nonfinite_findings(traj: Trajectory) -> list[NonFiniteFinding]:
    """The first snapshot at which each parameter holds NaN/Inf values."""
    bad = traj.table[traj.table["nonfinite"] > 0].sort_values("snapshot", kind="stable")  # table order in a tie
    first = bad.drop_duplicates("param", keep="first")
    return [
        NonFiniteFinding(param=str(r.param), snapshot=int(r.snapshot), step=_opt_int(r.step),
                         epoch=_opt_float(r.epoch), count=int(r.nonfinite))
        for r in first.itertuples(index=False)
    ]


def summarize_run(traj: Trajectory, kinds: tuple[str, ...] = DEFAULT_TOTAL_KINDS) -> RunSummary:
    table = traj.table
    totals = total_norm_series(traj, kinds)
    if totals.empty:  # no tensor of those kinds: fall back to everything, so totals mean something
        kinds = tuple(sorted(table["kind"].unique()))
        totals = total_norm_series(traj, kinds)
    last_snap = table[table["snapshot"] == table["snapshot"].max()]
    steps = [m.step for m in traj.snapshots]
    epochs = [m.epoch for m in traj.snapshots]
    finite_totals = totals[np.isfinite(totals)]
    i_min = int(finite_totals.idxmin()) if len(finite_totals) else 0
    i_max = int(finite_totals.idxmax()) if len(finite_totals) else 0
    return RunSummary(
        snapshots=len(traj.snapshots),
        params=int(table["param"].nunique()),
        numel=int(last_snap["numel"].sum()),
        total_kinds=kinds,
        total_norm_first=float(totals.iloc[0]) if len(totals) else math.nan,
        total_norm_min=float(totals.loc[i_min]) if len(totals) else math.nan,
        total_norm_min_snapshot=i_min,
        total_norm_last=float(totals.iloc[-1]) if len(totals) else math.nan,
        total_norm_max=float(totals.loc[i_max]) if len(totals) else math.nan,
        total_norm_max_snapshot=i_max,
        first_step=steps[0] if steps else None,
        last_step=steps[-1] if steps else None,
        first_epoch=epochs[0] if epochs else None,
        last_epoch=epochs[-1] if epochs else None,
        nonfinite=tuple(nonfinite_findings(traj)),
        total_norm_nonfinite_snapshots=int((~np.isfinite(totals)).sum()),
    )
