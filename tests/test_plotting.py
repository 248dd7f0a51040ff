import os

import pytest

from swa import plotting


def _rows(steps, loss):
  return [{"step": s, "answer_loss": loss, "exact_match": 1.0 - loss / 4} for s in steps]


def test_training_curves_keep_the_last_of_repeated_steps(tmp_path):
  resumed = _rows(range(1, 7), 2.0) + _rows(range(4, 10), 1.0)   # steps 4-6 logged twice
  resumed.append({"step": 9, "tokens_per_second": 1e5})          # not a training row
  path = tmp_path / "curves.png"
  fig = plotting.plot_training_curves({"a": resumed, "b": _rows(range(1, 10), 0.5)},
                                      path=str(path), smooth=1)
  loss_axes, match_axes = fig.axes
  (steps, losses), _ = [line.get_data() for line in loss_axes.lines]
  assert list(steps) == list(range(1, 10))
  assert list(losses) == [2.0] * 3 + [1.0] * 6
  assert [line.get_label() for line in match_axes.lines] == ["a", "b"]
  assert os.path.getsize(path) > 0


def test_training_curves_need_training_rows():
  with pytest.raises(ValueError, match="run 'x' has no training rows"):
    plotting.plot_training_curves({"x": [{"step": 1, "tokens_per_second": 1.0}]})
