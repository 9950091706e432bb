"""Make the sample GFP-like + phase-contrast-like pair that ships with the package.

The real GFP + phase-contrast pairs used for development may not be redistributed, so the
package ships a synthetic pair with the same character, made here deterministically:
a field of plant-like cells; the fluorescence image (A) shows GFP in some cells only (bright
nuclei, dimmer cytoplasm, dark background); the phase-contrast image (B) shows every cell as a
dark interior with a bright halo, granular texture and uneven illumination. Each image holds
information the other lacks, which is what fusion is for.

    python scripts/make_sample_pair.py      # writes src/napari_fusionmamba/data/sample_{gfp,phase}.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

SIZE = 320
SEED = 20240414
OUT = Path(__file__).resolve().parents[1] / "src" / "napari_fusionmamba" / "data"


def _cells(rng: np.random.Generator) -> np.ndarray:
    """Label image of rounded cells separated by narrow gaps (a shrunken Voronoi tessellation)."""
    seeds = rng.uniform(-20, SIZE + 20, size=(30, 2))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dist = np.stack([np.hypot(yy - y, xx - x) for y, x in seeds])
    labels = np.argmin(dist, axis=0) + 1
    depth = np.zeros((SIZE, SIZE), np.float32)
    for k in range(1, labels.max() + 1):
        cell = labels == k
        depth[cell] = ndi.distance_transform_edt(np.pad(cell, 1))[1:-1, 1:-1][cell]
    wobble = ndi.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 6) * 25
    return np.where(depth + wobble > 5, labels, 0)


def make_pair(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The (fluorescence, phase) pair as uint8 images of SIZE x SIZE."""
    rng = np.random.default_rng(seed)
    labels = _cells(rng)
    n = labels.max()
    inside = (labels > 0).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]

    # Fluorescence: GFP in about 60 % of the cells, nuclei brighter than the cytoplasm.
    expression = np.where(rng.random(n + 1) < 0.6, rng.uniform(0.2, 0.7, n + 1), 0.0)
    expression[0] = 0.0
    texture = 0.75 + 0.5 * ndi.gaussian_filter(rng.random((SIZE, SIZE)), 4) ** 2 * 4
    gfp = expression[labels] * texture
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        if expression[k] > 0 and len(ys) > 50:
            cy, cx = ys.mean() + rng.normal(0, 4), xs.mean() + rng.normal(0, 4)
            gfp += 1.5 * expression[k] * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
    gfp = ndi.gaussian_filter(gfp, 1.5)
    gfp = rng.poisson(np.clip(gfp, 0, None) * 80 + 3) / 80.0

    # Phase contrast: darker interiors with granules, bright halos around cells, uneven light.
    soft = ndi.gaussian_filter(inside, 1.0)
    halo = np.clip(ndi.gaussian_filter(inside, 3.0) - inside, 0, None)
    granules = (ndi.gaussian_filter(rng.random((SIZE, SIZE)), 1.5) - 0.5) * inside
    light = 0.5 + 0.08 * (xx / SIZE) - 0.06 * (yy / SIZE)
    phase = light - 0.18 * soft + 1.4 * halo + 1.2 * granules
    phase = ndi.gaussian_filter(phase, 0.7) + rng.normal(0, 0.012, phase.shape)

    def to_uint8(image: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(image, [0.5, 99.8])
        return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)

    return to_uint8(gfp), to_uint8(phase)


def main() -> None:
    import imageio.v3 as iio

    gfp, phase = make_pair()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, image in (("sample_gfp.png", gfp), ("sample_phase.png", phase)):
        iio.imwrite(OUT / name, image, extension=".png", optimize=True)
        print(f"{OUT / name}: {image.shape} {image.dtype}, {(OUT / name).stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
