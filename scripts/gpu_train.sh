# GPU: train w128, w256, w512 and full at once on one card (each resumes from its last checkpoint),
# each capped at TRAIN_SECONDS of wall time; with EVAL=1, then evaluate all four into results/.
# One call of 10 minutes does not finish them: run it twice on the same warm machine, e.g.
#   TRAIN_SECONDS=540 bash scripts/gpu_train.sh; TRAIN_SECONDS=300 EVAL=1 bash scripts/gpu_train.sh
set -o pipefail
source scripts/gpu_setup.sh
mkdir -p logs
for c in w128 w256 w512 full; do
  ( start=$(date +%s)
    timeout ${TRAIN_SECONDS:-540} python3 train.py --config=configs/$c.py --workdir=workdirs/$c \
      --config.checkpoint_every_steps=250 >> logs/train_$c.log 2>&1
    echo "exit=$? wall_s=$(( $(date +%s) - start ))" >> logs/train_$c.log ) &
done
wait
for c in w128 w256 w512 full; do echo "== $c"; tail -c 600 logs/train_$c.log; echo; done
if [ "${EVAL:-0}" = 1 ]; then
  timeout 240 python3 eval_passkey.py --workdirs=workdirs/w128,workdirs/w256,workdirs/w512,workdirs/full \
    --out=results 2> logs/eval.log | tail -12
fi
tar czf $OUT/train.tgz --ignore-failed-read results logs workdirs/*/metrics.jsonl workdirs/*/eval.json \
  workdirs/*/config.json
