"""The KV cache as data (swa/cache.py): slots, writes, the mask from stored positions.

The attention of one layer is streamed through the model's own Attention module with a cache;
its query and key projections are zero and its values the one-hot of each position, so every
output row shows which keys the query saw.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swa import attention, data
from swa import cache as cache_lib
from swa.model import Attention, ModelConfig

CONFIG = ModelConfig(
  vocab_size=data.VOCAB_SIZE,
  num_layers=3,
  d_model=32,
  num_heads=4,
  num_kv_heads=2,
  mlp_dim=64,
  window_size=(4, 7, None),
  dtype="float32",
)
LENGTH = 32  # positions streamed through one layer; also its width (one-hot values)

_write = jax.jit(cache_lib.write)


def one_layer_cache(window, num_sinks=0, head_dim=1, max_len=None):
  config = ModelConfig(
    vocab_size=2,
    num_layers=1,
    d_model=2,
    num_heads=1,
    num_kv_heads=1,
    mlp_dim=1,
    window_size=window,
    dtype="float32",
  )
  layer = cache_lib.init_cache(config, 1, max_len, num_sinks=num_sinks)[0]
  size = layer["pos"].shape[0]
  return {**layer, "k": jnp.zeros((1, size, 1, head_dim)), "v": jnp.zeros((1, size, 1, head_dim))}


def one_hot_attention(window):
  """A one-layer, one-head Attention of width LENGTH: q = k = 0, v = x, out = its input."""
  config = ModelConfig(
    vocab_size=2,
    num_layers=1,
    d_model=LENGTH,
    num_heads=1,
    num_kv_heads=1,
    mlp_dim=1,
    window_size=window,
    dtype="float32",
  )
  attn = Attention(config, window, rngs=nnx.Rngs(0))
  for dense, kernel in ((attn.query, 0), (attn.key, 0), (attn.value, 1), (attn.out, 1)):
    dense.kernel.value = kernel * jnp.eye(LENGTH)
  return attn


@nnx.jit
def _attend(attn, x_1CD, positions_1C, layer, num_valid):
  return attn(x_1CD, positions_1C, layer, num_valid)


def keys_seen(window, length, chunk_size, num_sinks=0):
  """Which keys each query attended when one layer is streamed in chunks through its cache.

  Attention is uniform over the visible keys and the value at position p is the one-hot of p,
  so output row i is the indicator of the keys i saw over their count. Returns (0/1 [length,
  length], the raw output rows).
  """
  attn = one_hot_attention(window)
  layer = one_layer_cache(window, num_sinks, head_dim=LENGTH)
  rows = []
  for start in range(0, length, chunk_size):
    n = min(chunk_size, length - start)
    positions_1C = start + np.arange(chunk_size)[None]
    x_1CD = jax.nn.one_hot(positions_1C, LENGTH)
    out_1CD, layer = _attend(attn, x_1CD, positions_1C, layer, jnp.asarray(n, jnp.int32))
    rows.append(np.asarray(out_1CD[0, :n, :length]))
  out = np.concatenate(rows)
  return (out > 0).astype(int), out


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 6, 7, 13])
def test_window_boundary_sees_exactly_w_keys(chunk_size):
  """Regression: query i sees keys i-w+1 .. i: neither i-w (off by one) nor fewer than w."""
  w, length = 6, 31
  seen, out = keys_seen(w, length, chunk_size)
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  np.testing.assert_array_equal(seen, ((i - w < j) & (j <= i)).astype(int))
  np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 17])
def test_sinks_mask_from_positions(chunk_size):
  w, k, length = 5, 3, 29
  seen, _ = keys_seen(w, length, chunk_size, num_sinks=k)
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  expected = ((i - w < j) & (j <= i)) | ((j < k) & (j <= i))
  np.testing.assert_array_equal(seen, expected.astype(int))


@pytest.mark.parametrize("num_sinks", [0, 2])
@pytest.mark.parametrize("chunk_size", [3, 10, 23])
def test_chunk_longer_than_ring_keeps_the_latest_keys(num_sinks, chunk_size):
  """Regression: when a chunk maps several positions to one slot, the latest must win."""
  layer = one_layer_cache(4, num_sinks)
  ring = layer["pos"].shape[0] - num_sinks
  fed = 0
  for n in (chunk_size, chunk_size - 1, chunk_size):  # the middle chunk is padded by one
    pos_1C11 = jnp.asarray(fed + np.arange(chunk_size), jnp.float32)[None, :, None, None]
    layer = _write(layer, pos_1C11, -pos_1C11, n)  # a key's value is its position
    fed += n
  pos = np.asarray(layer["pos"])
  assert set(pos[num_sinks:]) - {-1} == set(range(max(num_sinks, fed - ring), fed))
  np.testing.assert_array_equal(pos[:num_sinks], np.arange(num_sinks))
  filled = pos >= 0
  np.testing.assert_array_equal(np.asarray(layer["k"])[0, filled, 0, 0], pos[filled])
  np.testing.assert_array_equal(np.asarray(layer["v"])[0, filled, 0, 0], -pos[filled])
  assert int(layer["end"]) == fed


def test_ring_slots_and_visible_slots():
  """Position p goes to slot p (sinks) or sinks + (p - sinks) % w; the mask is attention's."""
  w, k = 4, 2
  layer = one_layer_cache(w, num_sinks=k)
  assert layer["pos"].shape == (w + k,)
  np.testing.assert_array_equal(np.asarray(cache_lib.visible_slots(layer, 0, w)), False)
  for _ in range(11):
    layer = _write(layer, jnp.zeros((1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1)), 1)
  # Positions 0..10 written one at a time: sinks 0, 1; the ring holds the last w = 7..10.
  pos = np.asarray(layer["pos"])
  np.testing.assert_array_equal(pos, [0, 1, 10, 7, 8, 9])  # 10 -> slot 2 + (10 - 2) % 4 = 2
  for q in (10, 11):
    got = np.asarray(cache_lib.visible_slots(layer, q, w))
    np.testing.assert_array_equal(got, np.asarray(attention.visible(q, pos, w, k)))
  np.testing.assert_array_equal(
    np.asarray(cache_lib.visible_slots(layer, 10, w)), [1, 1, 1, 1, 1, 1]
  )
  np.testing.assert_array_equal(
    np.asarray(cache_lib.visible_slots(layer, 11, w)), [1, 1, 1, 0, 1, 1]
  )  # position 7 has left 11's window
  np.testing.assert_array_equal(
    np.asarray(cache_lib.visible_slots(layer, [10, 11], None)), np.ones((2, 6), bool)
  )


