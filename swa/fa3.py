"""The `fa3` implementation: FlashAttention-3 (Hopper) through the optional package flash-attn3-jax.

Registered in swa/attention.py as "fa3" through `kernel_adapters.tail_aligned` (tail offsets: a
sequence shard over its halo); self-attention otherwise, no sinks, soft-cap or key positions. The
package is imported only when a call runs on a GPU, so swa works without it (`pip install
swa[fa3]` adds it). Its window is ours: `window_size=(w - 1, 0)` with is_causal, query i sees keys
i - w + 1 ... i; (-1, 0) is full causal attention. GQA/MQA (fewer key/value heads) is native.
"""

import functools
import importlib.util

import jax

from swa import kernel_adapters

PACKAGE = "flash-attn3-jax==0.2.3"
INSTALL = f"pip install swa[fa3], or pip install {PACKAGE}"
# The PyPI wheels are built for Hopper (SM90) with head dim 128 only (the package's README; other
# head dims need a build from source). The kernels take K and V of one shape: D == H.
HEAD_DIMS = (128,)
# auto's rule: fa3 for every window where it applies. Measured with bench_attention.py on an H200
# (results/attention_bench_h200/peers_2026-12-04/: bf16, B=1, 16 heads, H=128): FA3 fwd+bwd is
# 1.15-1.30x cuDNN's speed at n = 16k/64k x w = 128/512/4096 and its forward 1.07-1.23x, the
# fastest of every implementation at every one of those rows (Pallas 0.73-1.27x). None = no limit.
AUTO_MAX_WINDOW = None


@functools.cache
def _installed():
  """Whether the package flash_attn3_jax can be found (not imported: it needs CUDA)."""
  return importlib.util.find_spec("flash_attn3_jax") is not None


@functools.cache
def _import_error():
  """None when flash_attn3_jax imports, else why not (one line)."""
  try:
    import flash_attn3_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).splitlines() or [""])[0][:120]
    return f"flash_attn3_jax does not import ({type(e).__name__}: {first})"
  return None


def _hopper_reason():
  """Why the default device is not a Hopper GPU, or None if it is."""
  if jax.default_backend() != "gpu":
    return f"it needs a Hopper GPU, and JAX's default backend is {jax.default_backend()!r}"
  device = jax.devices()[0]
  capability = str(getattr(device, "compute_capability", ""))
  if not capability.startswith("9."):
    return f"it needs a Hopper GPU (compute capability 9.x), got {device.device_kind} {capability}"
  return None


def unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Why FlashAttention-3 cannot take these inputs (one line), or None if it can."""
  del window_size
  if not _installed():
    return f"the package flash-attn3-jax is not installed ({INSTALL})"
  reason = _hopper_reason() or _import_error()
  if reason:
    return reason
  return kernel_adapters.sixteen_bit_reason(q_BTNH, k_BSKH, v_BSKD, HEAD_DIMS)


def auto_when(q_BTNH, k_BSKH, v_BSKD, window_size):
  """auto's preference (AUTO_MAX_WINDOW); the limits are in unsupported_reason."""
  del q_BTNH, k_BSKH, v_BSKD
  if AUTO_MAX_WINDOW is None:
    return True
  return window_size is not None and window_size <= AUTO_MAX_WINDOW


def fa3_attention(q_BTNH, k_BSKH, v_BSKD, window_size, scale):
  """FlashAttention-3's causal attention with a (w - 1, 0) window (self-attention from 0)."""
  from flash_attn3_jax import flash_mha  # pylint: disable=g-import-not-at-top

  try:
    scale = float(scale)  # the package takes a Python float (it is a kernel parameter)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"implementation='fa3' needs a Python float scale, got {scale!r}.") from None
  window = (-1, 0) if window_size is None else (window_size - 1, 0)
  return flash_mha(q_BTNH, k_BSKH, v_BSKD, softmax_scale=scale, is_causal=True, window_size=window)
