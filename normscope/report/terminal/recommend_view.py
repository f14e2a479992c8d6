"""`normscope recommend` and the bounce section of `normscope analyze`, as rich renderables for the terminal.

Nothing is computed here beyond formatting; every number comes from the `Recommendation`. The JSON and
CSV of the same are in `normscope.report.machine.recommend_json` and `.schedule_csv`.
"""

from __future__ import annotations

import math

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from normscope.analysis.bounce import BounceAnalysis, BounceDetection, LayerBounces
from normscope.analysis.recommend import (
    VERDICT_DECAY_NOW,
    VERDICT_NO_BOUNCE,
    Recommendation,
)
from normscope.lr_schedules import TexpSchedule
from normscope.report.escape import printable
from normscope.report.recommend_facts import decay_intervals, retrospective_lines
from normscope.report.terminal.tables import NAME_WIDTH, Col, FitTable

_VERDICT_STYLE = {VERDICT_DECAY_NOW: "bold yellow", VERDICT_NO_BOUNCE: "bold cyan"}


def _g(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _epochs(values) -> str:
    return ", ".join(str(v) for v in values) or "none"


def run_header(rec: Recommendation) -> Text:
    s = rec.series
    lines = [
        (f"norm: Σ‖w‖² over {s.n_tensors} tensor(s) of kind {'+'.join(s.include_kinds)}, "
         f"{s.n_epochs} epochs ({s.epochs[0]}–{s.epochs[-1]}, from {printable(s.epoch_source)})"),
        f"optimizer: {printable(s.optimizer or 'unknown')}  wd={_g(s.weight_decay)}  momentum={_g(s.momentum)}  "
        f"base lr={rec.base_lr:g} ({printable(rec.lr_source)})  decay factor={rec.decay_factor:g}"
        + (f"  min lr={rec.min_lr:g}" if rec.min_lr > 0 else ""),
    ]
    if rec.relaxation is not None:
        r = rec.relaxation
        when = f"{r.steps:.0f} steps" + (f" ≈ {r.epochs:.1f} epochs" if r.epochs is not None else "")
        lines.append(f"relaxation time at lr {r.lr:g}: {r.formula} = {when}")
    return Text("\n".join(lines))


def _bulleted(head: Text, items: list[tuple[str, str]], tail: Text | None = None) -> Group:
    """A heading line and one item per line after its mark; an item too long for the page wraps under
    its own text, not under the mark."""
    marks = Table.grid(padding=(0, 1, 0, 0))
    marks.add_column(no_wrap=True)
    marks.add_column()
    for mark, line in items:
        marks.add_row(f"  {mark}", line)
    return Group(head, marks, *(() if tail is None else (tail,)))


def verdict_text(rec: Recommendation) -> Group:
    v = rec.verdict
    text = Text(f"At epoch {v.at_epoch}: ")
    text.append(v.status.upper(), style=_VERDICT_STYLE.get(v.status, "bold green"))
    return _bulleted(text, [("•", printable(line)) for line in v.evidence])


def decay_table(rec: Recommendation) -> FitTable:
    columns = (Col("method", justify="left", wrap=True, min_width=16),
               Col("decay epochs", justify="left", wrap=True, min_width=20), Col("final lr"))
    return FitTable(columns, [
        ("recommended (robust bounces + budget, spaced)", _decays_with_intervals(rec), _g(rec.schedule[-1])),
        ("exact ABEL rule (+ budget)", _epochs(rec.exact_decay_epochs), _g(rec.exact_schedule[-1])),
    ], title="Where to decay the LR")


def _decays_with_intervals(rec: Recommendation) -> str:
    shown = []
    for d in decay_intervals(rec):
        if d["from"] == "budget":
            shown.append(f"{d['epoch']} (budget)")
        else:
            shown.append(f"{d['epoch']} ({d['interval_confidence']:.0%} interval {d['low']}–{d['high']}, "
                         f"confidence {d['confidence']:.2f})")
    return ", ".join(shown) or "none"


def _threshold_origin(found: BounceDetection) -> str:
    """Where h comes from: the noise model's false-alarm rise (said as a multiple of σ too), or the
    min-depth floor."""
    if not found.noise_limited:
        return "the min-depth floor"
    multiple = f" = {found.threshold_sigmas:.1f}σ" if math.isfinite(found.threshold_sigmas) else ""
    return f"the rise the fitted noise alone reaches with probability {found.params.false_alarm:g}{multiple}"


def bounce_table(found: BounceDetection, title: str = "Bounces (robust detector)") -> RenderableType:
    p = found.params
    caption = (f"noise σ = {found.noise:.2e} in log N per epoch; threshold h = {found.threshold:.2e} "
               f"({_threshold_origin(found)}); "
               f"smoothing {p.smooth_window} epochs; the norm is {found.trend_at_end} at the end")
    if not found.bounces:
        return Text(f"{title}: none. {printable(caption)}")
    # left out first on a narrow page: where the rise ends and the decline began, then the sizes
    columns = (Col("decline from", drop=2), Col("minimum"), Col("rise confirmed", drop=5), Col("rise ends", drop=1),
               Col("decay at"), Col("depth", drop=4), Col("rise", drop=3), Col("signif. (σ)", drop=6),
               Col("confidence"))
    rows = [(str(b.start_epoch), str(b.minimum_epoch), str(b.confirmed_epoch),
             "rising" if b.rise_end_epoch is None else str(b.rise_end_epoch),
             "–" if b.decay_epoch is None else str(b.decay_epoch),
             f"{b.depth:.1%}", f"{b.rise:.1%}", f"{b.significance:.1f}", f"{b.confidence:.3f}")
            for b in found.bounces]
    return FitTable(columns, rows, title=title, caption=printable(caption))


def layer_table(layers: tuple[LayerBounces, ...]) -> FitTable:
    rows = []
    for lb in layers:
        if lb.robust is None:
            shown = lb.note
        else:
            shown = "; ".join(f"{b.minimum_epoch} → {b.decay_epoch if b.decay_epoch is not None else 'rising'}"
                              for b in lb.robust.bounces) or "none"
        rows.append((printable(lb.layer), printable(shown), _epochs(lb.exact.decay_epochs)))
    columns = (Col("layer", justify="left", wrap=True, min_width=NAME_WIDTH),
               Col("robust bounces (min → decay)", justify="left", wrap=True, min_width=16),
               Col("exact-rule decay epochs", justify="left", wrap=True, min_width=16))
    return FitTable(columns, rows, title="Per layer")


def past_decay_table(rec: Recommendation) -> RenderableType:
    if not rec.past_decays:
        return Text("LR decays recorded in the run: none")
    columns = (Col("epoch"), Col("lr"), Col("epochs since previous", drop=1), Col("relaxation (epochs)"),
               Col("verdict"))
    rows = [(str(d.epoch), f"{d.lr_before:g} → {d.lr_after:g}", str(d.epochs_since_previous),
             _g(d.relaxation_epochs, 3),
             {True: Text("too early", style="bold red"), False: Text("ok"), None: Text("unknown")}[d.premature])
            for d in rec.past_decays]
    return FitTable(columns, rows, title="LR decays recorded in the run")


def texp_table(texp: TexpSchedule) -> FitTable:
    columns = (Col("epoch"), Col("step lr (with wd)"), Col("TEXP lr at epoch start"), Col("× per epoch"))
    rows = [(str(row.epoch), _g(row.step_lr), _g(row.texp_lr), f"{row.growth:.4g}") for row in texp.epochs]
    return FitTable(columns, rows, title=f"TEXP equivalent (no weight decay; momentum {texp.momentum:g}, "
                                         f"{texp.steps_per_epoch} steps/epoch)",
                    caption=f"start the momentum buffer at {texp.initial_buffer_factor:.3g}·w₀ for an exact match")


def premise_text(premise) -> Group:
    text = Text("ABEL's premise: ", style="bold")
    text.append("holds" if premise.holds else "does not hold", style="bold green" if premise.holds else "bold yellow")
    checks = [({True: "✓", False: "✗", None: "?"}[check.holds], f"{check.name}: {printable(check.detail)}")
              for check in premise.checks]
    return _bulleted(text, checks, Text(printable(premise.advice), style="bold"))


def recommend_view(rec: Recommendation, texp: TexpSchedule | None = None, premise=None, *,
                   notes: bool = True) -> Group:
    """The answer first (the premise, then the verdict: retrospective for a finished run, decay now /
    not yet for one in progress), then the details; with `notes`, the recommendation's notes last
    (`normscope recommend` prints them on stderr instead)."""
    first: list[RenderableType] = []
    if premise is not None:
        first += [premise_text(premise), Text("")]
    retro = retrospective_lines(rec)
    first.append(Text("\n".join(retro), style="bold") if retro else verdict_text(rec))
    multistep = printable(rec.multistep)
    if premise is not None and not premise.holds:
        multistep = f"for reference only: {multistep}"
    parts: list[RenderableType] = [*first, Text(""), run_header(rec), Text(""), decay_table(rec),
                                   Text(multistep, style="bold")]
    parts += [Text(f"skipped decay at epoch {s.epoch} — {printable(s.reason)}", style="dim") for s in rec.skipped]
    parts += [Text(""), bounce_table(rec.robust), Text(""), past_decay_table(rec), Text(""), layer_table(rec.layers)]
    if texp is not None:
        parts += [Text(""), texp_table(texp)]
    parts += [Text(printable(line), style="bold") for line in rec.advice]
    parts += [Text(f"note: {printable(n)}", style="dim") for n in (rec.notes if notes else ())]
    return Group(*parts)


def bounce_analysis_view(found: BounceAnalysis, max_rows: int | None = None) -> Group:
    """For `normscope analyze`: the exact rule's decays, the robust bounces, and the per-layer table
    (its first `max_rows` layers; None or 0: all)."""
    s = found.series
    head = Text(f"Weight-norm bounces — Σ‖w‖² over {s.n_tensors} tensor(s) of kind {'+'.join(s.include_kinds)}, "
                f"epochs {s.epochs[0]}–{s.epochs[-1]} ({printable(s.epoch_source)}); the exact ABEL rule would decay at "
                f"epoch(s) {_epochs(found.exact.decay_epochs)}", style="bold")
    layers = list(found.layers)
    if not max_rows or len(layers) <= max_rows:
        return Group(head, bounce_table(found.robust), Text(""), layer_table(tuple(layers)))
    more = Text(f"… {len(layers) - max_rows:,} more layers not shown (--rows 0 shows all; --format json "
                "has every layer)", style="dim")
    return Group(head, bounce_table(found.robust), Text(""), layer_table(tuple(layers[:max_rows])), more)
