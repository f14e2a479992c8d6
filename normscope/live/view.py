"""The live view kept up to date: `live_frame` (a run's frame, analysing it first where the caller
has no analysis) and `LiveView`, which keeps the frame of a growing tracker log up to date by taking
in only the records that arrived. The frame itself and the science of its angles are in
`normscope.live.frame`; rendering lives in `normscope.live.render`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from normscope.analysis import theory
from normscope.analysis.epochs import epoch_series, parse_kinds
from normscope.analysis.equilibrium import (
    HyperparamOverrides,
    LayerEquilibrium,
    LrPhaseStart,
    NotApplicable,
    layer_equilibrium,
    scale_invariance,
)
from normscope.analysis.invariance import INVARIANT
from normscope.analysis.recommend import Recommendation, recommend
from normscope.analysis.runner import RECOMMENDATION, RunAnalysis, RunOptions, analyze_run
from normscope.errors import NormscopeError
from normscope.live.frame import (
    UPDATE_ANGLE,
    LiveFrame,
    advice_lines,
    frame_of,
    window_frame,
)
from normscope.live.log import LAYOUT
from normscope.trajectory import Trajectory


def live_frame(trajectory: Trajectory, *, recent: int = 5, advice: Sequence[str] = (),
               analysis: RunAnalysis | None = None) -> LiveFrame:
    """Summarise the latest `recent` records of each parameter (`frame_of`), analysing the run
    first when `analysis` is not given.

    Args:
        trajectory: the run so far.
        recent: how many latest records cos(w, g) and the angle are averaged over.
        advice: the bounce / ABEL lines to show (`live_advice`).
        analysis: `analyze_run`'s result on `trajectory`, when the caller has it.

    Returns:
        The frame `normscope watch` renders.
    """
    if analysis is None and not trajectory.table.empty:
        analysis = analyze_run(trajectory, RunOptions(probe=False), recommendation=False)
    return frame_of(trajectory, analysis, recent=recent, advice=advice)


def live_advice(trajectory: Trajectory, *, total_epochs: int | None = None,
                analysis: RunAnalysis | None = None) -> tuple[str, ...]:
    """Bounce status and ABEL's advice on the run so far, as display lines.

    Args:
        trajectory: the run so far.
        total_epochs: the run's epoch budget (when `analysis` is not given).
        analysis: `analyze_run`'s result on `trajectory`; computed here when not given.

    Returns:
        The lines, none for an empty run.
    """
    if trajectory.table.empty:
        return ()
    if analysis is None:
        analysis = analyze_run(trajectory, RunOptions(total_epochs=total_epochs, probe=False), equilibrium=False)
    return advice_lines(analysis.recommendation, analysis.skipped.get(RECOMMENDATION))


def equilibrium_status(trajectory: Trajectory) -> dict[str, str]:
    """`analysis.equilibrium`'s status ("approaching", "at equilibrium", "off", ...) per invariant
    parameter, from the measured invariance verdicts (no model, no probe)."""
    if trajectory.table.empty:
        return {}
    analysis = analyze_run(trajectory, RunOptions(probe=False), recommendation=False)
    return {} if analysis.equilibrium is None else {layer.param: layer.status for layer in analysis.equilibrium.layers}


# --------------------------------------------------------------------------- the growing log

class LiveView:
    """The frame of a run that grows, kept up to date a refresh at a time.

    `frame(trajectory)` shows what `analyze_run(trajectory, options).live` shows. For a tracker log
    followed by `LiveSource` (each trajectory the previous one plus new records) only the new
    records are taken in: each parameter's first and largest norm, the LR phase of each interval
    (what the equilibrium status counts relaxation times in), the snapshot that ends each epoch and
    the steps-per-epoch ratios are carried from refresh to refresh; the equilibrium analysis runs
    on the latest interval of each scale-invariant parameter and the one that starts its LR phase,
    the recommendation on the snapshots that end an epoch. Anything else (a checkpoint directory,
    a log that restarted, a model or hyper-parameter override) is analysed whole.
    """

    def __init__(self, options: RunOptions | None = None) -> None:
        """Args:
            options: what `normscope watch` was given (`RunOptions(probe=False)` by default).
        """
        self.options = options if options is not None else RunOptions(probe=False)
        self._log: _GrowingLog | None = None

    @property
    def follows_incrementally(self) -> bool:
        """Whether the last frame came from the records taken in (not the whole analysis)."""
        return self._log is not None

    def frame(self, trajectory: Trajectory) -> LiveFrame:
        """The frame of `trajectory`, the run as it stands now.

        Args:
            trajectory: the source's latest trajectory.

        Returns:
            The same frame as `analyze_run(trajectory, options).live`.
        """
        log = self._log
        if _followable(trajectory, self.options):
            if log is None or not log.continued_by(trajectory):
                log = _GrowingLog(trajectory, self.options)
            if log.add(trajectory):
                self._log = log
                return log.frame(trajectory)
        self._log = None
        return analyze_run(trajectory, self.options).live


def _followable(trajectory: Trajectory, options: RunOptions) -> bool:
    """Whether the incremental analysis applies: a tracker log's table, no model, no overrides."""
    if trajectory.layout != LAYOUT or trajectory.granularity != "tensor" or trajectory.table.empty:
        return False
    if options.model_spec is not None or any(
            value is not None for value in (options.optimizer, options.lr, options.weight_decay,
                                            options.momentum, options.beta1)):
        return False
    spe = options.steps_per_epoch
    if spe is not None and not (math.isfinite(spe) and spe > 0):
        return False  # the whole analysis says why not
    try:
        parse_kinds(options.kinds or None)
    except NormscopeError:
        return False
    return True


