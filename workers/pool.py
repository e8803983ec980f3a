"""The Ray actors of the current run, by model: created early or on demand, stopped when the run ends.

A run's actors are kept here rather than in Prefect task parameters, so that Prefect never
tries to serialise or hash their handles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from workers.actor import create_actor
from workers.ray_runtime import cluster_gpus, shut_down_in_background, start_ray


@dataclass(frozen=True)
class ActorSpec:
    """The models, dtype and actor count a run requests. Actors started for one spec serve only a run with an equal spec."""

    models: tuple[str, ...]
    dtype: str
    num_actors: int

    @classmethod
    def of(cls, config) -> "ActorSpec":
        """Return the actors a run config requests: its `models`, `dtype` and `num_actors`."""
        return cls(tuple(config.models), config.dtype, config.num_actors)


# Actors of the running flow, by model name.
_ACTORS: dict[str, list] = {}
# Actors that start_early created and no run has taken yet, with the spec they were made for.
_EARLY: tuple[ActorSpec, dict[str, list]] | None = None
# Whether stop_all also shuts Ray down, set by start_early for a process that runs one flow.
_SHUT_DOWN_RAY = False
# Whether stop_all ran since the last acquire. A failed actor call is then not retried.
_STOPPED = False


def start_early(spec: ActorSpec, shut_down_ray: bool = False) -> None:
    """Start Ray and the actors of `spec` now, without waiting for their models to load.

    Each actor loads its model in its own process while the caller goes on, for example while
    Prefect starts its API server. The next `acquire` with an equal spec takes these actors;
    any other `acquire`, and `stop_all`, stops them. With `shut_down_ray`, for a process that
    runs a single flow, `stop_all` also disconnects from Ray (stopping a Ray it started) in a
    background thread while the flow writes its last rows.
    """
    global _EARLY, _SHUT_DOWN_RAY
    _stop_early()
    _SHUT_DOWN_RAY = shut_down_ray
    start_ray()
    _EARLY = (spec, _create(spec))


def acquire(spec: ActorSpec) -> dict[str, list]:
    """Make the actors of `spec` the run's actors, taking those started early when the spec matches."""
    global _EARLY, _STOPPED
    _STOPPED = False
    _ACTORS.clear()
    if _EARLY is not None and _EARLY[0] == spec:
        _ACTORS.update(_EARLY[1])
        _EARLY = None
    else:
        _stop_early()
        start_ray()
        _ACTORS.update(_create(spec))
    return dict(_ACTORS)


def actors_for(model: str) -> list:
    """Return the run's actors that hold `model`."""
    return _ACTORS[model]


def stopped() -> bool:
    """Return whether stop_all ran since the run took its actors, so that a failed actor call must not be retried."""
    return _STOPPED


def stop_all() -> None:
    """Stop the run's actors and any started early; then shut Ray down if start_early asked for it."""
    global _SHUT_DOWN_RAY, _STOPPED
    _STOPPED = True
    _kill(list(_ACTORS.values()))
    _ACTORS.clear()
    _stop_early()
    if _SHUT_DOWN_RAY:
        _SHUT_DOWN_RAY = False
        shut_down_in_background()


def _create(spec: ActorSpec) -> dict[str, list]:
    """Create `spec.num_actors` actors per model; Ray starts their processes in the background.

    On a node without a GPU the cluster's CPUs are shared out evenly among all the actors.
    """
    import ray

    use_gpu = cluster_gpus() >= 1
    total_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    cpus_each = max(1, total_cpus // (len(spec.models) * spec.num_actors))
    return {
        model: [create_actor(model, spec.dtype, cpus_each, use_gpu) for _ in range(spec.num_actors)]
        for model in spec.models
    }


def _stop_early() -> None:
    global _EARLY
    if _EARLY is not None:
        _kill(list(_EARLY[1].values()))
        _EARLY = None


def _kill(actor_groups: list[list]) -> None:
    if not any(actor_groups):
        return
    import ray

    for actors in actor_groups:
        for actor in actors:
            ray.kill(actor)
