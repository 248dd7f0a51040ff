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

Implementations (one registry; `register` adds more, `implementations()` lists them), all computing
the same function (tests/test_attention.py):
  reference  dense masked attention; O(T * S) memory; the ground truth; every feature.
  chunked    banded form from jax.lax/jnp ops (swa/chunked.py); O(T * (w + C)) memory.
  cudnn      jax.nn.dot_product_attention's cuDNN kernel with a local window (swa/cudnn.py);
             GPU and 16-bit dtypes only; self-attention, and tail offsets (`tail_aligned`).
  pallas     Pallas (Triton) kernels, forward and backward, visiting only the band's blocks
             (swa/pallas_attention.py); self-attention, tail offsets and sinks (Python ints);
             interpret mode off GPU.
  cudnn_pallas  cuDNN where the call is not differentiated, the Pallas kernels (forward and
             backward) where it is (`forward_and_training`); where cudnn applies.
  splash     TPU splash attention with LocalMask((w - 1, 0)) & causal (swa/splash.py); self-
             attention, D == H; interpret mode off TPU.
  auto       the first, in `auto_rank` order, that supports the call's features and takes the
             inputs: splash on a TPU; on a GPU pallas for w <= pallas_attention.AUTO_MAX_WINDOW
             (where bench_attention.py's run found its forward and fwd+bwd faster than cuDNN's),
             cudnn_pallas for w <= AUTO_TRAIN_MAX_WINDOW (its fwd+bwd faster), else cudnn
             where it applies; elsewhere (CPU, 32-bit inputs, offsets) chunked when the window is
             shorter than the keys, else reference.
swa/sharding.py registers "sequence_parallel" (options mesh, seq_axis, data_axis,
local_implementation) when imported.
"""

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from swa import chunked, cudnn, pallas_attention, splash
from swa.chunked import default_block_size  # noqa: F401  (public: the chunked block rule)
from swa.cudnn import cudnn_available  # noqa: F401  (public: is there a GPU for cudnn)
from swa.mask import check_window_size, masked_softmax, visible

IMPLEMENTATIONS = ("auto", "reference", "chunked", "cudnn")  # built in; see implementations()

# Features an implementation may declare, and the keyword options it then receives:
#   offsets        q_offset, k_offset (k_offset None: the keys end where the queries end)
#   tail_offsets   q_offset (may be traced), k_offset None, S >= T: the queries are the last T of
#                  the key positions, as for a sequence shard over its halo. Implied by "offsets";
#                  self-attention kernels get it from `tail_aligned` (cudnn, pallas).
#   key_positions  q_offset, k_positions ([S] or [B, S] ints, -1 = empty slot)
#   sinks          num_sinks
#   block_size     block_size, blocks_per_step (tuning hints; dropped for those without it)
# Any other declared name is a keyword option of that name, passed through **options. A call that
# needs no placement (S == T, keys at the queries' positions >= 0) sends no offsets: an
# implementation then computes plain self-attention from position 0.
SEMANTIC_FEATURES = ("offsets", "tail_offsets", "key_positions", "sinks")


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
):
  """Dense masked attention: builds the full [T, S] score matrix (every feature)."""
  B, T, N, H = q_BTNH.shape
  S, K, D = k_BSKH.shape[1], k_BSKH.shape[2], v_BSKD.shape[3]
  q_pos_T = q_offset + jnp.arange(T)
  if k_positions is None:
    k_offset = q_offset + T - S if k_offset is None else k_offset
    mask_TS = visible(q_pos_T[:, None], (k_offset + jnp.arange(S))[None, :], window_size, num_sinks)
    mask_BKGTS = mask_TS
  else:
    k_pos_BS = jnp.asarray(k_positions).reshape(-1, S)
    mask_BTS = visible(q_pos_T[None, :, None], k_pos_BS[:, None, :], window_size, num_sinks)
    mask_BKGTS = mask_BTS[:, None, None]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  logits_BKGTS = (
    jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32) * scale
  )
  probs_BKGTS = masked_softmax(logits_BKGTS, mask_BKGTS)
  out_BTKGD = jnp.einsum(
    "BKGTS,BSKD->BTKGD",
    probs_BKGTS.astype(v_BSKD.dtype),
    v_BSKD,
    preferred_element_type=jnp.float32,
  )
  return out_BTKGD.reshape(B, T, N, D).astype(q_BTNH.dtype)


# ------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One registered implementation (see `register`)."""

  name: str
  fn: Callable
  features: frozenset
  check: Optional[Callable] = None
  auto_rank: Optional[int] = None
  auto_when: Optional[Callable] = None


