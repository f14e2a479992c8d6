"""What `analyze`, `recommend` and `check` do after the engine, on a run of thousands of tensors.

    python benchmarks/bench_analyses.py --dir /tmp/normscope-analyses [--blocks 1700] [--snapshots 24] [--repeat 3]

The run: `--snapshots` `torch.save` checkpoints (`epoch_N.pt`) of a model of `--blocks` blocks, each
an 8x8x3x3 conv and its BatchNorm (weight, bias, running mean and variance, counter), with an SGD
optimizer's state (a momentum buffer per parameter; LR 0.1, x0.1 at three quarters of the run,
weight decay 5e-4, momentum 0.9). The conv weights shrink, then grow again after the LR decay, and
turn a little each epoch, so every analysis has work to do. 1,700 blocks give 8,500 float tensors
per snapshot and 204,000 table rows over 24 snapshots, about 200 MB of files. The run is written
once and kept (`manifest.json` says with what); pass another `--dir` for another size.

Each round runs every stage in one fresh process, in the order the commands run them, so caches
(the bounce detector's noise-only levels, per process) are cold as in a command; a second process
times `analyze_run` as `analyze` calls it. The figures are the best of `--repeat` rounds, wall
seconds and CPU seconds (user + system of the process, all threads: what other jobs on a shared
machine change least):

    engine          `open_run` + `compute_stats`
    table           `build_trajectory` (the trajectory table)
    summaries       `summarize_params` + `summarize_run`
    bounces         `analyze_bounces` (all layers; its noise-only levels simulated here)
    invariance      `scale_invariance` (from the checkpoints, no model)
    equilibrium     `equilibrium_for` (`analyze --equilibrium`, `recommend`, `check`)
    recommendation  `recommend_table` (`recommend`)
    live_frame      `frame_of` (the `watch` numbers every analysis carries)
    check_weights   `weight_stats` (`check`'s non-finite, growth and total-norm numbers)
    csv / json      `to_csv_text` / `analyze_document` + `json_text`, the document
                    `analyze --equilibrium -f json` writes (the equilibrium report is most of it)
    analyze_run     what `analyze` runs after the table (no equilibrium, no recommendation), in a
                    process of its own

Figures go in docs/benchmarks.md ("Analyses at scale") with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = 8
STAGES = ("engine", "table", "summaries", "bounces", "invariance", "equilibrium", "recommendation",
          "live_frame", "check_weights", "csv", "json")


def block_names(blocks: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of the model's state, in `state_dict` order."""
    names: list[tuple[str, tuple[int, ...]]] = []
    for i in range(blocks):
        names.append((f"blocks.{i}.conv.weight", (CHANNELS, CHANNELS, 3, 3)))
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            names.append((f"blocks.{i}.bn.{leaf}", (CHANNELS,)))
        names.append((f"blocks.{i}.bn.num_batches_tracked", ()))
    return names


def _scale(t: float, block: int) -> float:
    """A conv weight's norm over the run (t in [0, 1]): it shrinks, then grows after the decay at 3/4."""
    low = 0.55 + 0.1 * (block % 7) / 6
    if t <= 0.75:
        return 1.0 - (1.0 - low) * t / 0.75
    return low + 0.6 * (t - 0.75)


def _momentum_buffer(name: str, w, start, drift, epoch: int):
    """SGD's buffer at a steady state, b = (g + λw) / (1 − μ): for a conv weight (scale-invariant
    behind its BatchNorm) g is orthogonal to w (the direction it turns in), as the invariance
    evidence expects; for the BatchNorm parameters g is along w."""
    import numpy as np

    if name.endswith("conv.weight"):
        tangent = -np.sin(0.05 * epoch) * start + np.cos(0.05 * epoch) * drift
        grad = tangent - (float((tangent * w).sum()) / float((w * w).sum())) * w
        grad *= 0.01
    else:
        grad = 0.01 * w
    return ((grad + 5e-4 * w) / (1 - 0.9)).astype(np.float32)


