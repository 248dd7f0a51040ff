"""The streaming path (swa/streaming.py) against teacher-forced logits and a dense reference.

Compilation dominates the run time on CPU, so the tests share a few shapes: batch 2, SEQ_LEN
tokens, full layers of max_len=SEQ_LEN.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swa import cache as cache_lib
from swa import data, evaluate, streaming
from swa.model import ModelConfig, Transformer, apply_rope

WINDOWS = (4, 7, None)  # two windowed layers and a full one
CONFIG = ModelConfig(
  vocab_size=data.VOCAB_SIZE,
  num_layers=3,
  d_model=32,
  num_heads=4,
  num_kv_heads=2,
  mlp_dim=64,
  window_size=WINDOWS,
  dtype="float32",
)
SEQ_LEN = 41  # > 4 x the largest window, a multiple of no chunk size below
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
  """The model's own logits [B, T, V] on whole sequences (no cache)."""
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
    h_BTD = block.attention_norm(x_BTD)
    q_BTNH = apply_rope(
      attn.query(h_BTD).reshape(B, T, c.num_heads, c.head_dim), positions_BT, c.rope_base
    )
    k_BSKH = apply_rope(
      attn.key(h_BTD).reshape(B, T, c.num_kv_heads, c.head_dim), positions_BT, c.rope_base
    )
    v_BSKH = attn.value(h_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
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
  layers, and iff j <= i in full ones. Written out here, independently of swa/attention.py.
  """
  return np.asarray(_dense_reference(graphdef, params, jnp.asarray(tokens_BT), num_sinks))


def stream_logits(
  graphdef, params, tokens_BT, chunk_size, prefill_len, num_sinks=0, config=CONFIG, rolling=True
):
  """Prefill tokens[:, :prefill_len] in chunks, decode the rest teacher forced: [B, T, V]."""
  B, T = tokens_BT.shape
  cache = cache_lib.init_cache(config, B, max_len=T, num_sinks=num_sinks, rolling=rolling)
  logits_BPV, cache = streaming.prefill(
    graphdef, params, cache, tokens_BT[:, :prefill_len], chunk_size
  )
  decoded = []
  for t in range(prefill_len, T):
    logits_BV, cache = streaming.decode_step(graphdef, params, cache, tokens_BT[:, t])
    decoded.append(logits_BV)
  return np.concatenate([np.asarray(logits_BPV), np.stack(decoded, 1)], 1), cache


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_prefill_then_decode_equals_teacher_forced(tiny, chunk_size):
  graphdef, params = tiny
  tokens_BT = random_tokens(chunk_size, 2, SEQ_LEN)
  got_BTV, cache = stream_logits(graphdef, params, tokens_BT, chunk_size, PREFILL_LEN)
  np.testing.assert_allclose(
    got_BTV, teacher_forced(graphdef, params, tokens_BT), atol=1e-4, rtol=1e-4
  )
  assert all(int(layer["end"]) == SEQ_LEN for layer in cache)


@pytest.mark.slow
@pytest.mark.parametrize("num_sinks", [0, 2])
def test_every_chunk_size_equals_the_dense_model(num_sinks):
  """Prefill in chunks of every size 1..T, then decode: the full forward, with and without sinks."""
  config = ModelConfig(
    vocab_size=data.VOCAB_SIZE,
    num_layers=2,
    d_model=16,
    num_heads=2,
    num_kv_heads=1,
    mlp_dim=16,
    window_size=(3, 5),
    dtype="float32",
  )
  graphdef, params = make_model(config, seed=4)
  T, prefill_len = 18, 14
  tokens_BT = random_tokens(4, 1, T)
  # Without sinks, the model's own forward on the whole sequence; with them, the dense reference.
  expected_BTV = (
    dense_reference(graphdef, params, tokens_BT, num_sinks)
    if num_sinks
    else teacher_forced(graphdef, params, tokens_BT)
  )
  for chunk_size in range(1, prefill_len + 1):
    got_BTV, _ = stream_logits(
      graphdef, params, tokens_BT, chunk_size, prefill_len, num_sinks=num_sinks, config=config
    )
    np.testing.assert_allclose(
      got_BTV, expected_BTV, atol=1e-4, rtol=1e-4, err_msg=f"chunk_size={chunk_size}"
    )


@pytest.mark.parametrize("num_sinks, chunk_size", [(2, 3), (2, 17), (3, SEQ_LEN)])
def test_sinks_equal_dense_explicit_mask(tiny, num_sinks, chunk_size):
  graphdef, params = tiny
  tokens_BT = random_tokens(7 * chunk_size + num_sinks, 2, SEQ_LEN)
  got_BTV, _ = stream_logits(
    graphdef, params, tokens_BT, chunk_size, PREFILL_LEN, num_sinks=num_sinks
  )
  np.testing.assert_allclose(
    got_BTV, dense_reference(graphdef, params, tokens_BT, num_sinks), atol=1e-4, rtol=1e-4
  )
  # Not vacuous: once the sinks leave the window the output differs from the windowed model's.
  plain_BTV = teacher_forced(graphdef, params, tokens_BT)
  assert np.abs(got_BTV - plain_BTV)[:, 12:].max() > 1e-3


def test_dense_reference_without_sinks_is_the_model(tiny):
  graphdef, params = tiny
  tokens_BT = random_tokens(5, 2, SEQ_LEN)
  np.testing.assert_allclose(
    dense_reference(graphdef, params, tokens_BT, 0),
    teacher_forced(graphdef, params, tokens_BT),
    atol=1e-5,
    rtol=1e-5,
  )


def test_compiles_once_per_chunk_shape(tiny):
  graphdef, params = tiny
  tokens_BT = random_tokens(11, 2, 200)
  cache = cache_lib.init_cache(CONFIG, 2, max_len=200)  # a shape no other test uses
  before = streaming.forward._cache_size()
  # 37 tokens = 7 chunks of 5 and a padded one; then another prefill.
  _, cache = streaming.prefill(graphdef, params, cache, tokens_BT[:, :37], 5, logits="none")
  _, cache = streaming.prefill(graphdef, params, cache, tokens_BT[:, 37:51], 5, logits="none")
  assert streaming.forward._cache_size() - before == 1
  for t in range(51, 131):
    _, cache = streaming.decode_step(graphdef, params, cache, tokens_BT[:, t])
  _, cache = streaming.prefill(graphdef, params, cache, tokens_BT[:, 131:163], 5, logits="none")
  for t in range(163, 170):
    _, cache = streaming.decode_step(graphdef, params, cache, tokens_BT[:, t])
  assert streaming.forward._cache_size() - before == 2
  assert int(cache[0]["end"]) == 170


def test_rolling_cache_memory_does_not_grow():
  """Windowed layers keep w (+ sinks) slots whatever the stream length."""
  config = ModelConfig(
    vocab_size=data.VOCAB_SIZE,
    num_layers=2,
    d_model=16,
    num_heads=2,
    num_kv_heads=1,
    mlp_dim=16,
    window_size=(4, 7),
    dtype="float32",
  )
  graphdef, params = make_model(config, seed=2)
  for num_sinks in (0, 2):
    cache = cache_lib.init_cache(config, 1, num_sinks=num_sinks)
    shapes, size = jax.tree.map(jnp.shape, cache), cache_lib.cache_bytes(cache)
    assert [layer["k"].shape[1] for layer in cache] == [4 + num_sinks, 7 + num_sinks]
    assert cache_lib.capacity(config, cache) is None
    for length in (10, 100, 1000):
      _, cache = streaming.prefill(
        graphdef, params, cache, random_tokens(length, 1, length), 64, logits="none"
      )
      assert jax.tree.map(jnp.shape, cache) == shapes
      assert cache_lib.cache_bytes(cache) == size
    assert int(cache[0]["end"]) == 1110
    assert set(np.asarray(cache[1]["pos"]).tolist()) == (
      set(range(1103, 1110)) | set(range(num_sinks))
    )


def test_full_layer_capacity_is_checked(tiny):
  graphdef, params = tiny
  cache = cache_lib.init_cache(CONFIG, 2, max_len=SEQ_LEN)
  assert [layer["k"].shape[1] for layer in cache] == [4, 7, SEQ_LEN]
  assert cache_lib.capacity(CONFIG, cache) == SEQ_LEN
  _, cache = streaming.prefill(graphdef, params, cache, random_tokens(0, 2, 35), 7, logits="none")
  with pytest.raises(ValueError, match=f"holds only {SEQ_LEN}"):
    streaming.prefill(graphdef, params, cache, random_tokens(0, 2, 7), 7)


def test_full_length_cache_gives_the_same_logits(tiny):
  graphdef, params = tiny
  tokens_BT = random_tokens(3, 2, SEQ_LEN)
  got_BTV, cache = stream_logits(graphdef, params, tokens_BT, 6, PREFILL_LEN, rolling=False)
  assert [layer["k"].shape[1] for layer in cache] == [SEQ_LEN] * 3
  np.testing.assert_allclose(
    got_BTV, teacher_forced(graphdef, params, tokens_BT), atol=1e-4, rtol=1e-4
  )


def test_generate_is_greedy_decoding(tiny):
  graphdef, params = tiny
  prompt_BT = random_tokens(9, 2, SEQ_LEN - 8)
  cache = cache_lib.init_cache(CONFIG, 2, max_len=SEQ_LEN)
  last_BV, cache = streaming.prefill(graphdef, params, cache, prompt_BT, 7, logits="last")
  tokens_BN, _, cache = streaming.generate(graphdef, params, cache, last_BV, 8)
  assert tokens_BN.shape == (2, 8) and int(cache[0]["end"]) == SEQ_LEN
  greedy_BT = teacher_forced(graphdef, params, np.concatenate([prompt_BT, tokens_BN], 1))
  np.testing.assert_array_equal(greedy_BT.argmax(-1)[:, -9:-1], tokens_BN)
  none_BN, _, cache = streaming.generate(graphdef, params, cache, last_BV, 0)
  assert none_BN.shape == (2, 0) and int(cache[0]["end"]) == SEQ_LEN
  with pytest.raises(ValueError, match=f"would reach {SEQ_LEN + 1} tokens"):
    streaming.generate(graphdef, params, cache, last_BV, 1)
  with pytest.raises(ValueError, match=r"num_tokens=-1 must be an integer >= 0\."):
    streaming.generate(graphdef, params, cache, last_BV, -1)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(chunk_size=0), r"chunk_size=0 must be an integer >= 1\."),
    (dict(chunk_size=4, logits="first"), "logits must be one of"),
  ],
)
def test_prefill_errors(tiny, kwargs, match):
  graphdef, params = tiny
  cache = cache_lib.init_cache(CONFIG, 2, max_len=SEQ_LEN)
  with pytest.raises(ValueError, match=match):
    streaming.prefill(graphdef, params, cache, random_tokens(0, 2, 5), **kwargs)


PASSKEY_CONFIG = ModelConfig(
  vocab_size=data.VOCAB_SIZE,
  num_layers=2,
  d_model=16,
  num_heads=2,
  num_kv_heads=1,
  mlp_dim=16,
  window_size=(16, None),
  dtype="float32",
)


def test_streaming_exact_match_equals_batch():
  graphdef, params = make_model(PASSKEY_CONFIG, seed=3)
  batch = data.passkey_batch(np.random.default_rng(0), 6, 70, np.full(6, 45))
  batch = {k: batch[k] for k in ("inputs", "targets", "answer_mask")}
  # A random model gets no key right; make examples 0, 2, 4 right by setting their answer to the
  # model's own greedy prediction, so both outcomes are compared.
  predicted_BT = teacher_forced(graphdef, params, batch["inputs"]).argmax(-1)
  rewrite_BT = (batch["answer_mask"] > 0) & (np.arange(6)[:, None] % 2 == 0)
  batch["targets"] = np.where(rewrite_BT, predicted_BT, batch["targets"]).astype(np.int32)
  expected_B = np.asarray(evaluate.exact_match_step(params, batch, graphdef=graphdef))
  got_B = streaming.streaming_exact_match(graphdef, params, batch, chunk_size=9)
  np.testing.assert_array_equal(got_B, expected_B)
  assert got_B[::2].all() and not got_B[1::2].any()


def test_passkey_accuracy_streaming_matches_batch_eval():
  graphdef, params = make_model(PASSKEY_CONFIG, seed=3)
  kwargs = dict(train_seq_len=70, examples_per_distance=6, seed=1)
  assert streaming.passkey_accuracy_streaming(
    graphdef, params, [42, 50], chunk_size=9, **kwargs
  ) == evaluate.passkey_accuracy(graphdef, params, [42, 50], **kwargs)


def test_a_model_trained_with_sinks_sees_them_in_batch_and_stream():
  """model.num_sinks=2: the batch forward is the dense sink mask, and a cache built with the
  model's own sinks (num_sinks=None) streams the same logits; without them it differs."""
  config = dataclasses.replace(CONFIG, num_sinks=2)
  graphdef, params = make_model(config)
  tokens_BT = random_tokens(5, 2, SEQ_LEN)
  batch_BTV = teacher_forced(graphdef, params, tokens_BT)
  np.testing.assert_allclose(
    batch_BTV, dense_reference(graphdef, params, tokens_BT, 2), atol=1e-4, rtol=1e-4
  )
  plain_BTV = dense_reference(graphdef, params, tokens_BT, 0)
  assert np.abs(batch_BTV - plain_BTV)[:, 8:].max() > 1e-3  # the sinks are in use
  streamed_BTV, _ = stream_logits(
    graphdef, params, tokens_BT, 7, PREFILL_LEN, num_sinks=None, config=config
  )
  np.testing.assert_allclose(streamed_BTV, batch_BTV, atol=1e-4, rtol=1e-4)
