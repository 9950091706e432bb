"""What fuses the tiles, built once per process: a network (a model name, a checkpoint path or
an in-memory module) or a classical method.

``choose_engine`` checks the choice in the caller's process, so a bad name fails before any
output is written; ``predictor`` builds (and caches) the batch predictor in whichever process
runs the tiles, so each worker of a cluster loads a model once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from .sources import remember
from .tiling import Predictor

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Engine:
    """What fuses the tiles: a model (name or checkpoint path, or an in-memory module) or a
    classical method. Picklable; each process builds its predictor once (see ``predictor``)."""

    key: str
    model: str | None = None
    method: str | None = None
    module: Any = None
    device: str = "auto"


#: Networks loaded in this process, by (engine key, device): each process loads a model once.
_PREDICTORS: dict[tuple[str, str], tuple[Predictor, int]] = {}


def _load_network(name: str, device: torch.device) -> Any:
    """The network for a model name or checkpoint path, in eval mode on ``device``."""
    from ..registry import load_model

    try:
        return load_model(name, device)
    except InputError as error:  # unknown name, bad checkpoint
        raise InputError(f"model {name}: {error}") from None


def _model_key(name: str) -> str:
    """Identity of a model for caching and resuming: its name plus the weights file's state."""
    from ..registry import DEFAULT_MODEL, find_model

    name = DEFAULT_MODEL if name == "default" else name
    path = name if os.path.isfile(name) else None
    if path is None:
        try:
            entry = find_model(name)
        except InputError:
            return f"model:{name}"  # loading it will say what is wrong
        path = str(entry.path) if entry.path is not None else None
    if path is None:
        return f"model:{name}"
    stat = os.stat(path)
    return f"model:{name}:{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def choose_engine(model: Any, method: str | None, device: str) -> Engine:
    """Check the model / method / device choice in the caller's process (clear errors early)."""
    from ..model.devices import resolve_device
    from ..quality.baselines import BASELINES

    resolve_device(device)  # a device that is not there fails here, before any output
    if method is not None:
        if model is not None:
            raise InputError("give either a model or a method, not both")
        if method not in BASELINES:
            raise InputError(f"unknown method {method!r}: choose one of {', '.join(BASELINES)}")
        return Engine(key=f"method:{method}", method=method, device=device)
    if model is None or isinstance(model, (str, os.PathLike)):
        name = str(model) if model is not None else "default"
        engine = Engine(key=_model_key(name), model=name, device=device)
        predictor(engine)  # loads (and caches) it here, so a bad name fails before any output
        return engine
    return Engine(key=f"module:{_module_digest(model)}", module=model, device=device)


def describe_engine(model: Any = None, method: str | None = None) -> dict[str, Any]:
    """What ``model`` / ``method`` (as ``fuse`` takes them) fuse with, as stored with results: a
    method's name, or a model's name, version and parameter count (``registry.model_info``)."""
    if method is not None:
        return {"method": method}
    if model is None or isinstance(model, (str, os.PathLike)):
        from ..registry import model_info

        return model_info(model)
    from ..model import count_parameters

    return {"model": model.config.name, "version": _module_digest(model), "parameters": count_parameters(model)}


def _module_digest(model: Any) -> str:
    """The start of the SHA-256 of a module's tensors: its weights' identity."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def predictor(engine: Engine) -> tuple[Predictor, int]:
    """(predict(a_batch, b_batch) -> fused batch, tile multiple), built once per process."""
    cache_key = (engine.key, engine.device)
    if cache_key in _PREDICTORS:
        return _PREDICTORS[cache_key]
    if engine.method is not None:
        from ..quality.baselines import BASELINES

        method = BASELINES[engine.method]

        def run_method(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.stack([method(x, y) for x, y in zip(a, b)])

        return remember(_PREDICTORS, cache_key, (run_method, 1))

    import torch

    from ..model.devices import resolve_device

    device = resolve_device(engine.device)
    network = engine.module.eval().to(device) if engine.module is not None else _load_network(str(engine.model), device)

    def predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ta = torch.from_numpy(np.ascontiguousarray(a)).to(device)[:, None]
            tb = torch.from_numpy(np.ascontiguousarray(b)).to(device)[:, None]
            fused: np.ndarray = network(ta, tb)[:, 0].float().cpu().numpy()
            return fused

    return remember(_PREDICTORS, cache_key, (predict, int(network.stride)))
