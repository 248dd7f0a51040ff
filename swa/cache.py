"""Streaming inference: a per-layer KV cache, chunked prefill and token-by-token decoding.

The cache is explicit data passed into and out of every call (a list with one dict per layer),
never module state:

  k, v   [B, S, K, H]  keys (RoPE already applied at their absolute positions) and values
  pos    [S] int32     absolute position held by each slot; -1 = empty
  end    int32 []      absolute position of the next token = number of tokens fed so far
  sinks  int32 []      slots 0..sinks-1 are reserved for positions 0..sinks-1 (attention sinks)

Where a position goes. Position p is written to slot p if p < sinks, else to slot
sinks + (p - sinks) % R, a ring of R = S - sinks slots. The rolling cache (the default) gives a
layer of window w the ring R = w, so its memory is O(w) however long the stream grows; a
full-attention layer gets S = max_len (the longest stream it can serve). `rolling=False` gives
every layer S = max_len: the full-length cache that keeps everything, as full attention would.

Who sees whom. A chunk of C tokens at positions end .. end+C-1 attends over the cached keys and its
own C keys, and the mask is computed from positions alone (stored ones for the cache):

    key j is visible to query i  iff  0 <= j <= i  and  (i - w < j  or  j < sinks)

(the bracket is dropped for full layers). An empty or overwritten slot can never be visible,
whatever the slot order. With sinks = 0 this is exactly the window of swa/attention.py, so
prefill + decode reproduces the model's teacher-forced logits for any chunking
(tests/test_cache.py).

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

Shape letters: B batch, T/C new tokens, S cache slots, N query heads, K key/value heads,
G = N // K, H head dim, D model width, V vocabulary.
"""

import collections
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swa import data, train_lib
from swa.attention import _masked_softmax
from swa.model import ModelConfig, config_of

# How many times the forward body has been traced by any jitted entry point (forward_with_cache,
# decode_step, generate). A Python side effect runs only when JAX traces, i.e. compiles, so tests
# use it to check there is one compilation per shape however many chunks or decode steps run.
_TRACES = collections.Counter()

LOGITS_MODES = ("all", "last", "none")


def trace_count():
  """Times the forward body has been traced (compiled) in this process."""
  return _TRACES["forward"]


def _check_positive_int(value, name, allow_zero=False):
  low = 0 if allow_zero else 1
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def init_cache(model_config: ModelConfig, batch_size, max_len=None, *, num_sinks=0,
               rolling=True, dtype=None):
  """An empty cache: one dict {k, v, pos, end, sinks} per layer (module docstring).

  Args:
    model_config: the model's architecture (`train_lib.model_config(config)`).
    batch_size: B, streams decoded side by side (all at the same position).
    max_len: slots of every full-attention layer, i.e. the longest stream they serve; with
      rolling=False, the slots of every layer. Needed only where such a layer exists.
    num_sinks: attention sinks k >= 0 kept by every windowed layer (0 = the plain window).
    rolling: True: windowed layers keep a ring of w slots (+ k sinks), O(w) memory. False: every
      layer keeps max_len slots (the full-length baseline; same outputs, O(max_len) memory).
    dtype: of k and v; default the model's activation dtype.

  Returns:
    list of num_layers dicts: k, v [B, S, K, H] zeros; pos [S] int32 -1; end, sinks int32 [].
  """
  _check_positive_int(batch_size, "batch_size")
  _check_positive_int(num_sinks, "num_sinks", allow_zero=True)
  windows = model_config.layer_windows
  if not rolling or None in windows:
    if max_len is None:
      raise ValueError("max_len is required: the model has full-attention layers"
                       if rolling else "max_len is required for a full-length cache "
                       "(rolling=False).")
    _check_positive_int(max_len, "max_len")
    if not rolling and num_sinks >= max_len:
      raise ValueError(f"num_sinks ({num_sinks}) must be below max_len ({max_len}).")
  dtype = jnp.dtype(model_config.dtype if dtype is None else dtype)
  cache = []
  for window in windows:
    sinks = 0 if window is None else num_sinks  # A full layer keeps every position anyway.
    size = num_sinks + window if rolling and window is not None else max_len
    kv_shape = (batch_size, size, model_config.num_kv_heads, model_config.head_dim)
    cache.append({
        "k": jnp.zeros(kv_shape, dtype),
        "v": jnp.zeros(kv_shape, dtype),
        "pos": jnp.full((size,), -1, jnp.int32),
        "end": jnp.asarray(0, jnp.int32),
        "sinks": jnp.asarray(sinks, jnp.int32),
    })
  return cache


