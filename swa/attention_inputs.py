"""Input checks of `sliding_window_attention` (swa/attention.py): shapes, positions, segment ids.

Each raises a one-line ValueError naming what is wrong; split from the contract's module to keep it
short.
"""

import jax.numpy as jnp

from swa.kernel_adapters import static_int


def check_shapes(q, k, v, same_length):
  """Validates ranks, lengths and head counts; returns the 4-D views."""
  if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
    raise ValueError(
      "q, k and v must all be [batch, seq, dim] or all [batch, seq, heads, dim]; got shapes "
      f"{q.shape}, {k.shape}, {v.shape}."
    )
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(
        f"{name} must be floating point (float32, bfloat16, float16, ...), got {x.dtype}."
      )
  if 0 in q.shape + k.shape + v.shape:
    raise ValueError(
      f"q, k and v must be non-empty (no axis of size 0), got shapes {q.shape}, {k.shape}, "
      f"{v.shape}."
    )
  if q.ndim == 3:
    q, k, v = q[:, :, None], k[:, :, None], v[:, :, None]
  (B, T, N, H), (Bk, S, K, Hk), (Bv, Sv, Kv, _) = q.shape, k.shape, v.shape
  if not B == Bk == Bv:
    raise ValueError(f"q, k and v must share the batch size, got {B}, {Bk}, {Bv}.")
  if S != Sv or (same_length and T != S):
    raise ValueError(
      f"Self-attention needs equal query and key/value lengths, got {T}, {S}, {Sv} "
      "(pass q_offset, k_offset or k_positions to place keys apart from queries)."
    )
  if K != Kv:
    raise ValueError(f"k and v must have the same number of heads, got {K} and {Kv}.")
  if N % K:
    raise ValueError(f"The query heads ({N}) must be a multiple of the key/value heads ({K}).")
  if H != Hk:
    raise ValueError(f"q and k must share the head dim, got {H} and {Hk}.")
  return q, k, v


def check_position(value, name):
  """Offsets and sinks are integer scalars (Python ints or traced/concrete int arrays)."""
  if value is None or static_int(value):
    return
  if (
    isinstance(value, (bool, float))
    or jnp.ndim(value) != 0
    or not jnp.issubdtype(jnp.result_type(value), jnp.integer)
  ):
    raise ValueError(f"{name} must be an integer scalar, got {value!r}.")


def check_segment_ids(segment_ids, k_segment_ids, B, T, S):
  """Validated int32 (segment_ids [B, T], k_segment_ids [B, S]); k_segment_ids defaults to
  segment_ids when S == T."""
  if segment_ids is None:
    if k_segment_ids is not None:
      raise ValueError("k_segment_ids needs segment_ids (the queries' segments) as well.")
    return None, None
  if k_segment_ids is None:
    if S != T:
      raise ValueError(
        f"With S={S} keys for T={T} queries, pass k_segment_ids [B, S] beside segment_ids."
      )
    k_segment_ids = segment_ids
  ids = []
  for name, x, shape in (
    ("segment_ids", segment_ids, (B, T)),
    ("k_segment_ids", k_segment_ids, (B, S)),
  ):
    x = jnp.asarray(x)
    if x.shape != shape or not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{name} must be ints of shape {shape}, got {x.dtype} {x.shape}.")
    ids.append(x.astype(jnp.int32))
  return tuple(ids)
