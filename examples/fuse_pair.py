"""Fuse two registered images from Python and save the result as a TIFF.

    python examples/fuse_pair.py GFP.tif PHASE.tif fused.tif

Without arguments it fuses the sample GFP + phase-contrast pair that ships with the package.
Colour sources are fused on their luminance and keep their colour; stacks are fused plane by plane.
"""

import argparse

import tifffile

from napari_fusionmamba import fuse

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("a", nargs="?", help="fluorescence / functional image (default: the sample GFP)")
parser.add_argument("b", nargs="?", help="structural image, e.g. phase contrast (default: the sample phase)")
parser.add_argument("out", nargs="?", default="fused.tif")
parser.add_argument("--model", default=None, help="model name or checkpoint (default: the shipped model)")
args = parser.parse_args()

if args.a is None:
    from napari_fusionmamba.napari.sample_data import load_sample_pair

    args.a, args.b = load_sample_pair()

fused = fuse(args.a, args.b, model=args.model)  # float32 in [0, 1], the sources' shape
tifffile.imwrite(args.out, fused)
print(f"{args.out}: {fused.shape} {fused.dtype}, range {fused.min():.3f}..{fused.max():.3f}")
