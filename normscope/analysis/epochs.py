"""Per-epoch squared weight norm from the trajectory table: the quantity ABEL watches.

Which tensors enter is a choice (the paper does not say whether biases and normalization scales count):
by default weight matrices and kernels (`kind == "weight"`, i.e. ndim > 1), reported with the result.
Snapshots are put in epoch buckets — from the epoch each checkpoint records, or from `step /
steps_per_epoch` when that is given — and the last snapshot of each bucket stands for the end of that
epoch. Epoch labels count *completed* epochs (0 = before training), the convention of MultiStepLR
milestones and of Hugging Face's `trainer_state.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normscope.errors import BadInputError

KINDS = ("weight", "bias", "norm", "other", "buffer")
DEFAULT_KINDS = ("weight",)
MIN_EPOCHS = 3
# A last bucket whose newest snapshot is this far short of the epoch's end is a partial epoch: dropped.
_PARTIAL_EPOCH_SLACK = 0.5
_EPOCH_ROUNDING = 6  # decimals; 2.9999999 and 3.0 are both the end of epoch 3


@dataclass(frozen=True)
class LayerSeries:
    layer: str
    norm_sq: tuple[float, ...]  # aligned with EpochSeries.epochs


@dataclass(frozen=True)
class EpochSeries:
    """End-of-epoch squared norms of the selected tensors, plus the run facts the advice needs."""

    epochs: tuple[int, ...]  # completed epochs at each point
    norm_sq: tuple[float, ...]  # Σ |w|² over the selected tensors
    steps: tuple[int | None, ...]
    lr: tuple[float, ...]  # LR recorded in the snapshot (NaN when unknown)
    snapshots: tuple[int, ...]  # the snapshot standing for each epoch
    include_kinds: tuple[str, ...]
    n_tensors: int
    epoch_source: str  # "recorded epoch" or "steps_per_epoch=N"
    steps_per_epoch: float | None  # given, or inferred from (step, epoch) pairs
    optimizer: str
    weight_decay: float
    momentum: float
    beta1: float
    layers: tuple[LayerSeries, ...]
    notes: tuple[str, ...] = ()

    @property
    def n_epochs(self) -> int:
        return len(self.epochs)


def parse_kinds(spec: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """`"weight,norm"`, `("weight", "bias")` or `"all"` (every kind but buffers) → a tuple of kinds."""
    if spec is None:
        return DEFAULT_KINDS
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if items == ["all"]:
        return ("weight", "bias", "norm", "other")
    unknown = [k for k in items if k not in KINDS]
    if unknown or not items:
        raise BadInputError(f"unknown tensor kind(s) {unknown or items}; choose from {', '.join(KINDS)} or 'all'")
    return tuple(dict.fromkeys(items))


def epoch_series(
    table: pd.DataFrame,
    *,
    include_kinds: tuple[str, ...] | str | None = DEFAULT_KINDS,
    steps_per_epoch: float | None = None,
) -> EpochSeries:
    """Aggregate the trajectory table to one total squared norm per completed epoch (and per layer)."""
    kinds = parse_kinds(include_kinds)
    if table is None or table.empty:
        raise BadInputError("the run has no snapshots")
    rows = table[table["kind"].isin(kinds)]
    if rows.empty:
        found = ", ".join(sorted(set(table["kind"])))
        raise BadInputError(f"no tensors of kind {', '.join(kinds)} in the run (it has: {found})")
    per_snap = _snapshot_epochs(table, steps_per_epoch)
    notes: list[str] = []

    bad = rows[~np.isfinite(rows["norm_sq"].to_numpy(dtype=float))]
    if not bad.empty:
        first = bad.iloc[0]
        raise BadInputError(
            f"non-finite weight norm for {first['param']} in snapshot {int(first['snapshot'])} ({first['path']})"
        )

    totals = rows.groupby("snapshot")["norm_sq"].sum()
    counts = rows.groupby("snapshot")["param"].nunique()
    if counts.nunique() > 1:
        notes.append(
            f"the number of selected tensors changes between snapshots ({counts.min()}–{counts.max()}); "
            "the total norm jumps where it does"
        )
    per_snap = per_snap[per_snap.index.isin(totals.index)]
    if steps_per_epoch is None and ((per_snap["epoch"] == 0) & (per_snap["step"].fillna(0) > 0)).any():
        notes.append("a snapshot after training steps records epoch 0: the epochs look 0-based (the epoch "
                     "just finished), so each label is one less than the epochs completed")
    bucket = np.ceil(per_snap["epoch"].round(_EPOCH_ROUNDING)).astype(int)
    last_of_bucket = per_snap.assign(bucket=bucket).reset_index().groupby("bucket").last()
    last_bucket = int(last_of_bucket.index.max())
    short = last_bucket - float(last_of_bucket.loc[last_bucket, "epoch"])
    if short > _PARTIAL_EPOCH_SLACK and len(last_of_bucket) > 1:
        notes.append(
            f"epoch {last_bucket} is incomplete (newest snapshot at epoch "
            f"{last_of_bucket.loc[last_bucket, 'epoch']:.2f}); left out"
        )
        last_of_bucket = last_of_bucket.drop(index=last_bucket)
    if len(last_of_bucket) < MIN_EPOCHS:
        raise BadInputError(
            f"the run covers {len(last_of_bucket)} epoch(s); the bounce rule needs at least {MIN_EPOCHS}"
        )
    chosen = last_of_bucket["snapshot"].astype(int).tolist()
    epochs = tuple(int(b) for b in last_of_bucket.index)
    lr, meta = _hyperparams(rows, chosen)
    layer_sums = rows[rows["snapshot"].isin(chosen)].pivot_table(
        index="snapshot", columns="layer", values="norm_sq", aggfunc="sum", sort=False
    )
    # one reindex of the whole table, not one per layer (thousands of layers on a ResNet-sized
    # model); a layer absent from every chosen snapshot gets NaN, which the detectors report
    names = list(dict.fromkeys(rows["layer"]))
    sums = layer_sums.reindex(index=chosen, columns=names).to_numpy(dtype=float)
    layers = tuple(
        LayerSeries(layer=str(name), norm_sq=tuple(column))
        for name, column in zip(names, sums.T.tolist())
    )
    steps = tuple(None if pd.isna(s) else int(s) for s in last_of_bucket["step"])
    source = f"steps_per_epoch={steps_per_epoch:g}" if steps_per_epoch else "recorded epoch"
    return EpochSeries(
        epochs=epochs,
        norm_sq=tuple(float(totals[s]) for s in chosen),
        steps=steps,
        lr=lr,
        snapshots=tuple(chosen),
        include_kinds=kinds,
        n_tensors=int(rows["param"].nunique()),
        epoch_source=source,
        steps_per_epoch=steps_per_epoch or _infer_steps_per_epoch(per_snap),
        notes=tuple(notes),
        layers=layers,
        **meta,
    )


def _snapshot_epochs(table: pd.DataFrame, steps_per_epoch: float | None) -> pd.DataFrame:
    """One row per snapshot with its step and its epoch (recorded, or step / steps_per_epoch)."""
    snaps = table.groupby("snapshot")[["step", "epoch"]].first().sort_index()
    if steps_per_epoch is not None:
        if not (math.isfinite(steps_per_epoch) and steps_per_epoch > 0):
            raise BadInputError(f"--steps-per-epoch must be a positive number, got {steps_per_epoch}")
        if snaps["step"].isna().any():
            raise BadInputError("--steps-per-epoch needs the step of every snapshot, and some have none "
                                "(--one-file-per-epoch numbers checkpoint files as epochs instead)")
        return snaps.assign(epoch=snaps["step"].astype(float) / steps_per_epoch)
    if snaps["epoch"].isna().all():
        raise BadInputError("the checkpoints record no epoch; pass --steps-per-epoch N (or --one-file-per-epoch "
                            "when each checkpoint file is one epoch)")
    if snaps["epoch"].isna().any():
        missing = snaps[snaps["epoch"].isna()]
        steps = [int(s) for s in missing["step"].dropna().head(3)]
        at = f" (at step {', '.join(map(str, steps))}{', …' if len(missing) > len(steps) else ''})" if steps else ""
        raise BadInputError(
            f"{len(missing)} of {len(snaps)} snapshot(s) record no epoch{at}; pass --steps-per-epoch N"
        )
    return snaps


def _infer_steps_per_epoch(snaps: pd.DataFrame) -> float | None:
    known = snaps.dropna(subset=["step", "epoch"])
    known = known[known["epoch"] > 0]
    if known.empty:
        return None
    ratios = known["step"].astype(float) / known["epoch"]
    return float(np.median(ratios))


def _hyperparams(rows: pd.DataFrame, chosen: list[int]) -> tuple[tuple[float, ...], dict]:
    """LR per chosen snapshot and the latest wd/momentum, read from the largest selected tensor's group."""
    with_lr = rows[np.isfinite(rows["lr"].to_numpy(dtype=float))]
    source = with_lr if not with_lr.empty else rows  # groups may be known for only some tensors
    biggest = source.sort_values("numel", ascending=False).drop_duplicates("snapshot").set_index("snapshot")
    lr = tuple(float(biggest.loc[s, "lr"]) if s in biggest.index else math.nan for s in chosen)
    last = biggest.loc[chosen[-1]] if chosen[-1] in biggest.index else biggest.iloc[-1]
    meta = {
        "optimizer": str(last["optimizer"] or ""),
        "weight_decay": float(last["weight_decay"]),
        "momentum": float(last["momentum"]),
        "beta1": float(last["beta1"]),
    }
    return lr, meta
