"""bioimage.io model packages, driven through the command line: ``fusionmamba export`` writes a
package that bioimageio.core's own model test passes offline, and ``fusionmamba import`` takes
it back by its safetensors checkpoint alone, refusing anything else."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile

import numpy as np
import pytest

from napari_fusionmamba.cli import main
from napari_fusionmamba.registry import BUNDLED_DIR, find_model, load_model

pytest.importorskip("bioimageio.core")

MODEL = "gfp-pc"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every HTTP request fails: export, validation, the model test and import run offline."""
    import httpx

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(httpx, "request", refuse)
    monkeypatch.setattr(httpx, "stream", refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The bundled model exported once by the command line."""
    import httpx

    out = tmp_path_factory.mktemp("zoo") / f"{MODEL}.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.Client, "send", lambda *a, **k: pytest.fail("network access during export"))
        assert main(["export", MODEL, str(out)]) == 0
    return out


def _rdf(package):
    from napari_fusionmamba.zoo import load_package

    return load_package(package)


@pytest.mark.slow
def test_the_exported_package_passes_the_bioimageio_model_test_offline(package):
    from bioimageio.core import test_model

    summary = test_model(_rdf(package))
    tested = [detail.name for detail in summary.details]
    assert summary.status == "passed", summary.format()
    for weights in ("torchscript", "pytorch_state_dict"):
        assert any(f"Reproduce test outputs from test inputs ({weights})" in name for name in tested)


def test_the_package_describes_two_sources_one_fused_output_and_its_provenance(package):
    rdf = _rdf(package)
    assert rdf.validation_summary.status == "valid-format" and rdf.format_version.startswith("0.5")
    assert [str(t.id) for t in rdf.inputs] == ["a", "b"] and [str(t.id) for t in rdf.outputs] == ["fused"]
    for tensor in rdf.inputs:
        assert [str(axis.id) for axis in tensor.axes] == ["batch", "channel", "y", "x"]
        scale, clip = (step for step in tensor.preprocessing if step.id != "ensure_dtype")
        assert scale.id == "scale_range" and (scale.kwargs.min_percentile, scale.kwargs.max_percentile) == (0.1, 99.9)
        assert clip.id == "clip" and (clip.kwargs.min, clip.kwargs.max) == (0, 1)
    assert rdf.inputs[0].axes[2].size.step == 32  # sizes are multiples of the network's stride
    assert rdf.weights.torchscript is not None and rdf.weights.pytorch_state_dict is not None
    assert "10.48550/arXiv.2404.09498" in [str(c.doi) for c in rdf.cite]
    assert any("napari-fusionmamba" in c.text for c in rdf.cite)
    assert str(rdf.license) == "BSD-3-Clause" and rdf.covers and rdf.documentation and rdf.training_data
    with zipfile.ZipFile(package) as archive:
        card = archive.read("README.md").decode()
        names = set(archive.namelist())
    assert "## Validation" in card and f"`{MODEL}`" in card
    assert {"a.npy", "b.npy", "fused.npy", "cover.png", f"{MODEL}.safetensors"} <= names


def test_test_tensors_are_the_neuron_sample_and_its_fusion_by_this_package(package):
    from napari_fusionmamba import fuse
    from napari_fusionmamba.io.samples import load_neurons

    with zipfile.ZipFile(package) as archive:
        a, b, fused = (np.load(io.BytesIO(archive.read(f"{name}.npy"))) for name in ("a", "b", "fused"))
    assert a.shape == b.shape == fused.shape == (1, 1, 256, 256)
    neurons = load_neurons()
    assert np.isin(a, neurons["MAP2"]).all() and np.isin(b, neurons["phase"][1]).all()
    ours = fuse(a[0, 0], b[0, 0], model=MODEL, tile=256, overlap=0)
    assert np.abs(ours - fused[0, 0]).max() < 1e-5


@pytest.mark.slow
def test_torchscript_weights_equal_the_eager_network_at_other_sizes(package):
    import torch

    with zipfile.ZipFile(package) as archive:
        scripted = torch.jit.load(io.BytesIO(archive.read("weights_torchscript.pt")))
    network = load_model(MODEL)
    generator = torch.Generator().manual_seed(1)
    for shape in ((1, 1, 64, 96), (2, 1, 128, 128)):
        a, b = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(scripted(a, b), network(a, b), rtol=0, atol=1e-5)


def test_import_registers_the_exported_checkpoint_without_unpickling(package, monkeypatch, capsys):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("import unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert main(["import", str(package), "--name", "shared-gfp"]) == 0
    assert "registered as model 'shared-gfp'" in capsys.readouterr().out
    entry = find_model("shared-gfp")
    assert entry.source == "user"
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest(entry.path) == digest(BUNDLED_DIR / f"{MODEL}.safetensors")


def _rezip(source, target, replace):
    """A copy of a package with some members' bytes replaced (``replace``: name -> bytes function)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            new.writestr(item, replace.get(item.filename, lambda d: d)(data))
    return target


@pytest.mark.slow
def test_import_refuses_what_export_did_not_write(package, tmp_path, capsys):
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("hello.txt", "a zip, but no model package")
    foreign = _rezip(
        package, tmp_path / "foreign.zip", {"rdf.yaml": lambda d: d.replace(b"napari_fusionmamba:", b"someone_else:")}
    )
    tampered = _rezip(package, tmp_path / "tampered.zip", {f"{MODEL}.safetensors": lambda d: d[:-8] + b"\0" * 8})
    cases = {
        text: "notes.zip: not a bioimage.io model package (not a zip file)",
        other: "other.zip: not a valid bioimage.io package",
        foreign: "foreign.zip: a bioimage.io package not exported by napari-fusionmamba",
        tampered: "tampered.zip: not a valid bioimage.io package",
        tmp_path / "gone.zip": "gone.zip: no such model package",
    }
    for path, message in cases.items():
        assert main(["import", str(path), "--name", "x-model"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err
    with pytest.raises(Exception, match="unknown model"):
        find_model("x-model")
