"""The tracker example of docs/live.md: 2 epochs of the digits BN-CNN with normscope.track, then read back.

Needs the sample runs' data set: `pip install 'normscope[samples]'` (scikit-learn's bundled digits).
Run from the repository root (the model and data come from `sample_runs/`):

    PYTHONPATH=. python docs/examples/track_demo.py [LOG]

The log goes to LOG, by default `track.jsonl` in a new temporary directory (printed), never into the
checkout.
"""
import sys
import tempfile
from pathlib import Path

import torch

import normscope
from normscope.live import read_jsonl_log

try:
    from sample_runs.digits import load_digits_split, shuffled_batches
    from sample_runs.models import bn_cnn
except ImportError as exc:  # scikit-learn missing, or not run from the repository root
    sys.exit(f"track_demo: {exc}; install normscope[samples] and run from the repository root "
             "with PYTHONPATH=.")

LOG = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="normscope-demo-")) / "track.jsonl"

torch.manual_seed(0)
data = load_digits_split()
model = bn_cnn()
opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
gen = torch.Generator().manual_seed(1)
with normscope.track(model, opt, LOG, every=10) as tracker:
    for epoch in range(2):
        for i, (x, y) in enumerate(shuffled_batches(data.train_x, data.train_y, 64, gen)):
            tracker.set_epoch(epoch + (i + 1) / 23)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
print(tracker)
run = read_jsonl_log(LOG)
last = run.stats[-1]
print(last.meta.step, round(last.meta.epoch, 3), last.meta.param_groups[0].lr)
for name in ("block2.conv.weight", "head.weight"):
    p = last.params[name]
    cos = p.grad_dot / (p.norm_sq_before * p.grad_norm_sq) ** 0.5
    print(f"{name}: |w|²={p.norm_sq:.4f} |g|²={p.grad_norm_sq:.3e} cos(w,g)={cos:+.1e} |Δw|²={p.update_norm_sq:.3e}")
