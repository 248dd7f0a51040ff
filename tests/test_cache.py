"""The streaming path (swa/cache.py) against teacher-forced logits and a dense reference.

Compilation dominates the run time on CPU, so the tests share a few shapes: batch 2, SEQ_LEN
tokens, full layers of max_len=SEQ_LEN.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swa import cache as cache_lib
from swa import data
from swa.model import ModelConfig, Transformer

WINDOWS = (4, 7, None)  # two windowed layers and a full one
CONFIG = ModelConfig(vocab_size=data.VOCAB_SIZE, num_layers=3, d_model=32, num_heads=4,
                     num_kv_heads=2, mlp_dim=64, window_size=WINDOWS, dtype="float32")
SEQ_LEN = 41      # > 4 x the largest window, a multiple of no chunk size below
PREFILL_LEN = 29  # the rest is decoded token by token
# 1, 3, then w-1, w, w+1 and 2w+3 of the larger window (w+1 = 8 and 2w+3 = 17 also exceed the
# smaller window's ring of 4, and 3 = its w-1), and the whole prefill at once.
CHUNK_SIZES = (1, 3, 6, 7, 8, 17, PREFILL_LEN)


def make_model(config, seed=0):
  """(graphdef, params) of a random-init model."""
  graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)), nnx.Param)
  return graphdef, params.to_pure_dict()


@pytest.fixture(scope="module")
def tiny():
  return make_model(CONFIG)


def random_tokens(seed, batch, length):
  return np.random.default_rng(seed).integers(1, data.VOCAB_SIZE, (batch, length)).astype(np.int32)


@functools.partial(jax.jit, static_argnames="graphdef")
def _teacher_forced(graphdef, params, tokens_BT):
  return nnx.merge(graphdef, params)(tokens_BT)


def teacher_forced(graphdef, params, tokens_BT):
  """The model's own logits [B, T, V] on whole sequences."""
  return np.asarray(_teacher_forced(graphdef, params, jnp.asarray(tokens_BT)))


@functools.partial(jax.jit, static_argnames=("graphdef", "num_sinks"))
def _dense_reference(graphdef, params, tokens_BT, num_sinks):
  model = nnx.merge(graphdef, params)
  c = model.config
  B, T = tokens_BT.shape
  positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  x_BTD = model.embed(tokens_BT)
  for block in model.blocks:
    attn = block.attention
    w = attn.window_size
    mask_TS = j <= i
    if w is not None:
      mask_TS = ((i - w < j) & (j <= i)) | ((j < num_sinks) & (j <= i))
    q_BTNH, k_BSKH, v_BSKH = attn.project(block.attention_norm(x_BTD), positions_BT)
    repeat = c.num_heads // c.num_kv_heads
    k_BSNH = jnp.repeat(k_BSKH, repeat, axis=2)
    v_BSNH = jnp.repeat(v_BSKH, repeat, axis=2)
    scores_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH, k_BSNH) / math.sqrt(c.head_dim)
    probs_BNTS = jax.nn.softmax(jnp.where(mask_TS, scores_BNTS, -jnp.inf), axis=-1)
    out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSNH)
    x_BTD = x_BTD + attn.out(out_BTNH.reshape(B, T, -1))
    x_BTD = x_BTD + block.mlp_out(jax.nn.gelu(block.mlp_in(block.mlp_norm(x_BTD))))
  return model.head(model.final_norm(x_BTD))


def dense_reference(graphdef, params, tokens_BT, num_sinks):
  """The model with every attention replaced by a dense softmax under an explicit mask.

  Key j is visible to query i iff (i - w < j <= i) or (j < num_sinks and j <= i) in windowed
  layers, and iff j <= i in full ones.
  """
  return np.asarray(_dense_reference(graphdef, params, jnp.asarray(tokens_BT), num_sinks))


def stream_logits(graphdef, params, tokens_BT, chunk_size, prefill_len, num_sinks=0,
                  config=CONFIG):
  """Prefill tokens[:, :prefill_len] in chunks, decode the rest teacher forced: [B, T, V]."""
  B, T = tokens_BT.shape
  cache = cache_lib.init_cache(config, B, max_len=T, num_sinks=num_sinks)
  logits_BPV, cache = cache_lib.prefill(graphdef, params, cache, tokens_BT[:, :prefill_len],
                                        chunk_size)
  decoded = []
  for t in range(prefill_len, T):
    logits_BV, cache = cache_lib.decode_step(graphdef, params, cache, tokens_BT[:, t])
    decoded.append(logits_BV)
  return np.concatenate([np.asarray(logits_BPV), np.stack(decoded, 1)], 1), cache


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_prefill_then_decode_equals_teacher_forced(tiny, chunk_size):
  graphdef, params = tiny
  tokens_BT = random_tokens(chunk_size, 2, SEQ_LEN)
  got_BTV, cache = stream_logits(graphdef, params, tokens_BT, chunk_size, PREFILL_LEN)
  np.testing.assert_allclose(got_BTV, teacher_forced(graphdef, params, tokens_BT),
                             atol=1e-4, rtol=1e-4)
  assert all(int(layer["end"]) == SEQ_LEN for layer in cache)


