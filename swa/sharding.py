"""Data and sequence (context) parallelism over a device mesh.

The mesh has two named axes: "data" splits the batch, "seq" splits the sequence.
Everything outside attention is position-wise, so jit over inputs sharded with
`shard_batch` parallelises it on its own (XLA inserts the gradient all-reduce
over "data"). Attention is the one op that mixes positions; with a window w the
query at position p needs only keys p-w+1 .. p, so when the sequence is split
into P shards of L = n/P tokens, a shard needs only the w-1 keys and values just
before it -- a halo -- from its left neighbour(s), never the whole sequence:

  shard i:   [ halo: w-1 rows of shards i-1, i-2, ... ][ local: L rows ]
  queries:                                             [ local: L rows ]

Importing this module registers the attention implementation "sequence_parallel"
(swa/attention.py): it gathers the halo with `jax.lax.ppermute` inside
`jax.shard_map` (a window longer than a shard takes rows from ceil((w-1)/L)
neighbours, one ppermute per hop) and calls `sliding_window_attention` on each
shard with q_offset = i * L: the keys [halo; local] end where the queries end,
and halo rows before position 0 are padding by the one mask rule. The transpose
of a ppermute is the reverse ppermute, so the backward pass sends the halo's key
and value gradients back to the shards they came from: gradients are exact.
`sequence_parallel(mesh)` gives the model (and the trainer) that choice as an
attention function.

Multi-host: `maybe_initialize_distributed()` before anything touches a device;
keep "seq" inside a host (the last mesh axis varies fastest) and "data" across.
"""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from swa import attention

DATA_AXIS, SEQ_AXIS = "data", "seq"
AXES = (DATA_AXIS, SEQ_AXIS)


# --------------------------------------------------------------------------- mesh


def parse_mesh_spec(spec):
  """Axis sizes from a string such as "data:-1,seq:2".

  Args:
    spec: comma-separated `axis:size` pairs, axes from ("data", "seq") in mesh
      order (outer first); a size of -1 (at most one) takes the devices left
      over. An axis not named has size 1; the empty string means "data:1,seq:1".

  Returns:
    A tuple of (axis name, size) pairs naming both axes, sizes -1 unresolved.
  """
  if not isinstance(spec, str):
    raise ValueError(f"mesh must be a string such as 'data:-1,seq:1', got {spec!r}.")
  sizes = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, size = part.partition(":")
    name = name.strip()
    if name not in AXES or name in sizes:
      raise ValueError(
        f"mesh {spec!r}: each axis must be one of {AXES} and appear at most once, got {name!r}."
      )
    try:
      sizes[name] = int(size)
    except ValueError:
      raise ValueError(
        f"mesh {spec!r}: the size of {name!r} must be an integer, got {size.strip()!r}."
      ) from None
    if sizes[name] < 1 and sizes[name] != -1:
      raise ValueError(f"mesh {spec!r}: sizes must be >= 1 or -1 (the rest), got {sizes[name]}.")
  if list(sizes.values()).count(-1) > 1:
    raise ValueError(f"mesh {spec!r}: at most one axis may have size -1.")
  return tuple(sizes.items()) + tuple((a, 1) for a in AXES if a not in sizes)


def make_mesh(spec="data:1,seq:1", devices=None):
  """A `jax.sharding.Mesh` with axes "data" and "seq" from a spec string.

  Args:
    spec: see `parse_mesh_spec`, e.g. "data:-1" (data parallel over all
      devices), "data:2,seq:4", "seq:8". A Mesh is returned unchanged.
    devices: the devices to use; default `jax.devices()` (all hosts). A
      single-process mesh may use the first prod(sizes) of them; a
      multi-process one must use all.

  Returns:
    A Mesh with both axes (size 1 where not asked for), axis types Auto so that
    jit partitions whatever is not inside `shard_map`.
  """
  if isinstance(spec, jax.sharding.Mesh):
    return spec
  axes = parse_mesh_spec(spec)
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = [a for a, _ in axes], [s for _, s in axes]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
        f"mesh {spec!r}: {len(devices)} devices do not split into axes of known size {known}."
      )
    sizes[sizes.index(-1)] = len(devices) // known
  count = math.prod(sizes)
  if count > len(devices) or (jax.process_count() > 1 and count != len(devices)):
    raise ValueError(
      f"mesh {spec!r} needs {count} devices; there are {len(devices)}"
      + (" (a multi-process mesh must use all of them)." if jax.process_count() > 1 else ".")
    )
  axis_types = (jax.sharding.AxisType.Auto,) * len(names)
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=axis_types, devices=devices[:count])


