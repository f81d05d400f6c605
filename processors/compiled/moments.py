"""Due moments as the core computes them: `round(x, 6)` of a float millisecond, and the
millisecond it rounds up to."""

from __future__ import annotations

import numpy as np

from .codes import ROUNDING_TIE
from .jit import step

STATUS = 0  # the slot of a counters array that holds why a run stopped (codes.OK: it did not)


@step
def round6(x: float, counters: np.ndarray) -> float:
    """Python's `round(x, 6)` (correctly rounded); sets counters[STATUS] to ROUNDING_TIE
    when the float product cannot tell which way a near-tie goes."""
    if x >= 8589934592.0:  # 2^33: doubles are spaced wider than 1e-6, round() is x
        return x
    y = x * 1e6
    f = np.floor(y)
    d = y - f
    if abs(d - 0.5) <= abs(y) * 2.3e-16:  # within twice the product's rounding error
        counters[STATUS] = ROUNDING_TIE
    return (f if d < 0.5 else f + 1.0) / 1e6


@step
def ceil_ms(x: float) -> int:
    return np.int64(np.ceil(x))
