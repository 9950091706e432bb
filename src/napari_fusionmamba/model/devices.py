"""Which torch device runs the network: one place for "auto" and for clear errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError, UnavailableError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices present on this machine, best first ("cpu" is always last)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda[:N]" / "mps" into a ``torch.device``.

    "auto" picks the best device present; naming a device that is not there is an error
    (never a silent fall-back to the CPU).
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise InputError(f"unknown device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if kind not in available_devices():
        raise UnavailableError(
            f"device {device!r} is not available on this machine "
            f"(available: {', '.join(available_devices())}); use --device auto or cpu"
        )
    return torch.device(name)
