"""The demo: fuse the real neuron sample (MAP2 + a phase-contrast plane) with the shipped model and compare.

    python examples/demo.py [--out demo]

The sample is a 512 x 512 field of human motor neurons that ships with the package: MAP2
(dendrites, confocal fluorescence) is A, the middle phase-contrast focal plane is B. Writes
``fused.tif`` (float32 in [0, 1]), a side-by-side ``side_by_side.png`` (A, B, the network, the
best classical method) and prints the metric table. As in the fusion literature (and
benchmarks/quality.py), every method is scored on the same 8-bit luminance planes of the two
sources.
"""

import argparse
from pathlib import Path

import tifffile

from napari_fusionmamba import fuse
from napari_fusionmamba.napari.sample_data import load_neurons
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import SCORED_METRICS, compare_methods, fusion_input, wins
from napari_fusionmamba.registry import DEFAULT_MODEL, load_model


def side_by_side(path: Path, panels: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for axis, (title, image) in zip(axes, panels.items()):
        axis.imshow(image, cmap="gray", vmin=0, vmax=image.max() if image.dtype.kind in "ui" else 1)
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo", help="folder for fused.tif and side_by_side.png")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    neurons = load_neurons()
    map2, phase = neurons["MAP2"], neurons["phase"][1]  # the middle focal plane (z06)
    network = load_model(args.model)
    fused = fuse(map2, phase, model=network)
    tifffile.imwrite(out / "fused.tif", fused)

    label = f"FusionMamba ({args.model})"
    run_network = lambda a, b: fuse(a, b, model=network, normalise=None)
    a, b = fusion_input(map2, "MAP2"), fusion_input(phase, "phase")
    results = compare_methods(a, b, {label: run_network})
    results.update(compare_methods(a, b))
    classical = {name: scores for name, scores in results.items() if name != label}
    best = max(classical, key=lambda name: len(wins(classical, name)))

    keys = list(results[label])
    print(f"{'metric':8}" + "".join(f"{name:>24}" for name in results))
    for key in keys:
        print(f"{key:8}" + "".join(f"{results[name][key]:>24.4f}" for name in results))
    won = wins(results, label)
    print(
        f"\n{label} beats the best classical method on {len(won)} of {len(SCORED_METRICS)} "
        f"({', '.join(won) or 'none'}); best classical method overall: {best}"
    )

    side_by_side(
        out / "side_by_side.png",
        {
            "A: MAP2 (confocal)": map2,
            "B: phase contrast": phase,
            label: fused,
            f"best classical: {best}": BASELINES[best](a, b),
        },
    )
    print(f"wrote {out / 'fused.tif'} and {out / 'side_by_side.png'}")


if __name__ == "__main__":
    main()
