"""Config sweeps: train a grid of runs x seeds, evaluate each run, aggregate over seeds.

A grid is `key=v1,v2;key=v1,v2,...` over config fields (model.window_size=128,256;
model.num_layers=1,2,4,8); a value list that holds a `|` is split on `|` instead, for values that
contain commas (model.window_size=8,32,32,32|32,32,32,32). Every grid point x seed is one run with
its own folder under the sweep folder, named from its overrides (run_name):

  <sweep>/window_size=128,num_layers=2,seed=1/   train.py's workdir (checkpoints, metrics, ...)
      sweep_run.json     the run's identity (config file, every override) and whether it trained
      train.log, eval.log
      passkey.csv        its evaluation (summary.CSV_FIELDS + seed): the run is finished
  <sweep>/.jax_cache/    JAX's compilation cache, shared by all runs (unless
                         JAX_COMPILATION_CACHE_DIR is set)

Each run is two subprocesses, `train.py` (which resumes a workdir by itself) and the evaluation
(`sweep.py --evaluate_run=<run>`, i.e. aggregate.evaluate_run). A run with a passkey.csv from
the same evaluation settings is skipped, a trained one is only evaluated, an interrupted one
resumes from its checkpoint; a run folder made with another config file or other overrides is
refused. Several runs go at once (swa/workers.py):
worker slot s uses GPU s mod (number of GPUs) through CUDA_VISIBLE_DEVICES, with
XLA_PYTHON_CLIENT_PREALLOCATE=false and a share of the GPU's memory per process; without GPUs
they run on the CPU (by default one at a time). swa/aggregate.py then reads the runs back.
"""

import dataclasses
import json
import os
import re
import sys
import threading
import time

from swa import workers

STATE_FILE = "sweep_run.json"
RESULT_FILE = "passkey.csv"
CACHE_DIR = ".jax_cache"  # JAX's persistent compilation cache, shared by the sweep's runs
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass(frozen=True)
class Run:
  """One grid point with one seed.

  Attributes:
    name: its folder name, e.g. "window_size=128,num_layers=2,seed=1".
    model: the name without the seed (what the seeds of one grid point share; "" without a
      grid).
    seed: config.seed of the run.
    overrides: ((config key, value text), ...): the grid point's overrides, then ("seed", ...).
  """

  name: str
  model: str
  seed: int
  overrides: tuple


# --- The grid ------------------------------------------------------------------------------------


def parse_grid(text):
  """[(config key, [value texts])] from "key=v1,v2;key=v1,v2" (module docstring); "" -> []."""
  axes = []
  for part in (p.strip() for p in (text or "").split(";")):
    if not part:
      continue
    key, eq, values = part.partition("=")
    key = key.strip()
    if not eq or not _KEY.match(key):
      raise ValueError(
        f"--grid: {part!r} is not key=value,value,... (e.g. model.window_size=128,256)."
      )
    values = [v.strip() for v in values.split("|" if "|" in values else ",")]
    if not all(values):
      raise ValueError(f"--grid: {key} has an empty value in {part!r}.")
    if len(set(values)) < len(values):
      raise ValueError(f"--grid: {key} lists a value twice in {part!r}.")
    if key in (k for k, _ in axes):
      raise ValueError(f"--grid names {key} twice.")
    if key == "seed":
      raise ValueError("--grid: give seeds with --seeds=0,1,2, not as a grid axis.")
    axes.append((key, values))
  return axes


def parse_seeds(text):
  """[0, 1, 2] from "0,1,2" or "0-2"."""
  seeds = []
  for part in (p.strip() for p in str(text).split(",")):
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not match:
      raise ValueError(f"--seeds: {part!r} is not a seed (use e.g. 0,1,2 or 0-2).")
    lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
    if hi < lo:
      raise ValueError(f"--seeds: the range {part!r} runs backwards.")
    seeds += range(lo, hi + 1)
  if len(set(seeds)) < len(seeds):
    raise ValueError(f"--seeds: {text!r} lists a seed twice.")
  return seeds


