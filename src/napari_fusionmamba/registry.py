"""Checkpoints and the model registry.

A checkpoint is a safetensors file: the network's tensors plus JSON metadata (format version,
model config, training provenance, the normalisation its inputs had, the training step). Loading
parses the header itself before reading any tensor and never unpickles, so a PyTorch ``.pt`` /
pickle file, a truncated file or a config that does not match the tensors is refused with a
message naming the file.

Models are found by name in three places, first match wins:
- bundled: ``*.safetensors`` shipped in ``napari_fusionmamba/bundled_weights/`` (file stem = name);
- user: ``*.safetensors`` in ``models_dir()`` (fine-tuned models registered with ``register_model``);
- config: the untrained named configs of ``model.MODEL_CONFIGS``.

Imports ``model``, ``io.files`` (atomic writes) and ``errors``; torch and safetensors load inside
the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, InputError
from .io.files import atomic_path, not_regular

if TYPE_CHECKING:
    import torch

    from .model import FusionMamba, ModelConfig

FORMAT = "napari-fusionmamba"
FORMAT_VERSION = 1
# The model the widgets and the CLI use when none is named: the shipped weights (see
# docs/models/gfp-pc.md).
DEFAULT_MODEL = "gfp-pc"
BUNDLED_DIR = Path(__file__).parent / "bundled_weights"
HOME_ENV = "FUSIONMAMBA_HOME"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def data_dir() -> Path:
    """Where user models and training runs live: ``$FUSIONMAMBA_HOME`` or the platform's user
    data directory (never the current directory or site-packages)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-fusionmamba"))


def models_dir() -> Path:
    return data_dir() / "models"


# --- safetensors files --------------------------------------------------------------------------


def _valid_entry(entry: Any) -> bool:
    """Whether a header entry describes a tensor: a dtype, a shape and two byte offsets."""

    def ints(values: Any, n: int | None = None) -> bool:
        return (
            isinstance(values, list)
            and (n is None or len(values) == n)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
        )

    return (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and ints(entry.get("shape"))
        and ints(entry.get("data_offsets"), 2)
    )


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the file's layout and return (tensor index, metadata) without reading tensors."""
    refusal = not_regular(path)
    if refusal:
        raise CheckpointError(refusal)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)  # the header length (8 bytes), then the JSON header's "{"
        if head[8:9] != b"{":
            if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
                raise CheckpointError(
                    f"{path}: this is a PyTorch pickle (.pt / .pth) file; napari-fusionmamba loads only "
                    "safetensors checkpoints and never unpickles (pickles can run code)"
                )
            if len(head) < 9:
                raise CheckpointError(f"{path}: not a safetensors file (too short: {size} bytes)")
            raise CheckpointError(f"{path}: not a safetensors file (no JSON header)")
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: truncated safetensors file (header says {header_len} bytes, file has {size})"
            )
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header: {error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(_valid_entry(entry) for entry in header.values()):
        raise CheckpointError(f"{path}: not a safetensors file (malformed tensor index in its header)")
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(f"{path}: truncated file ({size} bytes, the tensors need {8 + header_len + end})")
    return header, metadata


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write tensors with JSON-encoded metadata atomically: a crash or a cancel never leaves a
    half-written file under ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    encoded = {key: json.dumps(value) for key, value in metadata.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=encoded)
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on the CPU) and decoded metadata of a file written by ``write_safetensors``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _, raw = _read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except (SafetensorError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
    return tensors, metadata


# --- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: FusionMamba,
    *,
    provenance: dict[str, Any] | None = None,
    normalisation: dict[str, Any] | None = None,
    step: int | None = None,
) -> Path:
    """Save ``model`` (a FusionMamba) with its config and how it was made."""
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "provenance": provenance or {},
        "normalisation": normalisation or {},
        "step": step,
    }
    return write_safetensors(path, model.state_dict(), metadata)


def _check_metadata(path: Path, metadata: dict[str, Any]) -> None:
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without napari-fusionmamba metadata (no model config)")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this napari-fusionmamba "
            f"understands ({FORMAT_VERSION}); update the package"
        )


#: Checkpoints whose config asks for more parameters than this are refused unread (the
#: ``paper`` config has 137 million: about 550 MB of float32).
MAX_PARAMETERS = 300_000_000


