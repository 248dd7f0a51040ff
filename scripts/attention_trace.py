"""Where one attention call's time goes: a jax.profiler trace of fwd+bwd per implementation.

  python -m scripts.attention_trace --n=16384,65536 --window=128,4096 --impls=cudnn,pallas
  python -m scripts.attention_trace --impls=pallas --pallas_blocks=default,64x64/64x64/64x64/w4s3/w4s3

Times nothing itself (bench_attention.py does); for every (n, w) traces --steps calls of the
gradient of each implementation (bf16, B=1, --heads heads of --head_dim; each pallas tile setting
of --pallas_blocks in turn) and prints, per device, the kernels that took the most time per call:
for pallas its forward, dQ and dK/dV kernels (swa_fwd_kernel, swa_dq_kernel, swa_dkv_kernel), for
cudnn its fused forward and backward, for chunked XLA's fusions and products.
"""

import tempfile

import jax
import jax.numpy as jnp
from absl import flags

from swa import attention, cli, pallas_attention
from swa.profiling import trace

_N = flags.DEFINE_list("n", ["16384"], "Sequence lengths.")
_WINDOW = flags.DEFINE_list("window", ["512"], "Windows w.")
_IMPLS = flags.DEFINE_list("impls", ["cudnn", "pallas"], "Implementations to trace.")
_PALLAS_BLOCKS = flags.DEFINE_list(
  "pallas_blocks", ["default"], "pallas tile settings (BlockSizes strings), one trace each."
)
_HEADS = flags.DEFINE_integer("heads", 16, "Heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dim.")
_STEPS = flags.DEFINE_integer("steps", 5, "Traced calls per implementation.")
_TOP = flags.DEFINE_integer("top", 8, "Kernels listed per trace.")


def _runs(window):
  """(label, implementation, options) of every trace at one window."""
  for impl in _IMPLS.value:
    if impl != "pallas":
      yield impl, impl, {}
      continue
    for text in _PALLAS_BLOCKS.value:
      blocks = pallas_attention.default_block_sizes(window) if text == "default" else text
      blocks = pallas_attention.BlockSizes.parse(str(blocks))
      yield f"pallas {blocks}", impl, dict(block_sizes=blocks)


def main(argv):
  del argv
  for n in map(int, _N.value):
    for window in map(int, _WINDOW.value):
      shape = (1, n, _HEADS.value, _HEAD_DIM.value)
      q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, *shape), jnp.bfloat16)
      for label, impl, options in _runs(window):
        loss = lambda q, k, v, impl=impl, options=options: jnp.sum(
          attention.sliding_window_attention(
            q, k, v, window, implementation=impl, **options
          ).astype(jnp.float32)
        )
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        jax.block_until_ready(step(q, k, v))  # Compile outside the trace.
        with tempfile.TemporaryDirectory() as folder:
          recorded = trace.trace(lambda: jax.block_until_ready(step(q, k, v)), _STEPS.value, folder)
        print(f"== {label}: n={n} w={window} {shape} bf16, fwd+bwd", flush=True)
        print("\n".join(trace.summarize_trace(recorded, _STEPS.value, top=_TOP.value)), flush=True)
      jax.clear_caches()


if __name__ == "__main__":
  cli.run(main)
