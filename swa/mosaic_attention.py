"""Sliding-window causal attention as warp-specialised Hopper kernels (Pallas Mosaic GPU).

`mosaic_attention` checks and pads the inputs and joins the kernels (forward:
swa/mosaic_forward.py; dQ and dK/dV: swa/mosaic_backward.py) in a custom VJP. Registered in
swa/attention.py as "mosaic" (through `kernel_adapters.tail_aligned`: tail offsets for a sequence
shard over its halo), and inside "cudnn_mosaic" and "fa3_mosaic" (another kernel's forward where
a call is not differentiated, these kernels' forward and backward where it is); `auto` picks
among them on a Hopper GPU by the rules below (AUTO_MAX_WINDOW, AUTO_TRAIN_MAX_WINDOW,
AUTO_TRAIN_OVER_FA3_MAX_WINDOW, AUTO_FEATURES).

What it takes: 16-bit inputs of one dtype, head dims of 64 or 128 (equal for keys and values),
any length (padded at the end to whole CTA tiles: padded keys come after every real query, so
causality hides them), GQA, learned sinks (`sink_logits`), the logit soft-cap
(`logit_softcap`) and packed sequences (`segment_ids`); no attention-sink tokens (`num_sinks`:
the Triton kernels and the reference have them). Off a GPU it runs in Mosaic GPU's interpret mode (JAX >= 0.11; slow: tests at
small shapes); on a GPU it needs a Hopper card (compute capability 9.x).
"""

import dataclasses
import functools
import re
import types

import jax
import jax.numpy as jnp

from swa import kernel_adapters

