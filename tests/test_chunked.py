"""swa/chunked.py: the flash-style custom VJP equals the reference and keeps memory linear in T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention, chunked


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """Exact float32 products on any backend (a GPU would use TF32), so 2e-5 tolerances hold."""
  with jax.default_matmul_precision("highest"):
    yield


def _qkv(B, T, S, N, K, H, D, seed=0, dtype=jnp.float32):
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (
    jax.random.normal(kq, (B, T, N, H), dtype),
    jax.random.normal(kk, (B, S, K, H), dtype),
    jax.random.normal(kv, (B, S, K, D), dtype),
    jax.random.normal(kd, (B, T, N, D), dtype),
  )


def _out_and_grads(fn, q, k, v, dout):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + vjp(dout)


# (B, T, S, N, K, H, D, window, q_offset, k_offset, block_size, blocks_per_step): loops with a
# padded last group, GQA, D != H, window 1, window >= T, full attention, a halo of earlier keys
# (sequence parallelism), keys before position 0, fewer keys than queries. Slow ones: -m slow.
CASES = [
  (1, 130, 130, 2, 2, 8, 8, 40, 0, None, 16, 3),
  pytest.param((2, 37, 37, 4, 2, 8, 16, 5, 0, None, None, 2), marks=pytest.mark.slow),
  (1, 64, 64, 2, 1, 8, 8, 1, 0, None, 8, 3),
  pytest.param((1, 50, 50, 2, 2, 8, 8, 300, 0, None, None, None), marks=pytest.mark.slow),
  pytest.param((1, 33, 33, 4, 1, 8, 8, None, 0, None, 8, 2), marks=pytest.mark.slow),
  pytest.param((1, 32, 40, 2, 2, 8, 8, 12, 16, 8, None, None), marks=pytest.mark.slow),
  (1, 32, 40, 2, 2, 8, 8, 12, 4, -4, 8, 2),
  (1, 32, 24, 2, 1, 8, 8, 6, 10, None, 8, None),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_forward_and_gradients(case):
  B, T, S, N, K, H, D, window, q_offset, k_offset, block, per_step = case
  q, k, v, dout = _qkv(B, T, S, N, K, H, D, seed=T + S)
  placed = dict(q_offset=q_offset, k_offset=k_offset) if S != T or q_offset else {}
  fast = jax.jit(
    lambda q, k, v: attention.sliding_window_attention(
      q,
      k,
      v,
      window,
      implementation="chunked",
      block_size=block,
      blocks_per_step=per_step,
      **placed,
    )
  )
  slow = jax.jit(
    lambda q, k, v: attention.sliding_window_attention(
      q, k, v, window, implementation="reference", **placed
    )
  )
  for got, want in zip(_out_and_grads(fast, q, k, v, dout), _out_and_grads(slow, q, k, v, dout)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_traced_query_offset_equals_static_one():
  q, k, v, dout = _qkv(1, 24, 30, 2, 2, 8, 8, seed=3)
  run = lambda q_offset: jax.jit(
    lambda q, k, v, o: chunked.chunked_attention(
      q, k, v, 10, 0.3, q_offset=o, k_offset=None, block_size=8, blocks_per_step=1
    )
  )(q, k, v, q_offset)
  np.testing.assert_allclose(
    np.asarray(run(jnp.int32(2))),
    np.asarray(chunked.chunked_attention(q, k, v, 10, 0.3, q_offset=2, block_size=8)),
    atol=1e-6,
  )


def test_bfloat16_gradients_are_close_to_float32():
  q, k, v, dout = _qkv(1, 96, 96, 2, 2, 16, 16, seed=5)
  fn = lambda q, k, v: chunked.chunked_attention(
    q, k, v, 24, 0.25, block_size=16, blocks_per_step=2
  )
  want = _out_and_grads(fn, q, k, v, dout)
  got = _out_and_grads(fn, *(x.astype(jnp.bfloat16) for x in (q, k, v, dout)))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    rel = np.linalg.norm(np.asarray(g, np.float32) - w) / np.linalg.norm(w)
    assert rel < 2e-2, rel


def _fwd_bwd_temp_bytes(T, window, blocks_per_step):
  x = jax.ShapeDtypeStruct((1, T, 2, 32), jnp.float32)
  loss = lambda q, k, v: chunked.chunked_attention(
    q, k, v, window, 0.1, blocks_per_step=blocks_per_step
  ).sum()
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("window, blocks_per_step", [(64, None), (256, 2)])
def test_forward_backward_memory_is_linear_in_length(window, blocks_per_step):
  """XLA's compiled temporary memory (deterministic) at 2n is at most 2.1x that at n."""
  small, large = (_fwd_bwd_temp_bytes(T, window, blocks_per_step) for T in (2048, 4096))
  assert large <= 2.1 * small, (small, large)


def test_loop_bounds_the_score_memory():
  """A loop over groups of query blocks holds one group's scores, not every block's."""
  looped, at_once = (_fwd_bwd_temp_bytes(2048, 256, per_step) for per_step in (2, None))
  assert looped < at_once / 3, (looped, at_once)
