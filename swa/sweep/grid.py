"""The grid of a sweep: config overrides x seeds, one named Run each.

A grid is `key=v1,v2;key=v1,v2,...` over config fields (model.window_size=128,256;
model.num_layers=1,2,4,8); a value list that holds a `|` is split on `|` instead, for values that
contain commas (model.window_size=8,32,32,32|32,32,32,32). Every grid point x seed is one Run,
named from its overrides (run_name: "window_size=128,num_layers=2,seed=1"), the folder it trains
in under the sweep folder (swa/sweep/runner.py).
"""

import dataclasses
import re

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
