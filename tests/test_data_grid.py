"""The evaluation grid: the reach, the sweep's distances and each distance's prompt length."""

import numpy as np
import pytest

from swa import data
from swa.model import ModelConfig


def test_sweep_covers_twice_the_reach_and_is_dense_near_it():
  distances = data.sweep_distances(508, 1024, max_factor=2.0)
  assert distances[0] == data.MIN_DISTANCE and distances[-1] == 1016
  assert {508, 509} <= set(distances)
  gaps = np.diff(distances)
  near = [g for d, g in zip(distances, gaps) if 0.85 * 508 <= d < 1.15 * 508]
  far = [g for d, g in zip(distances[:-2], gaps) if d > 1.2 * 508]  # the last gap is a remainder
  assert max(near) <= 8 and min(far) >= 30


@pytest.mark.parametrize("reach", [508, 2044, 4092])
def test_sweep_is_at_most_8_apart_within_5_percent_of_the_reach(reach):
  distances = np.array(data.sweep_distances(reach, 2 * reach))
  near = distances[(distances >= 0.95 * reach) & (distances <= 1.05 * reach)]
  assert near[0] - 0.95 * reach <= 8 and 1.05 * reach - near[-1] <= 8
  assert np.diff(near).max() <= 8 and {reach, reach + 1} <= set(near.tolist())


def test_full_attention_sweeps_to_the_trained_length_or_beyond():
  distances = data.sweep_distances(None, 1024)
  assert distances[0] == data.MIN_DISTANCE
  assert distances[-1] == data.context_max_distance(1024) == 1004
  assert len(distances) >= 30
  beyond = data.sweep_distances(None, 1024, full_max_factor=3.0)
  assert beyond[-1] == 3 * 1004 and set(distances) <= set(beyond)
  assert data.context_len(beyond[-1], 1024) > 1024  # longer prompts than trained


@pytest.mark.parametrize(
  "distance, train_seq_len, expected",
  [
    (42, 128, 128),
    (108, 128, 128),
    (109, 128, 192),
    (124, 128, 192),
    (300, 0, 320),
    (44, 0, 64),
    (45, 0, 128),
  ],
)
def test_context_len(distance, train_seq_len, expected):
  T = data.context_len(distance, train_seq_len)
  assert T == expected
  assert distance <= data.max_distance(T + 1 - data.ANSWER_LEN)  # the distance fits


@pytest.mark.parametrize(
  "windows, reach, label",
  [
    ((32, 32), 62, "32"),
    ((8, 16), 22, "8,16"),
    ((None, None), None, "full"),
    ((8, None), None, "8,full"),
  ],
)
def test_reach_and_label_of_layer_windows(windows, reach, label):
  config = ModelConfig(vocab_size=16, num_layers=len(windows), window_size=windows)
  assert config.reach == reach
  assert config.window_label == label


def test_even_distances_span_what_the_context_allows():
  distances = data.even_distances(128, 3)
  assert distances == sorted(set(distances)) and len(distances) == 3
  assert distances[0] == data.MIN_DISTANCE and distances[-1] == data.context_max_distance(128)


def test_hop_distances_are_095_of_each_prefix_reach():
  # Reaches 15 (below MIN_DISTANCE: left out), 526, 1037, 1548, 2059.
  assert data.hop_distances((16, 512, 512, 512, 512), 2176) == [499, 985, 1470, 1956]
  assert data.hop_distances((128,) * 4, 640) == [120, 241, 361, 482]
  assert data.hop_distances((128, None), 640) is None
