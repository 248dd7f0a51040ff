"""Memory and time of one profiling configuration, in this process.

A configuration (swa/profiling/rows.py) is one of
  attention_fwd     sliding_window_attention(q, k, v) on [B, n, N, H] inputs;
  attention_fwdbwd  its gradient with respect to q, k, v of sum(out * dout);
  train_step        one optimiser step (swa.train_lib.train_step) of an experiment's LM (the
                    config is passed in: base_config) on a batch of B sequences of n tokens.

`measure` runs one configuration. Its memory is *net of the inputs*:
  peak      (GPU) the allocator's peak_bytes_in_use after the call minus the bytes in use just
            before it (inputs, parameters and optimiser state already on the device). A process's
            peak can never be reset, so each configuration needs a fresh process.
  compiled  (anywhere) XLA's own plan for the compiled program, `memory_analysis()`: temporary
            buffers plus outputs that do not reuse a donated input. It is what the program asks
            for, not what the allocator saw; on CPU it is the only number there is.
The time is reports.time_fn's: the median over a few runs after a warm-up run (compilation
excluded), each ended by `block_until_ready`.

`python -m swa.profiling.measure` is the worker of swa/profiling/sweep.py: it imports, then reads
measure's keyword arguments as one JSON line on stdin and prints one result line.
"""

import copy
import functools
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections

from swa import attention, data, reports, train_lib
from swa.profiling.rows import KINDS, METHODS, RESULT_MARKER


def train_config(
  base_config,
  seq_len,
  window_size,
  implementation,
  *,
  dtype="bfloat16",
  remat=False,
  blocks_per_step=None,
  block_size=None,
  batch_size=1,
):
  """An experiment config with the LM's window, attention, size and batch overridden.

  Args:
    base_config: the experiment config to start from (an ml_collections.ConfigDict or its
      to_dict(); profile_memory.py passes configs/base.py's).
    seq_len, window_size, implementation, dtype, remat, blocks_per_step, block_size,
      batch_size: the fields set (data.seq_len, model.window_size, model.attention, ...).

  Returns:
    a new ConfigDict; base_config is not changed.
  """
  raw = copy.deepcopy(
    base_config.to_dict() if isinstance(base_config, ml_collections.ConfigDict) else base_config
  )
  # Set before building the ConfigDict: it fixes each field's type from its first value, and a
  # per-layer base window (a tuple, as configs/tiny.py's) would refuse an int.
  raw["model"]["window_size"] = window_size
  config = ml_collections.ConfigDict(raw)
  config.model.attention = implementation
  config.model.dtype = dtype
  config.model.remat = bool(remat)
  config.model.blocks_per_step = blocks_per_step
  config.model.block_size = block_size
  config.data.seq_len = seq_len
  config.data.batch_size = batch_size
  return config


def _random_normal(key, shape, dtype, chunk=1 << 16):
  """A random normal array built chunk by chunk along axis 1, so no large temporary is ever
  allocated (a full-size float32 draw would raise the device's peak above the run's own)."""

  if shape[1] <= chunk:
    return jax.random.normal(key, shape, dtype)
  fill = jax.jit(
    lambda x, key, start: jax.lax.dynamic_update_slice_in_dim(
      x, jax.random.normal(key, (shape[0], chunk) + tuple(shape[2:]), dtype), start, axis=1
    ),
    donate_argnums=0,
  )
  x = jnp.zeros(shape, dtype)
  for i, start in enumerate(range(0, shape[1], chunk)):
    x = fill(x, jax.random.fold_in(key, i), min(start, shape[1] - chunk))
  return x


def _attention_program(kind, implementation, window_size, block_size, blocks_per_step):
  """(function, number of [B, n, N, H] inputs) for an attention kind."""

  attend = functools.partial(
    attention.sliding_window_attention,
    window_size=window_size,
    implementation=implementation,
    block_size=block_size,
    blocks_per_step=blocks_per_step,
  )
  if kind == "attention_fwd":
    return attend, 3

  def loss(q, k, v, dout):
    return jnp.sum(attend(q, k, v).astype(jnp.float32) * dout.astype(jnp.float32))

  return jax.grad(loss, argnums=(0, 1, 2)), 4


