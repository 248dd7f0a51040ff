"""The architecture of swa's decoder (swa/model.py builds it): ModelConfig and its windows.

`ModelConfig` is a frozen dataclass, one field per `model.*` entry of configs/base.py (which says
what each means), checked on construction with one-line errors; its properties give each layer's
window and RoPE base (RoPE, or none: NoPE), the receptive reach sum_l (w_l - 1) and the window label used in tables.
`layer_windows` expands an int, None or a per-layer list (also "128,128,none,128" from the command
line); `window_name` names one window. No JAX arrays here: only the attention registry's names.
"""

import dataclasses
from typing import Optional, Sequence, Union

from swa import attention

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
  rope_base: Union[float, Sequence[float]] = 10_000.0  # one base, or one per layer
  position_encoding: str = "rope"  # "rope" | "none" (NoPE: causal attention alone)
  rope_scale: float = 1.0  # position interpolation: RoPE angles use position / rope_scale
  remat: bool = False
  num_sinks: int = 0
  # Architecture options for other families (configs/base.py documents each; off by default).
  mlp: str = "gelu"
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  attention_head_dim: Optional[int] = None
  qkv_bias: bool = False
  tie_embeddings: bool = False
  embed_scale: bool = False
  post_norms: bool = False
  attention_scale: Optional[float] = None
  attention_softcap: Optional[float] = None
  final_softcap: Optional[float] = None
  learned_sinks: bool = False
  qk_norm: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}.")
    if (
      isinstance(self.num_sinks, bool) or not isinstance(self.num_sinks, int) or self.num_sinks < 0
    ):
      raise ValueError(f"model.num_sinks must be an integer >= 0, got {self.num_sinks!r}.")
    # Configs restored from JSON give lists; keep the window and RoPE bases hashable.
    for name in ("window_size", "rope_base"):
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    self.layer_rope_bases  # Validates the RoPE base(s).
    if self.position_encoding not in POSITION_ENCODINGS:
      raise ValueError(
        f"model.position_encoding must be one of {POSITION_ENCODINGS}, "
        f"got {self.position_encoding!r}."
      )
    if not _positive_number(self.rope_scale) or self.rope_scale < 1:
      raise ValueError(f"model.rope_scale must be a number >= 1, got {self.rope_scale!r}.")
    if self.position_encoding == "none" and self.rope_scale != 1:
      raise ValueError(
        f"model.rope_scale={self.rope_scale!r} needs model.position_encoding='rope' "
        "(NoPE has no RoPE angles to scale)."
      )
    if self.mlp not in MLP_KINDS:
      raise ValueError(f"model.mlp must be one of {MLP_KINDS}, got {self.mlp!r}.")
    for name in ("norm_eps", "attention_scale", "attention_softcap", "final_softcap"):
      value = getattr(self, name)
      if (value is not None or name == "norm_eps") and not _positive_number(value):
        allowed = "a number > 0" + ("" if name == "norm_eps" else " or None")
        raise ValueError(f"model.{name} must be {allowed}, got {value!r}.")
    for name in (
      "norm_plus_one",
      "qkv_bias",
      "tie_embeddings",
      "embed_scale",
      "post_norms",
      "learned_sinks",
      "qk_norm",
    ):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"model.{name} must be true or false, got {getattr(self, name)!r}.")
    if self.attention_head_dim is not None and (
      isinstance(self.attention_head_dim, bool)
      or not isinstance(self.attention_head_dim, int)
      or self.attention_head_dim < 2
      or self.attention_head_dim % 2
    ):
      raise ValueError(
        "model.attention_head_dim must be an even integer >= 2 (RoPE rotates pairs) or None, "
        f"got {self.attention_head_dim!r}."
      )
    for name in ("block_size", "blocks_per_step"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"model.{name} must be a positive integer or None, got {value!r}.")
    if self.vocab_size < 2:
      raise ValueError(
        f"model.vocab_size must be >= 2 (a model predicts among tokens), got {self.vocab_size}."
      )
    if self.attention_head_dim is None and (
      self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2
    ):
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
    for option, feature in (
      ("attention_softcap", "logit_softcap"),
      ("learned_sinks", "sink_logits"),
    ):
      if (
        getattr(self, option) not in (None, False)
        and self.attention != "auto"
        and feature not in attention.implementation_features(self.attention)
      ):
        raise ValueError(
          f"model.attention={self.attention!r} does not support {feature} (model.{option}); "
          "use auto or one that does."
        )
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}.")
    self.layer_windows  # Validates the window(s).

  @property
  def head_dim(self):
    """Query/key/value head dim: attention_head_dim, or d_model // num_heads."""
    return self.attention_head_dim or self.d_model // self.num_heads

  @property
  def layer_rope_bases(self):
    """The RoPE base of each layer: a tuple of num_layers numbers > 1."""
    bases = self.rope_base
    if isinstance(bases, (tuple, list)):
      if len(bases) != self.num_layers:
        raise ValueError(
          f"model.rope_base lists {len(bases)} bases for {self.num_layers} layers: {bases!r}."
        )
    else:
      bases = (bases,) * self.num_layers
    for base in bases:
      # base^(-2i/H) must fall with i; NaN fails here too.
      if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ValueError(f"model.rope_base must be a number > 1, got {self.rope_base!r}.")
    return tuple(bases)

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


MLP_KINDS = ("gelu", "swiglu", "geglu")
POSITION_ENCODINGS = ("rope", "none")


def _positive_number(value):
  return (
    not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < float("inf")
  )


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
