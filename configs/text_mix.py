"""Text LM, Gemma-3 style 5 local : 1 global: layers 1-5 window 128, layer 6 full attention.

  python train.py --config=configs/text_mix.py --config.data.corpus=stdlib

Not yet measured on a GPU (2026-12-03): scripts/text_experiments.sh runs it on both corpora.
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = (128, 128, 128, 128, 128, None)
  return config
