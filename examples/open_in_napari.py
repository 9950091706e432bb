"""Open a pair (and, if given, a fused result) in napari with the plugin's Fuse widget docked.

    python examples/open_in_napari.py GFP.tif PHASE.tif [fused.ome.zarr]

Without arguments it opens the sample pair. Files open through the plugin's reader (TIFF,
OME-TIFF, zarr, OME-Zarr: lazily, so big stacks open at once).
"""

import argparse

import napari

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("paths", nargs="*", help="images to open (default: the sample pair)")
parser.add_argument("--no-block", action="store_true", help="set up the viewer and return (for scripts)")
args = parser.parse_args()

viewer = napari.Viewer()
if args.paths:
    for path in args.paths:
        viewer.open(path, plugin="napari-fusionmamba")
else:
    viewer.open_sample("napari-fusionmamba", "gfp_phase")
viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Fuse layers")
print("layers:", ", ".join(layer.name for layer in viewer.layers))
if args.no_block:
    viewer.close()
else:
    napari.run()
