"""The typed run configuration: the CLI's YAML file and the Prefect deployment's parameter schema."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from benchmarks import BenchmarkError, build_benchmark, list_benchmarks
from capkv.methods import MethodError, build_method
from workers.models import ModelError, model_revision

PositiveInt = Annotated[int, Field(strict=True, gt=0)]


def _choices(names_function):
    """JSON-schema hook that lists the accepted names, so the Prefect UI renders a choice list."""

    def add_enum(schema: dict) -> None:
        schema["enum"] = list(names_function())

    return add_enum


def _also_by_name(names_function):
    """JSON-schema hook: a spec may also be its bare name, as the YAML file and the `_from_name` validators allow.

    Without it the deployment's schema rejects `methods: ["full"]` before pydantic validates it.
    """

    def add_string_form(schema: dict) -> None:
        object_form = {key: value for key, value in schema.items() if key not in ("title", "description")}
        for key in list(object_form):
            del schema[key]
        schema["anyOf"] = [{"type": "string", "enum": list(names_function())}, object_form]

    return add_string_form


def _method_names() -> list[str]:
    from capkv.methods import list_methods
    from capkv.methods.kvpress_presses import list_kvpress_presses

    return list_methods() + [f"kvpress:{name}" for name in list_kvpress_presses()]


def _model_names() -> list[str]:
    from workers.models import BUNDLED_MODELS

    return sorted(BUNDLED_MODELS)


# The default matrix: every method that ships with capkv, at its default parameters.
BUILT_IN_METHODS = (
    "full", "streaming_llm", "snapkv", "capkv", "capkv-greedy", "random", "h2o", "pyramidkv", "adakv", "tova",
    "knorm", "keydiff", "expected_attention",
)


class ConfigError(ValueError):
    """A run configuration that cannot be run; the message is one line."""


class MethodSpec(BaseModel):
    """A method, its fixed parameters, and parameters to sweep (one cell per combination).

    Example: {name: capkv, params: {mode: paper}, sweep: {tau: [0, 1, 5, 10]}}.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_also_by_name(_method_names))
    name: Annotated[str, Field(json_schema_extra=_choices(_method_names))]
    params: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)

    def settings(self) -> list[dict[str, Any]]:
        """Return every parameter combination: the fixed params updated with one value per swept key."""
        combinations = [dict(self.params)]
        for key, values in self.sweep.items():
            combinations = [{**combo, key: value} for combo in combinations for value in values]
        return combinations

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self):
        for params in self.settings():
            build_method(self.name, **params)  # raises MethodError naming the bad value
        return self


