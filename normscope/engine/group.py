"""The records a kernel takes and gives: one group of tensors in (`GroupInput`), their sums out
(`GroupSums`).

Every kernel of the engine — the fused C kernel (`fused`), the torch row blocks (`reduce`) and
the small-tensor path (`small`) — works on these, and `reduce.start_group` picks the kernel. They
live here, apart from any kernel, so that the kernels and the dispatcher import them and not
each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from normscope._torch_seen import tensor_type
from normscope.file_reads import FileReader

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class GroupInput:
    """The tensors of one group, entry by entry.

    `weight` holds one tensor per entry; each companion stream is None or holds one tensor per
    entry: the previous snapshot's tensor (`prev`), an optimizer buffer (`buf`: SGD momentum or
    Adam exp_avg) and Adam's `exp_avg_sq` (`sq`). Before `loaded()`, an entry may also be a ref the
    fused kernel reads in place (`snapshot.AddressedTensorRef`).
    """

    weight: Sequence[torch.Tensor]
    prev: Sequence[torch.Tensor] | None = None
    buf: Sequence[torch.Tensor] | None = None
    sq: Sequence[torch.Tensor] | None = None

    def subset(self, indices: Sequence[int]) -> GroupInput:
        """The group of the entries at `indices`, in that order.

        Args:
            indices: positions of entries in this group.

        Returns:
            A group holding those entries of every stream this group has.
        """
        return self._each_stream(lambda stream: [stream[i] for i in indices])

    def loaded(self, *, copy_mapped: bool = False) -> GroupInput:
        """The group with every ref read into a tensor in memory of its own (`file_reads`).

        torch's kernels have no SIGBUS guard, so refs the fused kernel would have read in place
        are read with read calls instead.

        Args:
            copy_mapped: also read tensors that are views of a file's mapping the same way.

        Returns:
            A group of tensors only.
        """
        tensor = tensor_type()
        with FileReader() as reader:
            return self._each_stream(lambda stream: [
                (reader.tensor(t) if copy_mapped else t) if isinstance(t, tensor)
                else reader.ref(t) for t in stream
            ])  # fmt: skip

    def flat(self) -> GroupInput:
        """The group with every tensor flattened (the torch kernels work on 1-D tensors)."""
        return self._each_stream(lambda stream: [t.reshape(-1) for t in stream])

    def _each_stream(self, change: Callable[[Sequence[Any]], list[Any]]) -> GroupInput:
        """The group made of `change` applied to each stream this group has."""

        def companion(stream: Sequence[Any] | None) -> list[Any] | None:
            return None if stream is None else change(stream)

        return GroupInput(
            change(self.weight), companion(self.prev), companion(self.buf), companion(self.sq)
        )

    def quantities(self) -> tuple[str, ...]:
        """The sums this group's streams give, in the order the kernels report them.

        Returns:
            "norm_sq", then "dot" and "diff_sq" with `prev`, "buf_dot" and "buf_norm_sq" with
            `buf`, "sq_sum" with `sq`.

        >>> GroupInput(weight=[], prev=[], sq=[]).quantities()
        ('norm_sq', 'dot', 'diff_sq', 'sq_sum')
        """
        names = ["norm_sq"]
        if self.prev is not None:
            names += ["dot", "diff_sq"]
        if self.buf is not None:
            names += ["buf_dot", "buf_norm_sq"]
        if self.sq is not None:
            names.append("sq_sum")
        return tuple(names)


@dataclass
class GroupSums:
    """Per-entry float64 sums (CPU lists, in entry order) for the quantities the group had.

    `sums[q][i]` is quantity q of entry i (`GroupInput.quantities()`), `nonfinite[i]` its count
    of NaN/Inf weights.
    """

    sums: dict[str, list[float]]
    nonfinite: list[int]
    quantities: tuple[str, ...] = field(default=())
