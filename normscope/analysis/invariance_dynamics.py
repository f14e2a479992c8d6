"""Scale invariance as seen in how the weights move (docs/science.md §4–§5), from the trajectory table.

For an invariant weight ⟨g, w⟩ = 0 at every step. What each source shows of that:

- live logs, cos(w, g) = grad_dot / (|w||g|): exactly 0 up to fp32 rounding and BatchNorm's eps
  (a real BN-CNN run: ≤ 2e-5 for every conv weight before BN; 1e-2 … 0.5 median for every other
  parameter). Decisive: median |cos| ≤ 1e-4 → invariant, ≥ 3e-3 → not invariant.
- SGD checkpoints, cos(w, ĝ) with ĝ = (1−μ)·b − λ·w ≈ an EMA of the loss gradient: not 0 even for an
  invariant weight, because the EMA holds gradients taken at earlier weights; at equilibrium
  ⟨ĝ, w⟩ ≈ −2μ/(1+μ)·λ|w|² for an invariant weight, and ≈ −λ|w|² for any weight whose norm is held
  by the loss — so the cosine separates only "gradient-noise-dominated" from "held by the loss".
  Used as a veto: a median |cos| over the later half of the run above 0.3 contradicts invariance.
- AdamW checkpoints, cos(w, exp_avg): the same argument, same veto.
- consecutive checkpoints, the radial part of the update ⟨w_t − w_s, w_s⟩ against pure weight-decay
  shrinkage −(1 − (1−ηλ_eff)^k)|w_s|² (λ_eff = λ/(1−μ) for SGD, λ for AdamW): ≈ 1 for an invariant
  weight once its norm has settled; early on (norm growth from momentum-carried gradients) it is not,
  so it only ever supports, never vetoes.

Thresholds were calibrated on real digits runs (tests/_training.py and sample_runs/; see
docs/equilibrium.md): invariant conv weights had later-half median |cos| 0.034–0.064 (SGD) and
0.020–0.048 (AdamW) in long runs, but up to 0.19 in a 4-epoch run (early training); classifier
heads 0.22–0.56 (SGD) and 0.79–0.82 (AdamW). 0.3 never vetoed an invariant weight we measured and
catches the heads of three of the four runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from normscope.analysis.homogeneity import INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN
from normscope.analysis.theory import optimizer_family

GRAD_COS_INVARIANT = 1e-4
GRAD_COS_NOT_INVARIANT = 3e-3
BUFFER_COS_VETO = 0.3
RADIAL_BAND = (0.7, 1.3)


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence about one parameter: where it comes from, what it says, the number."""

    source: str  # "structure", "fx", "probe", "grad", "sgd_buffer", "adamw_exp_avg", "radial_update"
    verdict: str  # what this evidence alone says: INVARIANT / NOT_INVARIANT / VERDICT_UNKNOWN
    value: float | None
    detail: str


