"""scripts/napari_walkthrough.py, the pictures of docs/napari.md, runs headless as its docstring
says, and every picture it writes is one docs/napari.md shows, small."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_walkthrough_script_draws_every_picture_the_napari_page_shows(tmp_path):
    command = [sys.executable, "scripts/napari_walkthrough.py", "--model", "method:average", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Fuse folder: fused 2, skipped 0, failed 1" in done.stdout + done.stderr
    drawn = sorted(path.name for path in tmp_path.glob("walk_*.png"))
    shown = sorted(set(re.findall(r"images/(walk_\w+\.png)", (ROOT / "docs" / "napari.md").read_text())))
    assert drawn == shown and len(drawn) == 7
    for name in drawn:
        assert (tmp_path / name).stat().st_size < 300_000
        assert (ROOT / "docs" / "images" / name).stat().st_size < 300_000
