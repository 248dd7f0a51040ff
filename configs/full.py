"""The same 4-layer model with full causal attention: no limit on reach inside the context.

  python train.py --config=configs/full.py

Result on one H100: see results/training.md (command, time and accuracy by distance).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = None
  config.data.seq_len = 1024
  return config
