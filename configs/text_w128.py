"""Text LM, every layer window 128 (reach 6 * 127 = 762 bytes); the window sweep's template.

  python train.py --config=configs/text_w128.py --config.data.corpus=stdlib \
    --config.model.window_size=64
Measured (results/text/, one H200, 3 seeds): validation bits/byte 1.606 kjv / 1.635 stdlib at
400 steps, 1.405 / 1.122 at --config.num_steps=1600 (scripts/text_experiments.sh runs it).
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = 128
  return config
