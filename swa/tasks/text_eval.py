"""The JAX side of text evaluation: per-token losses in a batch, with other windows, and streamed.

  token_losses         the one next-byte cross-entropy (float32 log-softmax), per token
  position_losses      loss of every position of fixed windows (teacher forced, batched)
  with_windows         the same parameters under other attention windows (inference-time windows)
  stream_losses        loss of every token of a long stream fed through the rolling KV cache

All losses are in nats; bits/byte = loss / ln 2 (each token is one byte; SEP counts as one).
swa/tasks/text.py (training, evaluation) and swa/tasks/text_experiments.py (eval_text.py) use these;
swa/analysis/text.py turns their numbers into tables and figures without JAX.

Shape letters: N windows, B batch, T/C tokens, V vocabulary.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swa import cache as cache_lib
from swa.checks import check_int
from swa.model import Transformer, config_of


def token_losses(logits_BTV, targets_BT):
  """float32 [B, T]: -log softmax(logits)[target], the softmax in float32."""
  log_p_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p_BTV, targets_BT[..., None].astype(jnp.int32), -1)[..., 0]


@functools.partial(jax.jit, static_argnames="graphdef")
def _batch_losses(graphdef, params, inputs_BT, targets_BT, positions_BT=None, segment_ids_BT=None):
  logits_BTV = nnx.merge(graphdef, params)(inputs_BT, positions_BT, segment_ids_BT=segment_ids_BT)
  return token_losses(logits_BTV, targets_BT)


def position_losses(
  graphdef, params, inputs_NT, targets_NT, batch_size, *, segment_ids_NT=None, positions_NT=None
):
  """float32 numpy [N, T]: the loss at every position of N windows, batch_size at a time.

  The last batch is padded to batch_size (one compilation), its padding dropped. segment_ids_NT
  and positions_NT (packed documents, text.document_segments) go to the model with the inputs.
  """
  check_int("batch_size", batch_size, 1)
  inputs_NT, targets_NT = np.asarray(inputs_NT, np.int32), np.asarray(targets_NT, np.int32)
  n = inputs_NT.shape[0]
  out = []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size) % n  # pads the last batch with earlier rows
    extra = [
      None if x is None else np.asarray(x, np.int32)[rows] for x in (positions_NT, segment_ids_NT)
    ]
    losses = _batch_losses(graphdef, params, inputs_NT[rows], targets_NT[rows], *extra)
    out.append(np.asarray(losses)[: min(batch_size, n - start)])
  return np.concatenate(out) if out else np.zeros((0, inputs_NT.shape[1]), np.float32)


def with_windows(graphdef, params, window_size, *, num_sinks=None):
  """The graphdef of the same model with window_size (int, None, or one per layer) instead.

  Parameters do not depend on the window (RoPE is relative), so `params` go with the result
  unchanged: this is how a model is evaluated at an inference window it was not trained with.
  num_sinks, if given, replaces the model's sinks too (the batch twin of a cache with sinks).
  """
  config = dataclasses.replace(config_of(graphdef, params), window_size=window_size)
  if num_sinks is not None:
    config = dataclasses.replace(config, num_sinks=num_sinks)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  new_graphdef, _ = nnx.split(abstract, nnx.Param)
  return new_graphdef


@functools.partial(jax.jit, static_argnames="graphdef", donate_argnames="cache")
def _stream_step(graphdef, params, cache, tokens_1C, targets_1C, num_valid):
  logits_1CV, cache = nnx.merge(graphdef, params)(tokens_1C, cache=cache, num_valid=num_valid)
  return token_losses(logits_1CV, targets_1C)[0], cache


def stream_losses(
  graphdef, params, tokens, chunk_size, *, num_sinks=None, max_len=None, sample_every=None
):
  """Feeds one stream through the KV cache in chunks; the loss of predicting each next token.

  Args:
    graphdef, params: the model (its windows decide the rolling cache's ring sizes).
    tokens: int [L] stream, L >= 2.
    chunk_size: tokens per forward call (the last chunk padded: one compilation).
    num_sinks: sinks the cache keeps (cache.init_cache; None = the model's own num_sinks).
    max_len: slots of full-attention layers (default L).
    sample_every: read the device's bytes in use after about every this many tokens (waiting
      for the device then); None: only at the end.

  Returns:
    dict: losses (float32 numpy [L - 1]: losses[i] predicts tokens[i + 1] from tokens[:i + 1]),
    seconds, tokens_per_second (after the first chunk, which compiles; None with one chunk),
    cache_bytes (of the cache's arrays: constant for a rolling cache), device_bytes
    [(tokens fed, device bytes in use or None where the backend does not say)].
  """
  check_int("chunk_size", chunk_size, 1)
  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim != 1 or tokens.size < 2:
    raise ValueError(f"tokens must be one stream of >= 2 tokens, got shape {tokens.shape}.")
  model_config = config_of(graphdef, params)
  cache = cache_lib.init_cache(model_config, 1, max_len or tokens.size, num_sinks=num_sinks)
  # Committed to the device like the step's outputs, so the second chunk does not compile again
  # (measured: it did, uncommitted, and the rate then counted a compilation).
  cache = jax.device_put(cache, jax.devices()[0])
  nbytes = cache_lib.cache_bytes(cache)
  inputs, targets = tokens[:-1], tokens[1:]
  pieces, start_time, after_first, samples = [], time.perf_counter(), None, []
  next_sample = sample_every or inputs.size
  for start in range(0, inputs.size, chunk_size):
    n = min(chunk_size, inputs.size - start)
    chunk = np.zeros((2, chunk_size), np.int32)
    chunk[0, :n], chunk[1, :n] = inputs[start : start + n], targets[start : start + n]
    losses_C, cache = _stream_step(
      graphdef, params, cache, chunk[:1], chunk[1:], jnp.asarray(n, jnp.int32)
    )
    pieces.append(losses_C[:n])
    if after_first is None:
      jax.block_until_ready(losses_C)
      after_first = time.perf_counter()
    if start + n >= next_sample or start + n == inputs.size:
      jax.block_until_ready(losses_C)
      samples.append((start + n, cache_lib.device_bytes_in_use()))
      next_sample += sample_every or inputs.size
  losses = np.concatenate([np.asarray(p) for p in pieces])
  end = time.perf_counter()
  timed = inputs.size - min(chunk_size, inputs.size)
  rate = timed / (end - after_first) if timed and end > after_first else None
  return dict(
    losses=losses,
    seconds=end - start_time,
    tokens_per_second=rate,
    cache_bytes=nbytes,
    device_bytes=samples,
  )
