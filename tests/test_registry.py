"""Checkpoints: safetensors round trip, refusal of every bad file with its name, the registry of
bundled / user / config models, and `fusionmamba info --models`."""

import json
import pickle
import struct

import pytest
import torch

from napari_fusionmamba import registry
from napari_fusionmamba.cli import main
from napari_fusionmamba.errors import CheckpointError
from napari_fusionmamba.model import MODEL_CONFIGS, ModelConfig, build_model, count_parameters
from napari_fusionmamba.registry import (
    DEFAULT_MODEL,
    list_models,
    load_checkpoint,
    load_model,
    register_model,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 1, 40, 56, generator=g), torch.rand(1, 1, 40, 56, generator=g)


def test_round_trip_gives_identical_outputs_and_keeps_metadata(tmp_path, tiny):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        tiny,
        provenance={"data": ["x.tif"]},
        normalisation={"percentiles": [1, 99.5]},
        step=7,
    )
    loaded, meta = load_checkpoint(path)
    a, b = _inputs()
    with torch.no_grad():
        assert torch.equal(tiny(a, b), loaded(a, b))
    assert not loaded.training
    assert meta["format_version"] == registry.FORMAT_VERSION
    assert ModelConfig.from_dict(meta["config"]) == tiny.config
    assert meta["provenance"] == {"data": ["x.tif"]}
    assert meta["normalisation"] == {"percentiles": [1, 99.5]}
    assert meta["step"] == 7
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it


def test_pickle_files_are_refused_without_unpickling(tmp_path, tiny):
    pt = tmp_path / "model.pt"
    torch.save(tiny.state_dict(), pt)
    with pytest.raises(CheckpointError, match=r"model\.pt.*pickle.*never unpickles"):
        load_checkpoint(pt)
    raw = tmp_path / "raw.safetensors"  # a bare pickle, whatever its name
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"raw\.safetensors.*pickle"):
        load_checkpoint(raw)


def test_truncated_file_is_refused(tmp_path, tiny):
    path = save_checkpoint(tmp_path / "cut.safetensors", tiny)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated"):
        load_checkpoint(path)
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*too short"):
        load_checkpoint(path)


def test_a_header_length_that_starts_like_a_pickle_still_loads(tmp_path, tiny):
    # A safetensors file starts with its header length, little-endian: when its low byte is 0x80
    # (pickle's first byte) the file is still a checkpoint. A real run hit this.
    for padding in range(256):
        path = save_checkpoint(tmp_path / "odd.safetensors", tiny, provenance={"note": "x" * padding})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    model, _ = load_checkpoint(path)
    a, b = _inputs()
    with torch.no_grad():
        assert torch.equal(model(a, b), tiny(a, b))


def _rewrite_metadata(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n :])


def test_config_not_matching_tensors_is_refused(tmp_path, tiny):
    path = save_checkpoint(tmp_path / "mismatch.safetensors", tiny)
    _rewrite_metadata(path, lambda m: m.update(config=json.dumps(MODEL_CONFIGS["small"].to_dict())))
    with pytest.raises(CheckpointError, match=r"mismatch\.safetensors.*do not match.*'small'"):
        load_checkpoint(path)
    _rewrite_metadata(path, lambda m: m.update(config=json.dumps({"embed_dim": 16, "colour": 3})))
    with pytest.raises(CheckpointError, match=r"mismatch\.safetensors.*invalid model config"):
        load_checkpoint(path)


def test_foreign_or_newer_safetensors_are_refused(tmp_path, tiny):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors.*without napari-fusionmamba metadata"):
        load_checkpoint(foreign)
    newer = save_checkpoint(tmp_path / "newer.safetensors", tiny)
    _rewrite_metadata(newer, lambda m: m.update(format_version="99"))
    with pytest.raises(CheckpointError, match=r"newer\.safetensors.*version 99.*newer"):
        load_checkpoint(newer)
    with pytest.raises(CheckpointError, match=r"absent\.safetensors.*no such"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, tiny, monkeypatch):
    path = save_checkpoint(tmp_path / "keep.safetensors", tiny, step=1)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


def test_registry_lists_configs_and_registered_models(tmp_path, tiny, home):
    entries = list_models()
    assert entries[0].name == DEFAULT_MODEL
    assert {e.name for e in entries if e.source == "config"} >= set(MODEL_CONFIGS)
    path = save_checkpoint(tmp_path / "run.safetensors", tiny, step=3)
    entry = register_model(path, "my-lab")
    assert entry.path == home / "models" / "my-lab.safetensors"
    listed = {e.name: e for e in list_models()}
    assert listed["my-lab"].source == "user"
    assert listed["my-lab"].parameter_count() == count_parameters(tiny)
    assert "my-lab" in listed["my-lab"].summary() and "tiny" in listed["my-lab"].summary()
    loaded = load_model("my-lab")
    a, b = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(a, b), tiny(a, b))
    assert torch.equal(next(load_model(path).parameters()), next(tiny.parameters()))
    with pytest.raises(ValueError, match="exists"):
        register_model(path, "my-lab")
    register_model(path, "my-lab", overwrite=True)
    with pytest.raises(ValueError, match="taken by a shipped model"):
        register_model(path, "tiny")
    with pytest.raises(ValueError, match="invalid model name"):
        register_model(path, "../escape")
    with pytest.raises(ValueError, match="unknown model 'nope'.*my-lab"):
        load_model("nope")
    bad = tmp_path / "bad.pt"
    torch.save({}, bad)
    with pytest.raises(CheckpointError, match="bad.pt"):
        register_model(bad, "bad")
    assert "bad" not in {e.name for e in list_models()}


def test_config_models_load_untrained_and_count_without_building(monkeypatch):
    model = load_model("tiny")
    assert model.config == MODEL_CONFIGS["tiny"] and not model.training
    torch.rand(3)  # the global random state does not change what an untrained config is
    assert torch.equal(next(load_model("tiny").parameters()), next(model.parameters()))
    entry = registry.find_model("tiny")
    assert entry.parameter_count() == count_parameters(model)


def test_the_default_model_is_the_shipped_trained_one():
    entry = list_models()[0]
    assert (entry.name, entry.source) == (DEFAULT_MODEL, "bundled")
    model = load_model("default")
    assert model.config.name == "tiny" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())  # stored as float16
    assert model.head.weight.abs().sum() > 0  # trained: not the zero head of a fresh network
    a, b = _inputs()
    with torch.no_grad():
        assert not torch.allclose(model(a, b), torch.maximum(a, b), atol=1e-3)


def test_bundled_weights_are_listed_by_file_name(tmp_path, tiny, monkeypatch):
    bundled = tmp_path / "bundled"
    save_checkpoint(bundled / "gfp-pc.safetensors", tiny)
    monkeypatch.setattr(registry, "BUNDLED_DIR", bundled)
    entry = registry.find_model("gfp-pc")
    assert entry.source == "bundled"
    with pytest.raises(ValueError, match="taken by a shipped model"):
        register_model(entry.path, "gfp-pc")


def test_info_models_prints_every_model_with_parameter_counts(capsys):
    scan = pytest.importorskip("napari_fusionmamba.model.scan")
    if not hasattr(scan, "describe_backends"):
        pytest.skip("the scan backends are not merged yet")
    assert main(["info", "--models"]) == 0
    out = capsys.readouterr().out
    for name in MODEL_CONFIGS:
        assert name in out
    assert f"{count_parameters(build_model('tiny')):,}" in out
