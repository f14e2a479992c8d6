"""Where no SIGBUS guard covers the kernels that read a bucket (torch's kernels, row sums, the
CUDA staging copy), the engine reads its tensors by read calls into memory of its own: none is
backed by a file mapping, and each holds the very bytes the mapping would have shown."""

from __future__ import annotations

import math
import os

import pytest
import torch

from normscope.engine import compute_stats
from normscope.engine.driver import reads_in_place
from normscope.file_reads import FileReader, file_mappings
from normscope.engine.loading import WorkItem, _read, load_work
from normscope.engine.plan import plan_buckets
from normscope.engine.staging import layout, pack, unpack
from normscope.errors import BadInputError
from normscope.file_stamps import FileSpan
from normscope.sources import open_run

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_runs")


def _file_backed(tensor: torch.Tensor) -> str | None:
    """The file whose mapping holds `tensor`'s memory, or None."""
    with open("/proc/self/maps", "rb") as f:
        mappings = file_mappings(f.read())
    address = tensor.data_ptr()
    return next((m.path for m in mappings if m.start <= address < m.end), None)


def _open(name: str, monkeypatch: pytest.MonkeyPatch, fallback: bool):  # type: ignore[no-untyped-def]
    path = os.path.join(ROOT, name)
    if not os.path.isdir(path):
        pytest.skip(f"{name} not present")
    if fallback:  # every tensor from torch.load(mmap=True): no ref knows its offset
        import normscope.sources._torchio as torchio

        monkeypatch.setattr(torchio, "_read_fast", lambda path, **kwargs: torchio._TORCH_LOAD)
    return list(open_run(path).snapshots)[:3]


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")


@needs_proc
@pytest.mark.parametrize(
    ("run", "fallback"),
    [("digits_bn_cnn_sgd", False), ("digits_ln_transformer_adamw", False),
     ("digits_bn_cnn_lightning", False), ("digits_bn_cnn_sgd", True)],
    ids=["torch-zip+momentum", "safetensors+optimizer.pt", "lightning", "torch.load"],
)  # fmt: skip
def test_the_torch_path_reads_no_mapped_page(run, fallback, monkeypatch):
    snapshots = _open(run, monkeypatch, fallback)
    # small buckets: tensors larger than one are read in row slices
    plan = plan_buckets(snapshots, 16 * 1024, names=None, state_from=0)
    assert any(not p.whole for bucket in plan.buckets for p in bucket)
    checked = 0
    for b, bucket in enumerate(plan.buckets):
        for t, snapshot in enumerate(snapshots):
            work = load_work(WorkItem.from_plan(plan, snapshots, bucket=b, snapshot=t), in_place=False)
            for piece, shape, weight, buf, sq in zip(work.pieces, work.shapes, work.weight,
                                                     work.buf, work.sq):  # fmt: skip
                state = plan.entries[t][piece.name].state or {}
                handles = [snapshot.tensors[piece.name], state.get("buf"), state.get("sq")]
                for tensor, handle in zip((weight, buf, sq), handles):
                    if tensor is None:
                        continue
                    assert isinstance(tensor, torch.Tensor)
                    assert _file_backed(tensor) is None, (piece, _file_backed(tensor))
                    mapped = _read(handle, piece, shape, "tensor", snapshot.meta.path)
                    assert torch.equal(tensor, mapped), piece
                    checked += 1
    assert checked > 100


@needs_proc
def test_the_fused_path_still_reads_in_place(monkeypatch):
    snapshots = _open("digits_ln_transformer_adamw", monkeypatch, False)
    if not reads_in_place(torch.device("cpu"), rows=False):
        pytest.skip("this install has no fused kernel")
    plan = plan_buckets(snapshots, 1 << 26, names=None, state_from=0)
    work = load_work(WorkItem.from_plan(plan, snapshots, bucket=0, snapshot=1), in_place=True)
    read = work.tensors()
    assert read
    for t in read:  # refs at the address of their bytes, or views of the files: no copy
        assert getattr(t, "address", None) is not None or (
            isinstance(t, torch.Tensor) and _file_backed(t))


