"""Engine throughput and memory against `dd`, a naive script and the whole command, on a generated run.

    python benchmarks/bench_engine.py --size-gb 1 --shape llm --dir /tmp/normscope-bench --repeat 3

Shapes: `llm` — HF Trainer `checkpoint-N/` dirs of sharded bf16 safetensors, a few hundred large
tensors; `resnet` — `epoch_N.pt` torch files of thousands of small fp32 tensors (conv + BN);
`resnet152` — the same files holding torchvision's ResNet-152 (777 float tensors, 241 MB), as many
snapshots as the size holds; fixed sizes: `hf5` — 5 HF Trainer checkpoints of a 97-tensor bf16
decoder in `model.safetensors` (2.27 GB); `resnet50` — 8 `epoch_N.pt` files of torchvision's
ResNet-50 in fp32 with an SGD optimizer's momentum buffers (1.64 GB).
The in-process measurements run in their own process each (peak memory is per process), with
normscope's bytecode compiled beforehand as an installed package has it. The children import
normscope from this checkout; with `--installed` they import the normscope this Python has
installed (run the script with a virtual environment's python to measure the wheel in it):

    dd            `dd if=FILE of=/dev/null bs=16M` per file, each a process (the read rate)
    raw           the same read with 16 MiB `readinto` into one buffer, in-process (a check on dd)
    engine        `normscope.sources.open_run` + `normscope.engine.compute_stats` (norms, dots,
                  diffs, momentum terms), in-process
    naive         `NAIVE_SCRIPT`'s loop in-process: `load_file` / `torch.load(weights_only=True,
                  mmap=True)` per file, then `.float().norm()` per floating-point tensor
    cli           `python -m normscope analyze DIR -f csv -o /dev/null --device cpu`, a process
    naive_script  `NAIVE_SCRIPT` as a process, imports and interpreter start-up included

The kinds run in turn, round after round (`--repeat`), so that a change of the machine's load
hits each; the best of the rounds is kept. Rates are the run's file bytes / wall time, so each
ratio is a ratio of times. Peak memory is the largest anonymous resident set (RssAnon, sampled
every 5 ms) — mmap-ed file pages are page cache, not the process's memory.
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
    return _decoder_shapes(vocab=8000, hidden=hidden, layers=layers)


def _decoder_shapes(*, vocab: int, hidden: int, layers: int) -> dict[str, tuple[int, ...]]:
    """The tensors of a decoder: the embedding, then per layer 4 attention and 2 MLP matrices and
    2 norm vectors, named as Hugging Face names them."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
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


