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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionmamba", description="Multimodal image fusion with the FusionMamba network."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, devices, scan backend and models")
    info.add_argument("--models", action="store_true", help="list the models with their parameter counts")
    info.set_defaults(handler=_info)
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