_REGISTRY = {}


def register(name, fn, *, features=(), check=None, auto_rank=None, auto_when=None):
  """Adds (or replaces) an implementation under `name`.

  Args:
    name: the `implementation=` string; not "auto".
    fn: `fn(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options) -> o_BTND` in q's dtype,
      called with validated 4-D inputs and only the options of the features it declared.
    features: names it supports: "offsets", "key_positions", "sinks", "block_size" (see the
      comment at SEMANTIC_FEATURES for the options each brings), or the name of any other keyword
      option it takes (e.g. "mesh").
    check: optional `check(q_BTNH, k_BSKH, v_BSKD, window_size) -> str | None`: why it cannot run
      these inputs (None: it can). An explicit request then raises; auto skips it.
    auto_rank: its place in auto's order (lower first); None: auto never picks it.
    auto_when: optional `auto_when(q_BTNH, k_BSKH, v_BSKD, window_size) -> bool`: auto picks it
      only when True (a preference, not a limit).
  """
  if name == "auto" or not isinstance(name, str):
    raise ValueError(f"An implementation needs a name other than 'auto', got {name!r}.")
  features = frozenset(features) | ({"tail_offsets"} if "offsets" in features else set())
  _REGISTRY[name] = Implementation(name, fn, features, check, auto_rank, auto_when)


def tail_aligned(fn, *, even_length=False):
  """Extends a self-attention-only `fn` to the feature "tail_offsets" (and to odd lengths).

  The T queries are the last T of the S key positions, query 0 at q_offset (traced or not). The
  queries are front-padded with zeros to S slots (one slot more on all three arrays for an odd S
  when even_length, as cuDNN's backward needs), then all three are rolled left by the number of
  slots that hold no real key (that extra slot, and keys at negative positions), so that the first
  real key sits in slot 0. Causal windowed self-attention over the slots is then the window over
  the positions: the rolled-away slots land after every real query, where causality hides them,
  and the padded queries' outputs are dropped (their zero cotangents add nothing to dk, dv).

  Sinks (an option num_sinks, for an fn that declares "sinks") are absolute positions: they are
  passed on as the number of slots that hold a position below num_sinks, which needs num_sinks and
  q_offset known at trace time.

  Args:
    fn: `fn(q_BTNH, k_BTKH, v_BTKD, window_size, scale, **options)`, self-attention from 0.
    even_length: also pad odd lengths to even ones (plain self-attention included).

  Returns:
    `call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, q_offset=None, k_offset=None, **options)`.
  """

  def call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, q_offset=None, k_offset=None, **options):
    if k_offset is not None:
      raise ValueError("tail_aligned takes keys that end where the queries end (k_offset=None).")
    T, S = q_BTNH.shape[1], k_BSKH.shape[1]
    extra = S % 2 if even_length else 0
    q0 = 0 if q_offset is None else q_offset
    if "num_sinks" in options:
      if not (_static_int(options["num_sinks"]) and _static_int(q0)):
        raise ValueError(
          "Sinks with a self-attention kernel need num_sinks and q_offset as Python ints."
        )
      first = max(int(q0) + T - S, 0)  # the position of the first real key
      options["num_sinks"] = max(0, options["num_sinks"] - first)
    if _static_int(q0):
      rolled = extra + min(max(S - T - int(q0), 0), S)
    else:  # Keys at negative positions, counted at run time (a shard's index is traced).
      rolled = extra + jnp.clip(S - T - q0, 0, S)
    front = lambda x, n: jnp.pad(x, ((0, 0), (n, 0), (0, 0), (0, 0))) if n else x
    q_BSNH, k_BSKH, v_BSKD = (
      front(q_BTNH, S - T + extra),
      front(k_BSKH, extra),
      front(v_BSKD, extra),
    )
    roll = (lambda x, shift, axis: x) if _static_int(rolled) and rolled == 0 else jnp.roll
    out_BSND = fn(
      *(roll(x, -rolled, axis=1) for x in (q_BSNH, k_BSKH, v_BSKD)), window_size, scale, **options
    )
    return roll(out_BSND, rolled, axis=1)[:, S + extra - T :]

  return call


