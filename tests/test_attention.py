"""Every attention implementation against the dense reference, plus the mask rule, the contract's
positions (offsets, key positions, sinks) and errors; the registry is tests/test_registry.py."""

import ast
import functools
import itertools
import pathlib

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention
from swa.attention import create_sliding_window_mask, sliding_window_attention, visible

SEED_EXAMPLE = np.array(
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

# Implementations that run here; cuDNN joins on a GPU.
FAST_IMPLEMENTATIONS = ["chunked"] + (["cudnn"] if attention.cudnn_available() else [])


def _registered_with(feature):
  """Registered implementations, other than the reference, that declare `feature`."""
  return [
    name
    for name in attention.implementations()[1:]
    if name != "reference" and feature in attention.implementation_features(name)
  ]


# Every registered implementation with offsets is checked against the reference with them.
OFFSET_IMPLEMENTATIONS = _registered_with("offsets")

_counter = itertools.count()


def random_qkv(B, T, N, K, H, D, dtype=jnp.float32):
  """Fresh random inputs for every call (a new key each time)."""
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(next(_counter)), 3)
  return (
    jax.random.normal(kq, (B, T, N, H), dtype),
    jax.random.normal(kk, (B, T, K, H), dtype),
    jax.random.normal(kv, (B, T, K, D), dtype),
  )


def test_mask_matches_seed_example():
  np.testing.assert_array_equal(np.asarray(create_sliding_window_mask(6, 3)), SEED_EXAMPLE)


@pytest.mark.parametrize("window_size", [None, 7, 100])
def test_mask_full_window_is_causal(window_size):
  np.testing.assert_array_equal(
    np.asarray(create_sliding_window_mask(7, window_size)), np.tril(np.ones((7, 7), bool))
  )


def test_mask_counts_window_keys():
  mask = np.asarray(create_sliding_window_mask(40, 9))
  np.testing.assert_array_equal(mask.sum(1), np.minimum(np.arange(40) + 1, 9))


# (B, T, N, K, H, D, window, block_size): odd lengths, T < w, T = w, T not a
# multiple of the block, w = 1, GQA and MQA, D != H, full attention. The default run keeps one of
# each kind (GQA, w = 1, H != D, full attention); the others (7-11 s each on 2 cores) run with -m slow.
_slow = pytest.mark.slow
SHAPES = [
  (2, 37, 4, 2, 8, 8, 5, None),
  pytest.param((1, 100, 2, 1, 16, 8, 33, 16), marks=_slow),
  (2, 64, 2, 2, 8, 8, 1, 8),
  pytest.param((1, 50, 2, 2, 8, 8, 64, None), marks=_slow),
  (1, 48, 3, 3, 8, 16, 48, 16),
  pytest.param((1, 77, 4, 4, 8, 8, 20, 8), marks=_slow),
  (2, 33, 4, 1, 8, 8, None, 8),
  pytest.param((1, 130, 2, 2, 8, 8, 128, 32), marks=_slow),
]


