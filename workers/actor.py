"""The Ray actor that keeps one model loaded and runs work units on it."""

from __future__ import annotations

import logging
import os

from workers.units import WorkUnit


class ModelWorker:
    """Loads a model once in its own process and evaluates any number of work units with it."""

    def __init__(self, model_name: str, dtype: str = "bfloat16", num_threads: int | None = None):
        import torch
        from transformers.utils import logging as transformers_logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        transformers_logging.disable_progress_bar()
        # Ray sets OMP_NUM_THREADS to the actor's CPU request; use the cores granted to us.
        torch.set_num_threads(num_threads or int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count())

        from workers.models import ModelError, load_model

        # A load error is kept and raised by describe(): an exception in __init__ reaches the
        # driver only as an ActorDiedError with the remote traceback as its message.
        self.load_error: ModelError | None = None
        try:
            self.loaded = load_model(model_name, dtype=dtype)
        except ModelError as error:
            self.load_error = error
        self.units_done = 0

    def describe(self) -> dict:
        """Return the model, revision, device, dtype, process id and torch threads; raise the ModelError of a failed load."""
        import torch

        if self.load_error is not None:
            raise self.load_error
        return {
            "model": self.loaded.name,
            "revision": self.loaded.revision,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
        }

    def check_samples(self, benchmark: str, params: dict, num_samples: int, seed: int) -> int:
        """Load a benchmark's samples as run_unit will; return their count or raise BenchmarkError."""
        from workers.evaluate import check_samples

        return check_samples(self.loaded.tokenizer, benchmark, params, num_samples, seed)

    def run_unit(self, unit: WorkUnit) -> dict[str, list[dict]]:
        from workers.evaluate import evaluate_unit

        rows = evaluate_unit(self.loaded, unit)
        self.units_done += 1
        return rows


def create_actor(model_name: str, dtype: str, num_cpus: int, use_gpu: bool, max_restarts: int = 2):
    """Create a ModelWorker actor; it requests one GPU when `use_gpu`, else `num_cpus` CPUs."""
    import ray

    remote_class = ray.remote(ModelWorker)
    options = {"num_cpus": num_cpus, "max_restarts": max_restarts, "max_task_retries": 0}
    if use_gpu:
        options["num_gpus"] = 1
    return remote_class.options(**options).remote(model_name, dtype, num_cpus)
