"""4 layers x window 128: receptive reach 4 * 127 = 508 tokens (the seed table's "~512").

  python train.py --config=configs/w128.py

Measured (results/training_h100/, one H100 shared with three other runs, 2026-11-25): ~221k tokens/s
shared (18 steps/s alone), 3,000 steps in 669 s. Exact match >= 99 % at every tested distance up to
479, 95 % at 487, 59 % at 503; 98.1 % averaged inside the reach; 0 % at every distance beyond 508.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 128
  config.data.seq_len = 640  # Distances up to 620: the reach (508) plus a margin to fail in.
  config.data.batch_size = 64  # 41k tokens per step.
  config.num_steps = 3000
  return config
