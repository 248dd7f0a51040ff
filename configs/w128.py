"""4 layers x window 128: receptive reach 4 * 127 = 508 tokens (the seed table's "~512").

  python train.py --config=configs/w128.py

Measured (results/passkey_campaign_h200/, 2 x H200, 2026-11-30, seeds 0, 1, 2): >= 95 % at every
tested distance up to 471-482 per seed, 50 % crossing at 495-501 (reach 508), 97.1 % [96.6, 97.5]
inside the reach; 0 % beyond it is the mask's guarantee. ~4.4M tokens/s alone on an H200.
With --config.model.num_layers=1, 2, 8 (8: --config.data.seq_len=1152) the wall follows L * 127.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 128
  config.data.seq_len = 640  # Distances up to 620: the reach (508) plus a margin to fail in.
  config.data.batch_size = 64  # 41k tokens per step.
  config.num_steps = 3000
  return config
