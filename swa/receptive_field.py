"""How far information travels through stacked sliding-window attention layers.

With window w, the query at position i attends keys i-w+1 ... i (w keys, itself
included). One layer lets position j reach position i when 0 <= i - j <= w - 1;
L stacked layers chain L such hops, so

  max_reach(w, L)        = L * (w - 1)       largest distance i - j that still matters
  receptive_field(w, L)  = L * (w - 1) + 1   positions that can influence a query

(ignoring the sequence start, which clips the field for early queries). The
project's seed table quotes the nominal L * w (128, 256, 512, 1024 for w=128);
the exact count is L - 1 smaller, because consecutive hops share an endpoint.

`reachability` measures this from the mask itself; `effective_receptive_field`
measures a trained (or hand-built) model's gradients, in the spirit of Luo et
al. 2016, "Understanding the Effective Receptive Field in Deep CNNs".

Run `python -m swa.receptive_field --out <folder>` to write the figures and table
(results/receptive_field/ holds the committed ones).
"""

import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from swa import reports
from swa.attention import create_sliding_window_mask
from swa.checks import check_int


def _band_mask(seq_len, window_size):
  """bool [T, T] numpy mask, True where i - w < j <= i (the shared definition)."""
  return np.asarray(create_sliding_window_mask(seq_len, window_size))


def reachability(seq_len, window_size, num_layers):
  """Which input positions can influence which outputs after each layer.

  Args:
    seq_len: number of positions T.
    window_size: w >= 1, or None for full causal attention.
    num_layers: number of stacked attention layers L.

  Returns:
    bool [L, T, T]; entry [l, i, j] is True iff input position j can influence
    output position i after l + 1 layers (the boolean (l+1)-th power of the mask).
  """
  check_int("seq_len", seq_len)
  check_int("num_layers", num_layers)
  if window_size is not None:
    check_int("window_size", window_size)
  # float32 matmul goes through BLAS (numpy's integer matmul is ~400x slower at
  # T=2048) and is still exact: entries are path counts <= T < 2**24, and we
  # clip back to 0/1 after every layer.
  mask = _band_mask(seq_len, window_size).astype(np.float32)
  reach = np.empty((num_layers, seq_len, seq_len), dtype=bool)
  current = mask
  for layer in range(num_layers):
    reach[layer] = current > 0
    current = np.minimum(mask @ current, 1.0)
  return reach


def receptive_field(window_size, num_layers):
  """Positions that can influence a query after L layers, itself included: L*(w-1)+1."""
  check_int("window_size", window_size)
  check_int("num_layers", num_layers)
  return num_layers * (window_size - 1) + 1


def max_reach(window_size, num_layers):
  """Largest distance i - j at which input j still influences output i: L*(w-1)."""
  check_int("window_size", window_size)
  check_int("num_layers", num_layers)
  return num_layers * (window_size - 1)


def receptive_field_table(window_size=128, layers=(1, 2, 4, 8)):
  """Rows (layers L, nominal L*w as in the seed table, exact L*(w-1)+1), one per L."""
  check_int("window_size", window_size)
  if len(layers) == 0:
    raise ValueError("layers must name at least one layer count, got an empty sequence.")
  return [(int(L), int(L) * window_size, receptive_field(window_size, L)) for L in layers]


def format_receptive_field_table(window_size=128, layers=(1, 2, 4, 8)):
  """The receptive_field_table rows as a markdown table (str)."""
  lines = [
    f"| Layers | Nominal L·w (seed table) | Exact receptive field L·(w−1)+1 (w={window_size}) |",
    "|---:|---:|---:|",
  ]
  for L, nominal, exact in receptive_field_table(window_size, layers):
    lines.append(f"| {L} | {nominal} | {exact} |")
  return "\n".join(lines) + "\n"