def forward_and_training(forward_fn, training_fn):
  """One attention function from two: forward_fn's output where the call is not differentiated,
  training_fn's forward and backward where it is.

  A `jax.custom_vjp` whose plain call is forward_fn and whose forward rule is training_fn's VJP:
  under jax.grad (or value_and_grad, vjp) both passes are training_fn's, output included. Both
  must compute the same function; they differ in speed (e.g. cuDNN's forward is faster, the Pallas
  kernels' fwd+bwd at small windows).

  Args:
    forward_fn, training_fn: `fn(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options)`; the
      options must be static (Python values), as the VJP closes over them.

  Returns:
    `call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options)`.
  """

  def call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options):
    args = (window_size, scale)

    @jax.custom_vjp
    def attend(q, k, v):
      return forward_fn(q, k, v, *args, **options)

    def attend_fwd(q, k, v):
      return jax.vjp(lambda q, k, v: training_fn(q, k, v, *args, **options), q, k, v)

    attend.defvjp(attend_fwd, lambda vjp, dout: vjp(dout))
    return attend(q_BTNH, k_BSKH, v_BSKD)

  return call


def unregister(name):
  """Removes a registered implementation (e.g. one a test added); unknown names are ignored."""
  _REGISTRY.pop(name, None)


def implementations():
  """Names `implementation=` accepts: "auto" and every registered one."""
  return ("auto",) + tuple(_REGISTRY)


def _lookup(name):
  if name not in _REGISTRY:
    raise ValueError(
      f"Unknown attention implementation {name!r}; choose one of {implementations()}."
    )
  return _REGISTRY[name]


def implementation_features(name):
  """The features (and options) the registered implementation `name` declared."""
  return _lookup(name).features


register("reference", reference_attention, features=SEMANTIC_FEATURES, auto_rank=30)
register(
  "chunked",
  chunked.chunked_attention,
  features=("offsets", "block_size"),
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
  features=("tail_offsets", "sinks", "block_sizes", "interpret"),
  auto_rank=5,
  auto_when=pallas_attention.auto_when,
)
# cuDNN's forward and the Pallas kernels' fwd+bwd, each where it is faster: auto takes it for
# training-sized calls at small windows (pallas_attention.AUTO_TRAIN_MAX_WINDOW).
register(
  "cudnn_pallas",
  tail_aligned(
    forward_and_training(cudnn.cudnn_attention, pallas_attention.pallas_attention),
    even_length=True,
  ),
  features=("tail_offsets",),
  check=cudnn.unsupported_reason,
  auto_rank=7,
  auto_when=pallas_attention.auto_train_when,
)
register(
  "splash",
  splash.splash_attention,
  features=("interpret",),
  check=splash.unsupported_reason,
  auto_rank=0,
  auto_when=lambda q, k, v, w: jax.default_backend() == "tpu",
)


def resolve_implementation(implementation, q_BTNH, k_BSKH, v_BSKD, window_size, features=()):
  """The registered implementation that runs a call; maps "auto" to one (module docstring).

  Args:
    implementation: a name from `implementations()`.
    q_BTNH, k_BSKH, v_BSKD: the 4-D inputs (or their shapes' stand-ins).
    window_size: w or None.
    features: the features and options the call needs (e.g. {"offsets"}).

  Returns:
    The name of the implementation.
  """
  features = frozenset(features)
  if implementation != "auto":
    impl = _lookup(implementation)
    if not features <= impl.features:
      raise ValueError(
        f"implementation={implementation!r} (supports {sorted(impl.features)}) does not "
        f"support {sorted(features - impl.features)}."
      )
    reason = impl.check and impl.check(q_BTNH, k_BSKH, v_BSKD, window_size)
    if reason:
      raise ValueError(f"implementation={implementation!r} is not available: {reason}.")
    return implementation
  ranked = sorted(
    (i for i in _REGISTRY.values() if i.auto_rank is not None), key=lambda i: i.auto_rank
  )
  for impl in ranked:
    if (
      features <= impl.features
      and not (impl.check and impl.check(q_BTNH, k_BSKH, v_BSKD, window_size))
      and (impl.auto_when is None or impl.auto_when(q_BTNH, k_BSKH, v_BSKD, window_size))
    ):
      return impl.name
  raise ValueError(f"No implementation that auto may pick supports {sorted(features)}.")


