"""Text LM with full causal attention in every layer (window None) at T = 4096.

  python train.py --config=configs/text_full.py --config.data.corpus=kjv

Measured (results/text/, one H200, 3 seeds): validation bits/byte 1.779 kjv / 1.805 stdlib at
400 steps, 1.314 / 1.031 at --config.num_steps=1600 (scripts/text_experiments.sh runs it).
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = None
  return config
