"""The Pallas (Triton) kernels of `implementation="pallas"`: forward, dQ and dK/dV, and their VJP.

Three kernels, each over a grid of (block, batch, query head):
  forward  a query block loops over the key blocks its window touches, and only those; keeps the
           output and the float32 log-sum-exp (base 2) per query.
  dQ       a query block, the same key blocks, recomputing the scores.
  dK/dV    a key block loops over the query blocks that see it, and only those.
Each loop has three parts: lower edge blocks (the window's start cuts them), interior blocks (all
pairs visible: no mask is built) and upper edge blocks (the causal diagonal); or, with
`one_loop`, one loop that masks every block. Every mask is `mask.visible` on the block's
positions, the rule all implementations share. The dK/dV kernel works on transposed scores [keys,
queries] so that no computed tile is ever transposed. Softmax statistics are float32; scores use
exp2 with log2(e) folded into the scale.

Attention sinks (keys 0 ... num_sinks - 1 visible to every later query): the forward and dQ
programs first visit the sinks' key blocks that lie before their window, masked; the dK/dV programs
of those blocks go on over every later query block.

The inputs arrive padded (swa/pallas_attention.py: whole blocks, head dims a power of two >= 16).
GQA: query head n reads key/value head n // G; the dK/dV pass writes one gradient per query head
and `backward` sums each group of G.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from swa import mask

_LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class Static:
  """Everything the kernels need that is not an array (hashable: a custom_vjp static)."""

  window: int  # >= 1; the padded length for full causal attention
  num_sinks: int  # keys 0 ... num_sinks - 1 stay visible to every later query
  scale: float
  groups: int  # G = N // K
  blocks: object  # a pallas_attention.BlockSizes: tiles, loop form, launch parameters
  interpret: bool
  sink_logits: bool = False  # learned sinks: a [B, N, T] input of each row's sink logit
  segments: bool = False  # packed sequences: [B, T] query and key segment ids (every block masked)


def _ceil_div(a, b):
  """ceil(a / b) for non-negative traced a and a static positive b."""
  return lax.div(a + (b - 1), b)


def _visible(q_start, k_start, block_q, block_k, st, seg=None, keys_first=False):
  """bool [block_q, block_k] (keys_first: [block_k, block_q]): `mask.visible` on the positions
  (and on seg = (query segment ids [block_q], key segment ids [block_k]) with st.segments)."""
  q_pos = q_start + jnp.arange(block_q)
  k_pos = k_start + jnp.arange(block_k)
  q_seg, k_seg = (None, None) if seg is None else seg
  if keys_first:
    q_pos, k_pos = q_pos[None, :], k_pos[:, None]
    q_seg, k_seg = (None, None) if seg is None else (q_seg[None, :], k_seg[:, None])
  else:
    q_pos, k_pos = q_pos[:, None], k_pos[None, :]
    q_seg, k_seg = (None, None) if seg is None else (q_seg[:, None], k_seg[None, :])
  return mask.visible(q_pos, k_pos, st.window, st.num_sinks, q_seg, k_seg)


def _extras(st, refs, rows):
  """Splits a kernel's refs after q, k, v: (the `rows` row-block inputs, the sink logits ref or
  None, the segment refs (rows' own, the other side's whole) or None, the outputs)."""
  refs = list(refs)
  front = [refs.pop(0) for _ in range(rows)]
  sink_ref = refs.pop(0) if st.sink_logits else None
  seg_refs = (refs.pop(0), refs.pop(0)) if st.segments else None
  return front, sink_ref, seg_refs, refs


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


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, st, block_q, block_k):
  _, sink_ref, seg_refs, (o_ref, lse_ref) = _extras(st, refs, 0)
  q_start = pl.program_id(0) * block_q
  q = q_ref[...]
  q_seg = None if seg_refs is None else seg_refs[0][...]
  qk_scale = st.scale * _LOG2E

  def body(j, carry, masked):
    acc, m, l = carry
    k = k_ref[pl.ds(j * block_k, block_k), :]
    v = v_ref[pl.ds(j * block_k, block_k), :]
    s = plgpu.dot(q, k, trans_b=True) * qk_scale
    if masked:
      seg = None if seg_refs is None else (q_seg, seg_refs[1][pl.ds(j * block_k, block_k)])
      s = jnp.where(_visible(q_start, j * block_k, block_q, block_k, st, seg), s, mask.MASK_VALUE)
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
  carry = (jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32), rows + mask.MASK_VALUE, rows)
  if sink_ref is not None:  # a learned sink: the running max starts at it, its exp2(0) = 1 in l
    carry = (carry[0], sink_ref[...] * _LOG2E, rows + 1.0)
  blocks = _key_block_range(q_start, block_q, block_k, st.window)
  carry = _sink_blocks(st, blocks[0], block_k, body, carry)
  acc, m, l = _loops(st, *blocks, body, carry)
  # Every query sees itself, so l > 0 (padded queries too; a sink adds to l).
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _dq_kernel(q_ref, k_ref, v_ref, *refs, st, block_q, block_k):
  (do_ref, lse_ref, delta_ref), _, seg_refs, (dq_ref,) = _extras(st, refs, 3)
  q_start = pl.program_id(0) * block_q
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_seg = None if seg_refs is None else seg_refs[0][...]
  qk_scale = st.scale * _LOG2E

  def body(j, dq, masked):
    k = k_ref[pl.ds(j * block_k, block_k), :]
    v = v_ref[pl.ds(j * block_k, block_k), :]
    p = jnp.exp2(plgpu.dot(q, k, trans_b=True) * qk_scale - lse[:, None])
    if masked:
      seg = None if seg_refs is None else (q_seg, seg_refs[1][pl.ds(j * block_k, block_k)])
      p = jnp.where(_visible(q_start, j * block_k, block_q, block_k, st, seg), p, 0.0)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32)
  blocks = _key_block_range(q_start, block_q, block_k, st.window)
  dq = _loops(st, *blocks, body, _sink_blocks(st, blocks[0], block_k, body, dq))
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, *refs, st, block_q, block_k):
  # Transposed scores [keys, queries]: every product's left operand is a [block_k, .] tile
  # (block_k rows for the matrix units, which want >= 64 on Hopper) and only loaded tiles are
  # transposed, never a computed one (that would cost a round trip through shared memory).
  (do_ref, lse_ref, delta_ref), _, seg_refs, (dk_ref, dv_ref) = _extras(st, refs, 3)
  k_start = pl.program_id(0) * block_k
  k, v = k_ref[...], v_ref[...]
  k_seg = None if seg_refs is None else seg_refs[0][...]  # this program's keys' segments
  qk_scale = st.scale * _LOG2E

  def body(i, carry, masked):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    lse, delta = lse_ref[rows], delta_ref[rows]
    p_T = jnp.exp2(plgpu.dot(k, q, trans_b=True) * qk_scale - lse[None, :])
    if masked:
      seg = None if seg_refs is None else (seg_refs[1][rows], k_seg)
      visible_T = _visible(i * block_q, k_start, block_q, block_k, st, seg, keys_first=True)
      p_T = jnp.where(visible_T, p_T, 0.0)
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


def _seg_rows(block):
  """[B, T] segment ids: `block` entries of the program's row block; grid (row block, b, n)."""
  return pl.BlockSpec((None, block), lambda i, b, n: (b, i))


