"""Every attention implementation against the dense reference, plus the mask and errors."""

import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention
from swa.attention import create_sliding_window_mask, sliding_window_attention

SEED_EXAMPLE = np.array([
    [1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 1, 1],
], dtype=bool)

# Implementations that run here; cuDNN joins on a GPU.
FAST_IMPLEMENTATIONS = ["chunked"] + (["cudnn"] if attention.cudnn_available() else [])

_counter = itertools.count()


def random_qkv(B, T, N, K, H, D, dtype=jnp.float32):
  """Fresh random inputs for every call (a new key each time)."""
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(next(_counter)), 3)
  return (jax.random.normal(kq, (B, T, N, H), dtype),
          jax.random.normal(kk, (B, T, K, H), dtype),
          jax.random.normal(kv, (B, T, K, D), dtype))


def test_mask_matches_seed_example():
  np.testing.assert_array_equal(np.asarray(create_sliding_window_mask(6, 3)), SEED_EXAMPLE)


@pytest.mark.parametrize("window_size", [None, 7, 100])
def test_mask_full_window_is_causal(window_size):
  np.testing.assert_array_equal(np.asarray(create_sliding_window_mask(7, window_size)),
                                np.tril(np.ones((7, 7), bool)))


def test_mask_counts_window_keys():
  mask = np.asarray(create_sliding_window_mask(40, 9))
  np.testing.assert_array_equal(mask.sum(1), np.minimum(np.arange(40) + 1, 9))


# (B, T, N, K, H, D, window, block_size): odd lengths, T < w, T = w, T not a
# multiple of the block, w = 1, GQA and MQA, D != H, full attention.
SHAPES = [
    (2, 37, 4, 2, 8, 8, 5, None),
    (1, 100, 2, 1, 16, 8, 33, 16),
    (2, 64, 2, 2, 8, 8, 1, 8),
    (1, 50, 2, 2, 8, 8, 64, None),
    (1, 48, 3, 3, 8, 16, 48, 16),
    (1, 77, 4, 4, 8, 8, 20, 8),
    (2, 33, 4, 1, 8, 8, None, 8),
    (1, 130, 2, 2, 8, 8, 128, 32),
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
@pytest.mark.parametrize("use_jit", [False, True])
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

  out = maybe_jit(lambda q, k, v: sliding_window_attention(
      q, k, v, window, implementation=impl, **kwargs))(q, k, v)
  ref = sliding_window_attention(*f32((q, k, v)), window, implementation="reference")
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=tol, rtol=tol)

  grads = maybe_jit(jax.grad(_loss(impl, window, **kwargs), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.grad(_loss("reference", window), argnums=(0, 1, 2))(*f32((q, k, v)))
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), r, atol=10 * tol, rtol=10 * tol,
                               err_msg=f"d/d{name}")


@pytest.mark.parametrize("blocks_per_step", [1, 3])
def test_chunked_blocks_per_step_matches_reference(blocks_per_step):
  q, k, v = random_qkv(2, 77, 4, 2, 8, 8)
  kwargs = dict(block_size=8, blocks_per_step=blocks_per_step)
  out = jax.jit(lambda *a: sliding_window_attention(*a, 20, implementation="chunked", **kwargs))(
      q, k, v)
  np.testing.assert_allclose(out, sliding_window_attention(q, k, v, 20, implementation="reference"),
                             atol=1e-5, rtol=1e-5)
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
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(v.repeat(2, axis=2), np.float32))
  out = sliding_window_attention(q, k, v, 17, implementation="chunked", block_size=16)
  ref = sliding_window_attention(*(x.astype(jnp.float32) for x in (q, k, v)), 17,
                                 implementation="reference")
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
  attend = lambda k, v: sliding_window_attention(q, k, v, window, implementation=impl,
                                                 **({"block_size": 8} if impl == "chunked" else {}))
  jac_k, jac_v = jax.jacrev(attend, argnums=(0, 1))(k, v)   # [1, T, N, D, 1, T, K, H]
  expected = np.asarray(create_sliding_window_mask(T, window))
  nonzero = lambda jac: np.abs(np.asarray(jac)[0, :, :, :, 0]).sum(axis=(1, 2, 4, 5)) > 0
  np.testing.assert_array_equal(nonzero(jac_v), expected)
  # A query that sees a single key has a constant softmax: no gradient to keys.
  one_key = expected.sum(axis=1, keepdims=True) == 1
  np.testing.assert_array_equal(nonzero(jac_k), expected & ~one_key)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(T=st.integers(1, 70), window=st.integers(1, 80), block=st.sampled_from([8, 16, 24]))
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


@pytest.mark.parametrize("window, match", [
    (0, "must be >= 1"), (-3, "must be >= 1"), (2.5, "positive integer"),
    (True, "positive integer"), ("8", "positive integer")])
def test_bad_window_raises(window, match):
  q, k, v = random_qkv(1, 8, 1, 1, 4, 4)
  with pytest.raises(ValueError, match=match):
    sliding_window_attention(q, k, v, window)
  with pytest.raises(ValueError, match=match):
    create_sliding_window_mask(8, window)


@pytest.mark.parametrize("shapes, match", [
    (((1, 8, 2, 4), (1, 8, 4), (1, 8, 4)), "all be"),
    (((1, 8, 4),) * 2 + ((2, 8, 4),), "batch size"),
    (((1, 8, 2, 4), (1, 9, 2, 4), (1, 9, 2, 4)), "equal query and key/value lengths"),
    (((1, 8, 3, 4), (1, 8, 2, 4), (1, 8, 2, 4)), "multiple of the key/value heads"),
    (((1, 8, 2, 4), (1, 8, 2, 4), (1, 8, 1, 4)), "same number of heads"),
    (((1, 8, 2, 4), (1, 8, 2, 6), (1, 8, 2, 4)), "share the head dim"),
    (((8, 4),) * 3, "all be"),
])
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