HEAD_DIMS = (64, 128)
# auto's rules, from two bench_attention.py runs on one H100 (bf16, B = 1, 16 heads of 128,
# n = 16k and 64k, default tiles; results/attention_bench_h100/persistent_2026-12-07/). Their
# forward and fwd+bwd both beat cuDNN's at every n for w = 128 and 512, their fwd+bwd not at 4,096:
# "mosaic" up to AUTO_MAX_WINDOW, and where only their fwd+bwd does, "cudnn_mosaic" (cuDNN's
# forward where a call is not differentiated) up to AUTO_TRAIN_MAX_WINDOW. Their fwd+bwd beat
# FlashAttention-3's at w = 128, not at 512 (0.97-1.01x its speed): with flash-attn3-jax installed,
# "fa3_mosaic" up to AUTO_TRAIN_OVER_FA3_MAX_WINDOW (FA3's forward, 0.99-1.11x the speed of theirs
# there), FA3 above.
AUTO_MAX_WINDOW = 512
AUTO_TRAIN_MAX_WINDOW = 512
AUTO_TRAIN_OVER_FA3_MAX_WINDOW = 128
# What "mosaic" declares in the registry (swa/registry.py says what each feature brings), and the
# features with which auto may pick it: its learned sinks, soft-cap and segment ids (2026-12-08)
# are checked in interpret mode and through the GPU lowering, not yet compiled on a GPU.
FEATURES = (
  "tail_offsets",
  "sink_logits",
  "logit_softcap",
  "segment_ids",
  "block_sizes",
  "interpret",
)
AUTO_FEATURES = ("tail_offsets", "block_sizes", "interpret")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Each kernel's tiles (multiples of 64) and shared-memory ring depth, and how dQ is formed.

  Written "forward / dQ / dK-dV", each kernel as "<rows>x<columns>s<stages>", e.g.
  "64x128s2/64x64s3/64x64s3" (`parse` reads it back); a "p" after a kernel's, as in
  "64x128s2p/64x64s3p/64x64s3p", makes that kernel persistent. Rows are what a computing
  warpgroup owns (queries in the forward and dQ kernels, keys in dK/dV), columns what one
  pipeline step brings.
  The dQ part "fused" drops the dQ kernel: the dK/dV kernel adds each block's dQ into a float32
  buffer by TMA reduce-add (5 products a block pair instead of 7; interpret mode, which has no TMA
  reductions, sums per-warpgroup slices instead). On an H100 (2026-12-07,
  results/attention_bench_h100/2026-12-07/) the fused form is correct but slower than the 7-product
  default at every window measured (fwd+bwd 1.14-1.58x its time): an option, not the default.
  """

  block_q: int = 64  # forward: queries per computing warpgroup
  block_k: int = 64  # forward: keys per pipeline step
  stages: int = 2  # forward: ring slots
  block_q_dq: int = 64  # dQ: queries per computing warpgroup
  block_k_dq: int = 64  # dQ: keys per pipeline step
  stages_dq: int = 3  # dQ: ring slots
  block_q_dkv: int = 64  # dK/dV: queries per pipeline step
  block_k_dkv: int = 64  # dK/dV: keys per computing warpgroup
  stages_dkv: int = 3  # dK/dV: ring slots
  fused_dq: bool = False  # dQ in the dK/dV kernel (block_*_dq, stages_dq unused)
  # forward: one CTA an SM, each looping over tiles of 2 * block_q queries (prefetching the next
  # tile's queries and keys under the current one's work), instead of one CTA a tile. The default
  # for w <= 512 (default_block_sizes).
  persistent: bool = False
  # dQ and dK/dV: persistent in the same way (prefetching the next tile's Q, dO, log-sum-exp and
  # delta, or its K and V). Correct in interpret mode and through the GPU lowering; not yet run on
  # a GPU: off by default. (At head dim 128 a persistent dK/dV with the fused dQ, and either
  # persistent kernel with segment ids, needs more shared memory than an H100 has: the lowering
  # says so.)
  persistent_dq: bool = False
  persistent_dkv: bool = False

  def validate(self):
    """Returns self; a one-line ValueError unless every tile is a multiple of 64, stages >= 2, and
    a persistent dQ has a dQ kernel (is not fused)."""
    tiles = (self.block_q, self.block_k, self.block_q_dq, self.block_k_dq)
    tiles += (self.block_q_dkv, self.block_k_dkv)
    if (
      any(t < 64 or t % 64 for t in tiles) or min(self.stages, self.stages_dq, self.stages_dkv) < 2
    ):
      raise ValueError(f"mosaic block sizes must be multiples of 64 and stages >= 2, got {self}.")
    if self.fused_dq and self.persistent_dq:
      raise ValueError("a fused dQ has no dQ kernel to make persistent (persistent_dq=True).")
    return self

  def kernels(self):
    """(forward, dQ or None when fused, dK/dV), each (rows, columns, stages) as the kernels take."""
    dq = None if self.fused_dq else (self.block_q_dq, self.block_k_dq, self.stages_dq)
    fwd = (self.block_q, self.block_k, self.stages)
    return fwd, dq, (self.block_q_dkv, self.block_k_dkv, self.stages_dkv)

  def __str__(self):
    fwd, dq, dkv = self.kernels()
    one = lambda rows, cols, stages: f"{rows}x{cols}s{stages}"
    forward = one(*fwd) + ("p" if self.persistent else "")
    dq = "fused" if dq is None else one(*dq) + ("p" if self.persistent_dq else "")
    return "/".join([forward, dq, one(*dkv) + ("p" if self.persistent_dkv else "")])

  @classmethod
  def parse(cls, text):
    """BlockSizes from its string form (see the class docstring)."""
    kernel = r"(\d+)x(\d+)s(\d+)"
    match = re.fullmatch(rf"{kernel}(p?)/(?:{kernel}(p?)|(fused))/{kernel}(p?)", text.strip())
    if not match:
      raise ValueError(
        "mosaic block sizes look like '64x64s2/64x64s3/64x64s3' (or '64x64s2p/64x64s3p/...', "
        f"'.../fused/...'), got {text!r}."
      )
    g = match.groups()
    number = lambda x: 64 if x is None else int(x)  # the unused dQ tiles of a fused setting
    return cls(
      *map(int, g[:3]),
      *map(number, g[4:7]),
      *map(int, g[9:12]),
      fused_dq=bool(g[8]),
      persistent=bool(g[3]),
      persistent_dq=bool(g[7]),
      persistent_dkv=bool(g[12]),
    )


def default_block_sizes(window_size):
  """Each kernel's fastest tiles in bench_attention.py's H100 tuning run at n = 16k and 64k
  (2026-12-07, results/attention_bench_h100/persistent_2026-12-07/tune.md): a persistent forward
  with steps of 128 keys up to w = 512 (0.83-0.88x cuDNN's forward time, against 0.96-1.03x one
  CTA a tile), one CTA a tile beyond (0.96x at 4,096, against 0.96-1.07x persistent); both
  backward kernels 64 x 64 with 3 ring slots (the fastest backward at every w,
  results/attention_bench_h100/mosaic_2026-12-07/)."""
  return BlockSizes(block_k=128, persistent=window_size is not None and window_size <= 512)


@functools.cache
def _kernels():
  """The kernels and their Static (swa/mosaic_forward.py, mosaic_backward.py, mosaic_pipeline.py),
  imported on first use (they import Mosaic GPU, which swa does not need otherwise)."""
  # pylint: disable-next=g-import-not-at-top
  from swa import mosaic_backward, mosaic_forward, mosaic_pipeline

  return types.SimpleNamespace(
    Static=mosaic_pipeline.Static,
    LOG2E=mosaic_pipeline.LOG2E,
    forward=mosaic_forward.forward,
    backward_dq=mosaic_backward.backward_dq,
    backward_dkv=mosaic_backward.backward_dkv,
  )


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
  return kernel_adapters.sixteen_bit_reason(q_BTNH, k_BSKH, v_BSKD, HEAD_DIMS)


def auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=None):
  """Where `auto` runs "mosaic": a GPU and w <= max_window (AUTO_MAX_WINDOW by default); the
  limits (Hopper, 16-bit, head dims) are in the entry's check."""
  del q_BTNH, k_BSKH, v_BSKD
  limit = AUTO_MAX_WINDOW if max_window is None else max_window
  return jax.default_backend() == "gpu" and window_size is not None and window_size <= limit


