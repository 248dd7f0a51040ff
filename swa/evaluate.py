"""The one evaluation path: passkey exact match by distance, for the trainer and eval_passkey.py.

A model's reach is `ModelConfig.reach`; which distances a sweep tests and at which prompt length T
each distance is evaluated is the evaluation grid of swa/data.py (`sweep_distances`, `context_len`).

One prompt stream. The prompts of distance d are drawn from default_rng([seed, PROMPT_STREAM,
d]), PROMPT_CHUNK at a time (`prompts`), apart from the training batches (default_rng([seed,
step])). train.py's in-training and final tables, eval_passkey.py and the streaming evaluation
all score these prompts, so the same seed and distances give the same numbers everywhere.

One exact-match rule. Exact match under teacher forcing is greedy decoding's exact match, so one
forward pass per prompt scores it (`exact_match`). The logits at position p depend only on tokens
<= p. Greedy decoding feeds back its own argmax; while every digit so far is right, its inputs
equal the teacher-forced inputs, so its next argmax equals the teacher-forced one. Hence greedy
writes all five digits right iff each teacher-forced argmax is right.

Bounded memory. Prompts are scored in batches of at most max_batch_tokens tokens (at least one
prompt), so a model trained at T = 262,144 is evaluated one prompt at a time.

The rows are swa/analysis/rows.py's PasskeyRow; swa/analysis/ summarizes, tables and draws them,
swa/erf.py measures the effective receptive field, swa/evaluate_workdirs.py runs both on workdirs.
"""

import collections
import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swa import data
from swa import model as model_lib
from swa.analysis.rows import PasskeyRow
from swa.model import ModelConfig, Transformer, config_of

PROMPT_STREAM = 7_919  # prompts of distance d come from default_rng([seed, PROMPT_STREAM, d])
PROMPT_CHUNK = 64  # ... drawn this many at a time (data.passkey_batch)
MAX_BATCH_TOKENS = 1 << 18  # default cap on the tokens of one scored batch


# --- The model, the prompts and the exact-match rule ----------------------------------------------


def graphdef_for(model_config: ModelConfig, **changes):
  """The graphdef of a Transformer with `changes` applied to its config (e.g. window_size=256).

  Parameters do not depend on the window (or the activation dtype), so the new graphdef
  merges with the trained params unchanged.
  """
  config = dataclasses.replace(model_config, **changes)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract, nnx.Param)
  return graphdef


def prompts(seed: int, distance: int, num: int, seq_len: int) -> dict:
  """The first `num` evaluation prompts of one distance: THE prompt stream (module docstring).

  Returns:
    data.passkey_batch's inputs, targets, answer_mask (each [num, seq_len]) and passkey [num].
  """
  rng = np.random.default_rng([seed, PROMPT_STREAM, int(distance)])
  chunks = []
  for start in range(0, num, PROMPT_CHUNK):
    n = min(PROMPT_CHUNK, num - start)
    chunks.append(data.passkey_batch(rng, n, seq_len, np.full(n, int(distance))))
  keys = ("inputs", "targets", "answer_mask", "passkey")
  return {k: np.concatenate([c[k] for c in chunks]) for k in keys}


def exact_match(logits_BTV, batch):
  """bool [B]: every answer digit is the argmax of its logits (teacher forced = greedy)."""
  correct_BT = jnp.argmax(logits_BTV, axis=-1) == batch["targets"]
  return jnp.all(correct_BT | (batch["answer_mask"] == 0), axis=-1)


@functools.partial(jax.jit, static_argnames="graphdef")
def exact_match_step(params, batch, *, graphdef):
  """Per-example exact match [B] of the five answer digits, one teacher-forced pass."""
  return exact_match(nnx.merge(graphdef, params)(batch["inputs"]), batch)


