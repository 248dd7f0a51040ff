"""Device memory and time of full against sliding-window attention, alone and in a training step.

One *configuration* is (kind, implementation, n, window):
  attention_fwd     sliding_window_attention(q, k, v) on [B, n, N, H] inputs;
  attention_fwdbwd  its gradient with respect to q, k, v of sum(out * dout);
  train_step        one optimiser step (swa.train_lib.train_step) of the configs/base.py LM
                    on a batch of B sequences of n tokens.

`measure` runs one configuration in the current process. Its memory is *net of the inputs*:
  peak      (GPU) the allocator's peak_bytes_in_use after the call minus the bytes in use just
            before it (inputs, parameters and optimiser state already on the device). A process's
            peak can never be reset, so each configuration needs a fresh process.
  compiled  (anywhere) XLA's own plan for the compiled program, `memory_analysis()`: temporary
            buffers plus outputs that do not reuse a donated input. It is what the program asks
            for, not what the allocator saw; on CPU it is the only number there is.
The time is the median over a few runs after a warm-up run (compilation excluded), each ended
by `block_until_ready`.

swa/profiling_sweep.py runs a sweep of configurations, each in its own subprocess through this
module's `main` (`python -m swa.profiling --worker` reads measure's arguments as JSON on stdin).
swa/profiling_report.py turns the rows into results/memory.* (markdown, CSV, plot). One
configuration by hand:

  python -m swa.profiling --json '{"kind": "train_step", "impl": "chunked", "seq_len": 4096,
                                   "window": 512}'

"""

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from swa import attention, data, train_lib

KINDS = ("attention_fwd", "attention_fwdbwd", "train_step")
METHODS = ("auto", "peak", "compiled")

# Variant name -> (implementation, windowed?). Full attention is window None.
VARIANTS = {
    "full_reference": ("reference", False),
    "full_cudnn": ("cudnn", False),
    "sliding_chunked": ("chunked", True),
    "sliding_cudnn": ("cudnn", True),
}
VARIANT_LABELS = {
    "full_reference": "full (reference)",
    "full_cudnn": "full (cuDNN)",
    "sliding_chunked": "sliding (chunked)",
    "sliding_cudnn": "sliding (cuDNN)",
}
# Prefix of the one stdout line that carries a worker's result (main, profiling_sweep).
RESULT_MARKER = "SWA_PROFILE_RESULT "


def is_oom(error):
  """Whether an exception (or its message) says the device ran out of memory."""
  msg = str(error)
  return "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()


def sort_rows(rows):
  """Rows (dicts with kind, variant, seq_len) in report order: by kind, variant, then n."""
  order = {k: i for i, k in enumerate(KINDS + tuple(VARIANTS))}
  return sorted(rows, key=lambda r: (order[r["kind"]], order[r["variant"]], r["seq_len"]))


# ----------------------------------------------------------------------------------------------
# One configuration, in this process.
# ----------------------------------------------------------------------------------------------


def train_config(seq_len, window_size, implementation, *, dtype="bfloat16", remat=False,
                 blocks_per_step=None, block_size=None, batch_size=1):
  """The configs/base.py experiment with the LM's window, attention and size overridden."""
  # configs/ sits beside swa/ at the repository root, which every entry point runs from.
  from configs import base  # pylint: disable=g-import-not-at-top

  config = base.get_config()
  config.model.window_size = window_size
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
          x, jax.random.normal(key, (shape[0], chunk) + tuple(shape[2:]), dtype), start, axis=1),
      donate_argnums=0)
  x = jnp.zeros(shape, dtype)
  for i, start in enumerate(range(0, shape[1], chunk)):
    x = fill(x, jax.random.fold_in(key, i), min(start, shape[1] - chunk))
  return x


def _attention_program(kind, implementation, window_size, block_size, blocks_per_step):
  """(function, number of [B, n, N, H] inputs) for an attention kind."""

  attend = functools.partial(
      attention.sliding_window_attention, window_size=window_size, implementation=implementation,
      block_size=block_size, blocks_per_step=blocks_per_step)
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
  out["compiled_bytes"] = (out["compiled_temp_bytes"] + out["compiled_output_bytes"]
                           - out["compiled_alias_bytes"])
  return out


def _time_runs(run, args, repeats, time_budget_s, thread_output):
  """Warm-up run, then up to `repeats` timed runs (fewer once time_budget_s is spent).

  `thread_output(args, out)` gives the next call's arguments (a train step's new state replaces
  its donated old one). Returns (every timed run in ms, the last arguments).
  """
  args = thread_output(args, jax.block_until_ready(run(*args)))
  times_ms = []
  while len(times_ms) < repeats and sum(times_ms) < 1e3 * time_budget_s:
    start = time.perf_counter()
    out = jax.block_until_ready(run(*args))
    times_ms.append(1e3 * (time.perf_counter() - start))
    args = thread_output(args, out)
    del out
  return times_ms, args


