"""`normscope --help` must stay fast: nothing heavy is imported on the CLI's start-up path."""

import subprocess
import sys


def test_help_does_not_import_torch_or_pandas():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from normscope.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "for command in ('analyze', 'recommend', 'check', 'report', 'watch'):\n"
        "    assert command in result.output\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "normscope", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("normscope:")
    assert "fused CPU kernel:" in out.stdout  # what it reports: tests/test_kernel_loading.py


def test_every_public_name_resolves():
    import normscope

    assert set(normscope.__all__) == {"__version__", *normscope._LAZY}
    for name in normscope.__all__:
        assert getattr(normscope, name) is not None, name
