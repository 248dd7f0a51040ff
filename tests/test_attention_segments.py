"""Packed sequences (`segment_ids=`, `k_segment_ids=`): a query sees only the keys of its own
segment, inside its window. Every implementation that declares "segment_ids" equals the dense form
built from mask.visible & same-segment, forward and gradients (odd length, GQA, windows 1 ... None);
bad ids are refused in one line; cudnn and cudnn_pallas refuse the feature and auto passes them
over."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention
from swa.attention import sliding_window_attention
from swa.mask import visible

# mosaic takes 16-bit inputs only: tests/test_mosaic.py checks its segments against the reference.
SEGMENT_IMPLEMENTATIONS = [
  name
  for name in attention.implementations()[1:]
  if "segment_ids" in attention.implementation_features(name)
  and name not in ("sequence_parallel", "mosaic")
]
B, T, N, K, H = 2, 37, 4, 2, 8
# Row 0: segments of 5, 1, 20 and 11 tokens; row 1: two segments, the second starting at 30.
SEGMENTS_BT = np.stack([np.repeat([0, 1, 2, 3], [5, 1, 20, 11]), np.repeat([4, 9], [30, 7])])


def _inputs(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (
    jax.random.normal(keys[0], (B, T, N, H)),
    jax.random.normal(keys[1], (B, T, K, H)),
    jax.random.normal(keys[2], (B, T, K, H)),
    jax.random.normal(keys[3], (B, T, N, H)),
  )


def _dense(q, k, v, window, seg_BT):
  """float32 softmax attention under visible(...) & same segment (GQA by repeating heads)."""
  pos = jnp.arange(T)
  mask_BTS = visible(
    pos[None, :, None], pos[None, None, :], window, 0, seg_BT[:, :, None], seg_BT[:, None, :]
  )
  k, v = jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2)
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) * H**-0.5
  probs = jax.nn.softmax(jnp.where(mask_BTS[:, None], logits, -jnp.inf), axis=-1)
  return jnp.einsum("BNTS,BSNH->BTNH", probs, v)


def _value_and_grads(fn, q, k, v, dout):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(dout))


def test_every_implementation_with_segments_is_declared():
  assert {"reference", "chunked", "pallas", "splash"} <= set(SEGMENT_IMPLEMENTATIONS)
  assert "segment_ids" in attention.SEMANTIC_FEATURES


@pytest.mark.parametrize("window", [1, 3, pytest.param(8, marks=pytest.mark.slow), None])
@pytest.mark.parametrize("impl", SEGMENT_IMPLEMENTATIONS)
def test_segments_match_the_dense_segment_mask_forward_and_gradients(impl, window):
  q, k, v, dout = _inputs()
  seg = jnp.asarray(SEGMENTS_BT, jnp.int32)
  options = {"block_size": 8} if impl == "chunked" else {}  # several band blocks at T = 37
  got = _value_and_grads(
    lambda q, k, v: sliding_window_attention(
      q, k, v, window, implementation=impl, segment_ids=seg, **options
    ),
    q,
    k,
    v,
    dout,
  )
  want = _value_and_grads(lambda q, k, v: _dense(q, k, v, window, seg), q, k, v, dout)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)


def test_segments_matter_and_one_segment_is_plain_attention():
  q, k, v, _ = _inputs(1)
  one = sliding_window_attention(q, k, v, 8, segment_ids=jnp.zeros((B, T), jnp.int32))
  np.testing.assert_allclose(one, sliding_window_attention(q, k, v, 8), atol=1e-6)
  packed = sliding_window_attention(q, k, v, 8, segment_ids=jnp.asarray(SEGMENTS_BT))
  assert np.abs(np.asarray(packed - one)).max() > 1e-2


def test_segments_under_jit_and_with_key_offsets():
  """Traced ids; and the keys of a longer prefix (S > T, tail offsets) with k_segment_ids."""
  q, k, v, _ = _inputs(2)
  seg = jnp.asarray(SEGMENTS_BT, jnp.int32)
  for impl in ("chunked", "pallas"):
    fn = jax.jit(
      lambda q, k, v, s: sliding_window_attention(q, k, v, 8, implementation=impl, segment_ids=s)
    )
    np.testing.assert_allclose(fn(q, k, v, seg), _dense(q, k, v, 8, seg), atol=5e-5, rtol=5e-5)
    # The last 20 queries over all 37 keys: the same rows of the full computation.
    tail = sliding_window_attention(
      q[:, 17:],
      k,
      v,
      8,
      implementation=impl,
      q_offset=17,
      segment_ids=seg[:, 17:],
      k_segment_ids=seg,
    )
    np.testing.assert_allclose(tail, _dense(q, k, v, 8, seg)[:, 17:], atol=5e-5, rtol=5e-5)


def test_differing_key_segments_give_an_empty_row_zeros():
  """A query whose segment no visible key has gets 0 (reference and chunked), not NaN."""
  q, k, v, _ = _inputs(3)
  seg = jnp.zeros((B, T), jnp.int32)
  k_seg = seg.at[:, :5].set(1)  # keys 0..4 in another segment: queries 0..4 (w = 3) see none
  for impl in ("reference", "chunked"):
    out = sliding_window_attention(
      q, k, v, 3, implementation=impl, segment_ids=seg, k_segment_ids=k_seg
    )
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(out[:, :5], 0.0)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (
      dict(segment_ids=np.zeros((B, T + 1), np.int32)),
      r"segment_ids must be ints of shape \(2, 37\)",
    ),
    (dict(segment_ids=np.zeros((B, T), np.float32)), "segment_ids must be ints .* got float32"),
    (dict(k_segment_ids=np.zeros((B, T), np.int32)), "k_segment_ids needs segment_ids"),
    (
      dict(segment_ids=np.zeros((B, T), np.int32), k_segment_ids=np.zeros((B, 3), np.int32)),
      r"k_segment_ids must be ints of shape \(2, 37\)",
    ),
  ],
)
def test_bad_segment_ids_are_refused_in_one_line(kwargs, message):
  q, k, v, _ = _inputs()
  with pytest.raises(ValueError, match=message) as error:
    sliding_window_attention(q, k, v, 8, **kwargs)
  assert "\n" not in str(error.value)


def test_more_keys_than_queries_need_k_segment_ids():
  q, k, v, _ = _inputs()
  with pytest.raises(ValueError, match="pass k_segment_ids"):
    sliding_window_attention(
      q[:, 30:], k, v, 8, q_offset=30, segment_ids=jnp.zeros((B, 7), jnp.int32)
    )


@pytest.mark.parametrize("impl", ["cudnn", "cudnn_pallas"])
def test_cudnn_refuses_segments_and_auto_never_picks_it(impl, monkeypatch):
  """jax.nn.dot_product_attention has no segment ids (sequence lengths only)."""
  q, k, v, _ = _inputs()
  seg = jnp.zeros((B, T), jnp.int32)
  with pytest.raises(ValueError, match=r"does not support \['segment_ids'\]"):
    sliding_window_attention(q, k, v, 8, implementation=impl, segment_ids=seg)
  # On a GPU with bf16 inputs auto would rank cudnn_pallas and cudnn first; with segment ids
  # it must pass them over.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  for w in (8, 128, 1024, None):
    args = (q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), w)
    assert attention.resolve_implementation("auto", *args) in ("cudnn", "cudnn_pallas", "pallas")
    picked = attention.resolve_implementation("auto", *args, features={"segment_ids"})
    assert picked not in ("cudnn", "cudnn_pallas")
