"""kvpress presses as capkv methods: `kvpress:<press>` runs a press from kvpress on our prefilled cache.

After our prefill, each full-attention layer's keys and values go through the press's own
`compress(module, hidden_states, keys, values, attentions=None, kwargs)`, exactly as kvpress's
forward hook would call it at the end of its prefill. Presses that shrink the cache give shorter
layers. Presses that only mask (Ada-KV style `module.masked_key_indices`) become ragged layers, so
the masked tokens are really dropped and the bytes reported are what is stored.

Importing kvpress (0.5.5) wraps every function in transformers' `ALL_ATTENTION_FUNCTIONS` with its
head-masking patch. `import_kvpress` imports it and removes those wrappers again, so our other
methods and the model's attention run unpatched. Masked presses do not need the patch here,
because their masks become ragged storage.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.rope import rotary_cos_sin

# capkv's engine cannot drive presses that work inside the model's forward pass (they override
# `forward_hook` or `__call__`), nor presses that re-rotate keys to compressed positions.
_FORWARD_PASS_METHODS = ("forward_hook", "__call__")
_POSITION_CHANGING = ("KeyRerotationPress",)


def import_kvpress():
    """Import kvpress and take its attention patch back out of transformers; return the module."""
    import kvpress

    remove_kvpress_attention_patch()
    return kvpress


def remove_kvpress_attention_patch() -> int:
    """Remove kvpress's wrappers from transformers' attention functions; return how many were removed."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    patched = [
        key for key, function in local.items() if getattr(function, "__module__", "") == "kvpress.attention_patch"
    ]
    for key in patched:
        del local[key]  # the unpatched function is still in the class-wide mapping
    return len(patched)


def _normalise(name: str) -> str:
    key = name.lower().replace("_", "").replace("-", "")
    return key[: -len("press")] if key.endswith("press") else key


def _file_name(module_name: str) -> str:
    """Return the press name a kvpress module's file gives: `snapkv` for `snapkv_press.py`, else the file's stem."""
    stem = module_name.rsplit(".", 1)[-1]
    return stem[: -len("_press")] if stem.endswith("_press") else stem


def list_kvpress_presses() -> list[str]:
    """Press names as kvpress's file names give them (`snapkv`, `streaming_llm`, ...), without importing it."""
    spec = importlib.util.find_spec("kvpress")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "presses"
    stems = [path.stem for path in folder.glob("*.py") if path.stem not in ("__init__", "base_press", "scorer_press")]
    return sorted(_file_name(stem) for stem in stems)


def _press_classes() -> dict[str, type]:
    kvpress = import_kvpress()
    classes = {}
    for attribute in kvpress.__all__:
        candidate = getattr(kvpress, attribute)
        if isinstance(candidate, type) and issubclass(candidate, kvpress.BasePress) and attribute.endswith("Press"):
            classes[_normalise(attribute)] = candidate
    return classes


def resolve_press(name: str) -> type:
    """Return the kvpress class for `name`, matched without case, underscores or a `Press` suffix.

    A class name matches first (`CriticalAdaKV`), then a file name (`leverage` for LeverageScorePress).
    """
    classes = _press_classes()
    press_class = classes.get(_normalise(name))
    if press_class is None:
        in_file = [cls for cls in classes.values() if _normalise(cls.__module__.rsplit(".", 1)[-1]) == _normalise(name)]
        press_class = in_file[0] if len(in_file) == 1 else None
    if press_class is None:
        raise MethodError(f"unknown kvpress press {name!r}; known: {', '.join(list_kvpress_presses())}")
    return press_class


_method_classes: dict[type, type] = {}


def kvpress_method_class(name: str) -> type:
    """Return the capkv method class wrapping press `name`; its fields are the press's parameters."""
    press_class = resolve_press(name)
    if press_class not in _method_classes:
        _method_classes[press_class] = _make_method_class(press_class)
    return _method_classes[press_class]


def _is_press_type(annotation) -> bool:
    return "Press" in str(annotation)


class _PressParameter(typing.NamedTuple):
    name: str
    annotation: object
    default: object = dataclasses.MISSING
    default_factory: object = dataclasses.MISSING


