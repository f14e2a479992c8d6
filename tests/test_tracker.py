"""The tracker on real training (digits), checked against a direct float64 computation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from live_helpers import batches, digits_tensors, one_thread, small_bn_cnn
from torch import nn

import normscope
from normscope.errors import BadInputError
from normscope.live.log import LogFollower, read_jsonl_log
from normscope.trajectory import build_trajectory


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _direct(before: list[torch.Tensor], grads: list[torch.Tensor | None],
            after: list[torch.Tensor]) -> dict[str, list[float]]:
    d = lambda t: t.double()
    out: dict[str, list[float]] = {"w_sq": [], "w0_sq": [], "g_sq": [], "wg": [], "dw_sq": []}
    for w0, g, w1 in zip(before, grads, after):
        out["w_sq"].append(float(d(w1).pow(2).sum()))
        out["w0_sq"].append(float(d(w0).pow(2).sum()))
        out["g_sq"].append(math.nan if g is None else float(d(g).pow(2).sum()))
        out["wg"].append(math.nan if g is None else float((d(w0) * d(g)).sum()))
        out["dw_sq"].append(float((d(w1) - d(w0)).pow(2).sum()))
    return out


def _close(a: float, b: float, scale: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * scale + 1e-12


def test_digits_training_read_while_written_matches_direct_computation(tmp_path):
    torch.manual_seed(0)
    x, y = digits_tensors()
    model = small_bn_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    path = tmp_path / "track.jsonl"
    tracker = normscope.track(model, opt, path, every=3, run_id="digits-test")

    follower = LogFollower(path)
    seen: dict[int, dict] = {}
    seen_lock = threading.Condition()
    stop = threading.Event()

    def follow() -> None:  # a second thread reading the log while training writes it
        while not stop.is_set():
            new = follower.poll()
            with seen_lock:
                for record in new:
                    seen[record.step] = record
                seen_lock.notify_all()
            time.sleep(0.002)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    expected: dict[int, dict[str, list[float]]] = {}
    params = list(model.parameters())
    step = 0
    for epoch in range(2):
        tracker.set_epoch(epoch)
        for xb, yb in batches(x, y):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            before = [p.detach().clone() for p in params]
            grads = [None if p.grad is None else p.grad.clone() for p in params]
            opt.step()
            step += 1
            if step % 3 == 0:
                expected[step] = _direct(before, grads, [p.detach().clone() for p in params])
                with seen_lock:  # the reader must see this step before training goes on
                    assert seen_lock.wait_for(lambda s=step: s in seen, timeout=10), step
    tracker.close()
    stop.set()
    reader.join(timeout=5)

    assert sorted(seen) == sorted(expected) == list(range(3, step + 1, 3))
    assert follower.log.header.names == [n for n, _ in model.named_parameters()]
    for s, want in expected.items():
        record = seen[s]
        assert record.epoch == (0.0 if s <= 8 else 1.0)
        assert record.groups[0]["lr"] == 0.2 and record.groups[0]["momentum"] == 0.9
        for j in range(len(params)):
            w, g = math.sqrt(want["w0_sq"][j]), math.sqrt(want["g_sq"][j])
            for field in ("w_sq", "w0_sq", "dw_sq"):
                ref = want[field][j]
                assert _close(record.stats[field][j], ref, abs(ref)), (s, j, field)
            assert _close(record.stats["g_sq"][j], want["g_sq"][j], want["g_sq"][j])
            # <w, g> can be tiny next to |w||g| (it is 0 for the convs before BN)
            assert _close(record.stats["wg"][j], want["wg"][j], w * g)
    # scale invariance shows: the convs feeding BatchNorm have <w, g> = 0 to rounding
    last = seen[max(seen)]
    conv = follower.log.header.names.index("0.weight")
    cos = last.stats["wg"][conv] / math.sqrt(last.stats["w0_sq"][conv] * last.stats["g_sq"][conv])
    assert abs(cos) < 1e-5


def test_every_step_log_gives_per_step_angles_in_the_trajectory(tmp_path):
    torch.manual_seed(1)
    x, y = digits_tensors(256)
    model = small_bn_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    path = tmp_path / "t.jsonl"
    angles = []
    with normscope.track(model, opt, path, every=1):
        for xb, yb in batches(x, y):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            w0 = model[0].weight.detach().double().clone()
            opt.step()
            w1 = model[0].weight.detach().double()
            cos = float((w0 * w1).sum() / (w0.norm() * w1.norm()))
            angles.append(math.acos(min(1.0, cos)))
    table = build_trajectory(read_jsonl_log(path).stats).table
    conv = table[table["param"] == "0.weight"]
    assert conv["optimizer"].iloc[0] == "AdamW" and conv["beta1"].iloc[0] == 0.9
    measured = conv["angle_rad"].to_numpy()
    assert math.isnan(measured[0])  # nothing before the first record
    for got, want in zip(measured[1:], angles[1:]):
        assert got == pytest.approx(want, rel=1e-3)


def test_closure_step_measures_the_gradient_the_closure_computes(tmp_path):
    torch.manual_seed(2)
    x, y = digits_tensors(128)
    model = small_bn_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "t.jsonl"
    grads_sq = []

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads_sq.append(float(model[-1].weight.grad.double().pow(2).sum()))
        return loss

    with normscope.track(model, opt, path):
        for _ in range(2):
            opt.step(closure)
    records = read_jsonl_log(path).stats
    fc = [n for n, _ in model.named_parameters()].index("8.weight")
    got = [s.params["8.weight"].grad_norm_sq for s in records]
    assert fc >= 0 and got == pytest.approx(grads_sq, rel=1e-6)


def test_untracked_and_gradless_params_close_and_hooks_removed(tmp_path):
    torch.manual_seed(3)
    model = small_bn_cnn()
    model[-1].bias.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    x, y = digits_tensors(64)
    path = tmp_path / "t.jsonl"
    tracker = normscope.track(model, opt, path, every=2)
    for i in range(4):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if i == 1:  # a step where one parameter has no gradient
            loss = loss + 0 * model[0].weight.sum()
            loss.backward()
            model[3].weight.grad = None
        else:
            loss.backward()
        opt.step()
    tracker.close()
    tracker.close()  # twice is fine
    opt.step()  # hooks are gone: nothing more is written
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert "8.bias" not in [p["name"] for p in header["params"]]
    assert [json.loads(line)["step"] for line in lines[1:]] == [2, 4]
    first = json.loads(lines[1])
    names = [p["name"] for p in header["params"]]
    assert first["g_sq"][names.index("3.weight")] is None
    assert first["dw_sq"][names.index("3.weight")] == 0.0
    assert all(v is not None for v in first["g_sq"][:names.index("3.weight")])


def test_transient_buffers_give_the_same_numbers(tmp_path):
    x, y = digits_tensors(128)
    logs = []
    for keep in (True, False):
        torch.manual_seed(4)
        model = small_bn_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        path = tmp_path / f"t{keep}.jsonl"
        with normscope.track(model, opt, path, keep_buffers=keep):
            for xb, yb in batches(x, y):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
        logs.append([json.loads(line) for line in path.read_text().splitlines()[1:]])
    for a, b in zip(*logs):
        assert a["w_sq"] == b["w_sq"] and a["wg"] == b["wg"] and a["dw_sq"] == b["dw_sq"]


def test_nonfinite_weights_are_counted_and_written_as_null(tmp_path):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "t.jsonl"
    with normscope.track(model, opt, path):
        model(torch.ones(2, 4)).sum().backward()
        with torch.no_grad():
            model.weight[0, :2] = float("nan")
        opt.step()
    record = json.loads(path.read_text().splitlines()[1])  # strict JSON: no NaN literals
    assert record["w_sq"][0] is None and record["nonfinite"] == [2, 0]
    stats = read_jsonl_log(path).stats[0].params["weight"]
    assert math.isnan(stats.norm_sq) and stats.nonfinite == 2


def test_bad_arguments_are_one_line_errors(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(BadInputError, match="every"):
        normscope.track(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "a", every=0)
    other = nn.Linear(2, 2)
    with pytest.raises(BadInputError, match="none of the model"):
        normscope.track(model, torch.optim.SGD(other.parameters(), lr=0.1), tmp_path / "b")
    with pytest.raises(BadInputError, match="Optimizer"):
        normscope.track(model, object(), tmp_path / "c")


_CRASHING_TRAINER = """
import sys, torch, normscope
sys.path.insert(0, {tests!r})
from live_helpers import small_bn_cnn
torch.set_num_threads(1)
x, y = torch.load({data!r}, weights_only=True)
torch.manual_seed(0)
model = small_bn_cnn()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
tracker = normscope.track(model, opt, {path!r})
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
"""


def test_a_run_killed_mid_training_leaves_a_readable_log(tmp_path):
    path = tmp_path / "crash.jsonl"
    data = tmp_path / "digits.pt"
    torch.save(digits_tensors(64), data)
    code = _CRASHING_TRAINER.format(tests=os.path.dirname(__file__), path=str(path), data=str(data))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not path.exists() or path.read_text().count("\n") < 6):
            assert proc.poll() is None, "trainer exited early"
            time.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL: no close(), no flush at exit
        proc.wait()
    run = read_jsonl_log(path)
    steps = [s.meta.step for s in run.stats]
    assert len(steps) >= 5 and steps == list(range(1, len(steps) + 1))


def test_common_prefix_is_dropped_only_when_every_name_has_it(tmp_path):
    class Wrapper(nn.Module):  # Lightning modules usually hold the network as `self.model`
        def __init__(self) -> None:
            super().__init__()
            self.model = small_bn_cnn()

    wrapped = Wrapper()
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with normscope.track(wrapped, opt, tmp_path / "a.jsonl", common_prefix="model.") as tracker:
        assert tracker.names[0] == "0.weight"
    header = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert header["param_groups"][0]["params"][0] == "0.weight"
    wrapped.extra = nn.Linear(2, 2)  # now one name lacks the prefix: keep them all
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with normscope.track(wrapped, opt, tmp_path / "b.jsonl", common_prefix="model.") as tracker:
        assert tracker.names[0] == "model.0.weight" and tracker.names[-1] == "extra.bias"


@pytest.mark.gpu
def test_cuda_tracking_matches_a_direct_computation(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(5)
    x, y = (t.cuda() for t in digits_tensors(128))
    model = small_bn_cnn().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    params = list(model.parameters())
    path = tmp_path / "cuda.jsonl"
    expected = []
    with normscope.track(model, opt, path) as tracker:
        assert all(not g.keep_buffers for g in tracker._reducer.groups)  # transient on CUDA
        for xb, yb in batches(x, y):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            before = [p.detach().cpu().clone() for p in params]
            grads = [p.grad.cpu().clone() for p in params]
            opt.step()
            expected.append(_direct(before, grads, [p.detach().cpu() for p in params]))
    for record, want in zip(read_jsonl_log(path).stats, expected):
        for j, name in enumerate(record.params):
            got = record.params[name]
            assert got.norm_sq == pytest.approx(want["w_sq"][j], rel=1e-5)
            assert got.update_norm_sq == pytest.approx(want["dw_sq"][j], rel=1e-4)
            assert got.grad_norm_sq == pytest.approx(want["g_sq"][j], rel=1e-5)


def test_a_tracker_pointed_at_a_checkpoint_refuses_and_leaves_it(tmp_path):
    """By name or, renamed, by its first bytes; an earlier log at the path is started afresh."""
    model = nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save(model.state_dict(), tmp_path / "epoch_1.pt")
    (tmp_path / "renamed.jsonl").write_bytes((tmp_path / "epoch_1.pt").read_bytes())
    for name in ("epoch_1.pt", "renamed.jsonl"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(BadInputError, match="holds a checkpoint; the tracker never writes over a run's files"):
            normscope.track(model, opt, tmp_path / name)
        assert (tmp_path / name).read_bytes() == before
    for _ in range(2):
        normscope.track(model, opt, tmp_path / "track.jsonl").close()
    assert len((tmp_path / "track.jsonl").read_text().splitlines()) == 1  # the header of the second
