"""Ship a trained checkpoint inside the package as a named model.

    python scripts/bundle_weights.py RUN_DIR/best.safetensors gfp-pc --recipe recipes/gfp-pc.json recipes/gfp-pc-leg2.json

Floating-point tensors are stored as float16 (half the size; they load back into the float32
network), and the provenance gains the recipe and the run's wall time and final losses from
its log, for the model card.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from napari_fusionmamba.registry import BUNDLED_DIR, load_checkpoint, read_safetensors, write_safetensors

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint", type=Path, help="a checkpoint in a training run folder")
parser.add_argument("name", help="model name (the file stem in the package)")
parser.add_argument("--recipe", required=True, nargs="+", help="the recipe files that reproduce the run, in order")
args = parser.parse_args()

tensors, metadata = read_safetensors(args.checkpoint)
with open(args.checkpoint.parent / "log.csv", newline="") as handle:
    rows = list(csv.DictReader(handle))
validation = [float(row["val_loss"]) for row in rows if row["val_loss"]]
metadata["provenance"].update(
    {
        "recipe": " then ".join(args.recipe),
        "steps": int(rows[-1]["step"]),
        "wall_seconds": round(float(rows[-1]["seconds"])),
        "final_train_loss_mean_of_last_100_steps": float(np.mean([float(r["loss"]) for r in rows[-100:]])),
        "best_validation_loss": min(validation),
        "stored_as": "float16",
    }
)
half = {key: value.half() if value.is_floating_point() else value for key, value in tensors.items()}
target = write_safetensors(BUNDLED_DIR / f"{args.name}.safetensors", half, metadata)

full, _ = load_checkpoint(args.checkpoint)
shipped, _ = load_checkpoint(target)
a, b = torch.rand(2, 1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    difference = (full(a, b) - shipped(a, b)).abs().max().item()
print(
    f"{target}: {target.stat().st_size / 2**20:.1f} MiB; float16 vs float32 output differs by at most {difference:.2e}"
)
