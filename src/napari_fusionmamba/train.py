"""Fine-tuning (and training from scratch) on registered pairs with optional region masks.

``finetune(pairs, settings, out)`` checks everything first (``PreflightError``), then trains with
AdamW, a linear warm-up and a cosine decay, gradient clipping and mixed precision on CUDA. Crops
are sampled only where a pair's mask is set (label 2 = "important detail" weighs
``region_weight`` in the loss); a block of each pair's masked region, or whole pairs when there
are many, is held out for validation so the validation loss never sees a training pixel. A run
folder holds ``last.safetensors``, ``best.safetensors`` (lowest validation loss), ``config.json``
and ``log.csv`` (one row per step); a cancel or Ctrl-C saves ``last`` and ``resume=True``
continues from it with the same step count and learning-rate schedule.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ._json_records import from_json
from .io.colour import rgb_to_ycrcb
from .errors import FusionMambaError, ImageReadError, InputError, PreflightError
from .io import open_image
from .loss import DEFAULT_WEIGHTS, SSIM_MODES
from .engine.sources import PERCENTILES, as_source, normalisation_of

LOG_COLUMNS = (
    "step", "lr", "loss", "intensity", "texture", "structure",
    "val_loss", "val_intensity", "val_texture", "val_structure", "seconds",
)  # fmt: skip
MIN_CROP = 16
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
    loss_weights: tuple[float, float, float] = DEFAULT_WEIGHTS  # intensity, texture, structure
    ssim_weights: tuple[float, float] = (0.5, 0.5)  # SSIM to source a, to source b
    ssim: str = "auto"
    region_weight: float = 2.0  # loss weight of mask label 2
    mask_coverage: float = 1.0  # fraction of a crop that must lie inside the mask
    val_fraction: float = 0.15
    val_split: str = "auto"  # "band" (a block of each pair), "pairs" (whole pairs) or "auto"
    normalise: bool = True  # robust percentiles per source image
    percentiles: tuple[float, float] = PERCENTILES  # the same as the fusion pipeline's
    base: str = "default"  # model name, checkpoint path, or "scratch"
    config: str = "tiny"  # the config trained from scratch
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, on CUDA only
    log_every: int = 10
    val_every: int = 50

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        return from_json(cls, values, "training settings", PreflightError)


@dataclass
class StepInfo:
    """What ``on_step`` receives after each step."""

    step: int
    steps: int
    lr: float
    terms: dict[str, float]  # loss, intensity, texture, structure
    val_terms: dict[str, float] | None = None  # on validation steps
    preview: np.ndarray | None = None  # fused first validation crop, on validation steps
    preview_origin: tuple[int, int, int] | None = None  # (pair index, row, column) of the preview
    elapsed: float = 0.0


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last: Path
    best: Path
    best_val_loss: float
    cancelled: bool
    history: list[dict] = field(default_factory=list, repr=False)


# --- sources ----------------------------------------------------------------------------------------


def _load(value, what: str) -> tuple[np.ndarray, str]:
    """An in-memory array from an array or an image file (read by ``io.open_image``), and the
    name to use in messages."""
    if isinstance(value, (str, Path)):
        try:
            image = open_image(value)
        except (FileNotFoundError, ImageReadError) as error:
            raise PreflightError(str(error)) from None
        return np.asarray(image.data), str(value)
    return np.asarray(value), what


def _luminance(image: np.ndarray) -> np.ndarray:
    """Gray images pass; colour (H, W, 3|4) becomes its Y, as the network fuses colour."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return rgb_to_ycrcb(image[..., :3])[0]
    return image.astype(np.float32, copy=False)


# --- data ---------------------------------------------------------------------------------------------