def _compiled_memory(compiled):
  """XLA's memory plan of a compiled program: {temp, output, argument, alias} bytes and the net."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  out = {
    "compiled_temp_bytes": int(analysis.temp_size_in_bytes),
    "compiled_output_bytes": int(analysis.output_size_in_bytes),
    "compiled_argument_bytes": int(analysis.argument_size_in_bytes),
    "compiled_alias_bytes": int(analysis.alias_size_in_bytes),
  }
  # Net of the inputs: scratch space plus outputs that do not overwrite a donated input.
  out["compiled_bytes"] = (
    out["compiled_temp_bytes"] + out["compiled_output_bytes"] - out["compiled_alias_bytes"]
  )
  return out


def measure(
  kind,
  impl,
  seq_len,
  window,
  *,
  method="auto",
  dtype=None,
  batch=1,
  heads=16,
  head_dim=128,
  block_size=None,
  blocks_per_step=None,
  remat=False,
  repeats=5,
  time_budget_s=1.0,
  seed=0,
  base_config=None,
):
  """Memory and time of one configuration in this process.

  Args:
    kind: "attention_fwd", "attention_fwdbwd" or "train_step".
    impl: attention implementation ("reference", "chunked", "cudnn", "auto").
    seq_len: n, tokens per sequence.
    window: w, or None for full causal attention.
    method: "peak" (device allocator; GPU), "compiled" (XLA memory_analysis) or "auto" (peak
      where the device reports it, else compiled).
    dtype: activation dtype; default bfloat16 on GPU, float32 elsewhere.
    batch, heads, head_dim: attention kinds' input shape [batch, n, heads, head_dim]; a
      train step uses `batch` sequences and base_config's model.
    block_size, blocks_per_step: chunked attention's query block and loop group.
    remat: train_step only: recompute each block in the backward pass.
    repeats: timed runs after a warm-up; 0 = memory only (nothing is allocated or run with
      method "compiled").
    time_budget_s: stop timing once the timed runs add up to this.
    seed: input randomness.
    base_config: train_step only: the experiment config whose model is stepped (a ConfigDict
      or its to_dict(), e.g. configs/base.py's); see train_config.

  Returns:
    A flat dict: the configuration, `status` ("ok", "OOM", "unsupported: ..." or
    "failed: ..."), `method`, `memory_bytes` (net of the inputs, by `method`), `time_ms`
    (median), the compiled plan (`compiled_*`) and, for "peak", the allocator's numbers.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if kind == "train_step" and base_config is None:
    raise ValueError(
      "kind='train_step' needs base_config, the experiment config to step "
      "(e.g. configs/base.py's get_config())."
    )
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  has_peak = "peak_bytes_in_use" in stats
  if method == "auto":
    method = "peak" if has_peak else "compiled"
  if method == "peak" and not has_peak:
    raise ValueError(
      f"method='peak' needs a device that reports peak_bytes_in_use; "
      f"{device.device_kind} ({jax.default_backend()}) does not."
    )
  dtype = dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")
  row = dict(
    kind=kind,
    impl=impl,
    seq_len=int(seq_len),
    window=window,
    method=method,
    dtype=str(dtype),
    batch=batch,
    block_size=block_size,
    blocks_per_step=blocks_per_step,
    device=device.device_kind,
    backend=jax.default_backend(),
    jax_version=jax.__version__,
    bytes_limit=stats.get("bytes_limit"),
  )
  if kind == "train_step":
    row["remat"] = bool(remat)
  else:
    row.update(heads=heads, head_dim=head_dim)
  key = jax.random.PRNGKey(seed)
  run_repeats = repeats if method == "compiled" else max(repeats, 1)
  stage = "setup"
  try:
    # Compile first, from shapes alone, so the compiler's scratch space (autotuning) is spent
    # before the inputs exist and shows up apart from the run (compile_peak_bytes).
    stage = "compile"
    if kind == "train_step":
      config = train_config(
        base_config,
        seq_len,
        window,
        impl,
        dtype=str(dtype),
        remat=remat,
        blocks_per_step=blocks_per_step,
        block_size=block_size,
        batch_size=batch,
      )
      graphdef, params = train_lib.create_model(config)
      optimizer = train_lib.create_optimizer(config)
      state = train_lib.init_state(params, optimizer)
      token_shape = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
      batch_shapes = {
        "inputs": token_shape,
        "targets": token_shape,
        "answer_mask": jax.ShapeDtypeStruct((batch, seq_len), jnp.float32),
      }
      compiled = train_lib.train_step.lower(
        state,
        batch_shapes,
        graphdef=graphdef,
        optimizer=optimizer,
        lm_weight=float(config.data.lm_weight),
      ).compile()
      row["num_params"] = int(sum(x.size for x in jax.tree.leaves(params)))

      def make_args():
        k_in, k_out = jax.random.split(key)
        tokens = lambda k: jax.random.randint(k, (batch, seq_len), 1, config.model.vocab_size)
        mask = jnp.zeros((batch, seq_len), jnp.float32).at[:, -data.ANSWER_LEN :].set(1.0)
        return state, {"inputs": tokens(k_in), "targets": tokens(k_out), "answer_mask": mask}

      thread_output = lambda args, out: (out[0], args[1])
    else:
      fn, num_inputs = _attention_program(kind, impl, window, block_size, blocks_per_step)
      shape = (batch, seq_len, heads, head_dim)
      compiled = (
        jax.jit(fn).lower(*[jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))] * num_inputs).compile()
      )

      def make_args():
        return tuple(
          _random_normal(k, shape, jnp.dtype(dtype)) for k in jax.random.split(key, num_inputs)
        )

      thread_output = lambda args, out: args
    row.update(_compiled_memory(compiled))
    if method == "peak":
      row["compile_peak_bytes"] = int(device.memory_stats()["peak_bytes_in_use"])

    if run_repeats:
      stage = "inputs"
      args = jax.block_until_ready(make_args())
      if method == "peak":
        before = device.memory_stats()
        row["baseline_bytes"] = int(before["bytes_in_use"])
        row["peak_before_bytes"] = int(before["peak_bytes_in_use"])
      stage = "run"
      timing = reports.time_fn(
        compiled,
        args,
        repeats=run_repeats,
        time_budget_s=time_budget_s,
        thread_output=thread_output,
      )
      del args
      row.update(time_ms=timing.median_ms, times_ms=timing.times_ms)
      if method == "peak":
        row["peak_bytes"] = int(device.memory_stats()["peak_bytes_in_use"])
        # If setting up the inputs peaked higher than the run did, the run's own peak is hidden:
        # the number is then only an upper bound, and says so.
        row["peak_hidden"] = row["peak_bytes"] <= row["peak_before_bytes"]
      del timing
    row["memory_bytes"] = (
      row["peak_bytes"] - row["baseline_bytes"] if method == "peak" else row.get("compiled_bytes")
    )
    row["status"] = "ok"
  except Exception as e:  # pylint: disable=broad-except
    if reports.is_oom(e):
      row["status"] = "OOM"
    elif isinstance(e, ValueError) and "is not available" in str(e):
      row["status"] = "unsupported: " + str(e).split(": ", 1)[-1]
    else:
      row["status"] = f"failed: {type(e).__name__}"
    row["stage"] = stage
    row["error"] = str(e)[:2000]
  return row


def main():
  """The worker: reads measure's keyword arguments (one JSON line) on stdin, prints one result.

  The imports are done before the configuration arrives, and none of them opens a device, so
  the sweep can start the next worker while the current one measures.
  """
  line = sys.stdin.readline()
  if not line.strip():
    return  # Closed without work: the sweep ended.
  row = measure(**json.loads(line))
  print(RESULT_MARKER + json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