def check_keys(axes, config):
  """Raises a one-line ValueError for a grid key that is not a field of the ConfigDict `config`."""
  for key, _ in axes:
    node = config
    for i, part in enumerate(key.split(".")):
      if not hasattr(node, "keys") or part not in node.keys():
        where = ".".join(key.split(".")[:i]) or "the config"
        raise ValueError(f"--grid: {key} is not a config field ({where} has no {part!r}).")
      node = node[part]


def _value_text(value):
  return re.sub(r"[,/\\ ]", "-", value)


def run_name(assignment, seed):
  """Folder name of a run: "window_size=128,num_layers=2,seed=1".

  Each key is shortened to its last component unless two keys of the assignment share it;
  commas, slashes and spaces inside a value become "-".
  """
  last = [k.rsplit(".", 1)[-1] for k, _ in assignment]
  parts = [
    f"{short if last.count(short) == 1 else key}={_value_text(v)}"
    for short, (key, v) in zip(last, assignment)
  ]
  return ",".join(parts + [f"seed={seed}"])


def model_name(name):
  """A run's name without its seed: "window_size=128,seed=1" -> "window_size=128"; "seed=1" -> ""."""
  return re.sub(r"(^|,)seed=\d+$", "", name)


def expand(axes, seeds):
  """Every grid point x seed as a Run, the first axis varying slowest, seeds fastest."""
  points = [()]
  for key, values in axes:
    points = [p + ((key, v),) for p in points for v in values]
  runs = []
  for point in points:
    for seed in seeds:
      name = run_name(point, seed)
      runs.append(
        Run(name=name, model=model_name(name), seed=seed, overrides=point + (("seed", str(seed)),))
      )
  return runs


def forwarded_overrides(argv):
  """The --config.<field> overrides of a command line, as "--config.x=v" texts, in order."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      if "=" not in arg and i + 1 < len(argv):
        arg, i = f"{arg}={argv[i + 1]}", i + 1
      out.append(arg)
    i += 1
  return out


# --- Runs on disk ----------------------------------------------------------------------------------


def _write_json(path, obj):
  """Writes JSON atomically (a temporary file, then a rename)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def identity(run, config_path, extra_overrides):
  """What makes a run folder this run: the config file, the overrides, the seed."""
  return {
    "config": config_path,
    "overrides": list(extra_overrides),
    "grid": [list(kv) for kv in run.overrides[:-1]],
    "seed": run.seed,
  }


def run_state(run_dir, ident, evaluation=None):
  """ "finished", "trained", "started" or "new"; refuses a folder made for another run.

  A run evaluated with other evaluation settings than `evaluation` counts as "trained": it is
  evaluated again, not trained again.
  """
  path = os.path.join(run_dir, STATE_FILE)
  if not os.path.exists(path):
    if os.path.exists(os.path.join(run_dir, "config.json")):
      raise ValueError(
        f"{run_dir} holds a training run that this sweep did not start (no "
        f"{STATE_FILE}); move it away or choose another --workdir."
      )
    return "new"
  with open(path) as f:
    saved = json.load(f)
  if saved.get("identity") != ident:
    raise ValueError(
      f"{run_dir} was started with other settings ({saved.get('identity')}, now "
      f"{ident}); choose another --workdir for the new settings."
    )
  if os.path.exists(os.path.join(run_dir, RESULT_FILE)) and saved.get("evaluation") == evaluation:
    return "finished"
  return "trained" if saved.get("trained") else "started"


def train_command(
  run, run_dir, *, config_path, extra_overrides, train_script, python=sys.executable
):
  """The train.py command line of a run (grid overrides after the sweep-wide ones win)."""
  grid = [f"--config.{key}={value}" for key, value in run.overrides]
  return [
    python,
    train_script,
    f"--config={config_path}",
    f"--workdir={run_dir}",
    *extra_overrides,
    *grid,
  ]


def _failure(what, status, log_path):
  """ "failed: <what> exited with <status> (<its last log line>); see <log>"."""
  last = ""
  if os.path.exists(log_path):
    with open(log_path, errors="replace") as f:
      lines = [line.strip() for line in f if line.strip()]
    last = f" ({lines[-1][:200]})" if lines else ""
  return f"failed: {what} exited with {status}{last}; see {log_path}"


