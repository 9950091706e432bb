"""Cut the real neuron sample that ships with the package from the full ISL field of view.

The source is one registered 1024 x 1024 16-bit field of human motor neurons from the test data
of google/in-silico-labeling (Apache-2.0). The package ships a small subset so the wheel stays
small: MAP2 and DAPI (confocal) and three phase-contrast focal planes, cropped to the 512 x 512
corner with the most neurons, kept 16-bit, stored as zlib-compressed TIFFs (lossless). The crop,
planes and format are stated in the NOTICE written beside them.

    python scripts/make_neuron_sample.py SOURCE_FOLDER   # writes src/napari_fusionmamba/data/neurons_*.tif
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_fusionmamba" / "data"
#: Rows and columns kept: y0, y1, x0, x1 (a corner with a dense cluster of neurons).
CROP = (0, 512, 448, 960)
PLANES = (4, 6, 8)
CHANNELS = {"neurons_map2.tif": "map2_confocal.png", "neurons_dapi.tif": "dapi_confocal.png"}
PHASE = "neurons_phase.tif"

NOTICE = """\
Neuron sample (napari-fusionmamba sample data)

Origin: human motor neurons (Finkbeiner lab, condition "KEVAN_0_8", well A4), test data of
google/in-silico-labeling (https://github.com/google/in-silico-labeling, commit 5db882b, folder
isl/testdata/condition_blue_sample), licensed under the Apache License 2.0 (LICENSE.neurons).

Changes made by napari-fusionmamba (scripts/make_neuron_sample.py):
- kept 5 of the 16 images: MAP2 (confocal, maximum projection), DAPI (confocal, maximum
  projection) and the phase-contrast focal planes z04, z06 and z08 of 13;
- cropped every image from 1024 x 1024 to 512 x 512: rows {y0}-{y1}, columns {x0}-{x1}
  (end exclusive);
- converted from PNG to zlib-compressed TIFF (lossless, 16-bit values unchanged):
  neurons_map2.tif, neurons_dapi.tif and neurons_phase.tif (the three planes as a Z stack,
  z04, z06, z08 in that order).
"""


def make_subset(source: Path) -> dict[str, np.ndarray]:
    """File name -> cropped 16-bit array of every file the package ships."""
    y0, y1, x0, x1 = CROP
    subset = {name: iio.imread(source / png)[y0:y1, x0:x1] for name, png in CHANNELS.items()}
    subset[PHASE] = np.stack([iio.imread(source / f"phase_z{z:02d}.png")[y0:y1, x0:x1] for z in PLANES])
    return subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the full-field PNGs, LICENSE and NOTICE.md")
    args = parser.parse_args()
    for name, image in make_subset(args.source).items():
        tifffile.imwrite(OUT / name, image, compression="zlib", compressionargs={"level": 9}, predictor=True)
    shutil.copyfile(args.source / "LICENSE", OUT / "LICENSE.neurons")
    y0, y1, x0, x1 = CROP
    (OUT / "NOTICE.neurons").write_text(NOTICE.format(y0=y0, y1=y1, x0=x0, x1=x1))
    print(f"wrote {', '.join([*CHANNELS, PHASE])}, LICENSE.neurons and NOTICE.neurons to {OUT}")


if __name__ == "__main__":
    main()
