# GPU, issue 4: does the w512 relay form with a faster distance curriculum, and on other seeds?
# Trains three configs/w512.py runs at once on one card (each resumes from its last checkpoint):
#   w512_s0_f03  seed 0, curriculum_fraction 0.3  (seed 0 at 0.7: results/passkey.md)
#   w512_s1_f03  seed 1, curriculum_fraction 0.3
#   w512_s1_f07  seed 1, curriculum_fraction 0.7 (configs/w512.py's value was 0.7 then, now 0.3)
# A run that finishes its 4,000 steps is then evaluated by eval_passkey.py into evals/<run>/,
# in the same call if CALL_SECONDS leaves EVAL_SECONDS for it, else in the next call. One call of
# 10 minutes does not finish them: run it again on the same warm machine until all are evaluated.
#   bash scripts/gpu_w512_seeds.sh; bash scripts/gpu_w512_seeds.sh
# Results: results/w512_recipe.md (H200, 2026-11-29).
set -o pipefail
deadline=$(( $(date +%s) + ${CALL_SECONDS:-580} ))
source scripts/gpu_setup.sh
mkdir -p logs evals

run() {  # run NAME OVERRIDES...: train (unless done), then evaluate (unless done or out of time)
  local name=$1; shift
  if [ ! -f workdirs/$name/eval.json ]; then
    start=$(date +%s)
    timeout $(( deadline - start - 5 )) python3 train.py --config=configs/w512.py \
      --workdir=workdirs/$name --config.checkpoint_every_steps=250 "$@" >> logs/train_$name.log 2>&1
    echo "exit=$? wall_s=$(( $(date +%s) - start ))" >> logs/train_$name.log
  fi
  left=$(( deadline - $(date +%s) ))
  if [ -f workdirs/$name/eval.json ] && [ ! -f evals/$name/passkey.md ] \
      && [ $left -ge ${EVAL_SECONDS:-120} ]; then
    timeout $(( left - 5 )) python3 eval_passkey.py --workdirs=workdirs/$name --out=evals/$name \
      >> logs/eval_$name.log 2>&1
    echo "eval exit=$?" >> logs/eval_$name.log
  fi
}

run w512_s0_f03 --config.seed=0 --config.data.curriculum_fraction=0.3 &
run w512_s1_f03 --config.seed=1 --config.data.curriculum_fraction=0.3 &
run w512_s1_f07 --config.seed=1 --config.data.curriculum_fraction=0.7 &
wait
for f in logs/train_w512_*.log logs/eval_w512_*.log; do echo "== $f"; tail -c 500 $f; echo; done
grep -h '^| w512' evals/*/passkey.md 2>/dev/null
tar czf $OUT/w512_seeds.tgz --ignore-failed-read logs evals workdirs/*/metrics.jsonl \
  workdirs/*/eval.json workdirs/*/config.json
