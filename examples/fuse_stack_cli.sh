#!/usr/bin/env bash
# Fuse two large registered TIFF (or zarr) stacks into OME-Zarr from the command line.
#
#     bash examples/fuse_stack_cli.sh GFP_STACK.tif PHASE_STACK.tif fused.ome.zarr
#
# The stacks are read lazily and fused tile by tile, chunk by chunk: memory stays bounded by the
# batch of tiles, not by the stack. Stop it at any time (Ctrl-C): the same command resumes.
# For a cluster, add --scheduler tcp://SCHEDULER:8786 (see fuse_stack_distributed.py).
set -euo pipefail
a=${1:?first stack (e.g. GFP.tif)}
b=${2:?second stack (e.g. phase.tif)}
out=${3:-fused.ome.zarr}
fusionmamba fuse "$a" "$b" -o "$out" --tile 256 --overlap 64 --batch 4
