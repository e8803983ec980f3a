"""KV-cache eviction library: prefill with query capture, per-head compression, decode at true positions.

Depends on torch and transformers only, so it can be imported without the rest of capkv-eval.
The names below load their modules on first use, so `import capkv.methods`, which a config
check needs, loads torch but not transformers.
"""

import importlib
import sys
import types

_SOURCES = {
    "CompressedCache": "capkv.engine",
    "DecodeEviction": "capkv.decode_eviction",
    "Generation": "capkv.engine",
    "LayerCapture": "capkv.capture",
    "Prefill": "capkv.engine",
    "Sampling": "capkv.decoding",
    "build_method": "capkv.methods",
    "cache_bytes": "capkv.memory",
    "capacity": "capkv.capacity",
    "capture_queries": "capkv.capture",
    "compress": "capkv.engine",
    "generate": "capkv.engine",
    "list_methods": "capkv.methods",
    "prefill": "capkv.engine",
    "prefill_options": "capkv.engine",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'capkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


class _Package(types.ModuleType):
    """Module type of this package that keeps `capkv.capacity` the function.

    Importing a submodule binds it on its package, which would otherwise replace the function.
    """

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _SOURCES:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
