"""4 layers x window 512: receptive reach 4 * 511 = 2044 tokens (the seed table's "~2048").

  python train.py --config=configs/w512.py

Measured (results/training.md, one H100 shared with three other runs, 2026-11-25): ~217k tokens/s;
cut at 330 s (~1,520 steps, before the curriculum reached the longest distances). Step-1,500
checkpoint: >= 95 % up to distance 938, 49 % inside the reach, 0 % beyond 2044.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 512
  config.data.seq_len = 2304          # Distances up to 2284: the reach plus a margin to fail in.
  config.data.batch_size = 16         # About the tokens per step of w128 (37k vs 33k).
  return config
