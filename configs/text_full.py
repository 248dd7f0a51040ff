"""Text LM with full causal attention in every layer (window None) at T = 4096.

  python train.py --config=configs/text_full.py --config.data.corpus=kjv

Not yet measured on a GPU (2026-12-03): scripts/text_experiments.sh runs it on both corpora.
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = None
  return config
