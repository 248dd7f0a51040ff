"""Sliding-window causal attention as Pallas kernels (Triton lowering on GPU): the entry point.

`pallas_attention` pads the inputs to whole blocks and checks the tiles; the kernels themselves
(forward, dQ, dK/dV and their custom VJP) are in swa/pallas_kernels.py. This module holds what a
caller tunes: the tiles (`BlockSizes`, `default_block_sizes`) and where `auto` prefers the kernels
(`auto_when`, from bench_attention.py's measurements).

Any length and head dim: the sequence is padded at the end to whole blocks (padded keys come after
every real query, so causality hides them); head dims are zero-padded to a power of two >= 16
(Triton's smallest dot). With `BlockSizes.one_loop` (the default for w <= 512) each program runs
one loop that masks every block, which Triton pipelines better when the edge and interior loops
would hold a block or two each. Off GPU the kernels run in Pallas interpret mode (slow: tests at
small shapes). bench_attention.py times them against cuDNN.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from swa import pallas_kernels

_MIN_BLOCK = 16  # Triton's smallest dot operand dimension
# `auto` picks these kernels over cuDNN on a GPU for windows up to this (0: never), the rule
# bench_attention.py's GPU run decides: the largest w at which they beat cuDNN forward and fwd+bwd at
# every measured n. results/attention_bench_h200/ gives 0: their fwd+bwd beats cuDNN only at w = 128
# (1.28x cuDNN's speed at 16k, 1.18x at 64k), and their forward loses at 64k/128 (1.03x the time).
AUTO_MAX_WINDOW = 0
# Where `auto` runs "cudnn_pallas" instead (cuDNN's forward when a call is not differentiated, these
# kernels' forward and backward when it is), for windows up to this: the largest w at which their
# fwd+bwd beat cuDNN's at every measured n. results/attention_bench_h200/ gives 128 (1.28x cuDNN's
# speed at 16k, 1.18x at 64k; at w = 512 0.93x and 0.89x).
AUTO_TRAIN_MAX_WINDOW = 128


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles (powers of two >= 16), loop form and Triton launch parameters of the three kernels.

  Written "fwd_q x fwd_k / dq_q x dq_k / dkv_q x dkv_k / w warps s stages / bwd w warps s stages",
  e.g. "128x64/128x32/32x128/w4s3/w8s2", with "/1loop" appended for one_loop (`parse` reads it
  back).
  """

  block_q: int = 128  # forward: queries per program
  block_k: int = 64  # forward: keys per loop step
  block_q_dq: int = 128  # dQ pass: queries per program
  block_k_dq: int = 32  # dQ pass: keys per loop step
  block_q_dkv: int = 32  # dK/dV pass: queries per loop step
  block_k_dkv: int = 128  # dK/dV pass: keys per program
  num_warps: int = 4
  num_stages: int = 3
  num_warps_bwd: int = 8
  num_stages_bwd: int = 2
  one_loop: bool = False  # one masked loop per program instead of edges + unmasked interior

  def blocks(self):
    return (
      self.block_q,
      self.block_k,
      self.block_q_dq,
      self.block_k_dq,
      self.block_q_dkv,
      self.block_k_dkv,
    )

  def __str__(self):
    b = self.blocks()
    return (
      f"{b[0]}x{b[1]}/{b[2]}x{b[3]}/{b[4]}x{b[5]}/w{self.num_warps}s{self.num_stages}/"
      f"w{self.num_warps_bwd}s{self.num_stages_bwd}" + ("/1loop" if self.one_loop else "")
    )

  def validate(self):
    """Returns self; a one-line ValueError unless every tile is a power of two >= 16."""
    if any(size < _MIN_BLOCK or size & (size - 1) for size in self.blocks()):
      raise ValueError(f"pallas block sizes must be powers of two >= {_MIN_BLOCK}, got {self}.")
    return self

  @classmethod
  def parse(cls, text):
    """BlockSizes from its string form (see the class docstring)."""
    body, one_loop = (text[: -len("/1loop")], True) if text.endswith("/1loop") else (text, False)
    numbers = re.split(r"x|/w|/|s", body)
    if len(numbers) != 10 or not all(n.strip().isdigit() for n in numbers):
      raise ValueError(
        "pallas block sizes look like '128x64/128x32/32x128/w4s3/w8s2' (optionally + '/1loop'), "
        f"got {text!r}."
      )
    return cls(*map(int, numbers), one_loop=one_loop)


def default_block_sizes(window_size):
  """Tiles for every window: 64x64 forward, 64x32 dQ, 32x64 dK/dV, 4 warps, 3 stages; one masked
  loop per program for w <= 512 (window None: full attention, split loops).

  On one H200 (results/attention_bench_h200/, bf16, 16 heads of 128) these small tiles beat
  128-query tiles, more stages and 8 warps in every measured (n, w), n = 16k and 64k, w = 128, 512,
  4096. A query tile of Cq queries with key tiles of Ck reads about w + Cq + Ck keys, of which
  each query uses w, so small tiles waste less of the band's edges. One loop (kernel_traces/)
  took the three kernels' device time from 0.57 to 0.51 ms at 16k/128 and 2.16 to 1.92 ms at
  64k/128, was even at w = 512 (0.99 / 0.98 ms, 3.86 / 3.80 ms) and lost at w = 4096 (4.48 / 4.85
  ms, 19.6 / 20.8 ms), where the unmasked interior is most of the band.
  """
  one_loop = window_size is not None and window_size <= 512
  return BlockSizes(64, 64, 64, 32, 32, 64, 4, 3, 4, 3, one_loop=one_loop)


def _pow2_at_least(x, floor=_MIN_BLOCK):
  return max(floor, 1 << max(0, int(x) - 1).bit_length())


def unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Why the kernels cannot take these inputs (a registry `check`), or None."""
  del v_BSKD, window_size
  if k_BSKH.shape[1] != q_BTNH.shape[1]:
    return f"it needs self-attention (S == T), got T={q_BTNH.shape[1]}, S={k_BSKH.shape[1]}"
  return None


def auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=None):
  """Where `auto` prefers these kernels to cuDNN: GPU, 16-bit inputs, w <= AUTO_MAX_WINDOW.

  (Float32 inputs would run the kernels' dots in TF32: auto leaves them to chunked.)
  max_window replaces AUTO_MAX_WINDOW (auto_train_when passes AUTO_TRAIN_MAX_WINDOW).
  """
  del k_BSKH, v_BSKD
  return (
    jax.default_backend() == "gpu"
    and q_BTNH.dtype in (jnp.bfloat16, jnp.float16)
    and window_size is not None
    and window_size <= (AUTO_MAX_WINDOW if max_window is None else max_window)
  )


def auto_train_when(q_BTNH, k_BSKH, v_BSKD, window_size):
  """Where `auto` prefers "cudnn_pallas" to cuDNN: as auto_when, w <= AUTO_TRAIN_MAX_WINDOW."""
  return auto_when(q_BTNH, k_BSKH, v_BSKD, window_size, max_window=AUTO_TRAIN_MAX_WINDOW)


def pallas_attention(
  q_BTNH,
  k_BSKH,
  v_BSKD,
  window_size,
  scale,
  *,
  num_sinks=0,
  sink_logits=None,
  segment_ids=None,
  k_segment_ids=None,
  block_sizes=None,
  interpret=None,
):
  """Sliding-window causal attention: query t sees keys t - w + 1 ... t (and 0 ... num_sinks - 1).

  Args:
    q_BTNH: [B, T, N, H] queries.
    k_BSKH: [B, T, K, H] keys (self-attention: S == T); N % K == 0.
    v_BSKD: [B, T, K, D] values.
    window_size: w >= 1, or None for full causal attention.
    scale: logit scale (a Python number).
    num_sinks: attention sinks, a Python int >= 0: keys 0 ... num_sinks - 1 stay visible to every
      later query. The query blocks past a window still visit the sinks' key blocks (the forward
      and dQ kernels loop over them first), and the dK/dV programs of those blocks visit every
      later query block.
    sink_logits: optional float [N], learned sinks: the forward's running max and sum start at
      each head's sink; its gradient comes from the saved log-sum-exp.
    segment_ids: optional int [B, T] segment ids (packed sequences): a query sees only keys of
      its own segment; every block is then masked (one loop).
    k_segment_ids: optional int [B, T], the keys' segment ids; default segment_ids.
    block_sizes: a BlockSizes (or its string form); default `default_block_sizes(window_size)`.
      Tiles longer than the (power-of-two-rounded) sequence are shrunk to it.
    interpret: run the kernels in Pallas interpret mode; default: off GPU.

  Returns:
    [B, T, N, D] in q's dtype; differentiable (custom VJP: the dQ and dK/dV kernels).
  """
  (_, T, N, H), (K, D) = q_BTNH.shape, v_BSKD.shape[2:]
  reason = unsupported_reason(q_BTNH, k_BSKH, v_BSKD, window_size)
  if reason:
    raise ValueError(f"implementation='pallas' is not available: {reason}.")
  if not isinstance(num_sinks, (int, np.integer)) or isinstance(num_sinks, bool) or num_sinks < 0:
    raise ValueError(
      f"implementation='pallas' takes num_sinks as a Python int >= 0 (its loops are laid out at "
      f"trace time), got {num_sinks!r}."
    )
  if isinstance(block_sizes, str):
    block_sizes = BlockSizes.parse(block_sizes)
  blocks = (block_sizes or default_block_sizes(window_size)).validate()
  cap = _pow2_at_least(T)
  blocks = dataclasses.replace(
    blocks,
    **{
      f.name: min(getattr(blocks, f.name), cap)
      for f in dataclasses.fields(BlockSizes)
      if f.name.startswith("block_")
    },
  )
  segments = segment_ids is not None
  if segments:  # no block is known to be whole: mask every one
    blocks = dataclasses.replace(blocks, one_loop=True)
  T_pad = -(-T // max(blocks.blocks())) * max(blocks.blocks())
  H_pad, D_pad = _pow2_at_least(H), _pow2_at_least(D)
  pad = lambda x, dim, dim_pad: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, dim_pad - dim)))
  window = T_pad if window_size is None else min(window_size, T_pad)
  interpret = jax.default_backend() != "gpu" if interpret is None else interpret
  st = pallas_kernels.Static(
    window=int(window),
    num_sinks=0 if window_size is None else int(min(num_sinks, T_pad)),
    scale=float(scale),
    groups=N // K,
    blocks=blocks,
    interpret=bool(interpret),
    sink_logits=sink_logits is not None,
    segments=segments,
  )
  sink_N = None if sink_logits is None else jnp.asarray(sink_logits, jnp.float32)
  q_seg = k_seg = None
  if segments:  # padded queries and keys share one id: each padded query sees itself
    k_segment_ids = segment_ids if k_segment_ids is None else k_segment_ids
    pad_seg = lambda x: jnp.pad(
      jnp.asarray(x, jnp.int32), ((0, 0), (0, T_pad - T)), constant_values=-1
    )
    q_seg, k_seg = pad_seg(segment_ids), pad_seg(k_segment_ids)
  out = pallas_kernels.attend(
    pad(q_BTNH, H, H_pad), pad(k_BSKH, H, H_pad), pad(v_BSKD, D, D_pad), sink_N, q_seg, k_seg, st
  )
  return out[:, :T, :, :D]
