"""Start-up: each command imports only what it needs (`python -X importtime` figures:
docs/benchmarks.md, "Whole commands").

No torch where no file needs it (the in-place reader maps a `torch.save` zip and reads it with
numpy and the fused kernel), no matplotlib unless a plot is written, no pandas before a command
builds a table. Each check runs in a fresh interpreter and reads its `sys.modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normscope.engine.fused import kernel_status
from normscope.sources import _fast_torch_zip as fast

ROOT = Path(__file__).resolve().parent.parent
SGD_RUN = ROOT / "sample_runs" / "digits_bn_cnn_sgd"
HF_RUN = ROOT / "sample_runs" / "digits_ln_transformer_adamw"
LIGHTNING_RUN = ROOT / "sample_runs" / "digits_bn_cnn_lightning"
HEAVY = ("torch", "pandas", "matplotlib")


def _modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; the heavy packages it left imported, and what it printed."""
    script = (
        "import json, sys\n"
        f"{code}\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.splitlines()
    return {**json.loads(last), "printed": "\n".join(printed), "stderr": done.stderr}


def _command(*args: str) -> str:
    """Code that runs `normscope ARGS` as `python -m normscope` does, in this interpreter."""
    return (
        "import runpy\n"
        f"sys.argv = ['normscope', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('normscope', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
    )


def test_import_normscope_imports_no_heavy_package():
    assert _modules_after("import normscope")["heavy"] == []


def test_help_imports_no_heavy_package():
    found = _modules_after(_command("--help"))
    assert found["heavy"] == [] and "analyze" in found["printed"]


@pytest.mark.parametrize("run", [SGD_RUN, LIGHTNING_RUN], ids=["torch.save", "Lightning"])
def test_analyzing_a_torch_zip_run_needs_no_torch_and_no_matplotlib(run):
    if not kernel_status().active:  # the torch kernels read the tensors instead
        pytest.skip(f"the fused CPU kernel is not active: {kernel_status().detail}")
    # the in-place reader maps each checkpoint, the fused kernel reads its float tensors and
    # numpy the rest (num_batches_tracked, a callback's scalar): torch is never imported
    found = _modules_after(_command("analyze", str(run), "-f", "json"))
    assert found["heavy"] == ["pandas"], found["stderr"]
    # the same figures as with torch imported first (then the readers build torch tensors)
    with_torch = _modules_after("import torch\n" + _command("analyze", str(run), "-f", "json"))
    assert "torch" in with_torch["heavy"]
    assert json.loads(found["printed"]) == json.loads(with_torch["printed"])


def test_analyzing_a_safetensors_run_imports_no_matplotlib():
    found = _modules_after(_command("analyze", str(HF_RUN), "-f", "json"))
    assert "matplotlib" not in found["heavy"], found["stderr"]
    assert json.loads(found["printed"])["params"]


def test_without_torch_the_scan_reads_the_tensors_it_builds_as_numpy_arrays_of_torchs_values():
    path = SGD_RUN / "epoch_007.pt"
    code = (
        "from normscope.sources._fast_torch_zip import scan_torch_zip\n"
        f"found = scan_torch_zip({str(path)!r})\n"
        "import numpy as np\n"
        "arrays = {k: [str(v.dtype), list(v.shape), v.tolist()] for k, v in found['model'].items()\n"
        "          if type(v) is np.ndarray}\n"
        "print(json.dumps(arrays))\n"
    )
    found = _modules_after(code)
    assert "torch" not in found["heavy"]
    arrays = json.loads(found["printed"])
    expected = torch.load(path, weights_only=True, mmap=True)["model"]
    ints = {k: v for k, v in expected.items() if not v.is_floating_point()}
    assert set(arrays) == set(ints) and len(ints) == 3  # the three BatchNorms' num_batches_tracked
    for key, tensor in ints.items():
        assert arrays[key] == [str(tensor.numpy().dtype), list(tensor.shape), tensor.tolist()]


@pytest.mark.parametrize("size, stride, offset", [((2, 3), (3, 1), 0), ((3, 2), (1, 3), 0),
                                                  ((2,), (2,), 1), ((), (), 5), ((0, 4), (4, 1), 0)])  # fmt: skip
def test_a_record_as_a_numpy_array_is_the_tensor_torch_builds(tmp_path, size, stride, offset):
    base = torch.arange(12, dtype=torch.int64)
    path = tmp_path / "t.pt"
    torch.save({"t": base.as_strided(size, stride, offset)}, path)
    _, records = fast.open_archive(str(path))
    array = fast.RecordBytes(records, records.extents([0])[0][0].item(), 96).array(
        fast.DTYPES["int64"], offset, size, stride)  # fmt: skip
    assert array is not None and array.tolist() == base.as_strided(size, stride, offset).tolist()
    # past the record: left to torch, whose `set_` refuses it
    assert fast.RecordBytes(records, 0, 96).array(fast.DTYPES["int64"], 12, (1,), (1,)) is None


def test_the_dtype_tables_are_torchs():
    for name, dtype in fast.DTYPES.items():
        assert getattr(torch, name).itemsize == dtype.itemsize and str(getattr(torch, name)) == str(dtype)
    for alias, name in fast._DTYPE_ALIASES.items():
        assert getattr(torch, alias) is getattr(torch, name)
    storages = {name: str(dtype).removeprefix("torch.")
                for dtype, name in torch.storage._dtype_to_storage_type_map().items()}  # fmt: skip
    for name, dtype in fast._STORAGE_DTYPES.items():
        assert storages[name] == dtype


def test_the_cpu_thread_count_without_torch_is_torchs_default():
    code = (
        "from normscope.engine.workers import _default_threads\n"
        "without = _default_threads()\n"
        "import torch\n"
        "print(json.dumps([without, torch.get_num_threads()]))\n"
    )
    without, default = json.loads(_modules_after(code)["printed"])
    assert without == default


def test_auto_device_on_a_machine_without_a_gpu_asks_no_torch():
    code = (
        "from normscope.engine import device\n"
        "print(json.dumps([device._no_gpu_here(), str(device.resolve_device('auto'))]))\n"
    )
    found = _modules_after(code)
    no_gpu, resolved = json.loads(found["printed"])
    assert resolved == ("cpu" if no_gpu else str(torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    assert ("torch" in found["heavy"]) is (not no_gpu)
