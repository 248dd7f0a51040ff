"""swa: sliding-window (local, banded) attention for long context, in JAX/Flax.

The attention names below load swa.attention (and JAX) on first use, so that the JAX-free wings
(swa.analysis: results, tables, figures) import without it.
"""

_ATTENTION_NAMES = ("IMPLEMENTATIONS", "create_sliding_window_mask", "sliding_window_attention")
__all__ = list(_ATTENTION_NAMES)


def __getattr__(name):
  if name in _ATTENTION_NAMES:
    from swa import attention

    return getattr(attention, name)
  raise AttributeError(f"module 'swa' has no attribute {name!r}")
