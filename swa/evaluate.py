"""Passkey retrieval as a function of distance, for trained sliding-window models.

Distance (swa/data.py) is d = p_last - k0: from the first key digit k0 to the last prompt
token p_last, whose logits predict the first answer digit. A model whose layers have
windows w_l moves information at most reach = sum_l (w_l - 1) positions, so it can
retrieve only if d <= reach; its theoretical receptive field is reach + 1 positions.

Exact match under teacher forcing is greedy decoding's exact match, so one forward pass
per prompt scores it. The logits at position p depend only on tokens <= p (causality).
Greedy decoding feeds back its own argmax; while every digit so far is right, its
inputs equal the teacher-forced inputs, so its next logits -- and argmax -- equal the
teacher-forced ones. Hence greedy writes all five digits right iff each teacher-forced
argmax is right, and a first wrong digit fails both in the same place.

Prompt length. With RoPE, attention depends only on relative positions, so a windowed
model gives the same answer logits (up to float rounding) on any prompt of at least
reach + ANSWER_LEN tokens that ends with the same reach + 1 tokens: it can be evaluated
on prompts longer than it was trained on. A full-attention model's output depends on
the whole prefix, so only prompts of its trained length are in distribution. Each
distance is therefore evaluated at context length

    seq_len = max(train_seq_len, round_up(d + ANSWER_LEN + len(KEY_PREFIX), 64)),

the trained length while d fits (exactly the training distribution, one compiled shape
for all those distances), else the shortest prompt holding d, rounded up to 64 tokens so
that few shapes are compiled. Such rows carry beyond_train_len=True. Full-attention
models are swept only up to their trained length's largest distance.

Entry points: passkey_sweep (one model, rows per distance), test_passkey_retrieval (one
model's parameters run with other windows), summarize / format_summary_table and
effective_receptive_field_of_model, read_rows / read_erf (the CSVs back); swa/plotting.py
draws the figures. eval_passkey.py at the repository root runs them all on training workdirs.
"""

import collections
import csv
import dataclasses
import functools
import math
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from swa import data, train_lib
from swa import receptive_field as rf
from swa.model import ModelConfig, Transformer, config_of

_CONFIG_TYPES = (ModelConfig, ml_collections.ConfigDict)

LENGTH_MULTIPLE = 64      # beyond the trained length, prompts are rounded up to this many tokens
THRESHOLD = 0.95          # "max distance with >= 95 %"
# Prompts are drawn from default_rng([seed, _EVAL_STREAM, distance]): a stream of their own,
# apart from the training batches (default_rng([seed, step])) and train_lib's evaluation.
_EVAL_STREAM, _ERF_STREAM = 104_729, 130_363
# The seed table's expectations for the 4-layer models: window -> (distance, accuracy);
# None = no limit.
REFERENCE = {"128": (512, 0.95), "256": (1024, 0.90), "512": (2048, 0.85), "full": (None, 1.00)}


# --- What a model can reach ----------------------------------------------------------------------

def window_label(model_config: ModelConfig) -> str:
  """"128" when every layer has window 128, "full" for full attention, else "128,full,...""."""
  windows = model_config.layer_windows
  names = ["full" if w is None else str(w) for w in windows]
  return names[0] if len(set(names)) == 1 else ",".join(names)


def reach_of(model_config: ModelConfig):
  """Largest retrievable distance sum_l (w_l - 1); None if any layer has full attention."""
  windows = model_config.layer_windows
  return None if None in windows else sum(w - 1 for w in windows)


def graphdef_for(model_config: ModelConfig, **changes):
  """The graphdef of a Transformer with `changes` applied to its config (e.g. window_size=256).

  Parameters do not depend on the window (or the activation dtype), so the new graphdef
  merges with the trained params unchanged.
  """
  config = dataclasses.replace(model_config, **changes)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract, nnx.Param)
  return graphdef


# --- Distances and prompt lengths ---------------------------------------------------------------

