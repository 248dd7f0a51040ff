"""Byte-level LM on real text (config.task = "text", swa/tasks/text.py): 6 layers, d=256, ~4.9M params.

  python train.py --config=configs/text_base.py --config.data.corpus=stdlib

Experiment files (text_w128.py, text_full.py, text_mix.py, text_sink.py, text_tiny.py) import this
and change a few fields; scripts/text_experiments.sh runs them all on one GPU and eval_text.py
turns the workdirs into tables. The data section replaces the passkey one of configs/base.py.
Measured on one H200 (results/text/README.md, 2026-12-03/04, 3 seeds of every model):
scripts/text_experiments.sh trains every window on both corpora.
"""

import ml_collections

from configs import base
from swa import corpora


def get_config():
  config = base.get_config()
  config.task = "text"

  # Model: as configs/base.py, with 6 layers and the byte vocabulary.
  m = config.model
  m.vocab_size = corpora.VOCAB_SIZE  # 256 bytes + SEP (256) + SINK (257), swa/corpora.py.
  m.num_layers = 6
  m.d_model = 256
  m.num_heads = 8
  m.num_kv_heads = 8
  m.mlp_dim = 1024
  m.window_size = 128  # Every layer; reach 6 * 127 = 762 tokens.
  m.dtype = "bfloat16"
  m.num_sinks = 0  # Positions 0 .. k-1 visible to every query (text_sink.py: 1).

  # Data (swa/corpora.py): random windows of one corpus's train split.
  config.data = d = ml_collections.ConfigDict()
  d.corpus = "kjv"  # "kjv" (King James Bible, prose) | "stdlib" (Python stdlib .py, code).
  d.seq_len = 4096  # Training context T (tokens = bytes).
  d.batch_size = 8  # Windows per step (32k tokens).
  d.sink_token = False  # True: the input at position 0 of every window is SINK (257).
  # True: a window's documents are packed sequences (swa/tasks/text.py): SEP starts each one,
  # attention never crosses a SEP, positions restart at each document (no sinks then).
  d.segment_ids = False

  # Optimiser
  o = config.optim
  o.learning_rate = 2e-3  # Peak of the warmup-cosine schedule (base.py: 1e-3).
  o.warmup_steps = 50  # Linear warmup; then cosine decay over the rest of num_steps.
  o.end_lr_fraction = 0.05  # Final learning rate = 0.05 x peak.
  o.weight_decay = 0.1  # AdamW's decoupled weight decay (b1, b2, grad_clip: base.py).

  # Evaluation: bits/byte on fixed validation windows (offsets evenly spaced over the split).
  config.eval = e = ml_collections.ConfigDict()
  e.every_steps = 0  # 0 = only at the end.
  # Validation windows of seq_len, evenly spaced (kjv: 256 x 4096 = 1.05M tokens over its 286k,
  # so they overlap; stdlib: 1.1M). Many windows make the loss by position less noisy: each
  # position is averaged over num_windows bytes.
  e.num_windows = 256
  e.batch_size = 8  # Windows per evaluation forward call.

  # Run
  config.num_steps = 400  # 400 x 32k = 13M training tokens (~3.6 passes over kjv's train split).
  config.log_every_steps = 25
  config.checkpoint_every_steps = 200  # A resumed run loses at most 200 steps.
  return config
