"""Where the fused kernel comes from: the package's own extension module, never a file elsewhere.

normscope once compiled the kernel at first use into `$XDG_CACHE_HOME/normscope` (or
`~/.cache/normscope`, or `$NORMSCOPE_CACHE_DIR`) and loaded whatever library had the expected name
there, so one user could plant code another user's run executed. These tests plant such libraries
and check that nothing of them runs, and that the module itself is refused from a directory others
can write to.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from normscope.engine import fused

PLANTED = textwrap.dedent(
    """
    #include <stdio.h>
    #include <stdlib.h>
    #include <stdint.h>
    __attribute__((constructor)) static void planted(void) {
        const char *marker = getenv("PLANTED_MARKER");
        if (marker) { FILE *f = fopen(marker, "w"); if (f) { fputs("ran", f); fclose(f); } }
    }
    int normscope_fused_abi(void) { return 1; }
    void normscope_reduce(int64_t count, ...) { (void)count; }
    """
)
OLD_FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which(compiler) is None:
        pytest.skip("planting a library needs a C compiler")
    return compiler


def _names_the_old_loader_used(compiler: str) -> list[str]:
    """`fused-<digest>.so`, digest from the kernel's source, flags, compiler and machine, as the
    run-time compiler named its builds; plus other plausible names of the kernel."""
    path = shutil.which(compiler) or compiler
    st = os.stat(path)
    identity = f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
    import sysconfig

    names = ["fused-0000000000000000.so", "_fused.so", f"_fused{sysconfig.get_config_var('EXT_SUFFIX')}"]
    # the kernel's source: beside the module in a checkout, in the checkout of these tests otherwise
    for source in (Path(fused.__file__).with_name("_fused.c"),
                   Path(__file__).resolve().parent.parent / "normscope" / "engine" / "_fused.c"):
        if source.exists():
            digest = hashlib.sha256(
                b"\0".join([source.read_bytes(), " ".join(OLD_FLAGS).encode(), identity.encode(),
                            os.uname().machine.encode()])
            ).hexdigest()[:16]
            names.insert(0, f"fused-{digest}.so")
            break
    return names


def _plant(directory: Path, library: Path, names: list[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o777)  # a shared, world-writable cache, as the attack needs
    planted = []
    for name in names:
        target = directory / name
        shutil.copy(library, target)
        os.chmod(target, 0o777)
        planted.append(target)
    return planted


def test_a_library_planted_in_the_cache_directories_is_never_loaded(tmp_path, tiny_trained_run):
    compiler = _compiler()
    source = tmp_path / "planted.c"
    source.write_text(PLANTED)
    library = tmp_path / "planted.so"
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)

    home, xdg, explicit = tmp_path / "home", tmp_path / "xdg", tmp_path / "explicit"
    names = _names_the_old_loader_used(compiler)
    planted = [*_plant(home / ".cache" / "normscope", library, names),
               *_plant(xdg / "normscope", library, names),
               *_plant(explicit, library, names)]
    marker = tmp_path / "the planted code ran"
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(xdg),
           "NORMSCOPE_CACHE_DIR": str(explicit), "PLANTED_MARKER": str(marker)}
    env.pop("NORMSCOPE_FUSED", None)

    # One process computes a whole run's statistics on the CPU, then lists what it has mapped.
    code = textwrap.dedent(
        f"""
        import normscope
        from normscope.engine.fused import fused_kernel
        fused_kernel()
        normscope.load_trajectory({str(tiny_trained_run)!r}, device="cpu")
        print(open("/proc/self/maps").read() if __import__("os").path.exists("/proc/self/maps") else "")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    for path in planted:
        assert str(path) not in result.stdout
    # the same through the command line, with the verbose notes on
    cli = subprocess.run([sys.executable, "-m", "normscope", "-v", "analyze", str(tiny_trained_run),
                          "--device", "cpu"], env=env, capture_output=True, text=True, check=False)
    assert cli.returncode == 0, cli.stderr
    assert not marker.exists()
    # nothing is compiled or written into a cache either
    for directory in (home / ".cache" / "normscope", xdg / "normscope", explicit):
        assert sorted(p.name for p in directory.iterdir()) == sorted(set(names))


