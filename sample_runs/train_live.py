"""Regenerate the committed live log:  python sample_runs/train_live.py --out sample_runs

The same training as run ``digits_bn_cnn_sgd`` (BN-CNN, SGD lr 0.2 / momentum 0.9 / weight decay 1e-3,
augmentation, LR ×0.1 at epoch 45 of 60, 23 steps per epoch) with `normscope.track` on instead of
per-epoch checkpoints, logging every optimizer step to ``digits_bn_cnn_live/track.jsonl``.
Epochs in the log count completed epochs after each step (the last step of epoch 1 is 1.0), as the
checkpoints do. Runtime on one CPU thread of a loaded 2-core machine: about a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``sample_runs`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import normscope
from sample_runs.digits import load_digits_split, steps_per_epoch
from sample_runs.sgd_run import SGDRunConfig, seeded_training, train_epoch

LIVE_RUN = "digits_bn_cnn_live"
LOG_NAME = "track.jsonl"


def train_live(out_dir: Path, config: SGDRunConfig, every: int = 1) -> Path:
    """Train with the tracker on; return the log's path."""
    data = load_digits_split()
    run = seeded_training(config)
    model, opt = run.model, run.opt
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.decay_epochs),
                                                 gamma=config.decay_factor)
    per_epoch = steps_per_epoch(data.train_x.size(0), config.batch_size)
    log = Path(out_dir) / LIVE_RUN / LOG_NAME
    with normscope.track(model, opt, log, every=every, run_id=LIVE_RUN) as tracker:
        for epoch in range(config.epochs):
            train_epoch(run, data, config,
                        before_batch=lambda i, e=epoch: tracker.set_epoch(e + (i + 1) / per_epoch))
            sched.step()
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic, and fastest for a model this small
    start = time.perf_counter()
    log = train_live(args.out, SGDRunConfig(), every=args.every)
    print(f"wrote {log} ({log.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
