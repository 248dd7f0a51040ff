"""4 layers x window 128: receptive reach 4 * 127 = 508 tokens (the seed table's "~512").

  python train.py --config=configs/w128.py

Measured (results/passkey_campaign_h200/, 2 x H200, 2026-11-30, seeds 0, 1, 2): >= 95 % at every
tested distance up to 471-482 per seed, 50 % crossing at 495-501 (reach 508), 97.1 % [96.6, 97.5]
inside the reach; 0 % beyond it is the mask's guarantee. ~4.4M tokens/s alone on an H200.
With --config.model.num_layers=1, 2, 8 (8: --config.data.seq_len=1152) the wall follows L * 127.
With a short first layer in front, every hop on 8 of 8 seeds (one H200, seeds 0-7), at L = 4
(results/hops_recipe_h200/: >= 95 % to d = 484-496, reach 523) and at L = 8 (results/hops_h200/:
100 % at every tested d <= 914, reach 1,031):
  python train.py --config=configs/w128.py --config.model.num_layers=5 --config.model.window_size=16,128,128,128,128
  python train.py --config=configs/w128.py --config.model.num_layers=9 --config.data.seq_len=1152 \
    --config.model.window_size=16,128,128,128,128,128,128,128,128
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 128
  config.data.seq_len = 640  # Distances up to 620: the reach (508) plus a margin to fail in.
  config.data.batch_size = 64  # 41k tokens per step.
  config.num_steps = 3000
  return config
