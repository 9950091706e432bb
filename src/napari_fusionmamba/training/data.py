"""Training pairs: reading and checking them, region masks, the split into training and
validation regions (so validation never sees a training pixel), and crop sampling.

Crops are sampled only where a pair's mask is set (label 2 = "important detail" weighs
``region_weight`` in the loss); a block of each pair's masked region, or whole pairs when there
are many, is held out for validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.sources import as_source, normalisation_of
from ..errors import ImageReadError, PreflightError
from ..io import open_image
from ..io.colour import rgb_to_ycrcb
from .settings import TrainSettings

MAX_VAL_CROPS = 16
# Pairs from this many up are split for validation by whole pairs, fewer by a block of each pair.
PAIR_SPLIT_FROM = 5
# Sources whose robust ranges differ more than this factor need normalisation.
MAX_RANGE_RATIO = 4.0


@dataclass
class Pair:
    """One registered pair: arrays (H, W) or colour (H, W, 3|4), or image file paths.

    ``mask``: optional array or file of the same H, W; 0 = not used, 2 = important detail
    (weighted ``region_weight``), any other positive label = used. ``weight``: how often this pair
    is sampled relative to the others.
    """

    a: object
    b: object
    mask: object = None
    name: str = ""
    weight: float = 1.0


def _load(value: Any, what: str) -> tuple[np.ndarray, str]:
    """An in-memory array from an array or an image file (read by ``io.open_image``), and the
    name to use in messages."""
    if isinstance(value, (str, Path)):
        try:
            image = open_image(value)
        except ImageReadError as error:
            raise PreflightError(str(error)) from None
        return np.asarray(image.data), str(value)
    return np.asarray(value), what


def _by_dtype_range(image: np.ndarray, which: str) -> np.ndarray:
    """An integer image over its dtype's range (8-bit / 255), by the same rule as
    ``fuse(normalise="range")``; floats pass (they are checked to lie in [0, 1])."""
    if image.dtype.kind in "iu":
        return normalisation_of(as_source(image, which), "range")(image)
    return image


def _luminance(image: np.ndarray) -> np.ndarray:
    """Gray images pass; colour (H, W, 3|4) becomes its Y, as the network fuses colour."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return rgb_to_ycrcb(image[..., :3])[0]
    return image.astype(np.float32, copy=False)


@dataclass
class _PairData:
    """One pair read, normalised and split: what the sampler and validation crop from."""

    name: str
    a: np.ndarray  # float32 (H, W) in [0, 1]
    b: np.ndarray
    weight: np.ndarray  # float32 (H, W): 0 outside the mask, region_weight on label 2
    train_positions: np.ndarray  # flat indices of valid crop top-left corners
    val_positions: list[tuple[int, int]]
    sample_weight: float


def _valid_corners(inside: np.ndarray, crop: int, coverage: float) -> np.ndarray:
    """Boolean map of top-left corners whose crop x crop window has at least ``coverage`` of its
    pixels in ``inside``."""
    padded = np.zeros((inside.shape[0] + 1, inside.shape[1] + 1), dtype=np.int64)
    padded[1:, 1:] = inside.cumsum(0).cumsum(1)
    window = padded[crop:, crop:] - padded[:-crop, crop:] - padded[crop:, :-crop] + padded[:-crop, :-crop]
    return window >= math.ceil(coverage * crop * crop - 1e-9)


def _band(used: np.ndarray, fraction: float, crop: int) -> np.ndarray:
    """A block at the end of the masked region's longer axis holding ``fraction`` of the masked
    pixels (at least one crop wide): the validation region of one pair."""
    rows, cols = np.nonzero(used)
    axis = 0 if rows.max() - rows.min() > cols.max() - cols.min() else 1
    last = (rows if axis == 0 else cols).max() + 1
    counts = used.sum(axis=1 - axis)[:last]
    share = np.cumsum(counts[::-1]) / counts.sum()
    width = max(int(np.searchsorted(share, fraction)) + 1, crop)
    band = np.zeros_like(used)
    start = max(last - width, 0)
    if axis == 0:
        band[start:last] = True
    else:
        band[:, start:last] = True
    return band


def _grid_positions(valid: np.ndarray, crop: int) -> list[tuple[int, int]]:
    """Non-overlapping valid corners, scanned row by row: fixed validation crops."""
    taken, out = np.zeros_like(valid), []
    for y, x in zip(*np.nonzero(valid)):
        if not taken[y, x]:
            out.append((int(y), int(x)))
            taken[max(0, y - crop + 1) : y + crop, max(0, x - crop + 1) : x + crop] = True
    return out