def plot_window_mask(seq_len=16, window_size=4, path=None):
  """Heatmap of the sliding-window mask with 0/1 written in each cell.

  Args:
    seq_len: number of positions T (keep it small, <= ~32, so cells stay legible).
    window_size: w >= 1, or None for full causal attention.
    path: if given, the figure is saved there.

  Returns:
    The matplotlib Figure.
  """
  check_int("seq_len", seq_len)
  mask = _band_mask(seq_len, window_size)
  size = max(4.0, 0.4 * seq_len + 1.5)
  fig, ax = plt.subplots(figsize=(size + 0.5, size))
  ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.6)  # vmax > 1 keeps black text readable on 1s
  for i in range(seq_len):
    for j in range(seq_len):
      ax.text(j, i, int(mask[i, j]), ha="center", va="center", fontsize=9)
  ax.set_xticks(range(seq_len))
  ax.set_yticks(range(seq_len))
  ax.set_xlabel("key position j")
  ax.set_ylabel("query position i")
  label = "full causal" if window_size is None else f"w={window_size}: keys i−{window_size - 1} … i"
  ax.set_title(f"Sliding-window mask, T={seq_len}, {label}")
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def plot_receptive_field(window_size=128, seq_len=512, num_layers=4, path=None):
  """Reachability heatmap per layer, plus receptive field vs depth.

  Args:
    window_size: w >= 1.
    seq_len: number of positions T.
    num_layers: number of stacked layers L (one heatmap panel each).
    path: if given, the figure is saved there.

  Returns:
    (figure, rows): rows are (layers l, measured, exact) for l = 1 .. L, where
    measured counts the inputs reaching the last query (T - 1) in the
    reachability matrix (so it is clipped at T) and exact is l*(w-1)+1.
  """
  check_int("window_size", window_size)
  reach = reachability(seq_len, window_size, num_layers)
  rows = [
    (l + 1, int(reach[l, -1].sum()), receptive_field(window_size, l + 1)) for l in range(num_layers)
  ]

  fig = plt.figure(figsize=(3.2 * num_layers + 0.5, 7.5))
  grid = fig.add_gridspec(2, num_layers, height_ratios=(1.3, 1.0))
  for l in range(num_layers):
    ax = fig.add_subplot(grid[0, l])
    ax.imshow(reach[l], cmap="Blues", vmin=0, vmax=1, interpolation="antialiased")
    ax.set_title(f"{l + 1} layer{'s' if l else ''}: RF = {rows[l][2]}")
    ax.set_xlabel("input position j")
    if l == 0:
      ax.set_ylabel("output position i")

  layers = np.arange(1, num_layers + 1)
  ax = fig.add_subplot(grid[1, :])
  ax.plot(
    layers,
    [r[1] for r in rows],
    "o",
    markersize=9,
    label=f"measured: inputs reaching query {seq_len - 1}",
  )
  ax.plot(layers, [r[2] for r in rows], "--", label="exact L·(w−1)+1")
  ax.plot(layers, layers * window_size, ":", label="nominal L·w (seed table)")
  ax.axhline(seq_len, color="grey", linewidth=0.8, label=f"sequence length T={seq_len}")
  # The exact and nominal lines differ by only L-1 tokens, so print the numbers.
  for L, measured, exact in rows:
    ax.annotate(
      f"measured {measured}\nexact {exact}, nominal {L * window_size}",
      (L, measured),
      textcoords="offset points",
      xytext=(8, -28),
      fontsize=9,
    )
  ax.set_xticks(layers)
  ax.set_xlim(0.7, num_layers + 0.9)  # room for the last annotation
  ax.set_ylim(0, 1.1 * max(seq_len, rows[-1][2]))
  ax.set_xlabel("layers L")
  ax.set_ylabel("receptive field (tokens)")
  ax.legend(loc="upper left")
  ax.grid(alpha=0.3)
  fig.suptitle(
    f"Receptive field of stacked sliding-window attention (w={window_size}, "
    f"T={seq_len}): blue = input j can influence output i"
  )
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=110)
  return fig, rows


