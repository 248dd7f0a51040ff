"""A small decoder-only Transformer (Flax NNX) with a sliding window per layer.

Token embedding -> L x [RMSNorm -> attention -> residual, RMSNorm -> MLP -> residual]
-> RMSNorm -> output head. Rotary position embeddings (RoPE) make attention depend
only on the distance between query and key, so a window means the same thing
anywhere in a stream. Parameters are float32; activations run in `dtype`.

One forward serves training, evaluation and streaming: `Transformer(tokens)` gives logits, and
`Transformer(tokens, cache=cache)` (gemma style) continues a stream held in an explicit KV cache
(swa/cache.py), returning the logits and the new cache; swa/streaming.py builds prefill, decoding
and generation on it.
"""

import dataclasses
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from swa import attention
from swa import cache as cache_lib

Window = Optional[int]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture. See configs/base.py for what each field means."""

  vocab_size: int
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 8
  num_kv_heads: int = 8
  mlp_dim: int = 1024
  window_size: Union[Window, Sequence[Window]] = 128
  attention: str = "auto"
  block_size: Optional[int] = None
  blocks_per_step: Optional[int] = None
  dtype: str = "float32"
  rope_base: float = 10_000.0
  remat: bool = False
  num_sinks: int = 0

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}.")
    if (
      isinstance(self.num_sinks, bool) or not isinstance(self.num_sinks, int) or self.num_sinks < 0
    ):
      raise ValueError(f"model.num_sinks must be an integer >= 0, got {self.num_sinks!r}.")
    if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)):
      raise ValueError(f"model.rope_base must be a number > 1, got {self.rope_base!r}.")
    if not self.rope_base > 1:  # base^(-2i/H) must fall with i; NaN fails here too.
      raise ValueError(f"model.rope_base must be a number > 1, got {self.rope_base!r}.")
    for name in ("block_size", "blocks_per_step"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"model.{name} must be a positive integer or None, got {value!r}.")
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(
        f"model.d_model ({self.d_model}) must split into {self.num_heads} heads "
        "of an even size (RoPE rotates pairs of dimensions)."
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"model.num_heads ({self.num_heads}) must be a multiple of "
        f"model.num_kv_heads ({self.num_kv_heads})."
      )
    if self.attention not in attention.implementations():
      raise ValueError(
        f"model.attention must be one of {attention.implementations()}, got {self.attention!r}."
      )
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}.")
    # Configs restored from JSON give lists; keep the window hashable.
    if isinstance(self.window_size, list):
      object.__setattr__(self, "window_size", tuple(self.window_size))
    self.layer_windows  # Validates the window(s).

  @property
  def head_dim(self):
    return self.d_model // self.num_heads

  @property
  def layer_windows(self):
    """The window of each layer: a tuple of num_layers ints or Nones (full attention)."""
    return layer_windows(self.window_size, self.num_layers)

  @property
  def reach(self):
    """Largest distance information can travel, sum_l (w_l - 1); None if a layer is full.

    Through L layers of window w a position is influenced only by the L * (w - 1) positions
    before it, so a passkey at distance d can be retrieved only if d <= reach; the theoretical
    receptive field is reach + 1 positions.
    """
    windows = self.layer_windows
    return None if None in windows else sum(w - 1 for w in windows)

  @property
  def window_label(self) -> str:
    """ "128" when every layer has window 128, "full" for full attention, else "8,32,32,32"."""
    names = [window_name(w) for w in self.layer_windows]
    return names[0] if len(set(names)) == 1 else ",".join(names)

  @classmethod
  def from_config(cls, config):
    """The architecture from the `model` section of an experiment config (configs/base.py)."""
    return cls(**config.model.to_dict())


def window_name(w) -> str:
  """ "full" for None, else str(w)."""
  return "full" if w is None else str(w)


def layer_windows(window_size, num_layers):
  """Expands an int, None or a per-layer sequence into one window per layer.

  A string such as "128,128,none,128" is accepted too, so per-layer windows can be
  set from the command line.
  """
  if isinstance(window_size, str):
    try:
      window_size = tuple(
        None if w.strip().lower() in ("none", "full") else int(w) for w in window_size.split(",")
      )
    except ValueError:
      raise ValueError(
        f"model.window_size={window_size!r} is not a window: give an int, none "
        "(full attention) or one value per layer, e.g. '128,128,none,128'."
      ) from None
    if len(window_size) == 1:  # "none", "full" or "256": the same window for every layer.
      window_size = window_size[0]
  if window_size is None or not isinstance(window_size, (tuple, list)):
    windows = (window_size,) * num_layers
  else:
    windows = tuple(window_size)
    if len(windows) != num_layers:
      raise ValueError(
        f"model.window_size lists {len(windows)} windows for {num_layers} layers: {window_size!r}."
      )
  for w in windows:
    attention.check_window_size(w, name="model.window_size")
  return windows


def apply_rope(x_BTNH, positions_BT, base):
  """Rotates pairs (x[..., :H/2], x[..., H/2:]) by angles positions * base^(-2i/H)."""
  half = x_BTNH.shape[-1] // 2
  inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq_F
  sin_BT1F, cos_BT1F = jnp.sin(angles_BTF)[:, :, None], jnp.cos(angles_BTF)[:, :, None]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F], -1)
  return rotated.astype(x_BTNH.dtype)


class Attention(nnx.Module):
  """Multi-head (GQA) self-attention over a sliding window, with RoPE."""

  def __init__(
    self, config: ModelConfig, window_size: Window, *, rngs: nnx.Rngs, attention_fn=None
  ):
    # attention_fn: see Transformer; None = the registry's config.attention.
    self.config, self.window_size, self.attention_fn = config, window_size, attention_fn
    c, dtype = config, jnp.dtype(config.dtype)
    dense = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, rngs=rngs)
    self.query = dense(c.d_model, c.num_heads * c.head_dim)
    self.key = dense(c.d_model, c.num_kv_heads * c.head_dim)
    self.value = dense(c.d_model, c.num_kv_heads * c.head_dim)
    self.out = dense(c.num_heads * c.head_dim, c.d_model)

  def __call__(self, x_BTD, positions_BT, cache=None, num_valid=None):
    """Attention over x's own tokens, or over a cache and a chunk that continues its stream.

    Args:
      x_BTD: [B, T, D] normed inputs.
      positions_BT: int [B, T] absolute positions (RoPE phase).
      cache: None, or this layer's cache (swa/cache.py); the chunk then sits at positions
        cache["end"] .. cache["end"] + T - 1 (positions_BT must say the same).
      num_valid: with a cache, how many leading tokens of the chunk are real (int32 []); the
        rest is padding, never stored.

    Returns:
      (out [B, T, D], the layer's new cache, or None without a cache).
    """
    c = self.config
    B, T, _ = x_BTD.shape
    q_BTNH = self.query(x_BTD).reshape(B, T, c.num_heads, c.head_dim)
    k_BTKH = self.key(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    v_BTKH = self.value(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    q_BTNH = apply_rope(q_BTNH, positions_BT, c.rope_base)
    k_BTKH = apply_rope(k_BTKH, positions_BT, c.rope_base)
    if cache is None:
      out_BTNH, new_cache = self._attend(q_BTNH, k_BTKH, v_BTKH), None
    else:
      out_BTNH, new_cache = self._attend_cached(q_BTNH, k_BTKH, v_BTKH, cache, num_valid)
    return self.out(out_BTNH.reshape(B, T, -1)), new_cache

  def _attend(self, q_BTNH, k_BTKH, v_BTKH):
    """Self-attention of one whole sequence (training, teacher-forced evaluation)."""
    c = self.config
    blocks = dict(block_size=c.block_size, blocks_per_step=c.blocks_per_step)
    if c.num_sinks:
      blocks["num_sinks"] = c.num_sinks
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
    )
    return out_BTNH, new_layer


class Block(nnx.Module):
  """Pre-norm residual block: attention then a GELU MLP."""

  def __init__(
    self, config: ModelConfig, window_size: Window, *, rngs: nnx.Rngs, attention_fn=None
  ):
    dtype = jnp.dtype(config.dtype)
    self.attention_norm = nnx.RMSNorm(config.d_model, dtype=dtype, rngs=rngs)
    self.attention = Attention(config, window_size, rngs=rngs, attention_fn=attention_fn)
    self.mlp_norm = nnx.RMSNorm(config.d_model, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(config.d_model, config.mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(config.mlp_dim, config.d_model, dtype=dtype, rngs=rngs)

  def __call__(self, x_BTD, positions_BT, cache=None, num_valid=None):
    """Returns (x [B, T, D], the layer's new cache or None); arguments as in Attention."""
    attended_BTD, cache = self.attention(self.attention_norm(x_BTD), positions_BT, cache, num_valid)
    x_BTD = x_BTD + attended_BTD
    return x_BTD + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x_BTD)))), cache


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
      [Block(config, w, rngs=rngs, attention_fn=attention_fn) for w in config.layer_windows]
    )
    self.final_norm = nnx.RMSNorm(config.d_model, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(
      config.d_model, config.vocab_size, use_bias=False, dtype=dtype, rngs=rngs
    )

  def from_embeddings(self, x_BTD, positions_BT=None, cache=None, *, num_valid=None):
    """The forward from input embeddings [B, T, D]; arguments and results as in __call__."""
    B, T, _ = x_BTD.shape
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
        x_BTD = nnx.remat(lambda blk, x, p: blk(x, p)[0])(block, x_BTD, positions_BT)
      else:
        x_BTD, layer = block(x_BTD, positions_BT, None if cache is None else cache[i], num_valid)
        new_cache.append(layer)
    logits_BTV = self.head(self.final_norm(x_BTD)).astype(jnp.float32)
    return logits_BTV if cache is None else (logits_BTV, new_cache)

  def __call__(self, tokens_BT, positions_BT=None, cache=None, *, num_valid=None):
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

    Returns:
      logits [B, T, V] float32 without a cache; (logits, new cache) with one. Logits of
      padding positions are meaningless.
    """
    return self.from_embeddings(
      self.embed_tokens(tokens_BT), positions_BT, cache, num_valid=num_valid
    )

  def embed_tokens(self, tokens_BT):
    """[B, T, D] input embeddings: the rows of the embedding table, as a one-hot matmul.

    The same values as indexing the table (self.embed), but the gradient is a matmul: indexing's
    gradient is a scatter-add of every token into the table's few rows, which serialises on a
    GPU's atomics (44-91 % of a training step on an H200 with this 72-token vocabulary).
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
    return x_BTD.astype(dtype)


def config_of(graphdef, params) -> ModelConfig:
  """The ModelConfig of a model held as (graphdef, params), e.g. from train_lib.restore_params."""
  return nnx.merge(graphdef, params).config
