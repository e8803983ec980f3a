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
