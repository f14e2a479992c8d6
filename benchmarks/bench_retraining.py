"""Retraining benchmark: does following normscope's advice train as well as a hand-made schedule?

Retrains the shipped BN-CNN digits configuration (`sample_runs/sgd_run.py`: SGD, momentum 0.9, lr 0.2,
weight decay 1e-3, batch 64, augmentation, 60-epoch budget) at several seeds with each schedule:

* ``constant``   constant LR (also the pilot run the offline advice is made from);
* ``cosine``     cosine annealing to 0 over the budget (per epoch);
* ``recommend``  `normscope.analysis.recommend.recommend` on the seed's constant-LR pilot, then
                 MultiStepLR at its milestones;
* ``exact``      MultiStepLR at the exact ABEL rule's decays on that pilot (plus the budget decay);
* ``online``     `normscope.ABEL` in the loop, its default (robust, causal) rule;
* ``online-exact`` `normscope.ABEL(rule="exact")` in the loop (the paper's rule).

Every run's per-epoch squared norm, LR decays and final test accuracy go into a JSON file, one entry
per (schedule, seed), written as each run finishes; a rerun skips the entries already there, so the
benchmark can be run in parts. ``--trajectories`` also writes the constant-LR runs' norm series, the
real-training data of the seed-repeat test (`tests/data/bn_cnn_constant_lr_norms.json`).

    PYTHONPATH=. nice python benchmarks/bench_retraining.py --seeds 0 1 2 3 4 \
        --schedules constant cosine recommend exact online --out benchmarks/retraining.json \
        --trajectories tests/data/bn_cnn_constant_lr_norms.json
    PYTHONPATH=. python benchmarks/bench_retraining.py --out benchmarks/retraining.json --table
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sample_runs.cpu_kernels import pin_cpu_kernels

pin_cpu_kernels()

import torch  # noqa: E402

from sample_runs.digits import accuracy, load_digits_split  # noqa: E402
from sample_runs.sgd_run import SGDRunConfig, seeded_training, train_epoch, weight_norm_sq  # noqa: E402

SCHEDULES = ("constant", "cosine", "recommend", "exact", "online", "online-exact")
LABELS = {
    "constant": "constant LR",
    "cosine": "cosine to 0",
    "recommend": "`normscope recommend` on the constant-LR pilot, then MultiStepLR",
    "exact": "the exact ABEL rule's epochs on the pilot, then MultiStepLR",
    "online": "`normscope.ABEL` in the loop (default, robust rule)",
    "online-exact": "`normscope.ABEL(rule=\"exact\")` in the loop",
}
DECAY_FACTOR = 0.1


def train(config: SGDRunConfig, make_scheduler, data) -> dict:
    """One run of `sample_runs.sgd_run`'s loop with the given scheduler (stepped once per epoch)."""
    run = seeded_training(config)
    model, opt = run.model, run.opt
    sched = make_scheduler(opt, model)
    norms = [weight_norm_sq(model.state_dict())]
    lrs: list[float] = []
    accs = [accuracy(model, data.test_x, data.test_y)]
    start = time.perf_counter()
    for _ in range(config.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        train_epoch(run, data, config)
        if sched is not None:
            sched.step()
        norms.append(weight_norm_sq(model.state_dict()))
        accs.append(accuracy(model, data.test_x, data.test_y))
    decays = [e for e in range(1, config.epochs) if lrs[e] < lrs[e - 1]]  # completed epochs at each decay
    return {"norm_sq": norms, "lr": lrs, "test_accuracy": accs, "final_test_accuracy": accs[-1],
            "decay_epochs": decays, "seconds": round(time.perf_counter() - start, 1)}


def pilot_series(pilot: dict, config: SGDRunConfig, steps_per_epoch: int):
    """The constant-LR pilot's norms as the end-of-epoch series `recommend` reads from checkpoints."""
    from normscope.analysis.epochs import EpochSeries

    n = len(pilot["norm_sq"])
    return EpochSeries(
        epochs=tuple(range(n)), norm_sq=tuple(pilot["norm_sq"]),
        steps=tuple(e * steps_per_epoch for e in range(n)), lr=(math.nan,) + tuple(pilot["lr"]),
        snapshots=tuple(range(n)), include_kinds=("weight",), n_tensors=4, epoch_source="recorded epoch",
        steps_per_epoch=float(steps_per_epoch), optimizer="SGD", weight_decay=config.weight_decay,
        momentum=config.momentum, beta1=math.nan, layers=(),
    )


def milestones(kind: str, pilot: dict, config: SGDRunConfig, steps_per_epoch: int) -> list[int]:
    from normscope.analysis.recommend import recommend

    rec = recommend(pilot_series(pilot, config, steps_per_epoch), decay_factor=DECAY_FACTOR,
                    total_epochs=config.epochs)
    return list(rec.decay_epochs if kind == "recommend" else rec.exact_decay_epochs)


def scheduler_factory(kind: str, config: SGDRunConfig, steps: list[int] | None):
    import normscope

    if kind == "constant":
        return lambda opt, model: None
    if kind == "cosine":
        return lambda opt, model: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if kind in ("recommend", "exact"):
        return lambda opt, model: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=DECAY_FACTOR)
    rule = {"online": {}, "online-exact": {"rule": "exact"}}[kind]
    return lambda opt, model: normscope.ABEL(opt, model, decay_factor=DECAY_FACTOR,
                                             total_epochs=config.epochs, **rule)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    results.update(machine=f"{platform.processor() or platform.machine()}, {platform.system()}",
                   torch=torch.__version__.split("+")[0], threads=1)
    data = load_digits_split()
    spe = -(-data.train_x.size(0) // SGDRunConfig().batch_size)
    for kind in args.schedules:
        for seed in args.seeds:
            key = f"{kind}/{seed}"
            if key in results["runs"]:
                continue
            config = SGDRunConfig(seed=seed, decay_epochs=(), epochs=args.epochs)
            steps = None
            if kind in ("recommend", "exact"):
                pilot = results["runs"].get(f"constant/{seed}")
                if pilot is None:
                    print(f"skip {key}: no constant-LR pilot for seed {seed}", file=sys.stderr)
                    continue
                steps = milestones(kind, pilot, config, spe)
            out = train(config, scheduler_factory(kind, config, steps), data)
            out["milestones"] = steps
            results["runs"][key] = out
            results["date"] = time.strftime("%Y-%m-%d", time.gmtime())
            args.out.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{key}: acc {out['final_test_accuracy']:.4f} decays {out['decay_epochs']} "
                  f"({out['seconds']} s)", flush=True)
    if args.trajectories:
        pilots = {k.split("/")[1]: v for k, v in results["runs"].items() if k.startswith("constant/")}
        args.trajectories.parent.mkdir(parents=True, exist_ok=True)
        args.trajectories.write_text(json.dumps({
            "generated_by": "benchmarks/bench_retraining.py --schedules constant --trajectories ...",
            "config": {"model": "sample_runs.models:bn_cnn", "optimizer": "SGD", "lr": 0.2,
                       "weight_decay": 1e-3, "momentum": 0.9, "batch_size": 64, "augment": True,
                       "epochs": args.epochs, "schedule": "constant", "steps_per_epoch": spe,
                       "torch": torch.__version__.split("+")[0], "threads": 1},
            "norm_sq": {seed: [round(v, 6) for v in pilots[seed]["norm_sq"]] for seed in sorted(pilots, key=int)},
        }, indent=1) + "\n")


def table(results: dict) -> str:
    runs = results["runs"]
    lines = ["| schedule | seeds | test accuracy (%), mean ± std | decay epochs per seed |", "|---|---:|---|---|"]
    for kind in SCHEDULES:
        done = sorted((int(k.split("/")[1]), v) for k, v in runs.items() if k.split("/")[0] == kind)
        if not done:
            continue
        accs = [100 * v["final_test_accuracy"] for _, v in done]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        decays = "every epoch" if kind == "cosine" else "; ".join(
            ",".join(map(str, v["decay_epochs"])) or "–" for _, v in done)
        lines.append(f"| {LABELS[kind]} | {len(done)} | {statistics.mean(accs):.2f} ± {std:.2f} | {decays} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file of results (resumed if present)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES[:5]))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--trajectories", type=Path, help="also write the constant-LR norm series here")
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    run(args)
    print(table(json.loads(args.out.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
