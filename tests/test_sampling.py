"""Sampled decoding: temperature, nucleus (top-p) cut, and seeds that make draws repeatable."""

from __future__ import annotations

import pytest
import torch

from capkv.decoding import Sampling, choose_token

# Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))


def draws(sampling: Sampling, count: int) -> list[int]:
    generator = torch.Generator().manual_seed(sampling.seed)
    return [choose_token(LOGITS, sampling, generator) for _ in range(count)]


def test_greedy_without_sampling_or_at_temperature_zero():
    assert choose_token(LOGITS, None, None) == 1
    assert draws(Sampling(temperature=0.0), 5) == [1] * 5


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Sorted: 0.5 (token 1), 0.3 (token 3), 0.15 (token 2), 0.05 (token 0). Mass before token 3 is
    # 0.5 < 0.7, before token 2 it is 0.8 >= 0.7: only tokens 1 and 3 can be drawn.
    picks = draws(Sampling(temperature=1.0, top_p=0.7, seed=3), 400)
    assert set(picks) == {1, 3}
    # Renormalised: token 1 with 0.5 / 0.8 = 0.625.
    assert abs(picks.count(1) / len(picks) - 0.625) < 0.08


def test_top_p_below_the_largest_probability_is_greedy():
    assert set(draws(Sampling(temperature=1.0, top_p=0.2, seed=1), 50)) == {1}


def test_full_distribution_frequencies():
    picks = draws(Sampling(temperature=1.0, top_p=1.0, seed=0), 2000)
    frequencies = [picks.count(token) / len(picks) for token in range(4)]
    assert frequencies == pytest.approx([0.05, 0.5, 0.15, 0.3], abs=0.04)


def test_low_temperature_sharpens():
    picks = draws(Sampling(temperature=0.1, seed=0), 200)
    assert picks.count(1) / len(picks) > 0.98  # (0.5 / 0.3) ** 10 > 160


def test_same_seed_same_draws_different_seed_differs():
    assert draws(Sampling(seed=7), 50) == draws(Sampling(seed=7), 50)
    assert draws(Sampling(seed=7), 50) != draws(Sampling(seed=8), 50)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"temperature": -0.5}, "invalid sampling temperature=-0.5; expected a number >= 0"),
        ({"top_p": 0.0}, r"invalid sampling top_p=0.0; expected a number in \(0, 1\]"),
        ({"top_p": 1.5}, r"invalid sampling top_p=1.5; expected a number in \(0, 1\]"),
    ],
)
def test_invalid_settings(arguments, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**arguments)
