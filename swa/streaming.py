"""Streaming inference on top of the model's one forward: prefill, decode, generate, passkey.

Every function takes the model as (graphdef, params) and the cache (swa/cache.py) as explicit
data, and returns the new cache; nothing is kept between calls. The model's own forward does the
work (`Transformer.__call__(tokens, cache=cache)`), so streaming and teacher-forced logits come
from the same code (tests/test_streaming.py checks they agree for every chunk size).

Compilation. `forward` and `generate`'s loop are jitted module-level functions with the graphdef
static: `forward` compiles once per chunk shape [B, C] (and cache shape), whatever the position
in the stream or the number of valid tokens, so `prefill` pads its last chunk rather than
compile another shape. `generate` runs all its greedy steps in one jitted `lax.scan` (one
compilation per number of tokens), so decoding makes no host round trip per token. The caches
passed in are donated (their buffers are reused in place, so a full-length cache is not copied
every step): keep using the returned one.

Shape letters: B batch, T/C new tokens, V vocabulary.
"""

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from swa import cache as cache_lib
from swa import data, evaluate, reports
from swa.checks import check_int
from swa.model import config_of

LOGITS_MODES = ("all", "last", "none")


@functools.partial(jax.jit, static_argnames="graphdef", donate_argnames="cache")
def forward(graphdef, params, cache, tokens_BC, num_valid):
  """Feeds one chunk: (logits [B, C, V] float32, the cache with its first num_valid tokens).

  Args:
    graphdef, params: the model (`train_lib.create_model` / `restore_params`).
    cache: from `cache.init_cache` or a previous call (donated).
    tokens_BC: int32 [B, C] tokens at positions end .. end+C-1.
    num_valid: int32 []: how many leading tokens are real (the rest is padding, not stored).
  """
  return nnx.merge(graphdef, params)(tokens_BC, cache=cache, num_valid=num_valid)


def decode_step(graphdef, params, cache, token_B):
  """Feeds one token per stream. Returns (logits [B, V] float32, new cache).

  One jitted call per token; `generate` runs many greedy steps in one. Not checked against
  `cache.capacity` (that would wait for the device every token): prefill and generate check it;
  a caller feeding tokens one by one keeps within it.
  """
  tokens_B1 = jnp.asarray(token_B, jnp.int32)[:, None]
  logits_B1V, cache = forward(graphdef, params, cache, tokens_B1, jnp.asarray(1, jnp.int32))
  return logits_B1V[:, 0], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "num_tokens"), donate_argnames="cache")
def _greedy(graphdef, params, cache, logits_BV, num_tokens):
  model = nnx.merge(graphdef, params)

  def step(carry, _):
    cache, logits_BV = carry
    token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_B1V, cache = model(token_B[:, None], cache=cache)
    return (cache, logits_B1V[:, 0]), token_B

  (cache, logits_BV), tokens_NB = jax.lax.scan(step, (cache, logits_BV), None, length=num_tokens)
  return tokens_NB.T, logits_BV, cache


def generate(graphdef, params, cache, logits_BV, num_tokens):
  """Greedy continuation: picks argmax(logits), feeds it, and so on, num_tokens times.

  Args:
    graphdef, params: the model.
    cache: the cache after the last token fed (donated).
    logits_BV: logits of the last token fed (e.g. prefill(..., logits="last")).
    num_tokens: tokens to generate; each is fed, so the cache moves on by num_tokens.

  Returns:
    (tokens int32 [B, num_tokens] numpy, logits [B, V] after the last one, new cache).
  """
  check_int("num_tokens", num_tokens, 0)
  cache_lib.check_capacity(config_of(graphdef, params), cache, num_tokens)
  if num_tokens == 0:
    return np.zeros((logits_BV.shape[0], 0), np.int32), logits_BV, cache
  tokens_BN, logits_BV, cache = _greedy(graphdef, params, cache, logits_BV, num_tokens)
  return np.asarray(tokens_BN), logits_BV, cache


