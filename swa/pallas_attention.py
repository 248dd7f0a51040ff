"""Sliding-window causal attention as Pallas kernels (Triton lowering on GPU).

Three kernels, each over a grid of (block, batch, query head):
  forward  a query block loops over the key blocks its window touches, and only those; keeps the
           output and the float32 log-sum-exp (base 2) per query.
  dQ       a query block, the same key blocks, recomputing the scores.
  dK/dV    a key block loops over the query blocks that see it, and only those.
Each loop has three parts: lower edge blocks (the window's start cuts them), interior blocks (all
pairs visible: no mask is built) and upper edge blocks (the causal diagonal); or, with
`BlockSizes.one_loop` (the default for w <= 512), one loop that masks every block, which Triton
pipelines better when each part would hold a block or two. The dK/dV kernel works on transposed
scores [keys, queries] so that no computed tile is ever transposed. Softmax statistics are
float32; scores use exp2 with log2(e) folded into the scale.

Attention sinks (keys 0 ... num_sinks - 1 visible to every later query): the forward and dQ
programs first visit the sinks' key blocks that lie before their window, masked; the dK/dV programs
of those blocks go on over every later query block.

Any length and head dim: the sequence is padded at the end to whole blocks (padded keys come after
every real query, so causality hides them); head dims are zero-padded to a power of two >= 16
(Triton's smallest dot). GQA: query head n reads key/value head n // G; the dK/dV pass writes one
gradient per query head and the wrapper sums each group of G. Off GPU the kernels run in Pallas
interpret mode (slow: tests at small shapes). bench_attention.py times them against cuDNN.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_LOG2E = math.log2(math.e)
_MIN_BLOCK = 16  # Triton's smallest dot operand dimension
# `auto` picks these kernels over cuDNN on a GPU for windows up to this (0: never), the rule
# bench_attention.py's GPU run decides: the largest w at which they beat cuDNN forward and fwd+bwd at
# every measured n. results/attention_bench_h200/ gives 0: their fwd+bwd beats cuDNN only at w = 128
# (1.28x cuDNN's speed at 16k, 1.18x at 64k), and their forward loses at 64k/128 (1.03x the time).
AUTO_MAX_WINDOW = 0
# Where `auto` runs "cudnn_pallas" instead (cuDNN's forward when a call is not differentiated, these
# kernels' forward and backward when it is), for windows up to this: the largest w at which their
# fwd+bwd beat cuDNN's at every measured n. results/attention_bench_h200/ gives 128 (1.28x cuDNN's
# speed at 16k, 1.18x at 64k; at w = 512 0.93x and 0.89x).
AUTO_TRAIN_MAX_WINDOW = 128


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles (powers of two >= 16), loop form and Triton launch parameters of the three kernels.

  Written "fwd_q x fwd_k / dq_q x dq_k / dkv_q x dkv_k / w warps s stages / bwd w warps s stages",
  e.g. "128x64/128x32/32x128/w4s3/w8s2", with "/1loop" appended for one_loop (`parse` reads it
  back).
  """

  block_q: int = 128  # forward: queries per program
  block_k: int = 64  # forward: keys per loop step
  block_q_dq: int = 128  # dQ pass: queries per program
  block_k_dq: int = 32  # dQ pass: keys per loop step
  block_q_dkv: int = 32  # dK/dV pass: queries per loop step
  block_k_dkv: int = 128  # dK/dV pass: keys per program
  num_warps: int = 4
  num_stages: int = 3
  num_warps_bwd: int = 8
  num_stages_bwd: int = 2
  one_loop: bool = False  # one masked loop per program instead of edges + unmasked interior

  def blocks(self):
    return (
      self.block_q,
      self.block_k,
      self.block_q_dq,
      self.block_k_dq,
      self.block_q_dkv,
      self.block_k_dkv,
    )

  def __str__(self):
    b = self.blocks()
    return (
      f"{b[0]}x{b[1]}/{b[2]}x{b[3]}/{b[4]}x{b[5]}/w{self.num_warps}s{self.num_stages}/"
      f"w{self.num_warps_bwd}s{self.num_stages_bwd}" + ("/1loop" if self.one_loop else "")
    )

  @classmethod
  def parse(cls, text):
    """BlockSizes from its string form (see the class docstring)."""
    body, one_loop = (text[: -len("/1loop")], True) if text.endswith("/1loop") else (text, False)
    numbers = re.split(r"x|/w|/|s", body)
    if len(numbers) != 10 or not all(n.strip().isdigit() for n in numbers):
      raise ValueError(
        "pallas block sizes look like '128x64/128x32/32x128/w4s3/w8s2' (optionally + '/1loop'), "
        f"got {text!r}."
      )
    return cls(*map(int, numbers), one_loop=one_loop)