def _press_parameters(press_class: type) -> list[_PressParameter]:
    """Return the parameters a press is constructed with, from its dataclass fields or its own `__init__`.

    Most presses are dataclasses. A press that writes its own `__init__` without being a dataclass
    itself (CriticalKVPress) inherits its parent's fields, which are not what it accepts, so its
    parameters come from that `__init__`'s signature.
    """
    own = vars(press_class)
    if "__init__" in own and "__dataclass_fields__" not in own:
        hints = typing.get_type_hints(press_class.__init__)
        parameters = []
        for name, parameter in list(inspect.signature(press_class.__init__).parameters.items())[1:]:
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                continue  # *args and **kwargs name no parameter
            default = dataclasses.MISSING if parameter.default is parameter.empty else parameter.default
            parameters.append(_PressParameter(name, hints.get(name, object), default))
        return parameters
    hints = typing.get_type_hints(press_class)
    return [_PressParameter(spec.name, hints.get(spec.name, object), spec.default, spec.default_factory)
            for spec in dataclasses.fields(press_class) if spec.init]


def _make_method_class(press_class: type) -> type:
    fields, required_presses = [], []
    for spec in _press_parameters(press_class):
        if spec.name == "compression_ratio" or spec.name.startswith("_"):
            continue
        annotation = spec.annotation
        if _is_press_type(annotation):
            # A press name, built with its defaults; None keeps the press's own default when it has one.
            has_factory = spec.default_factory is not dataclasses.MISSING
            has_default = has_factory or spec.default not in (None, dataclasses.MISSING)
            if not has_default:
                required_presses.append(spec.name)
            fields.append((spec.name, object, dataclasses.field(default=None)))
            continue
        field_type = annotation if annotation in (int, float, str, bool) else object
        if spec.default is None:
            field_type = object  # kvpress annotates some optional parameters as plain int/float
        if spec.default_factory is not dataclasses.MISSING:
            fields.append((spec.name, field_type, dataclasses.field(default_factory=spec.default_factory)))
        elif spec.default is not dataclasses.MISSING:
            fields.append((spec.name, field_type, dataclasses.field(default=spec.default)))
        else:
            fields.append((spec.name, object, dataclasses.field(default=None)))
    key = _normalise(press_class.__name__)
    file_stem = _file_name(press_class.__module__)
    canonical = file_stem if _normalise(file_stem) == key or resolve_press(file_stem) is press_class else key
    namespace = {
        "name": f"kvpress:{canonical}",
        "press_class": press_class,
        "required_presses": tuple(required_presses),
    }
    cls = dataclasses.make_dataclass(
        f"KVPress{press_class.__name__}", fields, bases=(KVPressMethod,), namespace=namespace
    )
    cls.__doc__ = f"kvpress's {press_class.__name__} run through capkv's engine. {KVPressMethod.__doc__}"
    return cls


def build_kvpress_method(name: str, params: dict) -> EvictionMethod:
    """Instantiate `kvpress:<name>` with press parameters; unknown parameters raise MethodError."""
    cls = kvpress_method_class(name)
    accepted = [spec.name for spec in dataclasses.fields(cls)]
    for key in params:
        if key not in accepted:
            raise MethodError(
                f"unknown parameter {key!r} for method {cls.name!r}; accepted: {', '.join(accepted) or 'none'}"
            )
    return cls(**params)


