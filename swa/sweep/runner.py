"""The sweep runner: train every grid point x seed, evaluate each run, resume what stopped.

Every Run of swa/sweep/grid.py has its own folder under the sweep folder:

  <sweep>/window_size=128,num_layers=2,seed=1/   train.py's workdir (checkpoints, metrics, ...)
      sweep_run.json     the run's identity (config file, every override) and whether it trained
      train.log, eval.log
      passkey.csv        passkey task: its evaluation (rows.FIELDS): the run is finished
      eval.json          any other task: train.py's final evaluation: the run is finished
  <sweep>/.jax_cache/    JAX's compilation cache, shared by all runs (unless
                         JAX_COMPILATION_CACHE_DIR is set)

The task is the config's `task` field (default "passkey"). A passkey run is two subprocesses,
`train.py` (which resumes a workdir by itself) and its evaluation (`sweep.py --evaluate_run=<run>`,
swa/evaluate_workdirs.py), and the sweep ends with the report over seeds
(swa/analysis/report.py). A run of another task is train.py alone (its eval.json is the result);
the sweep then prints the command that reports those runs (report_command). A finished run (its
result from the same evaluation settings) is skipped, a trained one is only evaluated, an
interrupted one resumes from its checkpoint; a run folder made with another config file or other
overrides is refused. Several runs go at once (swa/sweep/workers.py): worker slot s uses GPU s
mod (number of GPUs) through CUDA_VISIBLE_DEVICES, with XLA_PYTHON_CLIENT_PREALLOCATE=false and a
share of the GPU's memory per process; without GPUs they run on the CPU (by default one at a
time).
"""

import dataclasses
import json
import os
import shlex
import sys
import threading
import time

from swa import reports
from swa.checks import check_int
from swa.sweep import grid, workers

STATE_FILE = "sweep_run.json"
RESULT_FILE = "passkey.csv"  # a passkey run's result, written by its evaluation
TRAINED_RESULT_FILE = "eval.json"  # any other task's result, written by train.py at the end
CACHE_DIR = ".jax_cache"  # JAX's persistent compilation cache, shared by the sweep's runs


def result_file(task):
  """The file whose presence makes a run of this task finished."""
  return RESULT_FILE if task == "passkey" else TRAINED_RESULT_FILE


def report_command(task, run_dirs, out):
  """The command that reports finished runs of a task that the sweep does not evaluate itself:
  eval_<task>.py over the run folders (e.g. eval_text.py for "text")."""
  return shlex.join(
    ["python", f"eval_{task}.py", f"--workdirs={','.join(run_dirs)}", f"--out={out}"]
  )


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


def run_state(run_dir, ident, evaluation=None, result=RESULT_FILE):
  """ "finished", "trained", "started" or "new"; refuses a folder made for another run.

  A run whose `result` file is there from the same `evaluation` settings is finished; one
  evaluated with other settings counts as "trained": it is evaluated again, not trained again.
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
  if os.path.exists(os.path.join(run_dir, result)) and saved.get("evaluation") == evaluation:
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
  eval_command=None,
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
    eval_command: function (run, run_dir) -> the command that writes <run_dir>/passkey.csv; None
      for a task whose train.py writes the result itself (<run_dir>/eval.json).
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
  result = RESULT_FILE if eval_command else TRAINED_RESULT_FILE
  states = {
    run.name: run_state(os.path.join(workdir, run.name), idents[run.name], evaluation, result)
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
      if eval_command is None:
        if not os.path.exists(os.path.join(run_dir, result)):
          return f"failed: train.py wrote no {result}; see {os.path.join(run_dir, 'train.log')}"
        _write_json(
          state_path, {"identity": idents[run.name], "trained": True, "evaluation": evaluation}
        )
        log(f"[{number}/{len(todo)}] {run.name}: done in {time.perf_counter() - start:.0f} s")
        return "done"
      log(f"[{number}/{len(todo)}] {run.name}: evaluating on {where}")
      status = runner(
        eval_command(run, run_dir), env=env, log_path=os.path.join(run_dir, "eval.log")
      )
      if status != 0 or not os.path.exists(os.path.join(run_dir, result)):
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


# --- The command ---------------------------------------------------------------------------------

EVALUATION_FIELDS = (
  "examples_per_distance",
  "max_factor",
  "full_max_factor",
  "step",
  "edge_examples_per_distance",
)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What sweep.py was asked to do (its flags), checked on creation.

  Attributes:
    script: the path of sweep.py (a passkey run's evaluation runs it with --evaluate_run).
    command: the command line, for the records.
    config, config_path: the experiment config (a locked ConfigDict) and its file.
    workdir: the sweep folder.
    grid, seeds: grid.parse_grid's and grid.parse_seeds's texts.
    overrides: the --config.<field> overrides, forwarded to every train.py.
    parallel: runs at once (None: one per GPU, 1 on the CPU).
    gpus: GPU ids (None: detect them).
    evaluation: {EVALUATION_FIELDS: value} of each passkey run's evaluation.
    aggregate, out: instead of a sweep, the report of these passkey.csv files or folders.
    evaluate_run: instead of a sweep, evaluate this one run folder.
  """

  script: str
  command: str
  config: object = None
  config_path: str = None
  workdir: str = None
  grid: str = ""
  seeds: str = "0"
  overrides: tuple = ()
  parallel: int = None
  gpus: tuple = None
  evaluation: dict = dataclasses.field(default_factory=dict)
  aggregate: tuple = ()
  out: str = None
  evaluate_run: str = None

  def __post_init__(self):
    if self.parallel is not None:
      check_int("--parallel", self.parallel)
    e = self.evaluation
    check_int("--examples_per_distance", e.get("examples_per_distance", 1))
    check_int("--edge_examples_per_distance", e.get("edge_examples_per_distance") or 0, low=0)
    if e.get("step") is not None:
      check_int("--eval_step", e["step"])
    if not e.get("max_factor", 1) > 0:
      raise ValueError(f"--max_factor={e['max_factor']} must be > 0.")
    if not e.get("full_max_factor", 1) >= 1:
      raise ValueError(f"--full_max_factor={e['full_max_factor']} must be >= 1.")


