"""The same 4-layer model with full causal attention: no limit on reach inside the context.

  python train.py --config=configs/full.py

Measured (results/passkey_campaign_h200/, 2 x H200, 2026-11-30, seeds 0, 1, 2): 100 % at every tested
distance inside the trained length (42-1,004) and to 1,332 beyond it; >= 95 % to 1,572; 50 % at
1,723; <= 8 % from 1,992: full attention extrapolates only ~1.7x past its trained length. Matched to
w512 (--config=configs/w512.py --config.model.window_size=none: T = 2,176): 100 % to 2,286, 50 % at
2,570.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = None
  config.data.seq_len = 1024
  return config
