#!/usr/bin/env bash
# One GPU session (the lent H200, see /work/.library/device): Triton kernel correctness against the reference loop,
# then the neuron, train-step and memory benchmarks on CUDA. Writes everything under $OUT (default ./gpu-out).
# SpikingJelly travels as wheels in .whl/ (git-ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform any -d .whl spikingjelly==2.0.0 loguru==0.7.3
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  date -Is; } 2>&1 | tee "$OUT/gpu.txt"
t0=$SECONDS
timeout 200 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_kernels_triton.py tests/test_spike_pool_triton.py > "$OUT/tests.log" 2>&1
echo "tests rc=$? ($((SECONDS - t0)) s): $(tail -1 "$OUT/tests.log")" | tee -a "$OUT/gpu.txt"
t0=$SECONDS
timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/run_all.py --only neuron train-step memory --device cuda \
  --out "$OUT" --timeout 180 > "$OUT/bench.log" 2>&1
echo "bench rc=$? ($((SECONDS - t0)) s)" | tee -a "$OUT/gpu.txt"
grep -E "^(\||->|==|SpikingJelly)" "$OUT/bench.log" | tail -60
grep -E "FAILED|Error" "$OUT/tests.log" | head -20
