"""sweep.py and swa/sweep/ (grid, workers, runner): grids, run folders, resuming, several at once,
any task; the report over seeds (swa/analysis/rows.py's collect)."""

import csv
import json
import os
import subprocess
import sys
import threading

import pytest

from configs import tiny
from swa.analysis import rows as rows_lib
from swa.analysis import summary
from swa.sweep import grid, runner, workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- The grid --------------------------------------------------------------------------------------


def test_parse_grid():
  assert grid.parse_grid("model.window_size=128,256;model.num_layers=1,2,4,8") == [
    ("model.window_size", ["128", "256"]),
    ("model.num_layers", ["1", "2", "4", "8"]),
  ]
  assert grid.parse_grid(" model.window_size = 8,32,32,32 | 32,32,32,32 ;") == [
    ("model.window_size", ["8,32,32,32", "32,32,32,32"])
  ]
  assert grid.parse_grid("") == []


@pytest.mark.parametrize(
  "text, message",
  [
    ("model.window_size", "is not key=value"),
    ("=1,2", "is not key=value"),
    ("model..x=1", "is not key=value"),
    ("model.window_size=128,,256", "has an empty value"),
    ("model.window_size=128,128", "lists a value twice"),
    ("num_steps=1;num_steps=2", "names num_steps twice"),
    ("seed=0,1", "--seeds"),
  ],
)
def test_bad_grids_give_one_line(text, message):
  with pytest.raises(ValueError, match=message) as error:
    grid.parse_grid(text)
  assert "\n" not in str(error.value)


def test_parse_seeds():
  assert grid.parse_seeds("0,1,2") == [0, 1, 2]
  assert grid.parse_seeds("3-5,9") == [3, 4, 5, 9]
  for bad in ("a", "2-1", "0,0", ""):
    with pytest.raises(ValueError, match="--seeds"):
      grid.parse_seeds(bad)


def test_check_keys():
  config = tiny.get_config()
  grid.check_keys(grid.parse_grid("model.window_size=1;num_steps=2"), config)
  with pytest.raises(ValueError, match=r"model.windw is not a config field \(model has no"):
    grid.check_keys(grid.parse_grid("model.windw=1"), config)
  with pytest.raises(ValueError, match="num_steps.x is not a config field"):
    grid.check_keys(grid.parse_grid("num_steps.x=1"), config)


def test_runs_are_named_from_their_overrides():
  runs = grid.expand(grid.parse_grid("model.window_size=128,256;model.num_layers=1,2"), [0, 1])
  assert [r.name for r in runs[:3]] == [
    "window_size=128,num_layers=1,seed=0",
    "window_size=128,num_layers=1,seed=1",
    "window_size=128,num_layers=2,seed=0",
  ]
  assert len(runs) == 8 and len({r.name for r in runs}) == 8
  assert runs[1].model == "window_size=128,num_layers=1" and runs[1].seed == 1
  assert runs[1].overrides == (
    ("model.window_size", "128"),
    ("model.num_layers", "1"),
    ("seed", "1"),
  )
  # Keys that share their last component keep their full name; commas inside values become -.
  clash = grid.expand(grid.parse_grid("model.x=1;data.x=2;model.window_size=8,32|16"), [3])
  assert clash[0].name == "model.x=1,data.x=2,window_size=8-32,seed=3"
  assert grid.expand([], [0, 1])[1].name == "seed=1" and grid.expand([], [1])[0].model == ""


def test_forwarded_overrides():
  argv = ["--config=c.py", "--config.num_steps=5", "--grid=x=1", "--config.data.seq_len", "64"]
  assert grid.forwarded_overrides(argv) == ["--config.num_steps=5", "--config.data.seq_len=64"]


def test_worker_env_spreads_slots_over_gpus():
  env = workers.worker_env(3, ["0", "1"], 4, base={"PATH": "x"})
  assert env == {
    "PATH": "x",
    "CUDA_VISIBLE_DEVICES": "1",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450",
  }
  assert workers.worker_env(0, [], 2, base={"PATH": "x"}) == {"PATH": "x"}
  assert workers.describe([]) == "CPU"


