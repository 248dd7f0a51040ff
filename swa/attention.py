"""Sliding-window (local, banded) causal attention.

The window has one meaning everywhere in swa: with window size w, the query at
position i attends to keys i-w+1 ... i -- w keys, itself included. A window of
None means full causal attention.

Shape letters: B batch, T query positions, S key positions (self-attention, so
S == T), N query heads, K key/value heads (N % K == 0; G = N // K query heads
share one key/value head), H query/key head dim, D value head dim.

Implementations, all computing the same function (tests/test_attention.py):
  reference  dense masked attention; O(T^2) memory; the ground truth.
  chunked    banded form from jax.lax/jnp ops: queries in blocks of C, each
             block attends only to the key blocks its window touches;
             O(T * (w + C)) memory in the forward and the backward pass.
  cudnn      jax.nn.dot_product_attention's cuDNN kernel with a local window;
             GPU and 16-bit dtypes only.
  auto       cudnn where it applies, else chunked when the window is shorter
             than the sequence, else reference.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "reference", "chunked", "cudnn")

# Masked logits get a large negative *finite* value: -inf would give NaN
# (inf - inf) in rows where every key is masked.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def check_window_size(window_size, name="window_size"):
  """Raises ValueError unless window_size is None or an integer >= 1."""
  if window_size is None:
    return
  if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)):
    raise ValueError(
        f"{name} must be a positive integer or None (full attention), got "
        f"{window_size!r} of type {type(window_size).__name__}.")
  if window_size < 1:
    raise ValueError(
        f"{name} must be >= 1 (a query always sees itself), got {window_size}.")


def create_sliding_window_mask(seq_len, window_size):
  """Band-diagonal causal mask.

  Args:
    seq_len: number of positions T.
    window_size: w, or None for full causal attention.

  Returns:
    bool [T, T], True where query i may attend key j, i.e. i - w < j <= i.
    For seq_len=6, window_size=3 the rows are 100000, 110000, 111000, 011100,
    001110, 000111.
  """
  check_window_size(window_size)
  if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")
  i = jnp.arange(seq_len)[:, None]
  j = jnp.arange(seq_len)[None, :]
  mask = j <= i
  if window_size is not None:
    mask &= j > i - window_size
  return mask


def _masked_softmax(logits, mask):
  """Softmax over the last axis in float32; rows with no allowed key give 0."""
  logits = jnp.where(mask, logits.astype(jnp.float32), _MASK_VALUE)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  unnormalised = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
  row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / jnp.where(row_sum == 0.0, 1.0, row_sum)


def _reference(q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, halo=0, start=0):
  """Dense masked attention: builds the full [T, S] score matrix.

  `halo` and `start` serve sequence parallelism (swa/sharding.py): the keys are
  `halo` earlier rows followed by the queries' own T, query t sits at absolute
  position start + t, and halo keys before position 0 are padding. Self-attention
  is halo = start = 0.
  """
  B, T, N, H = q_BTNH.shape
  K, D = k_BSKH.shape[2], v_BSKD.shape[3]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                            preferred_element_type=jnp.float32) * scale
  mask_TS = create_sliding_window_mask(halo + T, window_size)[halo:]
  if halo:
    mask_TS &= (start - halo + jnp.arange(halo + T) >= 0)[None, :]
  probs_BKGTS = _masked_softmax(logits_BKGTS, mask_TS)
  out_BTKGD = jnp.einsum("BKGTS,BSKD->BTKGD", probs_BKGTS.astype(v_BSKD.dtype), v_BSKD,
                         preferred_element_type=jnp.float32)
  return out_BTKGD.reshape(B, T, N, D).astype(q_BTNH.dtype)


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


def _chunked(q_BTNH, k_BSKH, v_BSKD, window_size, scale, block_size=None,
             blocks_per_step=None, *, halo=0, start=0):
  """Banded attention: each query block sees only the key blocks its window touches.

  `halo` and `start` as in `_reference` (keys = halo earlier rows + the T local
  ones; query t at absolute position start + t); the halo must be < the window.
  """
  B, T, N, H = q_BTNH.shape
  K, D = k_BSKH.shape[2], v_BSKD.shape[3]
  G = N // K
  w = halo + T if window_size is None else min(window_size, halo + T)
  C = default_block_size(w, T) if block_size is None else block_size
  num_q = -(-T // C)                  # query blocks; the last one is padded
  num_prev = -(-(w - 1) // C)         # earlier key blocks a query block can reach
  span = (num_prev + 1) * C           # keys one query block attends over

  # Queries: pad the end to a whole block. Keys/values: pad the front up to
  # num_prev blocks before the first query, so block i's window is key blocks
  # i .. i + num_prev.
  q_BqCKGH = jnp.pad(q_BTNH, ((0, 0), (0, num_q * C - T), (0, 0), (0, 0)))
  q_BqCKGH = (q_BqCKGH * jnp.asarray(scale, q_BTNH.dtype)).reshape(B, num_q, C, K, G, H)
  kv_pad = ((0, 0), (num_prev * C - halo, num_q * C - T), (0, 0), (0, 0))
  # Keys before this (offset from the first query) are padding: before the halo,
  # or before absolute position 0.
  first_key = jnp.maximum(-halo, -start)

  def windows(x_BSKX):
    x_BbCKX = jnp.pad(x_BSKX, kv_pad).reshape(B, num_q + num_prev, C, K, -1)
    return jnp.concatenate([x_BbCKX[:, j:j + num_q] for j in range(num_prev + 1)], axis=2)

  def attend(q_BqCKGH, k_BqsKH, v_BqsKD, block_q):
    # Query c of block b sits at b*C + c; key s of its window at (b - num_prev)*C + s
    # (offsets from the first query).
    c = jnp.arange(C)[:, None]
    s = jnp.arange(span)[None, :]
    dist_Cs = c - s + num_prev * C                      # query pos - key pos
    key_pos_qCs = (block_q[:, None, None] - num_prev) * C + s
    mask_qCs = (dist_Cs >= 0) & (dist_Cs < w) & (key_pos_qCs >= first_key)
    logits_BqKGCs = jnp.einsum("BqCKGH,BqsKH->BqKGCs", q_BqCKGH, k_BqsKH,
                               preferred_element_type=jnp.float32)
    probs_BqKGCs = _masked_softmax(logits_BqKGCs, mask_qCs[None, :, None, None])
    return jnp.einsum("BqKGCs,BqsKD->BqCKGD", probs_BqKGCs.astype(v_BqsKD.dtype), v_BqsKD,
                      preferred_element_type=jnp.float32).astype(q_BTNH.dtype)

  block_q = jnp.arange(num_q)
  if blocks_per_step is None or blocks_per_step >= num_q:
    out_BqCKGD = attend(q_BqCKGH, windows(k_BSKH), windows(v_BSKD), block_q)
  else:
    # Bounded memory for very long sequences: loop over groups of query blocks, slice
    # each block's key window inside the loop (never all windows at once), and
    # recompute each group's scores in the backward pass.
    k_BSpKH, v_BSpKD = jnp.pad(k_BSKH, kv_pad), jnp.pad(v_BSKD, kv_pad)

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


def cudnn_available():
  """True when the default backend is a GPU (where cuDNN attention can run)."""
  return jax.default_backend() == "gpu"


def _cudnn_unsupported_reason(q_BTNH, k_BSKH, v_BSKD):
  """Why cuDNN's fused attention cannot take these inputs, or None if it can."""
  if not cudnn_available():
    return f"it needs a GPU backend, and JAX's default backend is {jax.default_backend()!r}"
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16):
    return f"it takes bfloat16 or float16 inputs, got {q_BTNH.dtype}"
  if q_BTNH.shape[1] % 2:
    # Seen on an H100 (JAX 0.11.2): its backward pass rejects odd lengths.
    return f"it needs an even sequence length, got {q_BTNH.shape[1]}"
  head_dims = (q_BTNH.shape[-1], v_BSKD.shape[-1])
  if head_dims[0] != head_dims[1] or head_dims[0] % 8 or head_dims[0] > 256:
    return f"it needs equal query and value head dims, a multiple of 8 and <= 256, got {head_dims}"
  return None


