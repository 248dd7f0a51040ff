"""4 layers x window 256: receptive reach 4 * 255 = 1020 tokens (the seed table's "~1024").

  python train.py --config=configs/w256.py

Measured (results/passkey_campaign_h200/, 2 x H200, 2026-11-30, seeds 0, 1, 2): seeds 0 and 2 relay
through all four layers (50 % crossing at 962 and 974, reach 1020), seed 1 through three (777);
87.6 % [86.7, 88.5] inside the reach. 0 % beyond the reach is the mask's guarantee.
With a short first layer in front (results/hops_h200/, one H200, 2026-12-03, seeds 0-7):
  python train.py --config=configs/w256.py --config.model.num_layers=5 --config.model.window_size=16,256,256,256,256
every hop on 8 of 8 seeds, 100 % inside the reach of 1,035 (train.py's evaluation, 64 keys per
distance): the recipe of results/hops_recipe_h200/, the same for w128 and w512.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 256
  config.data.seq_len = 1152  # Distances up to 1132: the reach (1020) plus a margin to fail in.
  config.data.batch_size = 64  # 74k tokens per step.
  config.num_steps = 3000
  return config
