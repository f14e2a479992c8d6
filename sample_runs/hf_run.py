"""Run (2): the pre-LN transformer trained with AdamW by the real Hugging Face ``Trainer``, so the
``checkpoint-<step>/`` directories, ``trainer_state.json`` and ``log_history`` are exactly what users
have. Two files the Trainer writes are removed afterwards, because normscope must never unpickle them
and tests require every committed file to load with ``torch.load(weights_only=True)``:
``training_args.bin`` (a pickled ``TrainingArguments``) and ``rng_state.pth`` (holds a NumPy RNG state,
which ``weights_only=True`` refuses)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sample_runs.digits import DigitsSplit, load_digits_split, steps_per_epoch
from sample_runs.models import ln_transformer

UNSAFE_TRAINER_FILES = ("training_args.bin", "rng_state.pth")


@dataclass(frozen=True)
class AdamWRunConfig:
    epochs: int = 20
    lr: float = 3e-3
    weight_decay: float = 0.1  # the Trainer exempts biases and LayerNorm weights (a second param group)
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 64
    warmup_steps: int = 23  # one epoch of linear warmup, then cosine decay to 0
    logging_steps: int = 5
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class AdamWRunResult:
    config: AdamWRunConfig
    steps_per_epoch: int
    num_params: int
    seconds: float
    checkpoints: list[str] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)  # one per epoch, from log_history
    weight_norm_sq: list[float] = field(default_factory=list)  # one per checkpoint, ndim > 1 tensors
    log_history: list[dict] = field(default_factory=list)  # of the last checkpoint's trainer_state.json
    # The Trainer puts decayed parameters in group 0 and the rest (biases, LayerNorm) in group 1, and
    # optimizer.pt numbers parameters group by group, so its indices do NOT follow model.parameters().
    optimizer_param_names: list[list[str]] = field(default_factory=list)


class _DigitsDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def _weight_norm_sq(safetensors_file: Path) -> float:
    from safetensors.torch import load_file

    return sum(float(t.double().square().sum()) for t in load_file(safetensors_file).values() if t.ndim > 1)


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("the AdamW sample run needs transformers: pip install 'normscope[hf]'") from exc
    return transformers


def train_adamw_run(out_dir: Path, config: AdamWRunConfig, data: DigitsSplit | None = None) -> AdamWRunResult:
    """Train with ``transformers.Trainer`` (one checkpoint per epoch) and strip the pickled files."""
    transformers = _require_transformers()
    import numpy as np

    class DigitsTrainer(transformers.Trainer):
        # The model takes an image and returns logits; the loss lives here so the model stays plain.
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = model(inputs["x"])
            loss = F.cross_entropy(logits, inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    def compute_metrics(pred) -> dict[str, float]:
        return {"accuracy": float(np.mean(np.argmax(pred.predictions, axis=-1) == pred.label_ids))}

    out_dir = Path(out_dir)
    data = data if data is not None else load_digits_split()
    transformers.set_seed(config.seed)
    model = ln_transformer()
    args = transformers.TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=512,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        adam_beta1=config.betas[0],
        adam_beta2=config.betas[1],
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        max_grad_norm=config.max_grad_norm,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy="epoch",
        save_strategy="epoch",
        report_to="none",
        use_cpu=True,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    trainer = DigitsTrainer(
        model=model,
        args=args,
        train_dataset=_DigitsDataset(data.train_x, data.train_y),
        eval_dataset=_DigitsDataset(data.test_x, data.test_y),
        compute_metrics=compute_metrics,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    checkpoints = sorted(
        (p for p in out_dir.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])
    )
    for ckpt in checkpoints:
        for name in UNSAFE_TRAINER_FILES:
            (ckpt / name).unlink(missing_ok=True)
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    name_of = {id(p): n for n, p in model.named_parameters()}
    group_names = [[name_of[id(p)] for p in g["params"]] for g in trainer.optimizer.param_groups]
    final_state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return AdamWRunResult(
        config=config,
        steps_per_epoch=steps_per_epoch(data.train_x.size(0), config.batch_size),
        num_params=sum(p.numel() for p in model.parameters()),
        seconds=seconds,
        checkpoints=[p.name for p in checkpoints],
        eval_accuracy=[e["eval_accuracy"] for e in final_state["log_history"] if "eval_accuracy" in e],
        optimizer_param_names=group_names,
        log_history=final_state["log_history"],
        weight_norm_sq=[_weight_norm_sq(ckpt / "model.safetensors") for ckpt in checkpoints],
    )
