"""TPU splash attention with a sliding window: `implementation="splash"`.

JAX's splash attention kernel (jax.experimental.pallas.ops.tpu.splash_attention) is a block-sparse
flash attention for TPU: it reads the mask once, at trace time, skips every block the mask leaves
empty and masks only the partial ones. The window is `LocalMask((w - 1, 0)) & CausalMask`: query i
sees keys i - w + 1 ... i, the rule of swa/mask.py.

Layout: splash takes one sequence with the heads first; here `make_splash_mqa` runs the G query
heads that share a key/value head, vmapped over batch and key/value heads (GQA; G = 1 is plain
multi-head attention). The logit scale is folded into q (splash has no scale argument). Any
length: the sequence is padded at the end to a multiple of the block (padded keys come after every
real query, so causality hides them). Segment ids (packed sequences) go to splash as SegmentIds.

Off TPU the kernel runs in Pallas interpret mode (tests/test_splash.py checks it against the
reference, forward and gradients, on CPU). Nothing here has been run on a TPU.
"""

import jax
import jax.numpy as jnp

_TPU_LANES = 128  # splash blocks are multiples of the TPU's 128 lanes


def splash_mask(seq_len, window_size, groups=1):
  """The splash mask object: [groups, seq_len, seq_len], LocalMask((w - 1, 0)) & causal.

  Args:
    seq_len: T (queries and keys).
    window_size: w >= 1, or None for full causal attention.
    groups: query heads sharing one key/value head (the mask's head axis).

  Returns:
    a splash_attention MultiHeadMask.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top

  shape = (seq_len, seq_len)
  causal = sa.CausalMask(shape)
  one = causal if window_size is None else sa.LocalMask(shape, (window_size - 1, 0), 0) & causal
  return sa.MultiHeadMask([one] * groups)


def default_block(seq_len):
  """The largest of 512, 256, 128 dividing the 128-padded length."""
  padded = -(-seq_len // _TPU_LANES) * _TPU_LANES
  return next(b for b in (512, 256, 128) if padded % b == 0)


def unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Why splash cannot take these inputs, or None."""
  del window_size
  if k_BSKH.shape[1] != q_BTNH.shape[1]:
    return f"it needs self-attention (S == T), got T={q_BTNH.shape[1]}, S={k_BSKH.shape[1]}"
  if q_BTNH.shape[-1] != v_BSKD.shape[-1]:
    return (
      f"it needs equal query and value head dims, got {q_BTNH.shape[-1]} and {v_BSKD.shape[-1]}"
    )
  return None


def splash_attention(
  q_BTNH,
  k_BSKH,
  v_BSKD,
  window_size,
  scale,
  *,
  segment_ids=None,
  k_segment_ids=None,
  block_size=None,
  interpret=None,
):
  """Sliding-window causal attention through TPU splash attention.

  Args:
    q_BTNH: [B, T, N, H] queries.
    k_BSKH: [B, T, K, H] keys; N % K == 0.
    v_BSKD: [B, T, K, H] values (splash needs D == H).
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale.
    segment_ids, k_segment_ids: None, or int [B, T] segment ids of the queries and keys (packed
      sequences; splash's SegmentIds). Splash needs every query to see a key: with
      k_segment_ids equal to segment_ids (the contract's default) each sees itself.
    block_size: the q and kv block of every splash kernel (a multiple of 128); default
      `default_block`.
    interpret: run in Pallas interpret mode; default: off TPU.

  Returns:
    [B, T, N, D] in q's dtype. Differentiable (splash's own dq and dkv kernels).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top

  reason = unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size)
  if reason:
    raise ValueError(f"implementation='splash' is not available: {reason}.")
  B, T, N, H = q_BTNH.shape
  K, D = k_BSKH.shape[2], v_BSKD.shape[-1]
  G = N // K
  block = default_block(T) if block_size is None else block_size
  if block % _TPU_LANES:
    raise ValueError(f"splash block_size must be a multiple of {_TPU_LANES}, got {block}.")
  T_pad = -(-T // block) * block
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  blocks = sa.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  w = None if window_size is None or window_size >= T_pad else window_size
  kernel = sa.make_splash_mqa_single_device(
    splash_mask(T_pad, w, G), block_sizes=blocks, interpret=interpret
  )
  pad = lambda x: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, 0)))
  q_BKGTH = (pad(q_BTNH) * jnp.asarray(scale, q_BTNH.dtype)).reshape(B, T_pad, K, G, H)
  q_BKGTH = q_BKGTH.transpose(0, 2, 3, 1, 4)
  k_BKSH = pad(k_BSKH).transpose(0, 2, 1, 3)
  v_BKSD = pad(v_BSKD).transpose(0, 2, 1, 3)
  if segment_ids is None:
    out_BKGTD = jax.vmap(jax.vmap(kernel))(q_BKGTH, k_BKSH, v_BKSD)
  else:  # one SegmentIds per sequence, shared by its key/value heads; padding rows: -1
    k_segment_ids = segment_ids if k_segment_ids is None else k_segment_ids
    pad_seg = lambda x: jnp.pad(x, ((0, 0), (0, T_pad - T)), constant_values=-1)
    seg_B = sa.SegmentIds(q=pad_seg(segment_ids), kv=pad_seg(k_segment_ids))
    per_head = jax.vmap(lambda q, k, v, seg: kernel(q, k, v, segment_ids=seg), (0, 0, 0, None))
    out_BKGTD = jax.vmap(per_head)(q_BKGTH, k_BKSH, v_BKSD, seg_B)
  return out_BKGTD.transpose(0, 3, 1, 2, 4).reshape(B, T_pad, N, D)[:, :T]
