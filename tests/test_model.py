"""The Transformer: shapes, per-layer windows, locality, and implementation agreement."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swa import cache as cache_lib
from swa.model import ModelConfig, Transformer, apply_rope, layer_windows

CONFIG = ModelConfig(
  vocab_size=72,
  num_layers=3,
  d_model=32,
  num_heads=4,
  num_kv_heads=2,
  mlp_dim=64,
  window_size=5,
  attention="chunked",
  block_size=8,
)


def make(config=CONFIG, seed=0):
  return Transformer(config, rngs=nnx.Rngs(seed))


def tokens(B, T, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, CONFIG.vocab_size)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(dtype):
  model = make(dataclasses.replace(CONFIG, dtype=dtype))
  logits = model(tokens(2, 21))
  assert logits.shape == (2, 21, CONFIG.vocab_size) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.mark.parametrize(
  "window, expected",
  [
    (8, (8, 8, 8)),
    (None, (None, None, None)),
    ([4, None, 2], (4, None, 2)),
    ("16,none,32", (16, None, 32)),
    ("full, 3 ,4", (None, 3, 4)),
    ("none", (None, None, None)),
    ("64", (64, 64, 64)),
  ],
)
def test_layer_windows(window, expected):
  assert layer_windows(window, 3) == expected


@pytest.mark.parametrize(
  "window, match",
  [
    ((4, 4), "lists 2 windows for 3 layers"),
    (0, "must be >= 1"),
    ((4, 0, 4), "must be >= 1"),
    (2.0, "positive integer"),
    ("abc", "is not a window"),
    ("8,,8", "is not a window"),
  ],
)
def test_bad_windows_raise(window, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CONFIG, window_size=window)


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("num_heads", 3, "must split into 3 heads"),
    ("num_kv_heads", 3, "multiple of"),
    ("attention", "flash", "model.attention must be one of"),
    ("dtype", "int8", "model.dtype"),
    ("num_layers", 0, "model.num_layers must be a positive integer"),
    ("rope_base", 0.0, "model.rope_base must be a number > 1, got 0.0"),
    ("rope_base", float("nan"), "model.rope_base must be a number > 1"),
    ("num_sinks", -1, "model.num_sinks must be an integer >= 0, got -1"),
    ("block_size", 0, "model.block_size must be a positive integer or None, got 0"),
    ("position_encoding", "alibi", r"model.position_encoding must be one of \('rope', 'none'\)"),
    ("rope_scale", 0.5, "model.rope_scale must be a number >= 1, got 0.5"),
    ("rope_scale", float("nan"), "model.rope_scale must be a number >= 1"),
    ("rope_scale", True, "model.rope_scale must be a number >= 1, got True"),
  ],
)
def test_bad_config_raises(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CONFIG, **{field: value})


def test_chunked_and_reference_logits_agree():
  config = dataclasses.replace(CONFIG, window_size=(3, None, 7))
  chunked = make(config)
  reference = make(dataclasses.replace(config, attention="reference"))
  x = tokens(2, 37, seed=1)
  np.testing.assert_allclose(chunked(x), reference(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("windows", [(5, 5, 5), (2, 6, 3)])
def test_locality_at_model_level(windows):
  """Logits at t depend on the input at s iff t - sum(w_l - 1) <= s <= t."""
  model = make(dataclasses.replace(CONFIG, window_size=windows))
  T, t = 30, 25
  x_BTD = model.embed(tokens(1, T, seed=2))
  grad = jax.grad(lambda x: model.from_embeddings(x)[0, t].sum())(x_BTD)
  depends = np.abs(np.asarray(grad[0])).sum(-1) > 0
  reach = sum(w - 1 for w in windows)
  expected = (np.arange(T) <= t) & (np.arange(T) >= t - reach)
  np.testing.assert_array_equal(depends, expected)


def test_positions_shift_nothing_but_rope_phase():
  """With RoPE, a windowed model gives the same logits at any absolute offset."""
  model = make()
  x = tokens(1, 24, seed=3)
  base = model(x)
  shifted = model(x, positions_BT=jnp.arange(24)[None] + 1000)
  np.testing.assert_allclose(base, shifted, atol=2e-3, rtol=2e-3)


def test_nope_logits_do_not_depend_on_absolute_position():
  """NoPE: no rotary phase, so positions p and p + 100 give the very same logits."""
  model = make(dataclasses.replace(CONFIG, position_encoding="none", window_size=(3, None, 7)))
  x = tokens(2, 24, seed=3)
  np.testing.assert_array_equal(model(x), model(x, positions_BT=jnp.arange(24)[None] + 100))


def test_nope_refuses_a_rope_scale():
  with pytest.raises(ValueError, match="model.rope_scale=2.0 needs model.position_encoding='rope'"):
    dataclasses.replace(CONFIG, position_encoding="none", rope_scale=2.0)


def test_rope_scale_is_rope_at_positions_over_scale():
  """Position interpolation: rope_scale=2 at positions p is RoPE at p / 2, bit for bit."""
  x_BTNH = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 3, 8))
  p_BT = jnp.broadcast_to(jnp.arange(9) * 7, (2, 9))
  np.testing.assert_array_equal(
    apply_rope(x_BTNH, p_BT, 10_000.0, 2.0), apply_rope(x_BTNH, p_BT / 2, 10_000.0)
  )
  np.testing.assert_array_equal(
    apply_rope(x_BTNH, p_BT, 10_000.0, 1.0), apply_rope(x_BTNH, p_BT, 10_000.0)
  )
  # The model: same parameters, scale 2 at even positions 2t = scale 1 at positions t.
  scaled = make(dataclasses.replace(CONFIG, rope_scale=2.0))
  plain = make()
  x = tokens(1, 20, seed=5)
  np.testing.assert_array_equal(scaled(x, positions_BT=2 * jnp.arange(20)[None]), plain(x))
  assert not np.array_equal(scaled(x), plain(x))


@nnx.jit
def _forward(model, tokens_BT, cache=None, num_valid=None):
  return model(tokens_BT, cache=cache, num_valid=num_valid)


@pytest.mark.parametrize(
  "positions", [{}, {"position_encoding": "none"}, {"rope_scale": 2.0}], ids=str
)
def test_forward_with_a_cache_returns_logits_and_the_new_cache(positions):
  """One forward: without a cache, logits; with one, (logits, new cache) continuing the stream.

  With RoPE, NoPE and position interpolation alike (the cache holds keys after RoPE)."""
  config = dataclasses.replace(CONFIG, window_size=(3, None, 7), **positions)
  model = make(config)
  x = tokens(2, 16, seed=4)
  cache = cache_lib.init_cache(config, 2, max_len=16)
  first, cache = _forward(model, x[:, :8], cache)
  second, cache = _forward(model, x[:, 8:], cache)
  assert [int(layer["end"]) for layer in cache] == [16, 16, 16]
  np.testing.assert_allclose(
    jnp.concatenate([first, second], 1), _forward(model, x), atol=1e-4, rtol=1e-4
  )
  # Padding after num_valid real tokens is neither stored nor counted.
  cache = cache_lib.init_cache(config, 2, max_len=16)
  padded, cache = _forward(model, x[:, :8], cache, jnp.asarray(5, jnp.int32))
  assert int(cache[0]["end"]) == 5 and int((cache[1]["pos"] >= 0).sum()) == 5
  np.testing.assert_allclose(padded[:, :5], first[:, :5], atol=1e-5, rtol=1e-5)


def test_forward_with_a_cache_rejects_positions_and_wrong_layers():
  model = make()
  cache = cache_lib.init_cache(CONFIG, 1)
  with pytest.raises(ValueError, match="positions_BT must be None when a cache is given"):
    model(tokens(1, 4), positions_BT=jnp.arange(4)[None], cache=cache)
  with pytest.raises(ValueError, match="The cache has 2 layers, the model 3"):
    model(tokens(1, 4), cache=cache[:2])
  with pytest.raises(ValueError, match="num_valid is only meaningful with a cache"):
    model(tokens(1, 4), num_valid=2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedding_is_the_table_row_and_its_gradient_is_no_scatter(dtype):
  """embed_tokens equals indexing the table, but its gradient is a matmul, not a scatter-add
  (which serialises on a GPU's atomics over a 72-row table)."""
  model = make(dataclasses.replace(CONFIG, dtype=dtype))
  x = tokens(2, 9, seed=3)
  table = model.embed.embedding[...]
  np.testing.assert_array_equal(model.embed_tokens(x), table[x].astype(dtype))
  graphdef, params = nnx.split(model, nnx.Param)
  loss = lambda p: nnx.merge(graphdef, p).embed_tokens(x).astype(jnp.float32).sum()
  assert "scatter" not in str(jax.make_jaxpr(jax.grad(loss))(params))
  # Each row's gradient counts the row's tokens (d_model ones per use).
  grad = jax.grad(loss)(params)["embed"]["embedding"][...]
  np.testing.assert_array_equal(grad[:, 0], np.bincount(np.ravel(x), minlength=grad.shape[0]))


@pytest.mark.parametrize("attention", ["chunked", "reference"])
def test_packed_documents_give_each_document_its_own_logits(attention):
  """Two documents packed into one row with segment ids and per-document positions give, per
  document, the logits of running it alone (and remat changes nothing)."""
  from swa.model import segment_positions

  lengths = (13, 24)  # T = 37; both longer than the window (5) of every layer
  for remat in (False, True):
    model = make(dataclasses.replace(CONFIG, attention=attention, remat=remat))
    docs = [tokens(1, n, seed=i + 1) for i, n in enumerate(lengths)]
    seg_BT = jnp.asarray(np.repeat([0, 1], lengths)[None], jnp.int32)
    positions_BT = segment_positions(seg_BT)
    np.testing.assert_array_equal(positions_BT[0], np.r_[np.arange(13), np.arange(24)])
    packed = model(jnp.concatenate(docs, axis=1), positions_BT, segment_ids_BT=seg_BT)
    np.testing.assert_allclose(packed[:, :13], model(docs[0]), atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(packed[:, 13:], model(docs[1]), atol=2e-5, rtol=2e-5)
    # Without the segment ids the second document sees the end of the first.
    assert (
      np.abs(np.asarray(model(jnp.concatenate(docs, axis=1))[:, 13:] - packed[:, 13:])).max() > 1e-3
    )


def test_segment_positions_restart_at_each_segment():
  from swa.model import segment_positions

  seg = np.array([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 7, 7]])
  np.testing.assert_array_equal(segment_positions(seg), [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]])


def test_segment_ids_with_a_cache_are_refused():
  model = make()
  cache = cache_lib.init_cache(CONFIG, 1, 16)
  with pytest.raises(ValueError, match="segment_ids_BT .* not a cached stream"):
    model(tokens(1, 4), cache=cache, segment_ids_BT=jnp.zeros((1, 4), jnp.int32))
