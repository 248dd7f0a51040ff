# GPU call 4: streaming benchmark (after stream.py's final changes) and the GPU-only test cases.
set -o pipefail
source scripts/gpu_setup.sh
mkdir -p $OUT/stream
timeout 100 python3 stream.py --config=configs/w128.py --benchmark --output_dir=$OUT/stream 2> $OUT/stream/log | tail -12
# float32 checks need full-precision matmuls (the GPU default is TF32).
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_cache.py tests/test_attention.py -k "cudnn or auto or bfloat16 or cache" 2>&1 | tee $OUT/gpu_tests.log | tail -6
