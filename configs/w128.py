"""4 layers x window 128: receptive reach 4 * 127 = 508 tokens (the seed table's "~512").

  python train.py --config=configs/w128.py

Result on one H100: see results/training.md (command, time and accuracy by distance).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 128
  config.data.seq_len = 1024          # Distances up to 1004: about 2x the reach.
  return config
