"""Engine throughput and memory against the raw read rate and a naive loop, on a generated run.

    python benchmarks/bench_engine.py --size-gb 1 --shape llm --dir /tmp/normscope-bench

Shapes: `llm` — HF Trainer `checkpoint-N/` dirs of sharded bf16 safetensors, a few hundred large
tensors; `resnet` — `epoch_N.pt` torch files of thousands of small fp32 tensors (conv + BN);
`resnet152` — the same files holding torchvision's ResNet-152 (777 float tensors, 241 MB), as many
snapshots as the size holds.
Each measurement runs in its own process (peak memory is per process), with normscope's bytecode
compiled beforehand as an installed package has it. The children import normscope from this
checkout; with `--installed` they import the normscope this Python has installed (run the script
with a virtual environment's python to measure the wheel in it):

    raw     read every file with 16 MiB `readinto` from the page cache (what `cat` does)
    engine  `normscope.sources.open_run` + `normscope.engine.compute_stats` (norms, dots, diffs)
    naive   `load_file` / `torch.load` per file, then `.float().norm()` per tensor (norms only)

Throughput is tensor bytes / wall time; peak memory is the largest anonymous resident set
(RssAnon, sampled every 5 ms) — mmap-ed file pages are page cache, not the process's memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

GB = 1e9
_READ_BUFFER = 16 * 2**20


# ---------------------------------------------------------------- generating runs


def _llm_shapes(snapshot_bytes: int) -> dict[str, tuple[int, ...]]:
    """A decoder: embedding, then layers of 4 attention and 2 MLP matrices plus 2 norm vectors."""
    layers = 40
    a, b = 2 * layers * 12, 2 * 8000  # bytes = a h^2 + b h (bf16)
    hidden = max(
        64, int((-b + math.sqrt(b * b + 4 * a * snapshot_bytes)) / (2 * a)) // 64 * 64
    )
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (8000, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{m}.weight"] = (hidden, hidden)
        shapes[p + "mlp.up_proj.weight"] = (4 * hidden, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, 4 * hidden)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    return shapes


def _resnet_shapes(snapshot_bytes: int) -> dict[str, tuple[int, ...]]:
    """Conv + BN blocks: 5 float tensors each (weight, BN weight/bias/running mean/var)."""
    channels = 64 if snapshot_bytes <= 512 * 2**20 else 128
    block_bytes = 4 * (channels * channels * 9 + 4 * channels)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(max(1, snapshot_bytes // block_bytes)):
        p = f"layer{i // 100}.{i % 100}."
        shapes[p + "conv.weight"] = (channels, channels, 3, 3)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[p + f"bn.{leaf}"] = (channels,)
    return shapes


def resnet152_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's ResNet-152 state_dict: 60.2M parameters, 241 MB in fp32, 777 floating-point
    tensors (conv, BN weight/bias/running stats, fc) plus 155 int64 `num_batches_tracked`."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, channels: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 8, 36, 3)), 1):
        for block in range(blocks):
            p = f"layer{layer}.{block}."
            shapes[p + "conv1.weight"] = (planes, inplanes, 1, 1)
            bn(p + "bn1", planes)
            shapes[p + "conv2.weight"] = (planes, planes, 3, 3)
            bn(p + "bn2", planes)
            shapes[p + "conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(p + "bn3", planes * 4)
            if block == 0:
                shapes[p + "downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(p + "downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def float_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The weights of `shapes`: without BN's integer step counters, which normscope skips too."""
    return {n: s for n, s in shapes.items() if not n.endswith("num_batches_tracked")}


def _tensor(name: str, shape: tuple[int, ...], step: int, dtype):
    """Deterministic per name; drifts a little each snapshot, like a training run."""
    import torch

    if name.endswith("num_batches_tracked"):
        return torch.tensor(100 * step)
    g = torch.Generator().manual_seed(hash(name) % 2**31)
    t = torch.empty(shape).uniform_(-1.0, 1.0, generator=g)
    return t.mul_(1.0 - 0.01 * step).add_(1e-3 * step).to(dtype)


def generate(shape: str, size_gb: float, snapshots: int, root: str) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # a busy machine stalls torch's OpenMP regions (see docs/engine.md)
    try:
        return _generate(shape, size_gb, snapshots, root)
    finally:
        torch.set_num_threads(threads)


