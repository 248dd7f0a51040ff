"""4 layers x window 256: receptive reach 4 * 255 = 1020 tokens (the seed table's "~1024").

  python train.py --config=configs/w256.py

Result on one H100: see results/training.md (command, time and accuracy by distance).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 256
  config.data.seq_len = 1280          # Distances up to 1260: the reach plus a margin to fail in.
  return config
