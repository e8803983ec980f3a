"""A method in one file of a user's own package, registered through the `capkv.methods` entry-point group."""

from __future__ import annotations

import textwrap

import pytest
import torch

from capkv import build_method, compress, generate, prefill
from capkv.methods import MethodError, method_classes, method_parameters
from tests.conftest import tiny_llama
from tests.test_methods_positions import keep_masks, masked_reference_logits

PLUGIN_SOURCE = '''
"""Keep the earliest tokens: a deliberately simple plug-in method."""

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError


@dataclass
class KeepEarliest(EvictionMethod):
    """Keeps the first `budget - recent` tokens and the `recent` most recent ones.

    Parameters:
    - recent (2): most recent tokens always kept.
    """

    name = "keep-earliest"
    recent: int = 2

    def validate(self) -> None:
        if self.recent < 0:
            raise MethodError(f"invalid keep-earliest recent={self.recent}; expected an integer >= 0")

    def min_budget(self) -> int:
        return self.recent + 1

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) >= seq_len - self.recent

    def score(self, layer: LayerInputs) -> torch.Tensor:
        positions = torch.arange(layer.seq_len, device=layer.keys.device, dtype=torch.float32)
        return (-positions).expand(*layer.keys.shape[:3])  # earlier tokens score higher
'''


def _install(root, package: str, module_source: str, entry_point: str) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "methods.py").write_text(module_source)
    dist_info = root / f"{package}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [capkv.methods]
        {entry_point}
    """))


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    _install(tmp_path, "user_eviction", PLUGIN_SOURCE, "keep-earliest = user_eviction.methods:KeepEarliest")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_is_listed_with_parameters(plugin_on_path):
    classes = method_classes()
    assert classes["keep-earliest"].__name__ == "KeepEarliest"
    assert method_parameters("keep-earliest") == {"recent": 2}
    with pytest.raises(MethodError, match="invalid keep-earliest recent=-1"):
        build_method("keep-earliest", recent=-1)


def test_plugin_runs_through_prefill_compress_generate(plugin_on_path):
    model = tiny_llama(layers=2)
    prompt = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(2))
    method = build_method("keep-earliest", recent=3)
    prefilled = prefill(model, prompt)

    compressed = compress(model, prefilled, method, 12)
    generation = generate(model, compressed.cache, 50, 4, set(), first_logits=prefilled.last_logits,
                          return_logits=True)

    assert compressed.kept_indices[0][0, 0].tolist() == list(range(9)) + [47, 48, 49]
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, 50), generation.token_ids[:-1])
    for step in range(1, 4):
        assert (generation.step_logits[step] - reference[step - 1]).abs().max() < 1e-4


def test_plugin_that_is_not_a_method_is_rejected(tmp_path, monkeypatch):
    _install(tmp_path, "broken_eviction", "NOT_A_METHOD = 3\n", "broken = broken_eviction.methods:NOT_A_METHOD")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MethodError, match="entry point 'broken' in group 'capkv.methods' is 3, not an EvictionMethod"):
        method_classes()
