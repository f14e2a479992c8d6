"""Tracker overhead: training step time with and without `normscope.track`, on CPU.

The model is ResNet-18 written out by hand (torchvision is not installable here) in its CIFAR form
(3x3 stem, no max-pool: 11.2 M parameters, the same 62 parameter tensors as ImageNet ResNet-18's
body), trained with SGD + momentum + weight decay on random 32x32 inputs — the data do not change
the cost of a step. Modes are interleaved in rounds so drift in machine load hits them alike, and
the median step time per mode is reported. The direct cost of one logged step (both hooks) is
timed separately, which is the figure least sensitive to a noisy, shared machine.

    PYTHONPATH=. python benchmarks/bench_tracker.py [--rounds 4] [--steps 20] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import normscope


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _timed_steps(model, opt, x, y, steps: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each step. On a shared machine the CPU time of this process
    (one intra-op thread) is the stable figure; wall time also counts waiting for a core."""
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        _step(model, opt, x, y)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def _hook_cost(model, opt, x, y, log: Path, repeats: int) -> float:
    """CPU seconds spent in the tracker per logged step (before- and after-step measurement + write)."""
    tracker = normscope.track(model, opt, log, every=1)
    _step(model, opt, x, y)  # buffers allocated
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    costs = []
    for _ in range(repeats):
        start = time.process_time()
        tracker._measure_before()
        tracker._write(tracker._record())
        costs.append(time.process_time() - start)
    tracker.close()
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="steps per mode per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNet18()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ResNet-18 (CIFAR form): {n_params / 1e6:.2f} M parameters, "
          f"{len(list(model.parameters()))} tensors; batch {args.batch}x3x32x32; "
          f"{args.threads} thread(s); torch {torch.__version__}")
    _timed_steps(model, opt, x, y, 3)  # warm-up

    modes = {"off": None, "every=10": 10, "every=1": 1}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(modes.items()) if r % 2 == 0 else list(modes.items())[::-1]
            for mode, every in order:
                tracker = (normscope.track(model, opt, Path(tmp) / f"{r}-{every}.jsonl", every=every)
                           if every else None)
                w, c = _timed_steps(model, opt, x, y, args.steps)
                wall[mode] += w
                cpu[mode] += c
                if tracker is not None:
                    tracker.close()
        hook = _hook_cost(model, opt, x, y, Path(tmp) / "hook.jsonl", repeats=10)

    base_wall, base_cpu = statistics.median(wall["off"]), statistics.median(cpu["off"])
    result = {"params": n_params, "batch": args.batch, "threads": args.threads,
              "median_step_wall_s": {m: statistics.median(t) for m, t in wall.items()},
              "median_step_cpu_s": {m: statistics.median(t) for m, t in cpu.items()},
              "logged_step_cpu_s": hook}
    for mode in modes:
        mw, mc = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"{mode:>9}: median step CPU {mc * 1e3:7.1f} ms ({(mc / base_cpu - 1) * 100:+5.1f}% vs off)"
              f", wall {mw * 1e3:7.1f} ms ({(mw / base_wall - 1) * 100:+5.1f}%), {len(cpu[mode])} steps")
    print(f"tracker CPU per logged step: {hook * 1e3:.1f} ms = {hook / base_cpu * 100:.1f}% of a step "
          f"at every=1, {hook / base_cpu * 10:.2f}% amortised at every=10")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
