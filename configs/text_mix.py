"""Text LM, Gemma-3 style 5 local : 1 global: layers 1-5 window 128, layer 6 full attention.

  python train.py --config=configs/text_mix.py --config.data.corpus=stdlib

Measured (results/text/, one H200, 3 seeds, 400 steps): validation bits/byte 1.595 kjv / 1.641
stdlib, level with w128 (scripts/text_experiments.sh runs it).
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = (128, 128, 128, 128, 128, None)
  return config
