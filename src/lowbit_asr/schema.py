"""Turning plain config mappings (dicts, OmegaConf nodes) into the typed config dataclasses.

The model, data and training schemas share this one rule: unknown keys are an error that
names the key and lists the allowed ones; the dataclass's own ``__post_init__`` validates values.
(``lowbit_asr.quant`` keeps its own copy: it imports nothing from the rest of the package.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def coerce(value: Any, cls: type[T], name: str) -> T:
    """A mapping becomes ``cls(**mapping)``; an instance of ``cls`` stays as it is.

    Raises ``ValueError`` naming ``name`` for unknown fields (a field the class lists in a
    ``MOVED_FIELDS`` mapping is named with where it went), ``TypeError`` for other types.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - known)
        # A key that moved elsewhere (even if the class still has a field of that name, set by
        # code rather than by config) is named with where it went.
        moved = getattr(cls, "MOVED_FIELDS", {})
        if set(value) & set(moved):
            raise ValueError("; ".join(f"{name}.{key} is now {moved[key]}"
                                       for key in sorted(value) if key in moved))
        if unknown:
            raise ValueError(f"{name}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{str(k): v for k, v in value.items()})
    raise TypeError(f"{name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")