def _seg_whole(seq_len):
  """[B, T] segment ids: the whole sequence."""
  return pl.BlockSpec((None, seq_len), lambda i, b, n: (b, 0))


def _extra_inputs(st, block, seq_len, sink_N, q_seg, k_seg, B, keys_own=False):
  """(specs, arrays) of the optional inputs after q, k, v (the order `_extras` reads them)."""
  specs, arrays = [], []
  if st.sink_logits:
    specs.append(_stats(block))
    arrays.append(jnp.broadcast_to(sink_N[None, :, None], (B, sink_N.shape[0], seq_len)))
  if st.segments:
    own, other = (k_seg, q_seg) if keys_own else (q_seg, k_seg)
    specs += [_seg_rows(block), _seg_whole(seq_len)]
    arrays += [own, other]
  return specs, arrays


@functools.partial(jax.jit, static_argnums=6)
def forward(q, k, v, sink_N, q_seg, k_seg, st):
  """Output [B, T, N, D] and base-2 log-sum-exp [B, N, T] (float32; the sinks in it)."""
  (B, T, N, H), D, G = q.shape, v.shape[-1], st.groups
  bq, bk = st.blocks.block_q, st.blocks.block_k
  kernel = functools.partial(_fwd_kernel, st=st, block_q=bq, block_k=bk)
  extra_specs, extra = _extra_inputs(st, bq, T, sink_N, q_seg, k_seg, B)
  specs = [_rows(bq, H), _whole(T, H, G), _whole(T, D, G), *extra_specs], [_rows(bq, D), _stats(bq)]
  out_shape = [
    jax.ShapeDtypeStruct((B, T, N, D), q.dtype),
    jax.ShapeDtypeStruct((B, N, T), jnp.float32),
  ]
  return _call(kernel, st, (T // bq, B, N), specs, out_shape, bwd=False)(q, k, v, *extra)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def attend(q, k, v, sink_N, q_seg, k_seg, st):
  """[B, T, N, D]: the forward kernel's output; differentiable through the dQ and dK/dV kernels.

  sink_N: float32 [N] learned sinks or None; q_seg, k_seg: int32 [B, T] segment ids or None.
  """
  return forward(q, k, v, sink_N, q_seg, k_seg, st)[0]


def _attend_fwd(q, k, v, sink_N, q_seg, k_seg, st):
  o, lse = forward(q, k, v, sink_N, q_seg, k_seg, st)
  return o, (q, k, v, sink_N, q_seg, k_seg, o, lse)


def _attend_bwd(st, res, do):
  dq, dk, dv, dsink = backward(*res, do, st)
  return dq, dk, dv, dsink, None, None


@functools.partial(jax.jit, static_argnums=9)
def backward(q, k, v, sink_N, q_seg, k_seg, o, lse, do, st):
  """(dq, dk, dv, dsink): the dQ kernel, then the dK/dV kernel (one gradient per query head);
  d/dsink = -sum over the rows of p_sink * (dO . O), None without sinks."""
  (B, T, N, H), (K, D), G, b = q.shape, v.shape[2:], st.groups, st.blocks
  delta = jnp.einsum("BTND,BTND->BNT", o.astype(jnp.float32), do.astype(jnp.float32))
  dsink = None
  if st.sink_logits:  # padded query rows have do = 0, so delta = 0: they add nothing
    dsink = -jnp.einsum("BNT,BNT->N", jnp.exp2(sink_N[None, :, None] * _LOG2E - lse), delta)
  st_bwd = dataclasses.replace(st, sink_logits=False)  # the backward kernels read lse only
  bq = b.block_q_dq
  kernel = functools.partial(_dq_kernel, st=st_bwd, block_q=bq, block_k=b.block_k_dq)
  extra_specs, extra = _extra_inputs(st_bwd, bq, T, None, q_seg, k_seg, B)
  specs = (
    [_rows(bq, H), _whole(T, H, G), _whole(T, D, G), _rows(bq, D), _stats(bq), _stats(bq)]
    + extra_specs,
    _rows(bq, H),
  )
  dq = _call(kernel, st, (T // bq, B, N), specs, jax.ShapeDtypeStruct(q.shape, q.dtype), bwd=True)(
    q, k, v, do, lse, delta, *extra
  )

  bk, bq = b.block_k_dkv, b.block_q_dkv
  kernel = functools.partial(_dkv_kernel, st=st_bwd, block_q=bq, block_k=bk)
  extra_specs, extra = _extra_inputs(st_bwd, bk, T, None, q_seg, k_seg, B, keys_own=True)
  specs = (
    [
      _whole(T, H),
      _rows(bk, H, G),
      _rows(bk, D, G),
      _whole(T, D),
      _stats(T, whole=True),
      _stats(T, whole=True),
    ]
    + extra_specs,
    [_rows(bk, H), _rows(bk, D)],
  )
  # With G > 1 the G query heads' gradients of one key/value head are summed here, in float32.
  dtype = lambda x: x.dtype if G == 1 else jnp.float32
  out_shape = [
    jax.ShapeDtypeStruct((B, T, N, H), dtype(k)),
    jax.ShapeDtypeStruct((B, T, N, D), dtype(v)),
  ]
  dk, dv = _call(kernel, st, (T // bk, B, N), specs, out_shape, bwd=True)(
    q, k, v, do, lse, delta, *extra
  )
  if G > 1:
    dk = dk.reshape(B, T, K, G, H).sum(3).astype(k.dtype)
    dv = dv.reshape(B, T, K, G, D).sum(3).astype(v.dtype)
  return dq, dk, dv, dsink


attend.defvjp(_attend_fwd, _attend_bwd)
