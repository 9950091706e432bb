"""The napari plugin: the Fuse, Fine-tune and Evaluate widgets (``widgets``), the reader, the
OME-Zarr / OME-TIFF layer writers and the sample data, named in ``napari.yaml``.

The only package that imports napari, magicgui or Qt. Its widgets call the same public
functions as the CLI (``engine``, ``training``, ``quality``, ``registry``). napari imports the
manifest's entry points at start-up, so they import torch (and the engine) only inside the
functions that need it.
"""
