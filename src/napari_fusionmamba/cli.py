"""The ``fusionmamba`` command: ``fuse | fuse-folder | finetune | evaluate | export | import | info``.

Each subcommand is a thin shell over the public Python function of the same job; heavy imports
happen inside the handlers so ``fusionmamba --help`` answers at once. It catches only the
package's user-facing errors (``errors.FusionMambaError``): a one-line message and exit code 2;
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from .errors import FusionMambaError, InputError


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .model.devices import available_devices
    from .model.scan import describe_backends
    from .registry import list_models

    print(f"napari-fusionmamba {__import__('napari_fusionmamba').__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"devices: {', '.join(available_devices())}")
    for line in describe_backends():
        print(line)
    if args.models:
        print("models:")
        for entry in list_models():
            try:
                print(f"  {entry.summary()}")
            except FusionMambaError as error:  # one broken file must not hide the other models
                print(f"  warning: skipped {entry.path}: {error}")
    return 0


def _add_evaluate_parser(commands) -> None:
    from .quality.metrics import METRICS

    evaluate = commands.add_parser(
        "evaluate",
        help="fusion quality metrics of one fused image against its two sources",
        description="Fusion quality metrics (docs/metrics.md) of FUSED against sources A and B, "
        "computed on 8-bit gray as fusion papers report them (colour images: their Y).",
    )
    evaluate.add_argument("fused", help="the fused image (TIFF, zarr, PNG, BMP, JPEG)")
    evaluate.add_argument("a", help="source A (e.g. the GFP / CT / infrared image)")
    evaluate.add_argument("b", help="source B (e.g. the phase-contrast / MRI / visible image)")
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        choices=list(METRICS),
        help=f"metrics to compute (default: all): {' '.join(METRICS)}",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object {metric: value}")
    evaluate.set_defaults(handler=_evaluate)


def read_plane(path: str):
    """One image file read whole as a numpy array (gray or colour), for the metrics."""
    import numpy as np

    from .io import open_image

    return np.asarray(open_image(path).data)


def json_number(value: float) -> float | None:
    """Strict JSON has no inf or NaN: those become null."""
    import math

    return value if math.isfinite(value) else None


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .quality.metrics import evaluate

    paths = (args.fused, args.a, args.b)
    fused, a, b = (read_plane(path) for path in paths)
    scores = evaluate(fused, a, b, metrics=args.metrics, names=paths)
    if args.json:
        print(json.dumps({key: json_number(value) for key, value in scores.items()}))
    else:
        width = max(len(key) for key in scores)
        for key, value in scores.items():
            print(f"{key:<{width}}  {value:.4f}")
    return 0


def _add_finetune_parser(commands) -> None:
    p = commands.add_parser(
        "finetune",
        help="fine-tune a model (or train one from scratch) on registered pairs",
        description="Fine-tune on registered pairs. Crops come only from each pair's mask; a block of "
        "each pair (whole pairs when there are many) is held out for validation. Ctrl-C saves the run; "
        "--resume continues it.",
    )
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        default=[],
        help="a registered pair of images (repeatable)",
    )
    p.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="M",
        help="region mask of the matching --pair (0 unused, 2 important detail; 'none' for no mask)",
    )
    p.add_argument("--recipe", metavar="FILE", help="JSON with 'pairs' (files or A/ B/ folders) and 'settings'")
    p.add_argument(
        "--from", dest="base", metavar="MODEL|PATH|scratch", help="start from this model (default: the default model)"
    )
    p.add_argument("--config", help="config trained with --from scratch (tiny, small, paper, paper-lite)")
    p.add_argument(
        "--residual",
        help="the network's output residual: max, keep-both, mean, sum2 or none (default: the model's own); "
        "a new one on a trained model starts its head at zero",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: a new folder in the user data dir)")
    p.add_argument("--steps", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--objective",
        metavar="NAME",
        help="training objective: paper (the published loss, the default) or keep-both (docs/finetune.md)",
    )
    p.add_argument(
        "--loss-weights",
        metavar="A1,A2,A3",
        help="the objective's intensity, texture and structure weights (default 10,1,10)",
    )
    p.add_argument(
        "--target-background",
        type=float,
        metavar="LEVEL",
        help="keep-both: A's background level in [0, 1] units (default 0.035); signal above it is kept",
    )
    p.add_argument("--target-gain", type=float, metavar="G", help="keep-both: gain on that signal (default 1.1)")
    p.add_argument(
        "--edge-weight",
        type=float,
        metavar="W",
        help="keep-both: weight of 1 - Qabf, the edges kept from each source (default 0: off)",
    )
    p.add_argument("--val-fraction", type=float, help="share of each pair's marked region held out (default 0.15)")
    p.add_argument(
        "--checkpoint-steps",
        type=int,
        metavar="N",
        help="save the run every N steps (default 100), so a kill loses less",
    )
    p.add_argument("--checkpoint-minutes", type=float, metavar="M", help="and every M minutes (default 10)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    p.add_argument("--name", help="register the best model under this name so every tool can use it")
    p.set_defaults(handler=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from .registry import check_model_name, register_model
    from .training import Pair, TrainSettings, default_run_dir, finetune, load_recipe

    pairs, values, extra = load_recipe(args.recipe) if args.recipe else ([], {}, {})
    if args.mask and len(args.mask) != len(args.pair):
        raise InputError(
            f"{len(args.mask)} --mask for {len(args.pair)} --pair: give one mask per pair ('none' for none)"
        )
    masks = args.mask or [None] * len(args.pair)
    pairs += [Pair(a, b, None if m in (None, "none") else m) for (a, b), m in zip(args.pair, masks)]
    flags = {
        "base": args.base, "config": args.config, "steps": args.steps, "crop": args.crop, "batch": args.batch,
        "lr": args.lr, "val_fraction": args.val_fraction, "seed": args.seed, "device": args.device,
        "objective": args.objective, "target_background": args.target_background, "target_gain": args.target_gain,
        "edge_weight": args.edge_weight, "residual": args.residual,
        "checkpoint_every_steps": args.checkpoint_steps,
        "checkpoint_every_minutes": args.checkpoint_minutes,
    }  # fmt: skip
    given = {k: v for k, v in flags.items() if v is not None}
    if args.resume and (set(given) - {"device"} or args.loss_weights or args.recipe or pairs):
        raise InputError("--resume continues the run with its saved pairs and settings: give only --out (and --device)")
    values.update(given)
    if args.loss_weights:
        values["loss_weights"] = _loss_weights(args.loss_weights)
    out = args.out or extra.get("out")
    name = args.name or extra.get("name")
    if args.resume and out is None:
        raise InputError("--resume needs --out RUN_DIR")
    out = out or default_run_dir()
    if name:
        check_model_name(name)
    settings = TrainSettings.from_dict(values)

    bar, on_step = _step_bar(settings.steps)
    try:
        result = finetune(pairs or None, settings, out, resume=args.resume, on_step=on_step)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped; the run is saved in {out}: continue it with --resume --out {out}", file=sys.stderr)
        raise
    finally:  # before any error message, which must stay the last line
        bar.close()
    print(f"run folder: {result.run_dir}")
    print(f"step {result.step}, best validation loss {result.best_val_loss:.4f}: {result.best}")
    if name:
        entry = register_model(result.best, name, overwrite=True)
        print(f"registered as model {entry.name!r}: {entry.path}")
    return 0


def _loss_weights(text: str) -> tuple[float, ...]:
    """``--loss-weights A1,A2,A3`` as three numbers."""
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3:
        raise InputError(f"--loss-weights wants three numbers like 10,1,10, got {text!r}")
    return weights


def _step_bar(steps: int) -> tuple[Any, Callable[[Any], None]]:
    """A progress bar of training steps showing the loss, and the ``on_step`` that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=steps, unit="step", dynamic_ncols=True)

    def on_step(info: Any) -> None:
        if bar.total != info.steps:
            bar.total = info.steps
        bar.n = info.step
        text = f"loss {info.terms['loss']:.4f}"
        if info.val_terms:
            text += f" val {info.val_terms['loss']:.4f}"
        bar.set_postfix_str(text, refresh=False)
        bar.refresh()

    return bar, on_step


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
    """The options of one fusion, shared by ``fuse`` and ``fuse-folder``."""
    parser.add_argument("--model", default=None, help="model name or checkpoint path (default: the shipped model)")
    parser.add_argument("--method", default=None, help="a classical method instead of the network (see baselines)")
    parser.add_argument(
        "--tile", type=int, default=256, help="tile size in pixels, a multiple of the network stride (256)"
    )
    parser.add_argument("--overlap", type=int, default=64, help="overlap between tiles in pixels (64)")
    parser.add_argument("--batch", type=int, default=6, help="tiles per forward pass (6)")
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="output chunk size in pixels (default: a multiple of the tile stride near 1024)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps (auto)")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="synchronous, threads (default), processes, or a dask.distributed scheduler ADDRESS",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "source"),
        default="float32",
        help="float32 in [0, 1] (default) or the sources' dtype scaled to its range",
    )
    parser.add_argument(
        "--normalise",
        choices=("percentile", "range", "none"),
        default="percentile",
        help="robust percentiles per source (default), the dtype's range, or none (inputs in [0, 1])",
    )
    parser.add_argument(
        "--colormap",
        action="append",
        metavar="[A=|B=]COLOUR",
        default=None,
        help="colour the result the way a gray source is shown: fuse, then tint the fused gray from black "
        "to this colour into RGB (green, magenta, red, blue, cyan, yellow, gray); COLOUR or A=COLOUR for A, "
        "B=COLOUR for B; both given: the two colours mixed at each pixel by how bright each source is",
    )
    parser.add_argument(
        "--contrast-limits",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="with --colormap for A: the values of A shown as black and as the full colour (default: A's percentiles)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (or an unfinished run with other arguments)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_fuse_parser(commands) -> None:
    fuse = commands.add_parser(
        "fuse",
        help="fuse two registered images (TIFF, zarr, PNG/JPEG) into a zarr or OME-TIFF",
        description="Fuse two registered images tile by tile, chunk by chunk. An interrupted run "
        "resumes when started again with the same arguments.",
    )
    fuse.add_argument(
        "a",
        help="first source (functional / fluorescence / CT / infrared): "
        ".tif .tiff .png .jpg .zarr .ome.zarr or PATH.zarr/ARRAY",
    )
    fuse.add_argument(
        "b",
        nargs="?",
        help="second source (structural / phase contrast / MRI / visible); leave it out to fuse two "
        "channels of A (--channel-a, --channel-b)",
    )
    fuse.add_argument(
        "-o", "--output", required=True, help="output .zarr / .ome.zarr (OME-Zarr 0.4) or .tif / .tiff (OME-TIFF)"
    )
    fuse.add_argument("--channel-a", type=int, metavar="N", help="fuse channel N (from 0) of A's C axis")
    fuse.add_argument("--channel-b", type=int, metavar="N", help="fuse channel N (from 0) of B's C axis (or of A's)")
    _add_fusion_options(fuse)
    fuse.set_defaults(handler=_fuse)


def _fuse_options(args: argparse.Namespace) -> Any:
    """The ``FuseOptions`` the fusion flags ask for."""
    from .engine import FuseOptions
    from .io.colour import named_tint

    colormaps = _colormaps(args.colormap or [])
    if args.contrast_limits is not None and "A" not in colormaps:
        raise InputError("--contrast-limits goes with --colormap for A (the range the colormap spans)")
    tints = {side: named_tint(name, args.contrast_limits if side == "A" else None) for side, name in colormaps.items()}
    return FuseOptions(
        model=args.model,
        method=args.method,
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        device=args.device,
        normalise=None if args.normalise == "none" else args.normalise,
        tint=tints.get("A"),
        tint_b=tints.get("B"),
        chunk=args.chunk,
        dtype=args.dtype,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
    )


def _colormaps(given: list[str]) -> dict[str, str]:
    """``--colormap`` values (COLOUR, A=COLOUR, B=COLOUR) by source; one each at most."""
    colormaps: dict[str, str] = {}
    for value in given:
        side, _, name = value.rpartition("=")
        side = side.upper() or "A"
        if side not in ("A", "B") or side in colormaps:
            raise InputError(f"--colormap {value}: give COLOUR or A=COLOUR, and B=COLOUR, once each")
        colormaps[side] = name
    return colormaps


class _TileBar:
    """A tqdm bar of tiles on stderr with its rate and time left, one per output (none with
    --no-progress), as ``progress``; tiles already fused by an earlier run start it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.desc = ""

    def __call__(self, done: int, total: int, desc: str = "fusing") -> None:
        if not self.enabled:
            return
        if self.bar is None or desc != self.desc:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, initial=done, unit="tile", desc=desc, file=sys.stderr)
            self.desc = desc
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fuse(args: argparse.Namespace) -> int:
    from .engine import fuse_files
    from .errors import FusionCancelled

    if args.b is None and (args.channel_a is None or args.channel_b is None):
        raise InputError("fuse: give two sources, or one with --channel-a and --channel-b (two of its channels)")
    options = dataclasses.replace(_fuse_options(args), channels=(args.channel_a, args.channel_b))
    bar = _TileBar(not args.no_progress)
    try:
        report = fuse_files(args.a, args.b or args.a, args.output, options, progress=bar)
    except (KeyboardInterrupt, FusionCancelled):
        print("fusionmamba fuse: stopped; run the same command again to resume", file=sys.stderr)
        raise KeyboardInterrupt from None
    except OSError as error:
        raise InputError(str(error)) from error
    finally:
        bar.close()
    print(report.summary())
    return 0


def _add_fuse_folder_parser(commands) -> None:
    folder = commands.add_parser(
        "fuse-folder",
        help="fuse every pair of two folders matched by name (A_DIR/NAME.* with B_DIR/NAME.*)",
        description="Fuse A_DIR/NAME.* with B_DIR/NAME.* into OUT_DIR/NAME.ome.zarr (or .ome.tif) for "
        "every NAME in both folders. Names in one folder only are skipped and a pair that cannot be fused "
        "is reported on one line, and the others still fuse; outputs already there are kept (--overwrite "
        "replaces them) and an interrupted pair resumes. Exit code 0 when every pair is fused, 1 when "
        "some were skipped or failed, 2 for bad usage (a missing folder, a bad option).",
    )
    folder.add_argument("a_dir", help="folder of first sources (functional / fluorescence / CT / infrared)")
    folder.add_argument("b_dir", help="folder of second sources, under the same names (extension may differ)")
    folder.add_argument("out_dir", help="folder for the fused images (created when missing)")
    folder.add_argument(
        "--format", choices=("zarr", "tif"), default="zarr", help="NAME.ome.zarr (default) or NAME.ome.tif"
    )
    _add_fusion_options(folder)
    folder.set_defaults(handler=_fuse_folder)


def _fuse_folder(args: argparse.Namespace) -> int:
    from .engine import PairResult, fuse_folder

    bar = _TileBar(not args.no_progress)

    def on_result(result: PairResult) -> None:
        bar.close()
        line = f"{result.name}: {result.status}: {result.message}"
        print(line, file=sys.stdout if result.status in ("fused", "kept") else sys.stderr)

    try:
        report = fuse_folder(
            args.a_dir,
            args.b_dir,
            args.out_dir,
            _fuse_options(args),
            progress=lambda name, done, total: bar(done, total, name),
            on_result=on_result,
            output_format=args.format,
        )
    except KeyboardInterrupt:
        print("fusionmamba fuse-folder: stopped; run the same command again to resume", file=sys.stderr)
        raise
    finally:
        bar.close()
    print(report.summary())
    return 0 if report.complete else 1


def _add_verify_parser(commands) -> None:
    verify = commands.add_parser(
        "verify",
        help="check a fused output: every chunk present, readable and as written",
        description="Check a finished output of fusionmamba fuse: every chunk present, readable and equal to "
        "what was written (its digest, recorded when it was written). Prints one line per missing or damaged "
        "chunk, naming it. Exit code 0 when the output is sound, 1 when chunks are missing or damaged, 2 when "
        "OUTPUT is not a finished output of fusionmamba fuse.",
    )
    verify.add_argument("output", help="a .zarr / .ome.zarr or .tif / .ome.tif written by fusionmamba fuse")
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from .engine import verify_output

    report = verify_output(args.output)
    for line in report.problems:
        print(line, file=sys.stderr)
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _add_share_parsers(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a model as a bioimage.io model package (.zip)",
        description="Write MODEL (a name from `fusionmamba info --models` or a checkpoint path) as a bioimage.io "
        "model package (format 0.5): TorchScript and state-dict weights, test tensors, cover, model card, "
        "licence and citations, validated before it is written. Needs the bioimageio extra.",
    )
    export.add_argument("model", metavar="MODEL", help="model name or .safetensors checkpoint")
    export.add_argument("out", metavar="OUT.zip", help="the package to write")
    export.set_defaults(handler=_export)
    imported = commands.add_parser(
        "import",
        help="register the model of a bioimage.io package written by `fusionmamba export`",
        description="Validate PACKAGE.zip and register its model by name, so every tool can use it. Only "
        "packages written by `fusionmamba export` are accepted, and only their safetensors checkpoint is read.",
    )
    imported.add_argument("package", metavar="PACKAGE.zip")
    imported.add_argument("--name", help="register under this name (default: the name it was exported with)")
    imported.add_argument("--overwrite", action="store_true", help="replace a user model of that name")
    imported.set_defaults(handler=_import)


def _export(args: argparse.Namespace) -> int:
    from .zoo import export_model

    print(f"wrote {export_model(args.model, args.out)}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .zoo import import_model

    entry = import_model(args.package, args.name, overwrite=args.overwrite)
    print(f"registered as model {entry.name!r}: {entry.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionmamba", description="Multimodal image fusion with the FusionMamba network."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, devices, scan backend and models")
    info.add_argument("--models", action="store_true", help="list the models with their parameter counts")
    info.set_defaults(handler=_info)
    _add_fuse_parser(commands)
    _add_fuse_folder_parser(commands)
    _add_finetune_parser(commands)
    _add_evaluate_parser(commands)
    _add_verify_parser(commands)
    _add_share_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FusionMambaError as error:  # anything else is a bug: let it show
        print(f"fusionmamba {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusionmamba {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
