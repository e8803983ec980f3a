"""The local Ray that a run starts: loopback only, and actors at the command's CPU priority."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A script that starts a local Ray the way a run does and prints the niceness of itself and of an actor.
SCRIPT = """
import json, os
from workers.ray_runtime import start_ray

ray = start_ray(num_cpus=1)

@ray.remote(num_cpus=1)
class Probe:
    def niceness(self):
        return os.nice(0)

probe = Probe.remote()
print(json.dumps({"command": os.nice(0), "actor": ray.get(probe.niceness.remote()),
                  "node_ip": ray.util.get_node_ip_address()}))
ray.shutdown()
"""


def test_actor_runs_at_command_priority():
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reported = json.loads(result.stdout.strip().splitlines()[-1])
    assert reported["actor"] == reported["command"]  # Ray's default would be the command's + 15
    assert reported["node_ip"] == "127.0.0.1"


# A script that leaves object references in garbage cycles, as a caught RayActorError's traceback
# does, then shuts Ray down in the background while it collects garbage. Automatic collection is
# off, so the cycles are still there when the shutdown starts. On a 2-core test machine the core
# worker was being torn down 0.2 s after the start.
BACKGROUND_SHUTDOWN_SCRIPT = """
import gc
import time
from workers.ray_runtime import shut_down_in_background, start_ray

ray = start_ray(num_cpus=1)

@ray.remote(num_cpus=1)
def return_one():
    return 1

class Cycle:
    pass

gc.disable()
for _ in range(200):
    cycle = Cycle()
    cycle.reference, cycle.itself = return_one.remote(), cycle
ray.get(cycle.reference)
del cycle
thread = shut_down_in_background()
time.sleep(0.2)
collections = 0
while thread.is_alive():
    gc.collect()
    collections += 1
    time.sleep(0.001)
thread.join()
gc.enable()
shut_down_in_background().join()  # Ray is already down, so this only pauses and resumes collection
print(f"shut down: {collections} collections, automatic collection {'on' if gc.isenabled() else 'off'}")
"""


def test_background_shutdown_survives_garbage_collection():
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", BACKGROUND_SHUTDOWN_SCRIPT], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    # Without collecting first, a cycle released mid-shutdown ends the process with status 1.
    assert result.returncode == 0, result.stderr[-3000:]
    collections, _, state = result.stdout.strip().splitlines()[-1].removeprefix("shut down: ").partition(" collections, ")
    assert int(collections) > 10  # the loop collected all through the shutdown
    assert state == "automatic collection on"  # switched back on after the second shutdown
