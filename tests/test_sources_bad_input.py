"""Bad input: every case ends in one line (BadInputError / UnsafeCheckpointError), nothing modified."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import struct

import pytest
import torch
import typer
from _sources_helpers import fingerprint, load_all, small_cnn, small_mlp
from safetensors.torch import save_file

from normscope.cli._common import handle_errors
from normscope.errors import EXIT_BAD_INPUT, BadInputError, UnsafeCheckpointError
from normscope.sources import open_run


class Exploit:
    """Unpickling this would create `marker`: the proof that code from a checkpoint ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _refused(path, error=BadInputError, match=None):  # type: ignore[no-untyped-def]
    """open_run fails with `error`, in one line, leaving every file as it was."""
    root = path if os.path.isdir(path) else path.parent
    before = fingerprint(root)
    with pytest.raises(error, match=match) as info:
        load_all(open_run(path))
    assert "\n" not in str(info.value) and str(info.value)
    assert fingerprint(root) == before
    return str(info.value)


def test_missing_path(tmp_path):
    assert "does not exist" in _refused(tmp_path / "nope")


def test_empty_directory(tmp_path):
    assert "empty directory" in _refused(tmp_path)


def test_unknown_file_type(tmp_path):
    (tmp_path / "weights.pt").write_text("this is not a checkpoint\n")
    assert "not a checkpoint normscope can read" in _refused(tmp_path / "weights.pt")


def test_directory_without_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "config.json").write_text("{}")
    assert "no checkpoints found" in _refused(tmp_path)


def test_truncated_torch_zip(tmp_path):
    torch.save(small_cnn().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 2 // 3])
    os.remove(tmp_path / "full.pt")
    message = _refused(tmp_path / "cut.pt")
    assert "truncated or corrupt" in message and "no end record" in message


def test_a_zip_cut_in_its_directory_is_said_to_be_cut_short(tmp_path):
    """torch.load says only "[Errno 22] Invalid argument" of a zip that lost its end; the line says
    what is missing. A zip that keeps its end but lost a record is not called cut short."""
    torch.save(small_cnn().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:-30])  # inside the end records
    os.remove(tmp_path / "full.pt")
    message = _refused(tmp_path / "cut.pt")
    assert "no end record" in message and "Errno" not in message


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("weights.pt", b"", "it is empty (0 bytes)"),
        ("model.safetensors", b"", "it is empty (0 bytes)"),
        ("weights.pt", b"this is not", "neither a zip archive nor a pickle (first bytes 74 68 69 73)"),
        ("model.safetensors", b"\x01\x02\x03", "3 bytes long, too short for a safetensors header"),
        ("model.safetensors", struct.pack("<Q", 2**40) + b'{"w": 1}',
         "its header is said to be 1,099,511,627,776 bytes long, but the file holds 8"),
        ("model.safetensors", struct.pack("<Q", 8) + b"[1, 2, 3]", "does not start with a JSON object"),
        ("track.jsonl", b"", "it is empty (0 bytes)"),
        ("track.jsonl", b'{"loss": 1.0}\n', "its first line is not a normscope tracker log's header"),
    ],
    ids=["empty-pt", "empty-safetensors", "text-pt", "short-safetensors", "header-past-end", "not-json",
         "empty-log", "other-jsonl"],
)
def test_a_file_named_as_a_checkpoint_says_what_is_wrong_with_it(tmp_path, name, content, reason):
    """Alone or as the only candidate in a directory: the line names the file and what its first
    bytes show instead of a checkpoint."""
    (tmp_path / name).write_bytes(content)
    alone = _refused(tmp_path / name)
    assert alone.startswith(f"{tmp_path / name} is not a checkpoint normscope can read: ") and reason in alone
    within = _refused(tmp_path)
    assert within.startswith(f"no checkpoints found in {tmp_path} (looked for:")
    assert within.endswith(alone.split(": ", 1)[1]) and f"; {name}: " in within


