"""Builds normscope's two optional C extensions into the package, when it can: the fused CPU
kernel (normscope/engine/_fused.c) and the torch.save reader's loops (normscope/sources/_torchzip.c).

Everything else about the package is in pyproject.toml. Both are optional: a machine without a
working C compiler (or without Python's headers) still builds and installs normscope, which then
uses its torch kernels and the reader's Python loops, with the same results more slowly.
`normscope --version` says which ones an install has.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# GCC/Clang flags the kernel is tuned for; other compilers get their own defaults.
UNIX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-g0"]


# What each extension's absence means, for the one warning the build prints.
WITHOUT = {
    "normscope.engine._fused": "the fused CPU kernel was not built; normscope will use its torch kernels",
    "normscope.sources._torchzip": "the torch.save reader's C loops were not built; it will use its Python loops",
}


class OptionalBuildExt(build_ext):
    """Build each extension if the compiler can; otherwise warn once and build the package without it."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":
            ext.extra_compile_args = [*UNIX_FLAGS, *ext.extra_compile_args]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the Python paths
            print(f"normscope: {WITHOUT[ext.name]} ({type(exc).__name__}: {exc})", file=sys.stderr)

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler at all for this platform
            for without in WITHOUT.values():
                print(f"normscope: {without} ({type(exc).__name__}: {exc})", file=sys.stderr)


setup(
    ext_modules=[
        Extension(
            "normscope.engine._fused",
            sources=["normscope/engine/_fused.c", "normscope/engine/_fused_module.c"],
            optional=True,
        ),
        Extension(
            "normscope.sources._torchzip",
            sources=["normscope/sources/_torchzip.c"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
