"""Start or join Ray with every listener on loopback unless a cluster address is given."""

from __future__ import annotations

import gc
import logging
import os
import threading

log = logging.getLogger(__name__)

# Ray reads these when it is imported: without the first it binds all interfaces on some
# platforms, the next two switch off the auth prompt and usage reporting, and the fourth stops
# Ray from merging log lines that several workers repeat. The raylet of a Ray started here reads
# the last two. By default Ray runs its workers at nice 15, below its own daemons, this command
# and the Prefect server. Any of those then preempted an actor's torch threads, so the actors run
# at the command's priority instead.
_RAY_ENVIRONMENT = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_worker_niceness": "0",
    # No idle worker when the driver connects: the command runs only actors, each in a worker of
    # its own, so that worker would idle all run, its threads waking about 160 times a second.
    "RAY_prestart_worker_first_driver": "0",
}

DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def configure_ray_environment() -> None:
    for key, value in _RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def start_ray(num_cpus: int | None = None):
    """Connect to `RAY_ADDRESS` when set, else start a local Ray on 127.0.0.1 with no dashboard.

    Safe to call again in the same process: an existing connection is reused.
    """
    configure_ray_environment()
    import ray

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            object_store_memory=DEFAULT_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
        )
    return ray


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def shut_down_in_background() -> threading.Thread:
    """Start a thread that disconnects from Ray and stops a Ray started here, and return the thread.

    An object reference or actor handle released while `ray.shutdown` tears down the core worker
    ends the whole process with status 1 ("The core worker has already been shutdown"). Those
    left in garbage cycles, such as the traceback of a caught RayActorError, would be released by
    whichever thread next collects garbage. So they are collected here first, and automatic
    collection pauses until the shutdown is over.
    """
    import ray

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()

    def shut_down() -> None:
        try:
            ray.shutdown()
        finally:
            if was_enabled:
                gc.enable()

    thread = threading.Thread(target=shut_down, name="ray-shutdown")
    thread.start()
    return thread
