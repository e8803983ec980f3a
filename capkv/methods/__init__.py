"""Registry of eviction methods: built-in ones and plug-ins from the `capkv.methods` entry-point group."""

from __future__ import annotations

import dataclasses
import difflib
from importlib.metadata import entry_points

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.capkv import CapKV
from capkv.methods.full import FullCache
from capkv.methods.snapkv import SnapKV
from capkv.methods.streaming_llm import StreamingLLM

ENTRY_POINT_GROUP = "capkv.methods"

_BUILTIN: dict[str, type[EvictionMethod]] = {
    cls.name: cls for cls in (FullCache, StreamingLLM, SnapKV, CapKV)
}


def method_classes() -> dict[str, type[EvictionMethod]]:
    """Return every known method class by name, built-ins first, then entry-point plug-ins."""
    classes = dict(_BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in classes:
            continue
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, EvictionMethod)):
            raise MethodError(
                f"entry point {entry.name!r} in group {ENTRY_POINT_GROUP!r} is {cls!r}, not an EvictionMethod subclass"
            )
        classes[entry.name] = cls
    return classes


def list_methods() -> list[str]:
    return sorted(method_classes())


def build_method(name: str, **params) -> EvictionMethod:
    """Instantiate a method by name; unknown names or parameters raise MethodError."""
    classes = method_classes()
    if name not in classes:
        hint = difflib.get_close_matches(name, classes, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise MethodError(f"unknown method {name!r}{suggestion}; known: {', '.join(sorted(classes))}")
    cls = classes[name]
    accepted = [spec.name for spec in dataclasses.fields(cls)]
    for key in params:
        if key not in accepted:
            raise MethodError(
                f"unknown parameter {key!r} for method {name!r}; accepted: {', '.join(accepted) or 'none'}"
            )
    return cls(**params)


def method_parameters(name: str) -> dict[str, object]:
    """Return the parameters of a method with their defaults."""
    cls = method_classes()[name]
    return {spec.name: spec.default for spec in dataclasses.fields(cls)}


__all__ = [
    "ENTRY_POINT_GROUP",
    "EvictionMethod",
    "LayerInputs",
    "MethodError",
    "build_method",
    "list_methods",
    "method_classes",
    "method_parameters",
]
