"""`--granularity row` on every checkpoint layout: a real AdamW run saved as torch files, safetensors
(one file and sharded with an index), HF `checkpoint-N/` directories, Lightning `.ckpt` and DCP, read
through `load_trajectory(granularity="row")`; each tensor's per-row angles and norms must be those of
the weights the training held in memory when it saved them. Logs, which hold no rows, say so."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _sources_helpers import train
from safetensors.torch import save_file
from torch import nn

from normscope.api import load_trajectory
from normscope.engine.rows import row_sums
from normscope.row_stats import SPREAD_POINTS, spread_of
from normscope.errors import BadInputError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
STEPS = (5, 10, 15)


def _model() -> nn.Module:
    torch.manual_seed(0)  # 150 rows: wider than SPREAD_POINTS, so that tensor keeps percentiles
    return nn.Sequential(nn.Linear(8, 150), nn.LayerNorm(150), nn.GELU(), nn.Linear(150, 12))


def _trained(save) -> list[dict[str, torch.Tensor]]:
    """Train, calling `save(step, model_state, optimizer_state)` at each of STEPS; the weights as
    they were in memory at each save."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    held, done = [], 0
    for i, step in enumerate(STEPS):
        train(model, opt, step - done, seed=i)
        done = step
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        held.append(state)
        save(step, state, opt.state_dict())
    assert SPREAD_POINTS < 150
    return held


def _torch_files(root: Path):
    def save(step, state, optimizer):
        torch.save({"model": state, "optimizer": optimizer, "step": step}, root / f"step_{step}.pt")
    return save


def _safetensors_files(root: Path):
    def save(step, state, optimizer):
        save_file(state, root / f"step_{step}.safetensors", metadata={"step": str(step)})
    return save


def _sharded_safetensors(root: Path):
    def save(step, state, optimizer):
        keys, weight_map = list(state), {}
        for i in range(2):
            shard = f"step_{step}-{i + 1:05d}-of-00002.safetensors"
            part = {k: state[k] for k in keys[i::2]}
            save_file(part, root / shard, metadata={"step": str(step)})
            weight_map |= dict.fromkeys(part, shard)
        (root / f"step_{step}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return save


def _hf_trainer(root: Path):
    def save(step, state, optimizer):
        ckpt = root / f"checkpoint-{step}"
        ckpt.mkdir()
        save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
        torch.save(optimizer, ckpt / "optimizer.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "epoch": step / 15, "max_steps": 15, "log_history": []}))
    return save


def _lightning(root: Path):
    def save(step, state, optimizer):
        torch.save({"epoch": step // 5, "global_step": step, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {f"model.{k}": v for k, v in state.items()},
                    "optimizer_states": [optimizer], "lr_schedulers": []},
                   root / f"epoch={step // 5}-step={step}.ckpt")
    return save


def _dcp(root: Path):
    import torch.distributed.checkpoint as dcp

    def save(step, state, optimizer):
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({"model": state, "step": step}, checkpoint_id=str(root / f"step_{step}"))
    return save


def _name_in(held: dict[str, torch.Tensor], name: str) -> str:
    return name if name in held else next(k for k in held if k.endswith("." + name) or k.endswith(name))


@pytest.mark.parametrize("saver,layout", [
    (_torch_files, "torch"), (_safetensors_files, "safetensors"), (_sharded_safetensors, "safetensors"),
    (_hf_trainer, "hf-trainer"), (_lightning, "lightning"), (_dcp, "dcp"),
])
def test_row_spreads_match_the_weights_training_held(tmp_path, saver, layout):
    held = _trained(saver(tmp_path))
    traj = load_trajectory(tmp_path, device="cpu", granularity="row", bucket_bytes=8192)  # row slices too
    assert traj.layout == layout and traj.granularity == "row" and len(traj.rows) == len(STEPS)
    assert traj.rows[0] == {}  # the first snapshot has no previous one
    for t in (1, 2):
        assert set(traj.rows[t]) == {n for n in traj.params if n.endswith("0.weight") or n.endswith("3.weight")}
        for name, spread in traj.rows[t].items():
            key = _name_in(held[t], name)
            truth = spread_of(row_sums(held[t][key], held[t - 1][key]))
            assert spread.rows == truth.rows and spread.exact == truth.exact
            np.testing.assert_allclose(spread.angles, truth.angles, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(spread.norms, truth.norms, rtol=1e-6)
            # and the rows add up to the tensor's own angle in the table
            row = traj.table[(traj.table["snapshot"] == t) & (traj.table["param"] == name)].iloc[0]
            assert spread.tensor_angle() == pytest.approx(row["angle_rad"], rel=1e-6)


def test_tensor_granularity_keeps_no_rows(tmp_path):
    _trained(_torch_files(tmp_path))
    traj = load_trajectory(tmp_path, device="cpu")
    assert traj.granularity == "tensor" and traj.rows == []


def test_an_unknown_granularity_is_bad_input(tmp_path):
    _trained(_torch_files(tmp_path))
    with pytest.raises(BadInputError, match="granularity"):
        load_trajectory(tmp_path, device="cpu", granularity="neuron")


@pytest.mark.parametrize("log", ["digits_bn_cnn_live"])
def test_a_log_says_it_has_no_rows_and_stays_per_tensor(log):
    traj = load_trajectory(SAMPLES / log, granularity="row")
    assert traj.granularity == "tensor" and traj.rows == []
    notes = [w for w in traj.warnings if "granularity row" in w]
    assert len(notes) == 1 and "per-tensor numbers only" in notes[0] and "\n" not in notes[0]
