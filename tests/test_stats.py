"""swa/analysis/stats.py: Wilson intervals, pooling seeds, the 50 % crossing; summary.py's numbers
and tables.py's headline table built on them."""

import math

import numpy as np
import pytest
from conftest import passkey_rows

from swa.analysis import rows as rows_lib
from swa.analysis import stats, summary, tables


def rows_of(model, seed, accuracies, **kwargs):
  return passkey_rows(model, accuracies, seed=seed, **kwargs)


@pytest.mark.parametrize(
  "hits, trials, low, high",
  [
    (0, 10, 0.0, 0.2775328),  # textbook values of the Wilson score interval
    (5, 10, 0.2365931, 0.7634069),
    (98, 100, 0.9299882, 0.9944980),
    (100, 100, 0.9630065, 1.0),  # = 1 / (1 + z^2 / n)
  ],
)
def test_wilson_interval(hits, trials, low, high):
  assert stats.wilson_interval(hits, trials) == pytest.approx((low, high), abs=1e-6)


@pytest.mark.parametrize("hits, trials", [(1, 0), (11, 10), (-1, 10)])
def test_wilson_interval_rejects_impossible_counts(hits, trials):
  with pytest.raises(ValueError, match="wilson_interval needs"):
    stats.wilson_interval(hits, trials)


def test_all_hits_lower_bound():
  bound = stats.all_hits_lower_bound(100)
  assert bound["wilson"] == pytest.approx(1 / (1 + stats.Z95**2 / 100))  # 96.30 %
  assert bound["clopper_pearson"] == pytest.approx(0.025**0.01)  # 96.38 %


def test_keys_to_certify():
  n = stats.keys_to_certify(0.995)
  assert n == 765
  assert stats.wilson_interval(n, n)[0] >= 0.995 > stats.wilson_interval(n - 1, n - 1)[0]
  with pytest.raises(ValueError, match="0 < recall < 1"):
    stats.keys_to_certify(1.0)


def test_span_weights_give_the_pooled_mean_of_one_seed():
  assert stats.span_weights([0, 10, 30]).tolist() == [10.0, 15.0, 20.0]
  rng = np.random.default_rng(0)
  distances = sorted(rng.choice(np.arange(42, 900), size=17, replace=False).tolist())
  rows = rows_of("m", 0, dict(zip(distances, rng.random(17).tolist())))
  mean = np.average([r.accuracy for r in rows], weights=stats.span_weights(distances))
  assert mean == pytest.approx(stats.pooled_mean({0: rows})["mean"])


def test_pooled_mean_of_evenly_spaced_distances_is_wilson_on_the_pooled_keys():
  by_seed = {
    0: rows_of("m", 0, {100: 1.0, 200: 0.9, 300: 0.5}),
    1: rows_of("m", 1, {100: 1.0, 200: 0.8, 300: 0.3}),
  }
  m = stats.pooled_mean(by_seed)
  assert m["per_seed"] == pytest.approx({0: 0.8, 1: 0.7})
  assert m["mean"] == pytest.approx(0.75)
  assert m["n_eff"] == pytest.approx(600)
  assert (m["low"], m["high"]) == pytest.approx(stats.wilson_interval(450, 600))


def test_pooled_mean_weighs_distances_by_their_span():
  m = stats.pooled_mean({0: rows_of("m", 0, {0: 1.0, 10: 0.5, 30: 0.0}, reach=None, window="full")})
  assert m["mean"] == pytest.approx((10 * 1.0 + 15 * 0.5) / 45)
  # Kish: (sum u)^2 / sum u^2 with u = w / (W n) per key.
  w = np.array([10, 15, 20]) / 45
  assert m["n_eff"] == pytest.approx(1 / np.sum(w * w / 100))
  assert stats.pooled_mean({0: []}) is None


@pytest.mark.parametrize(
  "name, seed, stripped",
  [
    ("w512_s1_f03", 1, "w512_f03"),
    ("tiny_s0", 0, "tiny"),
    ("window_size=128,num_layers=2,seed=1", 1, "window_size=128,num_layers=2"),
    ("seed=3,lr=1e-3", 3, "lr=1e-3"),
    ("w128_seed2", 2, "w128"),
    ("w128", None, "w128"),
    ("local_first", None, "local_first"),
  ],
)
def test_seed_in_a_name(name, seed, stripped):
  assert rows_lib.seed_of(name) == seed
  assert rows_lib.strip_seed(name) == stripped


