"""How the report writes a value that its summary, figures and page all show: a gain in points, or a dash."""

from __future__ import annotations

import math
from typing import Any


def missing(value: Any) -> bool:
    """None or NaN: what pandas and the summary use for a value that was not measured."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def to_points(fraction: Any) -> float:
    """A fraction of accuracy in percentage points; NaN when missing."""
    return math.nan if missing(fraction) else 100.0 * float(fraction)


def gain_text(gain_pt: float, se_pt: float) -> str:
    """`+0.42 ± 0.10 pt`; without a standard error (one seed) just the gain."""
    if missing(gain_pt):
        return "—"
    return f"{gain_pt:+.2f} pt" if missing(se_pt) else f"{gain_pt:+.2f} ± {se_pt:.2f} pt"