def _package_copy(tmp_path: Path) -> Path:
    """A copy of the installed package (with its built kernel) under `tmp_path/site`."""
    import normscope

    if not fused.kernel_status().active:
        pytest.skip("this install has no fused kernel (built without a C compiler)")
    site = tmp_path / "site"
    shutil.copytree(Path(normscope.__file__).parent, site / "normscope",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


# The two native modules, each with what says whether it loaded: (package directory, file
# pattern, the status expression, the variable that would switch it off).
NATIVE = {
    "kernel": ("engine", "_fused*.so", "normscope.engine.fused.kernel_status()",
               "normscope.engine._fused", "NORMSCOPE_FUSED"),
    "reader loops": ("sources", "_torchzip*.so", "normscope.sources._speedups.status",
                     "normscope.sources._torchzip", "NORMSCOPE_NO_C_READER"),
}  # fmt: skip


def _status_in(site: Path, native: str = "kernel") -> tuple[str, str]:
    _, _, status, module, variable = NATIVE[native]
    code = (f"import sys, normscope.engine.fused, normscope.sources._speedups; s = {status}; "
            f"print(s.active, {module!r} in sys.modules); print(s.detail)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop(variable, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=site).stdout.splitlines()
    return out[0], out[1]


@pytest.mark.parametrize("native", list(NATIVE))
def test_native_code_is_not_loaded_from_a_directory_others_can_write(tmp_path, native):
    site = _package_copy(tmp_path)
    if _status_in(site, native)[0] != "True True":
        pytest.skip(f"this install has no {native} (built without a C compiler)")
    os.chmod(site / "normscope" / NATIVE[native][0], 0o777)
    loaded, detail = _status_in(site, native)
    assert loaded == "False False"
    assert "writable by other users" in detail


@pytest.mark.parametrize("native", list(NATIVE))
def test_native_code_is_not_loaded_from_a_file_others_can_write(tmp_path, native):
    site = _package_copy(tmp_path)
    if _status_in(site, native)[0] != "True True":
        pytest.skip(f"this install has no {native} (built without a C compiler)")
    (module,) = (site / "normscope" / NATIVE[native][0]).glob(NATIVE[native][1])
    os.chmod(module, 0o666)
    loaded, detail = _status_in(site, native)
    assert loaded == "False False"
    assert "writable by other users" in detail


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a file to another user needs root")
def test_the_kernel_is_not_loaded_from_a_file_another_user_owns(tmp_path):
    site = _package_copy(tmp_path)
    (module,) = (site / "normscope" / "engine").glob("_fused*.so")
    os.chown(module, 54321, 54321)
    loaded, detail = _status_in(site)
    assert loaded == "False False"
    assert "belongs to another user" in detail


def test_version_says_what_the_install_has():
    import platform

    import torch

    out = subprocess.run([sys.executable, "-m", "normscope", "--version"], capture_output=True,
                         text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["torch"] == torch.__version__
    assert fields["python"].startswith(platform.python_version())
    assert fields["cuda"].startswith("available" if torch.cuda.is_available() else "not available")
    assert fields["fused CPU kernel"] == fused.kernel_status().detail
    assert fields["fused CPU kernel"].startswith("active") == (fused.fused_kernel() is not None)
    if "extras installed" in fields:
        import importlib.util

        has_sklearn = importlib.util.find_spec("sklearn") is not None
        assert ("samples" in fields["extras installed"].split(", ")) == has_sklearn


def test_a_run_on_the_torch_kernels_says_so_once_with_verbose(tiny_trained_run):
    env = {**os.environ, "NORMSCOPE_FUSED": "0"}
    command = [sys.executable, "-m", "normscope", "analyze", str(tiny_trained_run), "--device", "cpu"]
    quiet = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""
    verbose = subprocess.run([*command[:3], "-v", *command[3:]], env=env, capture_output=True,
                             text=True, check=False)
    assert verbose.returncode == 0
    assert verbose.stderr.count("torch kernels") == 1
    assert "NORMSCOPE_FUSED=0" in verbose.stderr

