"""The model card's picture: sources, a model and max(a, b) side by side on validation pairs.

Colour as a user sees it: A (GFP) in its own colours, B (phase contrast) gray, and each fusion
with A's chroma put back on the fused luminance, which is what ``fuse`` returns for a colour A.
Every method gets the same 8-bit planes scaled to [0, 1] (``normalise=None``), as in
benchmarks/quality.py.

    python scripts/model_card_figure.py --data ../shared/data/gfp_pc --pairs 03-B01.png 03-D06.png \
        --model gfp-pc --out docs/images/gfp-pc_validation.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def fused_panels(a: np.ndarray, b: np.ndarray, model: str) -> dict[str, np.ndarray]:
    from napari_fusionmamba import fuse

    a, b = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    return {
        "A (GFP)": a,
        "B (phase contrast)": b,
        model: fuse(a, b, model=model, device="cpu", normalise=None),
        "max(a, b)": fuse(a, b, method="max", normalise=None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with A/ and B/ subfolders")
    parser.add_argument("--pairs", nargs="+", required=True, help="pair names, one row each")
    parser.add_argument("--model", default="gfp-pc", help="model name or .safetensors path")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        fused_panels(iio.imread(args.data / "A" / n), iio.imread(args.data / "B" / n), args.model) for n in args.pairs
    ]
    figure, axes = plt.subplots(len(rows), 4, figsize=(16, 4.2 * len(rows)), squeeze=False)
    for name, row, row_axes in zip(args.pairs, rows, axes):
        for axis, (title, image) in zip(row_axes, row.items()):
            axis.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"{title}, {Path(name).stem}")
            axis.axis("off")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=72)
    plt.close(figure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
