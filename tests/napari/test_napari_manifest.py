"""The npe2 manifest is valid and its entry points import quickly (no torch at napari start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    return env


def test_npe2_validate_with_imports():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-fusionmamba", "--imports"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_entry_points_do_not_import_torch():
    code = (
        "import sys\n"
        "from npe2 import PluginManifest\n"
        "manifest = PluginManifest.from_distribution('napari-fusionmamba')\n"
        "for command in manifest.contributions.commands:\n"
        "    module = command.python_name.split(':')[0]\n"
        "    __import__(module)\n"
        "print(len(manifest.contributions.commands), 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    count, torch_loaded = result.stdout.split()
    assert int(count) >= 5 and torch_loaded == "False"


def test_manifest_lists_widget_reader_writers_and_sample():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-fusionmamba")
    contributions = manifest.contributions
    assert "Fuse layers" in [widget.display_name for widget in contributions.widgets]
    assert {"*.tif", "*.tiff", "*.zarr"} <= set(contributions.readers[0].filename_patterns)
    assert {ext for writer in contributions.writers for ext in writer.filename_extensions} >= {".ome.zarr", ".ome.tif"}
    assert [sample.key for sample in contributions.sample_data] == ["gfp_phase", "neurons"]
