"""The KV cache of streaming inference: plain data, one dict per layer, passed in and out.

A cache is a list with one dict per layer (gemma style; never module state):

  k, v   [B, S, K, H]  keys (RoPE already applied at their absolute positions) and values
  pos    [S] int32     absolute position held by each slot; -1 = empty
  end    int32 []      absolute position of the next token = number of tokens fed so far
  sinks  int32 []      slots 0..sinks-1 are reserved for positions 0..sinks-1 (attention sinks)

The model's forward (`Transformer.__call__(tokens, cache=cache)`, swa/model.py) writes a chunk's
keys and values here and attends over the stored ones; swa/streaming.py builds prefill, decoding
and generation on top of it.

Where a position goes. Position p is written to slot p if p < sinks, else to slot
sinks + (p - sinks) % R, a ring of R = S - sinks slots. The rolling cache (the default) gives a
layer of window w the ring R = w, so its memory is O(w) however long the stream grows; a
full-attention layer gets S = max_len (the longest stream it can serve). `rolling=False` gives
every layer S = max_len: the full-length cache that keeps everything, as full attention would.

Who sees whom. The mask comes from positions alone, through the one rule of swa/attention.py
(`attention.visible`): key j is visible to query i iff 0 <= j <= i and (i - w < j or j < sinks).
An empty or overwritten slot can never be visible, whatever the slot order, so prefill + decode
reproduces the model's teacher-forced logits for any chunking (tests/test_streaming.py).

Attention sinks (StreamingLLM, Xiao et al. 2023). `num_sinks=k` keeps positions 0..k-1 in every
windowed layer for the whole stream: query i attends the union of its window (i-w, i] and the
sinks {j < k, j <= i}, at most w + k keys, none counted twice. For i < w + k - 1 this is the
plain window (the sinks are still inside it); later the output differs from the windowed model.
Positions stay absolute: a sink is rotated by RoPE at its original position, so at query i it is
i - j tokens away (StreamingLLM instead re-numbers positions inside the cache).

Writes. Only the last R valid positions of a chunk can survive in a ring of R slots; the others
would land on the same slots and a scatter with repeated indices keeps an unspecified one. They
are sent to an out-of-range slot and dropped, so every write index is unique (the classic bug of
prefill chunks longer than the window). Padding at the end of the last chunk (`num_valid`) is
never written and, being later than every real token, never visible to a real query.

Shape letters: B batch, T new tokens, S cache slots, K key/value heads, H head dim.
"""

import jax
import jax.numpy as jnp

from swa import attention
from swa.checks import check_int


def init_cache(model_config, batch_size, max_len=None, *, num_sinks=None, rolling=True, dtype=None):
  """An empty cache: one dict {k, v, pos, end, sinks} per layer (module docstring).

  Args:
    model_config: the model's architecture (a swa.model.ModelConfig).
    batch_size: B, streams decoded side by side (all at the same position).
    max_len: slots of every full-attention layer, i.e. the longest stream they serve; with
      rolling=False, the slots of every layer. Needed only where such a layer exists.
    num_sinks: attention sinks k >= 0 kept by every windowed layer (0 = the plain window);
      None = the model's own (model_config.num_sinks). A model trained with sinks needs at
      least as many here to give the outputs of its batch forward.
    rolling: True: windowed layers keep a ring of w slots (+ k sinks), O(w) memory. False: every
      layer keeps max_len slots (the full-length baseline; same outputs, O(max_len) memory).
    dtype: of k and v; default the model's activation dtype.

  Returns:
    list of num_layers dicts: k, v [B, S, K, H] zeros; pos [S] int32 -1; end, sinks int32 [].
  """
  check_int("batch_size", batch_size, 1)
  num_sinks = model_config.num_sinks if num_sinks is None else check_int("num_sinks", num_sinks, 0)
  windows = model_config.layer_windows
  if not rolling or None in windows:
    if max_len is None:
      raise ValueError(
        "max_len is required: the model has full-attention layers"
        if rolling
        else "max_len is required for a full-length cache (rolling=False)."
      )
    check_int("max_len", max_len, 1)
    if not rolling and num_sinks >= max_len:
      raise ValueError(f"num_sinks ({num_sinks}) must be below max_len ({max_len}).")
  dtype = jnp.dtype(model_config.dtype if dtype is None else dtype)
  cache = []
  for window in windows:
    sinks = 0 if window is None else num_sinks  # A full layer keeps every position anyway.
    size = num_sinks + window if rolling and window is not None else max_len
    kv_shape = (batch_size, size, model_config.num_kv_heads, model_config.head_dim)
    cache.append(
      {
        "k": jnp.zeros(kv_shape, dtype),
        "v": jnp.zeros(kv_shape, dtype),
        "pos": jnp.full((size,), -1, jnp.int32),
        "end": jnp.asarray(0, jnp.int32),
        "sinks": jnp.asarray(sinks, jnp.int32),
      }
    )
  return cache


