"""Trajectory tables of the committed sample runs, through the real pipeline (sources → engine), cached."""

from __future__ import annotations

import functools
import os

from normscope.api import load_trajectory
from normscope.trajectory import Trajectory

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_runs")
SGD_RUN = os.path.join(SAMPLES, "digits_bn_cnn_sgd")
ADAMW_RUN = os.path.join(SAMPLES, "digits_ln_transformer_adamw")


@functools.cache
def sample_trajectory(path: str) -> Trajectory:
    return load_trajectory(path)