class _GrowingLog:
    """What the frame needs of a tracker log's records so far, grown by the records that arrive.

    A tracker log's table holds every parameter of its header in each record, in header order, so
    parameter j of snapshot t is row t·P + j; `add` checks that of the new rows."""

    def __init__(self, trajectory: Trajectory, options: RunOptions) -> None:
        table = trajectory.table
        first = table[table["snapshot"] == table["snapshot"].iloc[0]]
        self.options = options
        self.overrides: HyperparamOverrides = options.hyperparam_overrides(trajectory)
        self.params = first["param"].tolist()
        self.width = len(self.params)
        self.snapshots = 0  # snapshots taken in
        self.last_meta: Any = None
        self.firsts: dict[str, float] = {}  # first finite norm per parameter
        self.peaks = np.full(self.width, math.nan)  # largest norm per parameter (NaN: none finite)
        self.per_step = False  # some row has the exact per-step angle
        self.total_first = math.nan
        self.phases = [LrPhaseStart() for _ in self.params]
        self.last_lr = np.full(self.width, math.nan)  # each parameter's LR in the latest snapshot
        selected = first["kind"].isin(parse_kinds(options.kinds or None)).to_numpy()
        self.selected = selected
        # the epoch series' largest selected tensor(s): the epoch series reads its LR, weight decay
        # and momentum; where several tie, they must agree for the epoch-ending snapshots to say what
        # the whole table says
        numel = first["numel"].to_numpy()
        top = numel[selected].max() if selected.any() else None
        self.largest = np.flatnonzero(selected & (numel == top)) if top is not None else np.array([], int)
        self.epoch_end: dict[int, int] = {}  # epoch bucket -> its last snapshot
        self.epoch_zero: int | None = None  # a snapshot after training steps that records epoch 0
        self.ratios: list[np.ndarray] = []  # step / epoch of each snapshot with both known, epoch > 0
        self.whole_series = False  # something only the whole table tells: its epoch series is taken whole
        self._shown: tuple[Any, LiveFrame] | None = None  # the last frame, and what it was made of

    def continued_by(self, trajectory: Trajectory) -> bool:
        """Whether `trajectory` is the one taken in so far plus records after it."""
        n = self.snapshots
        return (n > 0 and len(trajectory.snapshots) >= n and trajectory.snapshots[n - 1] is self.last_meta
                and len(trajectory.table) >= n * self.width)

    def add(self, trajectory: Trajectory) -> bool:
        """Take in the records after those taken so far; False when their rows are not laid out as
        a tracker log's are (then nothing is taken in)."""
        table, width, done = trajectory.table, self.width, self.snapshots
        new = table.iloc[done * width:]
        count, extra = divmod(len(new), width)
        if count == 0 or extra or len(trajectory.snapshots) != done + count:
            return count == 0 and not extra and len(trajectory.snapshots) == done
        params = new["param"].to_numpy(dtype=object)
        snapshots = new["snapshot"].to_numpy()
        if not ((params == np.array(self.params * count, dtype=object)).all()
                and (snapshots == np.repeat(np.arange(done, done + count), width)).all()):
            return False
        norm = new["norm"].to_numpy(dtype=float).reshape(count, width)
        for j, name in enumerate(self.params):
            if name not in self.firsts:
                finite = np.isfinite(norm[:, j])
                if finite.any():
                    self.firsts[name] = float(norm[int(np.argmax(finite)), j])
        with np.errstate(invalid="ignore"):
            self.peaks = np.fmax(self.peaks, np.fmax.reduce(norm, axis=0))
        self.per_step = self.per_step or bool(new[UPDATE_ANGLE].notna().any())
        if done == 0:
            opening = new.iloc[:width]
            weights = opening[opening["kind"] == "weight"].groupby("snapshot")["norm_sq"].sum()
            self.total_first = math.sqrt(weights.iloc[0]) if len(weights) else math.nan
        self._add_phases(new["lr"].to_numpy(dtype=float).reshape(count, width), done)
        self._add_epochs(new, count)
        self.snapshots = done + count
        self.last_meta = trajectory.snapshots[-1]
        return True

    def _add_phases(self, lr: np.ndarray, done: int) -> None:
        """Each new interval's LR (the one `lr_at` says governs it) into its parameter's phases."""
        end = self.overrides.lr_at != "start"
        for t in range(lr.shape[0]):
            i = done + t  # the interval ending at this snapshot
            if i >= 1:
                eta = lr[t] if end else self.last_lr
                for j, phase in enumerate(self.phases):
                    phase.add(i, eta[j])
            self.last_lr = lr[t]

    def _add_epochs(self, new: pd.DataFrame, count: int) -> None:
        """The epoch buckets' last snapshots, as `epoch_series` buckets them, and what else of the
        new snapshots its result depends on."""
        width, selected = self.width, self.selected
        norm_sq = new["norm_sq"].to_numpy(dtype=float).reshape(count, width)[:, selected]
        lr = new["lr"].to_numpy(dtype=float).reshape(count, width)[:, selected]
        if not (np.isfinite(norm_sq).all() and np.isfinite(lr).all()):
            self.whole_series = True  # the error names the first such row; the LR comes from other rows
        if len(self.largest) > 1:
            for column in ("lr", "weight_decay", "momentum", "beta1", "optimizer"):
                values = new[column].to_numpy().reshape(count, width)[:, self.largest]
                same = values == values[:, :1]
                if values.dtype.kind == "f":
                    same |= np.isnan(values) & np.isnan(values[:, :1])
                if not same.all():
                    self.whole_series = True
        snaps = new.groupby("snapshot")[["step", "epoch"]].first().sort_index()
        spe = self.options.steps_per_epoch
        if spe is not None:
            if snaps["step"].isna().any():
                self.whole_series = True
                return
            epochs = snaps["step"].astype(float) / spe
        else:
            if snaps["epoch"].isna().any():
                self.whole_series = True
                return
            epochs = snaps["epoch"]
            if self.epoch_zero is None:
                zero = snaps.index[(snaps["epoch"] == 0) & (snaps["step"].fillna(0) > 0)]
                if len(zero):
                    self.epoch_zero = int(zero[0])
            known = snaps.dropna(subset=["step", "epoch"])
            known = known[known["epoch"] > 0]
            if len(known):
                self.ratios.append((known["step"].astype(float) / known["epoch"]).to_numpy(dtype=float))
        buckets = np.ceil(epochs.round(_EPOCH_DECIMALS)).astype(int)
        for snapshot, bucket in zip(buckets.index.tolist(), buckets.tolist()):
            self.epoch_end[bucket] = snapshot

    def frame(self, trajectory: Trajectory) -> LiveFrame:
        """The frame of the records taken in (a refresh with nothing new shows the last one again)."""
        made_of = (self.snapshots, trajectory.root, tuple(trajectory.warnings))
        if self._shown is not None and self._shown[0] == made_of:
            return self._shown[1]
        options, width = self.options, self.width
        table = trajectory.table
        covered: dict[str, LayerEquilibrium] = {}
        for verdict in scale_invariance(trajectory, model_spec=options.model_spec, probe=options.probe):
            if verdict.verdict == INVARIANT:
                result = self._equilibrium(table, self.params.index(verdict.param))
                if isinstance(result, LayerEquilibrium):
                    covered[verdict.param] = result
        rec, why_not = self._recommendation(table)
        last = self.snapshots - 1
        window = table.iloc[max(0, last - options.recent + 1) * width:]
        closing = table.iloc[last * width:]
        weights = closing[closing["kind"] == "weight"].groupby("snapshot")["norm_sq"].sum()
        total_last = math.sqrt(weights.iloc[-1]) if len(weights) else math.nan
        frame = window_frame(trajectory, window, last, per_step=self.per_step, firsts=self.firsts,
                       peaks=dict(zip(self.params, self.peaks.tolist())),
                       totals=(self.total_first if len(weights) else math.nan, total_last),
                       covered=covered, advice=advice_lines(rec, why_not))
        self._shown = (made_of, frame)
        return frame

    def _equilibrium(self, table: pd.DataFrame, j: int) -> LayerEquilibrium | NotApplicable:
        """`layer_equilibrium` of parameter j as the whole run gives its latest interval, its status
        and prediction: computed from the rows that start the latest interval's LR phase, end it,
        and end the interval before (the phase start and the relaxation times in it are those of
        the whole run)."""
        width, last = self.width, self.snapshots - 1
        if theory.optimizer_family(str(table["optimizer"].iat[last * width + j])) == "adam":
            # its coupled-decay check reads every row: the whole history, in snapshot order
            return layer_equilibrium(table.iloc[j::width], self.overrides)
        start = self.phases[j].start if last >= 1 else 0
        keep = sorted({r for r in (start - 1, last - 1, last) if r >= 0})
        return layer_equilibrium(table.iloc[[r * width + j for r in keep]], self.overrides)

    def _recommendation(self, table: pd.DataFrame) -> tuple[Recommendation | None, str | None]:
        """`recommend_table` under the options, from the snapshots that end an epoch (with the
        run's steps per epoch, which every snapshot enters), without the per-layer detectors."""
        options, width = self.options, self.width
        kinds = options.kinds or None
        try:
            if self.whole_series:
                series = epoch_series(table, include_kinds=kinds, steps_per_epoch=options.steps_per_epoch)
            else:
                chosen = set(self.epoch_end.values())
                if self.epoch_zero is not None:
                    chosen.add(self.epoch_zero)
                rows = np.concatenate([np.arange(s * width, (s + 1) * width) for s in sorted(chosen)])
                series = epoch_series(table.iloc[rows], include_kinds=kinds, steps_per_epoch=options.steps_per_epoch)
                if not options.steps_per_epoch:
                    ratios = np.concatenate(self.ratios) if self.ratios else np.array([])
                    series = replace(series, steps_per_epoch=float(np.median(ratios)) if len(ratios) else None)
            # the frame shows the verdict and the advice, which read the total norm's series only:
            # the per-layer detectors (`Recommendation.layers`) are left out
            return recommend(replace(series, layers=()), lr=options.base_lr, decay_factor=options.decay_factor,
                             min_lr=options.min_lr, total_epochs=options.total_epochs), None
        except NormscopeError as exc:
            return None, exc.message


_EPOCH_DECIMALS = 6  # `analysis.epochs`: 2.9999999 and 3.0 both end epoch 3
