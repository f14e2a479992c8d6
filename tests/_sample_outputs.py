"""The machine-readable outputs of every sample run, and their digests.

The JSON and CSV that `analyze`, `recommend` and `check` write for the shipped sample runs are a
contract with every script that reads them: a change of layout inside the package must leave them
byte-identical. `tests/data/sample_outputs.sha256` holds their SHA-256 digests;
`tests/test_sample_outputs.py` compares. When an output is meant to change, record it anew:

    python tests/_sample_outputs.py --write
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGESTS = ROOT / "tests" / "data" / "sample_outputs.sha256"

_CHECKPOINT_RUNS = ("digits_bn_cnn_sgd", "digits_bn_cnn_lightning", "digits_ln_transformer_adamw")
_LOG_RUNS = ("digits_bn_cnn_live/track.jsonl",)


def commands() -> dict[str, list[str]]:
    """Output name -> normscope arguments; paths are relative to the repository root."""
    out: dict[str, list[str]] = {}
    for run in _CHECKPOINT_RUNS + _LOG_RUNS:
        path = f"sample_runs/{run}"
        name = run.split("/")[0]
        out[f"{name}.analyze.json"] = ["analyze", path, "-f", "json"]
        out[f"{name}.analyze.csv"] = ["analyze", path, "-f", "csv"]
        out[f"{name}.analyze-equilibrium.json"] = ["analyze", path, "-f", "json", "--equilibrium"]
        out[f"{name}.recommend.json"] = ["recommend", path, "-f", "json"]
        out[f"{name}.recommend.csv"] = ["recommend", path, "-f", "csv"]
        out[f"{name}.check.json"] = ["check", path, "-f", "json"]
    for run in _CHECKPOINT_RUNS:
        path = f"sample_runs/{run}"
        out[f"{run}.analyze-rows.json"] = ["analyze", path, "-f", "json", "--granularity", "row"]
    return out


def run_one(arguments: list[str]) -> bytes:
    """One command's stdout, run as a user runs it from the repository root, on the CPU."""
    env = dict(os.environ, COLUMNS="120", NO_COLOR="1")
    # check exits 1 where a rule fails; its report is still the output under test
    done = subprocess.run(
        [sys.executable, "-m", "normscope", *arguments, "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, check=False,
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"normscope {' '.join(arguments)} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def digests() -> dict[str, str]:
    return {name: hashlib.sha256(run_one(args)).hexdigest() for name, args in commands().items()}


def recorded() -> dict[str, str]:
    lines = DIGESTS.read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line)}


def main(argv: list[str]) -> int:
    current = digests()
    if "--write" in argv:
        DIGESTS.write_text("".join(f"{d}  {n}\n" for n, d in sorted(current.items())), encoding="utf-8")
        print(f"recorded {len(current)} digests in {DIGESTS.relative_to(ROOT)}")
        return 0
    differ = sorted(n for n, d in current.items() if recorded().get(n) != d)
    for name in differ:
        print(f"differs: {name}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
