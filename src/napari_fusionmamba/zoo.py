"""BioImage Model Zoo (bioimage.io) model packages: export a model, import a package.

An exported package (format 0.5, written and validated by ``bioimageio.spec``) holds the network
twice, as the zoo's tools run it: TorchScript (traced; the scan inside stays compiled, see
``model.scan.selective_scan``) and a PyTorch state dict built by ``napari_fusionmamba.model``.
Beside them: test tensors from the shipped neuron sample and the output this package computes
for them, a cover, the model card, the licence, citations, the training data, and the model's
own safetensors checkpoint as an attachment. Importing reads only that attachment, after the
whole package has been validated: the state dict is a pickle by the zoo's convention and is never
unpickled here.

Validation reads every file of a package but requests no URL (the one citation URL is declared
known), so export and import work offline. Imports ``bioimageio.spec`` and torch inside
the functions (the ``bioimageio`` extra).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CheckpointError, InputError, UnavailableError
from .io.files import atomic_path
from .registry import ModelEntry, check_model_name, find_model, load_checkpoint, register_model

if TYPE_CHECKING:
    from bioimageio.spec import ValidationContext

#: Where the package's own metadata lives in a package's ``config``: its presence marks a package
#: this tool exported, and it names the checkpoint attachment that ``import_model`` registers.
CONFIG_KEY = "napari_fusionmamba"
PACKAGE_URL = "https://pypi.org/project/napari-fusionmamba/"
PAPER_DOI = "10.48550/arXiv.2404.09498"
#: Side of the test tensors: a centre crop of the neuron sample, a multiple of every stride.
TEST_SIDE = 256


def _spec() -> Any:
    try:
        import bioimageio.spec
    except ImportError:
        raise UnavailableError(
            "bioimage.io packages need bioimageio.spec: pip install 'napari-fusionmamba[bioimageio]'"
        ) from None
    return bioimageio.spec


@contextmanager
def _offline() -> Iterator[ValidationContext]:
    """A validation context in which bioimageio.spec checks every file but requests no URL (the
    citation URL is declared known)."""
    with _spec().ValidationContext(perform_io_checks=True, known_files={PACKAGE_URL: None}) as context:
        yield context


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide bioimageio.spec's warning about the file list it gathers before a package's root is
    known (it reports every file of a valid package; the validation that follows checks them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found mapping with 'source'", category=UserWarning)
        yield


def load_package(package: str | os.PathLike[str]) -> Any:
    """A package's description as bioimageio.spec validates it, offline: every file is read and
    checked against its SHA-256, no URL is requested. Pass it to ``bioimageio.core.test_model``
    to run the zoo's model test without a network."""
    with _quiet():
        return _spec().load_description(package, perform_io_checks=True, known_files={PACKAGE_URL: None})


def _checkpoint_of(model: str | os.PathLike[str]) -> tuple[str, Path]:
    """(name, checkpoint path) of a model name or a checkpoint path."""
    path = Path(model)
    if path.suffix == ".safetensors" or path.is_file():
        return path.stem, path
    entry = find_model(str(model))
    if entry.path is None:
        raise InputError(f"model {entry.name!r} is an untrained config: export a trained or fine-tuned model")
    return entry.name, entry.path


