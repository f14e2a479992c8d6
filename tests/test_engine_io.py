"""The engine's I/O side: read-ahead thread, staging buffers, real safetensors and torch files."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from engine_helpers import f64, rel
from safetensors import safe_open
from safetensors.torch import save_file

from normscope.engine import compute_stats
from normscope.engine.loading import LoadedWork
from normscope.engine.plan import Piece
from normscope.engine.prefetch import Prefetcher
from normscope.engine.staging import layout, pack, unpack
from normscope.snapshot import Snapshot, SnapshotMeta


def test_prefetcher_yields_in_order_and_reads_at_most_one_ahead():
    loaded, consumed = [], []
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            loaded.append(i)
            ahead = len(loaded) - len(consumed)
        assert ahead <= 2  # the item being consumed + one read ahead
        return i * i

    with Prefetcher(range(20), load, depth=1) as items:
        for i, square in items:
            assert square == i * i
            time.sleep(0.002)  # a slow consumer: the reader must wait, not run ahead
            with lock:
                consumed.append(i)
    assert consumed == list(range(20))


def test_prefetcher_reraises_a_load_error_at_that_item():
    def load(i: int) -> int:
        if i == 3:
            raise ValueError("corrupt shard 3")
        return i

    seen = []
    with (
        pytest.raises(ValueError, match="corrupt shard 3"),
        Prefetcher(range(10), load) as items,
    ):
        for i, _ in items:
            seen.append(i)
    assert seen == [0, 1, 2]


def test_prefetcher_stops_its_thread_when_the_consumer_leaves_early():
    before = threading.active_count()
    with pytest.raises(RuntimeError), Prefetcher(range(1000), lambda i: i) as items:
        for i, _ in items:
            if i == 2:
                raise RuntimeError("consumer failed")
    assert threading.active_count() == before


def test_staging_pack_unpack_round_trip_with_mixed_dtypes():
    tensors = [
        torch.randn(5).bfloat16(),
        torch.randn(0),
        torch.randn(17, dtype=torch.float64),
        torch.randn(3).half(),
    ]
    slots, total = layout(tensors)
    assert all(s.offset % 64 == 0 for s in slots)
    buffer = torch.empty(total, dtype=torch.uint8)
    pack(buffer, tensors, slots)
    for original, view in zip(tensors, unpack(buffer, slots), strict=True):
        assert view.dtype == original.dtype and torch.equal(view, original)


def test_loaded_work_hands_its_tensors_to_staging_and_takes_the_copies_back_in_order():
    # The CUDA path: every tensor of an item goes to the stager piece by piece (weight, then the
    # optimizer streams present), and the device copies come back into the same columns.
    pieces = [Piece("a"), Piece("b"), Piece("c")]
    weight = [torch.randn(3), torch.randn(2, 2), torch.randn(1)]
    buf = [torch.randn(3), None, torch.randn(1)]
    sq = [None, None, torch.rand(1)]
    work = LoadedWork(0, 0, pieces, [(3,), (2, 2), (1,)], list(weight), list(buf), list(sq))
    tensors = work.tensors()
    assert [id(t) for t in tensors] == [id(t) for t in
                                        (weight[0], buf[0], weight[1], weight[2], buf[2], sq[2])]
    work.replace_tensors([t * 2 for t in tensors])
    assert all(torch.equal(w, 2 * x) for w, x in zip(work.weight, weight, strict=True))
    assert work.buf[1] is None and work.sq[0] is None and work.sq[1] is None
    assert torch.equal(work.buf[2], 2 * buf[2]) and torch.equal(work.sq[2], 2 * sq[2])


class _SafetensorsRef:
    """A minimal lazy ref over a real safetensors file (row slices read only their bytes)."""

    span = None  # safetensors copies what it reads (`snapshot.TensorRef`)

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        with safe_open(path, framework="pt") as f:
            s = f.get_slice(name)
            self.shape = tuple(s.get_shape())
            self.dtype = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}[
                s.get_dtype()
            ]

    def load(self) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self.name)

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as f:
            return f.get_slice(self.name)[start:stop]


class _TorchFileRef:
    """A ref over a tensor from `torch.load(weights_only=True, mmap=True)` (no load_rows)."""

    span = None  # torch mapped it (`snapshot.TensorRef`)

    def __init__(self, tensor: torch.Tensor, name: str) -> None:
        self.tensor, self.name = tensor, name
        self.shape = tuple(tensor.shape)
        self.dtype = str(tensor.dtype).removeprefix("torch.")

    def load(self) -> torch.Tensor:
        return self.tensor


def test_real_safetensors_and_torch_files(tmp_path):
    g = torch.Generator().manual_seed(11)
    model = {
        "embed": torch.randn(2000, 64, generator=g).bfloat16(),
        "ln": torch.ones(64),
    }
    snaps, written = [], []
    for step in range(3):
        model = {
            k: (v.float() * 0.9 + 0.1 * torch.randn(v.shape, generator=g)).to(v.dtype)
            for k, v in model.items()
        }
        written.append(model)
        st = tmp_path / f"step{step}.safetensors"
        save_file(model, str(st))
        pt = tmp_path / f"step{step}.pt"
        torch.save({"head": model["embed"][:10].float()}, pt)
        mapped = torch.load(pt, weights_only=True, mmap=True)
        tensors = {k: _SafetensorsRef(str(st), k) for k in model}
        tensors["head"] = _TorchFileRef(mapped["head"], "head")
        snaps.append(Snapshot(SnapshotMeta(str(st), step, None, "filename"), tensors))
    for bucket_bytes in (256 * 2**20, 60_000):  # the second reads `embed` in row slices
        stats = compute_stats(snaps, device="cpu", bucket_bytes=bucket_bytes)
        for step in (1, 2):
            for name in ("embed", "ln"):
                x, y = f64(written[step][name]), f64(written[step - 1][name])
                p = stats[step].params[name]
                assert rel(p.norm_sq, (x @ x).item()) < 1e-6
                assert rel(p.dot_prev, (x @ y).item()) < 1e-6
                assert rel(p.diff_sq, ((x - y) @ (x - y)).item()) < 1e-6
            x = f64(written[step]["embed"][:10].float())
            assert rel(stats[step].params["head"].norm_sq, (x @ x).item()) < 1e-6
    assert stats[0].dtypes == {"embed": "bfloat16", "ln": "float32", "head": "float32"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_within_documented_tolerance():
    g = torch.Generator().manual_seed(12)
    runs = []
    for step in range(3):
        tensors = {
            "big": torch.randn(5_000_000, generator=g).bfloat16(),
            "w": torch.randn(300, 300, generator=g),
            "b": torch.randn(7, generator=g).half(),
        }
        state = {"w": {"momentum_buffer": torch.randn(300, 300, generator=g)}}
        runs.append((tensors, state))
    from engine_helpers import snapshot

    snaps = [snapshot(i, t, s) for i, (t, s) in enumerate(runs)]
    cpu = compute_stats(snaps, device="cpu", bucket_bytes=4_000_000)
    gpu = compute_stats(snaps, device="cuda", bucket_bytes=4_000_000)
    for a, b in zip(cpu, gpu, strict=True):
        for name, p in a.params.items():
            q = b.params[name]
            for field in ("norm_sq", "dot_prev", "diff_sq", "buf_dot", "buf_norm_sq"):
                x, y = getattr(p, field), getattr(q, field)
                assert (x is None) == (y is None)
                if x is not None:
                    assert rel(y, x) < 1e-6, (name, field)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stager_round_trip():
    from normscope.engine.staging import CudaStager

    stager = CudaStager(torch.device("cuda"), 1 << 20)
    for _ in range(4):  # both pinned buffers, each reused
        tensors = [torch.randn(1000).bfloat16(), torch.randn(33)]
        staged = stager.to_device(tensors)
        moved = staged.wait()
        for a, b in zip(tensors, moved, strict=True):
            assert b.is_cuda and torch.equal(a, b.cpu())
