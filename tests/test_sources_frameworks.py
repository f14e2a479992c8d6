"""Runs saved by the frameworks' own savers, read back and checked against the files themselves.

For each: the snapshot set (copies left out), the step and epoch of every snapshot, every tensor,
and every parameter's optimizer state and hyper-parameters (lr, weight decay, momentum or betas)
against the optimizer the training loop held when it saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _framework_savers import (
    TimmSaver,
    namespace,
    save_torchvision_epoch,
    torchvision_checkpoint,
    torchvision_param_groups,
)
from _sources_helpers import train
from torch import nn

from normscope.errors import UnsafeCheckpointError
from normscope.snapshot import Snapshot
from normscope.sources import open_run

STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def conv_bn_net(seed: int = 0) -> nn.Module:
    """A small torchvision-shaped classifier: conv-BN-ReLU blocks (BN weight and bias of one shape)."""
    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(1, 4), block(4, 4), block(4, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))  # fmt: skip


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def expected_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, prefix: str = "") -> dict:
    """{name: (group hyper-parameters, {state key: tensor})} as the training loop holds them."""
    out = {}
    for name, p in model.named_parameters():
        group = group_of(optimizer, p)
        state = {k: v.clone() for k, v in optimizer.state[p].items() if k in STATE_KEYS}
        out[prefix + name] = ({k: group.get(k) for k in ("lr", "weight_decay", "momentum", "betas")}, state)
    return out


def check_optimizer(snap: Snapshot, expected: dict) -> None:
    """Every parameter mapped, with its own group's hyper-parameters and its own state."""
    group_of_name = {n: g for g in snap.meta.param_groups for n in g.params}
    assert set(group_of_name) == set(expected)
    assert set(snap.optimizer_state) == set(expected)
    for name, (hyper, state) in expected.items():
        group = group_of_name[name]
        assert group.lr == pytest.approx(hyper["lr"])
        assert group.weight_decay == pytest.approx(hyper["weight_decay"])
        if hyper["momentum"] is not None:
            assert group.momentum == pytest.approx(hyper["momentum"])
        if hyper["betas"] is not None:
            assert group.betas == pytest.approx(tuple(hyper["betas"]))
        for key, value in state.items():
            assert torch.equal(snap.optimizer_state[name][key].load(), value), (name, key)


def check_tensors(snap: Snapshot, state_dict: dict, prefix: str = "") -> None:
    floats = {k.removeprefix(prefix): v for k, v in state_dict.items() if v.is_floating_point()}
    assert set(snap.tensors) == set(floats)
    for name, value in floats.items():
        assert torch.equal(snap.tensors[name].load(), value), name


# -- torchvision reference recipe -------------------------------------------------------------------

def test_torchvision_recipe_epochs_copies_and_three_param_groups(tmp_path):
    model = conv_bn_net()
    groups = torchvision_param_groups(model, 1e-4, norm_weight_decay=0.0,
                                      custom_keys_weight_decay=[("bias", 2e-5)])  # fmt: skip
    assert [len(g["params"]) for g in groups] == [4, 3, 4]  # other, norm, bias
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    args = namespace(model="tiny", lr=0.1, epochs=3, output_dir=str(tmp_path))
    expected, weights = {}, {}
    for epoch in range(3):
        train(model, optimizer, 2, seed=epoch)
        save_torchvision_epoch(str(tmp_path), torchvision_checkpoint(model, optimizer, scheduler, epoch, args))
        expected[epoch] = expected_optimizer(model, optimizer)
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        scheduler.step()

    with pytest.raises(UnsafeCheckpointError, match="--recover-unsafe"):
        open_run(tmp_path)
    run = open_run(tmp_path, recover_unsafe=True)
    assert run.framework == "torchvision recipe"
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == ["model_0.pth", "model_1.pth", "model_2.pth"]
    assert any("skipped checkpoint.pth: a copy of model_2.pth" in w for w in run.warnings)
    assert [s.meta.epoch for s in run.snapshots] == [1.0, 2.0, 3.0]  # epochs completed
    assert not any("could not match" in w or "dropped" in w for w in run.warnings)
    for epoch, snap in enumerate(run.snapshots):
        check_tensors(snap, weights[epoch])
        check_optimizer(snap, expected[epoch])
        lrs = {g.lr for g in snap.meta.param_groups}
        assert lrs == {0.1 * 0.5**epoch}


