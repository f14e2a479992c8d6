"""Builds the fused CPU kernel (normscope/engine/_fused.c) into the package, when it can.

Everything else about the package is in pyproject.toml. The kernel is an optional extension: a
machine without a working C compiler (or without Python's headers) still builds and installs
normscope, which then uses its torch kernels, with the same results more slowly. `normscope
--version` says which one an install has.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# GCC/Clang flags the kernel is tuned for; other compilers get their own defaults.
UNIX_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-g0"]


class OptionalBuildExt(build_ext):
    """Build the kernel if the compiler can; otherwise warn once and build the package without it."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":
            ext.extra_compile_args = [*UNIX_FLAGS, *ext.extra_compile_args]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the torch kernels
            print(
                f"normscope: the fused CPU kernel was not built ({type(exc).__name__}: {exc}); "
                "normscope will use its torch kernels",
                file=sys.stderr,
            )

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler at all for this platform
            print(
                f"normscope: the fused CPU kernel was not built ({type(exc).__name__}: {exc}); "
                "normscope will use its torch kernels",
                file=sys.stderr,
            )


setup(
    ext_modules=[
        Extension(
            "normscope.engine._fused",
            sources=["normscope/engine/_fused.c", "normscope/engine/_fused_module.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