def auto_train_when(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Where `auto` runs "cudnn_mosaic": as auto_when, w <= AUTO_TRAIN_MAX_WINDOW."""
  return auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=AUTO_TRAIN_MAX_WINDOW)


def auto_train_over_fa3_when(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Where `auto` runs "fa3_mosaic": as auto_when, w <= AUTO_TRAIN_OVER_FA3_MAX_WINDOW."""
  return auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=AUTO_TRAIN_OVER_FA3_MAX_WINDOW)


def _persistent_ctas(interpret):
  """A persistent kernel's CTAs: one an SM of the GPU; 3 in interpret mode (a few, so that the
  tests' small grids give each CTA several tiles, and some one more than others)."""
  if interpret:
    return 3
  return int(getattr(jax.devices()[0], "core_count", 0) or 132)  # 132: an H100 SXM's SMs


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend(q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, st):
  return _kernels().forward(q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, st)[0]


def _attend_fwd(q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, st):
  out_BTNH, lse_BNT = _kernels().forward(q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, st)
  return out_BTNH, (q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, out_BTNH, lse_BNT)


def _attend_bwd(st, residuals, do_BTNH):
  q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, out_BTNH, lse_BNT = residuals
  do_BTNH = do_BTNH.astype(q_BTNH.dtype)
  delta_BNT = jnp.einsum(
    "BTNH,BTNH->BNT", out_BTNH.astype(jnp.float32), do_BTNH.astype(jnp.float32)
  )
  dsink_N = None
  if st.sinks:  # -sum over rows of p_sink * (dO . O); padded rows have dO = 0, so delta = 0
    p_sink_BNT = jnp.exp2(sink_N[None, :, None] * _kernels().LOG2E - lse_BNT)
    dsink_N = -jnp.einsum("BNT,BNT->N", p_sink_BNT, delta_BNT)
  args = (q_BTNH, k_BTKH, v_BTKH, do_BTNH, lse_BNT, delta_BNT, q_seg_BT, k_seg_BT, st)
  if st.dq is None:  # fused: the dK/dV kernel forms dQ too
    dk_BTNH, dv_BTNH, dq_BTNH = _kernels().backward_dkv(*args)
  else:
    dq_BTNH = _kernels().backward_dq(*args)
    dk_BTNH, dv_BTNH = _kernels().backward_dkv(*args)
  B, T, N, H = q_BTNH.shape
  K = k_BTKH.shape[2]
  group_sum = lambda x: x.reshape(B, T, K, N // K, H).astype(jnp.float32).sum(3).astype(x.dtype)
  return dq_BTNH, group_sum(dk_BTNH), group_sum(dv_BTNH), dsink_N, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def mosaic_attention(
  q_BTNH,
  k_BTKH,
  v_BTKD,
  window_size,
  scale,
  *,
  sink_logits=None,
  logit_softcap=None,
  segment_ids=None,
  k_segment_ids=None,
  block_sizes=None,
  interpret=None,
):
  """Sliding-window causal attention: query t sees keys t - w + 1 ... t.

  Args:
    q_BTNH: [B, T, N, H] queries, bfloat16 or float16.
    k_BTKH: [B, T, K, H] keys (self-attention); N % K == 0.
    v_BTKD: [B, T, K, D] values, D == H in HEAD_DIMS.
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale (a Python number).
    sink_logits: optional float [N], learned sinks (gpt-oss): one logit per query head in every
      row's softmax denominator; differentiable.
    logit_softcap: None, or a cap c > 0 (Gemma 2): scaled logits s become c * tanh(s / c).
    segment_ids: optional int [B, T] (packed sequences): a query sees only keys of its own
      segment, inside its window; k_segment_ids [B, T], the keys' (default segment_ids).
    block_sizes: a BlockSizes (or its string form); default `default_block_sizes(window_size)`.
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
  blocks = (block_sizes or default_block_sizes(window_size)).validate()
  fwd, dq, dkv = blocks.kernels()
  T = q_BTNH.shape[1]
  tile = 2 * max(fwd[:2] + (dq or fwd)[:2] + dkv[:2])
  T_pad = -(-T // tile) * tile
  pad = lambda x: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, 0)))
  # Padded queries and keys share one id: each padded query sees itself (no empty row), and no
  # real query sees a padded key (they come after it).
  pad_ids = lambda x: jnp.pad(
    jnp.asarray(x, jnp.int32), ((0, 0), (0, T_pad - T)), constant_values=-1
  )
  segments = segment_ids is not None
  if segments:
    k_segment_ids = segment_ids if k_segment_ids is None else k_segment_ids
    segment_ids, k_segment_ids = pad_ids(segment_ids), pad_ids(k_segment_ids)
  if sink_logits is not None:
    sink_logits = jnp.asarray(sink_logits, jnp.float32)
  interpret = jax.default_backend() != "gpu" if interpret is None else interpret
  st = _kernels().Static(
    window=int(T_pad if window_size is None else min(window_size, T_pad)),
    scale=float(scale),
    groups=q_BTNH.shape[2] // k_BTKH.shape[2],
    fwd=fwd,
    fwd_ctas=_persistent_ctas(interpret) if blocks.persistent else None,
    dq=dq,
    dq_ctas=_persistent_ctas(interpret) if blocks.persistent_dq else None,
    dkv=dkv,
    dkv_ctas=_persistent_ctas(interpret) if blocks.persistent_dkv else None,
    interpret=bool(interpret),
    sinks=sink_logits is not None,
    segments=segments,
    softcap=None if logit_softcap is None else float(logit_softcap),
  )
  q, k, v = pad(q_BTNH), pad(k_BTKH), pad(v_BTKD)
  return _attend(q, k, v, sink_logits, segment_ids, k_segment_ids, st)[:, :T]
