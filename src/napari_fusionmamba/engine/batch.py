"""``fuse_folder``: every pair of two folders matched by name, fused with ``fuse_files`` one
after another. A pair that cannot be fused is reported and skipped, so one bad file does not
stop a night's batch; the CLI's ``fuse-folder`` and a widget are thin shells over it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import FusionCancelled, FusionMambaError, InputError
from ..io.readers import PICTURE_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES
from .execute import check_scheduler
from .files import DTYPES, FuseReport, fuse_files
from .options import FuseOptions
from .predictors import choose_engine, predictor
from .tiling import check_tiling

#: Output format -> the suffix of each output file.
FORMATS = {"zarr": ".ome.zarr", "tif": ".ome.tif"}
IMAGE_SUFFIXES = ZARR_SUFFIXES + TIFF_SUFFIXES + PICTURE_SUFFIXES


@dataclass(frozen=True)
class PairResult:
    """One name of the folders: ``status`` is "fused", "kept" (its output was already there),
    "skipped" (not a pair) or "failed" (a user-facing error); ``message`` says what happened."""

    name: str
    status: str
    message: str
    out: str | None = None
    report: FuseReport | None = None


@dataclass(frozen=True)
class FolderReport:
    """What ``fuse_folder`` did, name by name."""

    results: list[PairResult]

    def count(self, *statuses: str) -> int:
        return sum(result.status in statuses for result in self.results)

    @property
    def complete(self) -> bool:
        """Whether every name has its fused output (nothing skipped or failed)."""
        return self.count("fused", "kept") == len(self.results)

    def summary(self) -> str:
        kept = self.count("kept")
        before = f" ({kept} already there)" if kept else ""
        return (
            f"fused {self.count('fused', 'kept')}{before}, skipped {self.count('skipped')}, "
            f"failed {self.count('failed')}"
        )


def image_name(path: Path) -> str | None:
    """The name a file is matched by (``gfp.ome.tif`` -> ``gfp``), None for a non-image."""
    lower = path.name.lower()
    suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)
    if suffix is None or path.name.startswith("."):
        return None
    stem = path.name[: -len(suffix)]
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def _images(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        name = image_name(path)
        if name:
            found.setdefault(name, []).append(path)
    return found


def fuse_folder(
    a_dir: str | os.PathLike[str],
    b_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: FuseOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    on_result: Callable[[PairResult], None] | None = None,
    output_format: str = "zarr",
    cancel: Callable[[], bool] | None = None,
) -> FolderReport:
    """Fuse ``A_DIR/NAME.*`` with ``B_DIR/NAME.*`` into ``OUT_DIR/NAME.ome.zarr`` (or
    ``.ome.tif``) for every NAME in both folders, in name order.

    Names in one folder only, or held by several files of a folder, are skipped; a pair that
    raises a user-facing error (unreadable file, shapes that differ...) is failed; the others
    still fuse. An output already there is kept unless ``options.overwrite``; an interrupted
    pair resumes as ``fuse_files`` does. ``progress(name, done, total)`` counts each pair's
    tiles; ``on_result`` hears each name as it is settled; ``cancel()`` returning True stops
    with ``FusionCancelled`` (the pair under way resumes next time). Missing folders are refused.
    """
    if output_format not in FORMATS:
        raise InputError(f"unknown output format {output_format!r}: choose {' or '.join(FORMATS)}")
    a_dir, b_dir, out_dir = Path(a_dir), Path(b_dir), Path(out_dir)
    a_images, b_images = _images(a_dir), _images(b_dir)
    if not a_images and not b_images:
        raise InputError(f"{a_dir} and {b_dir}: no images (.tif, .zarr, .png, .jpg) in either folder")
    if out_dir.resolve() in (a_dir.resolve(), b_dir.resolve()):
        raise InputError(f"{out_dir}: the output folder is a source folder; choose another")
    options = options or FuseOptions()
    _check_options(options)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{out_dir}: cannot create the output folder: {error}") from error

    results = []
    for name in sorted(a_images.keys() | b_images.keys()):
        result = _fuse_pair(name, a_images.get(name, []), b_images.get(name, []), a_dir, b_dir, out_dir,
                            output_format, options, progress, cancel)  # fmt: skip
        results.append(result)
        if on_result is not None:
            on_result(result)
    return FolderReport(results)


def _check_options(options: FuseOptions) -> None:
    """Refuse bad options once, up front, rather than failing every pair with the same error."""
    if options.dtype not in DTYPES:
        raise InputError(f"unknown output dtype {options.dtype!r}: choose float32 or source")
    check_scheduler(options.scheduler)
    check_tiling(
        options.tile, options.overlap, predictor(choose_engine(options.model, options.method, options.device))[1]
    )


def _fuse_pair(
    name: str,
    a: list[Path],
    b: list[Path],
    a_dir: Path,
    b_dir: Path,
    out_dir: Path,
    output_format: str,
    options: FuseOptions,
    progress: Callable[[str, int, int], None] | None,
    cancel: Callable[[], bool] | None = None,
) -> PairResult:
    for files, folder, other in ((a, a_dir, b_dir), (b, b_dir, a_dir)):
        if not files:
            return PairResult(name, "skipped", f"no file of this name in {folder} (only in {other})")
        if len(files) > 1:
            listed = ", ".join(path.name for path in files)
            return PairResult(name, "skipped", f"several files of this name in {folder}: {listed}")
    out = str(out_dir / f"{name}{FORMATS[output_format]}")
    if os.path.lexists(out) and not options.overwrite:
        return PairResult(name, "kept", f"{out} already there (overwrite replaces it)", out)
    try:
        report = fuse_files(
            a[0],
            b[0],
            out,
            options,
            progress=None if progress is None else (lambda done, total: progress(name, done, total)),
            cancel=cancel,
        )
    except FusionCancelled:
        raise
    except (FusionMambaError, OSError) as error:  # OSError: a disk or permission problem, as in `fuse`
        return PairResult(name, "failed", str(error), out)
    return PairResult(name, "fused", report.summary(), out, report)
