"""swa: sliding-window (local, banded) attention for long context, in JAX/Flax."""

from swa.attention import (
  IMPLEMENTATIONS,
  create_sliding_window_mask,
  sliding_window_attention,
)

__all__ = ["IMPLEMENTATIONS", "create_sliding_window_mask", "sliding_window_attention"]