def capacity(model_config, cache):
  """Longest stream (in tokens, from position 0) the cache serves exactly; None = unbounded.

  A layer of window w serves any length when its ring holds w slots (a decode step writes its
  key before attending, evicting the position w back); a full layer, or a ring shorter than its
  window, serves only as many positions as it has slots.
  """
  limits = []
  for window, layer in zip(model_config.layer_windows, cache):
    size, sinks = layer["pos"].shape[0], int(layer["sinks"])
    if window is None or size - sinks < window:
      limits.append(size)
  return min(limits) if limits else None


def check_capacity(model_config, cache, new_tokens):
  """Raises ValueError if feeding new_tokens more tokens would overflow a bounded layer."""
  limit = capacity(model_config, cache)
  end = int(cache[0]["end"])
  if limit is not None and end + new_tokens > limit:
    raise ValueError(
      f"The stream would reach {end + new_tokens} tokens but the cache holds only {limit} "
      "positions in its full-attention layers; pass a larger max_len to init_cache."
    )


def device_bytes_in_use():
  """Bytes the default device's allocator holds, or None where the backend does not say."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats or "bytes_in_use" not in stats else int(stats["bytes_in_use"])


def cache_bytes(cache):
  """Bytes held by the cache's arrays (the same on every device)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def visible_slots(layer, query_pos, window_size):
  """bool [..., S]: which of the layer's slots a query at absolute position query_pos sees.

  Args:
    layer: one layer's cache dict.
    query_pos: int scalar or array [...] of query positions.
    window_size: the layer's window w, or None for full attention.
  """
  query_pos = jnp.asarray(query_pos)[..., None]
  return attention.visible(query_pos, layer["pos"], window_size, layer["sinks"])


def write(layer, k_BTKH, v_BTKH, num_valid):
  """The layer's cache after storing the first num_valid of T new keys/values.

  The new tokens sit at positions end .. end+T-1 (module docstring for the slots). Returns a new
  dict; `end` moves on by num_valid.
  """
  T = k_BTKH.shape[1]
  size = layer["pos"].shape[0]
  end, sinks = layer["end"], layer["sinks"]
  ring = size - sinks
  pos_T = end + jnp.arange(T, dtype=jnp.int32)
  last = end + num_valid - 1
  slot_T = jnp.where(pos_T < sinks, pos_T, sinks + (pos_T - sinks) % ring)
  # Keep a key only if no later key of this chunk takes its slot; the rest go out of range.
  keep_T = (pos_T <= last) & ((pos_T < sinks) | (pos_T > last - ring))
  slot_T = jnp.where(keep_T, slot_T, size)
  store = lambda cached, new: cached.at[:, slot_T].set(new.astype(cached.dtype), mode="drop")
  return {
    "k": store(layer["k"], k_BTKH),
    "v": store(layer["v"], v_BTKH),
    "pos": layer["pos"].at[slot_T].set(pos_T, mode="drop"),
    "end": end + num_valid,
    "sinks": sinks,
  }
