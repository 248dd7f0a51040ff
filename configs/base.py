"""Defaults for every experiment: a 4-layer character-level LM trained on passkey retrieval.

Experiment files (w128.py, w256.py, w512.py, full.py, tiny.py) import this and change a few fields.
Any field can be overridden from the command line, e.g. `--config.model.window_size=256`; a
misspelt field is an error (the config is locked).
"""

import ml_collections

from swa import data


def get_config():
  config = ml_collections.ConfigDict()

  # Task (swa/tasks/): what the run learns, i.e. its data, loss and evaluation. "passkey":
  # passkey retrieval over a distance curriculum (the data and eval sections below); "text":
  # language modelling on real text. It shapes the run: a workdir holds one task.
  config.task = "passkey"

  # Model
  config.model = model = ml_collections.ConfigDict()
  model.vocab_size = data.VOCAB_SIZE  # Character-level tokenizer of swa/data.py (72 ids).
  model.num_layers = 4  # Transformer blocks L; the receptive field is L*(w-1)+1.
  model.d_model = 256  # Residual stream width.
  model.num_heads = 8  # Query heads; head dim = d_model / num_heads.
  model.num_kv_heads = 8  # Key/value heads (< num_heads for GQA, 1 for MQA).
  model.mlp_dim = 1024  # Hidden width of each block's MLP (intermediate_size).
  # Window w of every layer (a query at i sees keys i-w+1..i): an int, None for full
  # attention, or one value per layer. The field takes any type, so the command line can give
  # 256, none, full, 8,32,32,32 or 128,128,none,128 (checked by swa/model.py layer_windows).
  model.window_size = ml_collections.FieldReference(128, field_type=object)
  model.attention = "auto"  # auto | reference | chunked | cudnn | pallas | cudnn_pallas | ...
  # (attention.implementations(); swa/attention.py says what each is and what auto picks).
  # chunked: query block size; None = default_block_size. Typed int so that the command line
  # can set it (`--config.model.block_size=256`).
  model.block_size = ml_collections.FieldReference(None, field_type=int)
  # chunked: None = all blocks at once; k = loop k at a time.
  model.blocks_per_step = ml_collections.FieldReference(None, field_type=int)
  model.dtype = "bfloat16"  # Activation dtype; parameters are always float32.
  # RoPE frequency base (ModelConfig also takes one per layer, a tuple, as loaded checkpoints use).
  model.rope_base = 10_000.0
  # "rope" (rotary embeddings) | "none" (NoPE: no position embedding, the causal mask alone
  # tells the model where a token is).
  model.position_encoding = "rope"
  # Position interpolation (Chen et al. 2023): RoPE angles use position / rope_scale (>= 1; 1 =
  # off). Meant for evaluation beyond the trained length (eval_passkey.py --rope_scale=2 on a model
  # trained at T and run at 2T), or for fine-tuning with it.
  model.rope_scale = 1.0
  model.remat = False  # Recompute each block in the backward pass (saves memory).
  # Attention sinks: positions 0 .. num_sinks-1 stay visible to every query of every layer
  # (StreamingLLM's sink tokens, trained in; the rolling cache then keeps them: stream with
  # --sinks >= num_sinks). 0 = a plain window.
  model.num_sinks = 0
  # Architecture options for checkpoints of other families (swa/hf/, docs/hf.md); these defaults
  # are swa's own architecture, so every committed result is unchanged.
  # MLP: gelu (biased; swa's own) | swiglu (Mistral, Qwen2) | geglu (Gemma); gated ones have no bias.
  model.mlp = "gelu"
  model.norm_eps = 1e-6  # RMSNorm epsilon (rms_norm_eps).
  model.norm_plus_one = False  # RMSNorm multiplies by 1 + scale, the scale starting at 0 (Gemma).
  # Query/key/value head dim; None = d_model / num_heads (head_dim of config.json).
  model.attention_head_dim = ml_collections.FieldReference(None, field_type=int)
  model.qkv_bias = False  # Biases on the query, key and value projections (Qwen2).
  model.tie_embeddings = False  # The output head is the embedding table, transposed.
  model.embed_scale = False  # Embeddings times sqrt(d_model) (Gemma).
  model.post_norms = False  # RMSNorm on the attention and MLP outputs too (Gemma 2).
  # Attention logit scale; None = 1 / sqrt(head dim) (Gemma 2: query_pre_attn_scalar ** -0.5).
  model.attention_scale = ml_collections.FieldReference(None, field_type=float)
  # Attention logits s -> c * tanh(s / c) for c = this; None = off (Gemma 2: 50). Supported by
  # the reference and chunked implementations (auto picks one of them).
  model.attention_softcap = ml_collections.FieldReference(None, field_type=float)
  # The same soft-cap on the output logits; None = off (Gemma 2: 30).
  model.final_softcap = ml_collections.FieldReference(None, field_type=float)
  # One learned sink logit per query head (gpt-oss; the attention contract's sink_logits).
  model.learned_sinks = False
  model.qk_norm = False  # RMSNorm over each head's query and key, before RoPE (Gemma 3).

  # Data (swa/data.py): passkey prompts with the answer digits at the end.
  config.data = d = ml_collections.ConfigDict()
  d.seq_len = 1024  # Training context T (tokens = characters).
  d.batch_size = 32  # Sequences per step.
  d.curriculum = "linear"  # How the largest training distance grows: "linear" with the
  # step; "adaptive" by curriculum_stage tokens each time the
  # model solves the newest stage (swa/curriculum.py, PasskeyBatches).
  d.curriculum_start = data.MIN_DISTANCE  # Largest key-to-question distance at step 0.
  d.curriculum_fraction = 0.7  # linear: share of training over which the largest distance
  # grows to max_distance; afterwards it stays there.
  d.curriculum_stage = 0  # adaptive: tokens per advance; 0 = 1/16 of the range.
  d.curriculum_target = 0.9  # adaptive: training exact match on the newest stage to advance.
  d.curriculum_examples = 256  # adaptive: examples of the newest stage per decision.
  d.max_distance = -1  # Largest training distance; -1 = the most seq_len allows.
  d.cap_at_reach = True  # Also stop training distances at the model's reach
  # sum_l (w_l - 1): beyond it no example can be answered.
  d.uniform_fraction = 0.1  # Share of each batch drawn over the whole distance range.
  d.lm_weight = 1.0  # Weight of the next-token loss on every position, added to
  # the loss on the 5 answer digits (0 = answer loss only).

  # Optimiser: AdamW, linear warmup then cosine decay to end_lr_fraction * learning_rate.
  config.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 1e-3
  o.warmup_steps = 200
  o.end_lr_fraction = 0.05
  o.b1 = 0.9
  o.b2 = 0.95
  o.weight_decay = 0.1
  o.grad_clip = 1.0  # Global-norm clipping of the gradient.

  # Evaluation during training: teacher-forced exact match (== greedy decoding) per distance.
  config.eval = e = ml_collections.ConfigDict()
  e.every_steps = 1000  # 0 = only at the end.
  e.examples_per_distance = 64
  e.num_distances = 16  # Distances evenly spaced from MIN_DISTANCE to the maximum.
  # Also evaluate at each hop's distance: 0.95 x the reach of the first k layers, for every k
  # (swa/tasks/passkey.py hop_distances), to watch each hop of the relay form during training.
  e.hop_distances = False

  # Parallelism (swa/sharding.py): devices per mesh axis, outer first, -1 = all the rest.
  # "data:-1": data parallel over every device; "data:2,seq:4": batch over 2 devices, each
  # sequence over 4 (sequence parallel: attention exchanges (w-1)-token halos, docs/scaling.md).
  config.mesh = "data:1,seq:1"

  # Run
  config.seed = 0
  # A training workdir whose newest parameters start this run instead of a fresh initialisation
  # (fine-tuning, e.g. at a longer data.seq_len or another model.rope_scale); the same parameter
  # shapes are required and the optimiser starts afresh. Only a fresh start uses it: a workdir
  # with checkpoints resumes from its own. "" = none.
  config.init_from = ""
  config.num_steps = 2000
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  return config
