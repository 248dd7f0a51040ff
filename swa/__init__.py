"""swa: sliding-window (local, banded) attention for long context, in JAX/Flax.

A query at position i attends to keys i-w+1 .. i (w keys, itself included), everywhere.

The core, read top-down (each module imports only those above it):
  checks.py mask.py            the one integer validator; the one mask rule (`visible`)
  registry.py attention.py     the implementation registry; the public contract and reference
  chunked.py cudnn.py pallas_kernels.py pallas_attention.py splash.py kernel_adapters.py
  fa3.py mosaic_pipeline.py mosaic_forward.py mosaic_backward.py mosaic_attention.py
                               the implementations, and the adapters (shard offsets, cudnn_pallas)
  data.py curriculum.py        passkey prompts, the evaluation grid, hop distances; curriculum
  corpora.py                   real text shipped in packages (KJV, Python's stdlib) as bytes
  model_config.py              ModelConfig: the architecture, checked; reach, window labels
  cache.py model.py            the rolling KV cache; the decoder
  sharding.py                  meshes, data and sequence parallelism
  evaluate.py erf.py           one prompt stream, exact match, sweeps; effective receptive field
  hop_probe.py                 the relay probe: where each layer has carried the key
  streaming.py stream_modes.py prefill / decode / generate / long streams; what stream.py runs
  tasks/                       what the Trainer trains: passkey, text (data + loss + evaluator)
  workdir.py checkpoints.py input_pipeline.py train_lib.py
                               one run per workdir; checksummed Orbax checkpoints; prefetch; Trainer
  evaluate_workdirs.py         eval_passkey.py: restore, evaluate, report
  receptive_field.py reports.py cli.py
The wings (tooling; they import the core, never the reverse):
  analysis/   the one results pipeline (rows, stats, summary, tables, figures, report; hops,
              text); no JAX
  sweep/      grids x seeds of training runs (grid, workers, runner)
  profiling/  memory and time of full vs sliding attention (profile_memory.py)
  bench/      every attention implementation checked and timed (bench_attention.py); decoding
  hf/         Hugging Face checkpoints in and out (config.json, safetensors; stream.py --hf_checkpoint)

The attention names below load swa.attention (and JAX) on first use, so the JAX-free wing
(swa.analysis) imports without it.
"""

_ATTENTION_NAMES = ("create_sliding_window_mask", "implementations", "sliding_window_attention")
__all__ = list(_ATTENTION_NAMES)


def __getattr__(name):
  if name in _ATTENTION_NAMES:
    from swa import attention

    return getattr(attention, name)
  raise AttributeError(f"module 'swa' has no attribute {name!r}")
