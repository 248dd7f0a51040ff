# GPU call 1: cuDNN-vs-reference tests, the attention benchmark, a training-throughput probe.
set -o pipefail
source scripts/gpu_setup.sh
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_attention.py -k "cudnn or auto or bfloat16" 2>&1 | tail -4
timeout 300 python3 bench_attention.py --block_sizes default,128,256 --json $OUT/attention_bench.json \
  --out $OUT/attention_bench.md 2> $OUT/bench.log | tail -60
# Four small trainings at once (the models are too small to fill the card alone).
for c in w128 w256 w512 full; do
  timeout 150 python3 train.py --config=configs/$c.py --workdir=/tmp/probe_$c --config.num_steps=300 \
    --config.eval.every_steps=0 --config.log_every_steps=100 --config.eval.examples_per_distance=8 \
    > $OUT/probe_$c.log 2>&1 &
done
wait
for c in w128 w256 w512 full; do echo "== $c"; grep tokens_per_second /tmp/probe_$c/metrics.jsonl | tail -2; tail -3 $OUT/probe_$c.log; done
