import os

import numpy as np
import pytest

from swa.analysis import figures
from swa.analysis.rows import PasskeyRow


def _rows(steps, loss):
  return [{"step": s, "answer_loss": loss, "exact_match": 1.0 - loss / 4} for s in steps]


def test_training_curves_keep_the_last_of_repeated_steps(tmp_path):
  resumed = _rows(range(1, 7), 2.0) + _rows(range(4, 10), 1.0)  # steps 4-6 logged twice
  resumed.append({"step": 9, "tokens_per_second": 1e5})  # not a training row
  path = tmp_path / "curves.png"
  fig = figures.plot_training_curves(
    {"a": resumed, "b": _rows(range(1, 10), 0.5)}, path=str(path), smooth=1
  )
  loss_axes, match_axes = fig.axes
  (steps, losses), _ = [line.get_data() for line in loss_axes.lines]
  assert list(steps) == list(range(1, 10))
  assert list(losses) == [2.0] * 3 + [1.0] * 6
  assert [line.get_label() for line in match_axes.lines] == ["a", "b"]
  assert os.path.getsize(path) > 0


def test_training_curves_need_training_rows():
  with pytest.raises(ValueError, match="run 'x' has no training rows"):
    figures.plot_training_curves({"x": [{"step": 1, "tokens_per_second": 1.0}]})


def _eval_rows(model, reach, distances, accuracy, n=10, window="8", seed=0):
  return [
    PasskeyRow(
      model=model,
      window=window,
      layers=2,
      reach=reach,
      distance=d,
      accuracy=accuracy(d),
      n=n,
      seq_len=256,
      train_seq_len=256,
      seed=seed,
    )
    for d in distances
  ]


def _curve(rows):
  return [(r.distance, r.accuracy) for r in rows]


def test_heatmap_cells_never_straddle_the_reach(tmp_path):
  rows = _eval_rows("a", 100, range(42, 200, 3), lambda d: 1.0 if d <= 100 else 0.0)
  cells = figures.heatmap_cells(_curve(rows), 100, 32, 1, 6)  # 32..224; 96..128 holds the reach
  assert [(lo, hi) for lo, hi, _ in cells][2:5] == [(96, 101), (101, 128), (128, 160)]
  for lo, hi, acc in cells:
    assert not lo <= 100 < 101 < hi  # no cell holds both d = 100 and d = 101
    if not np.isnan(acc):
      assert acc in (0.0, 1.0)  # so a cell is all inside (100 %) or all beyond (0 %)
  full = _eval_rows("full", None, range(42, 200, 3), lambda d: 1.0, window="full")
  assert len(figures.heatmap_cells(_curve(full), 236, 32, 1, 6)) == 6
  fig = figures.plot_accuracy_heatmap(rows + full, path=str(tmp_path / "h.png"))
  assert os.path.getsize(tmp_path / "h.png") > 0 and len(fig.axes[0].collections) == 2


def test_heatmap_cells_weigh_distances_by_span_not_by_keys():
  # One bucket, evenly spaced distances: 600 keys at 0 % beside two distances of 100 keys at 100 %.
  rows = _eval_rows("m", 1000, [36], lambda d: 0.0, n=600)
  rows += _eval_rows("m", 1000, [40, 44], lambda d: 1.0, n=100)
  fig = figures.plot_accuracy_heatmap(rows)
  assert [t.get_text() for t in fig.axes[0].texts] == ["67"]  # pooling keys would say 25


def test_broken_line_leaves_unmeasured_gaps_open():
  x, y = figures.broken_line([0, 10, 20, 30, 100, 110, 120], [1, 1, 1, 1, 0, 0, 0])
  assert np.isnan(x[4]) and np.isnan(y[4]) and len(x) == 8  # 30 -> 100: 7 x its neighbours
  # A grid that is fine near the reach and coarse elsewhere is drawn whole.
  x, _ = figures.broken_line([0, 8, 16, 18, 20, 21, 22, 24, 32, 40], [1] * 10)
  assert not np.isnan(x).any()


def test_seed_curves_draw_each_seed_and_mark_the_trained_length(tmp_path):
  rows = _eval_rows("w8_s0", 14, range(42, 60, 2), lambda d: 0.0) + _eval_rows(
    "w8_s1", 14, range(42, 60, 2), lambda d: 0.0, seed=1
  )
  rows += _eval_rows("full", None, range(42, 300, 20), lambda d: 1.0, window="full")
  fig = figures.plot_seed_curves(rows, path=str(tmp_path / "c.png"))
  titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
  assert titles == ["w8 (w8 L=2), 2 seeds", "full L=2, T=256, 1 seed"]
  legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
  assert "trained length (d ≤ 236)" in legend and "seed 0" in legend
  assert not any("mean" in t for ax in fig.axes for t in [line.get_label() for line in ax.lines])


def test_depth_sweep_draws_each_seeds_crossing_against_the_reach(tmp_path):
  rows = []
  for reach, window in ((14, "8"), (30, "16")):
    for seed in (0, 1):
      rows += _eval_rows(
        f"w{window}_s{seed}",
        reach,
        range(4, 2 * reach, 2),
        lambda d, r=reach: float(d <= r),
        window=window,
        seed=seed,
      )
  fig = figures.plot_depth_sweep(rows, path=str(tmp_path / "depth.png"))
  dots = [
    line
    for line in fig.axes[0].lines
    if line.get_label().startswith("w") and "wall" not in line.get_label()
  ]
  assert [line.get_label() for line in dots] == ["w8 (w8 L=2)", "w16 (w16 L=2)"]
  (x, y), _ = [line.get_data() for line in dots]
  assert list(x) == [14, 14] and list(y) == pytest.approx([15, 15])  # 1 at 14, 0 at 16
  assert os.path.getsize(tmp_path / "depth.png") > 0
