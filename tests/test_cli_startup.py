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


def test_the_exit_leaves_the_last_collections_nothing_to_walk_and_still_runs_exit_handlers(tmp_path):
    # main() freezes the collector before it exits (the last collections' walk over every
    # object cost ~0.2 s a command): what the command wrote is whole, and atexit handlers run
    from pathlib import Path

    run = Path(__file__).resolve().parent.parent / "sample_runs" / "digits_bn_cnn_sgd"
    out, said = tmp_path / "traj.csv", tmp_path / "exit.txt"
    code = (
        "import atexit, gc, sys\n"
        f"atexit.register(lambda: open({str(said)!r}, 'w').write(str(gc.get_freeze_count())))\n"
        "from normscope.cli import main\n"
        f"sys.argv = ['normscope', 'analyze', {str(run)!r}, '-f', 'csv', '-o', {str(out)!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert int(said.read_text()) > 10_000  # the handler ran, after the objects were frozen
    lines = out.read_text().splitlines()
    assert lines[0].startswith("snapshot,") and len(lines) == 1 + 61 * 17, (lines[0], len(lines))


def test_a_command_runs_with_the_collector_paused_and_a_watch_resumes_it(tmp_path):
    # main() pauses the cyclic collector for the command (its passes over the imports' and the
    # run's objects cost ~90 ms of an analyze); the live view's loop, which runs on, resumes it
    from pathlib import Path

    run = Path(__file__).resolve().parent.parent / "sample_runs" / "digits_bn_cnn_sgd"
    code = (
        "import gc, sys, time\n"
        "import normscope.api as api\n"
        "from normscope.cli import main, watch\n"
        "seen = []\n"
        "load = api.load_trajectory\n"
        "api.load_trajectory = lambda *a, **k: (seen.append(gc.isenabled()), load(*a, **k))[1]\n"
        "def stop(seconds):\n"
        "    seen.append(gc.isenabled())\n"
        "    raise KeyboardInterrupt\n"
        "watch.time.sleep = stop\n"
        "for argv in (['analyze', sys.argv[1], '-f', 'csv', '-o', '/dev/null'],\n"
        "             ['watch', sys.argv[1], '--interval', '1']):\n"
        "    sys.argv = ['normscope', *argv]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    seen.append(('after', gc.isenabled()))\n"
        "print(seen)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    # analyze: paused while it loads, on again after; watch: on in its loop, and after
    assert done.stdout.strip().splitlines()[-1] == "[False, ('after', True), True, ('after', True)]", done.stdout
