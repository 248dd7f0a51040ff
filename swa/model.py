"""A small decoder-only Transformer (Flax NNX) with a sliding window per layer.

Token embedding -> L x [RMSNorm -> attention -> residual, RMSNorm -> MLP -> residual]
-> RMSNorm -> output head. Rotary position embeddings (RoPE) make attention depend
only on the distance between query and key, so a window means the same thing
anywhere in a stream. Parameters are float32; activations run in `dtype`.

Architecture options, all off by default, let the same forward run the sliding-window families of
the Hugging Face Hub (swa/hf/, docs/hf.md): a gated MLP without bias (SwiGLU, GeGLU), the RMSNorm
epsilon, an explicit head dim, q/k/v biases, tied embeddings, a RoPE base per layer, and Gemma 2's
extras (RMSNorm by 1 + scale, embeddings times sqrt(d_model), norms after attention and MLP, a
logit scale, attention and final logit soft-caps), Gemma 3's norm of each head's query and key.
Learned sinks (gpt-oss) are one more option.

The architecture itself, `ModelConfig` (and `layer_windows`, `window_name`), is in
swa/model_config.py; it is imported here, so `from swa.model import ModelConfig` keeps working.

One forward serves training, evaluation and streaming: `Transformer(tokens)` gives logits, and
`Transformer(tokens, cache=cache)` (gemma style) continues a stream held in an explicit KV cache
(swa/cache.py), returning the logits and the new cache; swa/streaming.py builds prefill, decoding
and generation on it.

Packed sequences: `Transformer(tokens, positions, segment_ids_BT=ids)` keeps every attention layer
inside each token's segment; with `segment_positions(ids)` as the positions each segment's logits
are those of running it alone (tests/test_model.py).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from swa import attention
from swa import cache as cache_lib
from swa.model_config import ModelConfig, Window, layer_windows, window_name  # noqa: F401


def apply_rope(x_BTNH, positions_BT, base, scale=1.0):
  """Rotates pairs (x[..., :H/2], x[..., H/2:]) by angles (positions / scale) * base^(-2i/H).

  scale > 1 is position interpolation (Chen et al. 2023): a model run at scale x its trained
  length sees only the angles of its trained length, at finer steps.
  """
  half = x_BTNH.shape[-1] // 2
  inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  positions_BT = positions_BT.astype(jnp.float32)
  if scale != 1:  # scale 1 leaves the angles bit for bit as they were
    positions_BT = positions_BT / scale
  angles_BTF = positions_BT[..., None] * inv_freq_F
  sin_BT1F, cos_BT1F = jnp.sin(angles_BTF)[:, :, None], jnp.cos(angles_BTF)[:, :, None]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F], -1)
  return rotated.astype(x_BTNH.dtype)


class OffsetRMSNorm(nnx.Module):
  """RMSNorm whose scale is stored as an offset from 1 (Gemma): x / rms(x) * (1 + scale).

  Computed in float32 and cast to `dtype` at the end, as Gemma does; the scale starts at 0.
  """

  def __init__(self, num_features, *, epsilon, dtype):
    self.scale = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x_BTD):
    x_BTD32 = x_BTD.astype(jnp.float32)
    mean_square_BT1 = jnp.mean(jnp.square(x_BTD32), axis=-1, keepdims=True)
    normed_BTD = x_BTD32 * jax.lax.rsqrt(mean_square_BT1 + self.epsilon)
    return (normed_BTD * (1.0 + self.scale[...])).astype(self.dtype)


def rms_norm(config: ModelConfig, rngs: nnx.Rngs, num_features=None):
  """The model's RMSNorm over the last axis (default d_model): scale, or 1 + scale (norm_plus_one)."""
  dtype, num_features = jnp.dtype(config.dtype), num_features or config.d_model
  if config.norm_plus_one:
    return OffsetRMSNorm(num_features, epsilon=config.norm_eps, dtype=dtype)
  return nnx.RMSNorm(num_features, epsilon=config.norm_eps, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head (GQA) self-attention over a sliding window, with RoPE."""

  def __init__(
    self,
    config: ModelConfig,
    window_size: Window,
    *,
    rngs: nnx.Rngs,
    attention_fn=None,
    rope_base=None,
  ):
    # attention_fn: see Transformer; None = the registry's config.attention. rope_base: this
    # layer's (default config.rope_base).
    self.config, self.window_size, self.attention_fn = config, window_size, attention_fn
    self.rope_base = config.layer_rope_bases[0] if rope_base is None else rope_base
    c, dtype = config, jnp.dtype(config.dtype)
    dense = lambda i, o, bias=False: nnx.Linear(i, o, use_bias=bias, dtype=dtype, rngs=rngs)
    self.query = dense(c.d_model, c.num_heads * c.head_dim, c.qkv_bias)
    self.key = dense(c.d_model, c.num_kv_heads * c.head_dim, c.qkv_bias)
    self.value = dense(c.d_model, c.num_kv_heads * c.head_dim, c.qkv_bias)
    self.out = dense(c.num_heads * c.head_dim, c.d_model)
    if c.learned_sinks:  # gpt-oss: one sink logit per query head (attention.py's sink_logits).
      self.sinks = nnx.Param(jnp.zeros((c.num_heads,), jnp.float32))
    if c.qk_norm:  # Gemma 3, Qwen3: RMSNorm over each head's query and key, before RoPE
      self.query_norm = rms_norm(c, rngs, c.head_dim)
      self.key_norm = rms_norm(c, rngs, c.head_dim)

  def _options(self):
    """Keyword options of the attention call that only the architecture options set."""
    c, options = self.config, {}
    if c.attention_scale is not None:
      options["scale"] = c.attention_scale
    if c.attention_softcap is not None:
      options["logit_softcap"] = c.attention_softcap
    if c.learned_sinks:
      options["sink_logits"] = self.sinks[...]
    return options

  def __call__(self, x_BTD, positions_BT, cache=None, num_valid=None, segment_ids_BT=None):
    """Attention over x's own tokens, or over a cache and a chunk that continues its stream.

    Args:
      x_BTD: [B, T, D] normed inputs.
      positions_BT: int [B, T] absolute positions (RoPE phase).
      cache: None, or this layer's cache (swa/cache.py); the chunk then sits at positions
        cache["end"] .. cache["end"] + T - 1 (positions_BT must say the same).
      num_valid: with a cache, how many leading tokens of the chunk are real (int32 []); the
        rest is padding, never stored.
      segment_ids_BT: optional int [B, T] (packed sequences, no cache): a token attends only to
        tokens of its own segment.

    Returns:
      (out [B, T, D], the layer's new cache, or None without a cache).
    """
    c = self.config
    B, T, _ = x_BTD.shape
    q_BTNH = self.query(x_BTD).reshape(B, T, c.num_heads, c.head_dim)
    k_BTKH = self.key(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    v_BTKH = self.value(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    if c.qk_norm:
      q_BTNH, k_BTKH = self.query_norm(q_BTNH), self.key_norm(k_BTKH)
    if c.position_encoding == "rope":  # "none" (NoPE): the causal mask alone orders tokens
      q_BTNH = apply_rope(q_BTNH, positions_BT, self.rope_base, c.rope_scale)
      k_BTKH = apply_rope(k_BTKH, positions_BT, self.rope_base, c.rope_scale)
    if cache is None:
      out_BTNH, new_cache = self._attend(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT), None
    elif segment_ids_BT is not None:
      raise ValueError("segment_ids_BT is for whole sequences; the cached path does not take it.")
    else:
      out_BTNH, new_cache = self._attend_cached(q_BTNH, k_BTKH, v_BTKH, cache, num_valid)
    return self.out(out_BTNH.reshape(B, T, -1)), new_cache

  def _attend(self, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT=None):
    """Self-attention of one whole sequence (training, teacher-forced evaluation)."""
    c = self.config
    blocks = dict(block_size=c.block_size, blocks_per_step=c.blocks_per_step, **self._options())
    if c.num_sinks:
      blocks["num_sinks"] = c.num_sinks
    if segment_ids_BT is not None:
      blocks["segment_ids"] = segment_ids_BT
    if self.attention_fn is not None:
      return self.attention_fn(q_BTNH, k_BTKH, v_BTKH, self.window_size, **blocks)
    return attention.sliding_window_attention(
      q_BTNH, k_BTKH, v_BTKH, self.window_size, implementation=c.attention, **blocks
    )

  def _attend_cached(self, q_BTNH, k_BTKH, v_BTKH, layer, num_valid):
    """The chunk's queries over the cached keys and its own; returns (out, new layer cache)."""
    T = q_BTNH.shape[1]
    new_layer = cache_lib.write(layer, k_BTKH, v_BTKH, num_valid)
    if T == 1:
      # Decode: the ring (>= w slots) still holds every key the one query sees after the write,
      # so attend over the cache in place, never copying it.
      k_BSKH, v_BSKH, k_pos_S = new_layer["k"], new_layer["v"], new_layer["pos"]
    else:
      # A chunk may overwrite keys its own first queries still see: attend over the old cache
      # followed by the chunk.
      k_BSKH = jnp.concatenate([layer["k"], k_BTKH.astype(layer["k"].dtype)], axis=1)
      v_BSKH = jnp.concatenate([layer["v"], v_BTKH.astype(layer["v"].dtype)], axis=1)
      k_pos_S = jnp.concatenate([layer["pos"], layer["end"] + jnp.arange(T, dtype=jnp.int32)])
    # The keys sit in ring order at stored positions, so the dense form, which takes any key
    # positions, is used: O(T * S) for S = w (+ sinks) slots (+ T), small for a rolling cache.
    out_BTNH = attention.sliding_window_attention(
      q_BTNH,
      k_BSKH.astype(k_BTKH.dtype),
      v_BSKH.astype(v_BTKH.dtype),
      self.window_size,
      q_offset=layer["end"],
      k_positions=k_pos_S,
      num_sinks=layer["sinks"],
      implementation="reference",
      **self._options(),
    )
    return out_BTNH, new_layer


class Block(nnx.Module):
  """Pre-norm residual block: attention then an MLP (GELU, or gated: SwiGLU / GeGLU).

  With post_norms (Gemma 2) the attention and MLP outputs are normed again before each residual.
  """

  def __init__(
    self,
    config: ModelConfig,
    window_size: Window,
    *,
    rngs: nnx.Rngs,
    attention_fn=None,
    rope_base=None,
  ):
    c, dtype = config, jnp.dtype(config.dtype)
    self.config = config
    self.attention_norm = rms_norm(c, rngs)
    self.attention = Attention(
      c, window_size, rngs=rngs, attention_fn=attention_fn, rope_base=rope_base
    )
    self.mlp_norm = rms_norm(c, rngs)
    gated = c.mlp != "gelu"  # gated MLPs have no biases (Llama, Mistral, Qwen2, Gemma)
    dense = lambda i, o: nnx.Linear(i, o, use_bias=not gated, dtype=dtype, rngs=rngs)
    if gated:
      self.mlp_gate = dense(c.d_model, c.mlp_dim)
    self.mlp_in = dense(c.d_model, c.mlp_dim)
    self.mlp_out = dense(c.mlp_dim, c.d_model)
    if c.post_norms:
      self.post_attention_norm = rms_norm(c, rngs)
      self.post_mlp_norm = rms_norm(c, rngs)

  def mlp(self, x_BTD):
    """gelu: out(gelu(in x)); swiglu: out(silu(gate x) * in x); geglu: out(gelu(gate x) * in x)."""
    kind = self.config.mlp
    if kind == "gelu":
      return self.mlp_out(jax.nn.gelu(self.mlp_in(x_BTD)))
    act = jax.nn.silu if kind == "swiglu" else functools.partial(jax.nn.gelu, approximate=True)
    return self.mlp_out(act(self.mlp_gate(x_BTD)) * self.mlp_in(x_BTD))

  def __call__(self, x_BTD, positions_BT, cache=None, num_valid=None, segment_ids_BT=None):
    """Returns (x [B, T, D], the layer's new cache or None); arguments as in Attention."""
    attended_BTD, cache = self.attention(
      self.attention_norm(x_BTD), positions_BT, cache, num_valid, segment_ids_BT
    )
    if self.config.post_norms:
      attended_BTD = self.post_attention_norm(attended_BTD)
    x_BTD = x_BTD + attended_BTD
    mlp_BTD = self.mlp(self.mlp_norm(x_BTD))
    if self.config.post_norms:
      mlp_BTD = self.post_mlp_norm(mlp_BTD)
    return x_BTD + mlp_BTD, cache


class Transformer(nnx.Module):
  """Decoder-only language model; `window_size` per layer from the config.

  `attention_fn`, if given, replaces the registry call for whole sequences (not the cached
  path): `attention_fn(q, k, v, window_size, block_size=, blocks_per_step=)` with the contract of
  `attention.sliding_window_attention`, e.g. `sharding.sequence_parallel(mesh)`. Device layout is
  chosen by the trainer, not by the architecture (ModelConfig).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, attention_fn=None):
    self.config = config
    dtype = jnp.dtype(config.dtype)
    self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List(
      [
        Block(config, w, rngs=rngs, attention_fn=attention_fn, rope_base=base)
        for w, base in zip(config.layer_windows, config.layer_rope_bases)
      ]
    )
    self.final_norm = rms_norm(config, rngs)
    if not config.tie_embeddings:  # tied: the head is the embedding table, transposed
      self.head = nnx.Linear(
        config.d_model, config.vocab_size, use_bias=False, dtype=dtype, rngs=rngs
      )

  def from_embeddings(
    self, x_BTD, positions_BT=None, cache=None, *, num_valid=None, segment_ids_BT=None
  ):
    """The forward from input embeddings [B, T, D]; arguments and results as in __call__."""
    B, T, _ = x_BTD.shape
    if cache is not None and segment_ids_BT is not None:
      raise ValueError(
        "segment_ids_BT (packed sequences) is for whole sequences, not a cached stream."
      )
    if cache is not None:
      if positions_BT is not None:
        raise ValueError(
          "positions_BT must be None when a cache is given: the chunk continues "
          "the cached stream at positions cache[0]['end'] onwards."
        )
      if len(cache) != len(self.blocks):
        raise ValueError(f"The cache has {len(cache)} layers, the model {len(self.blocks)}.")
      positions_BT = cache[0]["end"] + jnp.arange(T, dtype=jnp.int32)
      num_valid = jnp.asarray(T if num_valid is None else num_valid, jnp.int32)
    else:
      if num_valid is not None:
        raise ValueError("num_valid is only meaningful with a cache (it marks chunk padding).")
      if positions_BT is None:
        positions_BT = jnp.arange(T, dtype=jnp.int32)
    positions_BT = jnp.broadcast_to(positions_BT, (B, T))
    new_cache = []
    for i, block in enumerate(self.blocks):
      if cache is None and self.config.remat:
        x_BTD = nnx.remat(lambda blk, x, p, s: blk(x, p, segment_ids_BT=s)[0])(
          block, x_BTD, positions_BT, segment_ids_BT
        )
      else:
        layer_cache = None if cache is None else cache[i]
        x_BTD, layer = block(x_BTD, positions_BT, layer_cache, num_valid, segment_ids_BT)
        new_cache.append(layer)
    x_BTD = self.final_norm(x_BTD)
    if self.config.tie_embeddings:
      logits_BTV = self.embed.attend(x_BTD).astype(jnp.float32)
    else:
      logits_BTV = self.head(x_BTD).astype(jnp.float32)
    if self.config.final_softcap is not None:
      logits_BTV = attention.softcap(logits_BTV, self.config.final_softcap)
    return logits_BTV if cache is None else (logits_BTV, new_cache)

  def __call__(
    self, tokens_BT, positions_BT=None, cache=None, *, num_valid=None, segment_ids_BT=None
  ):
    """The one forward: whole sequences (training, evaluation) or a chunk of a cached stream.

    Args:
      tokens_BT: int [B, T].
      positions_BT: int [B, T] (or [T]) absolute positions; default 0 .. T-1. Must be None
        with a cache.
      cache: None, or the per-layer cache of swa/cache.py (`cache.init_cache`): the tokens then
        continue the cached stream at positions cache[0]["end"] .. end + T - 1, attend over the
        cached keys as well as their own, and are written into it.
      num_valid: with a cache, how many leading tokens are real (default T); the rest is
        padding that is neither stored nor counted, so a padded last chunk keeps its shape.
      segment_ids_BT: optional int [B, T], packed sequences (no cache): every attention layer
        lets a token see only tokens of its own segment. With positions_BT restarting at 0 at
        each segment (`segment_positions`), each segment's logits are those of running it alone.

    Returns:
      logits [B, T, V] float32 without a cache; (logits, new cache) with one. Logits of
      padding positions are meaningless.
    """
    return self.from_embeddings(
      self.embed_tokens(tokens_BT),
      positions_BT,
      cache,
      num_valid=num_valid,
      segment_ids_BT=segment_ids_BT,
    )

  def embed_tokens(self, tokens_BT):
    """[B, T, D] input embeddings: the rows of the embedding table, as a one-hot matmul.

    The same values as indexing the table (self.embed), but the gradient is a matmul: indexing's
    gradient is a scatter-add of every token into the table's few rows, which serialises on a
    GPU's atomics (44-91 % of a training step on an H200 with this 72-token vocabulary).
    With embed_scale (Gemma) the rows are multiplied by sqrt(d_model), rounded to `dtype`.
    """
    dtype = jnp.dtype(self.config.dtype)
    table_VD = self.embed.embedding[...].astype(dtype)
    one_hot_BTV = jax.nn.one_hot(tokens_BT, self.config.vocab_size, dtype=dtype)
    x_BTD = jnp.einsum(
      "BTV,VD->BTD",
      one_hot_BTV,
      table_VD,
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
    )
    x_BTD = x_BTD.astype(dtype)
    if self.config.embed_scale:
      x_BTD = x_BTD * jnp.asarray(self.config.d_model**0.5, dtype)
    return x_BTD


def segment_positions(segment_ids_BT):
  """int32 [B, T]: each token's position inside its segment (0 where a new segment starts).

  A segment is a run of equal ids along T (numpy or jax arrays).
  """
  seg_BT = jnp.asarray(segment_ids_BT)
  T = seg_BT.shape[-1]
  index_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), seg_BT.shape)
  starts_BT = jnp.concatenate(
    [jnp.ones_like(seg_BT[..., :1], bool), seg_BT[..., 1:] != seg_BT[..., :-1]], axis=-1
  )
  start_BT = jax.lax.cummax(jnp.where(starts_BT, index_BT, 0), axis=seg_BT.ndim - 1)
  return index_BT - start_BT


def config_of(graphdef, params) -> ModelConfig:
  """The ModelConfig of a model held as (graphdef, params), e.g. from train_lib.restore_params."""
  return nnx.merge(graphdef, params).config
