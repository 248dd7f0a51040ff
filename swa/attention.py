"""Sliding-window (local, banded) causal attention: the one contract every caller uses.

The window has one meaning everywhere in swa: with window size w, the query at position i attends
to keys i-w+1 ... i -- w keys, itself included. A window of None means full causal attention. The
rule, with sinks and empty slots, is `visible` (swa/mask.py); every implementation builds its mask
from it.

Positions. Query t sits at absolute position q_offset + t and key s at k_offset + s (by default
the keys end where the queries end, so S == T is self-attention), or at k_positions[s] when the
keys are slots of a cache (-1 = empty). Sequence parallelism (a shard's queries over a halo of
earlier keys), the streaming cache (ring-buffer slots with stored positions) and the benchmark's
float32 reference (the tail queries of a long sequence) are all calls of `sliding_window_attention`.

Shape letters: B batch, T query positions, S key positions, N query heads, K key/value heads
(N % K == 0; G = N // K query heads share one key/value head), H query/key head dim, D value head
dim.

Packed sequences. segment_ids [B, T] (and k_segment_ids [B, S], default segment_ids) give every
query and key a segment: a query sees only keys of its own segment, and the window still applies.
Supported by reference, chunked, pallas, splash, mosaic (explicit requests) and sequence_parallel;
not by cudnn, fa3 and their pairs (jax.nn.dot_product_attention takes sequence lengths, not
segment ids), which auto then passes over.

Implementations (one registry, swa/registry.py, re-exported here: `register` adds more,
`implementations()` lists them), all computing the same function (tests/test_attention.py):
  reference  dense masked attention; O(T * S) memory; the ground truth; every feature (the
             logit soft-cap too, which only it, chunked and mosaic have).
  chunked    banded form from jax.lax/jnp ops (swa/chunked.py); O(T * (w + C)) memory.
  cudnn      jax.nn.dot_product_attention's cuDNN kernel with a local window (swa/cudnn.py);
             GPU and 16-bit dtypes only; self-attention, and tail offsets (through
             `kernel_adapters.tail_aligned`).
  pallas     Pallas (Triton) kernels, forward and backward, visiting only the band's blocks
             (swa/pallas_attention.py, swa/pallas_kernels.py); self-attention, tail offsets and
             sinks (Python ints); interpret mode off GPU.
  fa3        FlashAttention-3 through the optional package flash-attn3-jax (`pip install
             swa[fa3]`; swa/fa3.py): Hopper GPUs, 16-bit dtypes, H == D == 128 (its wheels);
             self-attention, GQA, and tail offsets (through `kernel_adapters.tail_aligned`).
  mosaic     warp-specialised Hopper kernels in Pallas Mosaic GPU, forward and backward, visiting
             only the band's blocks (swa/mosaic_attention.py, swa/mosaic_*.py): 16-bit
             dtypes, H == D in (64, 128), GQA, self-attention, tail offsets, learned sinks,
             soft-cap, segment ids (auto: without the last three); interpret off GPU (JAX >= 0.11).
  cudnn_pallas  cuDNN where the call is not differentiated, the Pallas kernels (forward and
             backward) where it is (`kernel_adapters.forward_and_training`); where cudnn
             applies.
  cudnn_mosaic, fa3_mosaic  likewise cuDNN's or FlashAttention-3's forward, the mosaic kernels
             where the call is differentiated; where both of their kernels apply.
  splash     TPU splash attention with LocalMask((w - 1, 0)) & causal (swa/splash.py); self-
             attention, D == H; interpret mode off TPU.
  auto       the first, in `auto_rank` order, that supports the call's features and takes the
             inputs: splash on a TPU; on a Hopper GPU fa3_mosaic, fa3, mosaic, cudnn_mosaic (by
             mosaic_attention.AUTO_* and fa3.AUTO_MAX_WINDOW); on other GPUs pallas for
             w <= pallas_attention.AUTO_MAX_WINDOW, cudnn_pallas for w <= AUTO_TRAIN_MAX_WINDOW
             (where bench_attention.py found them faster); else cudnn where it applies;
             elsewhere (CPU, 32-bit inputs, offsets) chunked when w < S, else reference.
swa/sharding.py registers "sequence_parallel" (options mesh, seq_axis, data_axis,
local_implementation) when imported.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from swa import chunked, cudnn, fa3, mosaic_attention, pallas_attention, splash
from swa.attention_inputs import check_position as _check_position
from swa.attention_inputs import check_segment_ids as _check_segment_ids
from swa.attention_inputs import check_shapes as _check_shapes
from swa.chunked import default_block_size  # noqa: F401  (public: the chunked block rule)
from swa.cudnn import cudnn_available  # noqa: F401  (public: is there a GPU for cudnn)
from swa.kernel_adapters import forward_and_training, static_int, tail_aligned
from swa.mask import check_window_size, masked_softmax, visible
from swa.registry import (  # noqa: F401  (public: the registry is part of this module's contract)
  SEMANTIC_FEATURES,
  Implementation,
  implementation_features,
  implementations,
  lookup,
  register,
  resolve_implementation,
  unregister,
)

# Windows this long or longer are full causal attention (int32 positions: q_pos - w can't overflow).
FULL_WINDOW = 2**30


def create_sliding_window_mask(seq_len, window_size):
  """Band-diagonal causal mask: `visible` for positions 0 .. seq_len - 1.

  Args:
    seq_len: number of positions T.
    window_size: w, or None for full causal attention.

  Returns:
    bool [T, T], True where query i may attend key j, i.e. i - w < j <= i.
    For seq_len=6, window_size=3 the rows are 100000, 110000, 111000, 011100,
    001110, 000111.
  """
  check_window_size(window_size)
  if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")
  positions = jnp.arange(seq_len)
  return visible(positions[:, None], positions[None, :], window_size)


def softcap(logits, cap):
  """cap * tanh(logits / cap): logits squashed smoothly into (-cap, cap) (Gemma 2)."""
  return cap * jnp.tanh(logits / cap)


def reference_attention(
  q_BTNH,
  k_BSKH,
  v_BSKD,
  window_size,
  scale,
  *,
  q_offset=0,
  k_offset=None,
  k_positions=None,
  num_sinks=0,
  sink_logits=None,
  logit_softcap=None,
  segment_ids=None,
  k_segment_ids=None,
):
  """Dense masked attention: builds the full [T, S] score matrix (every feature)."""
  B, T, N, H = q_BTNH.shape
  S, K, D = k_BSKH.shape[1], k_BSKH.shape[2], v_BSKD.shape[3]
  q_pos_T = q_offset + jnp.arange(T)
  if k_positions is None:
    k_offset = q_offset + T - S if k_offset is None else k_offset
    mask_BTS = visible(
      q_pos_T[:, None], (k_offset + jnp.arange(S))[None, :], window_size, num_sinks
    )
  else:
    k_pos_BS = jnp.asarray(k_positions).reshape(-1, S)
    mask_BTS = visible(q_pos_T[None, :, None], k_pos_BS[:, None, :], window_size, num_sinks)
  if segment_ids is not None:  # packed sequences: only the query's own segment
    mask_BTS = mask_BTS & (segment_ids[:, :, None] == k_segment_ids[:, None, :])
  mask_BKGTS = mask_BTS[:, None, None] if mask_BTS.ndim == 3 else mask_BTS
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  logits_BKGTS = (
    jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32) * scale
  )
  if logit_softcap is not None:
    logits_BKGTS = softcap(logits_BKGTS, logit_softcap)
  sink_1KG11 = None if sink_logits is None else sink_logits.reshape(1, K, N // K, 1, 1)
  probs_BKGTS = masked_softmax(logits_BKGTS, mask_BKGTS, sink_1KG11)
  out_BTKGD = jnp.einsum(
    "BKGTS,BSKD->BTKGD",
    probs_BKGTS.astype(v_BSKD.dtype),
    v_BSKD,
    preferred_element_type=jnp.float32,
  )
  return out_BTKGD.reshape(B, T, N, D).astype(q_BTNH.dtype)


register("reference", reference_attention, features=SEMANTIC_FEATURES, auto_rank=30)
register(
  "chunked",
  chunked.chunked_attention,
  features=("offsets", "sink_logits", "logit_softcap", "segment_ids", "block_size"),
  auto_rank=20,
  auto_when=lambda q, k, v, w: w is not None and w < k.shape[1],
)
register(
  "cudnn",
  tail_aligned(cudnn.cudnn_attention, even_length=True),
  features=("tail_offsets",),
  check=cudnn.unsupported_reason,
  auto_rank=10,
)
# Kernels (swa/pallas_attention.py, swa/splash.py): explicit requests run anywhere (interpret mode
# off their device); auto picks splash on a TPU, pallas on a GPU where the benchmark showed it faster.
register(
  "pallas",
  tail_aligned(pallas_attention.pallas_attention),
  features=("tail_offsets", "sinks", "sink_logits", "segment_ids", "block_sizes", "interpret"),
  auto_rank=5,
  auto_when=pallas_attention.auto_when,
)


def _register_pair(name, forward_fn, training_fn, checks, *, even_length=False, **auto):
  """Registers forward_and_training(forward_fn, training_fn) with tail offsets, checked by the
  first reason any of `checks` gives; `auto`: auto_rank, auto_when."""

  def check(*args):
    return next((reason for reason in (c(*args) for c in checks) if reason), None)

  fn = tail_aligned(forward_and_training(forward_fn, training_fn), even_length=even_length)
  register(name, fn, features=("tail_offsets",), check=check, **auto)


# cuDNN's forward and the Pallas kernels' fwd+bwd, each where it is faster: auto takes it for
# training-sized calls at small windows (pallas_attention.AUTO_TRAIN_MAX_WINDOW).
_register_pair(
  "cudnn_pallas",
  cudnn.cudnn_attention,
  pallas_attention.pallas_attention,
  [cudnn.unsupported_reason],
  even_length=True,
  auto_rank=7,
  auto_when=pallas_attention.auto_train_when,
)
# FlashAttention-3 (optional package): ahead of the Pallas and cuDNN rows on a Hopper GPU where it
# applies (fa3.AUTO_MAX_WINDOW says why); without the package its check fails: auto is as before.
register(
  "fa3",
  tail_aligned(fa3.fa3_attention),
  features=("tail_offsets",),
  check=fa3.unsupported_reason,
  auto_rank=3,
  auto_when=fa3.auto_when,
)


# The Mosaic GPU kernels: explicitly anywhere (interpret mode off a GPU); by auto on Hopper, alone
# or behind FA3's or cuDNN's forward, where mosaic_attention's AUTO_* rules say (AUTO_FEATURES too).
register(
  "mosaic",
  tail_aligned(mosaic_attention.mosaic_attention),
  features=mosaic_attention.FEATURES,
  check=mosaic_attention.unsupported_reason,
  auto_rank=4,
  auto_when=mosaic_attention.auto_when,
  auto_features=mosaic_attention.AUTO_FEATURES,
)
_register_pair(
  "fa3_mosaic",
  fa3.fa3_attention,
  mosaic_attention.mosaic_attention,
  [fa3.unsupported_reason, mosaic_attention.unsupported_reason],
  auto_rank=2,
  auto_when=mosaic_attention.auto_train_over_fa3_when,
)
_register_pair(
  "cudnn_mosaic",
  cudnn.cudnn_attention,
  mosaic_attention.mosaic_attention,
  [cudnn.unsupported_reason, mosaic_attention.unsupported_reason],
  even_length=True,
  auto_rank=6,
  auto_when=mosaic_attention.auto_train_when,
)
register(
  "splash",
  splash.splash_attention,
  features=("segment_ids", "interpret"),
  check=splash.unsupported_reason,
  auto_rank=0,
  auto_when=lambda q, k, v, w: jax.default_backend() == "tpu",
)


# ------------------------------------------------------------------------------- contract


def sliding_window_attention(
  q,
  k,
  v,
  window_size=128,
  *,
  implementation="auto",
  scale=None,
  q_offset=None,
  k_offset=None,
  k_positions=None,
  num_sinks=0,
  sink_logits=None,
  logit_softcap=None,
  segment_ids=None,
  k_segment_ids=None,
  block_size=None,
  blocks_per_step=None,
  **options,
):
  """Causal attention in which the query at position i attends keys i - window_size + 1 ... i.

  Args:
    q: [B, T, N, H] or [B, T, H] queries.
    k: [B, S, K, H] or [B, S, H] keys; N must be a multiple of K (GQA/MQA).
    v: [B, S, K, D] or [B, S, D] values; D may differ from H.
    window_size: w >= 1 (1 = each token sees only itself), or None for full
      causal attention (a Python or NumPy int). Windows >= T are full causal attention.
    implementation: a name from `implementations()` (module docstring).
    scale: logit scale; default 1 / sqrt(H).
    q_offset: absolute position of query 0 (int, may be traced); default 0.
    k_offset: absolute position of key 0 (int, may be traced); default: the keys end where the
      queries end (q_offset + T - S), i.e. self-attention when S == T. Keys at negative
      positions are padding.
    k_positions: [S] or [B, S] ints, the absolute position of every key (-1 = empty slot);
      instead of k_offset.
    num_sinks: positions 0 .. num_sinks - 1 stay visible to every later query (int, may be
      traced).
    sink_logits: learned sinks (gpt-oss), float [N]: one logit per query head added to the
      softmax denominator (exp(sink - max)); the sink has no value, it only absorbs probability.
      Differentiable (gradients flow to sink_logits).
    logit_softcap: a number > 0, or None: the scaled logits s become cap * tanh(s / cap)
      before the mask and softmax (Gemma 2's attn_logit_softcapping); reference and chunked.
    segment_ids: int [B, T], the queries' segments (packed sequences): a query sees only the
      keys of its own segment, inside its window. Sinks are keys like others: seen only from
      their own segment.
    k_segment_ids: int [B, S], the keys' segments; default segment_ids (needed when S != T).
    block_size: query block C of implementations with "block_size" (chunked); default theirs.
    blocks_per_step: if set, such implementations process this many query blocks at a time in a
      loop and recompute them in the backward pass (bounded memory for long sequences).
    **options: further keyword options of the chosen implementation (e.g. mesh=).

  Returns:
    [B, T, N, D] (or [B, T, D] for 3-D inputs) in q's dtype.

  Raises:
    ValueError (one line, naming the value): non-floating inputs (int, bool, complex), an axis of
    size 0, mismatched shapes, a bad window, offset or option.
  """
  window_size = check_window_size(window_size)
  if window_size is not None and window_size >= FULL_WINDOW:
    window_size = None  # covers every int32 position: full attention, without int32 overflow
  block_size = None if block_size is None else check_window_size(block_size, "block_size")
  if blocks_per_step is not None:
    blocks_per_step = check_window_size(blocks_per_step, "blocks_per_step")
  for name, value in (("q_offset", q_offset), ("k_offset", k_offset), ("num_sinks", num_sinks)):
    _check_position(value, name)
  if static_int(num_sinks) and num_sinks < 0:
    raise ValueError(f"num_sinks must be >= 0, got {num_sinks}.")
  num_sinks = int(num_sinks) if static_int(num_sinks) else num_sinks
  q_offset = int(q_offset) if static_int(q_offset) else q_offset
  k_offset = int(k_offset) if static_int(k_offset) else k_offset
  if k_offset is not None and k_positions is not None:
    raise ValueError("Pass k_offset or k_positions, not both.")
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  squeeze = q.ndim == 3
  placed = q_offset is not None or k_offset is not None or k_positions is not None
  q_BTNH, k_BSKH, v_BSKD = _check_shapes(q, k, v, same_length=not placed)
  B, T, S = q_BTNH.shape[0], q_BTNH.shape[1], k_BSKH.shape[1]
  scale = 1.0 / math.sqrt(q_BTNH.shape[-1]) if scale is None else scale

  features, semantic = set(options), {}
  if k_positions is not None:
    k_positions = jnp.asarray(k_positions)
    if k_positions.shape not in ((S,), (B, S)) or not jnp.issubdtype(
      k_positions.dtype, jnp.integer
    ):
      raise ValueError(
        f"k_positions must be ints of shape [S] = ({S},) or [B, S] = ({B}, {S}), "
        f"got {k_positions.dtype} {k_positions.shape}."
      )
    features.add("key_positions")
    semantic.update(q_offset=0 if q_offset is None else q_offset, k_positions=k_positions)
  if sink_logits is not None:
    sink_logits = jnp.asarray(sink_logits)
    N = q_BTNH.shape[2]
    if sink_logits.shape != (N,) or not jnp.issubdtype(sink_logits.dtype, jnp.floating):
      raise ValueError(
        f"sink_logits must be floats of shape [N] = ({N},) (one per query head), got "
        f"{sink_logits.dtype} {sink_logits.shape}."
      )
    features.add("sink_logits")
    semantic.update(sink_logits=sink_logits.astype(jnp.float32))
  if logit_softcap is not None:
    if (
      isinstance(logit_softcap, bool)
      or not isinstance(logit_softcap, (int, float, np.integer, np.floating))
      or not 0 < logit_softcap < math.inf
    ):
      raise ValueError(f"logit_softcap must be a number > 0 or None, got {logit_softcap!r}.")
    features.add("logit_softcap")
    semantic.update(logit_softcap=float(logit_softcap))
  segment_ids, k_segment_ids = _check_segment_ids(segment_ids, k_segment_ids, B, T, S)
  if segment_ids is not None:
    features.add("segment_ids")
    semantic.update(segment_ids=segment_ids, k_segment_ids=k_segment_ids)
  sinks = window_size is not None and not (static_int(num_sinks) and num_sinks == 0)
  if sinks:
    features.add("sinks")
    semantic.update(num_sinks=num_sinks)
  if placed and k_positions is None:
    q0 = 0 if q_offset is None else q_offset
    # Positions matter only where the keys are shifted, may be padding, or meet absolute sinks.
    plain = (
      S == T
      and static_int(q0)
      and (q0 == 0 if sinks else q0 >= 0)
      and (k_offset is None or (static_int(k_offset) and k_offset == q0))
    )
    if not plain:
      features.add("tail_offsets" if k_offset is None and S >= T else "offsets")
      semantic.update(q_offset=q0, k_offset=k_offset)

  name = resolve_implementation(implementation, q_BTNH, k_BSKH, v_BSKD, window_size, features)
  impl = lookup(name)
  if "block_size" in impl.features:
    options.update(block_size=block_size, blocks_per_step=blocks_per_step)
  out_BTND = impl.fn(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **semantic, **options)
  return out_BTND[:, :, 0] if squeeze else out_BTND