def pad_chunk(tokens_BC, chunk_size):
  """A [B, n] chunk padded with data.PAD_ID to [B, chunk_size] (int32 numpy)."""
  tokens_BC = np.asarray(tokens_BC, np.int32)
  return np.pad(
    tokens_BC, ((0, 0), (0, chunk_size - tokens_BC.shape[1])), constant_values=data.PAD_ID
  )


def prefill(graphdef, params, cache, tokens_BT, chunk_size, *, logits="all"):
  """Feeds a whole [B, T] array in chunks of chunk_size (the last one padded).

  Every chunk has the same shape, so the forward compiles once whatever T is.

  Args:
    graphdef, params: the model.
    cache: from `cache.init_cache` or a previous call (donated).
    tokens_BT: int [B, T], T >= 0.
    chunk_size: C >= 1, any size (longer than a window, not dividing it, ...).
    logits: "all" -> [B, T, V]; "last" -> [B, V] of the last token (None if T == 0); "none".

  Returns:
    (logits as asked, or None; new cache).
  """
  check_int("chunk_size", chunk_size, 1)
  if logits not in LOGITS_MODES:
    raise ValueError(f"logits must be one of {LOGITS_MODES}, got {logits!r}.")
  tokens_BT = np.asarray(tokens_BT, np.int32)
  if tokens_BT.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens_BT.shape}.")
  B, T = tokens_BT.shape
  model_config = config_of(graphdef, params)
  cache_lib.check_capacity(model_config, cache, T)
  pieces, last = [], None
  for start in range(0, T, chunk_size):
    n = min(chunk_size, T - start)
    chunk_BC = pad_chunk(tokens_BT[:, start : start + n], chunk_size)
    out_BCV, cache = forward(graphdef, params, cache, chunk_BC, jnp.asarray(n, jnp.int32))
    if logits == "all":
      pieces.append(out_BCV[:, :n])
    elif logits == "last" and start + n == T:
      last = out_BCV[:, n - 1]
  if logits == "all":
    last = (
      jnp.concatenate(pieces, 1)
      if pieces
      else jnp.zeros((B, 0, model_config.vocab_size), jnp.float32)
    )
  return last, cache