def _generate(shape: str, size_gb: float, snapshots: int, root: str) -> dict:
    import torch

    os.makedirs(root, exist_ok=True)
    per = int(size_gb * GB / snapshots)
    if shape == "resnet152":
        shapes = resnet152_shapes()
    else:
        shapes = (_llm_shapes if shape == "llm" else _resnet_shapes)(per)
    dtype = torch.bfloat16 if shape == "llm" else torch.float32
    itemsize = 2 if shape == "llm" else 4
    floats = float_shapes(shapes)
    tensor_bytes = sum(math.prod(s) * itemsize for s in floats.values()) * snapshots
    for step in range(1, snapshots + 1):
        if shape == "llm":
            _write_hf_checkpoint(
                os.path.join(root, f"checkpoint-{step * 100}"), shapes, step, dtype
            )
        else:
            state = {n: _tensor(n, s, step, dtype) for n, s in shapes.items()}
            torch.save(
                {"model": state, "epoch": step}, os.path.join(root, f"epoch_{step}.pt")
            )
    manifest = {
        "shape": shape,
        "snapshots": snapshots,
        "tensors": len(floats),
        "tensor_bytes": tensor_bytes,
    }
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest


def _write_hf_checkpoint(path: str, shapes: dict, step: int, dtype) -> None:
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    names = list(shapes)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(
            {n: _tensor(n, shapes[n], step, dtype) for n in shard},
            os.path.join(path, file),
        )
        weight_map.update({n: file for n in shard})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        json.dump(
            {"global_step": step * 100, "epoch": float(step), "log_history": []}, f
        )


def data_files(root: str) -> list[str]:
    out = []
    for base, _, files in sorted(os.walk(root)):
        out += [
            os.path.join(base, f)
            for f in sorted(files)
            if f.endswith((".safetensors", ".pt"))
        ]
    return out


# ---------------------------------------------------------------- measurements (child processes)


class PeakMemory:
    """Samples this process's RssAnon (private resident memory) on a thread."""

    def __init__(self, every: float = 0.005) -> None:
        self.peak_anon = 0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def anon_bytes() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self.anon_bytes())
            time.sleep(self._every)

    def start(self) -> None:
        self.baseline = self.anon_bytes()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, self.anon_bytes())


def measure_raw(root: str) -> dict:
    buffer = bytearray(_READ_BUFFER)
    view = memoryview(buffer)
    total, start = 0, time.perf_counter()
    for path in data_files(root):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return {"seconds": time.perf_counter() - start, "file_bytes": total}


def measure_engine(root: str, device: str) -> dict:
    from normscope.engine import compute_stats
    from normscope.sources import open_run

    start = time.perf_counter()
    run = open_run(root)
    opened = time.perf_counter()
    stats = compute_stats(run.snapshots, device=device)
    done = time.perf_counter()
    finite = all(math.isfinite(p.norm_sq) for s in stats for p in s.params.values())
    return {
        "seconds": done - start,
        "open_seconds": opened - start,
        "engine_seconds": done - opened,
        "snapshots": len(stats),
        "finite": finite,
    }


def measure_naive(root: str) -> dict:
    import torch
    from safetensors.torch import load_file

    start = time.perf_counter()
    norms = 0
    for path in data_files(root):
        if path.endswith(".safetensors"):
            tensors = load_file(path)
        else:
            tensors = torch.load(path, weights_only=True)["model"]
        for t in tensors.values():
            if t.is_floating_point():  # as normscope: integer buffers are not weights
                t.float().norm().item()
                norms += 1
        del tensors
    return {"seconds": time.perf_counter() - start, "norms": norms}


def child(kind: str, root: str, device: str) -> None:
    import safetensors.torch  # noqa: F401  (imports are part of the baseline, not the work)
    import torch  # noqa: F401

    import normscope.engine
    import normscope.sources

    mem = PeakMemory()
    mem.start()
    if kind == "raw":
        result = measure_raw(root)
    elif kind == "engine":
        result = measure_engine(root, device)
    else:
        result = measure_naive(root)
    mem.stop()
    from normscope.engine.fused import kernel_status

    result.update(
        kind=kind, peak_anon_bytes=mem.peak_anon, baseline_anon_bytes=mem.baseline,
        normscope=os.path.dirname(normscope.engine.__path__[0]), fused=kernel_status().active,
    )
    print(json.dumps(result))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(installed: bool) -> dict[str, str]:
    """The children's environment: this checkout first on the path (unless `installed`), and
    bytecode cached as an installed package has it (in a directory of its own, not beside the
    sources), so that no child compiles the modules it imports lazily inside the timed region."""
    env = dict(os.environ)
    if not installed:
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "normscope-bench-pycache")
    return env


