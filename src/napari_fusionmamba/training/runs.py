"""Run folders: where a run lives (``default_run_dir``), its config.json pairs, the optimizer
state beside ``last.safetensors`` that resuming needs, its ``log.csv``, and recipes (pairs and
settings in one JSON file).

A run folder holds ``last.safetensors``, ``best.safetensors`` (lowest validation loss),
``last.state.safetensors``, ``config.json`` and ``log.csv``; checkpoints are safetensors with
their config as JSON metadata, never pickles.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PreflightError
from ..io.files import not_regular
from .data import Pair


def default_run_dir(name: str | None = None) -> Path:
    """A fresh folder under the user data dir's ``runs/`` (never the current directory)."""
    from ..registry import data_dir

    return data_dir() / "runs" / (name or time.strftime("%Y%m%d-%H%M%S"))


def _resolved(value: Any) -> str | None:
    return str(Path(value).resolve()) if isinstance(value, (str, Path)) else None


def pair_record(pair: Pair) -> dict[str, Any]:
    """A pair as the run's config.json keeps it: file paths (None for in-memory arrays)."""
    return {
        "a": _resolved(pair.a),
        "b": _resolved(pair.b),
        "mask": _resolved(pair.mask),
        "name": pair.name,
        "weight": pair.weight,
    }


def pairs_from_config(run_dir: Path) -> list[Pair]:
    """The pairs a run was started with, when they were files (for resuming from the CLI)."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    pairs = []
    for record in config["pairs"]:
        if record["a"] is None or record["b"] is None:
            raise PreflightError(f"{run_dir}: the run was trained on in-memory arrays; pass the pairs again to resume")
        pairs.append(Pair(record["a"], record["b"], record["mask"], record["name"], record["weight"]))
    return pairs


#: Prefix of the weights' names in ``last.state.safetensors``.
MODEL_PREFIX = "model/"


def save_state(run_dir: Path, model: Any, optimizer: Any, step: int, best: float, rng: np.random.Generator) -> None:
    """The weights, optimizer moments and random states: all that ``resume`` needs, in one file
    written atomically, so a kill between this save and ``last``'s loses nothing."""
    import torch

    from ..registry import write_safetensors

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {"torch_rng": torch.get_rng_state()}
    tensors.update({f"{MODEL_PREFIX}{key}": value for key, value in model.state_dict().items()})
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"{names[id(p)]}/{key}"] = state[key]
                tensors[f"{names[id(p)]}/step"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)
    meta = {"step": step, "best_val_loss": best, "numpy_rng": rng.bit_generator.state}
    write_safetensors(run_dir / "last.state.safetensors", tensors, meta)


def load_state(run_dir: Path, model: Any, optimizer: Any) -> tuple[int, float, dict[str, Any], bool]:
    """Restore what ``save_state`` saved; returns (step, best validation loss, numpy rng state,
    whether the weights came from it too)."""
    import torch

    from ..registry import read_safetensors

    tensors, meta = read_safetensors(run_dir / "last.state.safetensors")
    torch.set_rng_state(tensors.pop("torch_rng"))
    weights = {key[len(MODEL_PREFIX) :]: tensors[key] for key in tensors if key.startswith(MODEL_PREFIX)}
    if weights:  # older runs kept them only in last.safetensors
        model.load_state_dict(weights, strict=True)
    for name, p in model.named_parameters():
        if f"{name}/exp_avg" in tensors:
            optimizer.state[p] = {
                "step": tensors[f"{name}/step"].reshape(()).to(torch.float32),
                "exp_avg": tensors[f"{name}/exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{name}/exp_avg_sq"].to(p.device),
            }
    return int(meta["step"]), float(meta["best_val_loss"]), dict(meta["numpy_rng"]), bool(weights)


def read_log(path: Path, upto: int) -> list[dict[str, float]]:
    """Rows of an earlier run's log up to ``upto`` (rows after the last save are dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return [{**row, "step": int(row["step"])} for row in rows if row["step"] <= upto]


def pairs_from_folder(
    folder: str | Path, names: list[str] | None = None, limit: int | None = None, weight: float = 1.0
) -> list[Pair]:
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


def _validation_entry(recipe: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """A recipe's ``"validation": {"folder", "names"}``, checked; None when it has none."""
    entry = recipe.get("validation")
    if entry is not None and (not isinstance(entry, dict) or not {"folder", "names"} <= set(entry)):
        raise PreflightError(f'{path}: "validation" must be {{"folder": ..., "names": [...]}}, got {entry!r}')
    return entry


def validation_names(path: str | Path) -> list[str]:
    """The names of the pairs a recipe file holds out for validation (none: an empty list)."""
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PreflightError(f"{path}: cannot read the recipe ({error})") from None
    entry = _validation_entry(recipe, path)
    return [] if entry is None else list(entry["names"])


def _validation_sources(entry: dict[str, Any] | None, here: Callable[[Any], Any]) -> set[Path]:
    """The A files of a recipe's validation pairs, resolved."""
    if entry is None:
        return set()
    return {Path(str(pair.a)).resolve() for pair in pairs_from_folder(here(entry["folder"]), entry["names"])}


def load_recipe(path: str | Path) -> tuple[list[Pair], dict[str, Any], dict[str, Any]]:
    """(pairs, settings dict, other keys) from a recipe file.

    ``{"pairs": [...], "settings": {...}, "out": ..., "name": ...}``; each item of ``pairs`` is
    ``[A, B]``, ``[A, B, MASK]``, ``{"a", "b", "mask", "weight"}``, a folder path, or
    ``{"folder", "names", "limit", "weight"}``. Relative paths are relative to the recipe file.
    The pairs of ``"validation": {"folder", "names"}`` are held out: never trained on, whatever
    ``pairs`` lists (benchmarks/quality.py --validation scores a model on them).
    """
    path = Path(path)
    refusal = not_regular(path)
    if refusal:
        raise PreflightError(refusal)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PreflightError(f"{path}: cannot read the recipe ({error})") from None
    base = path.parent

    def here(p: Any) -> Any:  # a recipe's relative paths are relative to the recipe
        return None if p is None else (base / p if not Path(p).is_absolute() else Path(p))

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
    held_out = _validation_sources(_validation_entry(recipe, path), here)
    pairs = [pair for pair in pairs if not (isinstance(pair.a, Path) and pair.a.resolve() in held_out)]
    others = {k: v for k, v in recipe.items() if k not in ("pairs", "settings", "validation")}
    if "out" in others:
        others["out"] = here(others["out"])
    return pairs, dict(recipe.get("settings", {})), others


#: The columns every log has; an objective's own terms go between ``loss`` and ``val_loss``.
LOG_FIRST, LOG_LAST = ("step", "lr", "loss"), ("seconds",)


def log_columns(terms: list[str]) -> list[str]:
    """The CSV columns of a run whose objective reports ``terms``."""
    return [*LOG_FIRST, *terms, "val_loss", *(f"val_{t}" for t in terms), *LOG_LAST]


class RunLog:
    """``log.csv``: one row per step. Its columns follow the objective's terms, so an objective
    with other terms than the paper's logs them all; a resumed run keeps its earlier rows."""

    def __init__(self, path: Path, history: list[dict[str, float]], terms: list[str]):
        self.path = path
        self.columns = log_columns(terms)
        self._file = open(path, "w", newline="")  # noqa: SIM115 (open for the run; closed by close())
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="", extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(history)
        self._file.flush()

    def write(self, row: dict[str, float], flush: bool) -> None:
        self._writer.writerow(row)
        if flush:
            self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
