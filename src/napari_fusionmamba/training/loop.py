"""The training loop: ``finetune(pairs, settings, out)`` checks everything first
(``PreflightError``), then trains with AdamW, a linear warm-up and a cosine decay, gradient
clipping and mixed precision on CUDA. A cancel or Ctrl-C saves ``last`` and ``resume=True``
continues from it with the same step count and learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FusionMambaError, InputError, PreflightError, TrainingDiverged
from ..io.locks import exclusive
from .data import CropSampler, Pair, _PairData, prepare_pairs, validation_crops
from .objectives import make_objective
from .runs import RunLog, default_run_dir, load_state, pair_record, pairs_from_config, read_log, save_state
from .settings import StepInfo, TrainResult, TrainSettings, check_settings, learning_rate

if TYPE_CHECKING:
    import torch


def finetune(
    pairs: list[Pair] | None,
    settings: TrainSettings | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> TrainResult:
    """Train on ``pairs`` into the run folder ``out`` (default: a new folder under the user data
    dir). ``cancel``: a callable or ``threading.Event``; when it becomes true (or on Ctrl-C) the
    current state is saved as ``last`` and the run stops. ``resume=True`` continues the run in
    ``out`` with its saved settings (only ``device`` may change); ``pairs`` may then be None when
    the run was trained on files."""
    run_dir = Path(out) if out is not None else default_run_dir()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(run_dir, "this run folder"):
        settings, pairs = _open_run(run_dir, pairs, settings, resume)
        check_settings(settings)
        device = _device(settings)
        data = prepare_pairs(pairs, settings)
        trainer = _Trainer.start_run(run_dir, settings, device, data, pairs if not resume else None)
        is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel or (lambda: False)
        with _sigterm_as_ctrl_c():
            return trainer.run(on_step, is_cancelled)


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop) saves the run as Ctrl-C does; only the main
    thread may set signal handlers, so runs in other threads (the widget's) keep the default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _open_run(
    run_dir: Path, pairs: list[Pair] | None, settings: TrainSettings | None, resume: bool
) -> tuple[TrainSettings, list[Pair]]:
    """The settings and pairs of a new run, or of the stopped run in ``run_dir`` (whose saved
    settings win, but for the device)."""
    if not resume:
        if (run_dir / "last.safetensors").exists():
            raise PreflightError(f"{run_dir}: this folder already holds a run; resume it or choose a new folder")
        return settings or TrainSettings(), pairs or []
    config_path = run_dir / "config.json"
    if not (run_dir / "last.safetensors").exists() or not config_path.exists():
        raise PreflightError(f"{run_dir}: no run to resume (last.safetensors and config.json are missing)")
    saved = json.loads(config_path.read_text())
    device = settings.device if settings is not None else saved["settings"]["device"]
    resumed = TrainSettings.from_dict({**saved["settings"], "device": device})
    return resumed, pairs if pairs is not None else pairs_from_config(run_dir)


def _device(settings: TrainSettings) -> torch.device:
    from ..model.devices import resolve_device

    try:
        return resolve_device(settings.device)
    except FusionMambaError as error:
        raise PreflightError(str(error)) from None


def _build_model(settings: TrainSettings) -> Any:
    """The network training starts from: a named or saved model, or an untrained config, with
    the residual the settings ask for. A trained model given a new residual keeps its features
    and starts its head at zero, so it starts at exactly that residual."""
    from torch import nn

    from ..model import build_model
    from ..registry import load_model

    try:
        model = build_model(settings.config) if settings.base == "scratch" else load_model(settings.base)
    except InputError as error:
        raise PreflightError(str(error) if settings.base == "scratch" else f"base model: {error}") from None
    if settings.residual not in (None, model.config.residual):
        model.config = dataclasses.replace(model.config, residual=settings.residual)
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)  # type: ignore[arg-type]  # a Conv2d made with bias=True has one
    return model


@dataclass
class _Trainer:
    """One run in progress: the model, its optimizer and objective, the data and the run folder."""

    run_dir: Path
    settings: TrainSettings
    device: torch.device
    model: Any
    optimizer: Any
    rng: np.random.Generator
    start: int
    best_val: float
    data: list[_PairData]

    @classmethod
    def start_run(
        cls,
        run_dir: Path,
        settings: TrainSettings,
        device: torch.device,
        data: list[_PairData],
        pairs: list[Pair] | None,
    ) -> _Trainer:
        """A new run (``pairs`` given: its config.json is written) or the stopped one resumed."""
        import torch

        from ..registry import load_checkpoint

        if pairs is None:
            model, metadata = load_checkpoint(run_dir / "last.safetensors")
        else:
            torch.manual_seed(settings.seed)  # an untrained base config is initialised from it
            model = _build_model(settings)
        model = model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        rng = np.random.default_rng(settings.seed)
        start, best_val = 0, math.inf
        if pairs is None:
            start, best_val, rng_state, with_weights = load_state(run_dir, model, optimizer)
            if start != metadata.get("step") and not with_weights:
                raise PreflightError(f"{run_dir}: last.safetensors and last.state.safetensors are from different steps")
            rng.bit_generator.state = rng_state
        else:
            _write_config(run_dir, settings, pairs, model)
        return cls(run_dir, settings, device, model, optimizer, rng, start, best_val, data)

    def __post_init__(self) -> None:
        import torch

        settings = self.settings
        self.objective = make_objective(settings)
        self.sampler = CropSampler(self.data, settings.crop, self.rng, settings.intensity_jitter)
        *val_arrays, self.val_origins = validation_crops(self.data, settings.crop)
        self.val = [torch.from_numpy(x).to(self.device) for x in val_arrays]
        self.use_amp = settings.amp and self.device.type == "cuda"
        self.saved_step, self.saved_at = self.start, time.monotonic()
        self.provenance = _provenance(settings, self.data)
        self.normalisation = (
            {"method": "percentiles", "percentiles": list(settings.percentiles), "colour": "Y of YCrCb (BT.601)"}
            if settings.normalise == "percentile"
            else {"method": settings.normalise, "colour": "Y of YCrCb (BT.601)"}
        )

    def save(self, name: str, step: int) -> Path:
        from ..registry import save_checkpoint

        return save_checkpoint(
            self.run_dir / name, self.model, provenance=self.provenance, normalisation=self.normalisation, step=step
        )

    def loss(
        self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        import torch

        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            fused = self.model(a, b).float()
        total, terms = self.objective(fused, a, b, w)
        return total, terms, fused

    def validate(self) -> tuple[dict[str, float], np.ndarray]:
        """Mean objective terms over the validation crops, and the first crop fused (a preview)."""
        import torch

        self.model.eval()
        sums: dict[str, float] = {}
        count, preview = 0, None
        batch = self.settings.batch
        with torch.no_grad():
            for i in range(0, len(self.val[0]), batch):
                a, b, w = (t[i : i + batch] for t in self.val)
                total, terms, fused = self.loss(a, b, w)
                if preview is None:
                    preview = fused[0, 0].cpu().numpy()
                for key, value in {"loss": total, **terms}.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(a)
                count += len(a)
        self.model.train()
        assert preview is not None  # validation_crops never returns none
        return {k: v / count for k, v in sums.items()}, preview

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step at ``step`` (from 0); returns its log row."""
        import torch

        settings = self.settings
        lr = learning_rate(step, settings)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        a, b, w, _ = self.sampler.sample(settings.batch)
        ta, tb, tw = (torch.from_numpy(x).to(self.device) for x in (a, b, w))
        total, terms, _ = self.loss(ta, tb, tw)
        if not torch.isfinite(total):
            raise TrainingDiverged(
                f"{self.run_dir}: the loss became {total.item()} at step {step + 1} (training diverged); the run "
                f"stopped before that step changed the weights; start a new run with a lower learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        if settings.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.clip)
        self.optimizer.step()
        return {"step": step + 1, "lr": lr, "loss": total.item(), **{k: v.item() for k, v in terms.items()}}

    def run(self, on_step: Callable[[StepInfo], None] | None, is_cancelled: Callable[[], bool]) -> TrainResult:
        """Train until ``settings.steps`` or a cancel; ``last`` and ``best`` are saved however it ends."""
        settings, run_dir = self.settings, self.run_dir
        history = read_log(run_dir / "log.csv", self.start) if self.start else []
        log = RunLog(run_dir / "log.csv", history, self._terms(history))
        began = time.perf_counter() - (float(history[-1]["seconds"]) if history else 0.0)
        step, cancelled = self.start, False
        try:
            while step < settings.steps:
                if is_cancelled():
                    cancelled = True
                    break
                row = self.train_step(step)
                step += 1
                info = StepInfo(
                    step, settings.steps, row["lr"], {k: v for k, v in row.items() if k not in ("step", "lr")}
                )
                if step % settings.val_every == 0 or step == settings.steps:
                    self._validate_into(row, info, step)
                row["seconds"] = info.elapsed = time.perf_counter() - began
                history.append(row)
                log.write(row, flush=step % settings.log_every == 0)
                if self._checkpoint_due(step):
                    log.flush()
                    self._save_last(step)
                if on_step is not None:
                    on_step(info)
        except KeyboardInterrupt:
            cancelled = True
            raise
        finally:
            log.close()
            self._save_at_end(step)
        return TrainResult(
            run_dir, step, run_dir / "last.safetensors", run_dir / "best.safetensors", self.best_val, cancelled, history
        )

    def _terms(self, history: list[dict[str, float]]) -> list[str]:
        """The objective's term names: from the earlier rows of a resumed run, or one evaluation."""
        if history:
            return [k for k in history[0] if k not in ("step", "lr", "loss", "seconds") and not k.startswith("val_")]
        import torch

        with torch.no_grad():
            a, b, w = (t[:1] for t in self.val)
            return list(self.objective(a, a, b, w)[1])

    def _validate_into(self, row: dict[str, float], info: StepInfo, step: int) -> None:
        info.val_terms, info.preview = self.validate()
        info.preview_origin = self.val_origins[0]
        row.update({f"val_{k}": v for k, v in info.val_terms.items()})
        if info.val_terms["loss"] < self.best_val:
            self.best_val = info.val_terms["loss"]
            self.save("best.safetensors", step)

    def _checkpoint_due(self, step: int) -> bool:
        """Whether ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes`` have passed
        since the last save."""
        settings = self.settings
        minutes = (time.monotonic() - self.saved_at) / 60
        return step - self.saved_step >= settings.checkpoint_every_steps or minutes >= settings.checkpoint_every_minutes

    def _save_last(self, step: int) -> None:
        """The resume state (weights included) first, then ``last``: each file is written
        atomically, and a kill between the two still resumes from the state."""
        save_state(self.run_dir, self.model, self.optimizer, step, self.best_val, self.rng)
        self.save("last.safetensors", step)
        self.saved_step, self.saved_at = step, time.monotonic()

    def _save_at_end(self, step: int) -> None:
        run_dir = self.run_dir
        if step > self.saved_step or not (run_dir / "last.state.safetensors").exists():
            self._save_last(step)
        if not (run_dir / "best.safetensors").exists():
            self.save("best.safetensors", step)


def _write_config(run_dir: Path, settings: TrainSettings, pairs: list[Pair], model: Any) -> None:
    from .. import __version__

    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": settings.to_dict(),
        "pairs": [pair_record(p) for p in pairs],
        "model_config": model.config.to_dict(),
        "package_version": __version__,
    }
    (run_dir / "config.json").write_text(json.dumps(record, indent=2))


def _provenance(settings: TrainSettings, data: list[_PairData]) -> dict[str, Any]:
    from .. import __version__

    return {
        "base": settings.base if settings.base != "scratch" else f"scratch ({settings.config})",
        "pairs": [d.name for d in data],
        "settings": settings.to_dict(),
        "package_version": __version__,
    }