def _later_half(values: pd.Series) -> pd.Series:
    values = values[np.isfinite(values.to_numpy(dtype=float))]
    return values.iloc[len(values) // 2:]


def grad_cosines(rows: pd.DataFrame) -> pd.Series:
    """cos(w, g) per logged row (live logs)."""
    return rows["grad_dot"] / (rows["norm"] * rows["grad_norm"])


def sgd_buffer_cosines(rows: pd.DataFrame) -> pd.Series:
    """cos(w, (1−μ)b − λw) from buf_dot = ⟨w,b⟩, buf_norm = |b|, norm = |w| and the group's μ, λ."""
    mu, lam = rows["momentum"].fillna(0.0), rows["weight_decay"].fillna(0.0)
    w_sq = rows["norm"] ** 2
    dot = (1 - mu) * rows["buf_dot"] - lam * w_sq
    g_sq = (1 - mu) ** 2 * rows["buf_norm"] ** 2 - 2 * (1 - mu) * lam * rows["buf_dot"] + lam**2 * w_sq
    return dot / (rows["norm"] * np.sqrt(g_sq.clip(lower=0)))


def adam_buffer_cosines(rows: pd.DataFrame) -> pd.Series:
    return rows["buf_dot"] / (rows["norm"] * rows["buf_norm"])


def radial_ratios(rows: pd.DataFrame) -> pd.Series:
    """Radial part of each inter-snapshot update over pure weight-decay shrinkage (≈1 if invariant)."""
    rows = rows.sort_values("snapshot")
    family = optimizer_family(str(rows["optimizer"].iloc[0]))
    lam = rows["weight_decay"].shift()
    if family == "sgd":
        lam = lam / (1 - rows["momentum"].shift().fillna(0.0))
    steps = rows["step"].astype("float64").diff()
    shrink = 1 - (1 - rows["lr"].shift() * lam) ** steps
    measured = 1 - rows["dot_prev"] / (rows["norm"].shift() ** 2)
    return (measured / shrink).where(shrink > 0)


def dynamic_evidence(rows: pd.DataFrame) -> list[Evidence]:
    """Evidence from one parameter's rows of the trajectory table (any order)."""
    rows = rows.sort_values("snapshot")
    out: list[Evidence] = []
    family = optimizer_family(str(rows["optimizer"].iloc[0])) if len(rows) else ""
    logged = rows[(rows["grad_norm"] > 0) & rows["grad_dot"].notna() & (rows["norm"] > 0)]
    if len(logged):
        med = float(np.median(np.abs(grad_cosines(logged))))
        if med <= GRAD_COS_INVARIANT:
            verdict, why = INVARIANT, "gradient orthogonal to the weight to rounding"
        elif med >= GRAD_COS_NOT_INVARIANT:
            verdict, why = NOT_INVARIANT, "the gradient has a radial component"
        else:
            verdict, why = VERDICT_UNKNOWN, "small but not negligible radial gradient"
        out.append(Evidence("grad", verdict, med, f"median |cos(w, g)| = {med:.1e} over {len(logged)} logged steps: {why}"))
    with_buf = rows[(rows["buf_norm"] > 0) & rows["buf_dot"].notna()]
    if len(with_buf) and family in ("sgd", "adamw"):
        cos = sgd_buffer_cosines(with_buf) if family == "sgd" else adam_buffer_cosines(with_buf)
        late = _later_half(cos)
        if len(late):
            med = float(np.median(late))
            source = "sgd_buffer" if family == "sgd" else "adamw_exp_avg"
            what = "cos(w, (1−μ)b − λw)" if family == "sgd" else "cos(w, exp_avg)"
            if abs(med) > BUFFER_COS_VETO:
                out.append(Evidence(source, NOT_INVARIANT, med,
                                    f"median {what} = {med:+.2f} (later half): the weight is held by the loss's radial pull"))
            else:
                out.append(Evidence(source, VERDICT_UNKNOWN, med,
                                    f"median {what} = {med:+.2f} (later half): consistent with invariance, not proof"))
    if rows["dot_prev"].notna().any() and family in ("sgd", "adamw") and rows["step"].notna().all():
        late = _later_half(radial_ratios(rows))
        if len(late):
            med = float(np.median(late))
            lo, hi = RADIAL_BAND
            verdict = INVARIANT if lo <= med <= hi else VERDICT_UNKNOWN
            tail = "matches pure weight-decay shrinkage" if verdict == INVARIANT else "does not match pure shrinkage (not settled, or not invariant)"
            out.append(Evidence("radial_update", verdict, med,
                                f"radial update / weight-decay shrinkage = {med:.2f} (later-half median): {tail}"))
    return out



__all__ = [
    "Evidence",
    "adam_buffer_cosines",
    "dynamic_evidence",
    "grad_cosines",
    "optimizer_family",
    "radial_ratios",
    "sgd_buffer_cosines",
]