def capacity(model_config: ModelConfig, cache):
  """Longest stream (in tokens, from position 0) the cache serves exactly; None = unbounded.

  A layer of window w serves any length when its ring holds the w - 1 keys before a chunk; a
  full layer (or a ring shorter than its window) only as many positions as it has slots.
  """
  limits = []
  for window, layer in zip(model_config.layer_windows, cache):
    size, sinks = layer["pos"].shape[0], int(layer["sinks"])
    if window is None or size - sinks < window - 1:
      limits.append(size)
  return min(limits) if limits else None


def cache_bytes(cache):
  """Bytes held by the cache's arrays (the same on every device)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def visible(query_pos, key_pos, window_size, sinks):
  """Which keys each query sees, from absolute positions (broadcasting; key_pos -1 = empty).

  key j is visible to query i iff 0 <= j <= i and (i - w < j or j < sinks); no window for None.
  """
  mask = (key_pos >= 0) & (key_pos <= query_pos)
  if window_size is not None:
    mask &= (key_pos > query_pos - window_size) | (key_pos < sinks)
  return mask


def cached_attention(q_BTNH, k_BTKH, v_BTKH, layer, window_size):
  """New queries attend over the cached keys followed by their own keys.

  Args:
    q_BTNH, k_BTKH, v_BTKH: the new tokens' projections (RoPE at positions end .. end+T-1).
    layer: this layer's cache dict (read only).
    window_size: the layer's window w, or None for full attention.

  Returns:
    [B, T, N, H] in q's dtype. The scores over cache slots and over new keys are one softmax
    (float32); they are kept as two blocks so the cache is never copied into a concatenation.
  """
  B, T, N, H = q_BTNH.shape
  K = k_BTKH.shape[2]
  q_pos_T = layer["end"] + jnp.arange(T, dtype=jnp.int32)
  key_pos_S = jnp.concatenate([layer["pos"], q_pos_T])  # cache slots, then the new keys
  mask_TS = visible(q_pos_T[:, None], key_pos_S[None, :], window_size, layer["sinks"])

  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  k_cache_BSKH = layer["k"].astype(k_BTKH.dtype)
  v_cache_BSKH = layer["v"].astype(v_BTKH.dtype)
  logits_cache_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_cache_BSKH,
                                  preferred_element_type=jnp.float32)
  logits_new_BKGTU = jnp.einsum("BTKGH,BUKH->BKGTU", q_BTKGH, k_BTKH,
                                preferred_element_type=jnp.float32)
  logits_BKGTS = jnp.concatenate([logits_cache_BKGTS, logits_new_BKGTU], -1) / math.sqrt(H)
  probs_BKGTS = _masked_softmax(logits_BKGTS, mask_TS).astype(v_BTKH.dtype)

  num_cached = layer["pos"].shape[0]
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS[..., :num_cached], v_cache_BSKH,
                         preferred_element_type=jnp.float32)
  out_BTKGH += jnp.einsum("BKGTU,BUKH->BTKGH", probs_BKGTS[..., num_cached:], v_BTKH,
                          preferred_element_type=jnp.float32)
  return out_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


def write(layer, k_BTKH, v_BTKH, num_valid):
  """The layer's cache after storing the first num_valid of T new keys/values (module docstring).

  Returns a new dict; `end` moves on by num_valid.
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


def _forward_impl(graphdef, params, cache, tokens_BC, num_valid):
  """The model on one chunk with cached attention; the body of every jitted entry point."""
  _TRACES["forward"] += 1
  model = nnx.merge(graphdef, params)
  B, C = tokens_BC.shape
  positions_BC = jnp.broadcast_to(cache[0]["end"] + jnp.arange(C, dtype=jnp.int32), (B, C))
  x_BCD = model.embed(tokens_BC)
  new_cache = []
  # Block.__call__ with the attention swapped for the cached one.
  for block, layer in zip(model.blocks, cache):
    attn = block.attention
    q_BCNH, k_BCKH, v_BCKH = attn.project(block.attention_norm(x_BCD), positions_BC)
    out_BCNH = cached_attention(q_BCNH, k_BCKH, v_BCKH, layer, attn.window_size)
    x_BCD = x_BCD + attn.out(out_BCNH.reshape(B, C, -1))
    x_BCD = x_BCD + block.mlp(x_BCD)
    new_cache.append(write(layer, k_BCKH, v_BCKH, num_valid))
  return model.head(model.final_norm(x_BCD)).astype(jnp.float32), new_cache


