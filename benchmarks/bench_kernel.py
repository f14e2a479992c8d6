"""The fused kernel alone, per dtype and set of streams, over fresh private mappings of files.

    python benchmarks/bench_kernel.py FILE [FILE FILE] --mb 200 --dtype bfloat16 float32 float16

Each stream is `--mb` MiB of one of the files (from its 4 KiB offset on: the bytes are reinterpreted
as the dtype, their values do not change the kernel's speed), mapped privately and read-only as
the engine maps checkpoints, so every page is faulted in by the kernel as in a run. One call on
one thread; the best of `--repeat`, as wall time and as the thread's CPU time (which the other
jobs of a shared machine change less). Files should be in the page cache (read them once).
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

import numpy as np

from normscope.engine.fused import dtype_codes, fused_kernel

_ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
_STREAMS = ("weights", "+ previous", "+ previous + momentum", "+ previous + momentum + 2nd moment")


def reduce_mapped(files: list[str], nbytes: int, dtype: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one kernel call over `nbytes` of each file, mapped now."""
    kernel = fused_kernel()
    if kernel is None:
        raise SystemExit("this install has no fused kernel")
    fds = [os.open(f, os.O_RDONLY) for f in files]
    wall, cpu = time.perf_counter(), time.thread_time()
    maps = [mmap.mmap(fd, nbytes + mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            for fd in fds]  # fmt: skip
    views = [np.frombuffer(m, dtype=np.uint8) for m in maps]
    count = nbytes // _ITEMSIZE[dtype]
    code = dtype_codes()[dtype]
    numel = np.array([count], dtype=np.int64)
    streams = [(np.array([v.ctypes.data + mmap.PAGESIZE], dtype=np.int64),
                np.array([code], dtype=np.int32)) for v in views]  # fmt: skip
    out = np.zeros((1, 6))
    kernel.reduce(1, numel.ctypes.data,
                  [(p.ctypes.data, c.ctypes.data) for p, c in streams] + [None] * (4 - len(files)),
                  out.ctypes.data)  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    del views, streams
    for m in maps:
        m.close()
    for fd in fds:
        os.close(fd)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="1 to 4 files, one per stream (reused in turn)")
    ap.add_argument("--mb", type=int, default=200, help="MiB read from each file")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "float16"],
                    choices=sorted(_ITEMSIZE))  # fmt: skip
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3, 4])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    nbytes = args.mb * 2**20
    short = [f for f in args.files if os.path.getsize(f) < nbytes + mmap.PAGESIZE]
    if short:
        ap.error(f"--mb {args.mb} needs files of more than {args.mb} MiB + 4 KiB: "
                 f"{short[0]} has {os.path.getsize(short[0]) / 2**20:.1f} MiB")
    for dtype in args.dtype:
        for streams in args.streams:
            files = [args.files[i % len(args.files)] for i in range(streams)]
            runs = [reduce_mapped(files, nbytes, dtype) for _ in range(args.repeat)]
            wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            total = streams * nbytes / 1e9
            print(f"{dtype:9s} {_STREAMS[streams - 1]:36s} {total / wall:6.2f} GB/s wall "
                  f"{total / cpu:6.2f} GB/s CPU  (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
