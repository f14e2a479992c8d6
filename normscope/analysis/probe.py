"""Numerical probe of scale invariance: scale one parameter by 2 and by 0.5, see if the outputs move.

The probe runs on a float64 copy of the model in train mode (BatchNorm in eval mode uses running
statistics and is not invariant, docs/science.md §5), with every normalization's eps set to 1e-30: eps is
what makes BN(c·x) differ from BN(x) by ~eps/var, a real but tiny effect that would otherwise blur
exact invariance (change ~1e-16) into the 1e-6 range where a weakly-used parameter also lives. Dropout
draws the same mask in every forward (the RNG is re-seeded). The user's model is never modified.

Thresholds, relative output change |y(c) − y(1)| / |y(1)| in float64:
    ≤ 1e-9   invariant      (float64 rounding through a few dozen layers stays below ~1e-12)
    ≥ 1e-6   not invariant
    between  unknown
A parameter whose random perturbation (50% of its norm) moves the output by less than 1e-9 is
reported as unknown: the batch does not exercise it. A zero tensor is unknown too: scaling it changes
nothing whether or not the network is invariant to it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normscope.analysis.homogeneity import INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

INVARIANT_BELOW = 1e-9
NOT_INVARIANT_ABOVE = 1e-6
NEUTRAL_EPS = 1e-30
_SPATIAL_TRIES = (8, 16, 28, 32, 64, 224)


@dataclass(frozen=True)
class ProbeResult:
    """The numerical probe's answer for one parameter."""

    param: str
    verdict: str  # INVARIANT, NOT_INVARIANT, VERDICT_UNKNOWN
    change_up: float  # relative output change with the parameter ×2
    change_down: float  # ×0.5
    sensitivity: float  # relative output change under a random perturbation of 50% of its norm
    reason: str


def _output_vector(out: Any) -> torch.Tensor:
    import torch  # lazy: torch; the analyses import this module on runs without it

    leaves: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if x.is_floating_point():
                leaves.append(x.detach().reshape(-1).double())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(out)
    if not leaves:
        raise ValueError("the model returned no floating-point tensor")
    return torch.cat(leaves)


def _forward(model: nn.Module, inputs: Sequence[Any], seed: int) -> torch.Tensor:
    import torch  # lazy: torch; the analyses import this module on runs without it

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _output_vector(model(*inputs))


def _probe_copy(model: nn.Module, *, generic: bool = True, seed: int = 0) -> nn.Module:
    """A float64 train-mode copy with eps neutralized and, if `generic`, jittered parameters.

    Fresh models sit at special points (BatchNorm shift 0, scale 1) where invariance can hold by
    accident: with β = 0, BN(x)·cγ is just c·BN(x)γ and the next BatchNorm removes c. Invariance that
    matters for training holds at generic weights, so each parameter gets 10% random jitter.
    """
    import torch  # lazy: torch; the analyses import this module on runs without it

    clone = copy.deepcopy(model).double().train()
    for module in clone.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = NEUTRAL_EPS
    if generic:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in clone.parameters():
                scale = 0.1 * (float(p.abs().mean()) + 0.1) if p.numel() else 0.0
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return clone


def _input_candidates(model: nn.Module, batch: int) -> list[tuple[Any, ...]]:
    """Guesses for an input batch, from the first layer that shows its input size."""
    # lazy: torch; the analyses import this module on runs without it
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return [(torch.randint(0, module.num_embeddings, (batch, length), generator=gen),)
                    for length in (16, 8, 4)]
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(module)]
            return [(torch.randn(batch, module.in_channels, *([size] * dims), generator=gen,
                                 dtype=torch.float64),) for size in _SPATIAL_TRIES]
        if isinstance(module, nn.Linear):  # flat features, a token sequence, or a square image
            n = module.in_features
            shapes = [(batch, n), (batch, 8, n), (batch, 1, n, n), (batch, n, n)]
            return [(torch.randn(*shape, generator=gen, dtype=torch.float64),) for shape in shapes]
    return []


def example_inputs(model: nn.Module, batch: int = 8) -> tuple[Any, ...] | None:
    """A random batch the model accepts, guessed from its first conv, linear or embedding layer.

    Args:
        model: the model (not changed).
        batch: the batch size.

    Returns:
        The positional arguments of one forward call, or None where no guess fits.
    """
    clone = _probe_copy(model)
    for candidate in _input_candidates(clone, batch):
        try:
            _forward(clone, candidate, 0)
        except Exception:  # noqa: BLE001, S112 - a wrong guess of the input size; try the next one
            continue
        return candidate
    return None


