"""The implementation registry (swa/registry.py): the built-in names, what auto picks, that an
implementation gets only the options of the features it declared, and auto_features."""

import jax
import numpy as np
import pytest

import swa
from swa import attention
from swa.attention import sliding_window_attention


def random_qkv(B, T, N, K, H, D, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (
    jax.random.normal(kq, (B, T, N, H)),
    jax.random.normal(kk, (B, T, K, H)),
    jax.random.normal(kv, (B, T, K, D)),
  )


def test_builtin_names_are_registered():
  assert {"auto", "reference", "chunked", "cudnn", "pallas", "splash"} <= set(swa.implementations())
  assert attention.implementations()[0] == "auto"
  assert {"offsets", "key_positions", "sinks"} <= attention.implementation_features("reference")


def test_auto_picks_among_implementations_that_support_the_call():
  q, k, v = random_qkv(1, 16, 2, 2, 8, 8)
  resolve = lambda w, features: attention.resolve_implementation("auto", q, k, v, w, features)
  if not attention.cudnn_available():
    assert resolve(4, ()) == "chunked"
  assert resolve(4, {"offsets"}) == "chunked"
  assert resolve(4, {"key_positions"}) == "reference"
  assert resolve(4, {"sinks"}) == "reference"
  assert resolve(None, {"offsets"}) == "reference"


def test_registered_implementation_is_called_with_its_features_only():
  calls = []

  def spy(q, k, v, window_size, scale, **options):
    calls.append(sorted(options))
    return attention.reference_attention(
      q, k, v, window_size, scale, **{key: value for key, value in options.items() if key != "tag"}
    )

  attention.register("spy", spy, features=("offsets", "tag"), auto_rank=-1)
  try:
    assert "spy" in attention.implementations()
    q, k, v = random_qkv(1, 10, 2, 1, 8, 8)
    out = sliding_window_attention(q, k, v, 3, implementation="spy", q_offset=4, k_offset=2, tag=1)
    np.testing.assert_allclose(
      out,
      sliding_window_attention(q, k, v, 3, implementation="reference", q_offset=4, k_offset=2),
      atol=1e-6,
    )
    sliding_window_attention(q, k, v, 3, block_size=8)  # auto: rank -1 wins; no block_size
    assert calls == [["k_offset", "q_offset", "tag"], []]
    with pytest.raises(ValueError, match=r"'spy' \(supports .*\) does not support \['sinks'\]"):
      sliding_window_attention(q, k, v, 3, implementation="spy", num_sinks=2)
    # Sinks are absolute positions: with queries at 4.., the offsets must travel with them.
    attention.register("spy_sinks", spy, features=("sinks",))
    np.testing.assert_allclose(
      sliding_window_attention(q, k, v, 3, implementation="spy_sinks", q_offset=0, num_sinks=2),
      sliding_window_attention(q, k, v, 3, implementation="reference", num_sinks=2),
      atol=1e-6,
    )
    with pytest.raises(ValueError, match=r"does not support \['tail_offsets'\]"):
      sliding_window_attention(q, k, v, 3, implementation="spy_sinks", q_offset=4, num_sinks=2)
    with pytest.raises(ValueError, match=r"does not support \['color'\]"):
      sliding_window_attention(q, k, v, 3, implementation="spy", color=1)
  finally:
    attention.unregister("spy")
    attention.unregister("spy_sinks")
  assert "spy" not in attention.implementations()
  with pytest.raises(ValueError, match="other than 'auto'"):
    attention.register("auto", spy)


def test_auto_picks_an_implementation_only_for_its_auto_features():
  """An explicit request gets every declared feature; auto only those in auto_features (the
  mosaic kernels' learned sinks and segment ids, not yet compiled on a GPU)."""
  q, k, v = random_qkv(1, 10, 2, 1, 8, 8)
  attention.register(
    "narrow",
    attention.reference_attention,
    features=("sink_logits", "offsets"),
    auto_rank=-1,
    auto_features=("offsets",),
  )
  try:
    resolve = lambda features: attention.resolve_implementation("auto", q, k, v, 3, features)
    assert resolve({"offsets"}) == "narrow" and resolve(()) == "narrow"
    assert resolve({"sink_logits"}) != "narrow"
    assert attention.resolve_implementation("narrow", q, k, v, 3, {"sink_logits"}) == "narrow"
  finally:
    attention.unregister("narrow")
  with pytest.raises(
    ValueError, match=r"auto_features of 'bad' must be among its features, got \['sinks'\]"
  ):
    attention.register(
      "bad", attention.reference_attention, features=("offsets",), auto_features=("sinks",)
    )
  assert "bad" not in attention.implementations()
  assert attention.lookup("mosaic").auto_features == {"tail_offsets", "block_sizes", "interpret"}
