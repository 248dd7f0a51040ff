"""Learned sinks (gpt-oss, `sink_logits=`): every implementation that declares them equals the
reference, forward and gradients (d/dsink_logits included), with odd lengths, GQA, windows, offsets
and jit; the others refuse in one line and auto passes them by."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention
from swa.attention import sliding_window_attention
from swa.mask import masked_softmax

# mosaic takes 16-bit inputs only: tests/test_mosaic.py checks its sinks against the reference.
SINK_IMPLEMENTATIONS = [
  name
  for name in attention.implementations()[1:]
  if name not in ("reference", "mosaic")
  and "sink_logits" in attention.implementation_features(name)
]


def _inputs(B, T, N, K, H, S=None, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  S = T if S is None else S
  return (
    jax.random.normal(keys[0], (B, T, N, H)),
    jax.random.normal(keys[1], (B, S, K, H)),
    jax.random.normal(keys[2], (B, S, K, H)),
    2.0 * jax.random.normal(keys[3], (N,)),
    jax.random.normal(keys[4], (B, T, N, H)),
  )


def _value_and_grads(impl, window, q, k, v, sink, dout, use_jit=False, **kwargs):
  def loss(q, k, v, sink):
    out = sliding_window_attention(q, k, v, window, implementation=impl, sink_logits=sink, **kwargs)
    return jnp.sum(out * dout), out

  fn = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
  (_, out), grads = (jax.jit(fn) if use_jit else fn)(q, k, v, sink)
  return (out,) + grads


def _assert_matches_reference(impl, window, inputs, use_jit=False, **kwargs):
  got = _value_and_grads(impl, window, *inputs, use_jit=use_jit, **kwargs)
  want = _value_and_grads("reference", window, *inputs, **kwargs)
  for name, g, w in zip(("out", "dq", "dk", "dv", "dsink"), got, want):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


# (B, T, N, K, H, window, jit): odd lengths, GQA, window 1, full attention, window past T.
CASES = [
  (1, 13, 4, 2, 8, 3, True),
  (2, 9, 2, 2, 8, None, False),
  pytest.param((1, 17, 4, 1, 16, 1, False), marks=pytest.mark.slow),
  pytest.param((2, 21, 2, 1, 8, 40, True), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("impl", SINK_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_sink_logits_match_reference_forward_and_gradients(impl, case):
  B, T, N, K, H, window, use_jit = case
  _assert_matches_reference(impl, window, _inputs(B, T, N, K, H), use_jit=use_jit)


@pytest.mark.parametrize("impl", SINK_IMPLEMENTATIONS)
def test_sink_logits_with_tail_offsets_match_reference(impl):
  """A shard's queries over a halo (keys before them, some at negative positions)."""
  inputs = _inputs(1, 6, 2, 1, 8, S=10)
  _assert_matches_reference(impl, 5, inputs, q_offset=2)


def test_sink_logits_with_attention_sinks_in_pallas():
  _assert_matches_reference("pallas", 4, _inputs(1, 24, 2, 1, 8), num_sinks=3)


def test_reference_sink_is_one_more_softmax_entry_with_no_value():
  logits = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
  sink = jnp.array([[0.5], [-1.0], [2.0]])
  mask = jnp.ones((3, 5), bool).at[1, 3:].set(False)
  with_sink = jnp.concatenate([jnp.where(mask, logits, -jnp.inf), sink], axis=1)
  full = jax.nn.softmax(with_sink, axis=1)
  np.testing.assert_allclose(masked_softmax(logits, mask, sink), full[:, :5], atol=1e-6)
  # A row with no visible key puts all its mass on the sink: zero output, not NaN.
  assert float(jnp.sum(masked_softmax(logits, jnp.zeros((3, 5), bool), sink))) == 0.0


def test_empty_cache_slots_with_a_sink_give_zero_output():
  q, k, v, sink, _ = _inputs(1, 1, 2, 2, 8, S=4)
  out = sliding_window_attention(
    q, k, v, 4, q_offset=0, k_positions=np.array([-1, -1, -1, -1]), sink_logits=sink
  )
  assert float(jnp.max(jnp.abs(out))) == 0.0


def test_auto_picks_an_implementation_with_sinks_and_others_refuse():
  q, k, v, sink, _ = _inputs(1, 16, 2, 2, 8)
  pick = lambda w: attention.resolve_implementation("auto", q, k, v, w, {"sink_logits"})
  assert "sink_logits" in attention.implementation_features(pick(4))
  assert "sink_logits" in attention.implementation_features(pick(None))
  for name in ("cudnn", "cudnn_pallas", "splash"):
    with pytest.raises(ValueError, match=rf"^implementation='{name}' .*\['sink_logits'\]\.$"):
      sliding_window_attention(q, k, v, 4, implementation=name, sink_logits=sink)


@pytest.mark.parametrize(
  "sink, match",
  [
    (jnp.zeros((3,)), r"sink_logits must be floats of shape \[N\] = \(2,\)"),
    (jnp.zeros((1, 2)), r"got float32 \(1, 2\)"),
    (jnp.zeros((2,), jnp.int32), r"got int32 \(2,\)"),
  ],
)
def test_bad_sink_logits_raise_one_line(sink, match):
  q, k, v, _, _ = _inputs(1, 8, 2, 1, 8)
  with pytest.raises(ValueError, match=match):
    sliding_window_attention(q, k, v, 4, sink_logits=sink)


def test_sink_logits_gradient_is_minus_p_sink_times_dout_dot_out():
  """The closed form the kernels use: d/dsink = -sum over rows of p_sink * (dO . O)."""
  q, k, v, sink, dout = _inputs(1, 7, 1, 1, 8)
  attend = functools.partial(sliding_window_attention, window_size=3, implementation="reference")
  out, vjp = jax.vjp(lambda s: attend(q, k, v, sink_logits=s), sink)
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(8)
  mask = attention.create_sliding_window_mask(7, 3)
  lse = jax.nn.logsumexp(
    jnp.concatenate(
      [jnp.where(mask, logits, -jnp.inf), jnp.broadcast_to(sink[0], (1, 1, 7, 1))], -1
    ),
    axis=-1,
  )
  p_sink = jnp.exp(sink[0] - lse)  # [B, N, T]
  want = -jnp.einsum("BNT,BTN->N", p_sink, jnp.einsum("BTND,BTND->BTN", dout, out))
  np.testing.assert_allclose(vjp(dout)[0], want, atol=1e-5, rtol=1e-5)
