"""CPU smoke run of the text task: 2 layers, d=64, T=256, window 32, a few steps.

  python train.py --config=configs/text_tiny.py

Measured on the 2-core CPU box, 2026-12-03 (shared with other work): 30 steps in 9 s wall, final
validation 4.06 bits/byte on kjv (8 windows of 256; a uniform guess is log2(258) = 8.01).
A smoke test, not a result: TINY=1 bash scripts/text_experiments.sh runs it at 12 steps.
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  m = config.model
  m.num_layers = 2
  m.d_model = 64
  m.num_heads = 4
  m.num_kv_heads = 4
  m.mlp_dim = 256
  m.window_size = 32
  m.dtype = "float32"
  config.data.seq_len = 256
  config.data.batch_size = 4
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 5
  config.eval.num_windows = 8
  config.eval.batch_size = 4
  config.num_steps = 30
  config.log_every_steps = 10
  config.checkpoint_every_steps = 15
  return config