def _loss(impl, window, **kwargs):
  def loss(q, k, v):
    out = sliding_window_attention(q, k, v, window, implementation=impl, **kwargs)
    # A fixed random projection so every output element gets its own gradient; drawn in
    # float32 so a bfloat16 implementation and the float32 reference get the same one.
    weights = jax.random.normal(jax.random.PRNGKey(7), out.shape, jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * weights)

  return loss


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", SHAPES)
# Eager chunked is slow to dispatch (about 20 s a shape on 2 busy cores): those run with -m slow.
@pytest.mark.parametrize("use_jit", [pytest.param(False, marks=pytest.mark.slow), True])
def test_matches_reference_forward_and_gradients(impl, shape, use_jit):
  B, T, N, K, H, D, window, block = shape
  dtype = jnp.bfloat16 if impl == "cudnn" else jnp.float32
  q, k, v = random_qkv(B, T, N, K, H, D, dtype)
  kwargs = {"block_size": block} if impl == "chunked" else {}
  maybe_jit = jax.jit if use_jit else (lambda f: f)
  f32 = lambda xs: [x.astype(jnp.float32) for x in xs]
  if impl == "cudnn" and (H != D or T % 2):
    with pytest.raises(ValueError, match="implementation='cudnn' is not available"):
      sliding_window_attention(q, k, v, window, implementation="cudnn")
    return

  out = maybe_jit(
    lambda q, k, v: sliding_window_attention(q, k, v, window, implementation=impl, **kwargs)
  )(q, k, v)
  ref = sliding_window_attention(*f32((q, k, v)), window, implementation="reference")
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=tol, rtol=tol)

  grads = maybe_jit(jax.grad(_loss(impl, window, **kwargs), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.grad(_loss("reference", window), argnums=(0, 1, 2))(*f32((q, k, v)))
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(
      np.asarray(g, np.float32), r, atol=10 * tol, rtol=10 * tol, err_msg=f"d/d{name}"
    )


@pytest.mark.parametrize("blocks_per_step", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_chunked_blocks_per_step_matches_reference(blocks_per_step):
  q, k, v = random_qkv(2, 77, 4, 2, 8, 8)
  kwargs = dict(block_size=8, blocks_per_step=blocks_per_step)
  out = jax.jit(lambda *a: sliding_window_attention(*a, 20, implementation="chunked", **kwargs))(
    q, k, v
  )
  np.testing.assert_allclose(
    out, sliding_window_attention(q, k, v, 20, implementation="reference"), atol=1e-5, rtol=1e-5
  )
  grads = jax.jit(jax.grad(_loss("chunked", 20, **kwargs), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.grad(_loss("reference", 20), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_three_dim_form_is_single_head(impl):
  q, k, v = random_qkv(2, 29, 1, 1, 8, 8)
  out3 = sliding_window_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], 6, implementation=impl)
  out4 = sliding_window_attention(q, k, v, 6, implementation="reference")
  assert out3.shape == (2, 29, 8)
  np.testing.assert_allclose(out3, out4[:, :, 0], atol=1e-5, rtol=1e-5)


def test_bfloat16_chunked_is_close_and_finite():
  q, k, v = random_qkv(2, 65, 4, 2, 16, 16, jnp.bfloat16)
  out = sliding_window_attention(q, k, v, 1, implementation="chunked", block_size=16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(out, np.float32), np.asarray(v.repeat(2, axis=2), np.float32)
  )
  out = sliding_window_attention(q, k, v, 17, implementation="chunked", block_size=16)
  ref = sliding_window_attention(
    *(x.astype(jnp.float32) for x in (q, k, v)), 17, implementation="reference"
  )
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2, rtol=3e-2)


def test_scale_argument():
  q, k, v = random_qkv(1, 20, 2, 2, 8, 8)
  out = sliding_window_attention(q, k, v, 5, implementation="chunked", scale=0.5)
  ref = sliding_window_attention(q * 0.5 * np.sqrt(8), k, v, 5, implementation="reference")
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("window", [1, 4, None])
def test_locality_through_gradients(impl, window):
  """d out[i] / d k[j] and d v[j] are non-zero exactly for j in [i - w + 1, i]."""
  T = 19
  q, k, v = random_qkv(1, T, 2, 1, 4, 4)
  attend = lambda k, v: sliding_window_attention(
    q, k, v, window, implementation=impl, **({"block_size": 8} if impl == "chunked" else {})
  )
  jac_k, jac_v = jax.jacrev(attend, argnums=(0, 1))(k, v)  # [1, T, N, D, 1, T, K, H]
  expected = np.asarray(create_sliding_window_mask(T, window))
  nonzero = lambda jac: np.abs(np.asarray(jac)[0, :, :, :, 0]).sum(axis=(1, 2, 4, 5)) > 0
  np.testing.assert_array_equal(nonzero(jac_v), expected)
  # A query that sees a single key has a constant softmax: no gradient to keys.
  one_key = expected.sum(axis=1, keepdims=True) == 1
  np.testing.assert_array_equal(nonzero(jac_k), expected & ~one_key)


@pytest.mark.slow
@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  T=st.integers(1, 70), window=st.integers(1, 80), block=st.sampled_from([8, 16, 24])
)
def test_chunked_property(T, window, block):
  q, k, v = random_qkv(1, T, 2, 1, 8, 8)
  out = sliding_window_attention(q, k, v, window, implementation="chunked", block_size=block)
  ref = sliding_window_attention(q, k, v, window, implementation="reference")
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_auto_rule_on_this_backend():
  q, k, v = random_qkv(1, 16, 2, 2, 8, 8)
  resolve = lambda w: attention.resolve_implementation("auto", q, k, v, w)
  if attention.cudnn_available():
    pytest.skip("auto picks cudnn for 16-bit inputs only; this checks the CPU rule")
  assert resolve(4) == "chunked"
  assert resolve(16) == "reference"
  assert resolve(None) == "reference"


@pytest.mark.parametrize(
  "window, match",
  [
    (0, "must be >= 1"),
    (-3, "must be >= 1"),
    (2.5, "positive integer"),
    (True, "positive integer"),
    ("8", "positive integer"),
  ],
)
def test_bad_window_raises(window, match):
  q, k, v = random_qkv(1, 8, 1, 1, 4, 4)
  with pytest.raises(ValueError, match=match):
    sliding_window_attention(q, k, v, window)
  with pytest.raises(ValueError, match=match):
    create_sliding_window_mask(8, window)


@pytest.mark.parametrize(
  "shapes, match",
  [
    (((1, 8, 2, 4), (1, 8, 4), (1, 8, 4)), "all be"),
    (((1, 8, 4),) * 2 + ((2, 8, 4),), "batch size"),
    (((1, 8, 2, 4), (1, 9, 2, 4), (1, 9, 2, 4)), "equal query and key/value lengths"),
    (((1, 8, 2, 4), (1, 8, 2, 4), (1, 9, 2, 4)), "equal query and key/value lengths"),
    (((1, 8, 3, 4), (1, 8, 2, 4), (1, 8, 2, 4)), "multiple of the key/value heads"),
    (((1, 8, 2, 4), (1, 8, 2, 4), (1, 8, 1, 4)), "same number of heads"),
    (((1, 8, 2, 4), (1, 8, 2, 6), (1, 8, 2, 4)), "share the head dim"),
    (((8, 4),) * 3, "all be"),
  ],
)
def test_bad_shapes_raise(shapes, match):
  q, k, v = (jnp.ones(s) for s in shapes)
  with pytest.raises(ValueError, match=match):
    sliding_window_attention(q, k, v, 4)


def test_bad_implementation_and_block_raise():
  q, k, v = random_qkv(1, 8, 1, 1, 4, 4)
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    sliding_window_attention(q, k, v, 4, implementation="flash")
  with pytest.raises(ValueError, match="block_size must be >= 1"):
    sliding_window_attention(q, k, v, 4, implementation="chunked", block_size=0)


@pytest.mark.skipif(attention.cudnn_available(), reason="checks the error off-GPU")
def test_cudnn_off_gpu_raises():
  q, k, v = random_qkv(1, 8, 1, 1, 8, 8, jnp.bfloat16)
  with pytest.raises(ValueError, match="implementation='cudnn' is not available: it needs a GPU"):
    sliding_window_attention(q, k, v, 4, implementation="cudnn")


def _temp_bytes(impl, T, window=64):
  """Compiled temporary memory of forward + backward (no timing)."""
  spec = jax.ShapeDtypeStruct((1, T, 4, 32), jnp.float32)
  grad = jax.jit(jax.grad(_loss(impl, window), argnums=(0, 1, 2)))
  return grad.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes


def test_memory_grows_linearly_for_chunked_and_quadratically_for_reference():
  lengths = [512, 1024, 2048]
  chunked = [_temp_bytes("chunked", T) for T in lengths]
  reference = [_temp_bytes("reference", T) for T in lengths]
  for small, large in zip(chunked, chunked[1:]):
    assert large / small < 2.3, chunked
  for small, large in zip(reference, reference[1:]):
    assert large / small > 3.5, reference


# ------------------------------------------------------------------ the mask rule


def _visible_by_hand(i, j, w, sinks):
  """The rule in words, one pair at a time: a real, past key inside the window or a sink."""
  return j >= 0 and j <= i and (w is None or j > i - w or j < sinks)


@pytest.mark.parametrize("window, sinks", [(None, 0), (1, 0), (3, 0), (3, 2), (None, 2), (6, 9)])
def test_visible_matches_the_rule_pair_by_pair(window, sinks):
  q_pos = np.arange(-2, 12)
  k_pos = np.arange(-3, 14)
  got = np.asarray(visible(q_pos[:, None], k_pos[None, :], window, sinks))
  want = np.array([[_visible_by_hand(i, j, window, sinks) for j in k_pos] for i in q_pos])
  np.testing.assert_array_equal(got, want)


def test_mask_is_the_rule_on_positions():
  positions = np.arange(11)
  np.testing.assert_array_equal(
    np.asarray(create_sliding_window_mask(11, 4)),
    np.asarray(visible(positions[:, None], positions[None, :], 4)),
  )


# -------------------------------------------------- positions: offsets, slots, sinks


def _attention_by_hand(q, k, v, window, q_pos, k_pos_BS, sinks=0):
  """Numpy float64 attention with the mask from `_visible_by_hand` (no shared code)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  out = np.zeros((B, T, N, v.shape[-1]))
  for b, t, n in itertools.product(range(B), range(T), range(N)):
    allowed = np.array(
      [_visible_by_hand(q_pos[t], k_pos_BS[b][s], window, sinks) for s in range(S)]
    )
    if not allowed.any():
      continue
    logits = k[b, :, n // (N // K)] @ q[b, t, n] / np.sqrt(H)
    p = np.where(allowed, np.exp(logits - logits[allowed].max()), 0.0)
    out[b, t, n] = p @ v[b, :, n // (N // K)] / p.sum()
  return out


# (T, S, q_offset, k_offset, window): a halo before the queries (k_offset None: the keys end
# where the queries end), padding at negative positions, keys after the last query, fewer keys
# than queries, no key visible at all, window 1, window >= S, full attention.
OFFSET_CASES = [
  (9, 14, 0, None, 4),
  (9, 14, 20, None, 4),
  (10, 10, 5, 0, 3),
  (7, 12, 2, -3, 5),
  (8, 13, 4, 1, 20),
  (11, 5, 10, 12, 3),
  (6, 4, 0, 30, 2),
  (13, 17, 3, None, 1),
  (12, 20, 8, None, None),
]


@pytest.mark.parametrize("T, S, q_offset, k_offset, window", OFFSET_CASES)
def test_reference_offsets_follow_the_rule(T, S, q_offset, k_offset, window):
  q, k, v = random_qkv(2, T, 4, 2, 8, 8)
  k, v = (jax.random.normal(jax.random.PRNGKey(S), (2, S, 2, 8)) + x[:, :1] for x in (k, v))
  out = sliding_window_attention(
    q, k, v, window, implementation="reference", q_offset=q_offset, k_offset=k_offset
  )
  k0 = q_offset + T - S if k_offset is None else k_offset
  k_pos = np.broadcast_to(k0 + np.arange(S), (2, S))
  np.testing.assert_allclose(
    out, _attention_by_hand(q, k, v, window, q_offset + np.arange(T), k_pos), atol=1e-5, rtol=1e-5
  )


@pytest.mark.parametrize("impl", OFFSET_IMPLEMENTATIONS)
@pytest.mark.parametrize("T, S, q_offset, k_offset, window", OFFSET_CASES)
def test_offsets_match_reference_forward_and_gradients(impl, T, S, q_offset, k_offset, window):
  B, N, K, H = 2, 4, 2, 8
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(T * 100 + S), 3)
  q = jax.random.normal(kq, (B, T, N, H))
  k, v = jax.random.normal(kk, (B, S, K, H)), jax.random.normal(kv, (B, S, K, H))
  place = dict(q_offset=q_offset, k_offset=k_offset)
  out = jax.jit(
    functools.partial(
      sliding_window_attention, window_size=window, implementation=impl, block_size=4, **place
    )
  )(q, k, v)
  ref = sliding_window_attention(q, k, v, window, implementation="reference", **place)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  grads = jax.jit(jax.grad(_loss(impl, window, block_size=4, **place), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.grad(_loss("reference", window, **place), argnums=(0, 1, 2))(q, k, v)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=f"d/d{name}")


@pytest.mark.parametrize("impl", OFFSET_IMPLEMENTATIONS)
def test_traced_query_offset_with_keys_ending_at_the_queries(impl):
  """Sequence parallelism's call: q_offset is traced (the shard index), k_offset None."""
  q, k, v = random_qkv(2, 8, 2, 1, 8, 8)
  k_halo, v_halo = (jnp.concatenate([x[:, :5], x], axis=1) for x in (k, v))
  attend = lambda impl: jax.jit(
    lambda q, k, v, start: sliding_window_attention(q, k, v, 6, implementation=impl, q_offset=start)
  )
  for start in (0, 3, 40):
    np.testing.assert_allclose(
      attend(impl)(q, k_halo, v_halo, start),
      attend("reference")(q, k_halo, v_halo, start),
      atol=1e-5,
      rtol=1e-5,
    )


def test_key_positions_follow_the_rule_in_any_slot_order():
  """A cache's slots: stored positions in ring order, empty slots (-1), per-row positions."""
  B, T, S, w = 2, 3, 7, 4
  q, _, _ = random_qkv(B, T, 4, 2, 8, 8)
  k, v = (jax.random.normal(jax.random.PRNGKey(s), (B, S, 2, 8)) for s in (11, 12))
  k_pos_BS = np.array([[8, 9, 3, 4, 5, -1, 10], [6, -1, -1, 2, 7, 8, 9]], np.int32)
  out = sliding_window_attention(
    q, k, v, w, implementation="reference", q_offset=8, k_positions=k_pos_BS
  )
  np.testing.assert_allclose(
    out, _attention_by_hand(q, k, v, w, 8 + np.arange(T), k_pos_BS), atol=1e-5, rtol=1e-5
  )
  # One [S] vector serves every row, and permuting slots (with their positions) changes nothing.
  perm = np.array([6, 2, 0, 5, 3, 1, 4])
  one = sliding_window_attention(
    q, k, v, w, implementation="reference", q_offset=8, k_positions=k_pos_BS[0]
  )
  permuted = sliding_window_attention(
    q, k[:, perm], v[:, perm], w, implementation="auto", q_offset=8, k_positions=k_pos_BS[0][perm]
  )
  np.testing.assert_allclose(one[0], out[0], atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(permuted, one, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("window, sinks", [(3, 2), (1, 4), (None, 3), (20, 2)])
def test_sinks_follow_the_rule(window, sinks):
  q, k, v = random_qkv(1, 16, 2, 1, 8, 8)
  positions = np.arange(16)
  out = sliding_window_attention(q, k, v, window, implementation="reference", num_sinks=sinks)
  want = _attention_by_hand(q, k, v, window, positions, positions[None], sinks)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  traced = jax.jit(lambda q, k, v, s: sliding_window_attention(q, k, v, window, num_sinks=s))
  np.testing.assert_allclose(traced(q, k, v, sinks), want, atol=1e-5, rtol=1e-5)


def test_placement_defaults_are_self_attention():
  q, k, v = random_qkv(1, 12, 2, 2, 8, 8)
  plain = sliding_window_attention(q, k, v, 5, implementation="chunked")
  for place in (
    dict(q_offset=0),
    dict(q_offset=7),
    dict(q_offset=7, k_offset=7),
    dict(num_sinks=0),
  ):
    np.testing.assert_allclose(
      sliding_window_attention(q, k, v, 5, **place), plain, atol=1e-6, rtol=1e-6, err_msg=str(place)
    )


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(implementation="chunked", k_positions=np.arange(8)), r"does not support \['key_pos"),
    (dict(implementation="chunked", num_sinks=1), r"does not support \['sinks'\]"),
    (dict(implementation="cudnn", q_offset=3, k_offset=1), r"does not support \['offsets'\]"),
    (dict(k_offset=1, k_positions=np.arange(8)), "k_offset or k_positions, not both"),
    (dict(k_positions=np.arange(9)), r"k_positions must be ints of shape \[S\]"),
    (dict(k_positions=np.arange(8.0)), "k_positions must be ints"),
    (dict(q_offset=1.5), "q_offset must be an integer scalar"),
    (dict(q_offset=np.arange(2)), "q_offset must be an integer scalar"),
    (dict(num_sinks=-1), "num_sinks must be >= 0"),
    (dict(implementation="auto", mesh=None), r"No implementation that auto may pick supports"),
  ],
)
def test_bad_placement_and_features_raise(kwargs, match):
  q, k, v = random_qkv(1, 8, 1, 1, 4, 4)
  with pytest.raises(ValueError, match=match):
    sliding_window_attention(q, k, v, 4, **kwargs)


def test_chunked_needs_a_static_key_shift():
  q, k, v = random_qkv(1, 8, 1, 1, 4, 4)
  attend = jax.jit(
    lambda q, k, v, a, b: sliding_window_attention(
      q, k, v, 4, implementation="chunked", q_offset=a, k_offset=b
    )
  )
  with pytest.raises(ValueError, match="q_offset - k_offset known at trace time"):
    attend(q, k, v, 3, 1)


def test_no_module_reads_another_modules_private_names():
  """The contract is public: no `module._name` or `from swa.x import _name` across modules."""
  root = pathlib.Path(__file__).resolve().parent.parent
  sources = [*(root / "swa").rglob("*.py"), *root.glob("*.py")]
  modules = {p.stem for p in sources if p.stem != "__init__"} | {"swa", "profiling"}
  offenders = []
  for path in sources:
    tree = ast.parse(path.read_text())
    names = set()  # local names bound to swa modules in this file
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swa"):
        for alias in node.names:
          if alias.name.startswith("_"):
            offenders.append(f"{path.name}: from {node.module} import {alias.name}")
          elif alias.name in modules:
            names.add(alias.asname or alias.name)
      elif isinstance(node, ast.Import):
        names |= {a.asname for a in node.names if a.name.startswith("swa") and a.asname}
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in names
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
      ):
        offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
  assert not offenders, offenders