def test_torchvision_recipe_norm_split_without_bias_key(tmp_path):
    model = conv_bn_net(1)
    optimizer = torch.optim.SGD(torchvision_param_groups(model, 1e-4, norm_weight_decay=0.0),
                                lr=0.05, momentum=0.9)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
    train(model, optimizer, 2)
    save_torchvision_epoch(str(tmp_path), torchvision_checkpoint(model, optimizer, scheduler, 0,
                                                                 namespace(model="tiny")))  # fmt: skip
    (snap,) = open_run(tmp_path / "model_0.pth", recover_unsafe=True).snapshots
    check_optimizer(snap, expected_optimizer(model, optimizer))


# -- timm CheckpointSaver ---------------------------------------------------------------------------

def test_timm_checkpoint_saver_epochs_and_links(tmp_path):
    model = conv_bn_net(2)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                   {"params": decay, "weight_decay": 0.05}], lr=1e-3)  # fmt: skip
    saver = TimmSaver(model, optimizer, namespace(model="tinynet"), str(tmp_path))
    expected, weights = {}, {}
    for epoch, metric in enumerate((0.9, 0.5, 0.7)):
        train(model, optimizer, 2, seed=epoch)
        saver.save_checkpoint(epoch, metric)
        expected[epoch] = expected_optimizer(model, optimizer)
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar",
                                            "checkpoint-2.pth.tar", "last.pth.tar", "model_best.pth.tar"]  # fmt: skip
    run = open_run(tmp_path, recover_unsafe=True)
    assert run.framework == "timm"
    names = [os.path.basename(s.meta.path) for s in run.snapshots]
    assert names == ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar", "checkpoint-2.pth.tar"]
    assert [(s.meta.step, s.meta.epoch) for s in run.snapshots] == [(None, 1.0), (None, 2.0), (None, 3.0)]
    assert any("skipped last.pth.tar: a copy of checkpoint-2.pth.tar" in w for w in run.warnings)
    assert any("skipped model_best.pth.tar: a copy of checkpoint-1.pth.tar" in w for w in run.warnings)
    for epoch, snap in enumerate(run.snapshots):
        check_tensors(snap, weights[epoch])
        check_optimizer(snap, expected[epoch])


