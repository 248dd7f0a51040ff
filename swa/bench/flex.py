"""torch FlexAttention on the same card as the benchmark's JAX rows: the peer row."""

import math
import os
import statistics
import time

import jax.numpy as jnp


class Flex:
  """torch FlexAttention on the same card, inputs shared with JAX through DLPack.

  Raises (on construction) if torch, FlexAttention or a CUDA device is missing.
  """

  def __init__(self):
    # Compile in this process, not in a pool of worker processes. On the H200 machine
    # (results/attention_bench_h200/) the first FlexAttention compile took 3-4 minutes this way;
    # two runs with the pool had not finished it after 135 s and 170 s (slow or stuck: not known).
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    import torch  # pylint: disable=g-import-not-at-top
    from torch.nn.attention import flex_attention as fa  # pylint: disable=g-import-not-at-top

    if not torch.cuda.is_available():
      raise RuntimeError("torch sees no CUDA device")
    self.torch, self.fa = torch, fa
    self.attend = torch.compile(fa.flex_attention, dynamic=False)
    # Compiled, so the mask is built block by block (eager would materialize n x n at 64k).
    self.create_block_mask = torch.compile(fa.create_block_mask)
    # The window is a captured tensor, so a new w changes neither mask_mod nor the kernel: no
    # recompilation per window.
    self.window = torch.zeros((), dtype=torch.int32, device="cuda")
    self.mask_mod = lambda b, h, qi, ki: (qi >= ki) & (qi - ki < self.window)

  def functions(self, q, k, v, dout, w):
    """(fwd, fwd_bwd) thunks on JAX inputs (q, dout [B, n, N, H], k, v [B, n, K, H]): the output,
    and the grads of q, k, v."""
    torch, n = self.torch, q.shape[1]
    self.window.fill_(w)
    block_mask = self.create_block_mask(
      self.mask_mod,
      B=None,
      H=None,
      Q_LEN=n,
      KV_LEN=n,
      device="cuda",
    )
    to_t = lambda x: torch.from_dlpack(x).permute(0, 2, 1, 3).contiguous()  # [B, N, n, H]
    qt, kt, vt, dt = map(to_t, (q, k, v, dout))
    scale = 1.0 / math.sqrt(q.shape[-1])
    gqa = dict(enable_gqa=True) if k.shape[2] != q.shape[2] else {}  # fewer key/value heads
    fwd = lambda: self.attend(qt, kt, vt, block_mask=block_mask, scale=scale, **gqa)

    def fwd_bwd():
      leaves = [x.detach().requires_grad_() for x in (qt, kt, vt)]
      out = self.attend(*leaves, block_mask=block_mask, scale=scale, **gqa)
      return torch.autograd.grad(out, leaves, dt)

    return fwd, fwd_bwd

  def time(self, fn, *, repeats, warmup, calls_per_sample=1, check_only=False):
    """(median ms, all ms, first call s, first output) of fn(), timed with CUDA events.

    Args:
      fn: a thunk of `functions`.
      repeats: timed samples.
      warmup: untimed calls, the first (compiling) one included.
      calls_per_sample: calls between a sample's two events (the time is per call), as the JAX
        rows' reports.time_fn samples them.
      check_only: one call, nothing timed (median None, no times).
    """
    torch = self.torch
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    if check_only:
      return None, [], first_s, out
    for _ in range(warmup - 1):
      fn()
    times = []
    for _ in range(repeats):
      begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      begin.record()
      for _ in range(calls_per_sample):
        fn()
      end.record()
      end.synchronize()
      times.append(begin.elapsed_time(end) / calls_per_sample)
    return statistics.median(times), times, first_s, out

  def to_jax(self, x):
    """A [B, N, n, H] torch tensor as a [B, n, N, H] JAX array."""
    return jnp.from_dlpack(x.detach().permute(0, 2, 1, 3).contiguous())
