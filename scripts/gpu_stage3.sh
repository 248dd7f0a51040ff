# GPU call 3: memory/speed profile (full vs sliding, up to 1M tokens) and the streaming benchmark.
set -o pipefail
source scripts/gpu_setup.sh
mkdir -p $OUT/mem $OUT/stream
timeout 150 python3 stream.py --config=configs/w128.py --benchmark --output_dir=$OUT/stream \
  2> $OUT/stream/log | tail -25
timeout 400 python3 profile_memory.py --out=$OUT/mem --deadline_minutes=4.5 --timeout_per_config=120 \
  2> $OUT/mem/log | tail -50
