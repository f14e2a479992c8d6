"""DeepSpeed's checkpoint files without DeepSpeed: its few globals as inert records.

A ZeRO optimizer file pickles three DeepSpeed objects beside its tensors: the loss scaler
(`LossScaler` / `DynamicLossScaler`, plain objects whose state is a dict), the stage
(`ZeroStageEnum`, an int enum) and `fragment_address(numel, start)` (where a parameter lies in
the rank's flat partition). torch's weights_only unpickler reads the files with these names bound
to the records below, which keep the values and run nothing; any other global is still refused.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

from normscope.errors import BadInputError, UnsafeCheckpointError


class InertRecord:
    """An object DeepSpeed pickled: its constructor arguments and state, kept as data."""

    # unpickling may skip __init__ (NEWOBJ then BUILD): the defaults stand in
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}  # noqa: RUF012 - never mutated
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class LossScalerRecord(InertRecord):
    pass


class ZeroStage(int):
    """`ZeroStageEnum(n)`: the stage as a plain int."""


class FragmentAddress(InertRecord):
    """`fragment_address(numel, start)`: a parameter's place in a rank's flat partition."""

    @property
    def numel(self) -> int:
        return int(self._field("numel", 0))

    @property
    def start(self) -> int:
        return int(self._field("start", 1))

    def _field(self, name: str, index: int) -> Any:
        if isinstance(self.state, dict) and name in self.state:
            return self.state[name]
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index]


DEEPSPEED_GLOBALS = (
    (LossScalerRecord, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (LossScalerRecord, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
)


def load_deepspeed_file(path: str) -> Any:
    """A DeepSpeed `*_model_states.pt` / `*_optim_states.pt`: weights_only, mmap, its globals
    as records. One-line errors for anything unreadable or needing other code."""
    import torch  # lazy: only a DeepSpeed checkpoint needs it, and it is read by torch.load

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(DEEPSPEED_GLOBALS)):
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsafeCheckpointError(
            f"{path} needs code beyond DeepSpeed's checkpoint records to load ({first}); "
            "normscope never runs code from a checkpoint"
        ) from None
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(f"{path} is not a readable DeepSpeed checkpoint: {first}") from None