def _cudnn(q_BTNH, k_BSKH, v_BSKD, window_size, scale):
  """cuDNN's fused causal attention with a (w - 1, 0) local window."""
  reason = _cudnn_unsupported_reason(q_BTNH, k_BSKH, v_BSKD)
  if reason is not None:
    raise ValueError(f"implementation='cudnn' is not available: {reason}.")
  local_window = None if window_size is None else (window_size - 1, 0)
  return jax.nn.dot_product_attention(
      q_BTNH, k_BSKH, v_BSKD, scale=scale, is_causal=True,
      local_window_size=local_window, implementation="cudnn")


_REGISTRY = {"reference": _reference, "chunked": _chunked, "cudnn": _cudnn}


def resolve_implementation(implementation, q_BTNH, k_BSKH, v_BSKD, window_size):
  """Maps "auto" to a concrete implementation; checks the name.

  The auto rule: "cudnn" when cuDNN takes the inputs (GPU, 16-bit dtype, equal
  head dims, even length); otherwise "chunked" when the window is shorter than the sequence
  (memory O(T * w) instead of O(T^2)); otherwise "reference".
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"Unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}.")
  if implementation != "auto":
    return implementation
  if _cudnn_unsupported_reason(q_BTNH, k_BSKH, v_BSKD) is None:
    return "cudnn"
  if window_size is not None and window_size < q_BTNH.shape[1]:
    return "chunked"
  return "reference"


def _check_shapes(q, k, v):
  """Validates ranks, lengths and head counts; returns the 4-D views."""
  if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
    raise ValueError(
        "q, k and v must all be [batch, seq, dim] or all [batch, seq, heads, dim]; got shapes "
        f"{q.shape}, {k.shape}, {v.shape}.")
  if q.ndim == 3:
    q, k, v = q[:, :, None], k[:, :, None], v[:, :, None]
  (B, T, N, H), (Bk, S, K, Hk), (Bv, Sv, Kv, _) = q.shape, k.shape, v.shape
  if not B == Bk == Bv:
    raise ValueError(f"q, k and v must share the batch size, got {B}, {Bk}, {Bv}.")
  if not T == S == Sv:
    raise ValueError(
        f"Self-attention needs equal query and key/value lengths, got {T}, {S}, {Sv}.")
  if K != Kv:
    raise ValueError(f"k and v must have the same number of heads, got {K} and {Kv}.")
  if N % K:
    raise ValueError(
        f"The query heads ({N}) must be a multiple of the key/value heads ({K}).")
  if H != Hk:
    raise ValueError(f"q and k must share the head dim, got {H} and {Hk}.")
  return q, k, v


def sliding_window_attention(q, k, v, window_size=128, *, implementation="auto", scale=None,
                             block_size=None, blocks_per_step=None):
  """Causal attention in which query i attends keys i - window_size + 1 ... i.

  Args:
    q: [B, T, N, H] or [B, T, H] queries.
    k: [B, T, K, H] or [B, T, H] keys; N must be a multiple of K (GQA/MQA).
    v: [B, T, K, D] or [B, T, D] values; D may differ from H.
    window_size: w >= 1 (1 = each token sees only itself), or None for full
      causal attention. Windows >= T are full causal attention.
    implementation: "auto", "reference", "chunked" or "cudnn" (module docstring).
    scale: logit scale; default 1 / sqrt(H).
    block_size: `chunked` only: the query block C; default `default_block_size`.
    blocks_per_step: `chunked` only: if set, process this many query blocks at a
      time in a loop and recompute them in the backward pass, which bounds memory
      for very long sequences at some cost in speed.

  Returns:
    [B, T, N, D] (or [B, T, D] for 3-D inputs) in q's dtype.
  """
  check_window_size(window_size)
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  squeeze = q.ndim == 3
  q_BTNH, k_BSKH, v_BSKD = _check_shapes(q, k, v)
  for name, value in (("block_size", block_size), ("blocks_per_step", blocks_per_step)):
    if value is not None:
      check_window_size(value, name=name)
  scale = 1.0 / math.sqrt(q_BTNH.shape[-1]) if scale is None else scale
  name = resolve_implementation(implementation, q_BTNH, k_BSKH, v_BSKD, window_size)
  kwargs = dict(block_size=block_size, blocks_per_step=blocks_per_step) if name == "chunked" else {}
  out_BTND = _REGISTRY[name](q_BTNH, k_BSKH, v_BSKD, window_size, scale, **kwargs)
  return out_BTND[:, :, 0] if squeeze else out_BTND