@dataclass
class _PairData:
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
    crop = settings.crop
    split = settings.val_split
    if split == "auto":
        split = "pairs" if len(pairs) >= PAIR_SPLIT_FROM else "band"
    val_pairs = _held_out_pairs(pairs, settings) if split == "pairs" else set()

    prepared = []
    for index, pair in enumerate(pairs):
        a, name_a = _load(pair.a, "a")
        b, name_b = _load(pair.b, "b")
        label = pair.name or (f"{name_a} + {name_b}" if name_a != "a" else f"#{index + 1}")
        where = f"pair {index + 1} ({label})"
        a, b = _luminance(a), _luminance(b)
        if a.ndim != 2 or b.ndim != 2:
            raise PreflightError(f"{where}: expected 2-D images (or colour H x W x 3), got shapes {a.shape} and {b.shape}")
        if a.shape != b.shape:
            raise PreflightError(f"{where}: the two images differ in shape, {a.shape} vs {b.shape}; register them first")
        if crop > min(a.shape):
            raise PreflightError(f"{where}: crop {crop} is larger than the image {a.shape}; use a smaller --crop")
        a, b = _normalised_sources(a, b, settings, where)

        if pair.mask is None:
            mask = np.ones(a.shape, dtype=np.int64)
        else:
            mask, mask_name = _load(pair.mask, "mask")
            if mask.shape != a.shape:
                raise PreflightError(f"{where}: mask {mask_name} has shape {mask.shape}, the images {a.shape}")
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
        weight = np.where(mask == 2, settings.region_weight, used.astype(np.float32)).astype(np.float32)

        if split == "pairs":
            held_out = index in val_pairs
            train_valid = np.zeros_like(valid) if held_out else valid
            val_valid = valid if held_out else np.zeros_like(valid)
        else:
            band = _band(used, settings.val_fraction, crop)
            val_valid = _valid_corners(used & band, crop, settings.mask_coverage)
            train_valid = _valid_corners(used & ~band, crop, settings.mask_coverage)
            if not train_valid.any():
                raise PreflightError(
                    f"{where}: after holding out {settings.val_fraction:.0%} of the marked region for validation "
                    f"no {crop} x {crop} training crop fits; mark a larger region or use a smaller --crop"
                )
        prepared.append(
            _PairData(
                name=label,
                a=a,
                b=b,
                weight=weight,
                train_positions=np.flatnonzero(train_valid),
                val_positions=_grid_positions(val_valid, crop),
                sample_weight=float(pair.weight),
            )
        )
    if not any(p.val_positions for p in prepared):
        raise PreflightError(
            f"the validation region is empty: no {crop} x {crop} crop fits in the held-out part of any pair; "
            "mark a larger region, use a smaller --crop or a larger validation fraction"
        )
    return prepared


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


def _normalised_sources(a, b, settings, where):
    """Both sources mapped to [0, 1] as the fusion pipeline maps them (robust percentiles per
    image), or, with normalisation off, checked to be comparable already."""
    ranges = []
    for image, which in ((a, "a"), (b, "b")):
        if not np.isfinite(image).all():
            raise PreflightError(f"{where}: image {which} has NaN or infinite pixels")
        if image.max() <= image.min():
            raise PreflightError(f"{where}: image {which} is flat (constant intensity {image.min():g}); nothing to learn from")
        ranges.append(normalisation_of(as_source(image, which), "percentile", settings.percentiles))
    if settings.normalise:
        return [np.clip(n(image), 0, 1) for n, image in zip(ranges, (a, b))]
    for n, which in zip(ranges, "ab"):
        if n.lo < -1e-3 or n.hi > 1 + 1e-3:
            raise PreflightError(f"{where}: image {which} spans {n.lo:g}..{n.hi:g}, outside [0, 1]; turn normalisation on")
    spans = [max(n.hi - n.lo, 1e-12) for n in ranges]
    if max(spans) / min(spans) > MAX_RANGE_RATIO:
        raise PreflightError(
            f"{where}: the sources' intensity ranges differ {max(spans) / min(spans):.1f}x "
            f"({spans[0]:.3g} vs {spans[1]:.3g}); turn normalisation on"
        )
    return a.astype(np.float32), b.astype(np.float32)


