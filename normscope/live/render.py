"""Render a `LiveFrame` for the terminal (rich). Computes nothing."""

from __future__ import annotations

import math

from rich.console import Group
from rich.text import Text

from normscope.live.frame import LiveFrame
from normscope.report.escape import printable
from normscope.report.quantities import angle, ratio
from normscope.report.terminal.tables import NAME_WIDTH, Col, FitTable


def _num(x: float, fmt: str = ".4g") -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, fmt)


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:+.1%}"


_deg = angle


def _hyper(frame: LiveFrame) -> str:
    parts = [printable(frame.optimizer or "optimizer ?")]
    for label, value in (("lr", frame.lr), ("wd", frame.weight_decay), ("μ", frame.momentum),
                         ("β1", frame.beta1)):
        if math.isfinite(value):
            parts.append(f"{label}={value:.3g}")
    return " ".join(parts)


def render_frame(frame: LiveFrame, *, updated: str = "", warnings: bool = True) -> Group:
    """One frame of `normscope watch`; with `warnings`, the run's warnings at its foot (`watch --once`
    prints them on stderr instead)."""
    where = "step " + (str(frame.step) if frame.step is not None else "?")
    if frame.epoch is not None:
        where += f" · epoch {frame.epoch:g}"
    title = Text.assemble(("normscope watch ", "bold"), printable(frame.root), f"  ({frame.layout})")
    status = Text(f"{where} · {frame.records} record(s) · {_hyper(frame)}"
                  + (f" · {printable(updated)}" if updated else ""))
    if not frame.layers:
        return Group(title, status, Text("waiting for the first record …", style="dim"))
    angle_head = "∠/step" if frame.layers[0].angle_is_per_step else "∠/snapshot"
    columns = (Col("param", justify="left", wrap=True, min_width=NAME_WIDTH), Col("kind", justify="left", drop=1),
               Col("|w|"), Col("vs start", drop=4), Col("|g|", drop=2), Col("cos(w,g)", drop=3), Col(angle_head),
               Col("∠/step predicted"), Col("ratio last"), Col("equilibrium", justify="left", wrap=True, min_width=11))
    rows = [(printable(layer.param), layer.kind + (" s.i." if layer.scale_invariant else ""), _num(layer.norm),
             _pct(layer.norm_change), _num(layer.grad_norm), _num(layer.cos_wg, "+.3f"), _deg(layer.angle_rad),
             _deg(layer.equilibrium_angle_rad), ratio(layer.angle_ratio), layer.equilibrium_status or "–")
            for layer in frame.layers]
    table = FitTable(columns, rows)
    legend = Text("s.i.: scale-invariant (cos(w,g) ≈ 0); ∠/step predicted, ratio last (measured / predicted "
                  "angle over the latest interval) and equilibrium (the status) are those of `analyze "
                  "--equilibrium`, for the layers it calls scale-invariant", style="dim")
    total = Text(f"total weight norm {_num(frame.total_weight_norm)} "
                 f"(start {_num(frame.total_weight_norm_first)})")
    parts = [title, status, table, legend, total]
    parts += [Text(printable(line), style="bold") for line in frame.advice]
    parts += [Text(f"warning: {printable(w)}", style="yellow") for w in (frame.warnings if warnings else ())]
    return Group(*parts)
