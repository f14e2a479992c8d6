"""Crafted checkpoints that reach past their bytes: each is refused in one line with exit 2.

normscope runs in a child process, so a fault (the bug these guard against) fails the test
instead of ending the test run.
"""

from __future__ import annotations

import pytest
import torch
from _hostile import Forged, assert_api_refused, assert_refused, run_api, run_cli, save_forged
from _sources_helpers import sgd, small_cnn, train

# A storage offset whose byte offset, computed in 64 bits, wraps: 2**61 elements of 4 bytes is
# 2**63 bytes, a negative int64 that passes a `<= record size` test and points far outside.
WILD_OFFSET = 1 << 61

FORGERIES = {
    # contiguous, so read in place by the fused kernel: the address would be wild
    "offset-wraps": lambda t: Forged(t, offset=WILD_OFFSET),
    # the bytes just before its record (another tensor's): exit 0 with wrong numbers
    "offset-reads-another-record": lambda t: Forged(t, offset=(1 << 62) - t.numel()),
    "numel-wraps": lambda t: Forged(t, size=(1 << 31, 1 << 31), stride=(1 << 31, 1)),
    "negative-offset": lambda t: Forged(t, offset=-4096),
    "size-times-stride-wraps": lambda t: Forged(t, size=(2, 2), stride=(1 << 62, 1)),
    "offset-past-record": lambda t: Forged(t, offset=1),
}


def _state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    model = small_cnn()
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def _forged_run(root, dtype, forge, *, first_only=False):  # type: ignore[no-untyped-def]
    """Two snapshots of a real model, `forge(tensor)` in place of its first weight (in the first
    snapshot only with `first_only`: what the kernel then reads is the previous snapshot)."""
    root.mkdir()
    for epoch in range(2):
        state = _state(dtype)
        name = next(iter(state))
        if epoch == 0 or not first_only:
            state[name] = forge(state[name])
        save_forged({"state_dict": state, "epoch": epoch}, root / f"epoch_{epoch}.pt")
    return root


def _forged_optimizer_run(root, forge):  # type: ignore[no-untyped-def]
    root.mkdir()
    for epoch in range(2):
        model = small_cnn()
        optimizer = sgd(model)
        train(model, optimizer, 2, seed=epoch)
        state = optimizer.state_dict()
        state["state"][0]["momentum_buffer"] = forge(state["state"][0]["momentum_buffer"])
        save_forged({"state_dict": model.state_dict(), "optimizer": state, "epoch": epoch},
                    root / f"epoch_{epoch}.pt")  # fmt: skip
    return root


def test_tensors_reaching_past_their_records_are_refused_by_the_api(tmp_path):
    runs = {}
    for name, forge in FORGERIES.items():
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            runs[name, str(dtype)] = _forged_run(tmp_path / f"{name}-{dtype}", dtype, forge)
        runs[name, "previous"] = _forged_run(tmp_path / f"{name}-prev", torch.float32, forge,
                                             first_only=True)  # fmt: skip
        runs[name, "optimizer"] = _forged_optimizer_run(tmp_path / f"{name}-optim", forge)
    for case, result in zip(runs, run_api(*runs.values())):
        assert "epoch_0.pt" in assert_api_refused(result), case


@pytest.mark.parametrize("forgery", ["offset-wraps", "offset-reads-another-record"])
def test_the_cli_refuses_them_in_one_line(tmp_path, forgery):
    run = _forged_run(tmp_path / "run", torch.float32, FORGERIES[forgery], first_only=True)
    assert "epoch_0.pt" in assert_refused(run_cli("analyze", str(run)))


@pytest.mark.parametrize("before", [b"", b"cos\nsystem\n"], ids=["plain", "after-a-global"])
def test_a_pickle_torch_refuses_is_reported_without_advice_to_run_it(tmp_path, before):
    import struct
    import zipfile

    from normscope.errors import BadInputError
    from normscope.sources import open_run

    # a protocol-5 bytearray of 2 GiB in torch's protocol-2 pickle: refused, never allocated
    pickled = b"\x80\x02" + before + b"\x96" + struct.pack("<Q", 1 << 31) + b"x" * 64 + b"."
    with zipfile.ZipFile(tmp_path / "w.pt", "w", zipfile.ZIP_STORED) as archive:
        for name, data in (("data.pkl", pickled), ("byteorder", b"little"), ("version", b"3\n"),
                           (".data/serialization_id", b"0")):  # fmt: skip
            archive.writestr(f"archive/{name}", data)
    with pytest.raises(BadInputError) as info:
        open_run(tmp_path / "w.pt")
    message = str(info.value)
    assert "safe loader" in message and "weights_only" not in message and "\n" not in message
