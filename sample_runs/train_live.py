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
import torch.nn.functional as F

import normscope
from sample_runs.digits import (
    load_digits_split,
    random_affine,
    shuffled_batches,
    steps_per_epoch,
)
from sample_runs.models import bn_cnn
from sample_runs.sgd_run import SGDRunConfig

LIVE_RUN = "digits_bn_cnn_live"
LOG_NAME = "track.jsonl"


def train_live(out_dir: Path, config: SGDRunConfig, every: int = 1) -> Path:
    """Train with the tracker on; return the log's path."""
    data = load_digits_split()
    torch.manual_seed(config.seed)
    model = bn_cnn()
    batch_gen = torch.Generator().manual_seed(config.seed + 1)
    augment_gen = torch.Generator().manual_seed(config.seed + 2)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.decay_epochs),
                                                 gamma=config.decay_factor)
    per_epoch = steps_per_epoch(data.train_x.size(0), config.batch_size)
    log = Path(out_dir) / LIVE_RUN / LOG_NAME
    with normscope.track(model, opt, log, every=every, run_id=LIVE_RUN) as tracker:
        for epoch in range(config.epochs):
            batches = shuffled_batches(data.train_x, data.train_y, config.batch_size, batch_gen)
            for i, (x, y) in enumerate(batches):
                tracker.set_epoch(epoch + (i + 1) / per_epoch)
                if config.augment:
                    x = random_affine(x, augment_gen)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
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