def _test_pair() -> tuple[np.ndarray, np.ndarray]:
    """MAP2 fluorescence (A) and the middle phase-contrast plane (B) of the neuron sample: a
    centre crop, as float32 (1, 1, Y, X) raw values."""
    from .io.samples import load_neurons

    images = load_neurons()
    a, b = images["MAP2"], images["phase"][images["phase"].shape[0] // 2]
    y0, x0 = ((side - TEST_SIDE) // 2 for side in a.shape)
    crop = lambda x: np.asarray(x[y0 : y0 + TEST_SIDE, x0 : x0 + TEST_SIDE], dtype=np.float32)[None, None]
    return crop(a), crop(b)


def _scaled(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
    """The package's preprocessing of a pair as torch tensors: each source scaled by its
    percentiles and clipped to [0, 1], as ``fuse`` does by default."""
    import torch

    from .engine.sources import as_source, normalisation_of

    scale = lambda x, name: torch.from_numpy(np.clip(normalisation_of(as_source(x[0, 0], name), "percentile")(x), 0, 1))
    return scale(a, "A"), scale(b, "B")


def _trace(network: Any, a: Any, b: Any, path: Path) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # The shape checks and the padding branch are fixed by the trace: the package declares
        # sizes that are multiples of the stride, for which they always take the same path.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network, (a, b), check_trace=False)
    traced.save(str(path))


def _cover(a: np.ndarray, b: np.ndarray, fused: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the two sources overlaid (A magenta over gray B) beside the fused image."""
    import imageio.v3 as iio

    def gray(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, (0.5, 99.8))
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)

    ga, gb, gf = gray(a[0, 0]), gray(b[0, 0]), gray(fused[0, 0])
    sources = np.stack([np.maximum(ga, gb * 0.7), gb * 0.7, np.maximum(ga, gb * 0.7)], axis=-1)
    fused_rgb = np.repeat(gf[..., None], 3, axis=-1)
    iio.imwrite(path, (np.concatenate([sources, fused_rgb], axis=1) * 255).astype(np.uint8))


def _stride(metadata: dict[str, Any]) -> int:
    from .model import ModelConfig

    return ModelConfig.from_dict(metadata["config"]).stride


def _card(name: str, metadata: dict[str, Any], shape: tuple[int, ...]) -> str:
    """The model card: what the model is, how it was made, and how the test output is checked."""
    from . import __version__

    config = metadata["config"]
    provenance = metadata.get("provenance") or {}
    settings = provenance.get("settings") or {}
    pairs = provenance.get("pairs")
    trained_on = settings.get("normalise", "percentile")
    note = (
        ""
        if trained_on == "percentile"
        else f"\n\nThis model was trained on `{trained_on}`-scaled inputs: for 8-bit data, napari-fusionmamba's "
        f"`fusionmamba fuse --normalise {trained_on}` reproduces the training conditions."
    )
    made = [
        f"- base: {provenance.get('base', 'unknown')}",
        f"- training pairs: {len(pairs) if isinstance(pairs, list) else 'unknown'}",
        f"- steps: {metadata.get('step')}",
        f"- objective: {settings.get('objective', 'unknown')}",
        f"- inputs in training: {trained_on} normalisation",
    ]
    return f"""# FusionMamba model `{name}`

Fuses two registered 2-D images of different modalities (for example a fluorescence channel and
phase contrast, CT / PET / SPECT with MRI, infrared with visible) into one image with the
FusionMamba network (Xie et al., arXiv 2404.09498), as trained with napari-fusionmamba
{__version__}.

## Inputs and output

- `a`: the functional image (fluorescence, CT / PET / SPECT, infrared), one channel;
- `b`: the structural image (phase contrast, MRI, visible), registered to `a`, same size;
- `fused`: one channel, float32 in [0, 1].

Each input is scaled by its own 0.1 and 99.9 percentiles (over Y and X) and clipped to [0, 1], as
`fusionmamba fuse` does by default. Y and X must be multiples of {_stride(metadata)} (pad larger images, or
let napari-fusionmamba tile them: `fusionmamba import` this package, then fuse in napari or
with `fusionmamba fuse --model NAME`, which tiles with blended overlaps).{note}

## Network

Config `{config["name"]}`: embed dim {config["embed_dim"]}, encoder depths {config["encoder_depths"]},
decoder depths {config["decoder_depths"]}, state size {config["d_state"]}, residual `{config["residual"]}`.

## Training

{chr(10).join(made)}

## Validation

The test tensors are a {shape[-2]} x {shape[-1]} crop of the neuron sample shipped with
napari-fusionmamba (MAP2 fluorescence as `a`, the middle phase-contrast plane as `b`,
google/in-silico-labeling, Apache-2.0); the test output is what napari-fusionmamba computes for
them. `bioimageio test` reproduces it from both weight formats. The fusion quality of the
shipped models is measured with paired tests against classical methods on held-out pairs (see
the napari-fusionmamba documentation, docs/quality.md and docs/models/).
"""


def _training_data(metadata: dict[str, Any]) -> Any:
    """The training pairs as the checkpoint's provenance records them. The pairs themselves are
    the trainer's data, not part of the package; their licence is theirs, so none is claimed."""
    from bioimageio.spec.dataset.v0_3 import DatasetDescr

    provenance = metadata.get("provenance") or {}
    pairs = provenance.get("pairs")
    settings = provenance.get("settings") or {}
    if isinstance(pairs, list):
        listed = (
            f"{len(pairs)} registered pairs: " + ", ".join(map(str, pairs[:10])) + (", ..." if len(pairs) > 10 else "")
        )
    else:
        listed = "pairs not recorded"
    return DatasetDescr(
        name="FusionMamba training pairs",
        description=f"The pairs this model was trained on ({listed}), starting from {provenance.get('base', '?')}, "
        f"{metadata.get('step')} steps of {settings.get('crop', '?')}-px crops, "
        f"recipe {provenance.get('recipe', 'none')}",
        tags=["image-fusion", "2d"],
    )


def _cite(spec: Any) -> list[Any]:
    from . import __version__

    v = spec.model.v0_5
    return [
        v.CiteEntry(
            text="Xie X. et al. FusionMamba: Dynamic Feature Enhancement for Multimodal Image Fusion with Mamba. "
            "arXiv 2404.09498 (2024)",
            doi=v.Doi(PAPER_DOI),
        ),
        v.CiteEntry(text=f"napari-fusionmamba {__version__}", url=PACKAGE_URL),
    ]


def _axes(v: Any, channel: str, size: Any) -> list[Any]:
    return [
        v.BatchAxis(),
        v.ChannelAxis(channel_names=[v.Identifier(channel)]),
        *(v.SpaceInputAxis(id=v.AxisId(axis), size=size(axis)) for axis in "yx"),
    ]


def _tensors(v: Any, stride: int, files: dict[str, Path]) -> tuple[list[Any], list[Any]]:
    """The input and output tensor descriptions: two sources of one size, one fused image."""
    from .engine.sources import PERCENTILES

    scale = v.ScaleRangeDescr(
        kwargs=v.ScaleRangeKwargs(
            axes=[v.AxisId("y"), v.AxisId("x")], min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1]
        )
    )
    clip = v.ClipDescr(kwargs=v.ClipKwargs(min=0.0, max=1.0))
    same = lambda axis: v.SizeReference(tensor_id=v.TensorId("a"), axis_id=v.AxisId(axis))
    inputs = [
        v.InputTensorDescr(
            id=v.TensorId("a"),
            description="functional image: fluorescence, CT / PET / SPECT or infrared",
            axes=_axes(v, "a", lambda axis: v.ParameterizedSize(min=stride, step=stride)),
            test_tensor=v.FileDescr(source=files["a"]),
            preprocessing=[scale, clip],
        ),
        v.InputTensorDescr(
            id=v.TensorId("b"),
            description="structural image registered to a: phase contrast, MRI or visible",
            axes=_axes(v, "b", same),
            test_tensor=v.FileDescr(source=files["b"]),
            preprocessing=[scale, clip],
        ),
    ]
    output = v.OutputTensorDescr(
        id=v.TensorId("fused"),
        description="the fused image in [0, 1]",
        axes=[
            v.BatchAxis(),
            v.ChannelAxis(channel_names=[v.Identifier("fused")]),
            *(v.SpaceOutputAxis(id=v.AxisId(axis), size=same(axis)) for axis in "yx"),
        ],
        test_tensor=v.FileDescr(source=files["fused"]),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return inputs, [output]


def _weights(v: Any, files: dict[str, Path], config: dict[str, Any]) -> Any:
    import torch

    torch_version = v.Version(torch.__version__.split("+")[0])
    return v.WeightsDescr(
        pytorch_state_dict=v.PytorchStateDictWeightsDescr(
            source=files["state_dict"],
            architecture=v.ArchitectureFromLibraryDescr(
                import_from="napari_fusionmamba.model", callable=v.Identifier("build_model"), kwargs={"config": config}
            ),
            pytorch_version=torch_version,
            dependencies=v.FileDescr(source=files["environment"]),
        ),
        torchscript=v.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict"
        ),
    )


def _write_files(folder: Path, name: str, checkpoint: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every file of the package, written into ``folder``; also the checkpoint's metadata."""
    import torch

    from . import __version__

    network, metadata = load_checkpoint(checkpoint)
    a, b = _test_pair()
    scaled = _scaled(a, b)
    with torch.no_grad():
        fused = network(*scaled).numpy()
    files = {key: folder / f"{key}.npy" for key in ("a", "b", "fused")}
    for key, array in zip(files, (a, b, fused)):
        np.save(files[key], array)
    files["torchscript"] = folder / "weights_torchscript.pt"
    _trace(network, *scaled, files["torchscript"])
    files["state_dict"] = folder / "weights_state_dict.pt"
    torch.save(network.state_dict(), files["state_dict"])
    files["checkpoint"] = folder / f"{name}.safetensors"
    shutil.copyfile(checkpoint, files["checkpoint"])
    files["cover"] = folder / "cover.png"
    _cover(a, b, fused, files["cover"])
    files["card"] = folder / "README.md"
    files["card"].write_text(_card(name, metadata, a.shape))
    files["environment"] = folder / "environment.yaml"
    files["environment"].write_text(
        "name: napari-fusionmamba\nchannels: [conda-forge, nodefaults]\ndependencies:\n"
        f"  - python>=3.10\n  - pip\n  - pip:\n      - napari-fusionmamba=={__version__}\n"
    )
    return files, metadata


def _describe(name: str, checkpoint: Path, folder: Path) -> Any:
    """The ``ModelDescr`` of a checkpoint, its files written into ``folder``."""
    spec = _spec()
    v = spec.model.v0_5
    files, metadata = _write_files(folder, name, checkpoint)
    inputs, outputs = _tensors(v, _stride(metadata), files)
    title = "".join(c if c.isalnum() or c in "_+- ()" else "-" for c in f"FusionMamba {name}")
    return v.ModelDescr(
        name=title,
        description="Multimodal image fusion (fluorescence + phase contrast, CT/PET/SPECT + MRI, IR + visible) "
        "with the FusionMamba network",
        authors=[v.Author(name="napari-fusionmamba developers")],
        cite=_cite(spec),
        license=v.LicenseId("BSD-3-Clause"),
        documentation=v.FileDescr(source=files["card"]),
        covers=[v.FileDescr(source=files["cover"])],
        tags=["image-fusion", "fluorescence-light-microscopy", "phase-contrast", "2d", "pytorch", "mamba"],
        inputs=inputs,
        outputs=outputs,
        weights=_weights(v, files, metadata["config"]),
        attachments=[v.FileDescr(source=files["checkpoint"])],
        training_data=_training_data(metadata),
        config=v.Config(**{CONFIG_KEY: {"model": name, "checkpoint": files["checkpoint"].name}}),
    )


def export_model(model: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write a model (a name or a checkpoint path) as a bioimage.io model package ``out`` (.zip),
    validated by bioimageio.spec before it is moved into place."""
    spec = _spec()
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"{out}: a bioimage.io model package is a .zip file")
    name, checkpoint = _checkpoint_of(model)
    with tempfile.TemporaryDirectory() as tmp, _offline():
        folder = Path(tmp) / "package"
        descr = _describe(name, checkpoint, Path(tmp))
        with _quiet():
            spec.save_bioimageio_package_as_folder(descr, output_path=folder)
        with atomic_path(out) as target:
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(folder.iterdir()):
                    archive.write(file, file.name)
            written = load_package(target)
            if written.validation_summary.status != "valid-format":  # a bug here, not the user's
                raise RuntimeError(
                    f"{out}: the package written is not valid: {_first_error(written.validation_summary)}"
                )
    return out


def _first_error(summary: Any) -> str:
    """The first validation error of a summary, on one line."""
    for detail in summary.details:
        for error in detail.errors:
            loc = ".".join(str(part) for part in error.loc)
            message = " ".join(str(error.msg).split())
            return f"{loc}: {message}" if loc else message
    return str(summary.status)


def import_model(package: str | os.PathLike[str], name: str | None = None, overwrite: bool = False) -> ModelEntry:
    """Register the model of a package exported by ``export_model`` (validated first) under
    ``name`` (default: the name it was exported with). Only the package's safetensors
    checkpoint is read; its pickled state dict never is."""
    package = Path(package)
    if not package.is_file():
        raise InputError(f"{package}: no such model package")
    if not zipfile.is_zipfile(package):
        raise CheckpointError(f"{package}: not a bioimage.io model package (not a zip file)")
    try:
        descr = load_package(package)
    except (ValueError, OSError, zipfile.BadZipFile) as error:  # no rdf.yaml, an unreadable member
        raise CheckpointError(f"{package}: not a valid bioimage.io package ({' '.join(str(error).split())})") from None
    if descr.validation_summary.status not in ("valid-format", "passed"):
        raise CheckpointError(f"{package}: not a valid bioimage.io package ({_first_error(descr.validation_summary)})")
    ours = (descr.config.model_extra or {}).get(CONFIG_KEY) if descr.type == "model" else None
    if not isinstance(ours, dict) or not isinstance(ours.get("checkpoint"), str):
        raise CheckpointError(
            f"{package}: a bioimage.io package not exported by napari-fusionmamba (no {CONFIG_KEY} config); "
            "only packages written by `fusionmamba export` can be imported"
        )
    if name is None:
        name = str(ours.get("model", ""))
        try:
            check_model_name(name)
        except InputError as error:
            raise InputError(f"{package}: {error} to import it under") from None
    check_model_name(name)
    attachment = next((a for a in descr.attachments if a.get_reader().original_file_name == ours["checkpoint"]), None)
    if attachment is None or not ours["checkpoint"].endswith(".safetensors"):
        raise CheckpointError(f"{package}: its checkpoint {ours['checkpoint']!r} is not a safetensors attachment")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / ours["checkpoint"]
        checkpoint.write_bytes(attachment.get_reader().read())
        return register_model(checkpoint, name, overwrite=overwrite)