# ------------------------------------------------------------------------------- contract


def _check_shapes(q, k, v, same_length):
  """Validates ranks, lengths and head counts; returns the 4-D views."""
  if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
    raise ValueError(
      "q, k and v must all be [batch, seq, dim] or all [batch, seq, heads, dim]; got shapes "
      f"{q.shape}, {k.shape}, {v.shape}."
    )
  if q.ndim == 3:
    q, k, v = q[:, :, None], k[:, :, None], v[:, :, None]
  (B, T, N, H), (Bk, S, K, Hk), (Bv, Sv, Kv, _) = q.shape, k.shape, v.shape
  if not B == Bk == Bv:
    raise ValueError(f"q, k and v must share the batch size, got {B}, {Bk}, {Bv}.")
  if S != Sv or (same_length and T != S):
    raise ValueError(
      f"Self-attention needs equal query and key/value lengths, got {T}, {S}, {Sv} "
      "(pass q_offset, k_offset or k_positions to place keys apart from queries)."
    )
  if K != Kv:
    raise ValueError(f"k and v must have the same number of heads, got {K} and {Kv}.")
  if N % K:
    raise ValueError(f"The query heads ({N}) must be a multiple of the key/value heads ({K}).")
  if H != Hk:
    raise ValueError(f"q and k must share the head dim, got {H} and {Hk}.")
  return q, k, v


def _static_int(x):
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_position(value, name):
  """Offsets and sinks are integer scalars (Python ints or traced/concrete int arrays)."""
  if value is None or _static_int(value):
    return
  if (
    isinstance(value, (bool, float))
    or jnp.ndim(value) != 0
    or not jnp.issubdtype(jnp.result_type(value), jnp.integer)
  ):
    raise ValueError(f"{name} must be an integer scalar, got {value!r}.")


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
      causal attention. Windows >= T are full causal attention.
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
    block_size: query block C of implementations with "block_size" (chunked); default theirs.
    blocks_per_step: if set, such implementations process this many query blocks at a time in a
      loop and recompute them in the backward pass (bounded memory for long sequences).
    **options: further keyword options of the chosen implementation (e.g. mesh=).

  Returns:
    [B, T, N, D] (or [B, T, D] for 3-D inputs) in q's dtype.
  """
  check_window_size(window_size)
  for name, value in (("block_size", block_size), ("blocks_per_step", blocks_per_step)):
    if value is not None:
      check_window_size(value, name=name)
  for name, value in (("q_offset", q_offset), ("k_offset", k_offset), ("num_sinks", num_sinks)):
    _check_position(value, name)
  if _static_int(num_sinks) and num_sinks < 0:
    raise ValueError(f"num_sinks must be >= 0, got {num_sinks}.")
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
  sinks = window_size is not None and not (_static_int(num_sinks) and num_sinks == 0)
  if sinks:
    features.add("sinks")
    semantic.update(num_sinks=num_sinks)
  if placed and k_positions is None:
    q0 = 0 if q_offset is None else q_offset
    # Positions matter only where the keys are shifted, may be padding, or meet absolute sinks.
    plain = (
      S == T
      and _static_int(q0)
      and (q0 == 0 if sinks else q0 >= 0)
      and (k_offset is None or (_static_int(k_offset) and k_offset == q0))
    )
    if not plain:
      features.add("tail_offsets" if k_offset is None and S >= T else "offsets")
      semantic.update(q_offset=q0, k_offset=k_offset)

  name = resolve_implementation(implementation, q_BTNH, k_BSKH, v_BSKD, window_size, features)
  impl = _REGISTRY[name]
  if "block_size" in impl.features:
    options.update(block_size=block_size, blocks_per_step=blocks_per_step)
  out_BTND = impl.fn(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **semantic, **options)
  return out_BTND[:, :, 0] if squeeze else out_BTND
