"""The attention contract's input checks (issue 28): non-float and empty inputs are refused in one
line naming the value; NumPy integers and huge windows work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa.attention import sliding_window_attention


def _qkv(shape=(1, 16, 4, 8)):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  return tuple(jax.random.normal(key, shape) for key in keys)


def _as(dtype, which):
  q, k, v = _qkv()
  arrays = {"q": q, "k": k, "v": v}
  arrays[which] = (arrays[which] * 3).astype(dtype)
  return arrays["q"], arrays["k"], arrays["v"]


@pytest.mark.parametrize(
  "dtype, which",
  [(jnp.int32, "q"), (jnp.int32, "k"), (jnp.bool_, "q"), (jnp.bool_, "v"), (jnp.complex64, "q")],
)
@pytest.mark.parametrize("impl", ["auto", "reference", "chunked"])
def test_non_float_inputs_raise_one_line(dtype, which, impl):
  with pytest.raises(
    ValueError, match=rf"^{which} must be floating point .*got {jnp.dtype(dtype)}\.$"
  ):
    sliding_window_attention(*_as(dtype, which), 4, implementation=impl)


@pytest.mark.parametrize(
  "shape",
  [(1, 0, 4, 8), (0, 16, 4, 8), (1, 16, 0, 8), (1, 16, 4, 0), (1, 0, 8), (0, 16, 8)],
)
@pytest.mark.parametrize("impl", ["auto", "reference", "chunked"])
def test_empty_inputs_raise_one_line(shape, impl):
  q = k = v = jnp.zeros(shape)
  with pytest.raises(ValueError, match=r"^q, k and v must be non-empty .*got shapes") as err:
    sliding_window_attention(q, k, v, 4, implementation=impl)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize(
  "kwargs, same_as",
  [
    (dict(window_size=np.int64(4)), dict(window_size=4)),
    (dict(window_size=np.int32(4), implementation="chunked"), dict(window_size=4)),
    (dict(window_size=4, block_size=np.int64(8), implementation="chunked"), dict(window_size=4)),
    (dict(window_size=4, num_sinks=np.int64(2)), dict(window_size=4, num_sinks=2)),
    (dict(window_size=4, q_offset=np.int64(3)), dict(window_size=4, q_offset=3)),
    (dict(window_size=10**12), dict(window_size=None)),
    (dict(window_size=10**12, implementation="chunked"), dict(window_size=None)),
    (dict(window_size=10**12, num_sinks=3), dict(window_size=None)),
  ],
)
def test_numpy_ints_and_huge_windows_work(kwargs, same_as):
  q, k, v = _qkv()
  out = sliding_window_attention(q, k, v, **kwargs)
  ref = sliding_window_attention(q, k, v, implementation="reference", **same_as)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_float64_and_mixed_float_inputs_still_work():
  q, k, v = _qkv()
  out = sliding_window_attention(np.asarray(q, np.float64), k.astype(jnp.bfloat16), v, 4)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
