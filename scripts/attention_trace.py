"""Where one attention call's time goes: a jax.profiler trace of fwd+bwd per implementation.

  python -m scripts.attention_trace --n=16384 --window=512 --impls=cudnn,pallas

Times nothing itself (bench_attention.py does); traces --steps calls of the forward and the
gradient of each implementation (bf16, B=1, --heads heads of --head_dim) and prints, per device,
the kernels that took the most time per call: for pallas its forward, dQ and dK/dV kernels, for
cudnn its fused forward and backward.
"""

import tempfile

import jax
import jax.numpy as jnp
from absl import flags

from swa import attention, cli
from swa.profiling import trace

_N = flags.DEFINE_integer("n", 16384, "Sequence length.")
_WINDOW = flags.DEFINE_integer("window", 512, "Window w.")
_IMPLS = flags.DEFINE_list("impls", ["cudnn", "pallas"], "Implementations to trace.")
_HEADS = flags.DEFINE_integer("heads", 16, "Heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dim.")
_STEPS = flags.DEFINE_integer("steps", 5, "Traced calls per implementation.")


def main(argv):
  del argv
  shape = (1, _N.value, _HEADS.value, _HEAD_DIM.value)
  q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, *shape), jnp.bfloat16)
  for impl in _IMPLS.value:
    loss = lambda q, k, v: jnp.sum(
      attention.sliding_window_attention(q, k, v, _WINDOW.value, implementation=impl).astype(
        jnp.float32
      )
    )
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(step(q, k, v))  # Compile outside the trace.
    with tempfile.TemporaryDirectory() as folder:
      recorded = trace.trace(lambda: jax.block_until_ready(step(q, k, v)), _STEPS.value, folder)
    print(f"== {impl}: n={_N.value} w={_WINDOW.value} {shape} bf16, fwd+bwd", flush=True)
    print("\n".join(trace.summarize_trace(recorded, _STEPS.value, top=8)), flush=True)


if __name__ == "__main__":
  cli.run(main)
