"""The `cudnn` implementation: jax.nn.dot_product_attention's fused cuDNN kernel, local window.

Registered in swa/attention.py as "cudnn" through `attention.tail_aligned(..., even_length=True)`,
which adds tail offsets (a sequence shard over its halo) and pads odd lengths (seen on an H100,
JAX 0.11.2: cuDNN's backward pass rejects them); "auto" picks it on a GPU for 16-bit inputs.
"""

import jax
import jax.numpy as jnp


def cudnn_available():
  """True when the default backend is a GPU (where cuDNN attention can run)."""
  return jax.default_backend() == "gpu"


def unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Why cuDNN's fused attention cannot take these inputs, or None if it can."""
  del k_BSKH, window_size
  if not cudnn_available():
    return f"it needs a GPU backend, and JAX's default backend is {jax.default_backend()!r}"
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16):
    return f"it takes bfloat16 or float16 inputs, got {q_BTNH.dtype}"
  head_dims = (q_BTNH.shape[-1], v_BSKD.shape[-1])
  if head_dims[0] != head_dims[1] or head_dims[0] % 8 or head_dims[0] > 256:
    return f"it needs equal query and value head dims, a multiple of 8 and <= 256, got {head_dims}"
  return None


def cudnn_attention(q_BTNH, k_BSKH, v_BSKD, window_size, scale):
  """cuDNN's fused causal attention with a (w - 1, 0) local window (self-attention only)."""
  local_window = None if window_size is None else (window_size - 1, 0)
  return jax.nn.dot_product_attention(
    q_BTNH,
    k_BSKH,
    v_BSKD,
    scale=scale,
    is_causal=True,
    local_window_size=local_window,
    implementation="cudnn",
  )
