"""What the network's head is added to: a fixed fusion of the two sources.

The head starts at zero, so an untrained network returns its residual exactly and training
learns only the correction to it. ``keep_both_target`` is also the ``keep-both`` objective's
target, so a ``keep-both`` network starts where that objective points.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TARGET_BACKGROUND = 0.035
"""keep-both's background level of the fluorescence source, in its [0, 1] units (9 / 255 for
8-bit data over 255): signal above it is laid on the structural image."""
TARGET_GAIN = 1.1
"""keep-both's gain on that signal: slightly above 1, so the fluorescence stands out of the
structure it is laid on."""
FIRST_MODEL_QUANTILE = 0.1
"""The first keep-both model's background: the 10th percentile of each crop (``background=None``)."""


def keep_both_target(
    a: torch.Tensor, b: torch.Tensor, background: float | None = TARGET_BACKGROUND, gain: float = TARGET_GAIN
) -> torch.Tensor:
    """b plus ``gain`` times a's signal above ``background``, clipped to [0, 1]: the structural
    image with the fluorescence laid on top, so neither is lost where the other is brighter
    (max(a, b) drops a dim GFP signal on bright phase contrast). A fixed level keeps the target
    a local rule the network can learn; ``None`` takes the 10th percentile of a in each image of
    the batch (the first keep-both model's rule)."""
    if background is None:
        level = torch.quantile(a.flatten(1).float(), FIRST_MODEL_QUANTILE, dim=1).to(a.dtype).view(-1, 1, 1, 1)
    else:
        level = torch.tensor(background, dtype=a.dtype, device=a.device)
    return (b + gain * torch.relu(a - level)).clamp(0, 1)


RESIDUALS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "max": torch.maximum,  # the paper objective's intensity target
    "keep-both": keep_both_target,  # a laid on b (a fluorescence, b structure)
    "sum2": lambda a, b: 2 * a + 2 * b,  # the authors' code
    "mean": lambda a, b: (a + b) / 2,
    "none": lambda a, b: torch.zeros_like(a),
}
"""``ModelConfig.residual`` by name: ``residual(a, b)`` on (B, 1, H, W) sources."""
