"""Text LM with one learnable sink token: window 128 plus position 0 (SINK) visible to every query.

  python train.py --config=configs/text_sink.py --config.data.corpus=kjv

model.num_sinks = 1 keeps position 0 visible in every layer (batch and cache); data.sink_token
puts SINK (257) there in every window, whose embedding the model learns (swa/tasks/text.py).
Attention is "pallas": of the kernels only Pallas takes sinks, and `auto` would fall back to the
dense reference, whose 8 x 8 x 4096^2 float32 scores per layer (4.3 GB) do not fit a shared GPU.
Measured (results/text/, one H200, 3 seeds, 400 steps): validation bits/byte 1.604 kjv / 1.642
stdlib, level with w128 (scripts/text_experiments.sh runs it).
"""

from configs import text_base


def get_config():
  config = text_base.get_config()
  config.model.window_size = 128
  config.model.num_sinks = 1
  config.data.sink_token = True
  config.model.attention = "pallas"
  return config