def streaming_exact_match(graphdef, params, batch, chunk_size, *, num_sinks=0):
  """Per-example exact match of a passkey batch, computed through the streaming path.

  The prompt up to the first answer position is prefilled in chunks of chunk_size (logits
  dropped); then the answer positions are fed, teacher forced, keeping their logits, and scored
  by the one exact-match rule (`evaluate.exact_match`). With num_sinks=0 this equals
  `evaluate.exact_match_step` (up to float rounding on exact ties).

  Args:
    graphdef, params: the model.
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
  cache = cache_lib.init_cache(config_of(graphdef, params), B, max_len=T, num_sinks=num_sinks)
  _, cache = prefill(graphdef, params, cache, inputs_BT[:, :first], chunk_size, logits="none")
  logits_BAV, _ = prefill(graphdef, params, cache, inputs_BT[:, first:], chunk_size)
  answer_part = {"targets": targets_BT[:, first:], "answer_mask": answer_BT[:, first:]}
  return np.asarray(evaluate.exact_match(logits_BAV, answer_part))


def passkey_accuracy_streaming(graphdef, params, distances, *, chunk_size, num_sinks=0, **kwargs):
  """`evaluate.passkey_accuracy` through the streaming path: {distance: exact-match accuracy}.

  The same prompts as the batch evaluation for the same seed, so with num_sinks=0 the
  accuracies agree; the context may be far beyond the training one.

  Args:
    graphdef, params: the model.
    distances: key-to-question distances (swa/data.py).
    chunk_size: prefill chunk C >= 1.
    num_sinks: attention sinks kept by every windowed layer.
    **kwargs: evaluate.passkey_accuracy's keywords (train_seq_len, examples_per_distance, seed,
      max_batch_tokens, progress).
  """
  score = functools.partial(
    streaming_exact_match, graphdef, params, chunk_size=chunk_size, num_sinks=num_sinks
  )
  return evaluate.passkey_accuracy(graphdef, params, distances, exact_match_fn=score, **kwargs)


# --- A long stream through the rolling cache --------------------------------------------------


def fixed_chunks(pieces, size):
  """Regroups arrays of any lengths into arrays of exactly `size` (the last may be shorter)."""
  buffer = np.zeros(0, np.int32)
  for piece in pieces:
    buffer = np.concatenate([buffer, piece])
    while buffer.size >= size:
      yield buffer[:size]
      buffer = buffer[size:]
  if buffer.size:
    yield buffer


def stream_tokens(
  graphdef,
  params,
  model_config,
  pieces,
  *,
  total,
  chunk_size,
  num_sinks=0,
  max_len=None,
  num_generate=0,
):
  """Feeds a stream of `total` tokens (an iterable of arrays) in chunks, then generates.

  Args:
    graphdef, params, model_config: the model.
    pieces: iterable of int32 arrays, `total` tokens in all.
    total: the stream's length.
    chunk_size: tokens per forward call.
    num_sinks: attention sinks kept by every windowed layer.
    max_len: slots of full-attention layers; default total + num_generate.
    num_generate: greedy tokens generated after the stream.

  Returns:
    dict: fed, seconds, rate (tokens/s after the first chunk, None with one chunk), samples
    [(tokens fed, device bytes in use)], cache_bytes, generated (int32 [num_generate]),
    generate_seconds (of the generation, its compilation included; None without one).
  """
  max_len = max_len or total + num_generate
  cache = cache_lib.init_cache(model_config, 1, max_len, num_sinks=num_sinks)
  cache_lib.check_capacity(model_config, cache, total + num_generate)
  samples, next_sample, fed, pending, last_logits = [], 0, 0, None, None
  start, compiled_at, fed_at_compile = time.perf_counter(), None, 0
  bar = tqdm.tqdm(
    total=total,
    unit="tok",
    unit_scale=True,
    file=sys.stderr,
    mininterval=0.5 if sys.stderr.isatty() else 30,
  )
  for chunk in fixed_chunks(pieces, chunk_size):
    n = chunk.size
    logits, cache = forward(
      graphdef,
      params,
      cache,
      pad_chunk(chunk[None], chunk_size),
      jnp.asarray(n, jnp.int32),
    )
    last_logits = logits[:, n - 1]
    # Wait for the previous chunk only, so the device always has the next one queued.
    if pending is not None:
      jax.block_until_ready(pending[0])
      bar.update(pending[1])
      if compiled_at is None:
        compiled_at, fed_at_compile = time.perf_counter(), fed
    pending, fed = (last_logits, n), fed + n
    if fed >= next_sample:
      jax.block_until_ready(last_logits)
      samples.append((fed, cache_lib.device_bytes_in_use()))
      bar.set_postfix(device_mib=reports.format_mib(samples[-1][1]))
      next_sample += max(total // 10, 1)
  if pending is not None:
    jax.block_until_ready(pending[0])
    bar.update(pending[1])
  bar.close()
  end = time.perf_counter()
  if not samples or samples[-1][0] != fed:
    samples.append((fed, cache_lib.device_bytes_in_use()))
  rate = None
  if compiled_at is not None and end > compiled_at:
    rate = (fed - fed_at_compile) / (end - compiled_at)
  result = dict(
    fed=fed,
    seconds=end - start,
    rate=rate,
    samples=samples,
    cache_bytes=cache_lib.cache_bytes(cache),
    generated=np.zeros(0, np.int32),
    generate_seconds=None,
  )
  if num_generate and last_logits is not None:
    # One jitted loop over every token, its compilation included in the time.
    t0 = time.perf_counter()
    tokens_1N, _, cache = generate(graphdef, params, cache, last_logits, num_generate)
    result["generate_seconds"] = time.perf_counter() - t0
    result["generated"] = tokens_1N[0]
  return result
