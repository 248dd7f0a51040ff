"""The `chunked` implementation: banded sliding-window attention from jax.lax/jnp ops.

Queries go in blocks of C; each block attends only to the key blocks its window touches, so memory
is O(T * (w + C)) in the forward and the backward pass instead of the dense O(T * S). The mask of
every block comes from `mask.visible`, the rule every implementation shares. Registered in
swa/attention.py as "chunked" with the features "offsets" and "block_size".

Shape letters as in swa/attention.py; q (query blocks), C (queries per block), s (keys a block
attends over, span = (num_prev + 1) * C).
"""

import jax
import jax.numpy as jnp

from swa import mask


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
    raise ValueError("implementation='chunked' needs q_offset - k_offset known at trace time; "
                     "pass k_offset=None (keys end where the queries end) or Python ints.") from None


def _fit(x_BSKX, front, total):
  """Rows shifted right by `front` (left if negative) and cut or zero-padded to `total` rows."""
  x_BSKX = x_BSKX[:, max(0, -front):]
  x_BSKX = jnp.pad(x_BSKX, ((0, 0), (max(0, front), 0), (0, 0), (0, 0)))[:, :total]
  return jnp.pad(x_BSKX, ((0, 0), (0, total - x_BSKX.shape[1]), (0, 0), (0, 0)))


def chunked_attention(q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, q_offset=0, k_offset=None,
                      block_size=None, blocks_per_step=None):
  """Banded attention: each query block sees only the key blocks its window touches.

  Args:
    q_BTNH: [B, T, N, H] queries; query t sits at absolute position q_offset + t.
    k_BSKH: [B, S, K, H] keys; key s sits at k_offset + s.
    v_BSKD: [B, S, K, D] values.
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale.
    q_offset: absolute position of the first query (int, may be traced).
    k_offset: absolute position of the first key, or None: the keys end where the queries end
      (k_offset = q_offset + T - S; self-attention when S == T). q_offset - k_offset must be a
      Python int (`key_shift`). Keys at negative positions are padding.
    block_size: the query block C; default `default_block_size`.
    blocks_per_step: if set, process this many query blocks at a time in a loop and recompute
      them in the backward pass, which bounds memory for very long sequences.

  Returns:
    [B, T, N, D] in q's dtype.
  """
  B, T, N, H = q_BTNH.shape
  S, K, D = k_BSKH.shape[1], k_BSKH.shape[2], v_BSKD.shape[3]
  G = N // K
  shift = key_shift(q_offset, k_offset, T, S)      # query t <-> key index t + shift
  reach = max(T + shift, 1)                         # keys up to the last query's position
  w = reach if window_size is None else min(window_size, reach)
  C = default_block_size(w, T) if block_size is None else block_size
  num_q = -(-T // C)                  # query blocks; the last one is padded
  num_prev = -(-(w - 1) // C)         # earlier key blocks a query block can reach
  span = (num_prev + 1) * C           # keys one query block attends over

  # Queries: pad the end to a whole block. Keys/values: laid out so that block i's window is key
  # blocks i .. i + num_prev: padded row j holds key index j - front.
  q_BqCKGH = jnp.pad(q_BTNH, ((0, 0), (0, num_q * C - T), (0, 0), (0, 0)))
  q_BqCKGH = (q_BqCKGH * jnp.asarray(scale, q_BTNH.dtype)).reshape(B, num_q, C, K, G, H)
  front = num_prev * C - shift
  total = (num_q + num_prev) * C
  first_key_pos = q_offset - shift

  def windows(x_BSKX):
    x_BbCKX = _fit(x_BSKX, front, total).reshape(B, num_q + num_prev, C, K, -1)
    return jnp.concatenate([x_BbCKX[:, j:j + num_q] for j in range(num_prev + 1)], axis=2)

  def attend(q_BqCKGH, k_BqsKH, v_BqsKD, block_q):
    # Query c of block b is query b*C + c; key s of its window is padded row b*C + s.
    q_pos_qC1 = q_offset + (block_q[:, None, None] * C + jnp.arange(C)[:, None])
    index_q1s = block_q[:, None, None] * C + jnp.arange(span)[None, None, :] - front
    k_pos_q1s = jnp.where((index_q1s >= 0) & (index_q1s < S), first_key_pos + index_q1s, -1)
    mask_qCs = mask.visible(q_pos_qC1, k_pos_q1s, window_size)
    logits_BqKGCs = jnp.einsum("BqCKGH,BqsKH->BqKGCs", q_BqCKGH, k_BqsKH,
                               preferred_element_type=jnp.float32)
    probs_BqKGCs = mask.masked_softmax(logits_BqKGCs, mask_qCs[None, :, None, None])
    return jnp.einsum("BqKGCs,BqsKD->BqCKGD", probs_BqKGCs.astype(v_BqsKD.dtype), v_BqsKD,
                      preferred_element_type=jnp.float32).astype(q_BTNH.dtype)

  block_q = jnp.arange(num_q)
  if blocks_per_step is None or blocks_per_step >= num_q:
    out_BqCKGD = attend(q_BqCKGH, windows(k_BSKH), windows(v_BSKD), block_q)
  else:
    # Bounded memory for very long sequences: loop over groups of query blocks, slice
    # each block's key window inside the loop (never all windows at once), and
    # recompute each group's scores in the backward pass.
    k_BSpKH, v_BSpKD = _fit(k_BSKH, front, total), _fit(v_BSKD, front, total)

    @jax.checkpoint
    def one_block(args):
      q_BCKGH, b = args
      k_BsKH = jax.lax.dynamic_slice_in_dim(k_BSpKH, b * C, span, axis=1)
      v_BsKD = jax.lax.dynamic_slice_in_dim(v_BSpKD, b * C, span, axis=1)
      return attend(q_BCKGH[:, None], k_BsKH[:, None], v_BsKD[:, None], b[None])[:, 0]

    out_qBCKGD = jax.lax.map(one_block, (jnp.moveaxis(q_BqCKGH, 1, 0), block_q),
                             batch_size=blocks_per_step)
    out_BqCKGD = jnp.moveaxis(out_qBCKGD, 0, 1)
  return out_BqCKGD.reshape(B, num_q * C, N, D)[:, :T]