def _decode_impl(graphdef, params, cache, token_B):
  logits_B1V, cache = _forward_impl(graphdef, params, cache, token_B[:, None], 1)
  return logits_B1V[:, 0], cache


def _greedy_step_impl(graphdef, params, cache, logits_BV):
  token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV, cache = _decode_impl(graphdef, params, cache, token_B)
  return token_B, logits_BV, cache


# Jitted entry points with the graphdef bound, one set per model. Passing the GraphDef as a static
# argument instead would hash it on every call (~0.3 ms, as long as a whole decode step of a
# small model); keyed by id and holding a reference, so the id cannot be reused.
_JITTED = {}


def _jitted(graphdef, impl):
  graph, fns = _JITTED.setdefault(id(graphdef), (graphdef, {}))
  assert graph is graphdef
  if impl not in fns:
    fns[impl] = jax.jit(functools.partial(impl, graphdef), donate_argnames="cache")
  return fns[impl]


def forward_with_cache(graphdef, params, cache, tokens_BC, num_valid=None):
  """Feeds one chunk of tokens: logits for each and the cache with them added.

  Jitted once per chunk shape [B, C]: `num_valid` is data, so a padded last chunk does not
  recompile. The input cache is donated (its buffers are reused in place, so a full-length
  cache is not copied every step); keep using the returned one.

  Args:
    graphdef, params: the model (`train_lib.create_model` / `restore_params`).
    cache: from `init_cache` or a previous call.
    tokens_BC: int [B, C] tokens at positions end .. end+C-1.
    num_valid: how many leading tokens of the chunk are real (the rest is padding, not stored);
      default C.

  Returns:
    (logits [B, C, V] float32, new cache). Logits of padding positions are meaningless.
  """
  tokens_BC = jnp.asarray(tokens_BC, jnp.int32)
  num_valid = tokens_BC.shape[1] if num_valid is None else num_valid
  return _jitted(graphdef, _forward_impl)(params, cache, tokens_BC,
                                          jnp.asarray(num_valid, jnp.int32))


def decode_step(graphdef, params, cache, token_B):
  """Feeds one token per stream (one jitted call). Returns (logits [B, V] float32, new cache)."""
  return _jitted(graphdef, _decode_impl)(params, cache, jnp.asarray(token_B, jnp.int32))


def generate(graphdef, params, cache, logits_BV, num_tokens):
  """Greedy continuation: picks argmax(logits), feeds it, and so on, num_tokens times.

  One jitted call per token (argmax and forward fused), with no host round trip in between.

  Args:
    logits_BV: logits of the last token fed (e.g. prefill(..., logits="last")).
    num_tokens: tokens to generate; each is fed, so the cache moves on by num_tokens.

  Returns:
    (tokens int32 [B, num_tokens] numpy, logits [B, V] after the last one, new cache).
  """
  _check_positive_int(num_tokens, "num_tokens", allow_zero=True)
  step, tokens = _jitted(graphdef, _greedy_step_impl), []
  for _ in range(num_tokens):
    token_B, logits_BV, cache = step(params, cache, logits_BV)
    tokens.append(token_B)
  tokens_BN = (np.stack(jax.device_get(tokens), 1) if tokens
               else np.zeros((logits_BV.shape[0], 0), np.int32))
  return tokens_BN, logits_BV, cache


def check_capacity(model_config, cache, new_tokens):
  """Raises ValueError if feeding new_tokens more tokens would overflow a bounded layer."""
  limit = capacity(model_config, cache)
  end = int(cache[0]["end"])
  if limit is not None and end + new_tokens > limit:
    raise ValueError(
        f"The stream would reach {end + new_tokens} tokens but the cache holds only {limit} "
        "positions in its full-attention layers; pass a larger max_len to init_cache.")