def generate(root: str, blocks: int, snapshots: int) -> dict:
    import numpy as np
    import torch

    os.makedirs(root, exist_ok=True)
    names = block_names(blocks)
    rng = np.random.default_rng(0)
    start = {n: rng.standard_normal(s).astype(np.float32) * 0.3 for n, s in names if s}
    drift = {n: rng.standard_normal(s).astype(np.float32) * 0.3 for n, s in names if s}
    params = [n for n, s in names if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    is_param = set(params)
    steps_per_epoch = 50
    for epoch in range(snapshots):
        t = epoch / max(snapshots - 1, 1)
        lr = 0.1 if t <= 0.75 else 0.01
        state: dict[str, torch.Tensor] = {}
        momentum: dict[str, np.ndarray] = {}
        for n, shape in names:
            if not shape:
                state[n] = torch.tensor(epoch * steps_per_epoch)
                continue
            block = int(n.split(".")[1])
            # turn towards `drift` a little each epoch; conv weights follow `_scale`
            turned = np.cos(0.05 * epoch) * start[n] + np.sin(0.05 * epoch) * drift[n]
            turned *= np.linalg.norm(start[n]) / np.linalg.norm(turned)  # only `factor` changes the norm
            factor = _scale(t, block) if n.endswith("conv.weight") else 1.0 + 0.01 * epoch
            state[n] = torch.from_numpy((turned * factor).astype(np.float32))
            if n in is_param:
                momentum[n] = _momentum_buffer(n, state[n].numpy(), start[n], drift[n], epoch)
        buffers = {i: {"momentum_buffer": torch.from_numpy(momentum[n])} for i, n in enumerate(params)}
        groups = [{"lr": lr, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4, "nesterov": False,
                   "maximize": False, "foreach": None, "differentiable": False, "fused": None,
                   "params": list(range(len(params)))}]
        torch.save({"model": state, "optimizer": {"state": buffers, "param_groups": groups},
                    "epoch": epoch, "step": epoch * steps_per_epoch},
                   os.path.join(root, f"epoch_{epoch:03d}.pt"))
    manifest = {"blocks": blocks, "snapshots": snapshots, "float_tensors": sum(1 for _, s in names if s),
                "file_bytes": sum(p.stat().st_size for p in Path(root).glob("epoch_*.pt"))}
    Path(root, "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _timed(results: dict, name: str, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    results[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    return value


def child_stages(root: str) -> dict:
    """Every stage once, in one process, in the order the commands run them."""
    from normscope.analysis.bounce import analyze_bounces
    from normscope.analysis.equilibrium import equilibrium_for, scale_invariance
    from normscope.analysis.recommend import recommend_table
    from normscope.analysis.runner import RunOptions, analyze_run
    from normscope.analysis.summary import summarize_params, summarize_run
    from normscope.analysis.weights import weight_stats
    from normscope.engine import compute_stats
    from normscope.live.frame import frame_of
    from normscope.report.analyze_json import analyze_document
    from normscope.report.escape import json_text
    from normscope.report.table_export import to_csv_text
    from normscope.sources import open_run
    from normscope.trajectory import build_trajectory

    def engine():
        run = open_run(root)
        return run, list(compute_stats(run.snapshots, device="cpu"))

    results: dict = {}
    run, stats = _timed(results, "engine", engine)
    traj = _timed(results, "table", lambda: build_trajectory(
        stats, layout=run.layout, root=run.root, ordering=run.ordering, warnings=run.warnings,
        framework=run.framework))
    _timed(results, "summaries", lambda: (summarize_params(traj), summarize_run(traj)))
    _timed(results, "bounces", lambda: analyze_bounces(traj.table))
    verdicts = _timed(results, "invariance", lambda: scale_invariance(traj))
    options = RunOptions()
    _timed(results, "equilibrium", lambda: equilibrium_for(traj, verdicts, options.hyperparam_overrides(traj)))
    _timed(results, "recommendation", lambda: recommend_table(traj.table))
    # the frame as the runner makes it, and the document, as `analyze --equilibrium` makes them
    result = analyze_run(traj, options, recommendation=False)
    _timed(results, "live_frame", lambda: frame_of(traj, result, recent=options.recent))
    _timed(results, "check_weights", lambda: weight_stats(traj, ("weight",)))
    _timed(results, "csv", lambda: to_csv_text(traj.table))
    _timed(results, "json", lambda: json_text(analyze_document(traj, result)))
    results["rows"] = len(traj.table)
    return results


def child_analyze_run(root: str) -> dict:
    """`analyze_run` as `analyze` calls it, in a process whose caches are cold."""
    from normscope.analysis.runner import RunOptions, analyze_run
    from normscope.api import load_trajectory

    traj = load_trajectory(root, device="cpu")
    results: dict = {}
    _timed(results, "analyze_run", lambda: analyze_run(traj, RunOptions(), equilibrium=False, recommendation=False))
    return results


def run_child(kind: str, root: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--dir", root], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {kind} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="where the run is written (and kept)")
    parser.add_argument("--blocks", type=int, default=1700)
    parser.add_argument("--snapshots", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", choices=("stages", "analyze_run"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps((child_stages if opts.child == "stages" else child_analyze_run)(opts.dir)))
        return
    manifest_path = Path(opts.dir, "manifest.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is None or (manifest["blocks"], manifest["snapshots"]) != (opts.blocks, opts.snapshots):
        print(f"writing the run to {opts.dir} ...", file=sys.stderr)
        manifest = generate(opts.dir, opts.blocks, opts.snapshots)
    best: dict[str, dict[str, float]] = {}
    rows = 0
    for _ in range(opts.repeat):
        stages = run_child("stages", opts.dir)
        rows = stages.pop("rows")
        for part in (stages, run_child("analyze_run", opts.dir)):
            for name, figures in part.items():
                kept = best.setdefault(name, {"wall_s": float("inf"), "cpu_s": float("inf")})
                kept["wall_s"] = min(kept["wall_s"], figures["wall_s"])
                kept["cpu_s"] = min(kept["cpu_s"], figures["cpu_s"])
    out = {"machine": f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs"
                      f" · Python {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d", time.gmtime()), "load": os.getloadavg()[0], "run": manifest,
           "rows": rows, "stages": best}
    print(f"# {out['machine']} · {out['date']} · load {out['load']:.2f} · {manifest['snapshots']} snapshots x "
          f"{manifest['float_tensors']} float tensors, {rows:,} table rows, {manifest['file_bytes'] / 1e6:.0f} MB")
    print(f"{'stage':16} {'wall s':>8} {'cpu s':>8}")
    for name in (*STAGES, "analyze_run"):
        print(f"{name:16} {best[name]['wall_s']:8.2f} {best[name]['cpu_s']:8.2f}")
    if opts.json:
        opts.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
