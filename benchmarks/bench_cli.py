"""Whole-command timings: start-up imports per command, `analyze` on the sample runs, and the
`watch` refresh on the sample tracker log.

    PYTHONPATH=$PWD python benchmarks/bench_cli.py [--repeat 3] [--json out.json]

* commands: best of `--repeat` whole processes (`python -m normscope ...`, output to /dev/null)
  after one untimed run: wall time, CPU time (user + system of the child: what other jobs on a
  shared machine change least) and peak resident memory (ru_maxrss of the child);
* imports: `python -X importtime`, the sum of the top-level imports' cumulative times, and
  whether torch / pandas / matplotlib were imported at all;
* watch refresh: the sample log's first records are read, then the rest arrive a few at a time
  (appended to a copy of the log); each refresh is the time from `poll()` to the rendered frame,
  what `normscope watch` does at every interval (its frame function, with its default options).
  Median and worst wall time over the refreshes, and the median CPU time of this process.

The children run with bytecode cached as an installed package has it (as `bench_engine.py`'s do):
`PYTHONDONTWRITEBYTECODE` is dropped from their environment, which would have every run compile
normscope's modules again, and the cache is written under the benchmark's temporary folder
(`PYTHONPYCACHEPREFIX`), not beside the sources; the untimed run fills it.

Figures go in docs/benchmarks.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_runs"
LOG = SAMPLES / "digits_bn_cnn_live" / "track.jsonl"

COMMANDS = {
    "--help": ["--help"],
    "analyze (torch.save run)": ["analyze", str(SAMPLES / "digits_bn_cnn_sgd")],
    "analyze -f json (torch.save run)": ["analyze", str(SAMPLES / "digits_bn_cnn_sgd"), "-f", "json"],
    "analyze -f csv (torch.save run)": ["analyze", str(SAMPLES / "digits_bn_cnn_sgd"), "-f", "csv"],
    "analyze (HF Trainer run)": ["analyze", str(SAMPLES / "digits_ln_transformer_adamw")],
    "analyze (tracker log)": ["analyze", str(LOG)],
    "analyze -f csv (tracker log)": ["analyze", str(LOG), "-f", "csv"],
    "recommend (torch.save run)": ["recommend", str(SAMPLES / "digits_bn_cnn_sgd")],
    "check (torch.save run)": ["check", str(SAMPLES / "digits_bn_cnn_sgd")],
    "watch --once (tracker log)": ["watch", str(LOG), "--once"],
    "report (torch.save run)": ["report", str(SAMPLES / "digits_bn_cnn_sgd"), "-o", "{tmp}/report.md"],
}
HEAVY = ("torch", "pandas", "matplotlib", "pyarrow", "scipy")


def _env(tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("COLUMNS", "160")
    return env


def _args(args: list[str], tmp: str) -> list[str]:
    return [a.replace("{tmp}", tmp) for a in args]


def time_command(args: list[str], repeat: int, tmp: str) -> tuple[float, float, float]:
    """(best wall seconds, least CPU seconds, peak RSS in MiB of the largest run) over `repeat`
    processes."""
    best, cpu, peak = float("inf"), float("inf"), 0.0
    # untimed: fills the bytecode cache (the timed runs check the exit status)
    subprocess.run([sys.executable, "-m", "normscope", *_args(args, tmp)], env=_env(tmp),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "normscope", *_args(args, tmp)], env=_env(tmp),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, usage.ru_utime + usage.ru_stime)
        peak = max(peak, usage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            raise SystemExit(f"normscope {' '.join(args)} failed")
    return best, cpu, peak


def import_cost(args: list[str], tmp: str) -> tuple[float, list[str]]:
    """(seconds of imports, the heavy packages imported) for one run of the command."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "normscope", *_args(args, tmp)],
                          env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    total, heavy = 0, set()
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        if len(m.group(2)) == 1:  # a top-level import
            total += int(m.group(1))
        top = m.group(3).split(".")[0]
        if top in HEAVY:
            heavy.add(top)
    return total / 1e6, sorted(heavy)


def watch_refresh(first: int = 1000, batch: int = 23) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of this process) per refresh while the sample log grows by
    `batch` records (one epoch) at a time."""
    sys.path.insert(0, str(ROOT))
    # lazy: the checkout's normscope, once ROOT is on sys.path
    from normscope.analysis.runner import RunOptions
    from normscope.cli.watch import frame_maker
    from normscope.live.source import LiveSource

    lines = LOG.read_bytes().splitlines(keepends=True)
    header, records = lines[0], lines[1:]
    times: list[float] = []
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "track.jsonl"
        log.write_bytes(header + b"".join(records[:first]))
        source = LiveSource(log)
        # the options and frame function `normscope watch LOG` builds (its defaults)
        frame = frame_maker(source, RunOptions(probe=False, recent=5))
        frame(source.poll())
        for at in range(first, len(records), batch):
            with open(log, "ab") as f:
                f.write(b"".join(records[at:at + batch]))
            start, start_cpu = time.perf_counter(), time.process_time()
            trajectory = source.poll()
            if trajectory is not None:
                frame(trajectory)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", help="regex: only the commands it matches")
    opts = parser.parse_args()
    out: dict[str, object] = {"machine": f"{platform.node()} · {platform.processor() or platform.machine()}"
                              f" · {os.cpu_count()} CPUs · Python {platform.python_version()}",
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commands": {}}
    print(f"# {out['machine']} · {out['date']} · load {os.getloadavg()[0]:.2f}")
    print(f"{'command':36} {'best s':>7} {'cpu s':>6} {'peak MiB':>9} {'imports s':>10}  heavy imports")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in COMMANDS.items():
            if opts.only and not re.search(opts.only, name):
                continue
            best, cpu_s, peak = time_command(args, opts.repeat, tmp)
            imports, heavy = import_cost(args, tmp)
            out["commands"][name] = {"best_s": best, "cpu_s": cpu_s, "peak_mib": peak, "imports_s": imports,
                                     "heavy": heavy, "load": os.getloadavg()[0]}  # fmt: skip
            print(f"{name:36} {best:7.2f} {cpu_s:6.2f} {peak:9.0f} {imports:10.2f}  {', '.join(heavy) or '-'}")
    times, cpu = watch_refresh()
    out["watch_refresh_s"] = {"median": statistics.median(times), "max": max(times), "count": len(times),
                              "cpu_median": statistics.median(cpu), "load": os.getloadavg()[0]}
    print(f"watch refresh on {LOG.name} (+23 records each): median {statistics.median(times) * 1000:.0f} ms, "
          f"worst {max(times) * 1000:.0f} ms over {len(times)} refreshes (CPU median "
          f"{statistics.median(cpu) * 1000:.0f} ms; load {os.getloadavg()[0]:.2f})")
    if opts.json:
        opts.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
