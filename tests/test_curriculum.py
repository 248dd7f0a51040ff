"""Tests for swa/curriculum.py: the curriculum over distance and the resumable batch iterator."""

import numpy as np
import pytest

from swa import curriculum, data


def test_curriculum_monotone_and_endpoints():
  values = [curriculum.curriculum_max_distance(s, 1000, 42, 4000, 0.7) for s in range(1200)]
  assert values[0] == 42
  assert values[700] == values[999] == values[1199] == 4000
  assert values[699] < 4000
  assert all(a <= b for a, b in zip(values, values[1:]))
  assert values[350] == 42 + (4000 - 42) // 2
  assert curriculum.curriculum_max_distance(0, 10, 42, 100, 0.0) == 100


@pytest.mark.parametrize(
  "args, match",
  [
    ((-1, 10, 42, 100, 0.5), "step=-1"),
    ((0, 0, 42, 100, 0.5), "total_steps=0"),
    ((0, 10, 100, 42, 0.5), "start=100 is above end=42"),
    ((0, 10, 42, 100, 1.5), "warmup_fraction=1.5"),
  ],
)
def test_curriculum_errors(args, match):
  with pytest.raises(ValueError, match=match):
    curriculum.curriculum_max_distance(*args)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_passkey_batches_deterministic_and_resumable():
  kwargs = dict(seq_len=96, batch_size=8, seed=3, total_steps=20, uniform_fraction=0.25)
  first = [next(it) for it in [curriculum.PasskeyBatches(**kwargs)] for _ in range(6)]
  again = curriculum.PasskeyBatches(**kwargs)
  for s, batch in enumerate(first):
    _assert_batches_equal(batch, again.batch_at(s))
  resumed = curriculum.PasskeyBatches(**kwargs)
  resumed.set_state({"step": 4})
  assert resumed.get_state() == {"step": 4}
  _assert_batches_equal(next(resumed), first[4])
  _assert_batches_equal(next(resumed), first[5])
  assert resumed.get_state() == {"step": 6}
  other_seed = curriculum.PasskeyBatches(**{**kwargs, "seed": 4})
  assert not np.array_equal(other_seed.batch_at(0)["inputs"], first[0]["inputs"])
  # Steps past warmup share the curriculum, yet each step must draw fresh examples.
  assert not np.array_equal(again.batch_at(15)["inputs"], again.batch_at(16)["inputs"])


def test_passkey_batches_distances_follow_curriculum():
  it = curriculum.PasskeyBatches(
    seq_len=300,
    batch_size=256,
    seed=0,
    total_steps=100,
    curriculum_start=50,
    curriculum_fraction=0.5,
  )
  assert it.max_distance == data.max_distance(300 + 1 - data.ANSWER_LEN) == 280
  for step in (0, 10, 25, 49, 50, 99, 150):
    top = curriculum.curriculum_max_distance(step, 100, 50, 280, 0.5)
    d = it.batch_at(step)["distance"]
    assert d.min() >= data.MIN_DISTANCE and d.max() <= top
  assert it.batch_at(99)["distance"].max() > 250  # the full range is reached after warmup
  mixed = curriculum.PasskeyBatches(
    seq_len=300, batch_size=256, seed=0, total_steps=100, curriculum_start=42, uniform_fraction=0.5
  )
  d = mixed.batch_at(0)["distance"]
  assert 0.3 < np.mean(d > 42) < 0.7  # about half drawn over the whole range, the rest at 42


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(seq_len=61), "seq_len=61 is too short"),
    (dict(max_distance=1000), "max_distance=1000 is impossible for seq_len=100"),
    (dict(curriculum_start=32), "curriculum_start=32 is not allowed"),
    (dict(uniform_fraction=-0.1), "uniform_fraction=-0.1"),
    (dict(seed=-1), "seed=-1"),
    (dict(curriculum_fraction=2.0), "curriculum_fraction=2.0"),
    (dict(total_steps=0), "total_steps=0"),
  ],
)
def test_passkey_batches_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    curriculum.PasskeyBatches(
      **{**dict(seq_len=100, batch_size=2, seed=0, total_steps=10), **kwargs}
    )


def _adaptive(**kwargs):
  return curriculum.PasskeyBatches(
    **{
      **dict(
        seq_len=300,
        batch_size=64,
        seed=0,
        total_steps=100,
        curriculum_start=100,
        curriculum="adaptive",
        stage=20,
        target=0.9,
        stage_examples=10,
      ),
      **kwargs,
    }
  )


def test_adaptive_curriculum_advances_only_when_the_newest_stage_is_solved():
  it = _adaptive()
  assert it.top_at(0) == it.top_at(99) == 100
  batch = next(it)
  assert batch["distance"][batch["distance"] > 100].size < 20  # only the uniform share is beyond
  it.observe([100] * 9 + [80] * 30, [True] * 39)  # 9 in the newest stage (80, 100]: too few
  assert it.top == 100
  it.observe([100, 81], [True, False])  # 10 of 11 = 91 % >= 90 %: advance
  assert it.top == 120
  it.observe(np.arange(101, 121), np.arange(20) < 17)  # 85 % < 90 %: stay, count afresh
  assert it.top == 120 and it.get_state()["seen"] == 0
  it.observe([120] * 10, [True] * 10)
  assert it.top == 140
  assert next(it)["distance"].max() <= 280 and it.top_at(it.step) == 140
  for _ in range(20):
    it.observe([it.top] * 10, [True] * 10)
  assert it.top == it.max_distance == 280  # capped at the final largest distance


def test_adaptive_curriculum_resumes_with_its_state():
  it = _adaptive()
  next(it)
  it.observe([100] * 12, [True] * 12)
  it.observe([120] * 4, [True] * 4)
  state = it.get_state()
  assert state == {"step": 1, "top": 120, "hits": 4, "seen": 4}
  resumed = _adaptive()
  resumed.set_state(state)
  _assert_batches_equal(next(resumed), next(it))
  resumed.observe([120] * 6, [True] * 6)  # 4 + 6 = 10 examples: the same decision
  assert resumed.top == 140
  with pytest.raises(ValueError, match="no adaptive curriculum"):
    _adaptive().set_state({"step": 3})


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(curriculum="cosine"), "curriculum='cosine' is not allowed"),
    (dict(stage=0), "stage=0"),
    (dict(target=1.5), "target=1.5"),
    (dict(stage_examples=0), "stage_examples=0"),
  ],
)
def test_adaptive_curriculum_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _adaptive(**kwargs)


def test_linear_curriculum_ignores_results():
  it = curriculum.PasskeyBatches(seq_len=300, batch_size=8, seed=0, total_steps=100)
  it.observe([42] * 8, [True] * 8)
  assert it.get_state() == {"step": 0} and it.top_at(100) == it.max_distance