class CropSampler:
    """Random training crops (with one of the 8 flips / 90-degree rotations) from valid corners."""

    def __init__(self, data: list[_PairData], crop: int, rng: np.random.Generator):
        self.data = [d for d in data if d.train_positions.size]
        weights = np.array([d.sample_weight for d in self.data], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.crop, self.rng = crop, rng

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """(a, b, weight) arrays of shape (batch, 1, crop, crop) and each crop's (pair, row, col)."""
        out_a, out_b, out_w, origins = [], [], [], []
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
        stack = lambda tiles: np.ascontiguousarray(np.stack(tiles)[:, None])  # noqa: E731
        return stack(out_a), stack(out_b), stack(out_w), origins


def _validation_crops(data: list[_PairData], crop: int, limit: int = MAX_VAL_CROPS):
    """Fixed validation crops, spread evenly over the held-out regions."""
    all_positions = [(i, y, x) for i, d in enumerate(data) for y, x in d.val_positions]
    if len(all_positions) > limit:
        picks = np.linspace(0, len(all_positions) - 1, limit).round().astype(int)
        all_positions = [all_positions[i] for i in picks]
    a = np.stack([data[i].a[y : y + crop, x : x + crop] for i, y, x in all_positions])[:, None]
    b = np.stack([data[i].b[y : y + crop, x : x + crop] for i, y, x in all_positions])[:, None]
    w = np.stack([data[i].weight[y : y + crop, x : x + crop] for i, y, x in all_positions])[:, None]
    return a, b, w, all_positions


# --- schedule and run folder ---------------------------------------------------------------------------


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then a cosine down to
    ``lr * min_lr_fraction`` at ``steps``; ``step`` counts from 0."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    span = max(settings.steps - settings.warmup, 1)
    progress = min((step - settings.warmup) / span, 1.0)
    floor = settings.min_lr_fraction
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def check_settings(settings: TrainSettings) -> None:
    problems = []
    if settings.steps < 1:
        problems.append(f"steps must be at least 1 (got {settings.steps})")
    if settings.batch < 1:
        problems.append(f"batch must be at least 1 (got {settings.batch})")
    if settings.crop < MIN_CROP:
        problems.append(f"crop must be at least {MIN_CROP} px (got {settings.crop})")
    if not settings.lr > 0:
        problems.append(f"learning rate must be positive (got {settings.lr})")
    if len(settings.loss_weights) != 3 or min(settings.loss_weights) < 0 or sum(settings.loss_weights) <= 0:
        problems.append(f"loss weights must be three non-negative numbers, not all 0 (got {settings.loss_weights})")
    if not 0 < settings.val_fraction < 0.5:
        problems.append(f"validation fraction must be in (0, 0.5) (got {settings.val_fraction})")
    if settings.val_split not in ("auto", "band", "pairs"):
        problems.append(f"val_split must be auto, band or pairs (got {settings.val_split!r})")
    if not settings.region_weight > 0:
        problems.append(f"region weight must be positive (got {settings.region_weight})")
    if not 0 < settings.mask_coverage <= 1:
        problems.append(f"mask coverage must be in (0, 1] (got {settings.mask_coverage})")
    if settings.ssim not in SSIM_MODES:
        problems.append(f"ssim must be one of {', '.join(SSIM_MODES)} (got {settings.ssim!r})")
    if settings.warmup < 0 or settings.log_every < 1 or settings.val_every < 1:
        problems.append("warmup must be >= 0, log_every and val_every >= 1")
    if problems:
        raise PreflightError("; ".join(problems))


def default_run_dir(name: str | None = None) -> Path:
    """A fresh folder under the user data dir's ``runs/`` (never the current directory)."""
    from .registry import data_dir

    return data_dir() / "runs" / (name or time.strftime("%Y%m%d-%H%M%S"))


def _pair_record(pair: Pair) -> dict:
    as_path = lambda v: str(Path(v).resolve()) if isinstance(v, (str, Path)) else None  # noqa: E731
    return {"a": as_path(pair.a), "b": as_path(pair.b), "mask": as_path(pair.mask), "name": pair.name, "weight": pair.weight}


def pairs_from_config(run_dir: Path) -> list[Pair]:
    """The pairs a run was started with, when they were files (for resuming from the CLI)."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    pairs = []
    for record in config["pairs"]:
        if record["a"] is None or record["b"] is None:
            raise PreflightError(f"{run_dir}: the run was trained on in-memory arrays; pass the pairs again to resume")
        pairs.append(Pair(record["a"], record["b"], record["mask"], record["name"], record["weight"]))
    return pairs


def _build_model(settings: TrainSettings):
    from .model import build_model
    from .registry import load_model

    if settings.base == "scratch":
        try:
            return build_model(settings.config)
        except InputError as error:
            raise PreflightError(str(error)) from None
    try:
        return load_model(settings.base)
    except InputError as error:
        raise PreflightError(f"base model: {error}") from None


def _save_state(run_dir: Path, model, optimizer, step: int, best: float, rng: np.random.Generator) -> None:
    """Optimizer moments and random states beside ``last``: what ``resume`` needs."""
    import torch

    from .registry import write_safetensors

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {"torch_rng": torch.get_rng_state()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"{names[id(p)]}/{key}"] = state[key]
                tensors[f"{names[id(p)]}/step"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)
    meta = {"step": step, "best_val_loss": best, "numpy_rng": rng.bit_generator.state}
    write_safetensors(run_dir / "last.state.safetensors", tensors, meta)


def _load_state(run_dir: Path, model, optimizer) -> tuple[int, float, dict]:
    import torch

    from .registry import read_safetensors

    tensors, meta = read_safetensors(run_dir / "last.state.safetensors")
    torch.set_rng_state(tensors.pop("torch_rng"))
    for name, p in model.named_parameters():
        if f"{name}/exp_avg" in tensors:
            optimizer.state[p] = {
                "step": tensors[f"{name}/step"].reshape(()).to(torch.float32),
                "exp_avg": tensors[f"{name}/exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{name}/exp_avg_sq"].to(p.device),
            }
    return int(meta["step"]), float(meta["best_val_loss"]), meta["numpy_rng"]


def _read_log(path: Path, upto: int) -> list[dict]:
    """Rows of an earlier run's log up to ``upto`` (rows after the last save are dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return [{**row, "step": int(row["step"])} for row in rows if row["step"] <= upto]


# --- the loop -----------------------------------------------------------------------------------------


def finetune(
    pairs: list[Pair] | None,
    settings: TrainSettings | None = None,
    out=None,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    cancel=None,
) -> TrainResult:
    """Train on ``pairs`` into the run folder ``out`` (default: a new folder under the user data
    dir). ``cancel``: a callable or ``threading.Event``; when it becomes true (or on Ctrl-C) the
    current state is saved as ``last`` and the run stops. ``resume=True`` continues the run in
    ``out`` with its saved settings (only ``device`` may change); ``pairs`` may then be None when
    the run was trained on files."""
    import torch

    from . import __version__
    from .model.devices import resolve_device
    from .loss import FusionLoss
    from .registry import load_checkpoint, save_checkpoint

    run_dir = Path(out) if out is not None else default_run_dir()
    config_path = run_dir / "config.json"
    if resume:
        if not (run_dir / "last.safetensors").exists() or not config_path.exists():
            raise PreflightError(f"{run_dir}: no run to resume (last.safetensors and config.json are missing)")
        saved = json.loads(config_path.read_text())
        device = (settings.device if settings is not None else saved["settings"]["device"])
        settings = TrainSettings.from_dict({**saved["settings"], "device": device})
        if pairs is None:
            pairs = pairs_from_config(run_dir)
    else:
        settings = settings or TrainSettings()
        if (run_dir / "last.safetensors").exists():
            raise PreflightError(f"{run_dir}: this folder already holds a run; resume it or choose a new folder")
    check_settings(settings)
    try:
        device = resolve_device(settings.device)
    except FusionMambaError as error:
        raise PreflightError(str(error)) from None
    data = prepare_pairs(pairs, settings)

    if resume:
        model, metadata = load_checkpoint(run_dir / "last.safetensors")
    else:
        torch.manual_seed(settings.seed)  # an untrained base config is initialised from it
        model = _build_model(settings)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed)
    start, best_val = 0, math.inf
    if resume:
        start, best_val, rng_state = _load_state(run_dir, model, optimizer)
        if start != metadata.get("step"):
            raise PreflightError(f"{run_dir}: last.safetensors and last.state.safetensors are from different steps")
        rng.bit_generator.state = rng_state
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "settings": settings.to_dict(),
            "pairs": [_pair_record(p) for p in pairs],
            "model_config": model.config.to_dict(),
            "package_version": __version__,
        }
        config_path.write_text(json.dumps(record, indent=2))

    loss_fn = FusionLoss(*settings.loss_weights, *settings.ssim_weights, ssim=settings.ssim)
    sampler = CropSampler(data, settings.crop, rng)
    *val_arrays, val_origins = _validation_crops(data, settings.crop)
    val = [torch.from_numpy(x).to(device) for x in val_arrays]
    use_amp = settings.amp and device.type == "cuda"
    provenance = {
        "base": settings.base if settings.base != "scratch" else f"scratch ({settings.config})",
        "pairs": [d.name for d in data],
        "settings": settings.to_dict(),
        "package_version": __version__,
    }
    normalisation = (
        {"method": "percentiles", "percentiles": list(settings.percentiles), "colour": "Y of YCrCb (BT.601)"}
        if settings.normalise
        else {"method": "none"}
    )

    def save(name: str, step: int) -> Path:
        return save_checkpoint(
            run_dir / name, model, provenance=provenance, normalisation=normalisation, step=step
        )

    def run_loss(a, b, w):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            fused = model(a, b).float()
        total, terms = loss_fn(fused, a, b, w)
        return total, terms, fused

    def validate() -> tuple[dict[str, float], np.ndarray]:
        model.eval()
        sums, count, preview = {}, 0, None
        with torch.no_grad():
            for i in range(0, len(val[0]), settings.batch):
                a, b, w = (t[i : i + settings.batch] for t in val)
                total, terms, fused = run_loss(a, b, w)
                if preview is None:
                    preview = fused[0, 0].cpu().numpy()
                n = len(a)
                for key, value in {"loss": total, **terms}.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * n
                count += n
        model.train()
        return {k: v / count for k, v in sums.items()}, preview

    log_path = run_dir / "log.csv"
    history = _read_log(log_path, start) if resume else []
    log_file = open(log_path, "w", newline="")
    writer = csv.DictWriter(log_file, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    log_file.flush()

    is_cancelled = (cancel.is_set if hasattr(cancel, "is_set") else cancel) or (lambda: False)
    began = time.perf_counter() - (float(history[-1]["seconds"]) if history else 0.0)
    step, cancelled = start, False
    try:
        while step < settings.steps:
            if is_cancelled():
                cancelled = True
                break
            lr = learning_rate(step, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            a, b, w, _ = sampler.sample(settings.batch)
            a, b, w = (torch.from_numpy(x).to(device) for x in (a, b, w))
            total, terms, _ = run_loss(a, b, w)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if settings.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
            optimizer.step()
            step += 1

            row = {"step": step, "lr": lr, "loss": total.item(), **{k: v.item() for k, v in terms.items()}}
            info = StepInfo(step, settings.steps, lr, {k: row[k] for k in ("loss", "intensity", "texture", "structure")})
            if step % settings.val_every == 0 or step == settings.steps:
                info.val_terms, info.preview = validate()
                info.preview_origin = val_origins[0]
                row.update({f"val_{k}": v for k, v in info.val_terms.items()})
                if info.val_terms["loss"] < best_val:
                    best_val = info.val_terms["loss"]
                    save("best.safetensors", step)
            row["seconds"] = info.elapsed = time.perf_counter() - began
            history.append(row)
            writer.writerow(row)
            if step % settings.log_every == 0:
                log_file.flush()
            if on_step is not None:
                on_step(info)
    except KeyboardInterrupt:
        cancelled = True
        raise
    finally:
        log_file.close()
        if step > start or not (run_dir / "last.state.safetensors").exists():
            _save_state(run_dir, model, optimizer, step, best_val, rng)
            save("last.safetensors", step)
        if not (run_dir / "best.safetensors").exists():
            save("best.safetensors", step)
    return TrainResult(run_dir, step, run_dir / "last.safetensors", run_dir / "best.safetensors", best_val, cancelled, history)


# --- recipes: pairs and settings in one JSON file ------------------------------------------------------


def pairs_from_folder(folder, names=None, limit=None, weight: float = 1.0) -> list[Pair]:
    """Pairs laid out as FOLDER/A/NAME and FOLDER/B/NAME (masks, when present, FOLDER/mask/NAME)."""
    folder = Path(folder)
    if not (folder / "A").is_dir() or not (folder / "B").is_dir():
        raise PreflightError(f"{folder}: expected subfolders A/ and B/ holding the pairs under the same names")
    available = sorted(p.name for p in (folder / "A").iterdir() if not p.name.startswith("."))
    chosen = available if names is None else list(names)
    pairs = []
    for name in chosen[:limit]:
        a, b, mask = folder / "A" / name, folder / "B" / name, folder / "mask" / name
        for path in (a, b):
            if not path.exists():
                raise PreflightError(f"{path}: missing (every pair needs A/{name} and B/{name})")
        pairs.append(Pair(a, b, mask if mask.exists() else None, name=f"{folder.name}/{name}", weight=weight))
    if not pairs:
        raise PreflightError(f"{folder}: no pairs found")
    return pairs


def load_recipe(path) -> tuple[list[Pair], dict, dict]:
    """(pairs, settings dict, other keys) from a recipe file.

    ``{"pairs": [...], "settings": {...}, "out": ..., "name": ...}``; each item of ``pairs`` is
    ``[A, B]``, ``[A, B, MASK]``, ``{"a", "b", "mask", "weight"}``, a folder path, or
    ``{"folder", "names", "limit", "weight"}``. Relative paths are relative to the recipe file.
    """
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PreflightError(f"{path}: cannot read the recipe ({error})") from None
    base = path.parent
    here = lambda p: None if p is None else (base / p if not Path(p).is_absolute() else Path(p))  # noqa: E731
    pairs = []
    for item in recipe.get("pairs", []):
        if isinstance(item, str):
            pairs.extend(pairs_from_folder(here(item)))
        elif isinstance(item, list) and len(item) in (2, 3):
            pairs.append(Pair(here(item[0]), here(item[1]), here(item[2]) if len(item) == 3 else None))
        elif isinstance(item, dict) and "folder" in item:
            pairs.extend(
                pairs_from_folder(here(item["folder"]), item.get("names"), item.get("limit"), item.get("weight", 1.0))
            )
        elif isinstance(item, dict) and {"a", "b"} <= set(item):
            pairs.append(Pair(here(item["a"]), here(item["b"]), here(item.get("mask")), weight=item.get("weight", 1.0)))
        else:
            raise PreflightError(f"{path}: cannot read pair entry {item!r}")
    others = {k: v for k, v in recipe.items() if k not in ("pairs", "settings")}
    if "out" in others:
        others["out"] = here(others["out"])
    return pairs, dict(recipe.get("settings", {})), others
