"""The fusion engine: whole images in memory (``fuse``) and files too large for memory, chunk by
chunk (``fuse_files``), on threads, processes or a dask cluster, resumable.

Owns tiling (grid, window, batching, out-of-memory fallback: ``tiling``), sources and their
normalisation (``sources``), the network or classical method per process (``predictors``), one
fusion job (``job``), chunk execution (``execute``), resume records (``resume``), chunk digests
and ``verify_output`` (``verify``), the file pipeline (``files``), folders of pairs (``batch``)
and ``FuseOptions``. Imports ``io``, ``quality.baselines``, ``registry``, ``model`` (lazily,
with torch) and ``errors``; never ``training``, ``napari`` or ``cli``.
"""

from .batch import FolderReport, PairResult, fuse_folder
from .files import FuseReport, fuse_files
from .job import fuse
from .options import FuseOptions
from .predictors import describe_engine
from .verify import VerifyReport, verify_output

__all__ = [
    "FolderReport",
    "FuseOptions",
    "FuseReport",
    "PairResult",
    "VerifyReport",
    "describe_engine",
    "fuse",
    "fuse_files",
    "fuse_folder",
    "verify_output",
]
