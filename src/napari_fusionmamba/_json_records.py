"""Dataclasses read back from the JSON they were saved as (checkpoint configs, run settings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def from_json(cls: type[T], values: Mapping[str, Any], what: str, error: type[Exception] = InputError) -> T:
    """``cls(**values)``, where unknown keys are an ``error`` that names them and the lists
    JSON produced become the tuples the dataclass holds."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})