def effective_receptive_field(fn, x, position, target_index=None):
  """Gradient-based effective receptive field of one output position.

  The scalar differentiated is c = sum_b out[b, position, target_index[b]]
  (or, if target_index is None, sum_b sum_v out[b, position, v]); the result
  is ERF[s] = mean_b || dc / dx[b, s, :] ||_2. Since each batch row only
  affects its own outputs, dc/dx[b] is that row's own gradient.

  Args:
    fn: JAX-differentiable function mapping x [B, T, D] to outputs [B, T, V]
      (e.g. logits of a model applied to input embeddings).
    x: float [B, T, D] inputs.
    position: the output position p, 0 <= p < T.
    target_index: optional int [B], the output index v per batch row.

  Returns:
    float64 numpy [T]; zero for every input s outside the model's reach of p.
  """
  x = jnp.asarray(x)
  if x.ndim != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a float array [B, T, D], got dtype {x.dtype} shape {x.shape}.")
  B, T, _ = x.shape
  check_int("position", position, low=0)
  if position >= T:
    raise ValueError(f"position must be in [0, {T}), got {position}.")
  out_shape = jax.eval_shape(fn, x).shape
  if len(out_shape) != 3 or out_shape[:2] != (B, T):
    raise ValueError(f"fn must map [B, T, D]={x.shape} to [B, T, V], got {out_shape}.")
  if target_index is not None:
    target_index = np.asarray(target_index)
    V = out_shape[2]
    if (
      target_index.shape != (B,)
      or not np.issubdtype(target_index.dtype, np.integer)
      or target_index.min() < 0
      or target_index.max() >= V
    ):
      raise ValueError(f"target_index must be {B} integers in [0, {V}), got {target_index!r}.")

  def scalar(x):
    logits_BV = fn(x)[:, position, :]
    if target_index is None:
      return logits_BV.sum()
    return jnp.take_along_axis(logits_BV, jnp.asarray(target_index)[:, None], axis=1).sum()

  grad_BTD = jax.grad(scalar)(x)
  norms_BT = np.asarray(jnp.linalg.norm(grad_BTD, axis=-1), dtype=np.float64)
  return norms_BT.mean(axis=0)


def write_figures_and_table(out, command=None):
  """Writes window_mask*.png, receptive_field.png and receptive_field.md under `out`.

  Returns:
    the text of receptive_field.md.
  """
  os.makedirs(out, exist_ok=True)
  plt.close(plot_window_mask(16, 4, os.path.join(out, "window_mask.png")))
  plt.close(plot_window_mask(6, 3, os.path.join(out, "window_mask_6x3.png")))
  fig, plot_rows = plot_receptive_field(128, 512, 4, os.path.join(out, "receptive_field.png"))
  plt.close(fig)

  # Check every table row against the mask itself: the last query of a
  # 1024-token sequence is far enough from the start for L*(w-1)+1 <= 1024.
  layers = (1, 2, 4, 8)
  reach = reachability(1024, 128, max(layers))
  measured = [int(reach[L - 1, -1].sum()) for L in layers]
  exact = [receptive_field(128, L) for L in layers]
  if measured != exact:
    raise AssertionError(f"reachability gives {measured}, closed form {exact}.")

  command = command or f"python -m swa.receptive_field --out {out}"
  text = (
    reports.markdown_header(
      "Receptive field of stacked sliding-window attention",
      [
        f"Command: `{command}`",
        "Hardware: CPU (numpy; no accelerator needed)",
        f"Date: {reports.utc_date()}",
      ],
    )
    + "Query i attends keys i−w+1 … i (w keys, itself included), w = 128.\n\n"
    + format_receptive_field_table(128, layers)
    + f"\nThe seed table's L·w over-counts by L−1: consecutive hops share an endpoint, "
    f"so L layers reach back L·(w−1) tokens (max distance {max_reach(128, 8)} at L=8).\n\n"
    f"Checked against `reachability(1024, 128, 8)` (inputs reaching the last query): "
    f"{measured}, equal to the exact column.\n"
    f"`receptive_field.png` (T=512, L=1..4) measures {[r[1] for r in plot_rows]}.\n"
  )
  with open(os.path.join(out, "receptive_field.md"), "w") as f:
    f.write(text)
  return text


if __name__ == "__main__":
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  from swa import cli  # pylint: disable=g-import-not-at-top

  # Flags are defined only when this runs as a command: importing the module defines none.
  _OUT = flags.DEFINE_string(
    "out", None, "Folder for the figures and receptive_field.md.", required=True
  )

  def _main(argv):
    if len(argv) > 1:
      raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing logs at INFO.
    print(write_figures_and_table(_OUT.value))

  cli.run(_main)