def prepare_pairs(pairs: list[Pair], settings: TrainSettings) -> list[_PairData]:
    """Read, check and normalise the pairs and split them into training and validation regions.
    Every problem found raises ``PreflightError`` naming the pair."""
    if not pairs:
        raise PreflightError("no training pairs given")
    split = settings.val_split
    if split == "auto":
        split = "pairs" if len(pairs) >= PAIR_SPLIT_FROM else "band"
    val_pairs = _held_out_pairs(pairs, settings) if split == "pairs" else set()
    prepared = []
    for index, pair in enumerate(pairs):
        label, where, a, b = _read_pair(index, pair, settings)
        mask, used, valid = _read_mask(pair, a.shape, where, settings)
        weight = np.where(mask == 2, settings.region_weight, used.astype(np.float32)).astype(np.float32)
        if split == "pairs":
            held_out = index in val_pairs
            train_valid = np.zeros_like(valid) if held_out else valid
            val_valid = valid if held_out else np.zeros_like(valid)
        else:
            train_valid, val_valid = _band_split(used, where, settings)
        prepared.append(
            _PairData(
                label,
                a,
                b,
                weight,
                np.flatnonzero(train_valid),
                _grid_positions(val_valid, settings.crop),
                float(pair.weight),
            )
        )
    if not any(p.val_positions for p in prepared):
        raise PreflightError(
            f"the validation region is empty: no {settings.crop} x {settings.crop} crop fits in the held-out part "
            "of any pair; mark a larger region, use a smaller --crop or a larger validation fraction"
        )
    return prepared