def test_run_jobs_runs_several_at_once_in_distinct_slots():
  barrier, seen = threading.Barrier(2, timeout=10), []

  def job(i):
    def do(env):
      barrier.wait()  # only returns when two jobs run at the same time
      seen.append(env["CUDA_VISIBLE_DEVICES"])
      return i

    return do

  assert workers.run_jobs([job(i) for i in range(4)], parallel=2, gpus=["0", "1"]) == [0, 1, 2, 3]
  assert sorted(seen) == ["0", "0", "1", "1"]
  with pytest.raises(ValueError, match="--parallel must be >= 1"):
    workers.run_jobs([], parallel=0, gpus=[])


def test_runner_logs_commands_and_stop_ends_them(tmp_path):
  runner, log = workers.Runner(), str(tmp_path / "run.log")
  assert runner([sys.executable, "-c", "print('hello')"], env=dict(os.environ), log_path=log) == 0
  assert (
    runner([sys.executable, "-c", "import sys; sys.exit(3)"], env=dict(os.environ), log_path=log)
    == 3
  )
  status = []
  thread = threading.Thread(
    target=lambda: status.append(
      runner(
        [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"],
        env=dict(os.environ),
        log_path=log,
      )
    )
  )
  thread.start()
  while "sleeping\n" not in open(log).read():  # wait until the sleeper runs
    threading.Event().wait(0.05)
  runner.stop()
  thread.join(timeout=30)
  assert status and status[0] != 0
  assert runner([sys.executable, "-c", "print('late')"], env=dict(os.environ), log_path=log) == -1
  text = open(log).read()
  assert "\nhello\n" in text and "\nlate\n" not in text
  assert "=== not started: the sweep is stopping" in text


# --- Run folders and resuming (a fake runner instead of subprocesses) -----------------------------


class FakeRunner:
  """Stands for train.py (writes config.json) and the evaluation (writes passkey.csv)."""

  def __init__(self, fail=(), writes_eval_json=False):
    self.calls, self.fail, self.writes_eval_json = [], set(fail), writes_eval_json

  def __call__(self, command, *, env, log_path):
    assert env["JAX_COMPILATION_CACHE_DIR"]
    run_dir = os.path.dirname(log_path)
    kind = "train" if command[1].endswith("train.py") else "eval"
    self.calls.append((kind, os.path.basename(run_dir)))
    with open(log_path, "a") as f:
      f.write(f"{kind} output\n")
      if (kind, os.path.basename(run_dir)) in self.fail:
        f.write("error: something one-line\n")
        return 1
    if kind == "train":
      open(os.path.join(run_dir, "config.json"), "w").close()
      if self.writes_eval_json:
        open(os.path.join(run_dir, "eval.json"), "w").close()
    else:
      rows_lib.write_rows(os.path.join(run_dir, "passkey.csv"), [])
    return 0


def sweep_once(
  workdir, fake, overrides=("--config.num_steps=2",), parallel=1, evaluation=None, evaluates=True
):
  runs = grid.expand(grid.parse_grid("model.window_size=16,32"), [0, 1])
  return runner.run_sweep(
    runs,
    str(workdir),
    config_path="configs/tiny.py",
    extra_overrides=list(overrides),
    train_script="train.py",
    eval_command=(lambda run, d: [sys.executable, "eval", d]) if evaluates else None,
    evaluation=evaluation,
    parallel=parallel,
    runner=fake,
    log=lambda line: None,
  )


def test_a_sweep_skips_finished_runs_and_resumes_the_others(tmp_path):
  first = FakeRunner(fail={("train", "window_size=32,seed=0"), ("eval", "window_size=32,seed=1")})
  outcome = sweep_once(tmp_path, first, parallel=2)
  assert outcome["window_size=16,seed=0"] == "done"
  assert outcome["window_size=32,seed=0"].startswith(
    "failed: train.py exited with 1 (error: something one-line); see "
  )
  assert outcome["window_size=32,seed=1"].startswith("failed: the evaluation exited with 1")
  again = FakeRunner()
  outcome = sweep_once(tmp_path, again)
  # The finished runs are skipped, the failed training resumes, the trained run is only evaluated.
  assert outcome == {
    "window_size=16,seed=0": "skipped",
    "window_size=16,seed=1": "skipped",
    "window_size=32,seed=0": "done",
    "window_size=32,seed=1": "done",
  }
  assert sorted(again.calls) == [
    ("eval", "window_size=32,seed=0"),
    ("eval", "window_size=32,seed=1"),
    ("train", "window_size=32,seed=0"),
  ]
  third = FakeRunner()
  assert set(sweep_once(tmp_path, third).values()) == {"skipped"} and not third.calls
  # Other evaluation settings: every run is evaluated again, none trained again.
  fourth = FakeRunner()
  assert set(sweep_once(tmp_path, fourth, evaluation={"examples_per_distance": 7}).values()) == {
    "done"
  }
  assert sorted(kind for kind, _ in fourth.calls) == ["eval"] * 4


def test_a_run_folder_of_other_settings_is_refused(tmp_path):
  sweep_once(tmp_path, FakeRunner())
  with pytest.raises(ValueError, match="was started with other settings"):
    sweep_once(tmp_path, FakeRunner(), overrides=("--config.num_steps=3",))
  stray = tmp_path / "other" / "window_size=16,seed=0"
  stray.mkdir(parents=True)
  (stray / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="that this sweep did not start"):
    sweep_once(tmp_path / "other", FakeRunner())


def test_a_sweep_of_another_task_trains_only_and_says_how_to_report(tmp_path):
  fake = FakeRunner(writes_eval_json=True, fail={("train", "window_size=32,seed=1")})
  outcome = sweep_once(tmp_path, fake, evaluates=False)
  assert [kind for kind, _ in fake.calls] == ["train"] * 4  # no evaluation step
  assert outcome["window_size=16,seed=0"] == "done"
  assert outcome["window_size=32,seed=1"].startswith("failed: train.py exited with 1")
  again = FakeRunner(writes_eval_json=True)
  outcome = sweep_once(tmp_path, again, evaluates=False)
  assert again.calls == [("train", "window_size=32,seed=1")]  # eval.json: the others finished
  assert list(outcome.values()).count("skipped") == 3
  assert (
    runner.result_file("text") == "eval.json" and runner.result_file("passkey") == "passkey.csv"
  )
  assert runner.report_command("text", ["s/a", "s/b"], "s/report") == (
    "python eval_text.py --workdirs=s/a,s/b --out=s/report"
  )


def test_train_command_puts_the_grid_after_the_sweep_wide_overrides():
  run = grid.expand(grid.parse_grid("model.window_size=16"), [2])[0]
  assert runner.train_command(
    run,
    "d",
    config_path="c.py",
    extra_overrides=["--config.seed=9"],
    train_script="train.py",
    python="py",
  ) == [
    "py",
    "train.py",
    "--config=c.py",
    "--workdir=d",
    "--config.seed=9",
    "--config.model.window_size=16",
    "--config.seed=2",
  ]


# --- Aggregating from CSVs ---------------------------------------------------------------------------


def write_csv(path, rows, with_seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fields = rows_lib.FIELDS if with_seed else rows_lib.FIELDS[:-1]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def synthetic(model, seed, accuracies, reach=508, window="128"):
  return [
    {
      "model": model,
      "window": window,
      "layers": 4,
      "reach": reach,
      "distance": d,
      "inside": reach is None or d <= reach,
      "accuracy": a,
      "n": 100,
      "seq_len": 640,
      "train_seq_len": 640,
      "beyond_train_len": False,
      "seed": seed,
    }
    for d, a in accuracies.items()
  ]


def test_seeds_come_from_the_column_the_name_or_the_folder(tmp_path):
  write_csv(
    str(tmp_path / "sw" / "w128,seed=0" / "passkey.csv"),
    synthetic("w128", 0, {100: 1.0}),
    with_seed=True,
  )
  write_csv(
    str(tmp_path / "sw" / "w128,seed=1" / "passkey.csv"),
    synthetic("w128", 7, {100: 0.9}),
    with_seed=False,
  )  # seed from the folder: 1
  write_csv(
    str(tmp_path / "old" / "passkey.csv"),
    synthetic("w128_s2", 0, {100: 0.8}) + synthetic("full", 0, {100: 1.0}, None, "full"),
    with_seed=False,
  )  # from the name; else 0
  rows = rows_lib.collect([str(tmp_path / "sw"), str(tmp_path / "old")])
  assert [(r.model, r.seed) for r in rows] == [
    ("w128", 0),
    ("w128", 1),
    ("w128_s2", 2),
    ("full", 0),
  ]
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no passkey.csv"):
    rows_lib.collect([str(tmp_path / "empty")])
  with pytest.raises(FileNotFoundError, match="nothing"):
    rows_lib.collect([str(tmp_path / "nothing")])


def test_two_sweeps_of_one_model_keep_their_seeds_apart_by_sweep(tmp_path):
  """Full attention trained at two lengths is "full" in both files: each sweep's runs take its name."""
  for sweep_name, accuracy in (("full2176", 1.0), ("full1024", 0.5)):
    for seed in (0, 1):
      write_csv(
        str(tmp_path / sweep_name / f"seed={seed}" / "passkey.csv"),
        synthetic("full", seed, {100: accuracy}, None, "full"),
        with_seed=True,
      )
  rows = rows_lib.collect([str(tmp_path / "full2176"), str(tmp_path / "full1024")])
  assert [(r.model, r.seed) for r in rows] == [
    ("full2176", 0),
    ("full2176", 1),
    ("full1024", 0),
    ("full1024", 1),
  ]


def test_sweep_runs_are_named_by_grid_point_and_clashes_by_sweep(tmp_path):
  """A grid point in two sweeps, or two sweeps of one folder name, get the next folder up."""
  for where in (
    "a/depth/num_layers=2,seed=0",
    "a/wide/num_layers=2,seed=0",
    "a/wide/num_layers=4,seed=0",
  ):
    write_csv(
      str(tmp_path / where / "passkey.csv"), synthetic("128", 0, {100: 1.0}), with_seed=True
    )
  for where in ("h100/w512/seed=0", "h200/w512/seed=0", "h200/w512/seed=1"):
    write_csv(
      str(tmp_path / where / "passkey.csv"), synthetic("512", 0, {100: 1.0}), with_seed=False
    )
  rows = rows_lib.collect([str(tmp_path / "a" / "depth"), str(tmp_path / "a" / "wide")])
  assert [r.model for r in rows] == ["depth/num_layers=2", "wide/num_layers=2", "num_layers=4"]
  rows = rows_lib.collect([str(tmp_path / "h100" / "w512"), str(tmp_path / "h200" / "w512")])
  assert [(r.model, r.seed) for r in rows] == [("h100/w512", 0), ("h200/w512", 0), ("h200/w512", 1)]


def test_the_same_model_and_seed_in_two_files_take_their_folder_names(tmp_path):
  for folder in ("w512_s0_f03", "w512_s0_f03_6k"):
    write_csv(
      str(tmp_path / folder / "passkey.csv"),
      synthetic("w512_s0_f03", 0, {100: 1.0}),
      with_seed=False,
    )
  summaries = summary.summarize(rows_lib.collect([str(tmp_path)]))
  assert [s["model"] for s in summaries] == ["w512_f03", "w512_f03_6k"]


def test_aggregate_command_writes_the_headline_table(tmp_path):
  for seed, accs in enumerate(
    [
      {100: 1.0, 300: 0.98, 500: 0.60, 600: 0.0},
      {100: 1.0, 300: 0.96, 500: 0.40, 600: 0.0},
      {100: 0.99, 300: 0.97, 500: 0.50, 600: 0.0},
    ]
  ):
    write_csv(
      str(tmp_path / "sw" / f"window_size=128,seed={seed}" / "passkey.csv"),
      synthetic("window_size=128", seed, accs),
      with_seed=True,
    )
  done = subprocess.run(
    [sys.executable, "sweep.py", f"--aggregate={tmp_path / 'sw'}", f"--out={tmp_path / 'out'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr
  text = (tmp_path / "out" / "passkey.md").read_text()
  assert (
    "| window_size=128 | 128 | 4 | 508 | 3 (0, 1, 2) | 82.2 % [79.6, 84.6] | [73.1, 91.3] | "
    "86.0 / 78.7 / 82.0 | 3 of 3 | ~512 tokens at 95 % | "
    "82.2 % [79.6, 84.6], seeds [73.1, 91.3] ✗ (seeds) | 300 / 300 | 500 | "
    "0.984 (-1.6 %) [0.841, 1.103] ? |"
  ) in text
  assert "Recall beyond the reach is 0 by construction" in text
  for name in (
    "passkey.csv",
    "passkey_by_distance.csv",
    "passkey_curves.png",
    "passkey_heatmap.png",
  ):
    assert (tmp_path / "out" / name).exists()
  with open(tmp_path / "out" / "passkey_by_distance.csv") as f:
    by_distance = list(csv.DictReader(f))
  assert by_distance[2]["per_seed"] == "0.6;0.4;0.5" and by_distance[2]["hits"] == "150"
  assert float(by_distance[2]["wilson_low"]) == pytest.approx(0.44378, abs=1e-5)  # 150 / 300


@pytest.mark.parametrize(
  "args, message",
  [
    (
      [f"--config={REPO}/configs/tiny.py", "--workdir=x", "--grid=model.window_size"],
      "error: --grid: 'model.window_size' is not key=value",
    ),
    (
      [f"--config={REPO}/configs/tiny.py", "--workdir=x", "--grid=model.windw=3"],
      "error: --grid: model.windw is not a config field",
    ),
    (["--aggregate=nowhere", "--out=x"], "error: No such file or folder: nowhere"),
    (
      [
        f"--config={REPO}/configs/tiny.py",
        "--workdir=x",
        "--grid=model.window_size=8",
        "--parallel=0",
      ],
      "error: --parallel=0 must be an integer >= 1.",
    ),
    (["--aggregate=a.csv", "--out=x", "--eval_step=0"], "error: --eval_step=0 must be an integer"),
    (["--grid=model.window_size=3"], "error: A sweep needs --config and --workdir"),
  ],
)
def test_command_line_mistakes_give_one_line(tmp_path, args, message):
  done = subprocess.run(
    [sys.executable, os.path.join(REPO, "sweep.py"), *args],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": REPO},
  )
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith(message), done.stderr
  assert not (tmp_path / "x").exists()


# --- A real sweep on the CPU ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_two_by_two_sweep_on_the_cpu_trains_evaluates_and_resumes(tmp_path):
  workdir = tmp_path / "sw"
  args = [
    sys.executable,
    "sweep.py",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    "--grid=model.window_size=24,32;model.num_layers=2,3",
    "--seeds=0",
    "--gpus=",
    "--config.num_steps=2",
    "--config.data.seq_len=64",
    "--config.data.batch_size=2",
    "--config.eval.examples_per_distance=2",
    "--config.eval.num_distances=2",
    "--examples_per_distance=2",
    "--max_factor=1.2",
    "--eval_step=16",
  ]
  done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "4 runs in" in done.stdout and "[4/4]" in done.stdout
  names = sorted(p.name for p in workdir.iterdir() if p.is_dir() and p.name != ".jax_cache")
  assert names == [
    "window_size=24,num_layers=2,seed=0",
    "window_size=24,num_layers=3,seed=0",
    "window_size=32,num_layers=2,seed=0",
    "window_size=32,num_layers=3,seed=0",
  ]
  rows = rows_lib.read_rows(str(workdir / names[3] / "passkey.csv"))
  assert {(r.model, r.seed, r.window, r.layers, r.reach) for r in rows} == {
    ("window_size=32,num_layers=3", 0, "32", 3, 93)
  }
  text = (workdir / "passkey.md").read_text()
  assert "| window_size=24,num_layers=2 | 24 | 2 | 46 | 1 (0) |" in text
  assert "- Runs: 4 of 4 finished; trained on CPU, 1 at a time" in text
  with open(workdir / "sweep.json") as f:
    record = json.load(f)
  assert set(record["runs"].values()) == {"done"} and record["wall_seconds"] > 0
  # Again: nothing to do. Without one evaluation: only that run is evaluated, not trained.
  (workdir / names[0] / "passkey.csv").unlink()
  again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stdout + again.stderr
  assert "3 finished, 1 to evaluate, 0 to resume" in again.stdout
  assert "training" not in again.stdout and f"{names[0]}: evaluating" in again.stdout


def _processes_mentioning(text):
  """Pids of live processes whose command line contains text (Linux /proc)."""
  pids = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        if text.encode() in f.read():
          pids.append(int(entry))
    except (OSError, ValueError):
      continue
  return pids


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the subprocesses")
def test_sigterm_stops_the_sweep_and_its_subprocesses(tmp_path):
  workdir = tmp_path / "sw"
  args = [
    sys.executable,
    "sweep.py",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    "--grid=model.window_size=32",
    "--seeds=0",
    "--gpus=",
    "--config.num_steps=100000",
    "--config.data.seq_len=64",
    "--config.data.batch_size=2",
  ]
  process = subprocess.Popen(
    args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  log = workdir / "window_size=32,seed=0" / "train.log"
  for _ in range(1200):  # until train.py has built its model (at most 120 s)
    if log.exists() and "parameters" in log.read_text(errors="replace"):
      break
    threading.Event().wait(0.1)
  process.terminate()
  out, err = process.communicate(timeout=120)
  assert process.returncode == 130 and err.strip().endswith("error: interrupted"), out + err
  assert _processes_mentioning(str(workdir)) == []