def package_dir(installed: bool) -> str:
    if not installed:
        return os.path.join(REPO, "normscope")
    out = subprocess.run([sys.executable, "-c", "import normscope; print(normscope.__path__[0])"],
                         check=True, capture_output=True, text=True, env=child_env(True),
                         cwd=tempfile.gettempdir())  # fmt: skip
    return out.stdout.strip()


def compile_package(installed: bool) -> None:
    """Bytecode for every normscope module before the first timed child (see `child_env`)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", package_dir(installed)], check=True,
                   env=child_env(installed), capture_output=True)  # fmt: skip


def run_child(kind: str, root: str, device: str, installed: bool = False) -> dict:
    env = child_env(installed)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--dir",
        root,
        "--device",
        device,
    ]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(f"{kind} measurement failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--shape", choices=("llm", "resnet", "resnet152"), default="llm")
    ap.add_argument(
        "--snapshots", type=int, default=4,
        help="llm/resnet: snapshots the size is spread over; resnet152 (a fixed model of 241 MB)"
        " takes as many snapshots as the size holds",
    )
    ap.add_argument("--dir", default="/tmp/normscope-bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs per measurement; the best is kept"
    )
    ap.add_argument(
        "--installed", action="store_true",
        help="measure the normscope installed for this Python, not the checkout's",
    )
    ap.add_argument(
        "--child", choices=("raw", "engine", "naive"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dir, args.device)
        return
    root = os.path.join(args.dir, f"{args.shape}-{args.size_gb:g}gb")
    if args.shape == "resnet152":
        model_bytes = 4 * sum(math.prod(s) for s in float_shapes(resnet152_shapes()).values())
        args.snapshots = max(2, round(args.size_gb * GB / model_bytes))

    manifest_path = os.path.join(root, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    else:
        t0 = time.perf_counter()
        manifest = generate(args.shape, args.size_gb, args.snapshots, root)
        print(f"generated {root} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    tensor_gb = manifest["tensor_bytes"] / GB

    results = {}
    compile_package(args.installed)
    run_child("raw", root, args.device, args.installed)  # warm the page cache
    for kind in ("raw", "engine", "naive"):
        runs = [run_child(kind, root, args.device, args.installed) for _ in range(args.repeat)]
        results[kind] = min(runs, key=lambda r: r["seconds"])
        results[kind]["peak_anon_bytes"] = max(r["peak_anon_bytes"] for r in runs)
    raw_rate = results["raw"]["file_bytes"] / GB / results["raw"]["seconds"]
    eng_rate = tensor_gb / results["engine"]["seconds"]
    compute_rate = tensor_gb / results["engine"]["engine_seconds"]
    naive_rate = tensor_gb / results["naive"]["seconds"]
    summary = {
        "shape": args.shape,
        "snapshots": manifest["snapshots"],
        "tensors_per_snapshot": manifest["tensors"],
        "tensor_gb": round(tensor_gb, 3),
        "raw_read_gbps": round(raw_rate, 2),
        "engine_gbps": round(eng_rate, 2),
        "engine_vs_raw": round(eng_rate / raw_rate, 2),
        "open_run_s": round(results["engine"]["open_seconds"], 2),
        "compute_stats_gbps": round(compute_rate, 2),
        "compute_stats_vs_raw": round(compute_rate / raw_rate, 2),
        "naive_gbps": round(naive_rate, 2),
        "engine_vs_naive": round(eng_rate / naive_rate, 2),
        "engine_peak_anon_mb": round(results["engine"]["peak_anon_bytes"] / 2**20),
        "naive_peak_anon_mb": round(results["naive"]["peak_anon_bytes"] / 2**20),
        "baseline_anon_mb": round(results["engine"]["baseline_anon_bytes"] / 2**20),
        "normscope": results["engine"]["normscope"],
        "fused_kernel": results["engine"]["fused"],
        "device": args.device,
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(summary))
    print(
        f"| {args.shape} | {tensor_gb:.2f} GB | {manifest['snapshots']} x {manifest['tensors']} "
        f"| {raw_rate:.2f} | {eng_rate:.2f} ({eng_rate / raw_rate:.2f}) "
        f"| {compute_rate:.2f} ({compute_rate / raw_rate:.2f}) "
        f"| {naive_rate:.2f} ({eng_rate / naive_rate:.1f}x) "
        f"| {summary['engine_peak_anon_mb']} MB | {summary['naive_peak_anon_mb']} MB |"
    )


if __name__ == "__main__":
    main()