def _read_pair(index: int, pair: Pair, settings: TrainSettings) -> tuple[str, str, np.ndarray, np.ndarray]:
    """The pair's label, its name in messages, and its two planes checked and normalised."""
    crop = settings.crop
    a, name_a = _load(pair.a, "a")
    b, name_b = _load(pair.b, "b")
    label = pair.name or (f"{name_a} + {name_b}" if name_a != "a" else f"#{index + 1}")
    where = f"pair {index + 1} ({label})"
    if settings.normalise == "range":
        a, b = _by_dtype_range(a, "a"), _by_dtype_range(b, "b")
    a, b = _luminance(a), _luminance(b)
    if a.ndim != 2 or b.ndim != 2:
        raise PreflightError(f"{where}: expected 2-D images (or colour H x W x 3), got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise PreflightError(f"{where}: the two images differ in shape, {a.shape} vs {b.shape}; register them first")
    if crop > min(a.shape):
        raise PreflightError(f"{where}: crop {crop} is larger than the image {a.shape}; use a smaller --crop")
    a, b = _normalised_sources(a, b, settings, where)
    return label, where, a, b


def _read_mask(
    pair: Pair, shape: tuple[int, ...], where: str, settings: TrainSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pair's mask (all ones without one), the pixels it marks, and the valid crop corners."""
    crop = settings.crop
    if pair.mask is None:
        mask = np.ones(shape, dtype=np.int64)
    else:
        mask, mask_name = _load(pair.mask, "mask")
        if mask.shape != shape:
            raise PreflightError(f"{where}: mask {mask_name} has shape {mask.shape}, the images {shape}")
    used = mask > 0
    if not used.any():
        raise PreflightError(f"{where}: the mask is empty (no pixel is marked)")
    if used.sum() < crop * crop:
        raise PreflightError(
            f"{where}: only {int(used.sum())} pixels are marked, fewer than one {crop} x {crop} crop "
            f"({crop * crop}); mark more or use a smaller --crop"
        )
    valid = _valid_corners(used, crop, settings.mask_coverage)
    if not valid.any():
        raise PreflightError(
            f"{where}: no {crop} x {crop} crop fits inside the marked region; use a smaller --crop "
            "or mark a larger region"
        )
    return mask, used, valid


def _band_split(used: np.ndarray, where: str, settings: TrainSettings) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation crop corners of one pair: a block of its marked region held out."""
    crop = settings.crop
    band = _band(used, settings.val_fraction, crop)
    val_valid = _valid_corners(used & band, crop, settings.mask_coverage)
    train_valid = _valid_corners(used & ~band, crop, settings.mask_coverage)
    if not train_valid.any():
        raise PreflightError(
            f"{where}: after holding out {settings.val_fraction:.0%} of the marked region for validation "
            f"no {crop} x {crop} training crop fits; mark a larger region or use a smaller --crop"
        )
    return train_valid, val_valid


def _held_out_pairs(pairs: list[Pair], settings: TrainSettings) -> set[int]:
    """Indices of whole pairs held out for validation: ``val_fraction`` of each kind (pairs
    named KIND/NAME, as folders give them), rounded, so a kind with few pairs keeps them all for
    training; at least one pair overall."""
    rng = np.random.default_rng(settings.seed)
    kinds: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        kinds.setdefault(pair.name.rpartition("/")[0], []).append(index)
    held = set()
    for members in kinds.values():
        count = int(len(members) * settings.val_fraction + 0.5)
        held.update(rng.choice(members, count, replace=False).tolist())
    if not held:
        held.add(int(rng.choice(max(kinds.values(), key=len))))
    return held


def _normalised_sources(
    a: np.ndarray, b: np.ndarray, settings: TrainSettings, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Both sources mapped to [0, 1] as the fusion pipeline maps them (robust percentiles per
    image), or checked to lie in [0, 1] already (dtype range) and, with normalisation off, to be
    comparable."""
    ranges = []
    for image, which in ((a, "a"), (b, "b")):
        if not np.isfinite(image).all():
            raise PreflightError(f"{where}: image {which} has NaN or infinite pixels")
        if image.max() <= image.min():
            raise PreflightError(
                f"{where}: image {which} is flat (constant intensity {image.min():g}); nothing to learn from"
            )
        ranges.append(normalisation_of(as_source(image, which), "percentile", settings.percentiles))
    if settings.normalise == "percentile":
        return np.clip(ranges[0](a), 0, 1), np.clip(ranges[1](b), 0, 1)
    for n, which in zip(ranges, "ab"):
        if n.lo < -1e-3 or n.hi > 1 + 1e-3:
            raise PreflightError(
                f"{where}: image {which} spans {n.lo:g}..{n.hi:g}, outside [0, 1]; turn normalisation on"
            )
    if settings.normalise == "range":  # the instruments' own ranges: a dim channel stays dim
        return a.astype(np.float32), b.astype(np.float32)
    spans = [max(n.hi - n.lo, 1e-12) for n in ranges]
    if max(spans) / min(spans) > MAX_RANGE_RATIO:
        raise PreflightError(
            f"{where}: the sources' intensity ranges differ {max(spans) / min(spans):.1f}x "
            f"({spans[0]:.3g} vs {spans[1]:.3g}); turn normalisation on"
        )
    return a.astype(np.float32), b.astype(np.float32)


class CropSampler:
    """Random training crops from valid corners, augmented: one of the 8 flips / 90-degree
    rotations, and with ``jitter`` > 0 each source of each crop scaled by its own random gain in
    [1 - jitter, 1 + jitter] (clipped to [0, 1]), so a model does not learn one microscope's
    exposure."""

    def __init__(self, data: list[_PairData], crop: int, rng: np.random.Generator, jitter: float = 0.0):
        self.data = [d for d in data if d.train_positions.size]
        self.jitter = jitter
        weights = np.array([d.sample_weight for d in self.data], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.crop, self.rng = crop, rng

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """(a, b, weight) arrays of shape (batch, 1, crop, crop) and each crop's (pair, row, col)."""
        out_a: list[np.ndarray] = []
        out_b: list[np.ndarray] = []
        out_w: list[np.ndarray] = []
        origins = []
        for _ in range(batch):
            index = int(self.rng.choice(len(self.data), p=self.probabilities))
            d = self.data[index]
            flat = int(d.train_positions[self.rng.integers(d.train_positions.size)])
            y, x = divmod(flat, d.a.shape[1] - self.crop + 1)
            k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            for src, out in ((d.a, out_a), (d.b, out_b), (d.weight, out_w)):
                tile = np.rot90(src[y : y + self.crop, x : x + self.crop], k)
                out.append(tile[:, ::-1] if flip else tile)
            origins.append((index, y, x))
        a, b = _stack(out_a), _stack(out_b)
        if self.jitter > 0:
            gains = self.rng.uniform(1 - self.jitter, 1 + self.jitter, size=(2, batch, 1, 1, 1)).astype(np.float32)
            a, b = np.clip(a * gains[0], 0, 1), np.clip(b * gains[1], 0, 1)
        return a, b, _stack(out_w), origins


def _stack(tiles: list[np.ndarray]) -> np.ndarray:
    """Crops as one contiguous (N, 1, crop, crop) batch."""
    return np.ascontiguousarray(np.stack(tiles)[:, None])


def validation_crops(
    data: list[_PairData], crop: int, limit: int = MAX_VAL_CROPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Fixed validation crops, spread evenly over the held-out regions."""
    all_positions = [(i, y, x) for i, d in enumerate(data) for y, x in d.val_positions]
    if len(all_positions) > limit:
        picks = np.linspace(0, len(all_positions) - 1, limit).round().astype(int)
        all_positions = [all_positions[i] for i in picks]
    a = np.stack([data[i].a[y : y + crop, x : x + crop] for i, y, x in all_positions])[:, None]
    b = np.stack([data[i].b[y : y + crop, x : x + crop] for i, y, x in all_positions])[:, None]
    w = np.stack([data[i].weight[y : y + crop, x : x + crop] for i, y, x in all_positions])[:, None]
    return a, b, w, all_positions