# Single-layer streams through cached_attention/write, jitted so each shape compiles once.
_attend = jax.jit(cache_lib.cached_attention, static_argnames="window_size")
_write = jax.jit(cache_lib.write)


def one_layer_cache(window, num_sinks=0, head_dim=1, max_len=None):
  config = ModelConfig(vocab_size=2, num_layers=1, d_model=2, num_heads=1, num_kv_heads=1,
                       mlp_dim=1, window_size=window, dtype="float32")
  layer = cache_lib.init_cache(config, 1, max_len, num_sinks=num_sinks)[0]
  size = layer["pos"].shape[0]
  return {**layer, "k": jnp.zeros((1, size, 1, head_dim)), "v": jnp.zeros((1, size, 1, head_dim))}


def keys_seen(window, length, chunk_size, num_sinks=0):
  """Which keys each query attended, read off the output of one layer streamed in chunks.

  Queries and keys are zero, so attention is uniform over the visible keys, and the value at
  position p is the one-hot of p: output row i is the indicator of the keys i saw over their
  count. Returns (0/1 [length, length], the raw output rows).
  """
  layer = one_layer_cache(window, num_sinks, head_dim=length)
  rows = []
  for start in range(0, length, chunk_size):
    n = min(chunk_size, length - start)
    v_1C1L = jax.nn.one_hot(start + np.arange(chunk_size), length)[None, :, None]
    zeros = jnp.zeros_like(v_1C1L)
    rows.append(np.asarray(_attend(zeros, zeros, v_1C1L, layer, window_size=window)[0, :n, 0]))
    layer = _write(layer, zeros, v_1C1L, n)
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


@pytest.mark.parametrize("num_sinks, chunk_size", [(2, 3), (2, 17), (3, SEQ_LEN)])
def test_sinks_equal_dense_explicit_mask(tiny, num_sinks, chunk_size):
  graphdef, params = tiny
  tokens_BT = random_tokens(7 * chunk_size + num_sinks, 2, SEQ_LEN)
  got_BTV, _ = stream_logits(graphdef, params, tokens_BT, chunk_size, PREFILL_LEN,
                             num_sinks=num_sinks)
  np.testing.assert_allclose(got_BTV, dense_reference(graphdef, params, tokens_BT, num_sinks),
                             atol=1e-4, rtol=1e-4)
  # Not vacuous: once the sinks leave the window the output differs from the windowed model's.
  plain_BTV = teacher_forced(graphdef, params, tokens_BT)
  assert np.abs(got_BTV - plain_BTV)[:, 12:].max() > 1e-3


def test_dense_reference_without_sinks_is_the_model(tiny):
  graphdef, params = tiny
  tokens_BT = random_tokens(5, 2, SEQ_LEN)
  np.testing.assert_allclose(dense_reference(graphdef, params, tokens_BT, 0),
                             teacher_forced(graphdef, params, tokens_BT), atol=1e-5, rtol=1e-5)


def test_compiles_once_per_chunk_shape(tiny):
  graphdef, params = tiny
  tokens_BT = random_tokens(11, 2, 200)
  cache = cache_lib.init_cache(CONFIG, 2, max_len=200)  # a shape no other test uses
  before = cache_lib.trace_count()
  # 37 tokens = 7 chunks of 5 and a padded one; then another prefill.
  _, cache = cache_lib.prefill(graphdef, params, cache, tokens_BT[:, :37], 5, logits="none")
  _, cache = cache_lib.prefill(graphdef, params, cache, tokens_BT[:, 37:51], 5, logits="none")
  assert cache_lib.trace_count() - before == 1
  for t in range(51, 131):
    _, cache = cache_lib.decode_step(graphdef, params, cache, tokens_BT[:, t])
  _, cache = cache_lib.prefill(graphdef, params, cache, tokens_BT[:, 131:163], 5, logits="none")
  for t in range(163, 170):
    _, cache = cache_lib.decode_step(graphdef, params, cache, tokens_BT[:, t])
  assert cache_lib.trace_count() - before == 2
  assert int(cache[0]["end"]) == 170


def test_rolling_cache_memory_does_not_grow():
  """Windowed layers keep w (+ sinks) slots whatever the stream length."""
  config = ModelConfig(vocab_size=data.VOCAB_SIZE, num_layers=2, d_model=16, num_heads=2,
                       num_kv_heads=1, mlp_dim=16, window_size=(4, 7), dtype="float32")
  graphdef, params = make_model(config, seed=2)
  for num_sinks in (0, 2):
    cache = cache_lib.init_cache(config, 1, num_sinks=num_sinks)
    shapes, size = jax.tree.map(jnp.shape, cache), cache_lib.cache_bytes(cache)
    assert [layer["k"].shape[1] for layer in cache] == [4 + num_sinks, 7 + num_sinks]
    assert cache_lib.capacity(config, cache) is None
    for length in (10, 100, 1000):
      _, cache = cache_lib.prefill(graphdef, params, cache, random_tokens(length, 1, length), 64,
                                   logits="none")
      assert jax.tree.map(jnp.shape, cache) == shapes
      assert cache_lib.cache_bytes(cache) == size
    assert int(cache[0]["end"]) == 1110
    assert set(np.asarray(cache[1]["pos"]).tolist()) == (
        set(range(1103, 1110)) | set(range(num_sinks)))


