"""The ABEL scheduler on a real small training run: it decays where the offline replay of the same
run's saved checkpoints says, and a resumed run continues exactly as an uninterrupted one."""

import pytest
import torch
from _digits import bn_cnn, digits_tensors, train_epoch
from safetensors.torch import load_file, save_file

from normscope.analysis.bounce import abel_replay
from normscope.analysis.epochs import epoch_series
from normscope.schedulers import ABEL, squared_total_norm, watched_tensors
from normscope.snapshot import ParamGroup, ParamStats, SnapshotMeta, SnapshotStats
from normscope.trajectory import build_trajectory

EPOCHS, BUDGET, LR, WD = 12, 14, 0.2, 5e-3


@pytest.fixture(scope="module")
def digits():
    # one thread: on a shared, loaded CPU torch's thread pool spins and an epoch takes 20x longer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield digits_tensors()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_run(digits, tmp_path_factory):
    """12 epochs with ABEL, a safetensors checkpoint saved at the end of every epoch (and at 0)."""
    x, y = digits
    folder = tmp_path_factory.mktemp("abel_run")
    model, opt = _setup()
    sched = ABEL(opt, model, decay_factor=0.1, total_epochs=BUDGET, rule="exact")
    params = dict(model.named_parameters())

    def save(e):
        save_file({n: p.detach().clone() for n, p in params.items()}, folder / f"epoch{e}.safetensors")

    save(0)
    lrs, steps = [opt.param_groups[0]["lr"]], [0]
    for epoch in range(EPOCHS):
        steps.append(steps[-1] + train_epoch(model, opt, x, y, epoch))
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        save(epoch + 1)
    return folder, model, opt, sched, lrs, steps


def _setup():
    model = bn_cnn(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    return model, opt


def _stats_from_file(path, epoch, step, lr):
    """Reduce one saved checkpoint in float64, independently of the scheduler's own measurement."""
    tensors = load_file(str(path))
    params = {n: ParamStats(numel=t.numel(), norm_sq=float(t.double().pow(2).sum())) for n, t in tensors.items()}
    group = ParamGroup(params=tuple(tensors), lr=lr, weight_decay=WD, momentum=0.9)
    meta = SnapshotMeta(path=str(path), step=step, epoch=float(epoch), order_source="embedded",
                        optimizer="SGD", param_groups=(group,))
    return SnapshotStats(meta=meta, params=params, shapes={n: tuple(t.shape) for n, t in tensors.items()},
                         dtypes={n: "float32" for n in tensors})


def test_scheduler_decays_where_the_offline_replay_says(full_run):
    folder, _, _, sched, lrs, steps = full_run

    assert sched.decay_epochs, "the run should decay at least once (bounce or budget)"
    assert 12 in sched.decay_epochs  # round(0.85·14)
    table = build_trajectory(
        _stats_from_file(folder / f"epoch{e}.safetensors", e, steps[e], lrs[e]) for e in range(EPOCHS + 1)
    ).table
    series = epoch_series(table)  # conv and linear weights: what the scheduler watches by default
    assert series.n_tensors == len(sched._watched) == 3
    assert series.norm_sq == pytest.approx(sched.norm_history, rel=1e-12)
    replay = abel_replay(series.epochs, series.norm_sq, total_epochs=BUDGET)
    assert list(replay.decay_epochs) == sched.decay_epochs
    # the LR really changed after each decay epoch, by the factor
    for e in sched.decay_epochs:
        if e < EPOCHS:
            assert lrs[e] == pytest.approx(lrs[e - 1] * 0.1)


def test_resumed_run_continues_exactly(digits, full_run, tmp_path):
    x, y = digits
    _, _, opt, sched, _, _ = full_run

    model2, opt2 = _setup()
    sched2 = ABEL(opt2, model2, total_epochs=BUDGET, rule="exact")
    for epoch in range(5):
        train_epoch(model2, opt2, x, y, epoch)
        sched2.step()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()},
               tmp_path / "ckpt.pt")

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # the state is plain values
    model3, opt3 = _setup()
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3 = ABEL(opt3, model3, total_epochs=BUDGET, rule="exact")
    sched3.load_state_dict(saved["sched"])
    for epoch in range(5, EPOCHS):
        train_epoch(model3, opt3, x, y, epoch)
        sched3.step()

    assert sched3.decay_epochs == sched.decay_epochs
    assert sched3.last_epoch == sched.last_epoch == EPOCHS
    assert sched3.norm_history == pytest.approx(sched.norm_history, rel=1e-9)
    assert opt3.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_min_lr_and_watched_kinds():
    model, _ = _setup()
    assert len(watched_tensors(model)) == 3
    assert len(watched_tensors(model, "weight,norm")) == 5
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = ABEL(opt, [w], decay_factor=0.1, min_lr=0.05, total_epochs=2)
    assert squared_total_norm([w]) == pytest.approx(4.0)
    opt.step()
    sched.step()  # epoch 1 → round(0.85·2) = 2 not yet
    sched.step()  # budget decay at 2, floored at min_lr
    assert sched.decay_epochs == [2] and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError):
        ABEL(opt, [w], decay_factor=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_norm_matches_cpu_and_scheduler_runs_on_cuda():
    model, _ = _setup()
    cpu = squared_total_norm(watched_tensors(model))
    model = model.cuda()
    assert squared_total_norm(watched_tensors(model)) == pytest.approx(cpu, rel=1e-12)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    sched = ABEL(opt, model, total_epochs=2)
    opt.step()
    sched.step()
    sched.step()
    assert sched.decay_epochs == [2] and sched.norm_history[0] == pytest.approx(cpu, rel=1e-12)
