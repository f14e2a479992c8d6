"""Regenerate the committed sample runs:  python sample_runs/train.py --out sample_runs

Trains on scikit-learn's bundled digits (no download; ``pip install 'normscope[samples]'``), writes one
directory per run under ``--out`` plus ``manifest.json`` (hyper-parameters, checkpoint names and the
per-epoch measurements the tests and README rely on), and prints the README tables on stdout.
Runtime on one CPU thread of a loaded 2-core machine: ≈ 45 s (sgd), ≈ 15 s (adamw), ≈ 5 s (lightning),
plus ≈ 10 s of imports.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``sample_runs`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sample_runs.cpu_kernels import pin_cpu_kernels

pin_cpu_kernels()  # before torch runs anything: the committed runs use the AVX2 kernels

import torch  # noqa: E402

from sample_runs.digits import TEST_SIZE, load_digits_split
from sample_runs.hf_run import AdamWRunConfig, AdamWRunResult, train_adamw_run
from sample_runs.sgd_run import SGDRunConfig, SGDRunResult, train_sgd_run

SGD_RUN = "digits_bn_cnn_sgd"
ADAMW_RUN = "digits_ln_transformer_adamw"
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1


def _plain(value):
    """JSON-safe: tuples → lists, NaN → None (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def sgd_manifest_entry(result: SGDRunResult) -> dict:
    from sample_runs.sgd_run import checkpoint_name

    return _plain(
        {
            "layout": "torch.save per epoch",
            "model": "sample_runs.models:bn_cnn",
            "optimizer": "SGD",
            "config": asdict(result.config),
            "steps_per_epoch": result.steps_per_epoch,
            "num_params": result.num_params,
            "seconds": round(result.seconds, 1),
            "checkpoints": [checkpoint_name(e.epoch) for e in result.epochs],
            "epochs": [asdict(e) for e in result.epochs],
        }
    )


def adamw_manifest_entry(result: AdamWRunResult) -> dict:
    spe = result.steps_per_epoch
    train_logs = [e for e in result.log_history if "loss" in e]

    def epoch_logs(epoch: int) -> list[dict]:
        return [e for e in train_logs if (epoch - 1) * spe < e["step"] <= epoch * spe]

    return _plain(
        {
            "layout": "hf_trainer",
            "model": "sample_runs.models:ln_transformer",
            "optimizer": "AdamW",
            "config": asdict(result.config),
            "steps_per_epoch": spe,
            "num_params": result.num_params,
            "seconds": round(result.seconds, 1),
            "checkpoints": result.checkpoints,
            "optimizer_param_names": result.optimizer_param_names,
            "epochs": [
                {
                    "epoch": epoch,
                    "step": epoch * spe,
                    # last logged LR of the epoch, and the mean of its logged losses (every logging_steps)
                    "lr": epoch_logs(epoch)[-1]["learning_rate"],
                    "train_loss": sum(e["loss"] for e in epoch_logs(epoch)) / len(epoch_logs(epoch)),
                    "test_accuracy": acc,
                    "weight_norm_sq": nsq,
                }
                for epoch, acc, nsq in zip(
                    range(1, 1 + len(result.checkpoints)), result.eval_accuracy, result.weight_norm_sq
                )
            ],
        }
    )


def markdown_table(entry: dict) -> str:
    """The per-epoch table pasted into sample_runs/README.md (the tests parse it back)."""
    rows = [
        "| epoch | step | lr | train loss | Σ‖w‖² (ndim>1) | test acc |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entry["epochs"]:
        lr = "–" if e.get("lr") is None else f"{e['lr']:.3g}"
        loss = "–" if e.get("train_loss") is None else f"{e['train_loss']:.4f}"
        rows.append(
            f"| {e['epoch']} | {e['step']} | {lr} | {loss} | {e['weight_norm_sq']:.2f} | {e['test_accuracy']:.4f} |"
        )
    return "\n".join(rows)


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output directory")
    parser.add_argument(
        "--runs", nargs="+", choices=("sgd", "adamw", "lightning"), default=["sgd", "adamw", "lightning"]
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"runs": {}}
    manifest.update(
        schema=MANIFEST_SCHEMA,
        generated_by="python sample_runs/train.py --out sample_runs",
        torch_version=torch.__version__.split("+")[0],
        threads=args.threads,
        data={"dataset": "sklearn.datasets.load_digits", "test_size": TEST_SIZE, "split_seed": 0},
    )
    data = load_digits_split()
    if "sgd" in args.runs:
        result = train_sgd_run(_fresh_dir(args.out / SGD_RUN), SGDRunConfig(), data)
        manifest["runs"][SGD_RUN] = sgd_manifest_entry(result)
    if "adamw" in args.runs:
        result = train_adamw_run(_fresh_dir(args.out / ADAMW_RUN), AdamWRunConfig(), data)
        manifest["runs"][ADAMW_RUN] = adamw_manifest_entry(result)
    if "lightning" in args.runs:
        from sample_runs.lightning_run import (
            LIGHTNING_RUN,
            LightningRunConfig,
            lightning_manifest_entry,
            train_lightning_run,
        )

        result = train_lightning_run(_fresh_dir(args.out / LIGHTNING_RUN), LightningRunConfig(), data)
        manifest["runs"][LIGHTNING_RUN] = _plain(lightning_manifest_entry(result))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    for name, entry in manifest["runs"].items():
        print(f"\n### {name}  ({entry['seconds']} s)\n\n{markdown_table(entry)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
