"""4 layers x window 512: receptive reach 4 * 511 = 2044 tokens (the seed table's "~2048").

  python train.py --config=configs/w512.py

Result on one H100: see results/training.md (command, time and accuracy by distance).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 512
  config.data.seq_len = 2304          # Distances up to 2284: the reach plus a margin to fail in.
  config.data.batch_size = 16         # About the tokens per step of w128 (37k vs 33k).
  return config
