"""4 layers x window 512: receptive reach 4 * 511 = 2044 tokens (the seed table's "~2048").

  python train.py --config=configs/w512.py

Measured (results/training.md, one H100 shared with three other runs, 2026-11-25): ~371k tokens/s
shared (14 steps/s alone), 4,000 steps in 943 s. This recipe FAILS for w512: 100 % up to distance 426
(one window) but 0 % from 554 on; the model never learned to relay the key through a second layer
(24.7 % averaged inside the reach, 0 % beyond 2044). results/training.md says what was seen and what
is still to try (results/recipe_cpu.md: on CPU, an adaptive curriculum that holds long distances
back did much worse; showing them sooner was within seed-to-seed spread).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.window_size = 512
  config.data.seq_len = 2176          # Distances up to 2156: the reach (2044) plus a margin to fail in.
  config.data.batch_size = 32         # 70k tokens per step.
  config.num_steps = 4000
  return config