def test_group_by_model_pools_seeds_and_refuses_mixed_models():
  rows = rows_of("w_s10", 10, {50: 1.0}) + rows_of("w_s2", 2, {50: 0.5})
  assert list(stats.group_by_model(rows)) == ["w"]
  assert list(stats.group_by_model(rows)["w"]) == [2, 10]
  with pytest.raises(ValueError, match="different models"):
    stats.group_by_model(rows + rows_of("w_s2", 2, {50: 1.0}, reach=254))
  with pytest.raises(ValueError, match="a distance twice"):
    stats.group_by_model(rows + rows_of("w_s2", 2, {50: 1.0}))


def test_by_distance_pools_keys_over_seeds():
  by_seed = {0: rows_of("m", 0, {100: 0.9, 200: 0.5}), 1: rows_of("m", 1, {100: 0.7}, n=50)}
  first, second = stats.by_distance(by_seed)
  assert first["seeds"] == [0, 1] and first["per_seed"] == {0: 0.9, 1: 0.7}
  assert first["accuracy"] == pytest.approx(0.8) and first["min_seed"] == 0.7
  assert (first["hits"], first["keys"]) == (125, 150)
  assert (first["low"], first["high"]) == pytest.approx(stats.wilson_interval(125, 150))
  assert second["seeds"] == [0] and (second["hits"], second["keys"]) == (50, 100)


def test_crossing_interpolates_between_tested_distances():
  assert stats.crossing([100, 200, 300], [1.0, 0.8, 0.2]) == pytest.approx(250)
  assert stats.crossing([100, 200, 300], [1.0, 0.5, 0.0]) == pytest.approx(200)
  assert stats.crossing([300, 100, 200], [0.0, 1.0, 0.75]) == pytest.approx(700 / 3)  # any order
  assert stats.crossing([100, 200], [0.4, 0.0]) == -math.inf
  assert stats.crossing([100, 200], [1.0, 0.6]) == math.inf


def headline_rows():
  """Three seeds of a 4 x 128 model: recall 1.0 / 0.97 / 0.5 / 0 at d = 100 / 300 / 500 / 600."""
  return (
    rows_of("w128_s0", 0, {100: 1.0, 300: 0.98, 500: 0.60, 600: 0.0})
    + rows_of("w128_s1", 1, {100: 1.0, 300: 0.96, 500: 0.40, 600: 0.0})
    + rows_of("w128_s2", 2, {100: 0.99, 300: 0.97, 500: 0.50, 600: 0.0})
  )


def test_summarize_model_gives_the_headline_numbers():
  by_seed = stats.group_by_model(headline_rows())["w128"]
  s = summary.summarize_model("w128", by_seed, reference=(512, 0.95))
  assert s["seeds"] == [0, 1, 2]
  assert s["inside"]["per_seed"] == pytest.approx({0: 0.86, 1: 2.36 / 3, 2: 0.82})
  assert s["inside"]["mean"] == pytest.approx(7.4 / 9)
  assert s["inside"]["n_eff"] == pytest.approx(900)  # 3 seeds x 3 distances x 100 keys
  assert (s["inside"]["low"], s["inside"]["high"]) == pytest.approx(stats.wilson_interval(740, 900))
  assert s["beyond"]["mean"] == 0.0
  assert s["at_reference"]["mean"] == pytest.approx(7.4 / 9)
  assert s["max_distance"] == 300 and s["max_distance_every_seed"] == 300
  assert s["crossing"] == pytest.approx(500)  # the mean is 0.5 at 500, 0 at 600
  assert s["crossing_per_seed"] == pytest.approx(
    {0: 500 + 100 / 6, 1: 300 + 200 * 0.46 / 0.56, 2: 500}
  )
  assert s["ratio"] == pytest.approx(500 / 508)


def test_headline_table_row():
  by_seed = stats.group_by_model(headline_rows())["w128"]
  s = summary.summarize_model("w128", by_seed, reference=(512, 0.95))
  table = tables.format_headline_table([s]).splitlines()
  assert table[0].startswith("| Model | Window | Layers | Reach | Seeds |")
  assert table[2] == (
    "| w128 | 128 | 4 | 508 | 3 (0, 1, 2) | 82.2 % [79.6, 84.6] | [73.1, 91.3] | "
    "86.0 / 78.7 / 82.0 | 3 of 3 | ~512 tokens at 95 % | "
    "82.2 % [79.6, 84.6], seeds [73.1, 91.3] ✗ (seeds) | "
    "300 / 300 | 500 | 0.984 (-1.6 %) [0.841, 1.103] ? |"
  )


