"""The evaluation grid: what a model can reach, the distances tested, each one's prompt length.

Distance (swa/data.py) is d = p_last - k0: from the first key digit k0 to the last prompt
token p_last, whose logits predict the first answer digit. A model whose layers have
windows w_l moves information at most reach = sum_l (w_l - 1) positions (`reach_of`), so it
can retrieve only if d <= reach; its theoretical receptive field is reach + 1 positions.

Prompt length. With RoPE, attention depends only on relative positions, so a windowed model
gives the same answer logits (up to float rounding) on any prompt of at least reach +
ANSWER_LEN tokens that ends with the same reach + 1 tokens. Each distance is evaluated at

    T = max(train_seq_len, round_up(d + ANSWER_LEN + len(KEY_PREFIX), LENGTH_MULTIPLE)),

the trained length while d fits (exactly the training distribution), else the shortest prompt
holding d, rounded up so that few shapes are compiled; such rows carry beyond_train_len=True.
A full-attention model's output depends on the whole prefix: beyond its trained length it
extrapolates RoPE, which is what `sweep_distances(full_max_factor > 1)` measures.

swa/evaluate.py scores models at these distances.
"""

import math

import numpy as np

from swa import data
from swa.model import ModelConfig

LENGTH_MULTIPLE = 64  # beyond the trained length, prompts are rounded up to this many tokens
FINE_FRACTION, FINE_STEP = 0.05, 8  # sweeps: every <= 8 tokens within +-5 % of the reach


# --- What a model can reach ----------------------------------------------------------------------


def window_name(w) -> str:
  """ "full" for None, else str(w)."""
  return "full" if w is None else str(w)


def window_label(model_config: ModelConfig) -> str:
  """ "128" when every layer has window 128, "full" for full attention, else "128,full,..."."""
  names = [window_name(w) for w in model_config.layer_windows]
  return names[0] if len(set(names)) == 1 else ",".join(names)


def reach_of(model_config: ModelConfig):
  """Largest retrievable distance sum_l (w_l - 1); None if any layer has full attention."""
  windows = model_config.layer_windows
  return None if None in windows else sum(w - 1 for w in windows)


# --- Distances and prompt lengths ---------------------------------------------------------------


def context_len(distance: int, train_seq_len: int, multiple: int = LENGTH_MULTIPLE) -> int:
  """Context length T at which `distance` is evaluated (module docstring)."""
  shortest = distance + data.ANSWER_LEN + len(data.KEY_PREFIX)  # key sentence at position 0
  return max(train_seq_len, -(-shortest // multiple) * multiple)


def even_distances(seq_len: int, num: int) -> list:
  """`num` distances evenly spaced over all that a prompt of context seq_len allows (train.py)."""
  top = data.context_max_distance(seq_len)
  return sorted(set(np.linspace(data.MIN_DISTANCE, top, num).round().astype(int).tolist()))


def sweep_distances(
  reach, train_seq_len: int, *, max_factor: float = 2.0, step=None, full_max_factor: float = 1.0
) -> list:
  """Distances to evaluate, from data.MIN_DISTANCE on.

  Windowed models (reach an int): up to ceil(max_factor * reach), every `step` tokens
  (default reach / 16), every step / 4 (default reach / 64) within +-15 % of the reach, every
  min(that, FINE_STEP) within +-FINE_FRACTION of it, and reach and reach + 1 themselves. Full
  attention (reach None): up to full_max_factor times the trained length's largest distance
  (> 1: prompts longer than trained, to find where full attention stops), every `step`
  (default 1/32 of the range within the trained length).

  Returns:
    sorted list of distinct ints.
  """
  if reach is None:
    if full_max_factor < 1:
      raise ValueError(f"full_max_factor={full_max_factor} must be >= 1.")
    trained_top = data.context_max_distance(train_seq_len)
    top = math.ceil(full_max_factor * trained_top)
    coarse = step or max(1, round((trained_top - data.MIN_DISTANCE) / 32))
    points = set(range(data.MIN_DISTANCE, top + 1, coarse)) | {trained_top, top}
  else:
    top = max(data.MIN_DISTANCE, math.ceil(max_factor * reach))
    coarse = step or max(1, round(reach / 16))
    fine = max(1, coarse // 4) if step else max(1, round(reach / 64))
    points = set(range(data.MIN_DISTANCE, top + 1, coarse)) | {top, reach, reach + 1}
    points |= set(range(math.floor(0.85 * reach), math.ceil(1.15 * reach) + 1, fine))
    finest = min(fine, FINE_STEP)
    points |= set(
      range(
        math.floor((1 - FINE_FRACTION) * reach), math.ceil((1 + FINE_FRACTION) * reach) + 1, finest
      )
    )
  return sorted(d for d in points if data.MIN_DISTANCE <= d <= top)
