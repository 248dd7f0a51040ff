"""swa/splash.py: TPU splash attention with the sliding window, in Pallas interpret mode on CPU.

Tested here: the mask objects (LocalMask((w - 1, 0)) & causal equals the swa mask rule), and the
kernel's output and gradients against the reference (GQA, a length that is not a multiple of the
block, window 1, full attention). Not tested: anything on a TPU (Mosaic compilation, speed).
"""

import jax
import numpy as np
import pytest

from swa import attention, splash


@pytest.mark.parametrize("T, window", [(16, 5), (16, 1), (9, None), (12, 40)])
def test_mask_is_the_swa_rule(T, window):
  mask = splash.splash_mask(T, window, groups=2)
  assert mask.shape == (2, T, T)
  dense = np.asarray(mask[:, :, :])
  want = np.asarray(attention.create_sliding_window_mask(T, window))
  np.testing.assert_array_equal(dense, np.broadcast_to(want, (2, T, T)))


def _qkv(B, T, N, K, H, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (
    jax.random.normal(kq, (B, T, N, H)),
    jax.random.normal(kk, (B, T, K, H)),
    jax.random.normal(kv, (B, T, K, H)),
    jax.random.normal(kd, (B, T, N, H)),
  )


@pytest.mark.parametrize(
  "B, T, N, K, window", [(1, 200, 4, 2, 40), (2, 128, 2, 2, 1), (1, 130, 1, 1, None)]
)
def test_forward_matches_reference(B, T, N, K, window):
  q, k, v, _ = _qkv(B, T, N, K, 16, seed=T)
  got = attention.sliding_window_attention(q, k, v, window, implementation="splash")
  want = attention.sliding_window_attention(q, k, v, window, implementation="reference")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_gradients_match_reference():
  q, k, v, dout = _qkv(1, 200, 4, 2, 16, seed=1)
  grads = lambda impl: jax.vjp(
    lambda q, k, v: attention.sliding_window_attention(q, k, v, 40, implementation=impl), q, k, v
  )[1](dout)
  for got, want in zip(grads("splash"), grads("reference")):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)


def test_refuses_what_splash_cannot_take():
  q, k, v, _ = _qkv(1, 32, 2, 2, 16)
  with pytest.raises(ValueError, match="equal query and value head dims"):
    attention.sliding_window_attention(q, k, v[..., :8], 4, implementation="splash")
  with pytest.raises(ValueError, match="multiple of 128"):
    splash.splash_attention(q, k, v, 4, 0.25, block_size=64)
  assert attention.resolve_implementation("auto", q, k, v, 4) != "splash" or (
    jax.default_backend() == "tpu"
  )