def test_headline_table_full_attention_and_edge_cases():
  rows = rows_of("full", 0, {100: 1.0, 1004: 1.0}, reach=None, window="full", train=1024)
  s = summary.summarize_model("full", stats.group_by_model(rows)["full"], reference=(None, 1.0))
  row = tables.format_headline_table([s]).splitlines()[2]
  assert row == (
    "| full | full | 4 | unlimited | 1 (0) | 100.0 % [98.1, 100.0] | — | 100.0 | — | "
    "unlimited at 100 % | 100.0 % [98.1, 100.0] ? (keys) | ≥ 1004 (all) / ≥ 1004 (all) | "
    "none ≤ 1004 | — |"
  )
  assert s["beyond"] is None
  weak = rows_of("tiny", 0, {42: 0.3, 60: 0.0}, reach=93, window="32", layers=3)
  s = summary.summarize_model("tiny", stats.group_by_model(weak)["tiny"])
  assert s["crossing"] == -math.inf and s["ratio"] is None
  assert "| < 42 / < 42 | < 42 | — |" in tables.format_headline_table([s])


def test_full_attention_inside_is_its_trained_length_and_beyond_is_extrapolation():
  accuracies = {100: 1.0, 1004: 1.0, 1500: 0.5, 2000: 0.0}
  rows = rows_of("full", 0, accuracies, reach=None, window="full", train=1024)
  assert [r.inside for r in rows] == [True, True, False, False]  # d <= 1004, the trained length's
  assert [r.beyond_train_len for r in rows] == [False, False, True, True]
  s = summary.summarize_model("full", stats.group_by_model(rows)["full"], reference=(None, 1.0))
  assert s["inside"]["mean"] == 1.0
  assert s["beyond"]["mean"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)  # d = 1500, 2000
  assert s["at_reference"]["mean"] < 1.0  # "unlimited at 100 %" is judged on every distance
  row = tables.format_headline_table([s]).splitlines()[2]
  assert "| 100.0 % [98.1, 100.0]; beyond the trained length 25.0 % |" in row


def test_headline_notes_state_the_construction_and_the_bound():
  text = tables.headline_notes(100)
  assert "Recall beyond the reach is 0 by construction" in text
  assert "100/100 bounds recall only above 96.3 % (Wilson 95 %; Clopper–Pearson: 96.4 %)" in text
  assert "certifying ≥ 99.5 % at one distance takes 765 keys, all right" in text


def test_seed_interval_is_the_t_interval_over_seeds():
  m = stats.seed_interval([0.9, 0.8, 0.7], clip=None)
  half = 4.303 * 0.1 / np.sqrt(3)  # t_0.975(2) * sd / sqrt(3)
  assert (m["mean"], m["low"], m["high"], m["k"]) == pytest.approx((0.8, 0.8 - half, 0.8 + half, 3))
  assert stats.seed_interval([0.5]) is None
  assert stats.seed_interval([1.0, 0.5])["high"] == 1.0  # clipped to [0, 1]
  assert stats.seed_interval([1.0, 0.5], clip=None)["high"] > 1.0
  assert stats.t975(30) == 2.042 and stats.t975(60) == pytest.approx(2.000, abs=1e-3)


def test_all_hops_and_verdicts():
  kept = rows_of("w", 0, {100: 1.0, 400: 0.9, 457: 0.55, 500: 0.1})
  lost = rows_of("w", 1, {100: 1.0, 400: 0.3, 457: 0.2, 500: 0.0})
  assert stats.relays_all_hops(kept, 508) and not stats.relays_all_hops(lost, 508)
  assert stats.relays_all_hops(kept, None) is None
  assert stats.verdict(0.96, 0.98, 0.95) == "✓"
  assert stats.verdict(0.80, 0.94, 0.95) == "✗"
  assert stats.verdict(0.90, 0.99, 0.95) == "?"  # not established: the interval straddles it
  s = summary.summarize_model("w", {0: kept, 1: lost}, reference=(512, 0.95))
  assert s["all_hops"] == {0: True, 1: False}
  assert "| 1 of 2 |" in tables.format_headline_table([s])
