"""A small decoder-only Transformer (Flax NNX) with a sliding window per layer.

Token embedding -> L x [RMSNorm -> attention -> residual, RMSNorm -> MLP -> residual]
-> RMSNorm -> output head. Rotary position embeddings (RoPE) make attention depend
only on the distance between query and key, so a window means the same thing
anywhere in a stream. Parameters are float32; activations run in `dtype`.
"""

import dataclasses
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from swa import attention, sharding

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
  # Set by the trainer from config.mesh (train_lib.model_config), never by config files: a mesh
  # whose "seq" axis (> 1) splits the sequence; attention then exchanges halos between
  # neighbours (swa/sharding.py) and runs `chunked` locally (`reference` if model.attention says so).
  mesh: Optional[jax.sharding.Mesh] = None

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}.")
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(f"model.d_model ({self.d_model}) must split into {self.num_heads} heads "
                       "of an even size (RoPE rotates pairs of dimensions).")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads ({self.num_heads}) must be a multiple of "
                       f"model.num_kv_heads ({self.num_kv_heads}).")
    if self.attention not in attention.IMPLEMENTATIONS:
      raise ValueError(f"model.attention must be one of {attention.IMPLEMENTATIONS}, "
                       f"got {self.attention!r}.")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}.")
    if isinstance(self.window_size, list):  # Configs restored from JSON give lists; keep it hashable.
      object.__setattr__(self, "window_size", tuple(self.window_size))
    self.layer_windows  # Validates the window(s).

  @property
  def head_dim(self):
    return self.d_model // self.num_heads

  @property
  def layer_windows(self):
    """The window of each layer: a tuple of num_layers ints or Nones (full attention)."""
    return layer_windows(self.window_size, self.num_layers)


def layer_windows(window_size, num_layers):
  """Expands an int, None or a per-layer sequence into one window per layer.

  A string such as "128,128,none,128" is accepted too, so per-layer windows can be
  set from the command line.
  """
  if isinstance(window_size, str):
    try:
      window_size = tuple(None if w.strip().lower() in ("none", "full") else int(w)
                          for w in window_size.split(","))
    except ValueError:
      raise ValueError(f"model.window_size={window_size!r} is not a window: give an int, none "
                       "(full attention) or one value per layer, e.g. '128,128,none,128'.") from None
    if len(window_size) == 1:  # "none", "full" or "256": the same window for every layer.
      window_size = window_size[0]
  if window_size is None or not isinstance(window_size, (tuple, list)):
    windows = (window_size,) * num_layers
  else:
    windows = tuple(window_size)
    if len(windows) != num_layers:
      raise ValueError(f"model.window_size lists {len(windows)} windows for "
                       f"{num_layers} layers: {window_size!r}.")
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

  def __init__(self, config: ModelConfig, window_size: Window, *, rngs: nnx.Rngs):
    self.config, self.window_size = config, window_size
    c, dtype = config, jnp.dtype(config.dtype)
    dense = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, rngs=rngs)
    self.query = dense(c.d_model, c.num_heads * c.head_dim)
    self.key = dense(c.d_model, c.num_kv_heads * c.head_dim)
    self.value = dense(c.d_model, c.num_kv_heads * c.head_dim)
    self.out = dense(c.num_heads * c.head_dim, c.d_model)

  def project(self, x_BTD, positions_BT):
    """Queries, keys and values, with RoPE applied at the given absolute positions."""
    c = self.config
    B, T, _ = x_BTD.shape
    q_BTNH = self.query(x_BTD).reshape(B, T, c.num_heads, c.head_dim)
    k_BTKH = self.key(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    v_BTKH = self.value(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    return (apply_rope(q_BTNH, positions_BT, c.rope_base),
            apply_rope(k_BTKH, positions_BT, c.rope_base), v_BTKH)

  def __call__(self, x_BTD, positions_BT):
    q_BTNH, k_BTKH, v_BTKH = self.project(x_BTD, positions_BT)
    c = self.config
    blocks = dict(block_size=c.block_size, blocks_per_step=c.blocks_per_step)
    if sharding.is_sequence_parallel(c.mesh):
      local = "reference" if c.attention == "reference" else "chunked"
      out_BTNH = sharding.sequence_parallel_attention(
          q_BTNH, k_BTKH, v_BTKH, self.window_size, mesh=c.mesh, implementation=local, **blocks)
    else:
      out_BTNH = attention.sliding_window_attention(
          q_BTNH, k_BTKH, v_BTKH, self.window_size, implementation=c.attention, **blocks)
    return self.out(out_BTNH.reshape(*x_BTD.shape[:2], -1))


class Block(nnx.Module):
  """Pre-norm residual block: attention then a GELU MLP."""

  def __init__(self, config: ModelConfig, window_size: Window, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(config.dtype)
    self.attention_norm = nnx.RMSNorm(config.d_model, dtype=dtype, rngs=rngs)
    self.attention = Attention(config, window_size, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(config.d_model, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(config.d_model, config.mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(config.mlp_dim, config.d_model, dtype=dtype, rngs=rngs)

  def mlp(self, x_BTD):
    """The MLP branch (norm included); swa/cache.py reuses it around its cached attention."""
    return self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x_BTD))))

  def __call__(self, x_BTD, positions_BT):
    x_BTD = x_BTD + self.attention(self.attention_norm(x_BTD), positions_BT)
    return x_BTD + self.mlp(x_BTD)


class Transformer(nnx.Module):
  """Decoder-only language model; `window_size` per layer from the config."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype = jnp.dtype(config.dtype)
    self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([Block(config, w, rngs=rngs) for w in config.layer_windows])
    self.final_norm = nnx.RMSNorm(config.d_model, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False, dtype=dtype,
                           rngs=rngs)

  def from_embeddings(self, x_BTD, positions_BT=None):
    """Logits [B, T, V] (float32) from input embeddings [B, T, D]."""
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(x_BTD.shape[1]), x_BTD.shape[:2])
    for block in self.blocks:
      if self.config.remat:
        x_BTD = nnx.remat(lambda blk, x, p: blk(x, p))(block, x_BTD, positions_BT)
      else:
        x_BTD = block(x_BTD, positions_BT)
    return self.head(self.final_norm(x_BTD)).astype(jnp.float32)

  def __call__(self, tokens_BT, positions_BT=None):
    """Logits [B, T, V] (float32) for int tokens [B, T]."""
    return self.from_embeddings(self.embed(tokens_BT), positions_BT)


def config_of(graphdef, params) -> ModelConfig:
  """The ModelConfig of a model held as (graphdef, params), e.g. from train_lib.restore_params."""
  return nnx.merge(graphdef, params).config
