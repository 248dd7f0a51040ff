"""Text LM, every layer window 128 (reach 6 * 127 = 762 bytes); the window sweep's template.

  python train.py --config=configs/text_w128.py --config.data.corpus=stdlib \
    --config.model.window_size=64
Not yet measured on a GPU (2026-12-03): scripts/text_experiments.sh runs it on both corpora.
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = 128
  return config