def _checked_config(path: Path, config: Any) -> ModelConfig:
    """The checkpoint's model config, after checking its values and counting its parameters on
    the meta device (nothing allocated), so a config claiming a huge network is refused before
    any tensor is read or built."""
    import torch

    from .model import FusionMamba, ModelConfig, count_parameters

    try:
        checked = ModelConfig.from_dict(config)
        with torch.device("meta"):
            count = count_parameters(FusionMamba(checked))
    except (TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: invalid model config ({error})") from None
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path}: its config asks for a network of {count:,} parameters, more than the {MAX_PARAMETERS:,} "
            f"napari-fusionmamba loads; this is not a checkpoint it wrote, or a damaged one"
        )
    return checked


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[FusionMamba, dict[str, Any]]:
    """(model in eval mode on the CPU, metadata) from a checkpoint file."""
    from .model import FusionMamba

    path = Path(path)
    _, raw = _read_header(path)
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except (TypeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({error})") from None
    _check_metadata(path, metadata)
    config = _checked_config(path, metadata["config"])
    tensors, _ = read_safetensors(path)
    model = FusionMamba(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        detail = str(error).replace("\n", " ").replace("\t", "")
        raise CheckpointError(
            f"{path}: the tensors do not match the stored config {config.name!r}: {detail[:400]}"
        ) from None
    return model.eval(), metadata


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One model the user can pick by name."""

    name: str
    source: str  # "bundled", "user" or "config"
    path: Path | None = None

    def parameter_count(self) -> int:
        """Counted from the file's header, or from the config built on the meta device: nothing
        is allocated, so even the ``paper`` config counts in a moment."""
        if self.path is not None:
            header, _ = _read_header(self.path)
            count = 0
            for entry in header.values():
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                count += n
            return count
        import torch

        from .model import MODEL_CONFIGS, FusionMamba, count_parameters

        with torch.device("meta"):
            return count_parameters(FusionMamba(MODEL_CONFIGS[self.name]))

    def config_name(self) -> str:
        if self.path is None:
            return self.name
        _, metadata = _read_header(self.path)
        try:
            return str(json.loads(metadata["config"])["name"])
        except (KeyError, TypeError, json.JSONDecodeError):
            return "?"

    def summary(self) -> str:
        default = " (default)" if self.name == DEFAULT_MODEL else ""
        kind = {"config": "untrained config", "bundled": "bundled weights", "user": "user model"}[self.source]
        where = f"  {self.path}" if self.path is not None else ""
        return (
            f"{self.name + default:<22} {kind:<17} config {self.config_name():<11} "
            f"{self.parameter_count():>12,} parameters{where}"
        )


def list_models() -> list[ModelEntry]:
    """Every model available by name, the default first. Cheap: lists files and config names."""
    from .model import MODEL_CONFIGS

    entries: dict[str, ModelEntry] = {}
    for source, folder in (("bundled", BUNDLED_DIR), ("user", models_dir())):
        if folder.is_dir():
            for path in sorted(folder.glob("*.safetensors")):
                entries.setdefault(path.stem, ModelEntry(path.stem, source, path))
    for name in MODEL_CONFIGS:
        entries.setdefault(name, ModelEntry(name, "config"))
    ordered = sorted(entries.values(), key=lambda e: e.name != DEFAULT_MODEL)
    return ordered


def find_model(name: str) -> ModelEntry:
    for entry in list_models():
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in list_models())
    raise InputError(f"unknown model {name!r}: choose one of {names}, or give a .safetensors path")


def model_info(name_or_path: str | os.PathLike[str] | None = "default") -> dict[str, Any]:
    """Name, version and parameter count of a model, kept with every result it fuses so a fused
    image says what made it. The version is the start of the weights file's SHA-256 (an untrained
    config has none: "untrained"). Reads the file, builds no network."""
    if name_or_path in (None, "default"):
        name_or_path = DEFAULT_MODEL
    if _looks_like_path(name_or_path):
        entry = ModelEntry(Path(name_or_path).stem, "user", Path(name_or_path))
    else:
        entry = find_model(str(name_or_path))
    version = "untrained"
    if entry.path is not None:
        version = "sha256:" + hashlib.sha256(entry.path.read_bytes()).hexdigest()[:12]
    return {"model": entry.name, "version": version, "parameters": entry.parameter_count()}


def _looks_like_path(name_or_path: str | os.PathLike[str]) -> bool:
    if isinstance(name_or_path, Path):
        return True
    text = str(name_or_path)
    return text.endswith((".safetensors", ".pt", ".pth", ".ckpt")) or os.sep in text or Path(text).is_file()


def load_model(name_or_path: str | os.PathLike[str] = "default", device: str | torch.device = "cpu") -> FusionMamba:
    """A FusionMamba in eval mode on ``device``, from a model name (see ``list_models``), a
    checkpoint path, or "default"."""
    from .model import build_model
    from .model.devices import resolve_device

    if name_or_path in (None, "default"):
        name_or_path = DEFAULT_MODEL
    if _looks_like_path(name_or_path):
        model, _ = load_checkpoint(name_or_path)
    else:
        entry = find_model(str(name_or_path))
        if entry.path is None:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # an untrained config is the same network in every process
                model = build_model(entry.name)
        else:
            model = load_checkpoint(entry.path)[0]
    return model.to(resolve_device(device)).eval()


def check_model_name(name: str) -> None:
    """A user model name must be a plain file name and not shadow a shipped model."""
    from .model import MODEL_CONFIGS

    if not _NAME.match(name):
        raise InputError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    if name in MODEL_CONFIGS or name == "default" or (BUNDLED_DIR / f"{name}.safetensors").exists():
        raise InputError(f"model name {name!r} is taken by a shipped model; choose another name")


def register_model(path: str | Path, name: str, overwrite: bool = False) -> ModelEntry:
    """Copy a checkpoint into the user models folder under ``name`` so every widget and the CLI
    can pick it by name. The file is checked first (it must load)."""
    path = Path(path)
    check_model_name(name)
    load_checkpoint(path)
    target = models_dir() / f"{name}.safetensors"
    if target.exists() and not overwrite:
        raise InputError(f"a user model named {name!r} exists ({target}); choose another name or overwrite it")
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return ModelEntry(name, "user", target)
