"""`normscope analyze` end to end on the committed sample runs and on damaged copies of them."""

import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from normscope.cli import app
from normscope.trajectory import COLUMNS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["analyze", *map(str, args)])


def test_table_names_every_weight_and_the_bounce(sgd_run_dir):
    result = invoke(sgd_run_dir)
    assert result.exit_code == 0, result.output
    for name in ("block1.conv.weight", "block3.bn.weight", "head.weight"):
        assert name in result.output
    assert "running_mean" not in result.output  # buffers are not shown in the table
    assert "61, epoch 0 → epoch 60, ordered by embedded" in result.output
    assert "SGD lr=0.02 (last; largest 0.2) wd=0.001 momentum=0.9" in result.output
    assert "Bounces (robust detector)" in result.output


def test_json_document_matches_the_table(sgd_run_dir):
    result = invoke(sgd_run_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1
    assert len(doc["snapshots"]) == 61
    assert doc["snapshots"][0]["order_source"] == "embedded"
    assert doc["snapshots"][0]["param_groups"][0]["lr"] == pytest.approx(0.2)
    params = {p["param"]: p for p in doc["params"]}
    conv = params["block1.conv.weight"]
    # the checkpoint itself is the reference, recomputed in float64; the engine's documented
    # tolerance is 1e-6 relative (fp32 partial sums over rows of 4096, then float64)
    first = torch.load(sgd_run_dir / "epoch_000.pt", weights_only=True)["model"]["block1.conv.weight"]
    last = torch.load(sgd_run_dir / "epoch_060.pt", weights_only=True)["model"]["block1.conv.weight"]
    assert conv["first_norm"] == pytest.approx(first.double().norm().item(), rel=1e-6)
    assert conv["last_norm"] == pytest.approx(last.double().norm().item(), rel=1e-6)
    # the plateau's wiggles stay within the norm's own correlated fluctuations: no robust bounce,
    # while the exact rule fires on them
    assert doc["bounces"]["robust"]["bounces"] == [] and doc["bounces"]["exact_decay_epochs"], doc["bounces"]
    assert doc["skipped"] == {}


def test_csv_is_the_tidy_table(sgd_run_dir, tmp_path):
    out = tmp_path / "traj.csv"
    result = invoke(sgd_run_dir, "--format", "csv", "-o", out, "--include", "*.conv.weight")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == list(COLUMNS)
    assert set(table["param"]) == {f"block{i}.conv.weight" for i in (1, 2, 3)}
    assert len(table) == 3 * 61
    assert table.loc[table.snapshot == 0, "angle_rad"].isna().all()
    assert (table.loc[table.snapshot > 0, "angle_rad"] > 0).all()


def test_parquet_needs_an_output_file_and_round_trips(sgd_run_dir, tmp_path):
    result = invoke(sgd_run_dir, "--format", "parquet")
    assert result.exit_code == 2
    out = tmp_path / "traj.parquet"
    result = invoke(sgd_run_dir, "--format", "parquet", "-o", out, "--every", "10")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert sorted(table["epoch"].unique()) == [0, 10, 20, 30, 40, 50, 60]


def test_hf_layout_and_its_hyperparameters(adamw_run_dir):
    result = invoke(adamw_run_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["run"]["layout"] == "hf-trainer"
    assert doc["snapshots"][0]["order_source"] == "trainer_state"
    assert doc["snapshots"][-1]["optimizer"] == "AdamW"


def test_nonfinite_weights_are_analysed_and_flagged(tiny_trained_run, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_trained_run, damaged)
    last = max(damaged.glob("*.pt"))
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["model"]["head.weight"][0, :3] = float("nan")
    torch.save(checkpoint, last)
    result = invoke(damaged, "--format", "json")
    assert result.exit_code == 0
    assert "head.weight holds 3 non-finite value(s)" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["totals"]["nonfinite"][0]["param"] == "head.weight"
    # csv and parquet, which run no analysis but the run summary, say the same on stderr
    for fmt in ("table", "csv", "parquet"):
        again = invoke(damaged, "--format", fmt, "-o", tmp_path / f"out.{fmt}")
        assert again.exit_code == 0 and again.stderr == result.stderr, fmt


def test_each_format_says_the_same_notes_with_the_equilibrium(sgd_run_dir, tmp_path):
    said = {}
    for fmt in ("json", "csv", "parquet"):
        result = invoke(sgd_run_dir, "--format", fmt, "--equilibrium", "-o", tmp_path / f"out.{fmt}")
        assert result.exit_code == 0, result.output
        said[fmt] = result.stderr
    assert "normscope: note:" in said["json"]
    assert said["csv"] == said["json"] == said["parquet"]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("normscope: error:")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    result = invoke(tmp_path / "notes.txt")
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_a_filter_that_matches_nothing_is_a_usage_error(sgd_run_dir):
    result = invoke(sgd_run_dir, "--include", "no.such.*")
    assert result.exit_code == 2
    assert "no parameter matches" in result.stderr


def test_too_few_epochs_skip_the_bounce_analysis_with_the_reason(tiny_trained_run):
    first_two = [p for p in sorted(tiny_trained_run.glob("*.pt"))[:2]]
    result = invoke(first_two[0])
    assert result.exit_code == 0, result.output
    assert "bounces: not analysed" in result.output


def test_scale_invariance_verdicts_are_in_the_json(sgd_run_dir):
    doc = json.loads(invoke(sgd_run_dir, "--format", "json", "--every", "5").stdout)
    flagged = sorted(p for p, inv in doc["scale_invariant"].items() if inv)
    assert flagged == ["block1.conv.weight", "block2.conv.weight", "block3.conv.weight"]
    assert doc["evidence"]["block1.conv.weight"]


def test_equilibrium_report_and_plots(sgd_run_dir, tmp_path):
    plots = tmp_path / "plots"
    result = invoke(sgd_run_dir, "--format", "json", "--plots", plots)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    layers = {layer["param"] for layer in doc["equilibrium"]["layers"]}
    assert layers == {"block1.conv.weight", "block2.conv.weight", "block3.conv.weight"}
    assert (plots / "equilibrium.png").stat().st_size > 10_000
    assert (plots / "equilibrium_heatmap.png").stat().st_size > 10_000


def test_model_factory_decides_invariance_exactly(sgd_run_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(sgd_run_dir.parent.parent))
    result = invoke(sgd_run_dir, "--model", "sample_runs.models:bn_cnn", "--every", "20")
    assert result.exit_code == 0, result.output
    assert "exact" in result.output
    bad = invoke(sgd_run_dir, "--model", "no_such_module:factory", "--every", "20")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr


def test_local_dask_cluster_gives_the_same_document(sgd_run_dir):
    local = invoke(sgd_run_dir, "--format", "json", "--every", "15")
    distributed = invoke(sgd_run_dir, "--format", "json", "--every", "15", "--workers", "2")
    assert distributed.exit_code == 0, distributed.output
    assert json.loads(distributed.stdout) == json.loads(local.stdout)


def test_cluster_and_workers_together_is_a_usage_error(sgd_run_dir):
    result = invoke(sgd_run_dir, "--workers", "2", "--cluster", "tcp://127.0.0.1:1")
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_tensorboard_events_with_a_user_tag_pattern(tmp_path):
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    writer = SummaryWriter(str(tmp_path))
    for step in range(5):
        writer.add_scalar("norms/fc.weight", 2.0 + step, step)
        writer.add_scalar("norms/conv.weight", 1.0, step)
    writer.close()
    result = invoke(tmp_path, "--format", "json", "--tag-pattern", r"^norms/(?P<param>.+)$")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["run"]["layout"] == "tensorboard"
    params = {p["param"]: p for p in doc["params"]}
    assert params["fc.weight"]["first_norm"] == pytest.approx(2.0)
    assert params["fc.weight"]["last_norm"] == pytest.approx(6.0)
    bad = invoke(tmp_path, "--tag-pattern", "no_named_group")
    assert bad.exit_code == 2 and "(?P<param>" in bad.stderr


def test_rows_limits_the_terminal_tables_and_says_what_is_left_out(sgd_run_dir):
    # 11 parameters besides buffers: 5 rows shown and 6 left out, in each per-parameter table
    short = runner.invoke(app, ["analyze", str(sgd_run_dir), "--every", "10", "--rows", "5"])
    assert short.exit_code == 0, short.output
    params_table = short.output.split("… 6 more parameters not shown (--rows 0 shows all")[0]
    assert "block2.bn.weight" in params_table and "head.weight" not in params_table
    assert "… 6 more verdicts not shown" in short.output
    full = runner.invoke(app, ["analyze", str(sgd_run_dir), "--every", "10", "--rows", "0"])
    assert full.exit_code == 0 and "more parameters not shown" not in full.output
    default = runner.invoke(app, ["analyze", str(sgd_run_dir), "--every", "10"])
    assert default.output == full.output  # 200 rows by default: a model this size is shown whole


def test_a_divergence_in_every_parameter_is_named_in_a_few_lines(tmp_path):
    """NaN reaches every parameter within a step or two: the first five are named, one line stands for
    the rest, on stderr and in the table alike, and the JSON output lists all of them."""
    for epoch in range(3):
        state = {f"l{j}.weight": torch.randn(3, 3) for j in range(12)}
        if epoch:
            for tensor in state.values():
                tensor[0, 0] = float("nan")
        torch.save({"model": state, "epoch": epoch}, tmp_path / f"e{epoch}.pt")
    result = invoke(tmp_path)
    assert result.exit_code == 0
    warned = [line for line in result.stderr.splitlines() if "non-finite" in line]
    assert warned[:5] == [f"normscope: warning: l{j}.weight holds 1 non-finite value(s) from snapshot 1 on"
                          for j in range(5)]
    assert warned[5:] == ["normscope: warning: and 7 more parameter(s) hold non-finite values "
                          "(all of them: -f json, totals.nonfinite)"]
    assert sum("non-finite values:" in line for line in result.stdout.splitlines()) == 6
    doc = json.loads(invoke(tmp_path, "--format", "json").stdout)
    assert len(doc["totals"]["nonfinite"]) == 12
