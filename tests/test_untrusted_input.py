"""Hostile or broken logs, unreadable files and pathological trees: one line and exit 2, never an
internal error. Logs are the committed sample run's tracker log with one field rewritten."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys

import pytest
from _sources_helpers import fingerprint
from typer.testing import CliRunner

from normscope import load_trajectory
from normscope.cli import app
from normscope.errors import BadInputError
from normscope.live.source import LiveSource
from normscope.sources import open_run
from normscope.live.log import load_live_log

RECORDS = 8


@pytest.fixture(scope="module")
def log_lines(sample_runs_dir) -> list[str]:
    """The header and the first records of the real live-tracked run, newline included."""
    lines = []
    with open(sample_runs_dir / "digits_bn_cnn_live" / "track.jsonl") as f:
        for line in f:
            lines.append(line)
            if len(lines) > RECORDS:
                return lines
    raise AssertionError("the sample log is shorter than expected")


def _rewrite(line: str, key: str, raw_value: str) -> str:
    """`line` (one JSON object) with the value of top-level `key` replaced by raw JSON text."""
    obj = json.loads(line)
    assert key in obj
    obj[key] = "\0placeholder\0"
    return json.dumps(obj).replace('"\\u0000placeholder\\u0000"', raw_value) + "\n"


def _one_line_refusal(path) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInputError) as info:
        load_trajectory(path, device="cpu")
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------- tracker logs


@pytest.mark.parametrize("raw", ["Infinity", "1e400", "NaN"])
@pytest.mark.parametrize("key", ["every", "schema_version"])
def test_a_header_number_that_is_not_finite_is_no_header(tmp_path, log_lines, key, raw):
    path = tmp_path / "track.jsonl"
    path.write_text(_rewrite(log_lines[0], key, raw) + "".join(log_lines[1:]))
    assert "no valid header line" in _one_line_refusal(path)


@pytest.mark.parametrize("raw", ["[Infinity]", "[1e400]", '["0.5"]', "[[1.0]]",
                                 pytest.param(str(10**400), id="10**400")])
def test_a_parameter_shape_that_is_not_counts_is_no_header(tmp_path, log_lines, raw):
    header = json.loads(log_lines[0])
    header["params"][0]["shape"] = "\0shape\0"
    text = json.dumps(header).replace('"\\u0000shape\\u0000"', raw) + "\n"
    path = tmp_path / "track.jsonl"
    path.write_text(text + "".join(log_lines[1:]))
    assert "no valid header line" in _one_line_refusal(path)


@pytest.mark.parametrize("numel", [10**400, 2**63, 7], ids=["10**400", "2**63", "not-the-shape"])
def test_a_parameter_numel_past_int64_or_off_its_shape_is_no_header(tmp_path, log_lines, numel):
    # a fuzzed log once reached pandas with numel = 10**400 (OverflowError, not a one-line refusal)
    header = json.loads(log_lines[0])
    header["params"][0]["numel"] = "\0numel\0"
    text = json.dumps(header).replace('"\\u0000numel\\u0000"', str(numel)) + "\n"
    path = tmp_path / "track.jsonl"
    path.write_text(text + "".join(log_lines[1:]))
    assert "no valid header line" in _one_line_refusal(path)


@pytest.mark.parametrize("raw", ["Infinity", "-Infinity", "1e400", "NaN", '"fast"', "[0.1]",
                                 pytest.param(str(10**400), id="10**400")])
@pytest.mark.parametrize("field", ["w_sq", "epoch", "lr"])
def test_a_record_with_a_number_that_is_not_one_is_skipped_as_corrupt(tmp_path, log_lines, field, raw):
    record = json.loads(log_lines[3])
    if field == "w_sq":
        record["w_sq"][0] = "\0v\0"
    elif field == "lr":
        record["groups"][0]["lr"] = "\0v\0"
    else:
        record["epoch"] = "\0v\0"
    damaged = json.dumps(record).replace('"\\u0000v\\u0000"', raw) + "\n"
    path = tmp_path / "track.jsonl"
    path.write_text("".join(log_lines[:3]) + damaged + "".join(log_lines[4:]))
    log = load_live_log(path)
    assert log.corrupt_lines == 1 and log.first_corrupt.startswith("line 4:")
    trajectory = load_trajectory(path, device="cpu")
    kept = [json.loads(line)["step"] for i, line in enumerate(log_lines) if i not in (0, 3)]
    assert sorted(trajectory.table["step"].unique()) == kept
    assert any("skipped 1 corrupt line" in w for w in trajectory.warnings)


def test_a_header_whose_param_groups_hold_text_for_numbers_is_no_header(tmp_path, log_lines):
    header = json.loads(log_lines[0])
    header["param_groups"][0]["weight_decay"] = "a lot"
    path = tmp_path / "track.jsonl"
    path.write_text(json.dumps(header) + "\n" + "".join(log_lines[1:]))
    assert "no valid header line" in _one_line_refusal(path)


def test_deeply_nested_json_is_a_corrupt_line_not_a_recursion_error(tmp_path, log_lines):
    deep = "[" * 100_000 + "]" * 100_000 + "\n"
    path = tmp_path / "track.jsonl"
    path.write_text("".join(log_lines[:2]) + deep + "".join(log_lines[2:]))
    log = load_live_log(path)
    assert log.corrupt_lines == 1 and "nested too deeply" in log.first_corrupt
    assert len(log.records) == RECORDS
    # as the first line, it is not a tracker log at all
    path.write_text(deep + "".join(log_lines))
    assert "not a checkpoint normscope can read" in _one_line_refusal(path)


def test_a_followed_log_replaced_by_a_directory_keeps_the_last_view(tmp_path, log_lines):
    path = tmp_path / "track.jsonl"
    path.write_text("".join(log_lines))
    source = LiveSource(path)
    first = source.poll()
    assert first is not None and first.table["step"].nunique() == RECORDS
    path.unlink()
    path.mkdir()
    assert source.poll() is None  # nothing new to show, and no exception
    assert source.last_error == f"{path} is no longer a file (a tracker log was expected)"
    path.rmdir()
    path.write_text("".join(log_lines[:4]))  # the run restarted its log
    again = source.poll()
    assert again is not None and source.last_error is None
    assert again.table["step"].nunique() == 3


def test_watch_of_a_log_path_that_is_a_directory_is_one_line(tmp_path):
    (tmp_path / "track.jsonl").mkdir()
    (tmp_path / "track.jsonl" / "notes.txt").write_text("not a log")
    result = CliRunner().invoke(app, ["watch", "--once", str(tmp_path / "track.jsonl")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("normscope: error: ")


# ---------------------------------------------------------------- unreadable files


def _deny_reads(monkeypatch, *locked) -> None:  # type: ignore[no-untyped-def]
    """Root ignores file modes, so the kernel's EACCES is imitated for the `locked` paths: at
    `open` (what the readers do) and at `os.access` (what a command-line parser asks)."""
    locked_paths = {os.fspath(p) for p in locked}
    real_open, real_access = builtins.open, os.access

    def guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) in locked_paths:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    def guarded_access(path, mode, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) in locked_paths:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "access", guarded_access)


@pytest.fixture
def hf_checkpoint(tmp_path, adamw_run_dir):
    dest = tmp_path / "checkpoint-23"
    dest.mkdir()
    for name in ("model.safetensors", "trainer_state.json"):
        shutil.copyfile(adamw_run_dir / "checkpoint-23" / name, dest / name)
    return dest


def test_an_unreadable_hf_model_safetensors_is_one_line_as_root(hf_checkpoint, monkeypatch):
    weights = hf_checkpoint / "model.safetensors"
    before = fingerprint(hf_checkpoint)
    _deny_reads(monkeypatch, weights)
    for path in (hf_checkpoint, weights):
        with pytest.raises(BadInputError, match=f"^cannot read {weights}: permission denied$"):
            open_run(path)
    monkeypatch.undo()
    assert fingerprint(hf_checkpoint) == before


@pytest.mark.parametrize("command", ["analyze", "check", "recommend", "watch --once"])
def test_the_cli_says_an_unreadable_path_in_one_line_as_root(hf_checkpoint, monkeypatch, command):
    weights = hf_checkpoint / "model.safetensors"
    _deny_reads(monkeypatch, weights)
    result = CliRunner().invoke(app, [*command.split(), str(weights)])
    assert result.exit_code == 2, result.output
    assert result.output == f"normscope: error: cannot read {weights}: permission denied\n"


def _without_root_privileges() -> list[str] | None:
    """A command prefix that runs a process as root without the capabilities that let root read
    any file (so file modes apply), or None where it cannot be had here."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]
    probe = subprocess.run([*prefix, "true"], check=False, capture_output=True)
    return prefix if probe.returncode == 0 else None


