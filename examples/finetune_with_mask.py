"""Fine-tune the shipped model on your own registered pair, only where a mask says so.

    python examples/finetune_with_mask.py GFP.tif PHASE.tif MASK.tif --steps 300 --name my-scope

The mask is an integer image of the pair's shape: 0 = ignore, 1 = train here, 2 = train here and
weigh more (fine detail that matters). Crops are sampled only inside the mask; a band of it is
held out for validation. The best model is registered under ``--name`` so the Fuse widget, the
``fusionmamba fuse --model NAME`` command and ``fuse(..., model=NAME)`` can use it.
"""

import argparse

from napari_fusionmamba.registry import register_model
from napari_fusionmamba.training import Pair, TrainSettings, default_run_dir, finetune

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("a")
parser.add_argument("b")
parser.add_argument("mask", nargs="?", help="region mask (default: the whole image)")
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--crop", type=int, default=128)
parser.add_argument("--batch", type=int, default=2)
parser.add_argument("--out", default=None, help="run folder (default: a new one in the user data dir)")
parser.add_argument("--name", default="my-model")
args = parser.parse_args()


def show(info):
    if info.step % 10 == 0 or info.step == info.steps:
        print(f"step {info.step}/{info.steps}  loss {info.terms['loss']:.4f}", flush=True)


settings = TrainSettings(steps=args.steps, crop=args.crop, batch=args.batch)  # starts from the shipped model
result = finetune([Pair(args.a, args.b, args.mask)], settings, args.out or default_run_dir(), on_step=show)
entry = register_model(result.best, args.name, overwrite=True)
print(f"best validation loss {result.best_val_loss:.4f}; registered as {entry.name!r}: {entry.path}")