def test_a_directory_names_the_first_unreadable_candidate_and_counts_the_rest(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("a.pt", "b.pt", "c.pt"):
        (tmp_path / name).write_bytes(b"")
    message = _refused(tmp_path)
    assert message.endswith("; a.pt: it is empty (0 bytes) (and 2 more file(s) named so)")


@pytest.mark.parametrize(
    "header",
    [
        b"{not json at all",
        json.dumps(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}
        ).encode(),
    ],
    ids=["bad-json", "offsets-past-end"],
)
def test_corrupt_safetensors_header(tmp_path, header):
    (tmp_path / "m.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + b"\0" * 16
    )
    assert "corrupt safetensors header" in _refused(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, "has dtype 'Q7', which safetensors does not define"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "has shape [-2], not a list of non-negative"),
        ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "has shape [2.0], not a list of non-negative"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "has data_offsets [0], not two integers"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "its end comes before its start"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}, "a negative offset"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "ends at byte 16 of the data, which holds 8 bytes"),
        ({"dtype": "F32"}, "lacks one of dtype, shape and data_offsets"),
        (5, "lacks one of dtype, shape and data_offsets"),
        ({"dtype": "X" * 5000, "shape": [2], "data_offsets": [0, 8]}, "has dtype 'XXXX"),
    ],
    ids=["dtype", "negative-dim", "float-dim", "one-offset", "backwards", "negative-offset", "past-end",
         "missing-keys", "not-an-object", "long-dtype"],
)
def test_a_corrupt_header_entry_is_named_with_what_is_wrong(tmp_path, entry, says):
    """Each way an entry can be wrong has its own words, so the user need not guess between a cut
    file and a writer's bug; what the file holds is quoted at most 40 characters long."""
    header = json.dumps({"w": entry}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    message = _refused(tmp_path / "m.safetensors")
    assert message.startswith(f"{tmp_path / 'm.safetensors'} has a corrupt safetensors header (entry 'w' ")
    assert says in message and len(message) < len(str(tmp_path)) + 200


def test_safetensors_header_length_past_end_of_file(tmp_path):
    save_file({"w": torch.ones(4)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", 10**6) + data[8:])
    # the sniffer no longer recognises it; either way it is one line, and nothing is read
    message = _refused(tmp_path / "m.safetensors")
    assert "m.safetensors" in message


def test_raw_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    (tmp_path / "model.pt").write_bytes(pickle.dumps(Exploit(str(marker))))
    message = _refused(tmp_path / "model.pt", UnsafeCheckpointError)
    assert "io.open" in message and "never runs code" in message
    assert not marker.exists()


def test_torch_save_of_an_object_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save(
        {"model": small_mlp().state_dict(), "hook": Exploit(str(marker))},
        tmp_path / "ckpt.pt",
    )
    message = _refused(tmp_path / "ckpt.pt", UnsafeCheckpointError)
    assert "io.open" in message
    assert not marker.exists()


def test_legacy_format_object_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    payload = {"model": small_mlp().state_dict(), "hook": Exploit(str(marker))}
    torch.save(payload, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    _refused(tmp_path / "old.pt", UnsafeCheckpointError)
    assert not marker.exists()


def test_directory_mixing_unrelated_models(tmp_path):
    for step in (1, 2):
        torch.save(
            {"model": small_cnn().state_dict(), "step": step},
            tmp_path / f"cnn_{step}.pt",
        )
    bigger = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(6)))
    torch.save({"model": bigger.state_dict(), "step": 3}, tmp_path / "mlp_3.pt")
    message = _refused(tmp_path)
    assert "mixes unrelated models" in message
    assert "cnn_1.pt, cnn_2.pt" in message and "mlp_3.pt" in message


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip(
            "root reads files whatever their mode; see the as-root variant below"
        )
    torch.save(small_mlp().state_dict(), tmp_path / "a.pt")
    os.chmod(tmp_path / "a.pt", 0)
    try:
        assert "permission denied" in _refused(tmp_path / "a.pt")
    finally:
        os.chmod(tmp_path / "a.pt", 0o644)


def test_unreadable_file_as_root(tmp_path, monkeypatch):
    """Root ignores file modes, so the kernel's EACCES is imitated at `open` for one real file."""
    torch.save(small_mlp().state_dict(), tmp_path / "a.pt")
    locked = os.fspath(tmp_path / "a.pt")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(file) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(file, *args, **kwargs)

    before = fingerprint(tmp_path)
    monkeypatch.setattr(builtins, "open", guarded_open)
    for path in (tmp_path / "a.pt", tmp_path):
        with pytest.raises(
            BadInputError, match=f"cannot read {locked}: permission denied"
        ):
            open_run(path)
    monkeypatch.undo()
    assert fingerprint(tmp_path) == before


def test_nan_and_inf_weights_are_not_a_source_error(tmp_path):
    sd = small_mlp().state_dict()
    sd["0.weight"][0, 0] = float("nan")
    sd["3.bias"][1] = float("inf")
    torch.save(sd, tmp_path / "w.pt")
    (snap,) = open_run(tmp_path / "w.pt").snapshots
    assert torch.isnan(snap.tensors["0.weight"].load()).sum() == 1
    assert torch.isinf(snap.tensors["3.bias"].load()).sum() == 1


def test_the_cli_turns_a_source_error_into_one_line_and_exit_2(tmp_path, capsys):
    @handle_errors
    def command() -> None:
        open_run(tmp_path)

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty directory" in err


def test_every_must_be_positive(tmp_path):
    torch.save(small_mlp().state_dict(), tmp_path / "w.pt")
    with pytest.raises(BadInputError, match="at least 1"):
        open_run(tmp_path, every=0)


def test_torch_file_with_a_safetensors_name(tmp_path):
    torch.save(small_mlp().state_dict(), tmp_path / "w.safetensors")
    assert "rename it to .pt" in _refused(tmp_path / "w.safetensors")


def test_index_naming_a_shard_outside_its_directory(tmp_path):
    save_file({"w": torch.ones(4)}, tmp_path / "elsewhere.safetensors")
    (tmp_path / "model").mkdir()
    index = {"metadata": {}, "weight_map": {"w": "../elsewhere.safetensors"}}
    (tmp_path / "model" / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "points outside its directory" in _refused(tmp_path / "model")


def _patch_central_entry(data: bytearray, suffix: bytes, offset: int, value: bytes) -> None:
    """Overwrite bytes at `offset` of the central-directory entry of the member named *`suffix`."""
    at = data.rindex(b"PK\x01\x02", 0, data.rindex(suffix))
    data[at + offset : at + offset + len(value)] = value


@pytest.mark.parametrize("damage", ["version", "utf8-name", "size-past-end", "zip64-locator"])
def test_a_zip_directory_that_zipfile_cannot_read_is_one_line(tmp_path, damage):
    # zipfile raises NotImplementedError, UnicodeDecodeError or EOFError for these, not
    # BadZipFile; each must still end as a one-line bad-input error, never an internal error
    torch.save(small_mlp().state_dict(), tmp_path / "w.pt")
    data = bytearray((tmp_path / "w.pt").read_bytes())
    if damage == "version":  # "version needed to extract": 20.8
        _patch_central_entry(data, b"data.pkl", 6, struct.pack("<H", 208))
    elif damage == "utf8-name":  # the UTF-8 flag on a name that is not UTF-8
        _patch_central_entry(data, b"data.pkl", 8, struct.pack("<H", 0x800))
        name_at = data.rindex(b"data.pkl")
        data[name_at] = 0xD7
    elif damage == "size-past-end":  # the pickle's sizes claim more bytes than the file holds
        _patch_central_entry(data, b"data.pkl", 20, struct.pack("<2L", 1 << 30, 1 << 30))
    else:  # the zip64 locator points far past the end of the file (seek raised ValueError)
        locator = data.rindex(b"PK\x06\x07")
        data[locator + 8 : locator + 16] = struct.pack("<Q", 1 << 62)
    (tmp_path / "w.pt").write_bytes(bytes(data))
    _loads_as_torch_or_is_refused(tmp_path / "w.pt")


def _loads_as_torch_or_is_refused(path) -> str:  # type: ignore[no-untyped-def]
    """normscope refuses `path` in one line, or reads the very bytes torch.load reads in the mode
    normscope uses (mapped, to the CPU: record CRCs are not checked); "refused" or "loaded"."""
    from normscope.errors import NormscopeError

    try:
        run = open_run(path)
        load_all(run)
    except NormscopeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return "refused"
    try:
        expected = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except Exception:  # noqa: BLE001
        # torch's zip reader refuses a few directory-level damages that leave every tensor's
        # record intact; the fast reader reads only archives as torch.save writes them
        return "loaded"
    tensors = run.snapshots[0].tensors
    assert set(tensors) == set(expected)
    for name, ref in tensors.items():  # bit for bit: damaged bytes may well be NaNs
        ours, theirs = ref.load(), expected[name]
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert torch.equal(ours.contiguous().view(torch.uint8), theirs.contiguous().view(torch.uint8))
    return "loaded"


def test_randomly_damaged_torch_files_load_as_torch_would_or_are_one_line(tmp_path):
    # A seeded fuzz: a few bytes changed anywhere in a real torch.save file. Every outcome must be
    # the tensors torch.load itself gives, or a one-line refusal; never another exception.
    torch.manual_seed(0)
    torch.save({f"w{i}": torch.randn(i % 5 + 1, 3) for i in range(25)}, tmp_path / "src.pt")
    original = (tmp_path / "src.pt").read_bytes()
    rng = __import__("random").Random(7)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"d{trial}.pt"
        path.write_bytes(bytes(data))
        outcomes[_loads_as_torch_or_is_refused(path)] += 1
    assert outcomes["loaded"] and outcomes["refused"]  # both kinds of damage were met


def test_randomly_damaged_safetensors_files_are_analysed_or_one_line(tmp_path):
    # A seeded fuzz biased to the JSON header, where the structure is: opening and reducing
    # either works or ends in one NormscopeError line (a missing "shape" once raised KeyError).
    import random

    from normscope.engine import compute_stats
    from normscope.errors import NormscopeError

    torch.manual_seed(0)
    save_file({f"w{i}": torch.randn(i % 5 + 1, 3) for i in range(25)}, tmp_path / "src.safetensors")
    original = (tmp_path / "src.safetensors").read_bytes()
    rng = random.Random(3)
    outcomes = {"analysed": 0, "refused": 0}
    for trial in range(200):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            header = rng.random() < 0.7
            data[rng.randrange(2000 if header else len(data))] = rng.randrange(256)
        path = tmp_path / f"d{trial}.safetensors"
        path.write_bytes(bytes(data))
        try:
            compute_stats(open_run(path).snapshots, device="cpu")
        except NormscopeError as exc:
            assert "\n" not in str(exc) and str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["analysed"] += 1
    assert outcomes["analysed"] and outcomes["refused"]


def test_an_optimizer_file_of_other_bytes_is_said_to_be_no_torch_file(tmp_path):
    """accelerate's optimizer.bin holding something else: its first bytes, not the opcode torch's
    safe unpickler stumbled on."""
    for i in range(2):
        directory = tmp_path / "checkpoints" / f"checkpoint_{i}"
        directory.mkdir(parents=True)
        save_file({"w": torch.ones(3, 3) * (i + 1)}, directory / "model.safetensors")
        (directory / "optimizer.bin").write_bytes(b"garbage" * 10)
        torch.save({"last_epoch": i}, directory / "scheduler.bin")
    message = _refused(tmp_path)
    assert message.endswith("optimizer.bin is not a readable torch checkpoint: it starts with neither a zip "
                            "archive nor a pickle (first bytes 67 61 72 62), as torch.save files do")
