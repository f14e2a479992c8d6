"""Which parameters are scale-invariant, and how we know: one verdict per parameter with its evidence.

Evidence, strongest first, and how the verdict is decided:
  1. the model (`--model`): the torch.fx homogeneity analysis and the numerical probe. Where they
     agree (or one abstains) the verdict is exact; where they disagree it is unknown.
  2. live logs: cos(w, g) is exactly 0 for an invariant weight — a measured verdict.
  3. checkpoints only: the structural guess from names/order/shapes, which a dynamic veto (the
     momentum buffer or exp_avg pointing along the weight) turns into unknown. Basis "guess".
Buffers (BatchNorm running stats) get no verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from normscope.analysis.homogeneity import INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN, analyze_homogeneity
from normscope.analysis.invariance_dynamics import (
    Evidence,
    dynamic_evidence_by_param,
    optimizer_family,
)
from normscope.analysis.invariance_structure import StructuralGuess, structural_guesses
from normscope.analysis.probe import probe_invariance

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

BASIS_EXACT = "exact"
BASIS_MEASURED = "measured"
BASIS_GUESS = "guess"


@dataclass(frozen=True)
class InvarianceVerdict:
    param: str
    layer: str
    kind: str
    verdict: str  # INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN
    basis: str  # BASIS_EXACT, BASIS_MEASURED, BASIS_GUESS
    reason: str  # the deciding evidence, in words
    evidence: tuple[Evidence, ...]

    @property
    def invariant(self) -> bool | None:
        return {INVARIANT: True, NOT_INVARIANT: False}.get(self.verdict)


def model_evidence(
    model: nn.Module, params: Sequence[str], *, probe_inputs: Sequence[Any] | None = None, probe: bool = True
) -> dict[str, list[Evidence]]:
    """fx homogeneity + numerical probe for the given parameter names (names the model lacks are noted).

    The probe costs three forward passes per parameter; `probe=False` leaves the fx verdict alone.
    """
    fx = analyze_homogeneity(model, params)
    probed = probe_invariance(model, list(fx), inputs=probe_inputs) if probe else {}
    out: dict[str, list[Evidence]] = {}
    for name in params:
        if name not in fx:
            out[name] = [Evidence("fx", VERDICT_UNKNOWN, None, "the --model has no parameter of this name")]
            continue
        h = fx[name]
        out[name] = [Evidence("fx", h.verdict, None if h.output_degree is None else float(h.output_degree), h.reason)]
        if name in probed:
            p = probed[name]
            out[name].append(Evidence("probe", p.verdict, max(p.change_up, p.change_down), p.reason))
    return out


def _decide_from_model(found: dict[str, Evidence]) -> tuple[str, str] | None:
    fx, probe = found.get("fx"), found.get("probe")
    if fx is None:
        return None
    if probe is None:
        return (fx.verdict, f"fx: {fx.detail}") if fx.verdict != VERDICT_UNKNOWN else None
    decided = {e.verdict for e in (fx, probe) if e.verdict != VERDICT_UNKNOWN}
    if len(decided) == 1:
        verdict = decided.pop()
        who = " and ".join(e.source for e in (fx, probe) if e.verdict == verdict)
        return verdict, f"{who}: {fx.detail if fx.verdict == verdict else probe.detail}"
    if len(decided) == 2:
        return VERDICT_UNKNOWN, f"fx says {fx.verdict} ({fx.detail}) but the probe says {probe.verdict} ({probe.detail})"
    return None


def _combine(found: dict[str, Evidence], guess: StructuralGuess | None) -> tuple[str, str, str]:
    model = _decide_from_model(found)
    if model is not None:
        return model[0], BASIS_EXACT, model[1]
    grad = found.get("grad")
    if grad is not None and grad.verdict != VERDICT_UNKNOWN:
        return grad.verdict, BASIS_MEASURED, grad.detail
    if guess is None:
        return VERDICT_UNKNOWN, BASIS_GUESS, "no evidence"
    vetoes = [e for key, e in found.items() if key in ("sgd_buffer", "adamw_exp_avg") and e.verdict == NOT_INVARIANT]
    if guess.verdict == INVARIANT and vetoes:
        return VERDICT_UNKNOWN, BASIS_GUESS, f"structure says invariant ({guess.detail}) but {vetoes[0].detail}"
    if guess.verdict == INVARIANT and guess.norm_kind == "feature":  # a residual before LN would be invisible
        support = found.get("radial_update")
        if support is None or support.verdict != INVARIANT:
            return VERDICT_UNKNOWN, BASIS_GUESS, f"{guess.detail}; no dynamic support — give --model to decide"
    return guess.verdict, BASIS_GUESS, guess.detail


def classify_invariance(
    table: pd.DataFrame,
    *,
    model: nn.Module | None = None,
    probe_inputs: Sequence[Any] | None = None,
    probe: bool = True,
) -> list[InvarianceVerdict]:
    """A verdict for every non-buffer parameter of the trajectory table, in table order."""
    if table.empty:
        return []
    params = table[table["kind"] != "buffer"].drop_duplicates("param")
    guesses = structural_guesses(table)
    from_model = (model_evidence(model, list(params["param"]), probe_inputs=probe_inputs, probe=probe)
                  if model is not None else {})
    # Every kind of dynamic evidence needs logged gradients or an SGD/AdamW optimizer's records;
    # without either (plain weight checkpoints) it would be empty for every parameter, and
    # looking costs milliseconds per parameter (a minute on runs of 8k tensors).
    dynamic = dynamic_evidence_by_param(table) if _dynamics_possible(table) else {}
    verdicts = []
    for name, layer, kind in zip(params["param"], params["layer"], params["kind"]):
        guess = guesses.get(name)
        structure = Evidence("structure", guess.verdict, None, guess.detail) if guess else None
        evidence = list(from_model.get(name, [])) + dynamic.get(name, [])
        if structure is not None:
            evidence.append(structure)
        found = {e.source: e for e in evidence}
        verdict, basis, reason = _combine(found, guess)
        verdicts.append(InvarianceVerdict(name, layer, kind, verdict, basis, reason, tuple(evidence)))
    return verdicts


def _dynamics_possible(table: pd.DataFrame) -> bool:
    if (table["grad_norm"] > 0).any():
        return True
    return any(optimizer_family(str(o)) in ("sgd", "adamw") for o in table["optimizer"].unique())


def invariant_params(verdicts: Sequence[InvarianceVerdict]) -> list[str]:
    return [v.param for v in verdicts if v.verdict == INVARIANT]


__all__ = [
    "BASIS_EXACT",
    "BASIS_GUESS",
    "BASIS_MEASURED",
    "INVARIANT",
    "NOT_INVARIANT",
    "VERDICT_UNKNOWN",
    "Evidence",
    "InvarianceVerdict",
    "classify_invariance",
    "invariant_params",
    "model_evidence",
]
