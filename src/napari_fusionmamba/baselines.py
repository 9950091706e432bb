"""Classical fusion methods, for comparison with the network and as a fallback.

Every method has the signature ``method(a, b) -> fused`` on two 2D float32 planes in [0, 1]
(already normalised by the caller) and returns a float32 plane of the same shape in [0, 1], so
the tiled engine, the CLI (``--method``) and the widgets can run any of them like the network.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

FusionMethod = Callable[[np.ndarray, np.ndarray], np.ndarray]


def average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((np.asarray(a, np.float32) + np.asarray(b, np.float32)) / 2).astype(np.float32)


def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(a, np.float32), np.asarray(b, np.float32))


BASELINES: dict[str, FusionMethod] = {
    "average": average,
    "max": maximum,
}