def _undecided(param: str, reason: str) -> ProbeResult:
    """A parameter the probe cannot judge, with no measurement."""
    return ProbeResult(param=param, verdict=VERDICT_UNKNOWN, change_up=math.nan,
                       change_down=math.nan, sensitivity=math.nan, reason=reason)  # fmt: skip


def _relative_change(y: torch.Tensor, base: torch.Tensor) -> float:
    scale = float(base.norm())
    diff = float((y - base).norm())
    if not math.isfinite(diff):
        return math.inf
    return diff / scale if scale > 0 else diff


def _classify(param: str, up: float, down: float, sensitivity: float) -> ProbeResult:
    """The verdict from the output's relative changes under scaling up, down and a perturbation.

    >>> _classify("bn.weight", 1e-12, 2e-12, 0.3).verdict
    'invariant'
    >>> _classify("fc.weight", 1.0, 0.5, 0.3).reason
    'outputs change by 1 (relative) when scaled by 2 or 0.5'
    """

    def result(verdict: str, reason: str) -> ProbeResult:
        return ProbeResult(param=param, verdict=verdict, change_up=up, change_down=down,
                           sensitivity=sensitivity, reason=reason)  # fmt: skip

    worst = max(up, down)
    if sensitivity <= INVARIANT_BELOW:
        return result(VERDICT_UNKNOWN, "the outputs do not respond to this parameter on the probe batch")
    if worst <= INVARIANT_BELOW:
        return result(INVARIANT, f"outputs unchanged (rel. change {worst:.1e}) when scaled by 2 and 0.5")
    if worst >= NOT_INVARIANT_ABOVE:
        return result(NOT_INVARIANT, f"outputs change by {worst:.2g} (relative) when scaled by 2 or 0.5")
    return result(VERDICT_UNKNOWN,
                  f"outputs change by {worst:.1e}: between the invariant and non-invariant thresholds")


def probe_invariance(
    model: nn.Module,
    params: Iterable[str] | None = None,
    *,
    inputs: Sequence[Any] | None = None,
    scales: tuple[float, float] = (2.0, 0.5),
    seed: int = 0,
    generic: bool = True,
) -> dict[str, ProbeResult]:
    """Per parameter name, whether scaling it leaves the outputs unchanged.

    Args:
        model: the model (not changed: the probe runs on a float64 copy).
        params: the parameters to probe; None for all.
        inputs: the positional arguments of one forward call; None guesses a random batch from
            the first conv/linear/embedding layer (`example_inputs`).
        scales: the two factors each parameter is scaled by.
        seed: the seed of the jitter, the perturbation and the forward calls.
        generic: probe at jittered weights, not exactly the model's (see `_probe_copy`).

    Returns:
        A `ProbeResult` by parameter name.
    """
    import torch  # lazy: torch; the analyses import this module on runs without it

    clone = _probe_copy(model, generic=generic, seed=seed)
    named = dict(clone.named_parameters())
    names = list(named) if params is None else [p for p in params if p in named]
    if inputs is None:
        inputs = example_inputs(model)
    if inputs is None:
        reason = "could not guess an input for the model; pass inputs= to the probe"
        return {p: _undecided(p, reason) for p in names}
    inputs = tuple(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)
    base = _forward(clone, inputs, seed)
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, ProbeResult] = {}
    for name in names:
        p = named[name]
        original = p.detach().clone()
        norm = float(original.norm())
        if norm == 0.0 or not math.isfinite(norm):
            results[name] = _undecided(name, "the tensor is all zero (or not finite): scaling it cannot tell")
            continue
        changes = []
        with torch.no_grad():
            for c in scales:
                p.mul_(c)
                changes.append(_relative_change(_forward(clone, inputs, seed), base))
                p.copy_(original)
            noise = torch.randn(original.shape, generator=gen, dtype=original.dtype)
            p.add_(noise * (0.5 * norm / max(float(noise.norm()), 1e-300)))
            sensitivity = _relative_change(_forward(clone, inputs, seed), base)
            p.copy_(original)
        results[name] = _classify(name, changes[0], changes[1], sensitivity)
    return results


__all__ = ["INVARIANT_BELOW", "NOT_INVARIANT_ABOVE", "ProbeResult", "example_inputs", "probe_invariance"]
