import os

import numpy as np
import pytest

from swa import plotting


def _rows(steps, loss):
  return [{"step": s, "answer_loss": loss, "exact_match": 1.0 - loss / 4} for s in steps]


def test_training_curves_keep_the_last_of_repeated_steps(tmp_path):
  resumed = _rows(range(1, 7), 2.0) + _rows(range(4, 10), 1.0)  # steps 4-6 logged twice
  resumed.append({"step": 9, "tokens_per_second": 1e5})  # not a training row
  path = tmp_path / "curves.png"
  fig = plotting.plot_training_curves(
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
    plotting.plot_training_curves({"x": [{"step": 1, "tokens_per_second": 1.0}]})


def _eval_rows(model, reach, distances, accuracy):
  return [
    {
      "model": model,
      "window": "8",
      "layers": 2,
      "reach": reach,
      "distance": d,
      "accuracy": accuracy(d),
      "n": 10,
      "beyond_train_len": False,
    }
    for d in distances
  ]


def test_heatmap_cells_never_straddle_the_reach(tmp_path):
  rows = _eval_rows("a", 100, range(42, 200, 3), lambda d: 1.0 if d <= 100 else 0.0)
  cells = plotting.heatmap_cells(rows, 32, 1, 6)  # buckets 32..224; 96..128 holds the reach
  assert [(lo, hi) for lo, hi, _ in cells][2:5] == [(96, 101), (101, 128), (128, 160)]
  for lo, hi, acc in cells:
    assert not lo <= 100 < 101 < hi  # no cell holds both d = 100 and d = 101
    if not np.isnan(acc):
      assert acc in (0.0, 1.0)  # so a cell is all inside (100 %) or all beyond (0 %)
  full = _eval_rows("full", None, range(42, 200, 3), lambda d: 1.0)
  assert len(plotting.heatmap_cells(full, 32, 1, 6)) == 6
  fig = plotting.plot_accuracy_heatmap(rows + full, path=str(tmp_path / "h.png"))
  assert os.path.getsize(tmp_path / "h.png") > 0 and len(fig.axes[0].collections) == 2