def test_copies_without_hard_links_are_found_by_content(tmp_path):
    model = conv_bn_net(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saver = TimmSaver(model, optimizer, namespace(model="tinynet"), str(tmp_path))
    saver._duplicate = lambda src, dst: __import__("shutil").copy2(src, dst)  # a filesystem without links
    for epoch in range(2):
        train(model, optimizer, 1, seed=epoch)
        saver.save_checkpoint(epoch)
    run = open_run(tmp_path, recover_unsafe=True)
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == ["checkpoint-0.pth.tar",
                                                                      "checkpoint-1.pth.tar"]  # fmt: skip


# -- nanoGPT-style loop -----------------------------------------------------------------------------

class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(16, 8)
        self.wpe = nn.Embedding(4, 8)
        self.ln_1 = nn.LayerNorm(8)
        self.c_attn = nn.Linear(8, 24)
        self.c_proj = nn.Linear(8, 8)
        self.ln_f = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as nanoGPT does

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        q, k, v = self.c_attn(self.ln_1(x)).split(8, dim=2)
        x = x + self.c_proj(torch.softmax(q @ k.transpose(1, 2), -1) @ v)
        return self.lm_head(self.ln_f(x))


def test_nanogpt_style_iter_num_compiled_prefix_and_dim_split(tmp_path):
    model = TinyGPT()
    params = {n: p for n, p in model.named_parameters()}
    decay = [p for p in params.values() if p.dim() >= 2]
    nodecay = [p for p in params.values() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": nodecay, "weight_decay": 0.0}], lr=6e-4, betas=(0.9, 0.95))  # fmt: skip
    compiled = torch.compile(model)  # only its state_dict is taken: `_orig_mod.` names
    expected, weights = {}, {}
    gen = torch.Generator().manual_seed(0)
    for iter_num in range(1, 7):
        idx = torch.randint(0, 16, (2, 4), generator=gen)
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iter_num % 3 == 0:
            checkpoint = {"model": compiled.state_dict(), "optimizer": optimizer.state_dict(),
                          "model_args": {"n_layer": 1, "n_embd": 8}, "iter_num": iter_num,
                          "best_val_loss": loss.item(), "config": {"learning_rate": 6e-4}}  # fmt: skip
            torch.save(checkpoint, tmp_path / f"ckpt_{iter_num}.pt")
            expected[iter_num] = expected_optimizer(model, optimizer)
            weights[iter_num] = {k: v.clone() for k, v in model.state_dict().items()}
    run = open_run(tmp_path)
    assert run.framework == "nanoGPT-style"
    assert [s.meta.step for s in run.snapshots] == [3, 6]
    for snap in run.snapshots:
        check_tensors(snap, weights[snap.meta.step])
        check_optimizer(snap, expected[snap.meta.step])


# -- transformers Trainer ---------------------------------------------------------------------------

def _trainer_run(out, monkeypatch=None, shard=False):  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)

    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            ids = torch.randint(0, 32, (6,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    if shard:
        original = transformers.PreTrainedModel.save_pretrained

        def sharded(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            kwargs["max_shard_size"] = "2KB"
            return original(self, *args, **kwargs)

        monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", sharded)
    args = transformers.TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=4,
                                          save_steps=2, report_to=[], use_cpu=True, learning_rate=1e-3,
                                          weight_decay=0.1, disable_tqdm=True, logging_steps=100)  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens())
    trainer.train()
    return model, trainer.get_decay_parameter_names(model)


def _trainer_expected(model, decay: list[str], checkpoint: str) -> dict:  # type: ignore[no-untyped-def]
    """The Trainer's groups are [decay, no decay], each in named_parameters() order: read
    optimizer.pt back by those positions."""
    names = [n for n, _ in model.named_parameters()]
    order = [n for n in names if n in decay] + [n for n in names if n not in decay]
    saved = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)
    positions = [p for g in saved["param_groups"] for p in g["params"]]
    out = {}
    for g in saved["param_groups"]:
        for pos in g["params"]:
            name = order[positions.index(pos)]
            state = {k: v for k, v in saved["state"][pos].items() if k in STATE_KEYS}
            out[name] = ({k: g.get(k) for k in ("lr", "weight_decay", "momentum", "betas")}, state)
    return out


@pytest.mark.parametrize("shard", [False, True], ids=["safetensors", "sharded"])
def test_transformers_trainer_maps_every_parameter(tmp_path, monkeypatch, shard):
    model, decay = _trainer_run(tmp_path / "out", monkeypatch, shard)
    run = open_run(tmp_path / "out")
    assert run.framework == "transformers Trainer"
    assert [s.meta.step for s in run.snapshots] == [2, 4]
    if shard:
        assert all(s.meta.extra.get("shards", 1) > 1 for s in run.snapshots)
    assert not any("dropped" in w or "could not match" in w for w in run.warnings)
    for snap in run.snapshots:
        check_optimizer(snap, _trainer_expected(model, decay, snap.meta.path))


# -- accelerate save_state --------------------------------------------------------------------------

@pytest.mark.parametrize("safe", [False, True], ids=["bin", "safetensors"])
def test_accelerate_save_state(tmp_path, safe):
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import ProjectConfiguration

    acc = accelerate.Accelerator(cpu=True, project_config=ProjectConfiguration(
        project_dir=str(tmp_path), automatic_checkpoint_naming=True))  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    expected, weights = {}, {}
    for step in range(1, 5):
        loss = model(torch.randn(2, 4, generator=torch.Generator().manual_seed(step))).pow(2).mean()
        acc.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 2 == 0:
            acc.save_state(safe_serialization=safe)
            expected[step] = expected_optimizer(model, optimizer.optimizer)
            weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    run = open_run(tmp_path)
    assert run.layout == "accelerate" and run.framework == "accelerate"
    assert [s.meta.step for s in run.snapshots] == [2, 4]
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == ["checkpoint_0", "checkpoint_1"]
    # safetensors sorts the keys; the module tree the names describe, walked as
    # named_parameters() walks it, has one order that fits the saved shapes
    assert run.warnings == []
    for snap in run.snapshots:
        check_tensors(snap, weights[snap.meta.step])
        check_optimizer(snap, expected[snap.meta.step])


class PreNormBlock(nn.Module):
    """Two LayerNorms of one width around a layer: with the order lost, each norm's state could
    belong to the block's other norm or the next one's (shapes agree either way)."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_a = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.ln_b = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_b(x + self.proj(self.ln_a(x)))


def blocks() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(PreNormBlock(), PreNormBlock(), nn.LayerNorm(8), nn.Linear(8, 2))


def test_model_option_gives_the_order_safetensors_lost(tmp_path):
    model = blocks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, optimizer, 2)
    ckpt = tmp_path / "run" / "checkpoint_0"
    ckpt.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(model.state_dict(), ckpt / "model.safetensors")
    torch.save(optimizer.state_dict(), ckpt / "optimizer.bin")
    torch.save(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0).state_dict(), ckpt / "scheduler.bin")
    tests = os.path.dirname(os.path.abspath(__file__))
    (tmp_path / "tiny_model.py").write_text(
        f"import sys\nsys.path.insert(0, {tests!r})\nfrom test_sources_frameworks import blocks as build\n")

    def analyze(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "normscope", "analyze", "run", "--format", "json", *extra],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip

    without = analyze()
    assert without.returncode == 0, without.stderr
    assert "--model gives the order" in without.stderr
    with_model = analyze("--model", "tiny_model:build")
    assert with_model.returncode == 0, with_model.stderr
    assert "parameter order" not in with_model.stderr
    (snap,) = open_run(tmp_path / "run", parameter_order=tuple(n for n, _ in model.named_parameters())).snapshots
    check_optimizer(snap, expected_optimizer(model, optimizer))


# -- DeepSpeed ZeRO ---------------------------------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "deepspeed")
sys.path.insert(0, FIXTURES)


def _deepspeed_replay(world: int):  # type: ignore[no-untyped-def]
    """The fixtures' training replayed with plain torch AdamW: gradients averaged over the ranks'
    batches, as data parallelism does. (weights, exp_avg, exp_avg_sq) per name, per step."""
    import make_fixtures as ds

    net = ds.model()
    groups = ds.param_groups(net)
    optimizer = torch.optim.AdamW(groups, lr=ds.LR, betas=ds.BETAS)
    out = {}
    for step in range(1, ds.STEPS + 1):
        loss = sum(net(ds.batch(r, step)).pow(2).mean() for r in range(world)) / world
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out[step] = expected_optimizer(net, optimizer), {k: v.clone() for k, v in net.state_dict().items()}
    return out


def _check_deepspeed_dir(path: str, stage: int, world: int) -> None:
    run = open_run(path)
    assert run.layout == "deepspeed" and run.framework == f"DeepSpeed ZeRO-{stage}"
    assert [s.meta.step for s in run.snapshots] == [1, 2, 3]
    assert run.warnings == []
    replay = _deepspeed_replay(world)
    for snap in run.snapshots:
        expected, weights = replay[snap.meta.step]
        assert snap.meta.optimizer == "AdamW"
        assert set(snap.tensors) == set(weights)
        for name, value in weights.items():
            torch.testing.assert_close(snap.tensors[name].load(), value, rtol=1e-5, atol=1e-7)
        group_of_name = {n: g for g in snap.meta.param_groups for n in g.params}
        assert set(group_of_name) == set(expected) == set(snap.optimizer_state)
        for name, (hyper, state) in expected.items():
            group = group_of_name[name]
            assert (group.lr, group.weight_decay, *group.betas) == pytest.approx(
                (hyper["lr"], hyper["weight_decay"], *hyper["betas"]))
            for key, value in state.items():
                torch.testing.assert_close(snap.optimizer_state[name][key].load(), value, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("world", [1, 2])
def test_deepspeed_zero_saves(stage, world):
    """Saved by DeepSpeed itself (make_fixtures.py, on CPU over gloo)."""
    _check_deepspeed_dir(os.path.join(FIXTURES, f"zero{stage}_world{world}"), stage, world)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_saves_made_now(tmp_path, stage):
    """Where DeepSpeed installs (`normscope[deepspeed]`), a fresh save reads the same way."""
    pytest.importorskip("deepspeed")
    script = os.path.join(FIXTURES, "make_fixtures.py")
    subprocess.run([sys.executable, script, str(tmp_path / "run"), str(stage), "1"], check=True,
                   capture_output=True, timeout=600, env={**os.environ, "DS_BUILD_OPS": "0"})  # fmt: skip
    _check_deepspeed_dir(str(tmp_path / "run"), stage, 1)


# -- warnings reach stderr in every format ----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_warnings_on_stderr_once_in_every_format(tmp_path, fmt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, optimizer, 1)
    saved = optimizer.state_dict()
    saved["param_groups"][0]["params"].append(99)  # one position more than the model has
    torch.save({"model": model.state_dict(), "optimizer": saved, "step": 1}, tmp_path / "step_1.pt")
    done = subprocess.run([sys.executable, "-m", "normscope", "analyze", str(tmp_path), "--format", fmt],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = "dropped per-parameter state"
    assert done.stderr.count(line) == 1
    assert line not in done.stdout or fmt == "json"  # the JSON document keeps its warnings too
    if fmt == "json":
        assert any(line in w for w in json.loads(done.stdout)["run"]["warnings"])


# -- Lightning ModelCheckpoint ----------------------------------------------------------------------

def test_lightning_model_checkpoint_with_decay_groups(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from torch.utils.data import DataLoader, TensorDataset

    expected: dict[int, dict] = {}
    weights: dict[int, dict] = {}

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8),
                                     nn.LayerNorm(8), nn.Linear(8, 1))  # fmt: skip

        def training_step(self, batch, _index):  # type: ignore[no-untyped-def]
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            decay = [p for n, p in self.named_parameters() if p.dim() > 1]
            no_decay = [p for n, p in self.named_parameters() if p.dim() <= 1]
            return torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                      {"params": decay, "weight_decay": 0.05}], lr=1e-2)  # fmt: skip

        def on_save_checkpoint(self, checkpoint):  # type: ignore[no-untyped-def]
            optimizer = self.trainer.optimizers[0]
            expected[self.global_step] = expected_optimizer(self.net, optimizer, prefix="net.")
            weights[self.global_step] = {k: v.clone() for k, v in self.state_dict().items()}

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
    callback = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(Module(), data)
    assert "last.ckpt" in os.listdir(tmp_path)
    run = open_run(tmp_path)
    assert run.framework == "Lightning"
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert [(s.meta.step, s.meta.epoch) for s in run.snapshots] == [(4, 1.0), (8, 2.0)]
    for snap in run.snapshots:
        # the module's attribute (`net.`) is part of every key, so it stays in the names
        check_tensors(snap, weights[snap.meta.step])
        check_optimizer(snap, expected[snap.meta.step])


class _WouldRunCode:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def test_deepspeed_files_that_would_run_code_or_are_broken_are_one_line(tmp_path):
    import shutil

    from normscope.errors import BadInputError

    run = tmp_path / "run"
    shutil.copytree(os.path.join(FIXTURES, "zero3_world2"), run)
    optim = run / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    marker = tmp_path / "code_ran"
    torch.save({"optimizer_state_dict": _WouldRunCode(str(marker))}, optim)
    with pytest.raises(UnsafeCheckpointError, match="never runs code"):
        open_run(run)
    assert not marker.exists()
    optim.unlink()  # a save that did not finish on every rank
    with pytest.raises(BadInputError, match="optimizer and 2 model files for 2 ranks"):
        open_run(run)
    shutil.rmtree(run / "global_step2")
    model = run / "global_step3" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])  # truncated
    with pytest.raises(BadInputError, match="not a readable DeepSpeed checkpoint"):
        open_run(run)


def test_a_mapping_left_partial_is_one_note_for_the_whole_run(tmp_path):
    from safetensors.torch import save_file

    model = blocks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(2):
        train(model, optimizer, 1, seed=i)
        ckpt = tmp_path / f"checkpoint_{i}"
        ckpt.mkdir()
        save_file(model.state_dict(), ckpt / "model.safetensors")
        torch.save(optimizer.state_dict(), ckpt / "optimizer.bin")
        (ckpt / "random_states_0.pkl").write_bytes(b"never opened")
    run = open_run(tmp_path)
    (note,) = [w for w in run.warnings if "does not keep parameter order" in w]
    assert note.endswith("(--model gives the order) (checkpoint_0, checkpoint_1)")
    by_name = dict(model.named_parameters())
    for name, entry in run.snapshots[-1].optimizer_state.items():  # what is mapped is right
        assert torch.equal(entry["exp_avg"].load(), optimizer.state[by_name[name]]["exp_avg"])


def test_deepspeed_model_states_of_the_wrong_structure_are_one_line(tmp_path):
    import shutil

    from normscope.errors import BadInputError

    run = tmp_path / "run"
    shutil.copytree(os.path.join(FIXTURES, "zero3_world1"), run)
    for step in (1, 2, 3):
        path = run / f"global_step{step}" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
        saved = torch.load(path, weights_only=True)
        saved["param_shapes"] = [["not", "a", "mapping"]]
        torch.save(saved, path)
    with pytest.raises(BadInputError, match="not laid out as a DeepSpeed checkpoint"):
        open_run(run)