def _bottleneck_resnet_shapes(blocks: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """torchvision's bottleneck ResNet state_dict with `blocks` per stage: conv, BN
    weight/bias/running stats and `num_batches_tracked`, fc."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, channels: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), 1):
        for block in range(count):
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


def resnet152_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's ResNet-152 state_dict: 60.2M parameters, 241 MB in fp32, 777 floating-point
    tensors (conv, BN weight/bias/running stats, fc) plus 155 int64 `num_batches_tracked`."""
    return _bottleneck_resnet_shapes((3, 8, 36, 3))


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's ResNet-50 state_dict: 25.6M parameters in 161 tensors, 106 BN running
    statistics and 53 int64 `num_batches_tracked`."""
    return _bottleneck_resnet_shapes((3, 4, 6, 3))


def is_parameter(name: str) -> bool:
    """A learned tensor (what an optimizer holds), not a BN buffer."""
    return not name.endswith(("running_mean", "running_var", "num_batches_tracked"))


HF5_SNAPSHOTS, HF5_LAYERS, HF5_HIDDEN, HF5_VOCAB = 5, 12, 1152, 31000


def hf5_shapes() -> dict[str, tuple[int, ...]]:
    """A decoder of 97 tensors, 227M parameters (454 MB in bf16): the embedding, then 12 layers of
    4 attention and 2 MLP matrices and 2 norm vectors."""
    return _decoder_shapes(vocab=HF5_VOCAB, hidden=HF5_HIDDEN, layers=HF5_LAYERS)


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
    shapes = {
        "resnet152": resnet152_shapes, "resnet50": resnet50_shapes, "hf5": hf5_shapes,
    }.get(shape, lambda: (_llm_shapes if shape == "llm" else _resnet_shapes)(per))()
    hf = shape in ("llm", "hf5")
    dtype = torch.bfloat16 if hf else torch.float32
    floats = float_shapes(shapes)
    tensors = len(floats) + (sum(map(is_parameter, floats)) if shape == "resnet50" else 0)
    for step in range(1, snapshots + 1):
        if hf:
            _write_hf_checkpoint(os.path.join(root, f"checkpoint-{step * 100}"), shapes, step,
                                 dtype, shards=2 if shape == "llm" else 1)  # fmt: skip
            continue
        state = {n: _tensor(n, s, step, dtype) for n, s in shapes.items()}
        checkpoint = {"model": state, "epoch": step}
        if shape == "resnet50":
            checkpoint["optimizer"] = _sgd_state(state, step)
        torch.save(checkpoint, os.path.join(root, f"epoch_{step}.pt"))
    files = data_files(root)
    manifest = {
        "shape": shape,
        "snapshots": snapshots,
        "tensors": tensors,
        "tensor_bytes": _tensor_bytes(files),
        "file_bytes": sum(map(os.path.getsize, files)),
    }
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest


def _sgd_state(state: dict, step: int) -> dict:
    """`torch.optim.SGD(model.parameters(), momentum=0.9).state_dict()` after some steps: a
    `momentum_buffer` for each parameter, numbered in the model's order."""
    import torch

    params = [n for n in state if is_parameter(n)]
    holders = [torch.nn.Parameter(state[n], requires_grad=False) for n in params[:1]]
    groups = torch.optim.SGD(holders, lr=0.1, momentum=0.9, weight_decay=1e-4).state_dict()
    groups = groups["param_groups"]
    groups[0]["params"] = list(range(len(params)))
    buffers = {
        i: {"momentum_buffer": _tensor(n + ".momentum", state[n].shape, step, torch.float32)
                               .mul_(1e-2)}
        for i, n in enumerate(params)
    }  # fmt: skip
    return {"state": buffers, "param_groups": groups}


def _tensor_bytes(files: list[str]) -> int:
    """Bytes of the floating-point tensors in `files` (what the engine reduces)."""
    import torch
    from safetensors import safe_open

    total = 0
    for path in files:
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as f:
                tensors = [f.get_slice(k) for k in f.keys()]
                total += sum(math.prod(t.get_shape()) * _ITEMSIZE[t.get_dtype()]
                             for t in tensors if t.get_dtype() in _ITEMSIZE)  # fmt: skip
        else:
            obj = torch.load(path, weights_only=True, mmap=True)
            total += sum(t.numel() * t.element_size() for t in _tensors_of(obj)
                         if t.is_floating_point())  # fmt: skip
    return total


_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


def _tensors_of(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_of(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_of(value)
    elif hasattr(obj, "is_floating_point"):
        yield obj


def _write_hf_checkpoint(path: str, shapes: dict, step: int, dtype, shards: int) -> None:
    """What `transformers.Trainer` saves: the weights (`model.safetensors`, or shards and their
    index) and `trainer_state.json`."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    names = list(shapes)
    cut = -(-len(names) // shards)
    parts = [names[i : i + cut] for i in range(0, len(names), cut)]
    weight_map = {}
    for k, shard in enumerate(parts, 1):
        file = (f"model-{k:05d}-of-{len(parts):05d}.safetensors" if len(parts) > 1
                else "model.safetensors")  # fmt: skip
        save_file({n: _tensor(n, shapes[n], step, dtype) for n in shard},
                  os.path.join(path, file), metadata={"format": "pt"})  # fmt: skip
        weight_map.update({n: file for n in shard})
    if len(parts) > 1:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        json.dump(_trainer_state(step * 100), f, indent=2, sort_keys=True)


def _trainer_state(global_step: int) -> dict:
    """`TrainerState` as `Trainer._save_checkpoint` writes it, logging every 10 steps."""
    steps_per_epoch = 250
    return {
        "best_global_step": None, "best_metric": None, "best_model_checkpoint": None,
        "epoch": global_step / steps_per_epoch, "eval_steps": 500, "global_step": global_step,
        "is_hyper_param_search": False, "is_local_process_zero": True,
        "is_world_process_zero": True, "logging_steps": 10, "max_steps": 2500,
        "num_input_tokens_seen": 0, "num_train_epochs": 10, "save_steps": 100,
        "log_history": [
            {"epoch": s / steps_per_epoch, "grad_norm": 1.0 / (1 + s / 500),
             "learning_rate": 5e-5 * (1 - s / 2500), "loss": 2.0 / (1 + s / 1000), "step": s}
            for s in range(10, global_step + 1, 10)
        ],
        "stateful_callbacks": {"TrainerControl": {"args": {
            "should_epoch_stop": False, "should_evaluate": False, "should_log": False,
            "should_save": True, "should_training_stop": False}, "attributes": {}}},
        "total_flos": 1.0e15 * global_step, "train_batch_size": 8, "trial_name": None,
        "trial_params": None,
    }  # fmt: skip


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

    # imports done beforehand, as the naive loop's: the engine's modules load on its first call
    import normscope.engine.driver  # noqa: F401

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


# The naive script, as a user would write it: run whole as a process (imports included) and, for
# the in-process loop, its `naive_norms` alone.
NAIVE_SCRIPT = """
import sys

import torch
from safetensors.torch import load_file


def tensors_of(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_of(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_of(value)
    elif isinstance(obj, torch.Tensor):
        yield obj


def naive_norms(files):
    norms = 0
    for path in files:
        if path.endswith(".safetensors"):
            loaded = load_file(path)
        else:
            loaded = torch.load(path, weights_only=True, mmap=True)
        for t in tensors_of(loaded):
            if t.is_floating_point():  # as normscope: integer buffers are not weights
                t.float().norm().item()
                norms += 1
        del loaded
    return norms


if __name__ == "__main__":
    print(naive_norms(sys.argv[1:]))
"""


def measure_naive(root: str) -> dict:
    """`NAIVE_SCRIPT`'s loop in this process (its imports done beforehand)."""
    namespace = {"__name__": "naive"}
    exec(NAIVE_SCRIPT, namespace)  # noqa: S102 - the benchmark's own text
    files = data_files(root)
    start = time.perf_counter()
    norms = namespace["naive_norms"](files)
    return {"seconds": time.perf_counter() - start, "norms": norms}


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `cmd` as a process: its wall time (from the parent, start-up included), CPU time
    (user + system), and the largest RssAnon seen while it ran (sampled every 5 ms)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=tempfile.gettempdir())  # fmt: skip
    peak = 0
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{stderr}")
    return {"seconds": seconds, "peak_anon_bytes": peak}


def measure_dd(root: str) -> dict:
    """`dd if=FILE of=/dev/null bs=16M` for every file, each a process, timed together."""
    files = data_files(root)
    start = time.perf_counter()
    for path in files:
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return {"seconds": time.perf_counter() - start,
            "file_bytes": sum(map(os.path.getsize, files))}  # fmt: skip


def measure_cli(root: str, device: str, installed: bool) -> dict:
    """The whole `normscope analyze DIR -f csv -o /dev/null` command, as a process."""
    cmd = [sys.executable, "-m", "normscope", "analyze", root, "-f", "csv", "-o", os.devnull,
           "--device", device]  # fmt: skip
    return run_timed(cmd, child_env(installed))


def measure_naive_script(root: str) -> dict:
    """`NAIVE_SCRIPT` as a process, imports and interpreter start-up included."""
    return run_timed([sys.executable, "-c", NAIVE_SCRIPT, *data_files(root)])


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


FIXED_SHAPES = {"hf5": HF5_SNAPSHOTS, "resnet50": 8}  # shape: snapshots (the size is fixed)
KINDS = ("dd", "raw", "engine", "naive", "cli", "naive_script")


def measure(kind: str, root: str, device: str, installed: bool) -> dict:
    if kind == "dd":
        return measure_dd(root)
    if kind == "cli":
        return measure_cli(root, device, installed)
    if kind == "naive_script":
        return measure_naive_script(root)
    return run_child(kind, root, device, installed)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=1.0,
                    help="llm, resnet, resnet152; hf5 and resnet50 have a fixed size")
    ap.add_argument("--shape", choices=("llm", "resnet", "resnet152", *FIXED_SHAPES),
                    default="llm")  # fmt: skip
    ap.add_argument(
        "--snapshots", type=int, default=4,
        help="llm/resnet: snapshots the size is spread over; resnet152 (a fixed model of 241 MB)"
        " takes as many snapshots as the size holds",
    )
    ap.add_argument("--dir", default="/tmp/normscope-bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--repeat", type=int, default=2, help="rounds of measurements; the best of each is kept"
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
    if args.shape in FIXED_SHAPES:
        root = os.path.join(args.dir, args.shape)
        args.snapshots, size_gb = FIXED_SHAPES[args.shape], 0.0
    else:
        root = os.path.join(args.dir, f"{args.shape}-{args.size_gb:g}gb")
        size_gb = args.size_gb
    if args.shape == "resnet152":
        model_bytes = 4 * sum(math.prod(s) for s in float_shapes(resnet152_shapes()).values())
        args.snapshots = max(2, round(args.size_gb * GB / model_bytes))

    manifest_path = os.path.join(root, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    else:
        if os.path.isdir(root) and os.listdir(root):
            # dd and the naive loop read every file under the run, normscope only the run's own
            raise SystemExit(f"{root} holds files but no manifest.json: not a run this script "
                             "generated; remove it or pass another --dir")  # fmt: skip
        t0 = time.perf_counter()
        manifest = generate(args.shape, size_gb, args.snapshots, root)
        print(f"generated {root} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    file_gb = manifest["file_bytes"] / GB

    compile_package(args.installed)
    measure_dd(root)  # warm the page cache
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    loads = []
    for _ in range(args.repeat):  # rounds, so that a change of the machine's load hits every kind
        for kind in KINDS:
            loads.append(os.getloadavg()[0])
            runs[kind].append(measure(kind, root, args.device, args.installed))
    best = {kind: min(r, key=lambda r: r["seconds"]) for kind, r in runs.items()}
    seconds = {kind: r["seconds"] for kind, r in best.items()}
    peak = {kind: max(r.get("peak_anon_bytes", 0) for r in runs[kind]) for kind in KINDS}
    rate = {kind: file_gb / t for kind, t in seconds.items()}
    summary = {
        "shape": args.shape,
        "snapshots": manifest["snapshots"],
        "tensors_per_snapshot": manifest["tensors"],
        "file_gb": round(file_gb, 3),
        "tensor_gb": round(manifest["tensor_bytes"] / GB, 3),
        "dd_gbps": round(rate["dd"], 2),
        "readinto_gbps": round(rate["raw"], 2),
        "engine_gbps": round(rate["engine"], 2),
        "engine_vs_dd": round(seconds["dd"] / seconds["engine"], 2),
        "open_run_s": round(best["engine"]["open_seconds"], 3),
        "compute_stats_s": round(best["engine"]["engine_seconds"], 3),
        "naive_gbps": round(rate["naive"], 2),
        "engine_vs_naive": round(seconds["naive"] / seconds["engine"], 2),
        "cli_s": round(seconds["cli"], 2),
        "naive_script_s": round(seconds["naive_script"], 2),
        "cli_vs_naive_script": round(seconds["naive_script"] / seconds["cli"], 2),
        "engine_peak_anon_mb": round(peak["engine"] / 2**20),
        "naive_peak_anon_mb": round(peak["naive"] / 2**20),
        "cli_peak_anon_mb": round(peak["cli"] / 2**20),
        "naive_script_peak_anon_mb": round(peak["naive_script"] / 2**20),
        "baseline_anon_mb": round(best["engine"]["baseline_anon_bytes"] / 2**20),
        "normscope": best["engine"]["normscope"],
        "fused_kernel": best["engine"]["fused"],
        "device": args.device,
        "cpus": os.cpu_count(),
        "load_avg_1min": [round(min(loads), 1), round(max(loads), 1)],
    }
    print(json.dumps(summary))
    print(
        f"| {args.shape} | {file_gb:.2f} GB | {manifest['snapshots']} x {manifest['tensors']} "
        f"| {rate['dd']:.2f} | **{rate['engine']:.2f} ({summary['engine_vs_dd']:.2f})** "
        f"| {summary['open_run_s']:.2f} s | {rate['naive']:.2f} ({summary['engine_vs_naive']:.1f}x) "
        f"| **{seconds['cli']:.2f} s** | {seconds['naive_script']:.2f} s "
        f"| {summary['engine_peak_anon_mb']} / {summary['cli_peak_anon_mb']} MB "
        f"| {summary['naive_peak_anon_mb']} / {summary['naive_script_peak_anon_mb']} MB "
        f"| {min(loads):.1f}–{max(loads):.1f} |"
    )


if __name__ == "__main__":
    main()
