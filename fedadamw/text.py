"""Short human texts that the console and the dashboard page both show."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """A short human duration: '4.2 s', '42 s', '3 min 05 s', '1 h 02 min' ('—' if unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"