def prefill(graphdef, params, cache, tokens_BT, chunk_size, *, logits="all"):
  """Feeds a whole [B, T] array in chunks of chunk_size (the last one padded).

  Every chunk has the same shape, so the forward compiles once whatever T is.

  Args:
    tokens_BT: int [B, T], T >= 0.
    chunk_size: C >= 1, any size (longer than a window, not dividing it, ...).
    logits: "all" -> [B, T, V]; "last" -> [B, V] of the last token (None if T == 0); "none".

  Returns:
    (logits as asked, or None; new cache).
  """
  _check_positive_int(chunk_size, "chunk_size")
  if logits not in LOGITS_MODES:
    raise ValueError(f"logits must be one of {LOGITS_MODES}, got {logits!r}.")
  tokens_BT = np.asarray(tokens_BT, np.int32)
  if tokens_BT.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens_BT.shape}.")
  B, T = tokens_BT.shape
  model_config = config_of(graphdef, params)
  check_capacity(model_config, cache, T)
  pieces, last = [], None
  for start in range(0, T, chunk_size):
    chunk_BC = tokens_BT[:, start:start + chunk_size]
    n = chunk_BC.shape[1]
    chunk_BC = np.pad(chunk_BC, ((0, 0), (0, chunk_size - n)), constant_values=data.PAD_ID)
    out_BCV, cache = forward_with_cache(graphdef, params, cache, chunk_BC, n)
    if logits == "all":
      pieces.append(out_BCV[:, :n])
    elif logits == "last" and start + n == T:
      last = out_BCV[:, n - 1]
  if logits == "all":
    last = (jnp.concatenate(pieces, 1) if pieces
            else jnp.zeros((B, 0, model_config.vocab_size), jnp.float32))
  return last, cache


def streaming_exact_match(graphdef, params, batch, chunk_size, *, num_sinks=0):
  """Per-example exact match of a passkey batch, computed through the streaming path.

  The prompt up to the first answer position is prefilled in chunks of chunk_size (logits
  dropped); then the answer positions are fed, teacher forced, keeping their logits. With
  num_sinks=0 this equals `train_lib.exact_match_step` (up to float rounding on exact ties).

  Args:
    batch: dict with inputs, targets int [B, T] and answer_mask [B, T] (data.passkey_batch).
    chunk_size: prefill chunk C >= 1.
    num_sinks: attention sinks kept by every windowed layer (0 = the model's own window).

  Returns:
    bool numpy [B].
  """
  inputs_BT = np.asarray(batch["inputs"], np.int32)
  targets_BT = np.asarray(batch["targets"])
  answer_BT = np.asarray(batch["answer_mask"]) != 0
  B, T = inputs_BT.shape
  answer_cols = np.flatnonzero(answer_BT.any(0))
  first = int(answer_cols[0]) if answer_cols.size else T
  cache = init_cache(config_of(graphdef, params), B, max_len=T, num_sinks=num_sinks)
  _, cache = prefill(graphdef, params, cache, inputs_BT[:, :first], chunk_size, logits="none")
  logits_BAV, _ = prefill(graphdef, params, cache, inputs_BT[:, first:], chunk_size)
  answer_part = {"targets": targets_BT[:, first:], "answer_mask": answer_BT[:, first:]}
  return np.asarray(train_lib.exact_match(logits_BAV, answer_part))


def evaluate_passkey_streaming(graphdef, params, *, seq_len, distances, examples_per_distance,
                               seed, chunk_size, num_sinks=0, batch_size=64, progress=None):
  """`train_lib.evaluate_passkey` through the streaming path: {distance: exact-match accuracy}.

  The same prompts as train_lib.evaluate_passkey for the same seed, so with num_sinks=0 the
  accuracies agree; seq_len may be far beyond the training context. `progress(n)` is called
  after each batch of n examples, if given.
  """
  return train_lib.evaluate_passkey(
      graphdef, params, seq_len=seq_len, distances=distances,
      examples_per_distance=examples_per_distance, seed=seed, batch_size=batch_size,
      progress=progress, exact_match_fn=lambda batch: streaming_exact_match(
          graphdef, params, batch, chunk_size, num_sinks=num_sinks))
