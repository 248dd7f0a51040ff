"""The one mask rule of swa: which key positions a query position sees.

The bottom of the import graph: swa/attention.py (which re-exports these names), swa/chunked.py,
the Pallas kernels (swa/pallas_kernels.py) and every other implementation build their masks from
`visible`, so a window, a sink or an empty slot means the same thing everywhere.
"""

import jax.numpy as jnp
import numpy as np

# Masked logits get a large negative *finite* value: -inf would give NaN (inf - inf) in rows where
# every key is masked.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def check_window_size(window_size, name="window_size"):
  """Returns window_size as a Python int (or None); a ValueError unless it is None or an int >= 1."""
  if window_size is None:
    return None
  if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)):
    raise ValueError(
      f"{name} must be a positive integer or None (full attention), got "
      f"{window_size!r} of type {type(window_size).__name__}."
    )
  if window_size < 1:
    raise ValueError(f"{name} must be >= 1 (a query always sees itself), got {window_size}.")
  return int(window_size)


def visible(q_pos, k_pos, window_size, num_sinks=0, q_segment=None, k_segment=None):
  """True where the query at absolute position q_pos may attend the key at k_pos.

  A key is visible iff it is a real key (k_pos >= 0; a negative position marks an empty or padding
  slot), it is not in the future (k_pos <= q_pos), and it is inside the window
  (k_pos > q_pos - w) or one of the first `num_sinks` positions (attention sinks, k_pos <
  num_sinks). A window of None has no lower bound (full causal attention). With segment ids
  (packed sequences), the key must also be in the query's segment, sinks included.

  Args:
    q_pos: int array (or scalar) of query positions.
    k_pos: int array (or scalar) of key positions, broadcastable against q_pos.
    window_size: w >= 1, or None for full causal attention.
    num_sinks: number of sink positions 0 .. num_sinks - 1 every later query sees (int, may be
      traced).
    q_segment, k_segment: optional int segment ids of the queries and keys, broadcastable
      like q_pos and k_pos (both or neither).

  Returns:
    bool array of the broadcast shape of q_pos and k_pos (and the segment ids).
  """
  q_pos, k_pos = jnp.asarray(q_pos), jnp.asarray(k_pos)
  mask = (k_pos >= 0) & (k_pos <= q_pos)
  if window_size is not None:
    inside = k_pos > q_pos - window_size
    # A static 0 builds no sink term (the Pallas kernels evaluate this on every tile).
    no_sinks = isinstance(num_sinks, (int, np.integer)) and num_sinks == 0
    mask &= inside if no_sinks else inside | (k_pos < num_sinks)
  if q_segment is not None:
    mask &= jnp.asarray(q_segment) == jnp.asarray(k_segment)
  return mask


def masked_softmax(logits, mask, sink_logits=None):
  """Softmax over the last axis in float32; masked entries and rows with no allowed key give 0.

  A learned sink (gpt-oss) is one more entry of the denominator with no value: with
  sink_logits, p_j = exp(s_j) / (sum_k exp(s_k) + exp(sink)), so a row's probabilities sum to less
  than 1 (a row with no allowed key gives 0, its whole mass on the sink).

  Args:
    logits: [..., S] scores, any float dtype.
    mask: bool, broadcastable against logits; True = allowed.
    sink_logits: optional float [..., 1], broadcastable against logits: each row's sink logit.

  Returns:
    float32 probabilities of logits' shape.
  """
  logits = jnp.where(mask, logits.astype(jnp.float32), MASK_VALUE)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  if sink_logits is not None:
    sink_logits = jnp.asarray(sink_logits, jnp.float32)
    row_max = jnp.maximum(row_max, sink_logits)
  unnormalised = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
  row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
  if sink_logits is not None:
    row_sum = row_sum + jnp.exp(sink_logits - row_max)
  return unnormalised / jnp.where(row_sum == 0.0, 1.0, row_sum)
