"""The registry of attention implementations behind `sliding_window_attention`.

An implementation is a function with the contract's signature and the features it declares;
swa/attention.py registers the built-in ones and `resolve_implementation` maps a call (its
inputs and the features it needs) to one. Nothing here imports another swa module.
"""

import dataclasses
from typing import Callable, Optional

# Features an implementation may declare, and the keyword options it then receives:
#   offsets        q_offset, k_offset (k_offset None: the keys end where the queries end)
#   tail_offsets   q_offset (may be traced), k_offset None, S >= T: the queries are the last T of
#                  the key positions, as for a sequence shard over its halo. Implied by "offsets";
#                  self-attention kernels get it from `kernel_adapters.tail_aligned`.
#   key_positions  q_offset, k_positions ([S] or [B, S] ints, -1 = empty slot)
#   sinks          num_sinks (attention sinks: the first positions stay visible)
#   sink_logits    sink_logits (learned sinks, one denominator logit per query head)
#   logit_softcap  logit_softcap (Gemma 2: scaled logits become cap * tanh(logits / cap))
#   segment_ids    segment_ids [B, T], k_segment_ids [B, S] int32 (packed sequences: a query sees
#                  only the keys of its own segment, the window still applies); both always given
#   block_size     block_size, blocks_per_step (tuning hints; dropped for those without it)
# Any other declared name is a keyword option of that name, passed through **options. A call that
# needs no placement (S == T, keys at the queries' positions >= 0) sends no offsets: an
# implementation then computes plain self-attention from position 0.
SEMANTIC_FEATURES = (
  "offsets",
  "tail_offsets",
  "key_positions",
  "sinks",
  "sink_logits",
  "logit_softcap",
  "segment_ids",
)


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One registered implementation (see `register`)."""

  name: str
  fn: Callable
  features: frozenset
  check: Optional[Callable] = None
  auto_rank: Optional[int] = None
  auto_when: Optional[Callable] = None
  auto_features: Optional[frozenset] = None  # None: all of `features`


_REGISTRY = {}


def register(
  name, fn, *, features=(), check=None, auto_rank=None, auto_when=None, auto_features=None
):
  """Adds (or replaces) an implementation under `name`.

  Args:
    name: the `implementation=` string; not "auto".
    fn: `fn(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options) -> o_BTND` in q's dtype,
      called with validated 4-D inputs and only the options of the features it declared.
    features: names it supports (SEMANTIC_FEATURES, "block_size"; see the comment above them
      for the options each brings), or the name of any other keyword option it takes ("mesh").
    check: optional `check(q_BTNH, k_BSKH, v_BSKD, window_size) -> str | None`: why it cannot run
      these inputs (None: it can). An explicit request then raises; auto skips it.
    auto_rank: its place in auto's order (lower first); None: auto never picks it.
    auto_when: optional `auto_when(q_BTNH, k_BSKH, v_BSKD, window_size) -> bool`: auto picks it
      only when True (a preference, not a limit).
    auto_features: optional subset of `features`: auto picks it only for calls that need no
      others (a feature checked on the CPU but not yet on the device auto would pick it for);
      default all of them. Explicit requests get every declared feature.
  """
  if name == "auto" or not isinstance(name, str):
    raise ValueError(f"An implementation needs a name other than 'auto', got {name!r}.")
  features = frozenset(features) | ({"tail_offsets"} if "offsets" in features else set())
  if auto_features is not None:
    auto_features = frozenset(auto_features)
    if not auto_features <= features:
      raise ValueError(
        f"auto_features of {name!r} must be among its features, got "
        f"{sorted(auto_features - features)}."
      )
  _REGISTRY[name] = Implementation(name, fn, features, check, auto_rank, auto_when, auto_features)


def unregister(name):
  """Removes a registered implementation (e.g. one a test added); unknown names are ignored."""
  _REGISTRY.pop(name, None)


def implementations():
  """Names `implementation=` accepts: "auto" and every registered one."""
  return ("auto",) + tuple(_REGISTRY)


def lookup(name):
  """The registered Implementation `name`; a one-line ValueError naming the choices if unknown."""
  if name not in _REGISTRY:
    raise ValueError(
      f"Unknown attention implementation {name!r}; choose one of {implementations()}."
    )
  return _REGISTRY[name]


def implementation_features(name):
  """The features (and options) the registered implementation `name` declared."""
  return lookup(name).features


def resolve_implementation(implementation, q_BTNH, k_BSKH, v_BSKD, window_size, features=()):
  """The registered implementation that runs a call; maps "auto" to one (swa/attention.py).

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
    impl = lookup(implementation)
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
      features <= (impl.features if impl.auto_features is None else impl.auto_features)
      and not (impl.check and impl.check(q_BTNH, k_BSKH, v_BSKD, window_size))
      and (impl.auto_when is None or impl.auto_when(q_BTNH, k_BSKH, v_BSKD, window_size))
    ):
      return impl.name
  raise ValueError(f"No implementation that auto may pick supports {sorted(features)}.")