def is_sequence_parallel(mesh, seq_axis=SEQ_AXIS):
  """True when `mesh` splits the sequence over more than one device."""
  return mesh is not None and dict(mesh.shape).get(seq_axis, 1) > 1


# ------------------------------------------------------------- sequence parallel


def _halo_from_left(x_BLKX, halo, seq_axis, num_shards):
  """The `halo` rows just before this shard, gathered from the shards to its left.

  Hop j brings rows of shard i-j with one ppermute (all of them for j <
  ceil(halo/L), the last halo-(j-1)*L for the farthest), so each device sends
  and receives exactly `halo` rows. Shards with fewer than `halo` rows before
  them receive zeros for the rest (ppermute's value for a device no one sends
  to); those rows sit at negative positions and the attention mask drops them.

  Args:
    x_BLKX: this shard's rows [B, L, K, X].
    halo: rows wanted, 0 <= halo <= (num_shards - 1) * L.

  Returns:
    [B, halo, K, X], oldest row first.
  """
  L = x_BLKX.shape[1]
  pieces = []
  for hop in range(1, -(-halo // L) + 1):
    rows = min(L, halo - (hop - 1) * L)
    perm = [(src, src + hop) for src in range(num_shards - hop)]
    pieces.append(jax.lax.ppermute(x_BLKX[:, L - rows :], seq_axis, perm))
  if not pieces:
    return x_BLKX[:, :0]
  return jnp.concatenate(pieces[::-1], axis=1)


def halo_size(window_size, seq_len, num_shards):
  """Rows each shard needs from its left neighbours: min(w - 1, (P - 1) * n / P).

  A window of None (full attention) or one longer than the sequence needs the
  whole prefix, which for the last shard is (P - 1) * n / P rows: as much
  traffic as an all-gather. Sequence parallelism pays off when w - 1 << n / P.
  """
  w = seq_len if window_size is None else min(window_size, seq_len)
  return min(w - 1, (num_shards - 1) * (seq_len // num_shards))


def sequence_parallel_attention(
  q_BTNH,
  k_BTKH,
  v_BTKD,
  window_size,
  scale,
  *,
  mesh,
  seq_axis=SEQ_AXIS,
  data_axis=DATA_AXIS,
  local_implementation="auto",
  segment_ids=None,
  k_segment_ids=None,
  block_size=None,
  blocks_per_step=None,
):
  """Attention with the sequence split over the mesh axis `seq_axis`: "sequence_parallel".

  Called through `attention.sliding_window_attention(..., implementation="sequence_parallel",
  mesh=mesh)` (or the function `sequence_parallel(mesh)` returns), which validates the inputs.
  Each device holds n/P consecutive positions of q, k and v, receives the w-1 keys and values
  before them from its left neighbour(s) by ppermute (no all-gather), and attends its queries
  over [halo; local] (module docstring). Works under jit and grad, for any inputs (jit reshards
  them to the specs below if they are laid out differently).

  Args:
    q_BTNH: [B, T, N, H] queries (global view).
    k_BTKH: [B, T, K, H] keys.
    v_BTKD: [B, T, K, D] values.
    window_size: w >= 1, or None for full causal attention (then the halo is the whole
      prefix: correct, but no cheaper than an all-gather).
    scale: logit scale.
    mesh: a Mesh with axis `seq_axis` (and `data_axis` unless it is None).
    seq_axis: mesh axis the sequence is split over; T must be divisible by its size.
    data_axis: mesh axis the batch is split over, or None to replicate the batch; if B is not
      divisible by its size the batch is replicated.
    local_implementation: the per-shard implementation; it must support "tail_offsets" (cudnn,
      pallas, chunked, reference; "auto" picks as for one device; with segment ids: no cudnn).
    segment_ids, k_segment_ids: None, or int [B, T] ids (packed sequences); split like q, the
      halo's key ids travel with the halo.
    block_size, blocks_per_step: passed to the per-shard call.

  Returns:
    [B, T, N, D] in q's dtype, sharded like q.
  """
  if local_implementation not in attention.implementations() or not (
    local_implementation == "auto"
    or "tail_offsets" in attention.implementation_features(local_implementation)
  ):
    raise ValueError(
      "Sequence-parallel attention needs a local implementation with tail offsets, "
      f"e.g. 'cudnn', 'pallas', 'chunked' or 'auto'; got {local_implementation!r}."
    )
  axes = dict(mesh.shape)
  for name, axis in (("seq_axis", seq_axis), ("data_axis", data_axis)):
    if axis is not None and axis not in axes:
      raise ValueError(f"{name}={axis!r} is not an axis of the mesh {tuple(axes)}.")
  if k_BTKH.dtype != v_BTKD.dtype:
    raise ValueError(f"k and v must share a dtype, got {k_BTKH.dtype} and {v_BTKD.dtype}.")
  B, T = q_BTNH.shape[:2]
  P = axes[seq_axis]
  if T % P:
    raise ValueError(
      f"The sequence length {T} must be divisible by the mesh axis {seq_axis!r} of size {P}."
    )
  L = T // P
  halo = halo_size(window_size, T, P)
  batch_axis = data_axis if data_axis is not None and B % axes[data_axis] == 0 else None
  spec = PartitionSpec(batch_axis, seq_axis)
  H = k_BTKH.shape[-1]

  def per_shard(q_BLNH, k_BLKH, v_BLKD, *seg):
    # One ppermute per hop for keys and values together.
    kv_halo = _halo_from_left(jnp.concatenate([k_BLKH, v_BLKD], axis=-1), halo, seq_axis, P)
    k_BSKH = jnp.concatenate([kv_halo[..., :H], k_BLKH], axis=1)
    v_BSKD = jnp.concatenate([kv_halo[..., H:], v_BLKD], axis=1)
    segments = {}
    if seg:  # the halo keys' segment ids come from the same neighbours (halo rows < 0: masked)
      k_seg_BS = jnp.concatenate([_halo_from_left(seg[1], halo, seq_axis, P), seg[1]], 1)
      segments = dict(segment_ids=seg[0], k_segment_ids=k_seg_BS)
    return attention.sliding_window_attention(
      q_BLNH,
      k_BSKH,
      v_BSKD,
      window_size,
      implementation=local_implementation,
      scale=scale,
      q_offset=jax.lax.axis_index(seq_axis) * L,
      block_size=block_size,
      blocks_per_step=blocks_per_step,
      **segments,
    )

  seg = () if segment_ids is None else (segment_ids, k_segment_ids)
  # check_vma off: kernels (Pallas calls, cuDNN's custom call) do not declare how their outputs
  # vary over the mesh axes; the halo exchange has no collective whose transpose depends on it.
  return jax.shard_map(
    per_shard, mesh=mesh, in_specs=(spec,) * (3 + len(seg)), out_specs=spec, check_vma=False
  )(q_BTNH, k_BTKH, v_BTKD, *seg)


attention.register(
  "sequence_parallel",
  sequence_parallel_attention,
  features=("segment_ids", "block_size", "mesh", "seq_axis", "data_axis", "local_implementation"),
)


def sequence_parallel(mesh, *, local_implementation="auto", seq_axis=SEQ_AXIS, data_axis=DATA_AXIS):
  """The attention function of a model whose sequence is split over `mesh` (or None).

  Args:
    mesh: a Mesh; None, or one whose `seq_axis` has size 1, gives None (the model's own
      single-device attention).
    local_implementation: per-shard implementation, e.g. the config's model.attention; one
      without tail offsets (splash) gives way to "auto".
    seq_axis, data_axis: as in `sequence_parallel_attention`.

  Returns:
    None, or `attend(q, k, v, window_size, **kwargs)`: `sliding_window_attention` with
    implementation "sequence_parallel" on this mesh (for `model.Transformer(attention_fn=)`).
  """
  if not is_sequence_parallel(mesh, seq_axis):
    return None
  if local_implementation != "auto" and "tail_offsets" not in attention.implementation_features(
    local_implementation
  ):
    local_implementation = "auto"
  return functools.partial(
    attention.sliding_window_attention,
    implementation="sequence_parallel",
    mesh=mesh,
    seq_axis=seq_axis,
    data_axis=data_axis,
    local_implementation=local_implementation,
  )


# ----------------------------------------------------------------------- training


def batch_spec(ndim, *, data_axis=DATA_AXIS, seq_axis=SEQ_AXIS):
  """PartitionSpec of a batch array: axis 0 over `data_axis`, axis 1 (if any) over `seq_axis`."""
  return PartitionSpec(*((data_axis, seq_axis, *[None] * (ndim - 2))[:ndim]))


def _put(x, sharding):
  """Places the global array x under `sharding`.

  In a multi-process run every process passes the same x (e.g. a batch drawn from
  the same seed) and each of its devices takes its own slice, so any layout works,
  "seq" across hosts included.
  """
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_train_state(state, mesh):
  """The train state (or any pytree) replicated on every device of the mesh."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: _put(x, replicated), state)


def shard_batch(batch, mesh, *, data_axis=DATA_AXIS, seq_axis=SEQ_AXIS):
  """Each array of `batch` split: batch axis over "data", sequence axis over "seq".

  `batch` is the global batch; in a multi-process run every process passes the
  same one (the simplest way: the same data seed everywhere).
  """
  sizes = dict(mesh.shape)

  def put(x):
    x = np.asarray(x)
    for dim, axis in list(zip(x.shape, (data_axis, seq_axis)))[: x.ndim]:
      if dim % sizes[axis]:
        raise ValueError(
          f"A batch array of shape {x.shape} cannot be split over mesh axis "
          f"{axis!r} of size {sizes[axis]}: {dim} is not a multiple of it."
        )
    return _put(x, NamedSharding(mesh, batch_spec(x.ndim, data_axis=data_axis, seq_axis=seq_axis)))

  return jax.tree.map(put, batch)


# ----------------------------------------------------------------------- multi-host


def distributed_environment(environ=None):
  """The kind of multi-process launch the environment shows, or None for a single process.

  "explicit": JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID;
  "slurm": srun with SLURM_NTASKS > 1; "openmpi": mpirun with
  OMPI_COMM_WORLD_SIZE > 1; "tpu": a Cloud TPU slice of several hosts
  (TPU_WORKER_HOSTNAMES lists more than one).
  """
  env = os.environ if environ is None else environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "explicit"
  if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
    return "tpu"
  return None


def maybe_initialize_distributed(environ=None):
  """Calls `jax.distributed.initialize` when launched as one of several processes.

  Must run before anything touches a device. Does nothing (returns False) in a
  single-process run, so single-device behaviour is unchanged.

  Returns:
    True if it initialised JAX's distributed runtime.
  """
  env = os.environ if environ is None else environ
  kind = distributed_environment(env)
  if kind is None:
    return False
  if kind == "explicit":
    missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(v)]
    if missing:
      raise ValueError(
        f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
        "is not; set all three to launch several processes."
      )
    jax.distributed.initialize(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(env["JAX_NUM_PROCESSES"]),
      process_id=int(env["JAX_PROCESS_ID"]),
    )
  else:
    jax.distributed.initialize()  # JAX reads SLURM / Open MPI / TPU settings itself.
  return True
