"""swa/cli.py: every user mistake ends in one `error:` line; --debug / SWA_DEBUG keep the traceback.

Each case runs a small entry point (absl flags, an ml_collections config file, `cli.run(main)`)
in a subprocess; it loads swa/cli.py alone and no JAX, so the table is fast.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = """
import importlib.util
import os
from absl import app, flags
from ml_collections import config_flags

# swa/cli.py on its own, without the swa package (which imports JAX): keeps the table fast.
spec = importlib.util.spec_from_file_location("cli", os.path.join(os.environ["REPO"], "swa/cli.py"))
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  steps = _CONFIG.value.num_steps
  if steps < 0:
    raise ValueError(f"num_steps={steps} must be >= 0.")
  if steps == 7:
    open("/no/such/file")
  if steps == 8:
    raise RuntimeError("a bug keeps its traceback")
  if steps == 9:
    raise FloatingPointError("Loss became nan at step 2; stopping.")
  print("ok", steps)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
"""

CONFIG = """
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict({"window_size": 32})
  config.num_steps = 5
  return config
"""


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
  folder = tmp_path_factory.mktemp("cli")
  (folder / "entry.py").write_text(ENTRY)
  (folder / "cfg.py").write_text(CONFIG)
  (folder / "raises.py").write_text("def get_config():\n  raise ValueError('bad x=3')\n")
  (folder / "imports.py").write_text("import no_such_module\n")
  (folder / "noget.py").write_text("x = 1\n")
  return folder


def run(folder, *args, **env):
  return subprocess.run(
    [sys.executable, "entry.py", *args],
    cwd=folder,
    env={**os.environ, "REPO": REPO, "SWA_DEBUG": "", **env},
    capture_output=True,
    text=True,
    timeout=120,
  )


CASES = [
  (["--config=nope.py"], "--config: config file not found: nope.py"),
  (["--config=nope.py", "--config.num_steps=3"], "--config: config file not found: nope.py"),
  (
    ["--config=cfg.py", "--config.model.windw_size=3"],
    "--config.model.windw_size=3: the config has no field 'windw_size'; "
    'Did you mean "window_size" instead of "windw_size"?',
  ),
  (
    ["--config=cfg.py", "--config.modl.window_size=3"],
    "--config.modl.window_size=3: the config has no field 'modl'; "
    'Did you mean "model" instead of "modl"?',
  ),
  (
    ["--config=cfg.py", "--config.num_steps=abc"],
    "flag --config.num_steps=abc: invalid literal for int() with base 10: 'abc'",
  ),
  (["--config=raises.py"], "flag --config=raises.py: ValueError: bad x=3"),
  (
    ["--config=imports.py"],
    "--config=imports.py: ModuleNotFoundError: No module named 'no_such_module'",
  ),
  (["--config=noget.py"], "--config=noget.py: the file defines no get_config() function."),
  (
    ["--config=noget.py", "--config.num_steps=3"],
    "--config=noget.py: the file defines no get_config() function.",
  ),
  ([], "flag --config=None: Flag --config must have a value other than None."),
  (["--config=cfg.py", "--bogus=1"], "Unknown command line flag 'bogus'"),
  (["--config=cfg.py", "extra"], "Unexpected arguments: ['extra']"),
  (["--config=cfg.py", "--config.num_steps=-1"], "num_steps=-1 must be >= 0."),
  (["--config=cfg.py", "--config.num_steps=7"], "No such file or directory: /no/such/file"),
  (["--config=cfg.py", "--config.num_steps=9"], "Loss became nan at step 2; stopping."),
]


@pytest.fixture(scope="module")
def results(entry):
  """Every case of CASES run, four at a time."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    return list(pool.map(lambda case: run(entry, *case[0]), CASES))


@pytest.mark.parametrize("index", range(len(CASES)))
def test_user_mistakes_end_in_one_line(results, index):
  args, line = CASES[index]
  done = results[index]
  assert (done.returncode, done.stderr) == (1, f"error: {line}\n"), args


def test_success_and_bugs_are_untouched(entry):
  done = run(entry, "--config=cfg.py", "--config.num_steps=2")
  assert (done.returncode, done.stdout, done.stderr) == (0, "ok 2\n", "")
  bug = run(entry, "--config=cfg.py", "--config.num_steps=8")
  assert bug.returncode == 1 and "Traceback" in bug.stderr
  assert bug.stderr.strip().endswith("RuntimeError: a bug keeps its traceback")


@pytest.mark.parametrize("how", [{"args": ["--debug"]}, {"env": {"SWA_DEBUG": "1"}}])
def test_debug_shows_the_traceback(entry, how):
  for args in (["--config=cfg.py", "--config.num_steps=-1"], ["--config=cfg.py", "--config.x=1"]):
    done = run(entry, *args, *how.get("args", []), **how.get("env", {}))
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "error: " not in done.stderr
