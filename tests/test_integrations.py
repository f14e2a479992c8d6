"""The Lightning and Hugging Face adapters, each driving the real framework on digits for a few steps.

Skipped when the framework is not installed (`pip install 'normscope[lightning]'` / `[hf]`).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from live_helpers import digits_tensors, one_thread, small_bn_cnn
from torch import nn

import normscope.live
from normscope.live.log import load_live_log, read_jsonl_log
from normscope.sources.tensorboard_log import read_tensorboard


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _final_sq_norms(model: nn.Module, prefix: str = "") -> dict[str, float]:
    return {prefix + n: float(p.detach().double().pow(2).sum()) for n, p in model.named_parameters()}


@pytest.mark.slow
def test_lightning_callback_logs_steps_epochs_and_agrees_with_lightning_grad_norm(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.utilities import grad_norm

    from normscope.live.adapters.lightning import NormscopeCallback

    class DigitsModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_bn_cnn()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self.net, norm_type=2))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    torch.manual_seed(0)
    x, y = digits_tensors(256)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    module = DigitsModule()
    log_path = tmp_path / "track.jsonl"
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, log_every_n_steps=1,
        logger=TensorBoardLogger(tmp_path / "tb", name="run"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[NormscopeCallback(log_path, every=2)])
    trainer.fit(module, loader)

    log = load_live_log(log_path)
    assert [r.step for r in log.records] == [2, 4, 6, 8]
    assert [r.epoch for r in log.records] == [0.5, 1.0, 1.5, 2.0]  # 4 batches per epoch
    names = log.header.names
    assert names[0] == "net.0.weight"
    final = _final_sq_norms(module)
    for j, name in enumerate(names):
        assert log.records[-1].stats["w_sq"][j] == pytest.approx(final[name], rel=1e-6)

    # Lightning's own grad_norm helper, read back from TensorBoard, at the step before ours
    tb = {s.meta.step: s for s in read_tensorboard(tmp_path / "tb").stats}
    for record in log.records:
        logged = tb[record.step - 1].params
        for j, name in enumerate(names):
            tb_grad = logged[name.removeprefix("net.")].grad_norm_sq
            assert math.sqrt(record.stats["g_sq"][j]) == pytest.approx(math.sqrt(tb_grad), rel=1e-5)


@pytest.mark.slow
def test_hf_trainer_callback_logs_to_the_output_dir(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from normscope.live.adapters.hf import DEFAULT_LOG_NAME, NormscopeTrainerCallback

    class DigitsClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_bn_cnn()

        def forward(self, pixel_values, labels=None):
            logits = self.net(pixel_values)
            loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
            return {"loss": loss, "logits": logits}

    torch.manual_seed(0)
    x, y = digits_tensors(256)
    data = [{"pixel_values": xi, "labels": yi} for xi, yi in zip(x, y)]
    model = DigitsClassifier()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=64,
        learning_rate=0.05, weight_decay=0.01, lr_scheduler_type="constant", logging_strategy="no",
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[NormscopeTrainerCallback(every=3)])
    trainer.train()

    run = read_jsonl_log(tmp_path / "out" / DEFAULT_LOG_NAME)
    assert [s.meta.step for s in run.stats] == [3, 6]
    assert run.stats[0].meta.optimizer == "AdamW"
    # 4 batches per epoch; the epoch after the step, as the Trainer itself reports it at the end
    assert [s.meta.epoch for s in run.stats] == pytest.approx([3 / 4, 6 / 4])
    lrs = {g.lr for g in run.stats[-1].meta.param_groups}
    assert lrs == {0.05}
    final = _final_sq_norms(model)
    for name, stats in run.stats[-1].params.items():
        assert stats.norm_sq == pytest.approx(final[name], rel=1e-6)
        assert stats.grad_norm_sq is not None and stats.grad_norm_sq > 0


@pytest.mark.parametrize(("documented", "home", "name"), [
    ("normscope.integrations.lightning", "normscope.live.adapters.lightning", "NormscopeCallback"),
    ("normscope.integrations.hf", "normscope.live.adapters.hf", "NormscopeTrainerCallback"),
])
def test_documented_import_paths_give_the_adapters(documented, home, name):
    """docs/live.md names `normscope.integrations.*`: the same classes as `normscope.live`'s."""
    pytest.importorskip("pytorch_lightning" if "lightning" in home else "transformers")
    cls = getattr(importlib.import_module(documented), name)
    assert cls is getattr(importlib.import_module(home), name) is getattr(normscope.live, name)
