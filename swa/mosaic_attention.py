"""Sliding-window causal attention as warp-specialised Hopper kernels (Pallas Mosaic GPU).

`mosaic_attention` checks and pads the inputs and joins the kernels of swa/mosaic_kernels.py
(forward, dQ, dK/dV) in a custom VJP. Registered in swa/attention.py as "mosaic" (through
`kernel_adapters.tail_aligned`: tail offsets for a sequence shard over its halo). `auto` does not
pick it: its speed on a GPU has not been measured yet (bench_attention.py times it against cuDNN,
FA3 and the Triton kernels; AUTO_MAX_WINDOW records the rule once it has).

What it takes: 16-bit inputs of one dtype, head dims of 64 or 128 (equal for keys and values),
any length (padded at the end to whole CTA tiles: padded keys come after every real query, so
causality hides them), GQA. No sinks, soft-cap or segment ids (the Triton kernels and the reference
have them). Off a GPU it runs in Mosaic GPU's interpret mode (JAX >= 0.11; slow: tests at small
shapes); on a GPU it needs a Hopper card (compute capability 9.x).
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp

HEAD_DIMS = (64, 128)
# Never picked by auto (None) until bench_attention.py's GPU run measures where it is faster.
AUTO_MAX_WINDOW = None


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles of the three kernels (multiples of 64) and the shared-memory ring's depth.

  Written "fwd_q x fwd_k / dkv_q x dkv_k / s stages", e.g. "64x64/64x64/s2" (`parse` reads it
  back); the dQ kernel uses the forward's tiles.
  """

  block_q: int = 64  # forward and dQ: queries per computing warpgroup
  block_k: int = 64  # forward and dQ: keys per pipeline step
  block_q_dkv: int = 64  # dK/dV: queries per pipeline step
  block_k_dkv: int = 64  # dK/dV: keys per computing warpgroup
  stages: int = 2

  def validate(self):
    """Returns self; a one-line ValueError unless every tile is a multiple of 64, stages >= 2."""
    tiles = (self.block_q, self.block_k, self.block_q_dkv, self.block_k_dkv)
    if any(t < 64 or t % 64 for t in tiles) or self.stages < 2:
      raise ValueError(f"mosaic block sizes must be multiples of 64 and stages >= 2, got {self}.")
    return self

  def __str__(self):
    return f"{self.block_q}x{self.block_k}/{self.block_q_dkv}x{self.block_k_dkv}/s{self.stages}"

  @classmethod
  def parse(cls, text):
    """BlockSizes from its string form (see the class docstring)."""
    match = re.fullmatch(r"(\d+)x(\d+)/(\d+)x(\d+)/s(\d+)", text.strip())
    if not match:
      raise ValueError(f"mosaic block sizes look like '64x64/64x64/s2', got {text!r}.")
    return cls(*map(int, match.groups()))


def _kernels():
  """swa/mosaic_kernels.py, imported on first use (it imports Mosaic GPU, which swa does not
  need otherwise)."""
  from swa import mosaic_kernels  # pylint: disable=g-import-not-at-top

  return mosaic_kernels


@functools.cache
def _import_reason():
  """Why Mosaic GPU (or its interpret mode, off a GPU) cannot be used here, or None."""
  try:
    from jax.experimental.pallas import mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return f"jax.experimental.pallas.mosaic_gpu does not import ({type(e).__name__})"
  if jax.default_backend() != "gpu" and not hasattr(plgpu, "InterpretGPUParams"):
    return f"off a GPU it runs in Mosaic GPU's interpret mode, which JAX {jax.__version__} lacks"
  return None


def unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Why the kernels cannot take these inputs (a registry `check`), or None."""
  del window_size
  if jax.default_backend() == "gpu":
    device = jax.devices()[0]
    capability = str(getattr(device, "compute_capability", ""))
    if not capability.startswith("9."):
      return f"it needs a Hopper GPU (compute capability 9.x), got {device.device_kind}"
  if _import_reason():
    return _import_reason()
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16) or not (
    q_BTNH.dtype == k_BSKH.dtype == v_BSKD.dtype
  ):
    return f"it takes bfloat16 or float16 inputs of one dtype, got {q_BTNH.dtype}"
  head_dims = (q_BTNH.shape[-1], v_BSKD.shape[-1])
  if head_dims[0] != head_dims[1] or head_dims[0] not in HEAD_DIMS:
    return f"it takes equal query and value head dims in {HEAD_DIMS}, got {head_dims}"
  return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attend(q_BTNH, k_BTKH, v_BTKH, st):
  return _kernels().forward(q_BTNH, k_BTKH, v_BTKH, st)[0]


def _attend_fwd(q_BTNH, k_BTKH, v_BTKH, st):
  out_BTNH, lse_BNT = _kernels().forward(q_BTNH, k_BTKH, v_BTKH, st)
  return out_BTNH, (q_BTNH, k_BTKH, v_BTKH, out_BTNH, lse_BNT)


def _attend_bwd(st, residuals, do_BTNH):
  q_BTNH, k_BTKH, v_BTKH, out_BTNH, lse_BNT = residuals
  do_BTNH = do_BTNH.astype(q_BTNH.dtype)
  delta_BNT = jnp.einsum(
    "BTNH,BTNH->BNT", out_BTNH.astype(jnp.float32), do_BTNH.astype(jnp.float32)
  )
  args = (q_BTNH, k_BTKH, v_BTKH, do_BTNH, lse_BNT, delta_BNT, st)
  dq_BTNH = _kernels().backward_dq(*args)
  dk_BTNH, dv_BTNH = _kernels().backward_dkv(*args)
  B, T, N, H = q_BTNH.shape
  K = k_BTKH.shape[2]
  group_sum = lambda x: x.reshape(B, T, K, N // K, H).astype(jnp.float32).sum(3).astype(x.dtype)
  return dq_BTNH, group_sum(dk_BTNH), group_sum(dv_BTNH)


_attend.defvjp(_attend_fwd, _attend_bwd)


def mosaic_attention(
  q_BTNH, k_BTKH, v_BTKD, window_size, scale, *, block_sizes=None, interpret=None
):
  """Sliding-window causal attention: query t sees keys t - w + 1 ... t.

  Args:
    q_BTNH: [B, T, N, H] queries, bfloat16 or float16.
    k_BTKH: [B, T, K, H] keys (self-attention); N % K == 0.
    v_BTKD: [B, T, K, D] values, D == H in HEAD_DIMS.
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale (a Python number).
    block_sizes: a BlockSizes (or its string form); default BlockSizes().
    interpret: run in Mosaic GPU's interpret mode; default: off GPU.

  Returns:
    [B, T, N, H] in q's dtype; differentiable (custom VJP: the dQ and dK/dV kernels).
  """
  reason = unsupported_reason(q_BTNH, k_BTKH, v_BTKD, window_size)
  if k_BTKH.shape[1] != q_BTNH.shape[1]:
    reason = f"it needs self-attention (S == T), got T={q_BTNH.shape[1]}, S={k_BTKH.shape[1]}"
  if reason:
    raise ValueError(f"implementation='mosaic' is not available: {reason}.")
  if isinstance(block_sizes, str):
    block_sizes = BlockSizes.parse(block_sizes)
  blocks = (block_sizes or BlockSizes()).validate()
  T = q_BTNH.shape[1]
  tile = 2 * max(blocks.block_q, blocks.block_k, blocks.block_q_dkv, blocks.block_k_dkv)
  T_pad = -(-T // tile) * tile
  pad = lambda x: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, 0)))
  interpret = jax.default_backend() != "gpu" if interpret is None else interpret
  st = _kernels().Static(
    window=int(T_pad if window_size is None else min(window_size, T_pad)),
    scale=float(scale),
    groups=q_BTNH.shape[2] // k_BTKH.shape[2],
    block_q=blocks.block_q,
    block_k=blocks.block_k,
    block_q_dkv=blocks.block_q_dkv,
    block_k_dkv=blocks.block_k_dkv,
    stages=blocks.stages,
    interpret=bool(interpret),
  )
  return _attend(pad(q_BTNH), pad(k_BTKH), pad(v_BTKD), st)[:, :T]
