"""Checkpoint files that are broken or lie about the network: refused with one line naming the
file, before anything large is built or read."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys

import pytest
import tifffile
import torch

from napari_fusionmamba.model import build_model
from napari_fusionmamba.registry import save_checkpoint

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
#: Address space of the CLI in these tests: the tiny network fits, a 5 GB one does not.
MEMORY_LIMIT = 3 << 30


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", build_model("tiny"))


def _with_config(source, target, change):
    """A copy of the checkpoint ``source`` whose JSON config is changed by ``change``."""
    data = source.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    config = json.loads(header["__metadata__"]["config"])
    change(config)
    header["__metadata__"]["config"] = json.dumps(config)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    target.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n :])
    return target


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess whose memory is capped, so building a huge network fails loudly."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "napari_fusionmamba.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=cap, timeout=300)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(embed_dim=1536), "embed_dim must be an integer in [1, 1024]"),
        (lambda c: c.update(embed_dim=512), "parameters"),
        (lambda c: c.update(embed_dim=16, encoder_depths=[1, 1, 100000, 1]), "encoder_depths"),
        (lambda c: c.update(d_state=-3), "d_state"),
        (lambda c: c.update(expand=True), "expand"),
    ],
)
def test_a_config_claiming_a_huge_or_impossible_network_is_refused_before_building(
    tmp_path, pair, tiny_checkpoint, change, message
):
    huge = _with_config(tiny_checkpoint, tmp_path / "huge.safetensors", change)
    tifffile.imwrite(tmp_path / "a.tif", pair[0])
    tifffile.imwrite(tmp_path / "b.tif", pair[1])
    out = tmp_path / "out.zarr"
    done = _cli("fuse", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", str(out), "--model", str(huge))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-2000:]
    assert last.startswith("fusionmamba fuse: error:") and "huge.safetensors" in last and message in last
    assert not out.exists() and not os.path.exists(f"{out}.fusionmamba-partial")


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "F32", "shape": [2]}},  # no data_offsets
        {"w": [1, 2]},
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": "x"}},
    ],
)
def test_a_malformed_safetensors_header_is_one_line_naming_the_file(tmp_path, capsys, pair, header):
    from napari_fusionmamba.cli import main

    path = tmp_path / "bad.safetensors"
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    tifffile.imwrite(tmp_path / "a.tif", pair[0])
    tifffile.imwrite(tmp_path / "b.tif", pair[1])
    sources = [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    assert main(["fuse", *sources, "-o", str(tmp_path / "o.zarr"), "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.safetensors" in err and "not a safetensors file" in err, err


def test_one_unreadable_model_file_is_skipped_by_info_models(home, tiny_checkpoint, capsys):
    from napari_fusionmamba.cli import main

    models = home / "models"
    models.mkdir(parents=True)
    (models / "good.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    (models / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    assert main(["info", "--models"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "tiny" in out
    warning = [line for line in out.splitlines() if "broken.safetensors" in line]
    assert len(warning) == 1 and "skipped" in warning[0]
