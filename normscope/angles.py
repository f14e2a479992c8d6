"""The angle between two weight tensors from their reduced statistics (norms, dot product, squared
difference), as the engine measures them: pure Python, imported by every stage that turns sums into
angles."""

from __future__ import annotations

import math


def angle_between(norm_a: float, norm_b: float, dot: float | None, diff_sq: float | None) -> float:
    """Angle (radians) between two tensors from their reduced stats, accurate for tiny angles.

    arccos(<a,b>/|a||b|) cannot resolve angles below ~1e-8 rad; the chord form uses |a-b|^2, which
    the engine measures directly:  |a-b|^2 - (|a|-|b|)^2 = 2|a||b|(1-cos).
    """
    if norm_a <= 0 or norm_b <= 0 or not (math.isfinite(norm_a) and math.isfinite(norm_b)):
        return math.nan
    if diff_sq is not None and math.isfinite(diff_sq):
        chord_sq = max(diff_sq - (norm_a - norm_b) ** 2, 0.0) / (norm_a * norm_b)  # = 2(1-cos)
        return 2.0 * math.asin(min(1.0, math.sqrt(chord_sq) / 2.0))
    if dot is not None and math.isfinite(dot):
        return math.acos(max(-1.0, min(1.0, dot / (norm_a * norm_b))))
    return math.nan
