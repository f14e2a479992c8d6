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
    rel_change: float  # last / first - 1
    total_angle_rad: float  # sum of angles between consecutive snapshots
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
    order = pd.unique(table["param"])
    rows = table.sort_values("snapshot", kind="stable").reset_index(drop=True)
    codes, names = pd.factorize(rows["param"], sort=False)
    positions = np.arange(len(rows))
    # per code: the first and last row (rows are in snapshot order within each parameter)
    _, first_at = np.unique(codes, return_index=True)
    _, last_from_end = np.unique(codes[::-1], return_index=True)
    last_at = len(rows) - 1 - last_from_end
    # the row of the smallest finite norm; a parameter with none points at its first row
    norms = rows["norm"].to_numpy(dtype=np.float64)
    key = np.where(np.isfinite(norms), norms, np.inf)
    ranked = np.lexsort((positions, key, codes))
    min_at = ranked[np.r_[0, np.flatnonzero(np.diff(codes[ranked])) + 1]]
    angles = rows["angle_rad"].to_numpy(dtype=np.float64)
    angle_sums = np.bincount(codes, weights=np.where(np.isnan(angles), 0.0, angles),
                             minlength=len(names))
    bad = rows["nonfinite"].to_numpy() > 0
    first_bad = dict(zip(*np.unique(codes[bad], return_index=True)))
    bad_positions = positions[bad]
    columns = {c: rows[c].to_numpy() for c in
               ("layer", "kind", "shape", "numel", "dtype", "snapshot", "step", "epoch", "nonfinite")}
    code_of = {name: i for i, name in enumerate(names)}
    out: list[ParamSummary] = []
    for param in order:
        c = code_of[param]
        first, last, low = first_at[c], last_at[c], min_at[c]
        first_norm, last_norm = float(norms[first]), float(norms[last])
        out.append(ParamSummary(
            param=str(param),
            layer=str(columns["layer"][last]),
            kind=str(columns["kind"][last]),
            shape=str(columns["shape"][last]),
            numel=int(columns["numel"][last]),
            dtype=str(columns["dtype"][last]),
            first_norm=first_norm,
            min_norm=float(norms[low]),
            min_snapshot=int(columns["snapshot"][low]),
            min_step=_opt_int(columns["step"][low]),
            min_epoch=_opt_float(columns["epoch"][low]),
            last_norm=last_norm,
            rel_change=(last_norm / first_norm - 1.0) if first_norm > 0 else math.nan,
            total_angle_rad=float(angle_sums[c]),
            nonfinite=int(columns["nonfinite"][last]),
            first_nonfinite_snapshot=(int(columns["snapshot"][bad_positions[first_bad[c]]])
                                      if c in first_bad else None),
        ))
    return out


def total_norm_series(traj: Trajectory, kinds: tuple[str, ...] = DEFAULT_TOTAL_KINDS) -> pd.Series:
    """sqrt(Σ|w|²) over the chosen kinds, per snapshot (index: snapshot)."""
    sel = traj.table[traj.table["kind"].isin(kinds)]
    return np.sqrt(sel.groupby("snapshot")["norm_sq"].sum()).astype(np.float64)


def nonfinite_findings(traj: Trajectory) -> list[NonFiniteFinding]:
    """The first snapshot at which each parameter holds NaN/Inf values."""
    bad = traj.table[traj.table["nonfinite"] > 0].sort_values("snapshot")
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
    )