@pytest.mark.parametrize("locked", ["hf-weights", "file", "directory"])
def test_real_permission_denied_is_one_line_and_exit_2(hf_checkpoint, sgd_run_dir, tmp_path, locked):
    prefix = _without_root_privileges()
    if prefix is None:
        pytest.skip("cannot drop root's read-anything capability here (no setpriv)")
    shutil.copyfile(sgd_run_dir / "epoch_001.pt", tmp_path / "epoch_001.pt")
    (tmp_path / "locked").mkdir()
    target = {"hf-weights": hf_checkpoint / "model.safetensors", "file": tmp_path / "epoch_001.pt",
              "directory": tmp_path / "locked"}[locked]
    path = hf_checkpoint if locked == "hf-weights" else target
    os.chmod(target, 0)
    try:
        result = subprocess.run([*prefix, sys.executable, "-m", "normscope", "analyze", str(path)],
                                check=False, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "NORMSCOPE_FUSED": "0"})
    finally:
        os.chmod(target, 0o755 if target.is_dir() else 0o644)
    kind = "directory " if locked == "directory" else ""
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"normscope: error: cannot read {kind}{target}: permission denied\n"


# ---------------------------------------------------------------- pathological trees


@pytest.fixture
def deep_tree(tmp_path):
    """Factory: root/d/d/…/d, `depth` levels, made one relative mkdir at a time (os.makedirs
    recurses); returns the bottom. Removed bottom-up afterwards: shutil.rmtree (pytest's cleanup
    of old temporary directories) recurses too."""
    made = []

    def make(root, depth: int) -> str:
        root.mkdir()
        here = os.getcwd()
        try:
            os.chdir(root)
            for _ in range(depth):
                os.mkdir("d")
                os.chdir("d")
            made.append((os.fspath(root), os.getcwd()))
            return os.getcwd()
        finally:
            os.chdir(here)

    yield make
    for root, bottom in made:
        here = bottom
        while True:
            for name in os.listdir(here):
                if not os.path.isdir(os.path.join(here, name)):
                    os.remove(os.path.join(here, name))
            if here == root:
                break
            parent = os.path.dirname(here)
            os.rmdir(here)
            here = parent
        os.rmdir(root)


