"""Text LM with full causal attention in every layer (window None) at T = 4096.

python train.py --config=configs/text_full.py --config.data.corpus=kjv
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = None
  return config