def context_len(distance: int, train_seq_len: int, multiple: int = LENGTH_MULTIPLE) -> int:
  """Context length T at which `distance` is evaluated (module docstring)."""
  shortest = distance + data.ANSWER_LEN + len(data.KEY_PREFIX)  # key sentence at position 0
  return max(train_seq_len, -(-shortest // multiple) * multiple)


def sweep_distances(reach, train_seq_len: int, *, max_factor: float = 2.0, step=None) -> list:
  """Distances to evaluate, from data.MIN_DISTANCE on.

  Windowed models (reach an int): up to ceil(max_factor * reach), every `step` tokens
  (default reach / 16), every step / 4 (default reach / 64) within +-15 % of the reach,
  and reach and reach + 1 themselves. Full attention (reach None): up to the trained
  length's largest distance, every `step` (default 1/32 of that range).

  Returns:
    sorted list of distinct ints.
  """
  if reach is None:
    top = data.context_max_distance(train_seq_len)
    coarse = step or max(1, round((top - data.MIN_DISTANCE) / 32))
    points = set(range(data.MIN_DISTANCE, top + 1, coarse)) | {top}
  else:
    top = max(data.MIN_DISTANCE, math.ceil(max_factor * reach))
    coarse = step or max(1, round(reach / 16))
    fine = max(1, coarse // 4) if step else max(1, round(reach / 64))
    points = set(range(data.MIN_DISTANCE, top + 1, coarse)) | {top, reach, reach + 1}
    points |= set(range(math.floor(0.85 * reach), math.ceil(1.15 * reach) + 1, fine))
  return sorted(d for d in points if data.MIN_DISTANCE <= d <= top)


# --- Scoring -------------------------------------------------------------------------------------

def accuracy_by_distance(exact_match_fn, distances, *, train_seq_len: int,
                         examples_per_distance: int, seed: int = 0, max_batch_tokens: int = 1 << 18,
                         label: str = ""):
  """Exact-match accuracy at each distance on fresh prompts.

  Distances sharing a context length are scored together in batches of one fixed shape
  (the last batch is padded by repeating rows), so each length compiles once.

  Args:
    exact_match_fn: maps a batch dict (inputs, targets, answer_mask: [B, T]) to bool [B].
    distances: ints, each >= data.MIN_DISTANCE.
    train_seq_len: trained context length (0 if unknown), see context_len.
    examples_per_distance: n prompts per distance, each with its own random passkey.
    seed: prompts come from default_rng([seed, _EVAL_STREAM, distance]).
    max_batch_tokens: batch size is about max_batch_tokens / T.
    label: name shown in the progress lines (stderr).

  Returns:
    {distance: (accuracy, n, T)}.
  """
  if examples_per_distance < 1:
    raise ValueError(f"examples_per_distance must be >= 1, got {examples_per_distance}.")
  groups = collections.defaultdict(list)
  for d in sorted(set(int(d) for d in distances)):
    if d < data.MIN_DISTANCE:
      raise ValueError(f"distance {d} is below data.MIN_DISTANCE={data.MIN_DISTANCE}.")
    groups[context_len(d, train_seq_len)].append(d)
  n, results = examples_per_distance, {}
  for T, ds in sorted(groups.items()):
    start = time.perf_counter()
    batches = [data.passkey_batch(np.random.default_rng([seed, _EVAL_STREAM, d]), n, T, d)
               for d in ds]
    arrays = {k: np.concatenate([b[k] for b in batches]) for k in ("inputs", "targets",
                                                                   "answer_mask")}
    total = len(ds) * n
    batch_size = min(total, max(1, max_batch_tokens // T))
    padded = -(-total // batch_size) * batch_size
    rows = np.arange(padded) % total  # padding repeats the first rows; their scores are dropped
    hits = np.concatenate([
        np.asarray(exact_match_fn({k: v[rows[i:i + batch_size]] for k, v in arrays.items()}))
        for i in range(0, padded, batch_size)])[:total]
    for d, acc in zip(ds, hits.reshape(len(ds), n).mean(axis=1)):
      results[d] = (float(acc), n, T)
    print(f"[{label}] T={T}: {len(ds)} distances {ds[0]}..{ds[-1]} x {n} prompts, "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
  return results


def _rows(results, *, model, window, layers, reach, train_seq_len):
  return [{"model": model, "window": window, "layers": layers, "reach": reach,
           "distance": d, "inside": reach is None or d <= reach, "accuracy": acc, "n": n,
           "seq_len": T, "train_seq_len": train_seq_len, "beyond_train_len": T > train_seq_len}
          for d, (acc, n, T) in sorted(results.items())]


def passkey_sweep(graphdef, params, *, reach, train_seq_len, examples_per_distance=100, step=None,
                  max_factor=2.0, seed=0, distances=None, label=None, max_batch_tokens=1 << 18):
  """Exact-match accuracy of one model over a sweep of distances.

  Args:
    graphdef, params: the model (train_lib.restore_params gives both).
    reach: sum of (window - 1) over layers, None for full attention (reach_of(config)).
    train_seq_len: the context length T the model was trained at (config.data.seq_len).
    examples_per_distance: fresh random passkeys per distance.
    step, max_factor: the grid of sweep_distances; ignored when `distances` is given.
    seed: seeds the prompts (accuracy_by_distance).
    distances: optional explicit distances.
    label: the `model` field of the rows; default the window label.
    max_batch_tokens: see accuracy_by_distance.

  Returns:
    list of dict rows, one per distance, sorted by distance: model, window (label), layers,
    reach, distance, inside (distance <= reach; always True for full attention), accuracy,
    n, seq_len (context T of the prompts), train_seq_len, beyond_train_len (seq_len >
    train_seq_len: results on prompts longer than any seen in training).
  """
  config = config_of(graphdef, params)
  if distances is None:
    distances = sweep_distances(reach, train_seq_len, max_factor=max_factor, step=step)
  label = label or window_label(config)
  em_fn = lambda batch: train_lib.exact_match_step(params, batch, graphdef=graphdef)
  results = accuracy_by_distance(em_fn, distances, train_seq_len=train_seq_len,
                                 examples_per_distance=examples_per_distance, seed=seed,
                                 max_batch_tokens=max_batch_tokens, label=label)
  return _rows(results, model=label, window=window_label(config), layers=config.num_layers,
               reach=reach, train_seq_len=train_seq_len)


def _unpack_model(model):
  """(graphdef, params, ModelConfig, trained seq_len or 0) from test_passkey_retrieval's `model`."""
  if isinstance(model, str):
    config, graphdef, params = train_lib.restore_params(model)
  elif isinstance(model, Transformer):
    graphdef, state = nnx.split(model, nnx.Param)
    config, params = model.config, state.to_pure_dict()
  elif isinstance(model[0], _CONFIG_TYPES):  # restore_params' own order
    config, graphdef, params = model
  else:
    graphdef, params, config = model
  if not isinstance(config, _CONFIG_TYPES):
    raise ValueError(f"Expected a (graphdef, params, config) bundle, got a config of type "
                     f"{type(config).__name__}.")
  if isinstance(config, ModelConfig):
    return graphdef, params, config, 0
  return graphdef, params, train_lib.model_config(config), int(config.data.seq_len)


def cross_window_sweep(graphdef, params, model_config, window_sizes, *, train_seq_len,
                       label=None, **sweep_kwargs):
  """passkey_sweep rows of one set of trained params run with each window in window_sizes.

  Every layer gets window w (None = full attention); the rows' `model` field is
  "<label> @ w=<w>" (label defaults to the trained window label). sweep_kwargs go to
  passkey_sweep (examples_per_distance, step, max_factor, seed, distances, ...).
  """
  label = label or window_label(model_config)
  rows = []
  for w in window_sizes:
    config = dataclasses.replace(model_config, window_size=w)
    rows += passkey_sweep(graphdef_for(config), params, reach=reach_of(config),
                          train_seq_len=train_seq_len, label=f"{label} @ w={_w_name(w)}",
                          **sweep_kwargs)
  return rows


def _w_name(w):
  return "full" if w is None else str(w)


def test_passkey_retrieval(model, window_sizes=(128, 256, 512, 1024), *, distances=None,
                           examples_per_distance=100, max_factor=2.0, seed=0,
                           train_seq_len=None):
  """Passkey accuracy of one model run with each of several attention windows.

  The window of every layer is set to w and the parameters are reused unchanged (no
  parameter depends on the window). For a model trained with one window and run with
  another, this shows whether retrieval follows the test-time window: a smaller window
  cuts the reach to L * (w - 1); a larger one lets information travel further than in
  training, through attention at relative distances never seen in training.

  Args:
    model: one of
      - (graphdef, params, config), config an experiment ConfigDict or a
        model.ModelConfig; (config, graphdef, params) as train_lib.restore_params
        returns it works too;
      - a model.Transformer;
      - a training workdir (str), loaded with train_lib.restore_params;
      - any other callable model(tokens_BT, window_size) -> logits_BTV (then pass
        distances).
    window_sizes: windows to try; None means full attention.
    distances: distances to evaluate for every window; by default each window gets its
      own sweep_distances(L * (w - 1)) (full attention: up to the trained length).
    examples_per_distance: fresh random passkeys per distance.
    max_factor: the default sweep goes to max_factor * L * (w - 1).
    seed: prompts come from default_rng([seed, _EVAL_STREAM, distance]): the same
      passkeys for every window.
    train_seq_len: trained context length; default from the experiment config, else 0
      (each distance on its shortest prompt, rounded up to 64).

  Returns:
    {window: {distance: exact-match accuracy in [0, 1]}}.
  """
  if callable(model) and not isinstance(model, Transformer):
    if distances is None:
      raise ValueError("A callable model has no known depth, so its reach is unknown; pass "
                       "distances=[...] explicitly.")
    out = {}
    for w in window_sizes:
      em_fn = lambda batch, w=w: np.asarray(
          train_lib.exact_match(model(jnp.asarray(batch["inputs"]), w), batch))
      results = accuracy_by_distance(em_fn, distances, train_seq_len=train_seq_len or 0,
                                     examples_per_distance=examples_per_distance, seed=seed,
                                     label=f"w={_w_name(w)}")
      out[w] = {d: acc for d, (acc, _, _) in results.items()}
    return out
  graphdef, params, config, seq_len = _unpack_model(model)
  train_seq_len = seq_len if train_seq_len is None else train_seq_len
  if None in window_sizes and distances is None and not train_seq_len:
    raise ValueError("A full-attention sweep runs up to the trained length, which is unknown "
                     "here; pass train_seq_len= or distances=.")
  rows = cross_window_sweep(graphdef, params, config, window_sizes, train_seq_len=train_seq_len,
                            examples_per_distance=examples_per_distance, max_factor=max_factor,
                            seed=seed, distances=distances)
  label = window_label(config)
  return {w: {r["distance"]: r["accuracy"] for r in rows
              if r["model"] == f"{label} @ w={_w_name(w)}"} for w in window_sizes}


test_passkey_retrieval.__test__ = False  # A library function named like a test: pytest, skip it.


# --- Summary -------------------------------------------------------------------------------------

def _span_weights(distances):
  """Weight of each sorted sampled distance: the span of distances it stands for.

  Each point covers half the gap to each neighbour (the outer ends mirror the inner
  gap), so evenly spaced points weigh the same and the denser grid near the reach does
  not outweigh the rest in a mean over distances.
  """
  d = np.asarray(distances, dtype=np.float64)
  if d.size == 1:
    return np.ones(1)
  padded = np.concatenate([[2 * d[0] - d[1]], d, [2 * d[-1] - d[-2]]])
  return (padded[2:] - padded[:-2]) / 2


def mean_over_distances(rows):
  """Accuracy averaged uniformly over the distance range the rows sample; None if no rows."""
  rows = sorted(rows, key=lambda r: r["distance"])
  if not rows:
    return None
  weights = _span_weights([r["distance"] for r in rows])
  return float(np.average([r["accuracy"] for r in rows], weights=weights))


def max_distance_at(rows, threshold=THRESHOLD):
  """Largest tested distance D with accuracy >= threshold at every tested distance <= D.

  None when the shortest tested distance already falls short.
  """
  best = None
  for r in sorted(rows, key=lambda r: r["distance"]):
    if r["accuracy"] < threshold - 1e-9:
      break
    best = r["distance"]
  return best


def summarize(rows, threshold=THRESHOLD):
  """One summary dict per model (in order of first appearance in rows).

  Keys: model, window, layers, reach, theoretical_rf (reach + 1 positions; None = no
  limit), max_distance_at_threshold (max_distance_at), min_tested / max_tested
  distances, all_pass (every tested distance reaches the threshold), success_inside
  (mean accuracy over distances <= reach; all of them for full attention),
  success_beyond (mean over distances > reach; None for full attention or if none were
  tested), train_seq_len, max_seq_len, reference / at_reference (the seed table's
  expectation (distance, accuracy) for this window -- windowed rows only for 4 layers --
  and the measured mean over distances up to that distance; None where there is none).
  Means are uniform over distance (mean_over_distances).
  """
  by_model = collections.OrderedDict()
  for r in rows:
    by_model.setdefault(r["model"], []).append(r)
  out = []
  for model, rs in by_model.items():
    rs = sorted(rs, key=lambda r: r["distance"])
    first, reach = rs[0], rs[0]["reach"]
    inside = [r for r in rs if reach is None or r["distance"] <= reach]
    beyond = [r for r in rs if reach is not None and r["distance"] > reach]
    best = max_distance_at(rs, threshold)
    # The seed table's windowed rows are for 4 layers (512 = 4 x 128); full attention has
    # no depth limit.
    applies = first["window"] == "full" or first["layers"] == 4
    reference = REFERENCE.get(first["window"]) if applies else None
    at_reference = None
    if reference is not None:
      ref_rows = [r for r in rs if reference[0] is None or r["distance"] <= reference[0]]
      at_reference = mean_over_distances(ref_rows)
    out.append({
        "model": model, "window": first["window"], "layers": first["layers"], "reach": reach,
        "theoretical_rf": None if reach is None else reach + 1,
        "threshold": threshold, "max_distance_at_threshold": best,
        "min_tested": rs[0]["distance"], "max_tested": rs[-1]["distance"],
        "all_pass": best == rs[-1]["distance"],
        "success_inside": mean_over_distances(inside),
        "success_beyond": mean_over_distances(beyond),
        "train_seq_len": first.get("train_seq_len"),
        "max_seq_len": max(r["seq_len"] for r in rs),
        "reference": reference, "at_reference": at_reference,
    })
  return out


SUMMARY_COLUMNS = ("Model", "Window", "Layers", "Theoretical RF", "Max distance with ≥ 95 %",
                   "Success inside the RF", "Success beyond the RF", "Reference (seed table)",
                   "Measured up to the reference distance", "Tested distances")


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f} %"


def format_summary_table(summary) -> str:
  """The summarize() rows as a markdown table (columns SUMMARY_COLUMNS)."""
  threshold = summary[0]["threshold"] if summary else THRESHOLD
  header = [c.replace("95", f"{100 * threshold:g}") for c in SUMMARY_COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * 7 + "---|"]
  for s in summary:
    rf_cell = "unlimited" if s["reach"] is None else f"{s['theoretical_rf']} (reach {s['reach']})"
    best = s["max_distance_at_threshold"]
    if best is None:
      best_cell = f"< {s['min_tested']}"
    elif s["all_pass"]:
      best_cell = f"≥ {best} (all tested)"
    else:
      best_cell = str(best)
    beyond = "n/a (no limit)" if s["reach"] is None else _pct(s["success_beyond"])
    if s["reference"] is None:
      ref_cell, at_ref = "—", "—"
    else:
      distance, accuracy = s["reference"]
      ref_cell = (f"{'unlimited' if distance is None else f'~{distance} tokens'} at "
                  f"{100 * accuracy:g} %")
      at_ref = _pct(s["at_reference"])
    tested = f"{s['min_tested']}–{s['max_tested']}"
    if s["train_seq_len"] and s["max_seq_len"] > s["train_seq_len"]:
      tested += f" (prompts up to T={s['max_seq_len']}, trained T={s['train_seq_len']})"
    elif s["train_seq_len"]:
      tested += f" (trained T={s['train_seq_len']})"
    cells = [s["model"], s["window"], str(s["layers"]), rf_cell, best_cell,
             _pct(s["success_inside"]), beyond, ref_cell, at_ref, tested]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --- Rows on disk (the CSVs of eval_passkey.py) --------------------------------------------------

# The columns of passkey.csv (eval_passkey.py), one per key of a _rows() row, and how
# read_rows() turns each text cell back into its value.
_CSV_TYPES = {"model": str, "window": str, "layers": int,
              "reach": lambda text: int(text) if text else None, "distance": int,
              "inside": lambda text: text == "True", "accuracy": float, "n": int, "seq_len": int,
              "train_seq_len": int, "beyond_train_len": lambda text: text == "True"}
CSV_FIELDS = tuple(_CSV_TYPES)
ERF_FIELDS = ("model", "distance", "erf", "erf_normalized")  # effective_receptive_field.csv


def read_rows(path):
  """The rows of a passkey.csv written by eval_passkey.py, typed as passkey_sweep returns them."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [k for k in CSV_FIELDS if k not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path} is not a passkey.csv of eval_passkey.py: no column {missing}.")
    return [{k: _CSV_TYPES[k](r[k]) for k in CSV_FIELDS} for r in reader]


def read_erf(path):
  """{model: float [D]} from an effective_receptive_field.csv written by eval_passkey.py."""
  erfs = collections.defaultdict(dict)
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      erfs[r["model"]][int(r["distance"])] = float(r["erf"])
  for model, by_d in erfs.items():
    if sorted(by_d) != list(range(len(by_d))):
      raise ValueError(f"{path}: the distances of {model} are not 0, 1, 2, ... without gaps.")
  return {model: np.array([by_d[d] for d in range(len(by_d))]) for model, by_d in erfs.items()}


# --- Effective receptive field -------------------------------------------------------------------

def effective_receptive_field_of_model(graphdef, params, *, seq_len, num_examples=16, seed=0):
  """Mean |d logit(first answer digit) / d input embedding| as a function of distance.

  Passkey prompts of context seq_len (key at uniformly random distances) are embedded;
  receptive_field.effective_receptive_field differentiates model.from_embeddings' logit
  of the true first answer digit at p_last = seq_len - ANSWER_LEN. For any weights the
  result is exactly zero beyond the model's reach: no path of attention carries
  gradient further.

  Args:
    graphdef, params: the model (graphdef_for(config, dtype="float32") gives float32
      gradients for a bfloat16-trained model).
    seq_len: context length T (as in data.passkey_batch), >= data.MIN_CONTEXT_LEN.
    num_examples: prompts averaged over.
    seed: seeds the prompts.

  Returns:
    float64 [p_last + 1]; entry d is the mean gradient norm at input position p_last - d.
  """
  rng = np.random.default_rng([seed, _ERF_STREAM])
  top = data.context_max_distance(seq_len)
  batch = data.passkey_batch(rng, num_examples, seq_len,
                             rng.integers(data.MIN_DISTANCE, top + 1, size=num_examples))
  p_last = seq_len - data.ANSWER_LEN
  x_BTD = nnx.merge(graphdef, params).embed(jnp.asarray(batch["inputs"]))
  fn = functools.partial(_logits_from_embeddings, params, graphdef=graphdef)
  erf_T = rf.effective_receptive_field(fn, x_BTD, p_last, batch["targets"][:, p_last])
  return erf_T[p_last::-1]


@functools.partial(jax.jit, static_argnames="graphdef")
def _logits_from_embeddings(params, x_BTD, *, graphdef):
  """model.from_embeddings, jitted with the parameters as arguments rather than constants."""
  return nnx.merge(graphdef, params).from_embeddings(x_BTD)
