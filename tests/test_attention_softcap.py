"""The attention logit soft-cap (Gemma 2, `logit_softcap=`): the reference applies cap * tanh(s / cap)
to the scaled logits; chunked equals it, forward and gradients, with odd lengths, GQA, windows,
offsets, learned sinks and jit; the others refuse in one line and auto picks one that has it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention
from swa.attention import sliding_window_attention

# mosaic takes 16-bit inputs only: tests/test_mosaic.py checks its soft-cap against the reference.
SOFTCAP_IMPLEMENTATIONS = [
  name
  for name in attention.implementations()[1:]
  if name not in ("reference", "mosaic")
  and "logit_softcap" in attention.implementation_features(name)
]


def _inputs(B, T, N, K, H, S=None, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  S = T if S is None else S
  # Large logits, so that the cap bends them (tanh far from linear).
  return (
    3.0 * jax.random.normal(keys[0], (B, T, N, H)),
    3.0 * jax.random.normal(keys[1], (B, S, K, H)),
    jax.random.normal(keys[2], (B, S, K, H)),
    jax.random.normal(keys[3], (B, T, N, H)),
  )


def _value_and_grads(impl, window, q, k, v, dout, use_jit=False, **kwargs):
  def loss(q, k, v):
    out = sliding_window_attention(q, k, v, window, implementation=impl, **kwargs)
    return jnp.sum(out * dout), out

  fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, out), grads = (jax.jit(fn) if use_jit else fn)(q, k, v)
  return (out,) + grads


def test_reference_softcap_is_cap_tanh_of_the_scaled_logits():
  q, k, v, _ = _inputs(1, 7, 2, 2, 8)
  cap = 2.0
  out = sliding_window_attention(q, k, v, 3, implementation="reference", logit_softcap=cap)
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(8)
  logits = cap * jnp.tanh(logits / cap)
  mask = attention.create_sliding_window_mask(7, 3)
  probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  want = jnp.einsum("BNTS,BSND->BTND", probs, v)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  plain = sliding_window_attention(q, k, v, 3, implementation="reference")
  assert float(jnp.max(jnp.abs(out - plain))) > 1e-2  # the cap changed something


# (B, T, N, K, H, window, jit, extra options): odd lengths, GQA, window 1, full, offsets, sinks.
CASES = [
  (1, 13, 4, 2, 8, 3, True, {}),
  (2, 9, 2, 2, 8, None, False, {}),
  (1, 11, 2, 1, 8, 4, False, {"sink_logits": jnp.array([0.5, -1.0])}),
  pytest.param((1, 17, 4, 1, 16, 1, False, {}), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("impl", SOFTCAP_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_softcap_matches_reference_forward_and_gradients(impl, case):
  B, T, N, K, H, window, use_jit, extra = case
  inputs = _inputs(B, T, N, K, H)
  got = _value_and_grads(impl, window, *inputs, use_jit=use_jit, logit_softcap=1.5, **extra)
  want = _value_and_grads("reference", window, *inputs, logit_softcap=1.5, **extra)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


@pytest.mark.parametrize("impl", SOFTCAP_IMPLEMENTATIONS)
def test_softcap_with_tail_offsets_and_small_blocks_matches_reference(impl):
  """A shard's queries over a halo (keys before them), several query blocks."""
  inputs = _inputs(1, 6, 2, 1, 8, S=10)
  kwargs = dict(q_offset=2, logit_softcap=3.0)
  got = _value_and_grads(impl, 5, *inputs, block_size=2, **kwargs)
  want = _value_and_grads("reference", 5, *inputs, **kwargs)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


def test_auto_picks_an_implementation_with_softcap_and_others_refuse():
  q, k, v, _ = _inputs(1, 16, 2, 2, 8)
  pick = lambda w: attention.resolve_implementation("auto", q, k, v, w, {"logit_softcap"})
  assert "logit_softcap" in attention.implementation_features(pick(4))
  assert "logit_softcap" in attention.implementation_features(pick(None))
  for name in ("pallas", "cudnn", "cudnn_pallas", "splash"):
    with pytest.raises(ValueError, match=rf"^implementation='{name}' .*\['logit_softcap'\]\.$"):
      sliding_window_attention(q, k, v, 4, implementation=name, logit_softcap=5.0)


@pytest.mark.parametrize("cap", [0.0, -1.0, float("inf"), float("nan"), True, "5"])
def test_bad_softcap_raises_one_line(cap):
  q, k, v, _ = _inputs(1, 8, 2, 1, 8)
  with pytest.raises(ValueError, match=r"^logit_softcap must be a number > 0 or None, got "):
    sliding_window_attention(q, k, v, 4, logit_softcap=cap)
