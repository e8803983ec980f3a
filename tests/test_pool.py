"""The run's actor pool: actors started early serve only a run with the same spec, and none outlive the run."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from workers import pool

SMALL = pool.ActorSpec(("smollm2-135m",), "float32", 1)
TWO_MODELS = pool.ActorSpec(("smollm2-135m", "tiny-gqa"), "float32", 2)
UNIT = SimpleNamespace(model="smollm2-135m", benchmark="needle", chunk_index=0)


@pytest.fixture
def fake_ray(monkeypatch):
    """Replace actor creation and killing with counters, so no Ray is started; return the killed handles."""
    counter = itertools.count()
    killed: list[str] = []

    def create(spec):
        return {model: [f"{model}#{next(counter)}" for _ in range(spec.num_actors)] for model in spec.models}

    def kill(groups):
        killed.extend(actor for actors in groups for actor in actors)

    monkeypatch.setattr(pool, "_create", create)
    monkeypatch.setattr(pool, "_kill", kill)
    monkeypatch.setattr(pool, "start_ray", lambda: None)
    yield killed
    pool._ACTORS.clear()
    pool._EARLY = None
    pool._STOPPED = False


def test_acquire_takes_early_actors_of_equal_spec(fake_ray):
    pool.start_early(SMALL)
    early = dict(pool._EARLY[1])

    acquired = pool.acquire(pool.ActorSpec(("smollm2-135m",), "float32", 1))

    assert acquired == early
    assert pool.actors_for("smollm2-135m") == early["smollm2-135m"]
    assert pool._EARLY is None
    assert fake_ray == []


def test_acquire_stops_early_actors_of_other_spec(fake_ray):
    pool.start_early(SMALL)
    early = pool._EARLY[1]["smollm2-135m"]

    acquired = pool.acquire(TWO_MODELS)

    assert fake_ray == early
    assert sorted(acquired) == ["smollm2-135m", "tiny-gqa"]
    assert len(acquired["tiny-gqa"]) == 2
    assert set(acquired["smollm2-135m"]).isdisjoint(early)


def test_stop_all_stops_run_and_unclaimed_actors(fake_ray):
    run_actors = pool.acquire(SMALL)["smollm2-135m"]
    pool.start_early(TWO_MODELS)
    unclaimed = [actor for actors in pool._EARLY[1].values() for actor in actors]

    pool.stop_all()

    assert sorted(fake_ray) == sorted(run_actors + unclaimed)
    assert pool._ACTORS == {}
    assert pool._EARLY is None


def test_second_early_start_stops_the_first(fake_ray):
    pool.start_early(SMALL)
    first = pool._EARLY[1]["smollm2-135m"]

    pool.start_early(SMALL)

    assert fake_ray == first
    assert pool._EARLY[1]["smollm2-135m"] != first


def test_actors_for_unknown_model_raises_key_error(fake_ray):
    pool.acquire(SMALL)

    with pytest.raises(KeyError):
        pool.actors_for("tiny-gqa")


class _FailingActor:
    """An actor handle whose every call fails as a dead actor's would; it records the units sent."""

    def __init__(self):
        self.sent = []
        self.run_unit = self

    def remote(self, unit):
        self.sent.append(unit)
        return unit


@pytest.fixture
def dead_actor_calls(monkeypatch):
    import ray
    from ray.exceptions import RayActorError

    def get(reference):
        raise RayActorError()

    monkeypatch.setattr(ray, "get", get)
    return RayActorError


def test_failed_call_is_retried_while_the_run_runs(fake_ray, dead_actor_calls, monkeypatch):
    import logging

    from flows import evaluate
    from flows.evaluate import _run_on_actor

    monkeypatch.setattr(evaluate, "get_run_logger", lambda: logging.getLogger("test"))  # get_run_logger needs a flow run
    pool.acquire(SMALL)
    actor = _FailingActor()

    with pytest.raises(dead_actor_calls):
        _run_on_actor(actor, UNIT, attempts=3, wait_s=0.0)

    assert actor.sent == [UNIT, UNIT, UNIT]


def test_failed_call_is_not_retried_after_stop_all(fake_ray, dead_actor_calls):
    from flows.evaluate import _run_on_actor

    pool.acquire(SMALL)
    pool.stop_all()
    actor = _FailingActor()

    with pytest.raises(dead_actor_calls):
        _run_on_actor(actor, UNIT, attempts=3, wait_s=0.0)

    assert actor.sent == [UNIT]
    assert pool.stopped()
