"""``free_path``: an output that must not replace an earlier result gets the next free name."""

from __future__ import annotations

from napari_fusionmamba.io.files import free_path


def test_free_path_numbers_after_the_stem_and_keeps_every_suffix(tmp_path):
    out = tmp_path / "cells.ome.zarr"
    assert free_path(out) == out
    out.mkdir()
    assert free_path(out) == tmp_path / "cells-2.ome.zarr"
    (tmp_path / "cells-2.ome.zarr").mkdir()
    assert free_path(out) == tmp_path / "cells-3.ome.zarr"
    (tmp_path / "plain").write_text("")
    assert free_path(tmp_path / "plain") == tmp_path / "plain-2"
