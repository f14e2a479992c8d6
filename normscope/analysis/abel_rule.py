"""The ABEL decision rule (Lewkowycz 2021, Algorithm 1; docs/science.md §1.2) as one pure step function.

The offline replay (`normscope.analysis.bounce.abel_replay`) and the in-loop scheduler with the paper's
rule (`normscope.schedulers.ABEL(rule="exact")`) both feed each end-of-epoch squared weight norm through
`abel_step`, so they cannot disagree about where the rule fires.

Rule, once per epoch, with Δ_t = N_t − N_{t−1}: if Δ_t·Δ_{t−1} < 0 (the slope changed sign), then if
`reached_minimum` is set, decay the LR and clear it; otherwise set it. The first sign change is taken as
the bottom of the bounce, the next one as the end of the rise. A Δ of exactly zero is no sign change
(the product is 0), as in the paper's pseudo-code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

EVENT_MINIMUM = "minimum"  # first sign change: the flag is set
EVENT_DECAY = "decay"  # second sign change: the LR is decayed and the flag cleared


@dataclass(frozen=True)
class AbelState:
    """What the rule remembers between epochs. Plain floats/bools so it round-trips through state_dict."""

    last_norm_sq: float | None = None
    last_delta: float | None = None
    reached_minimum: bool = False
    epochs_seen: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AbelState:
        return cls(
            last_norm_sq=None if data.get("last_norm_sq") is None else float(data["last_norm_sq"]),
            last_delta=None if data.get("last_delta") is None else float(data["last_delta"]),
            reached_minimum=bool(data.get("reached_minimum", False)),
            epochs_seen=int(data.get("epochs_seen", 0)),
        )


def abel_step(state: AbelState, norm_sq: float) -> tuple[AbelState, str | None]:
    """Feed one end-of-epoch squared norm; return the new state and the event it caused (or None).

    Args:
        state: what the rule remembers (`AbelState()` before the first epoch).
        norm_sq: this epoch's squared weight norm.

    Returns:
        The new state, and `EVENT_MINIMUM`, `EVENT_DECAY` or None.

    Raises:
        ValueError: `norm_sq` is NaN or infinite.

    The norm falls, turns up (the first sign change sets the flag), then turns down (decay):

    >>> state, events = AbelState(), []
    >>> for norm_sq in (10, 8, 7, 9, 11, 10):
    ...     state, event = abel_step(state, norm_sq)
    ...     events.append(event)
    >>> events
    [None, None, None, 'minimum', None, 'decay']
    """
    if not math.isfinite(norm_sq):
        raise ValueError(f"non-finite squared weight norm {norm_sq!r}")
    event: str | None = None
    delta = None if state.last_norm_sq is None else norm_sq - state.last_norm_sq
    reached = state.reached_minimum
    if delta is not None and state.last_delta is not None and delta * state.last_delta < 0:
        if reached:
            event, reached = EVENT_DECAY, False
        else:
            event, reached = EVENT_MINIMUM, True
    new_state = AbelState(
        last_norm_sq=float(norm_sq),
        last_delta=state.last_delta if delta is None else float(delta),
        reached_minimum=reached,
        epochs_seen=state.epochs_seen + 1,
    )
    return new_state, event


def final_decay_epoch(total_epochs: int, fraction: float = 0.85) -> int:
    """The epoch (count of completed epochs) after which ABEL's one budget decay happens.

    Args:
        total_epochs: the training budget in epochs.
        fraction: where in the budget the decay falls (the paper: 0.85).

    Returns:
        round(fraction · total_epochs), kept within 1 … total_epochs.

    Raises:
        ValueError: `total_epochs` < 1 or `fraction` outside (0, 1].

    >>> final_decay_epoch(60)
    51
    """
    if total_epochs < 1:
        raise ValueError("total_epochs must be at least 1")
    if not 0.0 < fraction <= 1.0:
        raise ValueError("final decay fraction must be in (0, 1]")
    return max(1, min(total_epochs, round(fraction * total_epochs)))