def test_init_cache_shapes_and_capacity():
  cache = cache_lib.init_cache(CONFIG, 2, max_len=41, num_sinks=3)
  assert [layer["k"].shape for layer in cache] == [(2, 7, 2, 8), (2, 10, 2, 8), (2, 41, 2, 8)]
  assert [int(layer["sinks"]) for layer in cache] == [3, 3, 0]  # a full layer needs no sinks
  assert all(int(layer["end"]) == 0 and (np.asarray(layer["pos"]) == -1).all() for layer in cache)
  assert cache_lib.capacity(CONFIG, cache) == 41
  assert cache_lib.cache_bytes(cache) == 2 * 4 * 2 * 2 * 8 * (7 + 10 + 41) + 4 * (58 + 6)
  full = cache_lib.init_cache(CONFIG, 1, max_len=50, rolling=False)
  assert [layer["k"].shape[1] for layer in full] == [50, 50, 50]
  windowed = dataclasses.replace(CONFIG, window_size=(4, 7, 5))
  assert cache_lib.capacity(windowed, cache_lib.init_cache(windowed, 1)) is None
  # A full-length cache shorter than a window serves only its own length.
  assert cache_lib.capacity(windowed, cache_lib.init_cache(windowed, 1, 6, rolling=False)) == 6
  with pytest.raises(ValueError, match="holds only 6 positions"):
    cache_lib.check_capacity(windowed, cache_lib.init_cache(windowed, 1, 6, rolling=False), 7)


def test_init_cache_errors():
  with pytest.raises(ValueError, match="max_len is required"):
    cache_lib.init_cache(CONFIG, 1)
  with pytest.raises(ValueError, match="num_sinks"):
    cache_lib.init_cache(CONFIG, 1, max_len=8, num_sinks=-1)
  with pytest.raises(ValueError, match="batch_size"):
    cache_lib.init_cache(CONFIG, 0, max_len=8)
  with pytest.raises(ValueError, match="max_len is required for a full-length cache"):
    cache_lib.init_cache(CONFIG, 1, rolling=False)
  with pytest.raises(ValueError, match=r"num_sinks \(8\) must be below max_len \(8\)"):
    cache_lib.init_cache(CONFIG, 1, max_len=8, num_sinks=8, rolling=False)
