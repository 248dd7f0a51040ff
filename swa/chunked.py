"""The `chunked` implementation: flash-style banded sliding-window attention from jax.lax/jnp ops.

Queries go in blocks of C; each block attends only to the key blocks its window touches. A
`jax.custom_vjp` keeps memory linear in the sequence length with a per-step constant:

  forward   loops over groups of query blocks; keeps only the output and the float32
            log-sum-exp of every query (no score or probability block survives a step).
  backward  loops over the same groups, recomputes each block's scores from q, k and the saved
            log-sum-exp, and adds each block's dK/dV into float32 key-length accumulators.

A group holds as many query blocks as fit SCORE_BYTES_PER_STEP of float32 scores (or
`blocks_per_step`); short sequences are one group, with no loop at all. The mask of every block
comes from `mask.visible`, the rule every implementation shares. Learned sinks (sink_logits) join
each row's max and denominator; their gradient is -sum over the rows of p_sink * (dO . O).
A soft-cap (Gemma 2) squashes the scaled logits, s -> c * tanh(s / c); the backward multiplies by
its derivative 1 - tanh^2. Segment ids (packed sequences) add a same-segment test to every block's mask. Registered in
swa/attention.py as "chunked" with the features "offsets", "sink_logits", "logit_softcap",
"segment_ids" and "block_size".

XLA's compiled plan for forward+backward (bf16, B=1, 16 heads of 128; `compile().memory_analysis()`
on CPU, 2026-11-30): 5.8 GB of temporaries at n = 64k, w = 4096 (the autodiff version it replaces
ran out of memory there on a 139 GB card) and 43 GB at n = 1M, w = 512, besides 17 GB of inputs
and 13 GB of outputs. tests/test_chunked.py checks the growth from n to 2n is at most 2.1x.

Shape letters as in swa/attention.py; q (query blocks), C (queries per block), s (keys a block
attends over, span = (num_prev + 1) * C).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from swa import mask

# Float32 score bytes one loop step may hold (the backward holds about four such buffers).
SCORE_BYTES_PER_STEP = 1 << 30


def default_block_size(window_size, seq_len):
  """Query block C for `chunked`: about half the window, within [64, 512].

  Each block of C queries reads C * (1 + ceil((w - 1) / C)) keys, of which each
  query uses w, so a smaller C wastes less work on masked keys and a larger C
  gives the matrix units bigger products. C never exceeds the (8-rounded)
  sequence length.
  """
  w = seq_len if window_size is None else min(window_size, seq_len)
  block = 1 << max(0, (w // 2).bit_length() - 1)  # largest power of two <= w / 2
  block = min(max(block, 64), 512)
  return min(block, -(-seq_len // 8) * 8)


def key_shift(q_offset, k_offset, T, S):
  """q_offset - k_offset as a Python int: key index t + shift sits at query t's position.

  k_offset None means the keys end where the queries end (shift S - T). The band layout depends on
  the shift, so it must be known at trace time even when the offsets themselves are traced.
  """
  if k_offset is None:
    return S - T
  try:
    return int(q_offset - k_offset)
  except (jax.errors.ConcretizationTypeError, TypeError):
    raise ValueError(
      "implementation='chunked' needs q_offset - k_offset known at trace time; "
      "pass k_offset=None (keys end where the queries end) or Python ints."
    ) from None


def _fit(x_BSKX, front, total):
  """Rows shifted right by `front` (left if negative) and cut or zero-padded to `total` rows."""
  x_BSKX = x_BSKX[:, max(0, -front) :]
  x_BSKX = jnp.pad(x_BSKX, ((0, 0), (max(0, front), 0), (0, 0), (0, 0)))[:, :total]
  return jnp.pad(x_BSKX, ((0, 0), (0, total - x_BSKX.shape[1]), (0, 0), (0, 0)))


@dataclasses.dataclass(frozen=True)
class _Band:
  """The static layout of one call (hashable: the custom_vjp's static argument).

  Padded key row j holds key index j - front; query block b (of `blocks` = groups * per_group,
  the last ones padding) attends padded rows b*C ... b*C + span - 1.
  """

  window_size: object  # w or None, as the caller gave it (the mask rule's argument)
  scale: float
  C: int
  num_prev: int
  per_group: int  # query blocks per loop step
  groups: int
  front: int
  shift: int
  S: int
  softcap: object = None  # None, or the cap c of logits -> c * tanh(logits / c)

  @property
  def span(self):
    return (self.num_prev + 1) * self.C

  @property
  def blocks(self):
    return self.groups * self.per_group


def _group_mask(band, q_offset, b0, seg):
  """bool [B or 1, per_group, 1, 1, C, span]: which keys of its window each query of blocks b0...
  sees (against [B, q, K, G, C, s] logits); seg: None, or the padded segment ids (q_BqC, k_BSp)."""
  block_q = b0 + jnp.arange(band.per_group)
  q_pos_qC1 = q_offset + (block_q[:, None, None] * band.C + jnp.arange(band.C)[:, None])
  index_q1s = block_q[:, None, None] * band.C + jnp.arange(band.span)[None, None, :] - band.front
  k_pos_q1s = jnp.where(
    (index_q1s >= 0) & (index_q1s < band.S), q_offset - band.shift + index_q1s, -1
  )
  mask_BqCs = mask.visible(q_pos_qC1, k_pos_q1s, band.window_size)[None]
  if seg is not None:  # packed sequences: only keys of the query's own segment
    q_seg_BqC, k_seg_BSp = seg
    q_seg_BqC1 = _group_slice(q_seg_BqC, band, b0 // band.per_group)[..., None]
    mask_BqCs = mask_BqCs & (q_seg_BqC1 == _windows(band, k_seg_BSp, b0)[:, :, None, :])
  return mask_BqCs[:, :, None, None]


def _windows(band, x_BSpKX, b0):
  """[B, per_group, span, K, X]: the key window of each query block b0 ... of the group (any
  trailing axes: [B, Sp] segment ids give [B, per_group, span])."""
  rows = (band.per_group + band.num_prev) * band.C
  x_BbCKX = jax.lax.dynamic_slice_in_dim(x_BSpKX, b0 * band.C, rows, axis=1)
  x_BbCKX = x_BbCKX.reshape(x_BSpKX.shape[0], -1, band.C, *x_BSpKX.shape[2:])
  return jnp.concatenate(
    [x_BbCKX[:, j : j + band.per_group] for j in range(band.num_prev + 1)], axis=2
  )


def _group_slice(x_BqX, band, g):
  """Blocks g * per_group ... of a [B, blocks, ...] array."""
  return jax.lax.dynamic_slice_in_dim(x_BqX, g * band.per_group, band.per_group, axis=1)


def _loop(band, step, init):
  """step(g, carry) over the groups; a plain call when there is one."""
  if band.groups == 1:
    return step(0, init)
  return jax.lax.fori_loop(0, band.groups, step, init)


def _logits(band, q_BqCKGH, k_BqsKH):
  """float32 scaled (and soft-capped) logits [B, q, K, G, C, s]."""
  logits = (
    jnp.einsum("BqCKGH,BqsKH->BqKGCs", q_BqCKGH, k_BqsKH, preferred_element_type=jnp.float32)
    * band.scale
  )
  return logits if band.softcap is None else band.softcap * jnp.tanh(logits / band.softcap)


def _sink(sink_KG):
  """[1, 1, K, G, 1]: the learned sinks against [B, q, K, G, C] statistics (None: none)."""
  return None if sink_KG is None else sink_KG[None, None, :, :, None]


@functools.partial(jax.jit, static_argnums=0)
def _forward(band, q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg):
  """Output [B, blocks, C, K, G, D] and float32 log-sum-exp [B, blocks, K, G, C] (sinks in it)."""
  B, _, C, K, G, _ = q_BqCKGH.shape
  D = v_BSpKD.shape[-1]
  sink = _sink(sink_KG)

  def step(g, carry):
    out_BqCKGD, lse_BqKGC = carry
    b0 = g * band.per_group
    mask_qCs = _group_mask(band, q_offset, b0, seg)
    logits_BqKGCs = jnp.where(
      mask_qCs,
      _logits(band, _group_slice(q_BqCKGH, band, g), _windows(band, k_BSpKH, b0)),
      mask.MASK_VALUE,
    )
    max_BqKGC = jnp.max(logits_BqKGCs, axis=-1)
    if sink is not None:  # a learned sink: one more denominator entry, with no value
      max_BqKGC = jnp.maximum(max_BqKGC, sink)
    unnorm_BqKGCs = jnp.where(mask_qCs, jnp.exp(logits_BqKGCs - max_BqKGC[..., None]), 0.0)
    sum_BqKGC = jnp.sum(unnorm_BqKGCs, axis=-1)
    if sink is not None:
      sum_BqKGC = sum_BqKGC + jnp.exp(sink - max_BqKGC)
    empty = sum_BqKGC == 0.0  # a query with no visible key: output 0
    # Normalized after the product, on [C, D] rows rather than [C, span] scores: the float32
    # scores are read once fewer (the exponentials go straight to the product's dtype).
    unnorm_out_BqKGCD = jnp.einsum(
      "BqKGCs,BqsKD->BqKGCD",
      unnorm_BqKGCs.astype(v_BSpKD.dtype),
      _windows(band, v_BSpKD, b0),
      preferred_element_type=jnp.float32,
    )
    out = jnp.einsum(
      "BqKGCD->BqCKGD", unnorm_out_BqKGCD / jnp.where(empty, 1.0, sum_BqKGC)[..., None]
    )
    lse = jnp.where(empty, 0.0, max_BqKGC + jnp.log(jnp.where(empty, 1.0, sum_BqKGC)))
    out_BqCKGD = jax.lax.dynamic_update_slice_in_dim(
      out_BqCKGD, out.astype(out_BqCKGD.dtype), b0, axis=1
    )
    return out_BqCKGD, jax.lax.dynamic_update_slice_in_dim(lse_BqKGC, lse, b0, axis=1)

  init = (
    # full_like, not zeros: inside shard_map the carry must vary over the same mesh axes as q.
    jax.lax.full_like(q_BqCKGH, 0, q_BqCKGH.dtype, shape=(B, band.blocks, C, K, G, D)),
    jax.lax.full_like(q_BqCKGH, 0, jnp.float32, shape=(B, band.blocks, K, G, C)),
  )
  return _loop(band, step, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(band, q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg):
  return _forward(band, q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg)[0]


def _attend_fwd(band, q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg):
  out_BqCKGD, lse_BqKGC = _forward(band, q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg)
  return out_BqCKGD, (q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg, out_BqCKGD, lse_BqKGC)


def _add_windows(band, acc_BSpKX, win_BqsKX, b0):
  """Adds each block's window gradient [B, per_group, span, K, X] into the key rows it covers."""
  B, q, _, K, X = win_BqsKX.shape
  win_BqjCKX = win_BqsKX.reshape(B, q, band.num_prev + 1, band.C, K, X)
  local_BbCKX = sum(
    jnp.pad(win_BqjCKX[:, :, j], ((0, 0), (j, band.num_prev - j), (0, 0), (0, 0), (0, 0)))
    for j in range(band.num_prev + 1)
  )
  rows = (q + band.num_prev) * band.C
  old = jax.lax.dynamic_slice_in_dim(acc_BSpKX, b0 * band.C, rows, axis=1)
  return jax.lax.dynamic_update_slice_in_dim(
    acc_BSpKX, old + local_BbCKX.reshape(B, rows, K, X), b0 * band.C, axis=1
  )


def _attend_bwd(band, res, dout_BqCKGD):
  dq, dk, dv, dsink = _backward(band, *res, dout_BqCKGD)
  return dq, dk, dv, None, dsink, None


@functools.partial(jax.jit, static_argnums=0)
def _backward(
  band, q_BqCKGH, k_BSpKH, v_BSpKD, q_offset, sink_KG, seg, out_BqCKGD, lse_BqKGC, dout_BqCKGD
):
  """(dq, dk, dv) of the padded layout: one more pass over the groups, recomputing scores; and
  d/dsink = -sum over the rows of p_sink * (dO . O) (None without sinks)."""
  delta_BqKGC = jnp.einsum(
    "BqCKGD,BqCKGD->BqKGC", out_BqCKGD.astype(jnp.float32), dout_BqCKGD.astype(jnp.float32)
  )
  dsink_KG = None
  if sink_KG is not None:  # padded query rows have dout = 0, so delta = 0: they add nothing
    p_sink_BqKGC = jnp.exp(_sink(sink_KG) - lse_BqKGC)
    dsink_KG = -jnp.einsum("BqKGC,BqKGC->KG", p_sink_BqKGC, delta_BqKGC)

  def step(g, carry):
    dq_BqCKGH, dk_BSpKH, dv_BSpKD = carry
    b0 = g * band.per_group
    q_g, dout_g = _group_slice(q_BqCKGH, band, g), _group_slice(dout_BqCKGD, band, g)
    k_win, v_win = _windows(band, k_BSpKH, b0), _windows(band, v_BSpKD, b0)
    mask_qCs = _group_mask(band, q_offset, b0, seg)
    lse = _group_slice(lse_BqKGC, band, g)[..., None]
    logits_BqKGCs = _logits(band, q_g, k_win)
    probs_BqKGCs = jnp.where(mask_qCs, jnp.exp(logits_BqKGCs - lse), 0.0)
    dv_win = jnp.einsum(
      "BqKGCs,BqCKGD->BqsKD",
      probs_BqKGCs.astype(dout_g.dtype),
      dout_g,
      preferred_element_type=jnp.float32,
    )
    dprobs_BqKGCs = jnp.einsum(
      "BqCKGD,BqsKD->BqKGCs", dout_g, v_win, preferred_element_type=jnp.float32
    )
    dlogits_BqKGCs = probs_BqKGCs * (dprobs_BqKGCs - _group_slice(delta_BqKGC, band, g)[..., None])
    if band.softcap is not None:  # d(c * tanh(s / c)) / ds = 1 - tanh(s / c)^2
      dlogits_BqKGCs = dlogits_BqKGCs * (1.0 - jnp.square(logits_BqKGCs / band.softcap))
    dlogits_BqKGCs = (dlogits_BqKGCs * band.scale).astype(q_g.dtype)
    dq = jnp.einsum(
      "BqKGCs,BqsKH->BqCKGH", dlogits_BqKGCs, k_win, preferred_element_type=jnp.float32
    )
    dk_win = jnp.einsum(
      "BqKGCs,BqCKGH->BqsKH", dlogits_BqKGCs, q_g, preferred_element_type=jnp.float32
    )
    dq_BqCKGH = jax.lax.dynamic_update_slice_in_dim(
      dq_BqCKGH, dq.astype(dq_BqCKGH.dtype), b0, axis=1
    )
    return (
      dq_BqCKGH,
      _add_windows(band, dk_BSpKH, dk_win, b0),
      _add_windows(band, dv_BSpKD, dv_win, b0),
    )

  init = (
    jnp.zeros_like(q_BqCKGH),
    jax.lax.full_like(k_BSpKH, 0, jnp.float32),
    jax.lax.full_like(v_BSpKD, 0, jnp.float32),
  )
  dq_BqCKGH, dk_BSpKH, dv_BSpKD = _loop(band, step, init)
  return dq_BqCKGH, dk_BSpKH.astype(k_BSpKH.dtype), dv_BSpKD.astype(v_BSpKD.dtype), dsink_KG


_attend.defvjp(_attend_fwd, _attend_bwd)


def chunked_attention(
  q_BTNH,
  k_BSKH,
  v_BSKD,
  window_size,
  scale,
  *,
  q_offset=0,
  k_offset=None,
  sink_logits=None,
  logit_softcap=None,
  segment_ids=None,
  k_segment_ids=None,
  block_size=None,
  blocks_per_step=None,
):
  """Banded flash-style attention: each query block sees only the key blocks its window touches.

  Args:
    q_BTNH: [B, T, N, H] queries; query t sits at absolute position q_offset + t.
    k_BSKH: [B, S, K, H] keys; key s sits at k_offset + s.
    v_BSKD: [B, S, K, D] values.
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale (a Python number).
    q_offset: absolute position of the first query (int, may be traced).
    k_offset: absolute position of the first key, or None: the keys end where the queries end
      (k_offset = q_offset + T - S; self-attention when S == T). q_offset - k_offset must be a
      Python int (`key_shift`). Keys at negative positions are padding.
    sink_logits: optional float32 [N], learned sinks (one denominator logit per query head).
    logit_softcap: None, or a cap c > 0: scaled logits s become c * tanh(s / c).
    segment_ids, k_segment_ids: None, or int [B, T] and [B, S] segment ids (packed sequences):
      each block's mask also needs the key in the query's segment.
    block_size: the query block C; default `default_block_size`.
    blocks_per_step: query blocks per loop step; default: as many as fit
      SCORE_BYTES_PER_STEP of float32 scores (all of them for short sequences).

  Returns:
    [B, T, N, D] in q's dtype. Gradients come from a custom VJP that recomputes scores block by
    block: memory is linear in T in the forward and the backward pass.
  """
  B, T, N, H = q_BTNH.shape
  S, K, D = k_BSKH.shape[1], k_BSKH.shape[2], v_BSKD.shape[3]
  G = N // K
  shift = key_shift(q_offset, k_offset, T, S)  # query t <-> key index t + shift
  reach = max(T + shift, 1)  # keys up to the last query's position
  w = reach if window_size is None else min(window_size, reach)
  C = default_block_size(w, T) if block_size is None else block_size
  num_q = -(-T // C)  # query blocks with a real query
  num_prev = -(-(w - 1) // C)  # earlier key blocks a query block can reach
  span = (num_prev + 1) * C
  if blocks_per_step is None:
    blocks_per_step = max(1, SCORE_BYTES_PER_STEP // (4 * B * N * C * span))
  groups = -(-num_q // min(blocks_per_step, num_q))
  per_group = -(-num_q // groups)  # balanced: fewer padded blocks in the last group
  band = _Band(
    window_size=window_size,
    scale=float(scale),
    C=C,
    num_prev=num_prev,
    per_group=per_group,
    groups=groups,
    front=num_prev * C - shift,
    shift=shift,
    S=S,
    softcap=None if logit_softcap is None else float(logit_softcap),
  )
  # Queries: pad the end to whole groups of blocks. Keys/values: laid out so that block i's
  # window is key blocks i .. i + num_prev (padded row j holds key index j - front).
  q_BqCKGH = jnp.pad(q_BTNH, ((0, 0), (0, band.blocks * C - T), (0, 0), (0, 0)))
  q_BqCKGH = q_BqCKGH.reshape(B, band.blocks, C, K, G, H)
  total = (band.blocks + num_prev) * C
  k_BSpKH, v_BSpKD = _fit(k_BSKH, band.front, total), _fit(v_BSKD, band.front, total)
  sink_KG = None if sink_logits is None else sink_logits.astype(jnp.float32).reshape(K, G)
  seg = None
  if segment_ids is not None:  # laid out as the queries and keys (padding rows: -1, masked)
    q_seg_BqC = jnp.pad(segment_ids, ((0, 0), (0, band.blocks * C - T)), constant_values=-1)
    k_seg_BSp = _fit(k_segment_ids[:, :, None, None], band.front, total)[:, :, 0, 0]
    seg = (q_seg_BqC.reshape(B, band.blocks, C), k_seg_BSp)
  out_BqCKGD = _attend(
    band, q_BqCKGH, k_BSpKH, v_BSpKD, jnp.asarray(q_offset, jnp.int32), sink_KG, seg
  )
  return out_BqCKGD.reshape(B, band.blocks * C, N, D)[:, :T]
