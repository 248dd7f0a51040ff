# GPU call 2: train w128, w256, w512 and full at once on one card, then evaluate them.
# Each training is capped at TRAIN_SECONDS; a capped run is evaluated from its last checkpoint.
set -o pipefail
source scripts/gpu_setup.sh
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
mkdir -p logs
for c in w128 w256 w512 full; do
  ( start=$(date +%s)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.22 timeout $TRAIN_SECONDS python3 train.py --config=configs/$c.py \
      --workdir=workdirs/$c > logs/train_$c.log 2>&1
    echo "exit=$? wall_s=$(( $(date +%s) - start ))" >> logs/train_$c.log ) &
done
wait
for c in w128 w256 w512 full; do echo "== $c"; tail -4 logs/train_$c.log; done
timeout 200 python3 eval_passkey.py --workdirs=workdirs/w128,workdirs/w256,workdirs/w512,workdirs/full \
  --out=results 2> logs/eval.log | tail -20
tar czf $OUT/stage2.tgz results logs workdirs/*/metrics.jsonl workdirs/*/eval.json workdirs/*/config.json
