"""The ``fusionmamba`` command: ``fuse | finetune | evaluate | bench | info``.

Each subcommand is a thin shell over the public Python function of the same job; heavy imports
happen inside the handlers so ``fusionmamba --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .devices import available_devices
    from .model.scan import describe_backends
    from .weights import list_models

    print(f"napari-fusionmamba {__import__('napari_fusionmamba').__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"devices: {', '.join(available_devices())}")
    for line in describe_backends():
        print(line)
    if args.models:
        print("models:")
        for entry in list_models():
            print(f"  {entry.summary()}")
    return 0


def _add_evaluate_parser(commands) -> None:
    from .metrics import METRICS

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
        "--metrics", nargs="+", metavar="KEY", choices=list(METRICS),
        help=f"metrics to compute (default: all): {' '.join(METRICS)}",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object {metric: value}")
    evaluate.set_defaults(handler=_evaluate)


def read_plane(path: str):
    """One image file as a numpy array (gray or colour), for the metrics."""
    import os

    import imageio.v3 as iio
    import numpy as np

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return np.asarray(iio.imread(path))
    except Exception as error:  # every format plugin raises its own error type
        raise CLIError(f"{path}: cannot read ({type(error).__name__}: {error})") from error


def json_number(value: float) -> float | None:
    """Strict JSON has no inf or NaN: those become null."""
    import math

    return value if math.isfinite(value) else None


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .metrics import evaluate

    paths = (args.fused, args.a, args.b)
    images = [read_plane(path) for path in paths]
    scores = evaluate(*images, metrics=args.metrics, names=paths)
    if args.json:
        print(json.dumps({key: json_number(value) for key, value in scores.items()}))
    else:
        width = max(len(key) for key in scores)
        for key, value in scores.items():
            print(f"{key:<{width}}  {value:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionmamba", description="Multimodal image fusion with the FusionMamba network."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, devices, scan backend and models")
    info.add_argument("--models", action="store_true", help="list the models with their parameter counts")
    info.set_defaults(handler=_info)
    _add_evaluate_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CLIError, FileNotFoundError, ValueError) as error:
        print(f"fusionmamba {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusionmamba {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