class BenchmarkSpec(BaseModel):
    """A benchmark, how many samples to take, and its parameters."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_also_by_name(list_benchmarks))
    name: Annotated[str, Field(json_schema_extra=_choices(list_benchmarks))]
    num_samples: PositiveInt = 10
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self):
        build_benchmark(self.name, **self.params)
        # The benchmark reads the file on the Ray actor, after the model loads. Checking the path
        # here stops the run sooner.
        data_path = self.params.get("data_path")
        if isinstance(data_path, str) and not Path(data_path).exists():
            raise ConfigError(
                f"data_path {data_path!r} of benchmark {self.name!r} not found; "
                "give the path of a local JSONL or Parquet file in the benchmark's format"
            )
        return self


class RunConfig(BaseModel):
    """Everything that defines a run: the matrix, the protocol, where results go."""

    model_config = ConfigDict(extra="forbid")

    # The form offers the bundled models; the CLI and the API also take a local folder or a hub id.
    models: list[Annotated[str, Field(json_schema_extra={"examples": ["smollm2-135m", "qwen2.5-coder-0.5b"]})]] = Field(
        default_factory=lambda: ["smollm2-135m"], min_length=1
    )
    methods: list[MethodSpec] = Field(default_factory=lambda: [MethodSpec(name=name) for name in BUILT_IN_METHODS],
                                      min_length=1)
    budgets: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512])
    # Compression ratios: the share of the context evicted, floor(T * (1 - ratio)) tokens kept.
    ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=list)
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="needle", num_samples=10)], min_length=1
    )
    query_aware: bool = True
    chat_template: bool = True
    seed: int = 0
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    max_new_tokens: PositiveInt | None = None
    # When the cache is cut: "prefill" compresses the prompt's cache once; "decode" also keeps it at
    # the budget while generating. None runs each benchmark in its own phase: decode for benchmarks
    # that declare decode-time eviction (aime), prefill for the others.
    phases: Annotated[list[Literal["prefill", "decode"]], Field(min_length=1)] | None = None
    # Generated tokens between two decode-time cuts; None takes the benchmark's setting, else 32.
    decode_interval: PositiveInt | None = None
    # Decode equal-shaped compressed caches of one sample in one batch where that gives identical
    # tokens (float32 and bfloat16 on CPU); see capkv.batched.
    batch_decode: bool = True
    chunk_size: PositiveInt = 2
    num_actors: PositiveInt = 1
    chunk_retries: Annotated[int, Field(ge=0, le=10)] = 1  # Prefect retries of a failed (model, benchmark, chunk)
    store: str = "results"
    dashboard: str | None = None
    label: str | None = None  # free-text tag stored with the run, e.g. "nightly"

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        for name in models:
            model_revision(name)  # raises ModelError listing what is accepted
        return models

    @model_validator(mode="after")
    def _budgets_fit_methods(self):
        if not self.budgets and not self.ratios:
            raise ConfigError("no budgets and no ratios given; give at least one budget (tokens) or ratio")
        if self.phases is not None and len(set(self.phases)) != len(self.phases):
            raise ConfigError(f"phases {self.phases} repeat a phase; give each of prefill, decode at most once")
        if self.phases is not None and "decode" in self.phases and not self.budgets:
            for spec in self.benchmarks:
                if build_benchmark(spec.name, **spec.params).decode_eviction is None:
                    raise ConfigError(
                        f"benchmark {spec.name!r} runs in the decode phase but the config gives only ratios; "
                        "decode-time eviction needs budgets in tokens"
                    )
        for spec in self.methods:
            for params in spec.settings():
                method = build_method(spec.name, **params)
                if method.evicts:
                    for budget in self.budgets:
                        method.validate_budget(budget)
        return self


def _model_at(location: tuple) -> type[BaseModel]:
    """Return the config class that contains the key at a validation error's location."""
    if len(location) > 2 and location[0] == "methods":
        return MethodSpec
    if len(location) > 2 and location[0] == "benchmarks":
        return BenchmarkSpec
    return RunConfig


def _first_error_line(error: ValidationError) -> str:
    detail = error.errors()[0]
    location = ".".join(str(part) for part in detail["loc"]) or "config"
    cause = detail.get("ctx", {}).get("error")
    if isinstance(cause, (MethodError, BenchmarkError, ModelError, ConfigError)):
        return str(cause)
    message = detail["msg"]
    if detail["type"] == "extra_forbidden":
        known = list(_model_at(detail["loc"]).model_fields)
        hint = difflib.get_close_matches(str(detail["loc"][-1]), known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown config key {location!r}{suggestion}; accepted: {', '.join(known)}"
    if detail["loc"] and detail["loc"][0] == "ratios":
        return f"invalid ratio {detail.get('input')!r}; ratios must be numbers in (0, 1), the share of tokens evicted"
    if detail["loc"] and detail["loc"][0] == "budgets":
        return f"invalid budget {detail.get('input')!r}; budgets must be positive integers (tokens kept per KV head)"
    return f"invalid {location}={detail.get('input')!r}: {message}"


def parse_config(data: dict | None) -> RunConfig:
    """Validate a config mapping; raise ConfigError with a one-line message."""
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_first_error_line(error)) from None
    except (MethodError, BenchmarkError, ModelError) as error:
        raise ConfigError(str(error)) from None


def load_config(path: str | None) -> RunConfig:
    """Read a YAML config file (or the defaults when `path` is None)."""
    if path is None:
        return parse_config({})
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping of keys, got {type(data).__name__}")
    return parse_config(data)


__all__ = ["BenchmarkSpec", "ConfigError", "MethodSpec", "RunConfig", "list_benchmarks", "load_config", "parse_config"]
