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

import functools
import math
from collections.abc import Callable
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
    """Evidence from one parameter's rows of the trajectory table (any order); for a whole table,
    `dynamic_evidence_by_param` gives the same a column at a time."""
    rows = rows.sort_values("snapshot")
    out: list[Evidence] = []
    family = optimizer_family(str(rows["optimizer"].iloc[0])) if len(rows) else ""
    logged = rows[(rows["grad_norm"] > 0) & rows["grad_dot"].notna() & (rows["norm"] > 0)]
    if len(logged):
        out.append(_grad_evidence(float(np.median(np.abs(grad_cosines(logged)))), len(logged)))
    with_buf = rows[(rows["buf_norm"] > 0) & rows["buf_dot"].notna()]
    if len(with_buf) and family in ("sgd", "adamw"):
        cos = sgd_buffer_cosines(with_buf) if family == "sgd" else adam_buffer_cosines(with_buf)
        late = _later_half(cos)
        if len(late):
            out.append(_buffer_evidence(float(np.median(late)), family))
    if rows["dot_prev"].notna().any() and family in ("sgd", "adamw") and rows["step"].notna().all():
        late = _later_half(radial_ratios(rows))
        if len(late):
            out.append(_radial_evidence(float(np.median(late))))
    return out


def dynamic_evidence_by_param(table: pd.DataFrame) -> dict[str, list[Evidence]]:
    """`dynamic_evidence` of every parameter of the trajectory table, the same Evidence: each
    per-row quantity computed over the whole table at once (numpy, in the arithmetic order of the
    per-parameter form), then a median per parameter over its slice of rows. Per-parameter pandas
    work cost milliseconds a parameter, a minute on runs of 8k tensors."""
    if table.empty:
        return {}
    codes, params = pd.factorize(table["param"], sort=False)
    # rows grouped by parameter (in order of appearance), each group in snapshot order
    order = np.lexsort((table["snapshot"].to_numpy(), codes))
    names = codes[order]
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = np.r_[starts[1:], len(names)]

    def col(name: str) -> np.ndarray:
        return table[name].to_numpy(dtype=float, na_value=np.nan)[order]

    norm, grad_norm, grad_dot = col("norm"), col("grad_norm"), col("grad_dot")
    buf_norm, buf_dot, dot_prev = col("buf_norm"), col("buf_dot"), col("dot_prev")
    mu_raw, lam_raw, lr, step = col("momentum"), col("weight_decay"), col("lr"), col("step")
    optimizer = table["optimizer"].to_numpy(dtype=object)[order]
    with np.errstate(all="ignore"):
        grad_cos = np.abs(grad_dot / (norm * grad_norm))
        logged = (grad_norm > 0) & ~np.isnan(grad_dot) & (norm > 0)
        with_buf = (buf_norm > 0) & ~np.isnan(buf_dot)
        # sgd_buffer_cosines
        mu, lam = np.where(np.isnan(mu_raw), 0.0, mu_raw), np.where(np.isnan(lam_raw), 0.0, lam_raw)
        w_sq = norm**2
        dot = (1 - mu) * buf_dot - lam * w_sq
        g_sq = (1 - mu) ** 2 * buf_norm**2 - 2 * (1 - mu) * lam * buf_dot + lam**2 * w_sq
        sgd_cos = dot / (norm * np.sqrt(np.where(np.isnan(g_sq) | (g_sq >= 0), g_sq, 0.0)))
        adam_cos = buf_dot / (norm * buf_norm)
        # radial_ratios: each row against the row before it of the same parameter
        first = np.zeros(len(norm), dtype=bool)
        first[starts] = True

        def previous(values: np.ndarray) -> np.ndarray:
            out = np.r_[np.nan, values[:-1]]
            out[first] = np.nan
            return out

        lam_prev = previous(lam_raw)
        lam_sgd = lam_prev / (1 - np.where(np.isnan(previous(mu_raw)), 0.0, previous(mu_raw)))
        steps = step - previous(step)
        norm_prev = previous(norm)
        measured = 1 - dot_prev / (norm_prev**2)
        lr_prev = previous(lr)
    # each parameter's samples first, their medians then in batches of one length (one call of
    # numpy's median over a stack of rows: the same middle values as a call per parameter)
    samples: list[np.ndarray] = []
    pending: dict[str, list[Callable[[float], Evidence]]] = {}  # each sample's Evidence, given its median
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        name = params[names[lo]]
        family = optimizer_family(str(optimizer[lo]))
        found: list[Callable[[float], Evidence]] = []
        here = slice(lo, hi)
        chosen = logged[here]
        if chosen.any():
            samples.append(grad_cos[here][chosen])
            found.append(functools.partial(_grad_evidence, count=int(chosen.sum())))
        chosen = with_buf[here]
        if chosen.any() and family in ("sgd", "adamw"):
            late = _later_half_array((sgd_cos if family == "sgd" else adam_cos)[here][chosen])
            if len(late):
                samples.append(late)
                found.append(functools.partial(_buffer_evidence, family=family))
        if (~np.isnan(dot_prev[here])).any() and family in ("sgd", "adamw") and not np.isnan(step[here]).any():
            with np.errstate(all="ignore"):
                lam_here = lam_sgd[here] if family == "sgd" else lam_prev[here]
                shrink = 1 - (1 - lr_prev[here] * lam_here) ** steps[here]
                ratio = np.where(shrink > 0, measured[here] / shrink, np.nan)
            late = _later_half_array(ratio)
            if len(late):
                samples.append(late)
                found.append(_radial_evidence)
        pending[name] = found
    medians = iter(_medians(samples))  # in the order the samples were taken
    return {name: [evidence(next(medians)) for evidence in found] for name, found in pending.items()}