def default_block_sizes(window_size):
  """Tiles for every window: 64x64 forward, 64x32 dQ, 32x64 dK/dV, 4 warps, 3 stages; one masked
  loop per program for w <= 512 (window None: full attention, split loops).

  On one H200 (results/attention_bench_h200/, bf16, 16 heads of 128) these small tiles beat
  128-query tiles, more stages and 8 warps in every measured (n, w), n = 16k and 64k, w = 128, 512,
  4096. A query tile of Cq queries with key tiles of Ck reads about w + Cq + Ck keys, of which
  each query uses w, so small tiles waste less of the band's edges. One loop (kernel_traces/)
  took the three kernels' device time from 0.57 to 0.51 ms at 16k/128 and 2.16 to 1.92 ms at
  64k/128, was even at w = 512 (0.99 / 0.98 ms, 3.86 / 3.80 ms) and lost at w = 4096 (4.48 / 4.85
  ms, 19.6 / 20.8 ms), where the unmasked interior is most of the band.
  """
  one_loop = window_size is not None and window_size <= 512
  return BlockSizes(64, 64, 64, 32, 32, 64, 4, 3, 4, 3, one_loop=one_loop)


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels need that is not an array (hashable: a custom_vjp static)."""

  window: int  # >= 1; the padded length for full causal attention
  num_sinks: int  # keys 0 ... num_sinks - 1 stay visible to every later query
  scale: float
  groups: int  # G = N // K
  blocks: BlockSizes
  interpret: bool


def _ceil_div(a, b):
  """ceil(a / b) for non-negative traced a and a static positive b."""
  return lax.div(a + (b - 1), b)


def _visible(q_start, k_start, block_q, block_k, st):
  """[block_q, block_k] bool: query q_start + t sees key k_start + s (mask.visible's rule)."""
  q_pos = q_start + jnp.arange(block_q)[:, None]
  k_pos = k_start + jnp.arange(block_k)[None, :]
  inside = k_pos > q_pos - st.window
  if st.num_sinks:
    inside |= k_pos < st.num_sinks
  return (k_pos <= q_pos) & inside


def _sink_blocks(st, lo, block_k, body, carry):
  """Masked steps over the key blocks with sinks that come before the window's first block lo."""
  if not st.num_sinks:
    return carry
  sink_blocks = lax.min(-(-st.num_sinks // block_k), lo)
  return lax.fori_loop(0, sink_blocks, functools.partial(body, masked=True), carry)


def _loops(st, lo, mid_lo, mid_hi, hi, body, carry):
  """Runs body(j, carry, masked) over the blocks [lo, hi).

  Three loops by default: masked on both edges, unmasked over the interior [mid_lo, mid_hi).
  With st.blocks.one_loop, a single loop masks every block: more mask work, but one loop that
  Triton can software-pipeline even when the edges leave each of the three a block or two.
  """
  if st.blocks.one_loop:
    return lax.fori_loop(lo, hi, functools.partial(body, masked=True), carry)
  mid_lo = lax.min(lax.max(mid_lo, lo), hi)
  mid_hi = lax.min(lax.max(mid_hi, mid_lo), hi)
  carry = lax.fori_loop(lo, mid_lo, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(mid_lo, mid_hi, functools.partial(body, masked=False), carry)
  return lax.fori_loop(mid_hi, hi, functools.partial(body, masked=True), carry)


def _key_block_range(q_start, block_q, block_k, window):
  """Key blocks [lo, hi) a query block touches, and [mid_lo, mid_hi) it sees entirely."""
  lo = lax.div(lax.max(q_start - window + 1, 0), block_k)
  hi = _ceil_div(q_start + block_q, block_k)
  mid_lo = _ceil_div(lax.max(q_start + block_q - window, 0), block_k)
  mid_hi = lax.div(q_start + 1, block_k)
  return lo, mid_lo, mid_hi, hi


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, st, block_q, block_k):
  q_start = pl.program_id(0) * block_q
  q = q_ref[...]
  qk_scale = st.scale * _LOG2E

  def body(j, carry, masked):
    acc, m, l = carry
    k = k_ref[pl.ds(j * block_k, block_k), :]
    v = v_ref[pl.ds(j * block_k, block_k), :]
    s = plgpu.dot(q, k, trans_b=True) * qk_scale
    if masked:
      s = jnp.where(_visible(q_start, j * block_k, block_q, block_k, st), s, _MASK_VALUE)
    # A row with no visible key in this block yet (m_new still the mask value) gets p = 1 on
    # masked keys; its first visible key later sets alpha = exp2(mask - real) = 0, which wipes
    # them. Every query sees itself, so every row gets there.
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = alpha * l + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, l

  rows = jnp.zeros((block_q,), jnp.float32)
  carry = (jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32), rows + _MASK_VALUE, rows)
  blocks = _key_block_range(q_start, block_q, block_k, st.window)
  carry = _sink_blocks(st, blocks[0], block_k, body, carry)
  acc, m, l = _loops(st, *blocks, body, carry)
  # Every query sees itself, so l > 0 (padded queries too).
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, st, block_q, block_k):
  q_start = pl.program_id(0) * block_q
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  qk_scale = st.scale * _LOG2E

  def body(j, dq, masked):
    k = k_ref[pl.ds(j * block_k, block_k), :]
    v = v_ref[pl.ds(j * block_k, block_k), :]
    p = jnp.exp2(plgpu.dot(q, k, trans_b=True) * qk_scale - lse[:, None])
    if masked:
      p = jnp.where(_visible(q_start, j * block_k, block_q, block_k, st), p, 0.0)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32)
  blocks = _key_block_range(q_start, block_q, block_k, st.window)
  dq = _loops(st, *blocks, body, _sink_blocks(st, blocks[0], block_k, body, dq))
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, st, block_q, block_k
):
  # Transposed scores [keys, queries]: every product's left operand is a [block_k, .] tile
  # (block_k rows for the matrix units, which want >= 64 on Hopper) and only loaded tiles are
  # transposed, never a computed one (that would cost a round trip through shared memory).
  k_start = pl.program_id(0) * block_k
  k, v = k_ref[...], v_ref[...]
  qk_scale = st.scale * _LOG2E

  def body(i, carry, masked):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    lse, delta = lse_ref[rows], delta_ref[rows]
    p_T = jnp.exp2(plgpu.dot(k, q, trans_b=True) * qk_scale - lse[None, :])
    if masked:
      p_T = jnp.where(_visible(i * block_q, k_start, block_q, block_k, st).T, p_T, 0.0)
    dv = dv + plgpu.dot(p_T.astype(do.dtype), do)
    ds_T = p_T * (plgpu.dot(v, do, trans_b=True) - delta[None, :])
    dk = dk + plgpu.dot(ds_T.astype(q.dtype), q)
    return dk, dv

  # Queries that see keys k_start ... k_start + block_k - 1: k_start ... k_start + block_k + w - 2.
  # Interior query blocks: first query >= last key, and last query - w < first key.
  lo = lax.div(k_start, block_q)
  hi = lax.min(_ceil_div(k_start + block_k + st.window - 1, block_q), q_ref.shape[0] // block_q)
  mid_lo = _ceil_div(k_start + block_k - 1, block_q)
  mid_hi = lax.div(k_start + st.window, block_q)
  carry = (
    jnp.zeros((block_k, q_ref.shape[-1]), jnp.float32),
    jnp.zeros((block_k, v_ref.shape[-1]), jnp.float32),
  )
  dk, dv = _loops(st, lo, mid_lo, mid_hi, hi, body, carry)
  if st.num_sinks:  # a block with sinks: every later query block sees it
    last = jnp.where(k_start < st.num_sinks, q_ref.shape[0] // block_q, hi)
    dk, dv = lax.fori_loop(hi, last, functools.partial(body, masked=True), (dk, dv))
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _call(kernel, st, grid, specs, out_shape, bwd):
  """pallas_call over `grid` with (in_specs, out_specs) = specs and st's launch parameters."""
  b = st.blocks
  warps, stages = (b.num_warps_bwd, b.num_stages_bwd) if bwd else (b.num_warps, b.num_stages)
  params = None if st.interpret else plgpu.CompilerParams(num_warps=warps, num_stages=stages)
  return pl.pallas_call(
    kernel,
    grid=grid,
    in_specs=specs[0],
    out_specs=specs[1],
    out_shape=out_shape,
    interpret=st.interpret,
    compiler_params=params,
    name=f"swa_{kernel.func.__name__.strip('_')}",
  )


def _rows(block, dim, groups=1):
  """[B, T, heads, dim] tiles of `block` rows of head n // groups; grid (row block, b, n)."""
  return pl.BlockSpec((None, block, None, dim), lambda i, b, n: (b, i, lax.div(n, groups), 0))


def _whole(seq_len, dim, groups=1):
  """[B, T, heads, dim]: the whole sequence of head n // groups."""
  return pl.BlockSpec((None, seq_len, None, dim), lambda i, b, n: (b, 0, lax.div(n, groups), 0))


def _stats(block, whole=False):
  """[B, N, T] float32 per-query statistics of head n: `block` entries (all of them if whole)."""
  return pl.BlockSpec((None, None, block), lambda i, b, n: (b, n, 0 if whole else i))


@functools.partial(jax.jit, static_argnums=3)
def _forward(q, k, v, st):
  """Output [B, T, N, D] and base-2 log-sum-exp [B, N, T] (float32)."""
  (B, T, N, H), D, G = q.shape, v.shape[-1], st.groups
  bq, bk = st.blocks.block_q, st.blocks.block_k
  kernel = functools.partial(_fwd_kernel, st=st, block_q=bq, block_k=bk)
  specs = [_rows(bq, H), _whole(T, H, G), _whole(T, D, G)], [_rows(bq, D), _stats(bq)]
  out_shape = [
    jax.ShapeDtypeStruct((B, T, N, D), q.dtype),
    jax.ShapeDtypeStruct((B, N, T), jnp.float32),
  ]
  return _call(kernel, st, (T // bq, B, N), specs, out_shape, bwd=False)(q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attend(q, k, v, st):
  return _forward(q, k, v, st)[0]


def _attend_fwd(q, k, v, st):
  o, lse = _forward(q, k, v, st)
  return o, (q, k, v, o, lse)


def _attend_bwd(st, res, do):
  return _backward(*res, do, st)


@functools.partial(jax.jit, static_argnums=6)
def _backward(q, k, v, o, lse, do, st):
  """(dq, dk, dv): the dQ kernel, then the dK/dV kernel (one gradient per query head)."""
  (B, T, N, H), (K, D), G, b = q.shape, v.shape[2:], st.groups, st.blocks
  delta = jnp.einsum("BTND,BTND->BNT", o.astype(jnp.float32), do.astype(jnp.float32))
  bq = b.block_q_dq
  kernel = functools.partial(_dq_kernel, st=st, block_q=bq, block_k=b.block_k_dq)
  specs = (
    [_rows(bq, H), _whole(T, H, G), _whole(T, D, G), _rows(bq, D), _stats(bq), _stats(bq)],
    _rows(bq, H),
  )
  dq = _call(kernel, st, (T // bq, B, N), specs, jax.ShapeDtypeStruct(q.shape, q.dtype), bwd=True)(
    q, k, v, do, lse, delta
  )

  bk, bq = b.block_k_dkv, b.block_q_dkv
  kernel = functools.partial(_dkv_kernel, st=st, block_q=bq, block_k=bk)
  specs = (
    [
      _whole(T, H),
      _rows(bk, H, G),
      _rows(bk, D, G),
      _whole(T, D),
      _stats(T, whole=True),
      _stats(T, whole=True),
    ],
    [_rows(bk, H), _rows(bk, D)],
  )
  # With G > 1 the G query heads' gradients of one key/value head are summed here, in float32.
  dtype = lambda x: x.dtype if G == 1 else jnp.float32
  out_shape = [
    jax.ShapeDtypeStruct((B, T, N, H), dtype(k)),
    jax.ShapeDtypeStruct((B, T, N, D), dtype(v)),
  ]
  dk, dv = _call(kernel, st, (T // bk, B, N), specs, out_shape, bwd=True)(q, k, v, do, lse, delta)
  if G > 1:
    dk = dk.reshape(B, T, K, G, H).sum(3).astype(k.dtype)
    dv = dv.reshape(B, T, K, G, D).sum(3).astype(v.dtype)
  return dq, dk, dv


_attend.defvjp(_attend_fwd, _attend_bwd)


def _pow2_at_least(x, floor=_MIN_BLOCK):
  return max(floor, 1 << max(0, int(x) - 1).bit_length())


def unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Why the kernels cannot take these inputs (a registry `check`), or None."""
  del v_BSKD, window_size
  if k_BSKH.shape[1] != q_BTNH.shape[1]:
    return f"it needs self-attention (S == T), got T={q_BTNH.shape[1]}, S={k_BSKH.shape[1]}"
  return None


def auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=None):
  """Where `auto` prefers these kernels to cuDNN: GPU, 16-bit inputs, w <= AUTO_MAX_WINDOW.

  (Float32 inputs would run the kernels' dots in TF32: auto leaves them to chunked.)
  max_window replaces AUTO_MAX_WINDOW (auto_train_when passes AUTO_TRAIN_MAX_WINDOW).
  """
  del k_BSKH, v_BSKD
  return (
    jax.default_backend() == "gpu"
    and q_BTNH.dtype in (jnp.bfloat16, jnp.float16)
    and window_size is not None
    and window_size <= (AUTO_MAX_WINDOW if max_window is None else max_window)
  )


def auto_train_when(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Where `auto` prefers "cudnn_pallas" to cuDNN: as auto_when, w <= AUTO_TRAIN_MAX_WINDOW."""
  return auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=AUTO_TRAIN_MAX_WINDOW)


def pallas_attention(
  q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, num_sinks=0, block_sizes=None, interpret=None
):
  """Sliding-window causal attention: query t sees keys t - w + 1 ... t (and 0 ... num_sinks - 1).

  Args:
    q_BTNH: [B, T, N, H] queries.
    k_BSKH: [B, T, K, H] keys (self-attention: S == T); N % K == 0.
    v_BSKD: [B, T, K, D] values.
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale (a Python number).
    num_sinks: attention sinks, a Python int >= 0: keys 0 ... num_sinks - 1 stay visible to every
      later query. The query blocks past a window still visit the sinks' key blocks (the forward
      and dQ kernels loop over them first), and the dK/dV programs of those blocks visit every
      later query block.
    block_sizes: a BlockSizes (or its string form); default `default_block_sizes(window_size)`.
      Tiles longer than the (power-of-two-rounded) sequence are shrunk to it.
    interpret: run the kernels in Pallas interpret mode; default: off GPU.

  Returns:
    [B, T, N, D] in q's dtype; differentiable (custom VJP: the dQ and dK/dV kernels).
  """
  (_, T, N, H), (K, D) = q_BTNH.shape, v_BSKD.shape[2:]
  reason = unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size)
  if reason:
    raise ValueError(f"implementation='pallas' is not available: {reason}.")
  if not isinstance(num_sinks, (int, np.integer)) or isinstance(num_sinks, bool) or num_sinks < 0:
    raise ValueError(
      f"implementation='pallas' takes num_sinks as a Python int >= 0 (its loops are laid out at "
      f"trace time), got {num_sinks!r}."
    )
  if isinstance(block_sizes, str):
    block_sizes = BlockSizes.parse(block_sizes)
  blocks = block_sizes or default_block_sizes(window_size)
  if any(size < _MIN_BLOCK or size & (size - 1) for size in blocks.blocks()):
    raise ValueError(f"pallas block sizes must be powers of two >= {_MIN_BLOCK}, got {blocks}.")
  cap = _pow2_at_least(T)
  blocks = dataclasses.replace(
    blocks,
    **{
      f.name: min(getattr(blocks, f.name), cap)
      for f in dataclasses.fields(BlockSizes)
      if f.name.startswith("block_")
    },
  )
  T_pad = -(-T // max(blocks.blocks())) * max(blocks.blocks())
  H_pad, D_pad = _pow2_at_least(H), _pow2_at_least(D)
  pad = lambda x, dim, dim_pad: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, dim_pad - dim)))
  window = T_pad if window_size is None else min(window_size, T_pad)
  interpret = jax.default_backend() != "gpu" if interpret is None else interpret
  st = _Static(
    window=int(window),
    num_sinks=0 if window_size is None else int(min(num_sinks, T_pad)),
    scale=float(scale),
    groups=N // K,
    blocks=blocks,
    interpret=bool(interpret),
  )
  out = _attend(pad(q_BTNH, H, H_pad), pad(k_BSKH, H, H_pad), pad(v_BSKD, D, D_pad), st)
  return out[:, :T, :, :D]
