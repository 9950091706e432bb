"""The settings of a training run (saved in its config.json), what each step reports, what a
run returns, and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._json_records import from_json
from ..engine.sources import PERCENTILES
from ..errors import PreflightError
from ..model.residuals import RESIDUALS, TARGET_BACKGROUND, TARGET_GAIN
from .objectives import DEFAULT_WEIGHTS, OBJECTIVES, SSIM_MODES

MIN_CROP = 16
NORMALISE = ("percentile", "range", "none")
"""How sources are mapped to [0, 1]: as ``fuse(normalise=...)`` does (robust percentiles per
image; an integer dtype's range, e.g. 8-bit / 255, which keeps a dim channel dim; or not at all)."""


@dataclass
class TrainSettings:
    """Every knob of a run; saved in the run's config.json."""

    steps: int = 500
    crop: int = 128
    batch: int = 2
    lr: float = 2e-4
    warmup: int = 25
    min_lr_fraction: float = 0.05  # the cosine ends at lr * this
    weight_decay: float = 1e-4
    clip: float = 1.0  # max gradient norm; 0 = no clipping
    objective: str = "paper"  # a key of objectives.OBJECTIVES
    loss_weights: tuple[float, float, float] = DEFAULT_WEIGHTS  # intensity, texture, structure
    ssim_weights: tuple[float, float] = (0.5, 0.5)  # paper objective: SSIM to source a, to source b
    ssim: str = "auto"  # paper objective: the structure measure
    target_background: float | None = TARGET_BACKGROUND  # keep-both: a's background level; None = q10 per crop
    target_gain: float = TARGET_GAIN  # keep-both: gain on a's signal above it
    edge_weight: float = 0.0  # keep-both: weight of 1 - Qabf(fused; a, b), the edges kept from both
    region_weight: float = 2.0  # loss weight of mask label 2
    mask_coverage: float = 1.0  # fraction of a crop that must lie inside the mask
    val_fraction: float = 0.15
    val_split: str = "auto"  # "band" (a block of each pair), "pairs" (whole pairs) or "auto"
    normalise: str = "percentile"  # NORMALISE: robust percentiles per image, dtype range, or none
    intensity_jitter: float = 0.0  # each crop's sources scaled by their own random gain in 1 +- this
    percentiles: tuple[float, float] = PERCENTILES  # the same as the fusion pipeline's
    base: str = "default"  # model name, checkpoint path, or "scratch"
    config: str = "tiny"  # the config trained from scratch
    residual: str | None = None  # the network's output residual (model.residuals); None: the base's own
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, on CUDA only
    log_every: int = 10
    val_every: int = 50
    # A hard kill (power cut, SIGKILL, out of memory) loses at most this much work: ``last`` and
    # its resume state are saved after this many steps or minutes, whichever comes first.
    checkpoint_every_steps: int = 100
    checkpoint_every_minutes: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        if isinstance(values.get("normalise"), bool):  # runs saved before "range" existed
            values = {**values, "normalise": "percentile" if values["normalise"] else "none"}
        settings: TrainSettings = from_json(cls, values, "training settings", PreflightError)
        return settings


@dataclass
class StepInfo:
    """What ``on_step`` receives after each step."""

    step: int
    steps: int
    lr: float
    terms: dict[str, float]  # loss and the objective's own terms
    val_terms: dict[str, float] | None = None  # on validation steps
    preview: np.ndarray | None = None  # fused first validation crop, on validation steps
    preview_origin: tuple[int, int, int] | None = None  # (pair index, row, column) of the preview
    elapsed: float = 0.0


@dataclass
class TrainResult:
    """What ``finetune`` returns: the run folder, where it stopped and its checkpoints."""

    run_dir: Path
    step: int
    last: Path
    best: Path
    best_val_loss: float
    cancelled: bool
    history: list[dict[str, float]] = field(default_factory=list, repr=False)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then a cosine down to
    ``lr * min_lr_fraction`` at ``steps``; ``step`` counts from 0."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    span = max(settings.steps - settings.warmup, 1)
    progress = min((step - settings.warmup) / span, 1.0)
    floor = settings.min_lr_fraction
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _finite(*values: Any) -> bool:
    """Whether every number (or tuple of numbers) is finite: a NaN or infinite setting trains a
    NaN model."""
    flat = [v for value in values for v in (value if isinstance(value, (tuple, list)) else (value,))]
    try:
        return all(math.isfinite(float(v)) for v in flat)
    except (TypeError, ValueError):
        return False


def check_settings(settings: TrainSettings) -> None:
    """Every problem with the settings at once, as one ``PreflightError``."""
    problems = []
    if settings.steps < 1:
        problems.append(f"steps must be at least 1 (got {settings.steps})")
    if settings.batch < 1:
        problems.append(f"batch must be at least 1 (got {settings.batch})")
    if settings.crop < MIN_CROP:
        problems.append(f"crop must be at least {MIN_CROP} px (got {settings.crop})")
    if not (math.isfinite(settings.lr) and settings.lr > 0):
        problems.append(f"learning rate must be a positive finite number (got {settings.lr})")
    weights = settings.loss_weights
    if len(weights) != 3 or not _finite(*weights) or min(weights) < 0 or sum(weights) <= 0:
        problems.append(f"loss weights must be three finite non-negative numbers, not all 0 (got {weights})")
    others = {
        "weight decay": settings.weight_decay, "clip": settings.clip, "min_lr_fraction": settings.min_lr_fraction,
        "ssim weights": settings.ssim_weights, "region weight": settings.region_weight,
        "mask coverage": settings.mask_coverage, "validation fraction": settings.val_fraction,
        "percentiles": settings.percentiles,
    }  # fmt: skip
    problems += [f"{name} must be finite (got {value})" for name, value in others.items() if not _finite(value)]
    if not 0 < settings.val_fraction < 0.5:
        problems.append(f"validation fraction must be in (0, 0.5) (got {settings.val_fraction})")
    if settings.val_split not in ("auto", "band", "pairs"):
        problems.append(f"val_split must be auto, band or pairs (got {settings.val_split!r})")
    if not settings.region_weight > 0:
        problems.append(f"region weight must be positive (got {settings.region_weight})")
    if not 0 < settings.mask_coverage <= 1:
        problems.append(f"mask coverage must be in (0, 1] (got {settings.mask_coverage})")
    if settings.target_background is not None and not (
        _finite(settings.target_background) and 0 <= settings.target_background < 1
    ):
        problems.append(f"target background must be in [0, 1) or null (got {settings.target_background})")
    if not (_finite(settings.target_gain) and settings.target_gain > 0):
        problems.append(f"target gain must be a positive finite number (got {settings.target_gain})")
    if settings.residual is not None and settings.residual not in RESIDUALS:
        problems.append(f"unknown residual {settings.residual!r}: choose one of {', '.join(RESIDUALS)}")
    if not (_finite(settings.edge_weight) and settings.edge_weight >= 0):
        problems.append(f"edge weight must be a finite number >= 0 (got {settings.edge_weight})")
    if settings.objective not in OBJECTIVES:
        problems.append(f"unknown objective {settings.objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if settings.normalise not in NORMALISE:
        problems.append(f"normalise must be one of {', '.join(NORMALISE)} (got {settings.normalise!r})")
    if not 0 <= settings.intensity_jitter < 1:
        problems.append(f"intensity jitter must be in [0, 1) (got {settings.intensity_jitter})")
    if settings.ssim not in SSIM_MODES:
        problems.append(f"ssim must be one of {', '.join(SSIM_MODES)} (got {settings.ssim!r})")
    if settings.warmup < 0 or settings.log_every < 1 or settings.val_every < 1:
        problems.append("warmup must be >= 0, log_every and val_every >= 1")
    if settings.checkpoint_every_steps < 1 or not (
        _finite(settings.checkpoint_every_minutes) and settings.checkpoint_every_minutes > 0
    ):
        problems.append(
            "checkpoint_every_steps must be >= 1 and checkpoint_every_minutes a positive number "
            f"(got {settings.checkpoint_every_steps}, {settings.checkpoint_every_minutes})"
        )
    if problems:
        raise PreflightError("; ".join(problems))
