"""swa/analysis/hops.py: train.py's evaluation as passkey rows, when each hop formed; the report
of results/hops_h200/ rebuilds from its committed files."""

import filecmp
import glob
import json
import os

import pytest

from swa.analysis import hops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_run(folder, seed, hop_steps, final_em):
  """A run of windows (16, 64, 64) trained with eval.hop_distances; hop k formed at hop_steps[k]."""
  os.makedirs(folder)
  config = {
    "seed": seed,
    "model": {"window_size": [16, 64, 64], "num_layers": 3},
    "data": {"seq_len": 256},
    "eval": {"examples_per_distance": 10},
  }
  distances = [74, 133]  # 0.95 x (15 + 63), 0.95 x (15 + 126); 15 < MIN_DISTANCE is left out
  metrics = [{"step": 10, "exact_match": final_em}]
  for step in (100, 200, 300):
    row = {"step": step}
    for d, formed in zip(distances, hop_steps):
      row[f"eval/exact_match_d{d:05d}"] = 1.0 if formed is not None and step >= formed else 0.0
    metrics.append(row)
  second = 1.0 if hop_steps[1] else 0.0
  evaluation = {"exact_match_by_distance": {"42": 1.0, "100": second, "133": second}}
  for name, obj in (("config.json", config), ("eval.json", evaluation)):
    with open(os.path.join(folder, name), "w") as f:
      json.dump(obj, f)
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(m) for m in metrics) + "\n")
  return folder


def test_formation_rows_and_train_eval_rows(tmp_path):
  good = fake_run(str(tmp_path / "w64" / "seed=0"), 0, (100, 300), 0.9)
  lost = fake_run(str(tmp_path / "w64" / "seed=1"), 1, (100, None), 0.2)
  rows = hops.train_eval_rows(good)
  assert [(r.model, r.window, r.layers, r.reach, r.distance, r.n) for r in rows] == [
    ("w64", "16,64,64", 3, 141, 42, 10),
    ("w64", "16,64,64", 3, 141, 100, 10),
    ("w64", "16,64,64", 3, 141, 133, 10),
  ]
  formed = hops.formation_rows([good, lost])
  assert [(r["seed"], r["hop"], r["distance"], r["formed_at"], r["all_hops"]) for r in formed] == [
    (0, 1, 74, 100, True),
    (0, 2, 133, 300, True),
    (1, 1, 74, 100, False),
    (1, 2, 133, None, False),
  ]
  table = hops.formation_table(formed)
  assert "| 1 | 100 | — | no | 0.20 |" in table
  with pytest.raises(ValueError, match="has no config.json: not a finished training run"):
    hops.read_run(str(tmp_path))


def test_curriculum_reaches_is_the_first_step_whose_top_covers_the_distance():
  metrics = [{"step": 50, "curriculum_top": 60.0}, {"step": 60, "eval/x": 1.0}]
  metrics += [{"step": 100, "curriculum_top": 133.0}, {"step": 150, "curriculum_top": 140.0}]
  assert hops.curriculum_reaches(metrics, 60) == 50
  assert hops.curriculum_reaches(metrics, 61) == 100
  assert hops.curriculum_reaches(metrics, 141) is None
  assert hops.curriculum_reaches([{"step": 10}], 42) is None  # a run that did not log it


@pytest.mark.slow
def test_the_committed_hop_report_rebuilds_identically(tmp_path):
  import probe_hops

  folder = os.path.join(ROOT, "results", "hops_h200")
  runs = sorted(glob.glob(os.path.join(folder, "w*", "seed=*")))
  probe_hops.run(runs, str(tmp_path), ["0.9"], 32, 16, probe_csv=folder)
  assert filecmp.cmp(tmp_path / "hop_formation.csv", os.path.join(folder, "hop_formation.csv"))
  assert filecmp.cmp(tmp_path / "passkey.csv", os.path.join(folder, "passkey.csv"))