def run_sweep(
  runs,
  workdir,
  *,
  config_path,
  extra_overrides=(),
  train_script,
  eval_command,
  evaluation=None,
  parallel=1,
  gpus=(),
  runner=None,
  log=print,
):
  """Trains and evaluates every run not yet finished; see the module docstring.

  Args:
    runs: expand()'s Runs.
    workdir: the sweep folder; each run gets <workdir>/<run.name>.
    config_path: the config file, as train.py takes it.
    extra_overrides: "--config.x=v" texts for every run.
    train_script: path of train.py.
    eval_command: function (run, run_dir) -> the command that writes <run_dir>/passkey.csv.
    evaluation: the evaluation's settings (JSON-able), kept in each run's sweep_run.json; a
      run evaluated with other settings is evaluated again.
    parallel: runs at once.
    gpus: GPU ids (workers.detect_gpus()); empty runs on the CPU.
    runner: function (command, env=, log_path=) -> exit status (default: a workers.Runner).
    log: progress lines go here.

  Returns:
    {run name: "skipped" | "done" | "failed: <reason>"}.
  """
  runner = runner or workers.Runner()
  idents = {run.name: identity(run, config_path, extra_overrides) for run in runs}
  states = {
    run.name: run_state(os.path.join(workdir, run.name), idents[run.name], evaluation)
    for run in runs
  }
  todo = [run for run in runs if states[run.name] != "finished"]
  log(
    f"{len(runs)} runs in {workdir}: {len(runs) - len(todo)} finished, "
    f"{sum(s == 'trained' for s in states.values())} to evaluate, "
    f"{sum(s == 'started' for s in states.values())} to resume; {parallel} at a time"
    f"{' on GPUs ' + ','.join(gpus) if gpus else ' on the CPU'}."
  )
  counter = iter(range(1, len(todo) + 1))
  lock = threading.Lock()

  def job(run):
    def do(env):
      run_dir = os.path.join(workdir, run.name)
      os.makedirs(run_dir, exist_ok=True)
      with lock:
        number = next(counter)
      where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "CPU"
      start = time.perf_counter()
      state_path = os.path.join(run_dir, STATE_FILE)
      if states[run.name] != "trained":
        _write_json(state_path, {"identity": idents[run.name], "trained": False})
        log(f"[{number}/{len(todo)}] {run.name}: training on {where}")
        command = train_command(
          run,
          run_dir,
          config_path=config_path,
          extra_overrides=extra_overrides,
          train_script=train_script,
        )
        status = runner(command, env=env, log_path=os.path.join(run_dir, "train.log"))
        if status != 0:
          return _failure("train.py", status, os.path.join(run_dir, "train.log"))
        _write_json(state_path, {"identity": idents[run.name], "trained": True})
      log(f"[{number}/{len(todo)}] {run.name}: evaluating on {where}")
      status = runner(
        eval_command(run, run_dir), env=env, log_path=os.path.join(run_dir, "eval.log")
      )
      if status != 0 or not os.path.exists(os.path.join(run_dir, RESULT_FILE)):
        return _failure("the evaluation", status, os.path.join(run_dir, "eval.log"))
      _write_json(
        state_path, {"identity": idents[run.name], "trained": True, "evaluation": evaluation}
      )
      log(f"[{number}/{len(todo)}] {run.name}: done in {time.perf_counter() - start:.0f} s")
      return "done"

    return do

  os.makedirs(workdir, exist_ok=True)
  # One persistent compilation cache for the sweep: the seeds of a grid point compile the same
  # programs, so every run after the first loads them instead of compiling.
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(os.path.join(workdir, CACHE_DIR)))
  results = workers.run_jobs(
    [job(run) for run in todo],
    parallel=parallel,
    gpus=list(gpus),
    stop=getattr(runner, "stop", None),
    base_env=env,
  )
  outcome = {run.name: "skipped" for run in runs}
  outcome.update({run.name: result for run, result in zip(todo, results)})
  return outcome