def measure(kind, impl, seq_len, window, *, method="auto", dtype=None, batch=1, heads=16,
            head_dim=128, block_size=None, blocks_per_step=None, remat=False, repeats=5,
            time_budget_s=1.0, seed=0):
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
      train step uses `batch` sequences and the configs/base.py model.
    block_size, blocks_per_step: chunked attention's query block and loop group.
    remat: train_step only: recompute each block in the backward pass.
    repeats: timed runs after a warm-up; 0 = memory only (nothing is allocated or run with
      method "compiled").
    time_budget_s: stop timing once the timed runs add up to this.
    seed: input randomness.

  Returns:
    A flat dict: the configuration, `status` ("ok", "OOM", "unsupported: ..." or
    "failed: ..."), `method`, `memory_bytes` (net of the inputs, by `method`), `time_ms`
    (median), the compiled plan (`compiled_*`) and, for "peak", the allocator's numbers.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  has_peak = "peak_bytes_in_use" in stats
  if method == "auto":
    method = "peak" if has_peak else "compiled"
  if method == "peak" and not has_peak:
    raise ValueError(f"method='peak' needs a device that reports peak_bytes_in_use; "
                     f"{device.device_kind} ({jax.default_backend()}) does not.")
  dtype = dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32")
  row = dict(kind=kind, impl=impl, seq_len=int(seq_len), window=window, method=method,
             dtype=str(dtype), batch=batch, block_size=block_size,
             blocks_per_step=blocks_per_step, device=device.device_kind,
             backend=jax.default_backend(), jax_version=jax.__version__,
             bytes_limit=stats.get("bytes_limit"))
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
      config = train_config(seq_len, window, impl, dtype=str(dtype), remat=remat,
                            blocks_per_step=blocks_per_step, block_size=block_size,
                            batch_size=batch)
      graphdef, params = train_lib.create_model(config)
      optimizer = train_lib.create_optimizer(config)
      state = train_lib.init_state(params, optimizer)
      token_shape = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
      batch_shapes = {"inputs": token_shape, "targets": token_shape,
                      "answer_mask": jax.ShapeDtypeStruct((batch, seq_len), jnp.float32)}
      compiled = train_lib.train_step.lower(
          state, batch_shapes, graphdef=graphdef, optimizer=optimizer,
          lm_weight=float(config.data.lm_weight)).compile()
      row["num_params"] = int(sum(x.size for x in jax.tree.leaves(params)))

      def make_args():
        k_in, k_out = jax.random.split(key)
        tokens = lambda k: jax.random.randint(k, (batch, seq_len), 1, config.model.vocab_size)
        mask = jnp.zeros((batch, seq_len), jnp.float32).at[:, -data.ANSWER_LEN:].set(1.0)
        return state, {"inputs": tokens(k_in), "targets": tokens(k_out), "answer_mask": mask}
      thread_output = lambda args, out: (out[0], args[1])
    else:
      fn, num_inputs = _attention_program(kind, impl, window, block_size, blocks_per_step)
      shape = (batch, seq_len, heads, head_dim)
      compiled = jax.jit(fn).lower(
          *[jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))] * num_inputs).compile()

      def make_args():
        return tuple(_random_normal(k, shape, jnp.dtype(dtype))
                     for k in jax.random.split(key, num_inputs))
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
      times_ms, args = _time_runs(compiled, args, run_repeats, time_budget_s, thread_output)
      row.update(time_ms=statistics.median(times_ms), times_ms=times_ms)
      if method == "peak":
        row["peak_bytes"] = int(device.memory_stats()["peak_bytes_in_use"])
        # If setting up the inputs peaked higher than the run did, the run's own peak is hidden:
        # the number is then only an upper bound, and says so.
        row["peak_hidden"] = row["peak_bytes"] <= row["peak_before_bytes"]
      del args
    row["memory_bytes"] = (row["peak_bytes"] - row["baseline_bytes"] if method == "peak"
                           else row.get("compiled_bytes"))
    row["status"] = "ok"
  except Exception as e:  # pylint: disable=broad-except
    if is_oom(e):
      row["status"] = "OOM"
    elif isinstance(e, ValueError) and "is not available" in str(e):
      row["status"] = "unsupported: " + str(e).split(": ", 1)[-1]
    else:
      row["status"] = f"failed: {type(e).__name__}"
    row["stage"] = stage
    row["error"] = str(e)[:2000]
  return row


# ----------------------------------------------------------------------------------------------
# One row as text: the sweep's progress lines here, the tables in swa/profiling_report.py.
# ----------------------------------------------------------------------------------------------


def format_bytes(b):
  """1536 -> "1.5 KiB"; None -> "—"."""
  if b is None:
    return "—"
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(b) >= size:
      return f"{b / size:.3g} {unit}"
  return f"{b} B"


def format_ms(ms):
  """Milliseconds as "12.3 ms" or, from one second on, "4.56 s"; None -> "—"."""
  if ms is None:
    return "—"
  return f"{ms / 1e3:.3g} s" if ms >= 1e3 else f"{ms:.3g} ms"


def describe(row):
  """One cell's text: the memory, or why there is none."""
  status = row.get("status", "")
  if status == "ok":
    text = format_bytes(row.get("memory_bytes"))
    return ("≤ " + text) if row.get("peak_hidden") else text
  if status.startswith("skipped"):
    return "skip"
  if status.startswith("n/a") or status.startswith("unsupported"):
    return "n/a"
  return status.split(":")[0]


def main(argv=None):
  """Measures one configuration, given as JSON (the keyword arguments of `measure`) by --json
  or, with --worker, on stdin after the imports are done; prints one result line."""
  parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
  parser.add_argument("--json", help="keyword arguments of measure, as JSON")
  parser.add_argument("--worker", action="store_true", help="import first, then read the JSON "
                      "from stdin")
  args = parser.parse_args(argv)
  if args.worker == bool(args.json):
    parser.error("give exactly one of --json and --worker")
  if args.worker:
    # The imports are done (jax, swa, and here configs) before the configuration arrives;
    # none of them opens a device.
    from configs import base  # pylint: disable=g-import-not-at-top,unused-import
    line = sys.stdin.readline()
    if not line.strip():
      return  # Closed without work: the sweep ended.
    spec = json.loads(line)
  else:
    spec = json.loads(args.json)
  row = measure(**spec)
  print(RESULT_MARKER + json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