def batch_size_for(seq_len: int, max_batch_tokens: int = MAX_BATCH_TOKENS) -> int:
  """Prompts per scored batch: as many as fit in max_batch_tokens, at least one."""
  if max_batch_tokens < 1:
    raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}.")
  return max(1, max_batch_tokens // seq_len)


# --- Scoring -------------------------------------------------------------------------------------


def accuracy_by_distance(
  exact_match_fn,
  distances,
  *,
  train_seq_len: int,
  examples_per_distance,
  seed: int = 0,
  max_batch_tokens: int = MAX_BATCH_TOKENS,
  label: str = "",
  progress=None,
  verbose: bool = True,
):
  """Exact-match accuracy at each distance on the stream's prompts.

  Distances sharing a context length are scored together in batches of one fixed shape
  [batch_size_for(T), T] (the last batch is padded by repeating rows), so each length compiles
  once and no batch holds more than max_batch_tokens tokens (or one prompt).

  Args:
    exact_match_fn: maps a batch dict (inputs, targets, answer_mask: [B, T]) to bool [B].
    distances: ints, each >= data.MIN_DISTANCE.
    train_seq_len: prompts have this context while the distance fits in it (context_len).
    examples_per_distance: n prompts per distance, each with its own random passkey: an int,
      or {distance: n} (e.g. more keys near the reach, where a claim needs them; the first
      prompts of a distance are the same whatever n, in whole chunks of PROMPT_CHUNK).
    seed: seeds the prompts (`prompts`).
    max_batch_tokens: cap on B * T of one batch.
    label: name shown in the progress lines (stderr).
    progress: optional progress(n) called after each batch with its number of real prompts.
    verbose: print one progress line per context length to stderr.

  Returns:
    {distance: (accuracy, n, T)}.
  """
  groups, counts = collections.defaultdict(list), {}
  for d in sorted(set(int(d) for d in distances)):
    if d < data.MIN_DISTANCE:
      raise ValueError(f"distance {d} is below data.MIN_DISTANCE={data.MIN_DISTANCE}.")
    counts[d] = int(
      examples_per_distance[d] if isinstance(examples_per_distance, dict) else examples_per_distance
    )
    if counts[d] < 1:
      raise ValueError(f"examples_per_distance must be >= 1, got {counts[d]} at distance {d}.")
    groups[data.context_len(d, train_seq_len)].append(d)
  results = {}
  for T, ds in sorted(groups.items()):
    start = time.perf_counter()
    batches = [prompts(seed, d, counts[d], T) for d in ds]
    arrays = {
      k: np.concatenate([b[k] for b in batches]) for k in ("inputs", "targets", "answer_mask")
    }
    total = sum(counts[d] for d in ds)
    batch_size = min(total, batch_size_for(T, max_batch_tokens))
    padded = -(-total // batch_size) * batch_size
    rows = np.arange(padded) % total  # padding repeats the first rows; their scores are dropped
    hits = []
    for i in range(0, padded, batch_size):
      hits.append(
        np.asarray(exact_match_fn({k: v[rows[i : i + batch_size]] for k, v in arrays.items()}))
      )
      if progress is not None:
        progress(min(batch_size, total - i))
    hits = np.split(np.concatenate(hits)[:total], np.cumsum([counts[d] for d in ds])[:-1])
    for d, h in zip(ds, hits):
      results[d] = (float(h.mean()), counts[d], T)
    if verbose:
      print(
        f"[{label}] T={T}: {len(ds)} distances {ds[0]}..{ds[-1]}, {total} prompts, batches of "
        f"{batch_size}, {time.perf_counter() - start:.1f}s",
        file=sys.stderr,
        flush=True,
      )
  return results


def passkey_accuracy(
  graphdef,
  params,
  distances,
  *,
  train_seq_len: int,
  examples_per_distance: int,
  seed: int = 0,
  max_batch_tokens: int = MAX_BATCH_TOKENS,
  exact_match_fn=None,
  progress=None,
  verbose: bool = False,
) -> dict:
  """{distance: exact-match accuracy} of one model: what train.py logs and prints.

  Args:
    graphdef, params: the model.
    distances: the distances (e.g. even_distances(seq_len, num)).
    train_seq_len, examples_per_distance, seed, max_batch_tokens, progress, verbose: see
      accuracy_by_distance.
    exact_match_fn: scores a batch; default one teacher-forced pass (exact_match_step). The
      streaming evaluation passes its own, on the same prompts.
  """
  if exact_match_fn is None:
    exact_match_fn = lambda batch: exact_match_step(params, batch, graphdef=graphdef)
  results = accuracy_by_distance(
    exact_match_fn,
    distances,
    train_seq_len=train_seq_len,
    examples_per_distance=examples_per_distance,
    seed=seed,
    max_batch_tokens=max_batch_tokens,
    progress=progress,
    verbose=verbose,
  )
  return {d: acc for d, (acc, _, _) in results.items()}


def format_accuracy_table(accuracy, reach) -> str:
  """Markdown rows distance | exact match | inside the receptive field? (train.py's table)."""
  rows = ["| distance | exact match | inside RF (distance <= %s) |" % reach, "|---:|---:|:---:|"]
  for distance, acc in sorted(accuracy.items()):
    inside = "yes" if reach is None or distance <= reach else "no"
    rows.append(f"| {distance} | {acc:.1%} | {inside} |")
  return "\n".join(rows)


def _rows(results, *, model, window, layers, reach, train_seq_len):
  return [
    PasskeyRow(
      model=model,
      window=window,
      layers=layers,
      reach=reach,
      distance=d,
      accuracy=acc,
      n=n,
      seq_len=T,
      train_seq_len=train_seq_len,
    )
    for d, (acc, n, T) in sorted(results.items())
  ]


def passkey_sweep(
  graphdef,
  params,
  *,
  reach,
  train_seq_len,
  examples_per_distance=100,
  step=None,
  max_factor=2.0,
  full_max_factor=1.0,
  seed=0,
  distances=None,
  label=None,
  max_batch_tokens=MAX_BATCH_TOKENS,
  edge_examples_per_distance=None,
):
  """Exact-match accuracy of one model over a sweep of distances, as rows (passkey.csv).

  Args:
    graphdef, params: the model.
    reach: sum of (window - 1) over layers, None for full attention (config.reach).
    train_seq_len: the context length T the model was trained at (config.data.seq_len).
    examples_per_distance: fresh random passkeys per distance.
    step, max_factor, full_max_factor: the grid of sweep_distances; ignored with `distances`.
    seed: seeds the prompts.
    distances: optional explicit distances.
    label: the `model` field of the rows; default the window label.
    max_batch_tokens: see accuracy_by_distance.
    edge_examples_per_distance: optional, more passkeys at the distances within
      +-data.FINE_FRACTION of the reach (certifying >= 99.5 % takes about 600 right answers).

  Returns:
    PasskeyRows (swa/analysis/rows.py) sorted by distance, seed 0 (the caller sets the
    training seed): model (label), window, layers, reach, distance, accuracy, n, seq_len (context
    T of the prompts), train_seq_len.
  """
  config = config_of(graphdef, params)
  if distances is None:
    distances = data.sweep_distances(
      reach, train_seq_len, max_factor=max_factor, step=step, full_max_factor=full_max_factor
    )
  label = label or config.window_label
  counts = examples_per_distance
  if edge_examples_per_distance and reach is not None:
    counts = {
      d: edge_examples_per_distance
      if abs(d - reach) <= data.FINE_FRACTION * reach
      else examples_per_distance
      for d in distances
    }
  em_fn = lambda batch: exact_match_step(params, batch, graphdef=graphdef)
  results = accuracy_by_distance(
    em_fn,
    distances,
    train_seq_len=train_seq_len,
    examples_per_distance=counts,
    seed=seed,
    max_batch_tokens=max_batch_tokens,
    label=label,
  )
  return _rows(
    results,
    model=label,
    window=config.window_label,
    layers=config.num_layers,
    reach=reach,
    train_seq_len=train_seq_len,
  )


def cross_window_sweep(
  graphdef, params, window_sizes, *, train_seq_len, label=None, **sweep_kwargs
):
  """passkey_sweep rows of one set of trained params run with each window in window_sizes.

  Every layer gets window w (None = full attention); the rows' `model` field is
  "<label> @ w=<w>" (label defaults to the trained window label). sweep_kwargs go to
  passkey_sweep (examples_per_distance, step, max_factor, seed, distances, ...).
  """
  model_config = config_of(graphdef, params)
  label = label or model_config.window_label
  rows = []
  for w in window_sizes:
    config = dataclasses.replace(model_config, window_size=w)
    rows += passkey_sweep(
      graphdef_for(config),
      params,
      reach=config.reach,
      train_seq_len=train_seq_len,
      label=f"{label} @ w={model_lib.window_name(w)}",
      **sweep_kwargs,
    )
  return rows


def test_passkey_retrieval(
  graphdef,
  params,
  window_sizes=(128, 256, 512, 1024),
  *,
  train_seq_len,
  distances=None,
  examples_per_distance=100,
  max_factor=2.0,
  seed=0,
):
  """Passkey accuracy of one model run with each of several attention windows.

  The window of every layer is set to w and the parameters are reused unchanged (no
  parameter depends on the window). For a model trained with one window and run with
  another, this shows whether retrieval follows the test-time window: a smaller window
  cuts the reach to L * (w - 1); a larger one lets information travel further than in
  training, through attention at relative distances never seen in training.

  (The name is the one the project brief asks for. pytest collects `test_*` names only from
  test files' own namespaces: call it as `evaluate.test_passkey_retrieval` there.)

  Args:
    graphdef, params: the model; loading a workdir is the caller's job
      (train_lib.restore_params).
    window_sizes: windows to try; None means full attention.
    train_seq_len: the trained context length (config.data.seq_len): prompts have it while
      the distance fits.
    distances: distances to evaluate for every window; by default each window gets its
      own data.sweep_distances(L * (w - 1)) (full attention: up to the trained length).
    examples_per_distance: fresh random passkeys per distance.
    max_factor: the default sweep goes to max_factor * L * (w - 1).
    seed: seeds the prompts: the same passkeys for every window.

  Returns:
    {window: {distance: exact-match accuracy in [0, 1]}}.
  """
  rows = cross_window_sweep(
    graphdef,
    params,
    window_sizes,
    train_seq_len=train_seq_len,
    examples_per_distance=examples_per_distance,
    max_factor=max_factor,
    seed=seed,
    distances=distances,
    label="model",
  )
  return {
    w: {r.distance: r.accuracy for r in rows if r.model == f"model @ w={model_lib.window_name(w)}"}
    for w in window_sizes
  }