@dataclass
class KVPressMethod(EvictionMethod):
    """The press compresses each full-attention layer once after the prefill; its parameters are
    the press's own, and the budget sets its compression_ratio."""

    press_class: ClassVar[type] = object
    required_presses: ClassVar[tuple[str, ...]] = ()  # press-valued parameters without a default
    needs_hidden_states = True
    custom_compression = True

    def validate(self) -> None:
        press_class = self.press_class
        for method_name in _FORWARD_PASS_METHODS:
            if getattr(press_class, method_name) is not getattr(import_kvpress().BasePress, method_name):
                raise MethodError(
                    f"{self.name} ({press_class.__name__}) works inside the model's forward pass (it overrides "
                    f"{method_name}); capkv runs presses after the prefill, so run it with kvpress's pipeline"
                )
        if press_class.__name__ in _POSITION_CHANGING:
            raise MethodError(f"{self.name} re-rotates keys to their compressed positions, but capkv decodes at "
                              "true positions; use the wrapped press directly")
        self.build_press(0.0)

    def build_press(self, compression_ratio: float):
        """Construct the press with this method's parameters and, where it can be set, `compression_ratio`."""
        annotations = {spec.name: spec.annotation for spec in _press_parameters(self.press_class)}
        kwargs = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value is None and spec.name in self.required_presses:
                raise MethodError(
                    f"{self.name} needs {spec.name}=<kvpress press name>, for example {spec.name}='snapkv'"
                )
            if value is None:
                continue
            if isinstance(value, str) and _is_press_type(annotations.get(spec.name)):
                value = resolve_press(value)()
            kwargs[spec.name] = value
        try:
            press = self.press_class(**kwargs)
        except (AssertionError, TypeError, ValueError) as error:
            raise MethodError(f"invalid parameters for {self.name}: {type(error).__name__}: {error}") from error
        try:
            press.compression_ratio = compression_ratio
        except AttributeError:
            # NOTE: presses with their own ratio (ThinK, SimLayerKV, DuoAttention) ignore the budget;
            # the kept tokens and bytes reported are what the press really left.
            pass
        return press

    def score(self, layer: LayerInputs) -> torch.Tensor:
        raise MethodError(f"{self.name} compresses through the press's own compress(); it has no scores to wrap")

    def compress_layer(
        self, model, layer: LayerInputs, budget: int, cache
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run the press on one layer; return (keys, values, keep_mask) where keep_mask is set for masking presses."""
        seq_len = layer.seq_len
        ratio = (seq_len - budget - 0.5) / seq_len  # int(seq_len · (1 − ratio)) == budget, free of float error
        press = self.build_press(ratio)
        module = layer.module
        hidden_states = layer.capture.hidden_states
        positions = torch.arange(seq_len, device=hidden_states.device)
        cos, sin = rotary_cos_sin(layer.rotary_emb, module, positions, hidden_states.dtype)
        kwargs = {
            "hidden_states": hidden_states,
            "past_key_values": cache,
            "cache_position": positions,
            "position_ids": positions[None],
            "position_embeddings": (cos[None], sin[None]),
            "attention_mask": None,
        }
        added_rotary = not hasattr(module, "rotary_emb")
        if added_rotary:
            module.rotary_emb = layer.rotary_emb  # presses read the rotary embedding from the attention module
        try:
            press.post_init_from_model(model)
            keys, values = press.compress(module, hidden_states, layer.keys, layer.values, None, kwargs)
            masked = getattr(module, "masked_key_indices", None)
        except (AssertionError, RuntimeError, ValueError, NotImplementedError, KeyError, OSError) as error:
            failure = f"{type(error).__name__}: {error}"
            raise MethodError(f"{self.name} failed on layer {layer.layer_idx}: {failure}") from error
        finally:
            if added_rotary:
                del module.rotary_emb
            if hasattr(module, "masked_key_indices"):
                del module.masked_key_indices

        if masked is None:
            return keys, values, None
        keep_mask = torch.ones(keys.shape[:3], dtype=torch.bool, device=keys.device)
        keep_mask[masked[0].to(keys.device), masked[1].to(keys.device), masked[2].to(keys.device)] = False
        return keys, values, keep_mask


def recover_indices(original: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Positions in `original` (batch, heads, seq_len, d) of the rows of `kept` (batch, heads, n, d); -1 if absent.

    Rows are matched through a random projection, then checked for exact equality, so keys a
    press has modified (merged, zeroed) come back as -1.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    direction = torch.randn(original.shape[-1], generator=generator, dtype=torch.float64).to(original.device)
    original_key = (original.double() * direction).sum(dim=-1)  # (batch, heads, seq_len)
    kept_key = (kept.double() * direction).sum(dim=-1)  # (batch, heads, n)
    order = original_key.argsort(dim=-1)
    sorted_key = original_key.gather(-1, order)
    slot = torch.searchsorted(sorted_key, kept_key).clamp(max=original.shape[2] - 1)
    candidates = order.gather(-1, slot)
    rows = original.gather(2, candidates[..., None].expand(-1, -1, -1, original.shape[-1]))
    found = (rows == kept).all(dim=-1)
    return torch.where(found, candidates, torch.full_like(candidates, -1))
