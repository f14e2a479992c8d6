"""Pin torch's x86 CPU kernels to AVX2 so a retrained run matches the committed checkpoints bit for bit
on CPUs that block oneDNN's convolutions as the training machine did (cache sizes differ between CPU
models, and with them the summation order; `tests/test_sample_runs.py` then compares norms and
directions instead).

torch picks its vectorised kernels (ATen) and oneDNN's convolutions by the CPU's instruction set; an
AVX-512 machine sums in a different order than an AVX2 one, and 23 steps at lr 0.2 grow that rounding
difference to 1e-1 in the weights. The committed runs were trained with the AVX2 kernels, which every
x86-64 CPU of the last decade has. Both variables are read when torch runs its first operation, so
this must be imported before any tensor work; an explicit value in the environment is kept.
"""

from __future__ import annotations

import os

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_kernels() -> None:
    for name, value in PINNED.items():
        os.environ.setdefault(name, value)
