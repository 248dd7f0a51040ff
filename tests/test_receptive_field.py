"""Tests for swa/receptive_field.py: reachability, closed forms, ERF, plots."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import receptive_field as rf
from swa.attention import create_sliding_window_mask

SEED_MASK_6x3 = np.array(
  [
    [1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 1, 1],
  ],
  dtype=bool,
)

# (seq_len, window_size, num_layers): odd lengths, w=1, w == T, w > T, deep stacks.
CASES = [
  (9, 1, 3),
  (10, 3, 1),
  (17, 4, 3),
  (33, 5, 4),
  (31, 8, 6),
  (12, 12, 2),
  (7, 20, 3),
  (64, 16, 8),
]


def _distance_band(seq_len, reach):
  """bool [T, T], True where 0 <= i - j <= reach (independent of the mask code)."""
  d = np.arange(seq_len)[:, None] - np.arange(seq_len)[None, :]
  return (d >= 0) & (d <= reach)


def test_first_layer_is_the_seed_mask():
  np.testing.assert_array_equal(rf.reachability(6, 3, 1)[0], SEED_MASK_6x3)


@pytest.mark.parametrize("seq_len,window_size,num_layers", CASES)
def test_first_layer_is_band_mask(seq_len, window_size, num_layers):
  reach = rf.reachability(seq_len, window_size, num_layers)
  np.testing.assert_array_equal(
    reach[0], np.asarray(create_sliding_window_mask(seq_len, window_size))
  )


@pytest.mark.parametrize("seq_len,window_size,num_layers", CASES)
def test_reachability_matches_closed_form(seq_len, window_size, num_layers):
  reach = rf.reachability(seq_len, window_size, num_layers)
  assert reach.shape == (num_layers, seq_len, seq_len) and reach.dtype == bool
  for l in range(num_layers):
    np.testing.assert_array_equal(
      reach[l], _distance_band(seq_len, rf.max_reach(window_size, l + 1)), err_msg=f"layer {l + 1}"
    )
    # The last query sees the full field unless the sequence start clips it.
    assert reach[l, -1].sum() == min(seq_len, rf.receptive_field(window_size, l + 1))


def test_window_one_is_only_the_diagonal():
  reach = rf.reachability(11, 1, 5)
  np.testing.assert_array_equal(reach, np.broadcast_to(np.eye(11, dtype=bool), (5, 11, 11)))
  assert rf.receptive_field(1, 5) == 1 and rf.max_reach(1, 5) == 0


@pytest.mark.parametrize("window_size", [13, 14, 100, None])
def test_window_at_least_seq_len_is_full_causal(window_size):
  reach = rf.reachability(13, window_size, 3)
  np.testing.assert_array_equal(reach, np.broadcast_to(np.tri(13, dtype=bool), (3, 13, 13)))


def test_closed_forms():
  assert rf.receptive_field(128, 1) == 128
  assert rf.receptive_field(128, 4) == 509
  assert rf.max_reach(128, 4) == 508
  assert rf.receptive_field(3, 2) == 5  # 2 hops of 2 from position i: i-4 .. i


def test_receptive_field_table_w128():
  rows = rf.receptive_field_table(128, (1, 2, 4, 8))
  assert rows == [(1, 128, 128), (2, 256, 255), (4, 512, 509), (8, 1024, 1017)]
  text = rf.format_receptive_field_table(128, (1, 2, 4, 8))
  assert text.count("\n") == 6  # header, separator, four rows
  assert "| 8 | 1024 | 1017 |" in text


@pytest.mark.parametrize(
  "call",
  [
    lambda: rf.reachability(8, 0, 2),
    lambda: rf.reachability(8, 3, 0),
    lambda: rf.reachability(0, 3, 2),
    lambda: rf.reachability(8, 2.0, 2),
    lambda: rf.reachability(8, 3, "4"),
    lambda: rf.receptive_field(0, 1),
    lambda: rf.receptive_field(4, 0),
    lambda: rf.receptive_field(True, 2),
    lambda: rf.receptive_field(None, 2),
    lambda: rf.max_reach(4, 1.5),
    lambda: rf.receptive_field_table(128, ()),
    lambda: rf.receptive_field_table(128, (1, 0)),
    lambda: rf.plot_receptive_field(0, 16, 2),
  ],
)
def test_bad_inputs_raise(call):
  with pytest.raises(ValueError):
    call()


def _local_mixer(window_size, num_layers, seq_len, dim, vocab, key):
  """Hand-built model: num_layers of x <- x + (band-masked mean of x), then logits."""
  w_DV = jax.random.normal(key, (dim, vocab))
  mask_TS = rf._band_mask(seq_len, window_size).astype(np.float32)
  mean_TS = jnp.asarray(mask_TS / mask_TS.sum(axis=1, keepdims=True))

  def fn(x_BTD):
    for _ in range(num_layers):
      x_BTD = x_BTD + jnp.einsum("TS,BSD->BTD", mean_TS, x_BTD)
    return jnp.einsum("BTD,DV->BTV", x_BTD, w_DV)

  return fn


@pytest.mark.parametrize(
  "window_size,num_layers,position", [(3, 2, 12), (4, 3, 19), (1, 2, 7), (5, 2, 3), (2, 4, 19)]
)
@pytest.mark.parametrize("use_target,use_jit", [(False, False), (True, True)])
def test_erf_is_zero_exactly_beyond_reach(window_size, num_layers, position, use_target, use_jit):
  B, T, D, V = 3, 20, 5, 7
  key_model, key_x, key_t = jax.random.split(jax.random.PRNGKey(0), 3)
  fn = _local_mixer(window_size, num_layers, T, D, V, key_model)
  fn = jax.jit(fn) if use_jit else fn
  x = jax.random.normal(key_x, (B, T, D))
  target = np.asarray(jax.random.randint(key_t, (B,), 0, V)) if use_target else None

  erf = rf.effective_receptive_field(fn, x, position, target_index=target)

  assert erf.shape == (T,) and erf.dtype == np.float64
  distance = position - np.arange(T)
  inside = (distance >= 0) & (distance <= rf.max_reach(window_size, num_layers))
  assert np.all(erf[inside] > 0)
  np.testing.assert_array_equal(erf[~inside], 0.0)


def test_erf_bad_inputs_raise():
  fn = _local_mixer(3, 1, 6, 4, 5, jax.random.PRNGKey(0))
  x = jnp.ones((2, 6, 4))
  for kwargs in [
    dict(position=6),
    dict(position=-1),
    dict(position=1.0),
    dict(position=2, target_index=np.array([0, 5])),
    dict(position=2, target_index=np.array([0])),
  ]:
    with pytest.raises(ValueError):
      rf.effective_receptive_field(fn, x, **kwargs)
  with pytest.raises(ValueError):
    rf.effective_receptive_field(fn, jnp.ones((6, 4)), 2)
  with pytest.raises(ValueError):
    rf.effective_receptive_field(fn, jnp.ones((2, 6, 4), jnp.int32), 2)


def test_plots_save_and_report_measured_field(tmp_path):
  import matplotlib.pyplot as plt

  fig = rf.plot_window_mask(6, 3, tmp_path / "mask.png")
  plt.close(fig)
  fig, rows = rf.plot_receptive_field(8, 40, 3, tmp_path / "rf.png")
  plt.close(fig)
  assert rows == [(1, 8, 8), (2, 15, 15), (3, 22, 22)]
  assert all((tmp_path / name).stat().st_size > 0 for name in ("mask.png", "rf.png"))


@pytest.mark.slow
def test_the_command_writes_figures_and_table(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
    [sys.executable, "-m", "swa.receptive_field", f"--out={tmp_path}"],
    cwd=root,
    capture_output=True,
    text=True,
    check=True,
  )
  text = (tmp_path / "receptive_field.md").read_text()
  assert done.stdout.strip() == text.strip()
  assert "| 4 | 512 | 509 |" in text and "- Command: `python -m swa.receptive_field" in text
  for name in ("window_mask.png", "window_mask_6x3.png", "receptive_field.png"):
    assert (tmp_path / name).stat().st_size > 0
  failed = subprocess.run(
    [sys.executable, "-m", "swa.receptive_field"], cwd=root, capture_output=True, text=True
  )
  assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "--out" in failed.stderr
