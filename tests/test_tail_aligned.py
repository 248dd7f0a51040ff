"""attention.tail_aligned: self-attention kernels (cudnn, pallas) taking a shard's halo offsets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention
from swa.attention import sliding_window_attention

# (T, S, q_offset, window): S - T keys before the queries, some at negative positions (padding).
_slow = pytest.mark.slow  # 8-10 s a case on 2 cores: the default run keeps four kinds
CASES = [
  pytest.param(6, 6, 0, 3, marks=_slow),  # plain self-attention
  (5, 5, 0, 2),  # odd length (even_length pads one slot)
  (6, 10, 0, 5),  # shard 0: all 4 halo keys at negative positions
  pytest.param(6, 10, 12, 5, marks=_slow),  # a later shard: every halo key real
  (7, 11, 3, 5),  # one halo key at position -1, three real; odd S
  (4, 9, 2, None),  # full attention over the whole prefix
  pytest.param(8, 8, 5, 3, marks=_slow),  # S == T with q_offset: keys at the queries' positions
]


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """Exact float32 products on any backend (a GPU would use TF32, whose rounding differs between
  the padded and the unpadded call), so 1e-5 tolerances hold."""
  with jax.default_matmul_precision("highest"):
    yield


def _plain_self_attention(calls, q, k, v, window_size, scale):
  """Stands in for a self-attention-only kernel: records the lengths it was given."""
  assert q.shape[1] == k.shape[1] == v.shape[1]
  calls.append(q.shape[1])
  return attention.reference_attention(q, k, v, window_size, scale)


@pytest.fixture
def plain_even():
  calls = []
  fn = functools.partial(_plain_self_attention, calls)
  attention.register(
    "plain_even", attention.tail_aligned(fn, even_length=True), features=["tail_offsets"]
  )
  yield calls
  attention.unregister("plain_even")


def _qkv(T, S, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (
    jax.random.normal(kq, (2, T, 4, 8)),
    jax.random.normal(kk, (2, S, 2, 8)),
    jax.random.normal(kv, (2, S, 2, 8)),
  )


def _loss(impl, window):
  def loss(q, k, v, q_offset):
    out = sliding_window_attention(q, k, v, window, implementation=impl, q_offset=q_offset)
    return jnp.sum(jnp.sin(out.astype(jnp.float32)))

  return loss


@pytest.mark.parametrize("T, S, q_offset, window", CASES)
def test_tail_aligned_matches_reference_with_traced_offsets(plain_even, T, S, q_offset, window):
  q, k, v = _qkv(T, S)
  want = sliding_window_attention(q, k, v, window, implementation="reference", q_offset=q_offset)
  # The offset traced, as a shard's index is under shard_map.
  attend = jax.jit(
    lambda q, k, v, q0: sliding_window_attention(
      q, k, v, window, implementation="plain_even", q_offset=q0
    )
  )
  np.testing.assert_allclose(attend(q, k, v, jnp.int32(q_offset)), want, atol=1e-5, rtol=1e-5)
  assert set(plain_even) == {S + S % 2}  # Always an even, square self-attention.
  grads = jax.jit(jax.grad(_loss("plain_even", window), argnums=(0, 1, 2)))(q, k, v, q_offset)
  want_grads = jax.grad(_loss("reference", window), argnums=(0, 1, 2))(q, k, v, q_offset)
  for got, ref in zip(grads, want_grads):
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_static_offsets_need_no_roll(plain_even):
  q, k, v = _qkv(6, 10)
  jaxpr = str(
    jax.make_jaxpr(
      lambda q, k, v: sliding_window_attention(q, k, v, 5, implementation="plain_even", q_offset=20)
    )(q, k, v)
  )
  assert "dynamic_slice" not in jaxpr  # Every halo key is real: the slots are the positions.


@pytest.mark.parametrize(
  "T, S, q_offset, window", [(24, 40, 0, 9), (24, 40, 32, 9), (20, 33, 5, None)]
)
def test_pallas_takes_tail_offsets(T, S, q_offset, window):
  q, k, v = _qkv(T, S, seed=1)
  run = functools.partial(
    sliding_window_attention,
    implementation="pallas",
    q_offset=q_offset,
    block_sizes="16x16/16x16/16x16/w4s3/w4s3",
  )
  want = sliding_window_attention(q, k, v, window, implementation="reference", q_offset=q_offset)
  np.testing.assert_allclose(run(q, k, v, window), want, atol=2e-5, rtol=2e-5)


def test_cudnn_and_pallas_declare_tail_offsets_only():
  for name in ("cudnn", "pallas"):
    features = attention.implementation_features(name)
    assert "tail_offsets" in features and "offsets" not in features
  assert "tail_offsets" in attention.implementation_features("chunked")  # implied by "offsets"
  q, k, v = _qkv(4, 8)
  with pytest.raises(ValueError, match=r"'pallas' .* does not support \['offsets'\]"):
    sliding_window_attention(q, k, v, 3, implementation="pallas", q_offset=4, k_offset=2)


@pytest.mark.skipif(not attention.cudnn_available(), reason="cuDNN's kernel needs a GPU")
@pytest.mark.parametrize("T, S, q_offset, window", [(64, 191, 0, 128), (64, 191, 512, 128)])
def test_cudnn_takes_tail_offsets_on_a_gpu(T, S, q_offset, window):
  """A sequence shard's call through cuDNN (odd S: one slot of even-length padding too)."""
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(T, S, seed=2))

  def attend(impl):
    out = sliding_window_attention(q, k, v, window, implementation=impl, q_offset=q_offset)
    return out.astype(jnp.float32)

  np.testing.assert_allclose(attend("cudnn"), attend("reference"), atol=2e-2)
  grads = {
    impl: jax.grad(_loss(impl, window), argnums=(0, 1, 2))(q, k, v, q_offset)
    for impl in ("cudnn", "reference")
  }
  for got, want in zip(grads["cudnn"], grads["reference"]):
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=5e-2, rtol=5e-2)
