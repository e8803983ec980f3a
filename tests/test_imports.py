"""What a process loads: the config check needs torch but not transformers, and capkv's names load on first use."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter, which prints one JSON object, and return that object."""
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                               check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_config_check_skips_transformers():
    loaded = _fresh_python(
        "import json, sys\n"
        "from flows.config import BUILT_IN_METHODS, parse_config\n"
        "config = parse_config({'methods': list(BUILT_IN_METHODS), 'budgets': [64]})\n"
        "print(json.dumps({'cells': len(config.methods), 'torch': 'torch' in sys.modules,\n"
        "                  'transformers': 'transformers' in sys.modules}))"
    )
    assert loaded["cells"] == 13
    assert loaded["torch"]
    assert not loaded["transformers"]


def test_capacity_name_after_submodule_import():
    names = _fresh_python(
        "import json, sys, types\n"
        "from capkv.capacity import layer_capacity\n"
        "import capkv\n"
        "from capkv import capacity, prefill\n"
        "try:\n"
        "    capkv.no_such_name\n"
        "    missing = None\n"
        "except AttributeError as error:\n"
        "    missing = str(error)\n"
        "print(json.dumps({'capacity': type(capacity).__name__, 'attribute': type(capkv.capacity).__name__,\n"
        "                  'prefill': prefill.__module__, 'missing': missing}))"
    )
    assert names["capacity"] == "function"
    assert names["attribute"] == "function"
    assert names["prefill"] == "capkv.engine"
    assert names["missing"] == "module 'capkv' has no attribute 'no_such_name'"