def test_who_reads_in_place(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not reads_in_place(cuda, rows=False)  # the staging copy has no guard
    assert not reads_in_place(cpu, rows=True)  # row sums are torch's
    monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    assert not reads_in_place(cpu, rows=False)


@needs_proc
def test_cuda_staging_packs_what_the_reader_read(monkeypatch):
    # the CUDA path reads like the torch path (`reads_in_place` is False there) and packs those
    # tensors into its pinned buffer with `pack`; here into a plain CPU buffer
    snapshots = _open("digits_bn_cnn_sgd", monkeypatch, False)
    plan = plan_buckets(snapshots, 1 << 26, names=None, state_from=0)
    work = load_work(WorkItem.from_plan(plan, snapshots, bucket=0, snapshot=1),
                     in_place=reads_in_place(torch.device("cuda", 0), rows=False))  # fmt: skip
    tensors = work.tensors()
    assert tensors and not any(map(_file_backed, tensors))
    slots, total = layout(tensors)
    host = torch.empty(total, dtype=torch.uint8)
    pack(host, tensors, slots)
    for packed, tensor in zip(unpack(host, slots), tensors, strict=True):
        assert torch.equal(packed, tensor.reshape(-1))


def test_a_file_shorter_than_its_span_changed_while_it_was_read(tmp_path):
    path = tmp_path / "weights.bin"
    values = torch.arange(24, dtype=torch.float32)
    path.write_bytes(values.numpy().tobytes())
    with FileReader() as reader:
        whole = reader.span(FileSpan(str(path), 0, 96), "float32", (4, 6))
        assert torch.equal(whole, values.view(4, 6))
        assert torch.equal(reader.rows(FileSpan(str(path), 0, 96), "float32", (4, 6), 1, 3),
                           values.view(4, 6)[1:3])  # fmt: skip
        os.truncate(path, 50)
        with pytest.raises(BadInputError, match="changed while it was read") as caught:
            reader.span(FileSpan(str(path), 0, 96), "float32", (4, 6))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with FileReader() as reader, pytest.raises(BadInputError, match="need 96"):
        reader.span(FileSpan(str(path), 0, 80), "float32", (4, 6))


def test_mappings_are_read_off_the_maps_format():
    text = (b"55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234   /usr/bin/python3\n"
            b"7f0000000000-7f0000002000 r--p 00000000 08:01 99 /runs/a b.pt\n"
            b"7f0000002000-7f0000003000 r--p 00002000 08:01 99 /runs/a b.pt\n"
            b"7f0000003000-7f0000004000 rw-p 00000000 00:00 0 \n"
            b"7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]\n")  # fmt: skip
    found = file_mappings(text)
    assert [(m.start, m.end, m.offset, m.path) for m in found] == [
        (0x55D0C0000000, 0x55D0C0001000, 0, "/usr/bin/python3"),
        (0x7F0000000000, 0x7F0000003000, 0, "/runs/a b.pt"),  # the two halves, merged
    ]


def _first_snapshots(run: str) -> list:
    """The first four snapshots of a sample run (skips where the run is not present)."""
    path = os.path.join(ROOT, run)
    if not os.path.isdir(path):
        pytest.skip(f"{run} not present")
    return list(open_run(path).snapshots)[:4]


@pytest.mark.parametrize("run", ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw"])
def test_the_fused_and_torch_paths_agree_on_a_sample_run(run, monkeypatch):
    snapshots = _first_snapshots(run)
    if not reads_in_place(torch.device("cpu"), rows=False):
        pytest.skip("this install has no fused kernel")
    fused = compute_stats(snapshots, device="cpu", bucket_bytes=64 * 1024)
    monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    torch_path = compute_stats(snapshots, device="cpu", bucket_bytes=64 * 1024)
    fields = ("norm_sq", "dot_prev", "diff_sq", "buf_dot", "buf_norm_sq", "exp_avg_sq_sum")
    compared = 0
    for a, b in zip(fused, torch_path, strict=True):
        assert list(a.params) == list(b.params)
        for name in a.params:
            x, y = a.params[name], b.params[name]
            assert x.numel == y.numel and x.nonfinite == y.nonfinite
            for field in fields:
                u, v = getattr(x, field), getattr(y, field)
                assert (u is None) == (v is None), (name, field)
                if u is not None and math.isfinite(u):
                    assert v == pytest.approx(u, rel=1e-6, abs=1e-9), (name, field)
                    compared += 1
    assert compared > 100


@pytest.mark.parametrize("run", ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw"])
def test_read_copies_give_the_torch_path_the_numbers_mapped_pages_gave(run, monkeypatch):
    # the same bytes, the same kernels: bit for bit what the torch path computed on the mappings
    import normscope.engine.loading as loading

    snapshots = _first_snapshots(run)
    monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    copied = compute_stats(snapshots, device="cpu", bucket_bytes=64 * 1024)
    read = loading._read
    monkeypatch.setattr(loading, "_read", lambda handle, piece, shape, what, path, reader=None:
                        read(handle, piece, shape, what, path))  # fmt: skip
    mapped = compute_stats(snapshots, device="cpu", bucket_bytes=64 * 1024)
    for a, b in zip(copied, mapped, strict=True):
        assert list(a.params) == list(b.params)
        for name in a.params:
            assert a.params[name] == b.params[name], name


@needs_proc
def test_a_group_the_kernel_declines_reaches_torch_without_mapped_pages(tmp_path, monkeypatch):
    # float8 weights after a float32 snapshot: torch's kernels reduce the pair, and the earlier
    # tensor, a view of its file for the kernel, is read into memory of its own for them
    import normscope.engine.reduce as reduce
    from normscope.engine.fused import fused_kernel
    from normscope.engine.reduce import GroupInput, start_group
    from normscope.engine.workers import Inline

    if fused_kernel() is None:
        pytest.skip("this install has no fused kernel")
    torch.save({"w": torch.linspace(-1, 1, 4096)}, tmp_path / "a.pt")
    mapped = torch.load(tmp_path / "a.pt", mmap=True, weights_only=True)["w"]
    assert _file_backed(mapped)
    current = torch.linspace(-1, 1, 4096).to(torch.float8_e4m3fn)
    seen = []
    torch_kernels = reduce._reduce_torch

    def spy(group, block_rows, runner):  # type: ignore[no-untyped-def]
        seen.extend(group.prev)
        return torch_kernels(group, block_rows, runner)

    monkeypatch.setattr(reduce, "_reduce_torch", spy)
    sums = start_group(GroupInput(weight=[current], prev=[mapped]), Inline())()
    assert seen and not any(map(_file_backed, seen))
    assert torch.equal(seen[0], mapped)
    expected = float((current.double() * mapped.double()).sum())
    assert sums.sums["dot"][0] == pytest.approx(expected, rel=1e-6)
