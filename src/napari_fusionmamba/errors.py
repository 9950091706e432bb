"""Errors a user can fix: the CLI and the widgets catch these (and only these), so anything
else surfaces as the bug it is.

Each message names what is wrong and how to put it right. The input errors keep ``ValueError``
as a second base so that code written against the earlier ``ValueError`` contract still works.
This module imports nothing from the package: every other module may import it.
"""

from __future__ import annotations


class FusionMambaError(Exception):
    """Base of every user-facing error of napari-fusionmamba."""


class InputError(FusionMambaError, ValueError):
    """A bad argument or unusable data, named in the message; raised before anything is written."""


class ImageReadError(InputError):
    """A source that is unreadable, corrupt or of an unsupported kind."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """A source path that does not exist."""


class CheckpointError(InputError):
    """A weights file that is not a napari-fusionmamba safetensors checkpoint, or a broken one."""


class PreflightError(InputError):
    """A problem with the training input, found before any training step runs."""


class UnavailableError(InputError, RuntimeError):
    """A device or scan backend that this machine does not have."""


class TrainingDiverged(FusionMambaError):
    """The training loss became NaN or infinite: the run stops before the step that would spoil
    the weights, and its model is not registered."""


class FusionCancelled(FusionMambaError):
    """The user stopped the job (a cancel callback returned True)."""
