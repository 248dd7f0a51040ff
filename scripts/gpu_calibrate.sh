# GPU: the cuDNN/bf16 test cases, then training-step rates (each run alone, then four sharing the
# card) to size the batch and step counts of the training runs.
set -o pipefail
source scripts/gpu_setup.sh
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_cache.py tests/test_attention.py -k "cudnn or auto or bfloat16" 2>&1 | tee $OUT/gpu_tests.log | tail -4
t0=$(( $(date +%s) + 70 )); i=0
rate() { python3 -m scripts.step_rate --config=configs/$1.py --config.data.batch_size=$2 \
  --config.data.seq_len=$3 --seconds=$4 --start_at=$5 2>>$OUT/rate.err | tail -1 >> $OUT/rate_$6.txt & }
for combo in "w128 32 1024" "w128 64 640" "w128 128 640" "w256 64 1152" "w512 32 2176" "full 32 1024"; do
  rate $combo 8 $(( t0 + 10 * i )) alone; i=$(( i + 1 ))
done
for combo in "w128 64 640" "w256 64 1152" "w512 32 2176" "full 32 1024"; do
  rate $combo 15 $(( t0 + 10 * i )) shared
done
wait
cat $OUT/rate_alone.txt; echo "-- four at once:"; cat $OUT/rate_shared.txt
