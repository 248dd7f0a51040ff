"""4 layers x window 256: receptive reach 4 * 255 = 1020 tokens (the seed table's "~1024").

  python train.py --config=configs/w256.py

Measured (results/training.md, one H100 shared with three other runs, 2026-11-25): ~291k tokens/s;
cut at 330 s (~1,850 steps). Step-1,500 checkpoint: >= 95 % up to distance 618, 89 % inside the
reach, 0 % beyond 1020.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 256
  config.data.seq_len = 1280          # Distances up to 1260: the reach plus a margin to fail in.
  return config