def _eval_command(settings):
  e = settings.evaluation

  def command(run, run_dir):
    args = [sys.executable, os.path.abspath(settings.script), f"--evaluate_run={run_dir}"]
    args += [f"--{k}={e[k] or 0}" for k in EVALUATION_FIELDS if k != "step"]
    return args + ([f"--eval_step={e['step']}"] if e.get("step") else [])

  return command


def _report(paths, out, command, extra=()):
  from swa.analysis import report, tables  # Only for a passkey sweep's report.

  summaries, _ = report.merge(paths, out, command=command, extra=extra)
  print(tables.format_headline_table(summaries))
  print(
    f"Wrote {out}/passkey.md, passkey.csv, passkey_by_distance.csv and figures", file=sys.stderr
  )


def _sweep(s):
  if s.config is None or not s.workdir:
    raise ValueError("A sweep needs --config and --workdir (or pass --aggregate / --evaluate_run).")
  axes = grid.parse_grid(s.grid)
  grid.check_keys(axes, s.config)
  runs = grid.expand(axes, grid.parse_seeds(s.seeds))
  gpus = workers.detect_gpus() if s.gpus is None else [g for g in s.gpus if g]
  parallel = s.parallel or max(1, len(gpus))
  task = s.config.get("task", "passkey")
  train_script = os.path.join(os.path.dirname(os.path.abspath(s.script)), "train.py")
  start = time.perf_counter()
  outcome = run_sweep(
    runs,
    s.workdir,
    config_path=s.config_path,
    extra_overrides=list(s.overrides),
    train_script=train_script,
    eval_command=_eval_command(s) if task == "passkey" else None,
    evaluation=s.evaluation if task == "passkey" else None,
    parallel=parallel,
    gpus=gpus,
    log=lambda line: print(line, flush=True),
  )
  _write_json(
    os.path.join(s.workdir, "sweep.json"),
    {
      "command": s.command,
      "date": reports.utc_date(with_time=True),
      "devices": workers.describe(gpus),
      "task": task,
      "parallel": parallel,
      "wall_seconds": round(time.perf_counter() - start, 1),
      "runs": outcome,
    },
  )
  result = result_file(task)
  finished = [
    os.path.join(s.workdir, r.name)
    for r in runs
    if os.path.exists(os.path.join(s.workdir, r.name, result))
  ]
  if finished and task == "passkey":
    _report(
      finished,
      s.workdir,
      s.command,
      extra=[
        f"Runs: {len(finished)} of {len(runs)} finished; trained on {workers.describe(gpus)}, "
        f"{parallel} at a time (`sweep.json`: each run's outcome, the wall time)"
      ],
    )
  elif finished:
    print(
      f"{len(finished)} of {len(runs)} {task} runs finished; report them with:\n  "
      + report_command(task, finished, os.path.join(s.workdir, "report"))
    )
  failed = {name: why for name, why in outcome.items() if why.startswith("failed")}
  if failed:
    name, why = next(iter(failed.items()))
    raise ValueError(
      f"{len(failed)} of {len(runs)} runs failed; the report holds the others. First: {name}: {why}"
    )


def main(settings):
  """sweep.py's one call: evaluate one run, report CSVs, or run the sweep (module docstring)."""
  if settings.evaluate_run:
    from swa import evaluate_workdirs  # JAX: only for the evaluation of one run.

    e = settings.evaluation
    evaluate_workdirs.evaluate_run(
      settings.evaluate_run,
      **{**e, "edge_examples_per_distance": e.get("edge_examples_per_distance") or None},
    )
  elif settings.aggregate:
    if not settings.out:
      raise ValueError("--aggregate needs --out, the folder for the table and files.")
    _report(list(settings.aggregate), settings.out, settings.command)
  else:
    _sweep(settings)
