"""The Dask backend against the local engine on a generated run, on a loopback LocalCluster.

    python benchmarks/bench_dask.py --size-gb 0.5 --shape llm --workers 1 2

Generates the run with `bench_engine.generate` (same shapes) unless `--dir` already holds one,
warms the page cache, then times: the local engine (`open_run` + `compute_stats`), and for each
worker count a `LocalCluster` (processes, 1 thread each) running `compute_stats_dask` — cluster
start-up and the workers' first import reported apart from the run itself. Every Dask result is
checked against the local one (largest relative difference over all fields).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _largest_relative_difference(local, remote) -> float:  # type: ignore[no-untyped-def]
    from normscope.snapshot import ParamStats

    worst = 0.0
    for a, b in zip(local, remote, strict=True):
        for name, pa in a.params.items():
            pb = b.params[name]
            for field in ParamStats.__dataclass_fields__:
                x, y = getattr(pa, field), getattr(pb, field)
                if x is None or y is None:
                    if x is not y:
                        return math.inf
                elif x != y:
                    worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return worst


def _warm_page_cache(root: str) -> None:
    from bench_engine import data_files

    for path in data_files(root):
        with open(path, "rb") as f:
            while f.read(16 * 2**20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--shape", choices=("llm", "resnet"), default="llm")
    ap.add_argument("--snapshots", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dir", default="/tmp/normscope-bench-dask")
    args = ap.parse_args()

    import distributed
    from bench_engine import generate

    from normscope.distributed import compute_stats_dask, plan_items
    from normscope.engine import compute_stats
    from normscope.sources import open_run

    manifest_path = os.path.join(args.dir, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    else:
        manifest = generate(args.shape, args.size_gb, args.snapshots, args.dir)
    gb = manifest["tensor_bytes"] / 1e9
    _warm_page_cache(args.dir)
    print(f"run: {manifest['shape']}, {manifest['snapshots']} snapshots x {manifest['tensors']} tensors, "
          f"{gb:.2f} GB of tensors; {os.cpu_count()} cores")  # fmt: skip

    start = time.perf_counter()
    run = open_run(args.dir)
    local = compute_stats(run.snapshots, device="cpu")
    seconds = time.perf_counter() - start
    print(f"local engine           {seconds:6.2f} s  {gb / seconds:6.2f} GB/s")

    for n in args.workers:
        start = time.perf_counter()
        with (
            distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                     dashboard_address=None, silence_logs=logging.CRITICAL) as cluster,
            distributed.Client(cluster) as client,
        ):  # fmt: skip
            client.run(
                lambda: (
                    __import__("normscope.distributed.worker")
                    and __import__("torch")
                    and None
                )
            )
            ready = time.perf_counter() - start
            start = time.perf_counter()
            run = open_run(args.dir)
            tasks = len(plan_items(run.snapshots, layout=run.layout))
            remote = compute_stats_dask(run, client=client, device="cpu")
            seconds = time.perf_counter() - start
        worst = _largest_relative_difference(local, remote)
        print(f"dask, {n} worker(s)     {seconds:6.2f} s  {gb / seconds:6.2f} GB/s  "
              f"({tasks} tasks; cluster start + imports {ready:.1f} s; "
              f"largest relative difference to local {worst:.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