def _medians(samples: list[np.ndarray]) -> list[float]:
    """`float(np.median(s))` of each of `samples` (non-empty, NaN-free), samples of one length
    taken together."""
    out = [math.nan] * len(samples)
    by_length: dict[int, list[int]] = {}
    for i, values in enumerate(samples):
        by_length.setdefault(len(values), []).append(i)
    for indices in by_length.values():
        for i, med in zip(indices, np.median(np.stack([samples[i] for i in indices]), axis=1).tolist()):
            out[i] = med
    return out


def _later_half_array(values: np.ndarray) -> np.ndarray:
    """`_later_half` of an array in snapshot order."""
    values = values[np.isfinite(values)]
    return values[len(values) // 2 :]


def _grad_evidence(med: float, count: int) -> Evidence:
    if med <= GRAD_COS_INVARIANT:
        verdict, why = INVARIANT, "gradient orthogonal to the weight to rounding"
    elif med >= GRAD_COS_NOT_INVARIANT:
        verdict, why = NOT_INVARIANT, "the gradient has a radial component"
    else:
        verdict, why = VERDICT_UNKNOWN, "small but not negligible radial gradient"
    return Evidence("grad", verdict, med, f"median |cos(w, g)| = {med:.1e} over {count} logged steps: {why}")


def _buffer_evidence(med: float, family: str) -> Evidence:
    source = "sgd_buffer" if family == "sgd" else "adamw_exp_avg"
    what = "cos(w, (1−μ)b − λw)" if family == "sgd" else "cos(w, exp_avg)"
    if abs(med) > BUFFER_COS_VETO:
        return Evidence(source, NOT_INVARIANT, med,
                        f"median {what} = {med:+.2f} (later half): the weight is held by the loss's radial pull")
    return Evidence(source, VERDICT_UNKNOWN, med,
                    f"median {what} = {med:+.2f} (later half): consistent with invariance, not proof")


def _radial_evidence(med: float) -> Evidence:
    lo, hi = RADIAL_BAND
    verdict = INVARIANT if lo <= med <= hi else VERDICT_UNKNOWN
    tail = "matches pure weight-decay shrinkage" if verdict == INVARIANT else "does not match pure shrinkage (not settled, or not invariant)"
    return Evidence("radial_update", verdict, med,
                    f"radial update / weight-decay shrinkage = {med:.2f} (later-half median): {tail}")


__all__ = [
    "Evidence",
    "adam_buffer_cosines",
    "dynamic_evidence",
    "dynamic_evidence_by_param",
    "grad_cosines",
    "optimizer_family",
    "radial_ratios",
    "sgd_buffer_cosines",
]
