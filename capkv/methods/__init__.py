"""Registry of eviction methods: built-in ones and plug-ins from the `capkv.methods` entry-point group."""

from __future__ import annotations

import dataclasses
import difflib
from importlib.metadata import entry_points

from capkv.methods.adakv import AdaKV
from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.capkv import CapKV
from capkv.methods.capkv_greedy import CapKVGreedy
from capkv.methods.expected_attention import ExpectedAttention
from capkv.methods.full import FullCache
from capkv.methods.h2o import H2O
from capkv.methods.keydiff import KeyDiff
from capkv.methods.knorm import KNorm
from capkv.methods.pyramidkv import PyramidKV
from capkv.methods.random_eviction import RandomEviction
from capkv.methods.snapkv import SnapKV
from capkv.methods.streaming_llm import StreamingLLM
from capkv.methods.tova import TOVA

ENTRY_POINT_GROUP = "capkv.methods"
KVPRESS_PREFIX = "kvpress:"

_BUILTIN: dict[str, type[EvictionMethod]] = {
    cls.name: cls
    for cls in (
        FullCache, RandomEviction, StreamingLLM, H2O, SnapKV, PyramidKV, AdaKV, TOVA, KNorm, KeyDiff,
        ExpectedAttention, CapKV, CapKVGreedy,
    )
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
    """Instantiate a method by name; unknown names or parameters raise MethodError.

    Names `kvpress:<press>` run a kvpress press through this engine (see `capkv.methods.kvpress_presses`).
    """
    if name.startswith(KVPRESS_PREFIX):
        from capkv.methods.kvpress_presses import build_kvpress_method

        return build_kvpress_method(name[len(KVPRESS_PREFIX) :], params)
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
    if name.startswith(KVPRESS_PREFIX):
        from capkv.methods.kvpress_presses import kvpress_method_class

        cls = kvpress_method_class(name[len(KVPRESS_PREFIX) :])
    else:
        cls = method_classes()[name]
    return {
        spec.name: spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        for spec in dataclasses.fields(cls)
    }


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
