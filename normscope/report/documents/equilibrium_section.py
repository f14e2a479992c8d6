"""The report's scale-invariance and equilibrium sections, from the invariance/equilibrium analyses.

Verdicts come with their evidence (every source that spoke, with its number); the equilibrium plots
are the equilibrium owner's (`normscope.report.plots.equilibrium_plots`), read back as PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from normscope.report.documents.document import Block, Bullets, Figure, Paragraph, Section, Table
from normscope.report.plots.equilibrium_plots import plot_equilibrium, plot_ratio_heatmap
from normscope.report.quantities import EQUILIBRIUM_COLUMNS, EQUILIBRIUM_LEGEND


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def invariance_section(verdicts: Sequence) -> Section:
    """One row per parameter: verdict, basis, reason, and each piece of evidence with its value."""
    rows = tuple(
        (v.param, v.kind, v.verdict, v.basis, v.reason,
         "; ".join(f"{e.source}: {e.verdict}" + (f" ({_fmt(e.value)})" if e.value is not None else "")
                   for e in v.evidence))
        for v in verdicts
    )
    blocks: list[Block] = [
        Paragraph("Scale invariance (L(c·w) = L(w)) decided per parameter from the checkpoints: structure "
                  "(a normalization layer follows), and the dynamics (cos of the weight with its gradient "
                  "estimate, radial updates). 'exact' and 'measured' verdicts rest on numbers, 'guess' on "
                  "names and shapes only."),
        Table(("parameter", "kind", "verdict", "basis", "reason", "evidence"), rows) if rows
        else Paragraph("No parameters to classify."),
    ]
    return Section("Scale-invariant layers", tuple(blocks))


def _plot_png(plot, report) -> bytes | None:
    """PNG bytes of one equilibrium plot, None when there is nothing to plot (no invariant layer)."""
    buffer = io.BytesIO()
    try:
        plot(report, buffer)
    except ValueError:
        return None
    return buffer.getvalue()


def equilibrium_section(report) -> Section:
    """Measured vs predicted equilibrium per invariant layer, the hyper-parameters used, and the plots."""
    low, high = report.tolerance
    blocks: list[Block] = [Bullets(tuple(f"{h.name} = {h.value} ({h.source})" for h in report.hyperparams))]
    if report.layers:
        rows = tuple((layer.param, layer.optimizer, layer.status, *(c.value(layer) for c in EQUILIBRIUM_COLUMNS))
                     for layer in report.layers)
        blocks.append(Table(
            ("parameter", "optimizer", "status", *(c.header for c in EQUILIBRIUM_COLUMNS)),
            rows, numeric=(False, False, False, *(True for _ in EQUILIBRIUM_COLUMNS)),
            caption=f"{EQUILIBRIUM_LEGEND}; 'at equilibrium': ratio within {low:g}–{high:g} once 3 relaxation "
                    "times have passed in the LR phase"))
        blocks.append(Bullets(tuple(f"{layer.param}: {layer.reason}" for layer in report.layers)))
    else:
        blocks.append(Paragraph("No scale-invariant layer: the equilibrium theory does not apply to this run."))
    for plot, name, title in ((plot_equilibrium, "equilibrium", "Equilibrium: measured vs predicted"),
                              (plot_ratio_heatmap, "equilibrium_ratio", "Equilibrium ratio, layers × time")):
        png = _plot_png(plot, report)
        if png is not None:
            blocks.append(Figure(name, title, png))
    if report.notes:
        blocks.append(Bullets(tuple(f"note: {n}" for n in report.notes)))
    return Section("Equilibrium of scale-invariant layers", tuple(blocks))