def test_full_layer_capacity_is_checked(tiny):
  graphdef, params = tiny
  cache = cache_lib.init_cache(CONFIG, 2, max_len=SEQ_LEN)
  assert [layer["k"].shape[1] for layer in cache] == [4, 7, SEQ_LEN]
  assert cache_lib.capacity(CONFIG, cache) == SEQ_LEN
  _, cache = cache_lib.prefill(graphdef, params, cache, random_tokens(0, 2, 35), 7, logits="none")
  with pytest.raises(ValueError, match=f"holds only {SEQ_LEN}"):
    cache_lib.prefill(graphdef, params, cache, random_tokens(0, 2, 7), 7)
  full = cache_lib.init_cache(CONFIG, 1, max_len=50, rolling=False)
  assert [layer["k"].shape[1] for layer in full] == [50, 50, 50]


def test_full_length_cache_gives_the_same_logits(tiny):
  graphdef, params = tiny
  tokens_BT = random_tokens(3, 2, SEQ_LEN)
  cache = cache_lib.init_cache(CONFIG, 2, max_len=SEQ_LEN, rolling=False)
  got_BTV, _ = cache_lib.prefill(graphdef, params, cache, tokens_BT, 6)
  np.testing.assert_allclose(np.asarray(got_BTV), teacher_forced(graphdef, params, tokens_BT),
                             atol=1e-4, rtol=1e-4)


def test_init_cache_errors():
  with pytest.raises(ValueError, match="max_len is required"):
    cache_lib.init_cache(CONFIG, 1)
  with pytest.raises(ValueError, match="num_sinks"):
    cache_lib.init_cache(CONFIG, 1, max_len=8, num_sinks=-1)
  with pytest.raises(ValueError, match="batch_size"):
    cache_lib.init_cache(CONFIG, 0, max_len=8)


def test_generate_is_greedy_decoding(tiny):
  graphdef, params = tiny
  prompt_BT = random_tokens(9, 2, SEQ_LEN - 8)
  cache = cache_lib.init_cache(CONFIG, 2, max_len=SEQ_LEN)
  last_BV, cache = cache_lib.prefill(graphdef, params, cache, prompt_BT, 7, logits="last")
  tokens_BN, _, cache = cache_lib.generate(graphdef, params, cache, last_BV, 8)
  assert tokens_BN.shape == (2, 8) and int(cache[0]["end"]) == SEQ_LEN
  greedy_BT = teacher_forced(graphdef, params, np.concatenate([prompt_BT, tokens_BN], 1))
  np.testing.assert_array_equal(greedy_BT.argmax(-1)[:, -9:-1], tokens_BN)


PASSKEY_CONFIG = ModelConfig(vocab_size=data.VOCAB_SIZE, num_layers=2, d_model=16, num_heads=2,
                             num_kv_heads=1, mlp_dim=16, window_size=(16, None),
                             dtype="float32")


def test_streaming_exact_match_equals_batch():
  from swa import train_lib  # pylint: disable=g-import-not-at-top
  graphdef, params = make_model(PASSKEY_CONFIG, seed=3)
  batch = data.passkey_batch(np.random.default_rng(0), 6, 70, np.full(6, 45))
  batch = {k: batch[k] for k in ("inputs", "targets", "answer_mask")}
  # A random model gets no key right; make examples 0, 2, 4 right by setting their answer to the
  # model's own greedy prediction, so both outcomes are compared.
  predicted_BT = teacher_forced(graphdef, params, batch["inputs"]).argmax(-1)
  rewrite_BT = (batch["answer_mask"] > 0) & (np.arange(6)[:, None] % 2 == 0)
  batch["targets"] = np.where(rewrite_BT, predicted_BT, batch["targets"]).astype(np.int32)
  expected_B = np.asarray(train_lib.exact_match_step(params, batch, graphdef=graphdef))
  got_B = cache_lib.streaming_exact_match(graphdef, params, batch, chunk_size=9)
  np.testing.assert_array_equal(got_B, expected_B)
  assert got_B[::2].all() and not got_B[1::2].any()


def test_evaluate_passkey_streaming_matches_batch_eval():
  from swa import train_lib  # pylint: disable=g-import-not-at-top
  graphdef, params = make_model(PASSKEY_CONFIG, seed=3)
  kwargs = dict(seq_len=70, distances=[42, 50], examples_per_distance=6, seed=1, batch_size=6)
  assert (cache_lib.evaluate_passkey_streaming(graphdef, params, chunk_size=9, **kwargs)
          == train_lib.evaluate_passkey(graphdef, params, **kwargs))