@pytest.mark.parametrize("impl", _registered_with("key_positions"))
def test_key_positions_match_reference(impl):
  q, _, _ = random_qkv(2, 3, 4, 2, 8, 8)
  k, v = (jax.random.normal(jax.random.PRNGKey(s), (2, 7, 2, 8)) for s in (21, 22))
  place = dict(q_offset=8, k_positions=np.array([8, 9, 3, 4, 5, -1, 10], np.int32))
  out = sliding_window_attention(q, k, v, 4, implementation=impl, **place)
  ref = sliding_window_attention(q, k, v, 4, implementation="reference", **place)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  grads = jax.grad(_loss(impl, 4, **place), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, jax.grad(_loss("reference", 4, **place), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", _registered_with("sinks"))
def test_sinks_match_reference(impl):
  q, k, v = random_qkv(1, 24, 2, 1, 8, 8)
  out = sliding_window_attention(q, k, v, 5, implementation=impl, num_sinks=3)
  ref = sliding_window_attention(q, k, v, 5, implementation="reference", num_sinks=3)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  grads = jax.grad(_loss(impl, 5, num_sinks=3), argnums=(0, 1, 2))(q, k, v)
  ref_grads = jax.grad(_loss("reference", 5, num_sinks=3), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


ATTENTION_MODULES = [
  "mask",
  "registry",
  "kernel_adapters",
  "attention",
  "chunked",
  "cudnn",
  "pallas_attention",
  "pallas_kernels",
  "splash",
  "sharding",
]


@pytest.mark.parametrize("module", ATTENTION_MODULES)
def test_attention_modules_are_under_400_lines_and_share_the_mask_rule(module):
  path = pathlib.Path(__file__).resolve().parent.parent / "swa" / f"{module}.py"
  text = path.read_text()
  assert len(text.splitlines()) < 400
  if module != "mask":  # the rule's comparisons live in mask.visible only
    assert "k_pos <= q_pos" not in text and "k_pos > q_pos -" not in text