def test_a_1500_deep_directory_tree_is_one_line(tmp_path, deep_tree):
    bottom = deep_tree(tmp_path / "deep", 1500)
    with open(os.path.join(bottom, "notes.txt"), "w") as f:
        f.write("nothing to analyse")
    assert "no checkpoints found" in _one_line_refusal(tmp_path / "deep")
    result = CliRunner().invoke(app, ["watch", "--once", str(tmp_path / "deep")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_event_files_at_the_bottom_of_a_1500_deep_tree_are_found(tmp_path, deep_tree):
    summary_writer = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    bottom = deep_tree(tmp_path / "deep", 1500)
    writer = summary_writer(bottom)
    for step in range(3):
        writer.add_scalar("grad_2.0_norm/fc.weight", 0.5 + step, step)
    writer.close()
    run = open_run(tmp_path / "deep")
    assert run.layout == "tensorboard" and [s.meta.step for s in run.stats] == [0, 1, 2]
    assert run.stats[2].params["fc.weight"].grad_norm_sq == pytest.approx(2.5**2)


# ---------------------------------------------------------------- Hugging Face checkpoints


def test_a_deeply_nested_trainer_state_is_one_line(hf_checkpoint):
    (hf_checkpoint / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "trainer_state.json is not valid JSON: JSON nested too deeply" in _one_line_refusal(hf_checkpoint)


@pytest.mark.parametrize("epoch", [float("inf"), 10**400], ids=["inf", "10**400"])
def test_a_trainer_state_with_nan_losses_is_read_and_a_non_finite_epoch_ignored(hf_checkpoint, epoch):
    # the HF Trainer writes NaN for a diverged loss; an infinite epoch can only be damage
    path = hf_checkpoint / "trainer_state.json"
    state = json.loads(path.read_text())
    state["log_history"][0]["loss"] = float("nan")
    state["epoch"] = epoch
    path.write_text(json.dumps(state))
    (snapshot,) = open_run(hf_checkpoint).snapshots
    assert snapshot.meta.step == 23 and snapshot.meta.epoch is None


def test_a_sharded_bin_whose_shard_is_not_a_state_dict_is_one_line(tmp_path, adamw_run_dir):
    import torch
    from safetensors.torch import load_file

    checkpoint = tmp_path / "checkpoint-23"
    checkpoint.mkdir()
    tensors = load_file(adamw_run_dir / "checkpoint-23" / "model.safetensors")
    torch.save(list(tensors.values()), checkpoint / "pytorch_model-00001-of-00001.bin")
    index = {"metadata": {}, "weight_map": {k: "pytorch_model-00001-of-00001.bin" for k in tensors}}
    (checkpoint / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert "holds a list, not a state dict" in _one_line_refusal(checkpoint)


# ---------------------------------------------------------------- configuration found beside a run


def test_a_deeply_nested_config_file_is_one_line(tmp_path, sgd_run_dir):
    # a CI job on a pull request reads the normscope.toml the pull request brought
    for name in ("epoch_001.pt", "epoch_002.pt"):
        shutil.copyfile(sgd_run_dir / name, tmp_path / name)
    (tmp_path / "normscope.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    result = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output == f"normscope: error: {tmp_path / 'normscope.toml'}: not valid TOML: nested too deeply\n"


# ---------------------------------------------------------------- safetensors indexes and metadata


def _sharded(tmp_path, adamw_run_dir):  # type: ignore[no-untyped-def]
    """The sample run's weights as two shards and an index, as `save_pretrained` writes them."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(adamw_run_dir / "checkpoint-23" / "model.safetensors")
    names = sorted(tensors)
    model = tmp_path / "model"
    model.mkdir()
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, model / shard)
        weight_map.update(dict.fromkeys(part, shard))
    return model, {"metadata": {}, "weight_map": weight_map}


@pytest.mark.parametrize("shard", [["model-00001-of-00002.safetensors"], "model\x00.safetensors", 7])
def test_an_index_whose_shard_names_are_not_file_names_is_one_line(tmp_path, adamw_run_dir, shard):
    model, index = _sharded(tmp_path, adamw_run_dir)
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    message = _one_line_refusal(model)
    assert "model.safetensors.index.json" in message


def test_a_deeply_nested_index_is_one_line(tmp_path, adamw_run_dir):
    model, _ = _sharded(tmp_path, adamw_run_dir)
    (model / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "not a valid safetensors index: JSON nested too deeply" in _one_line_refusal(model)


@pytest.mark.parametrize("metadata", [{"step": "1e400"}, {"global_step": "nan"}, ["step", "3"], "3"])
def test_safetensors_metadata_that_is_no_step_is_ignored(tmp_path, adamw_run_dir, metadata):
    import struct

    data = (adamw_run_dir / "checkpoint-23" / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    (snapshot,) = open_run(tmp_path / "model.safetensors").snapshots
    assert snapshot.meta.step is None and len(snapshot.tensors) == len(header) - 1


def test_a_record_whose_step_is_past_int64_is_skipped_as_corrupt(tmp_path, log_lines):
    # a fuzzed step of 10**100 once reached pandas as an OverflowError (exit 101)
    record = json.loads(log_lines[3])
    lines = list(log_lines)
    lines[3] = json.dumps(record).replace(f'"step": {record["step"]}', f'"step": {10**100}', 1) + "\n"
    assert str(10**100) in lines[3]
    path = tmp_path / "track.jsonl"
    path.write_text("".join(lines))
    trajectory = load_trajectory(path, device="cpu")
    assert any("not an int64 integer" in w for w in trajectory.warnings)
